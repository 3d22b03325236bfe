"""Task registry, the joint view and lazy simulator imports."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

from torchrl_otc.envs import JointEnv, agent_to_joint_actions, joint_to_agent_actions
from torchrl_otc.envs.registry import (
    TASKS,
    DeploymentHook,
    StationaryDeployments,
    UnknownTaskError,
    get_task,
    list_tasks,
    make_env,
)

EXPECTED = {
    "mamujoco/halfcheetah-2x3",
    "mamujoco/walker2d-2x3",
    "mamujoco/hopper-3x1",
    "mpe/navigation-3",
    "mpe/navigation-4",
    "mpe/navigation-5",
    "mpe/navigation-6",
    "mpe/predator-prey",
    "mpe/navigation-3-discrete",
    "mpe/navigation-4-discrete",
    "mpe/navigation-5-discrete",
    "mpe/navigation-6-discrete",
    "mpe/predator-prey-discrete",
    "nav/nonstationary",
    "coord/partner-modes",
    "smac/5m_vs_6m",
    "smaclike/3m",
}
BUILDABLE = sorted(n for n in EXPECTED if not n.startswith("smac/"))


def test_names():
    assert set(list_tasks()) == EXPECTED


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UnknownTaskError) as info:
        make_env("mpe/navigation-7")
    msg = str(info.value)
    assert "mpe/navigation-7" in msg
    for name in EXPECTED:
        assert name in msg
    with pytest.raises(KeyError):  # also a KeyError, for dict-like use
        get_task("nope")


@pytest.mark.parametrize("name", BUILDABLE)
@pytest.mark.parametrize("layout", ["agents", "joint"])
def test_every_task_passes_spec_check(name, layout):
    task = get_task(name)
    if not task.available():
        pytest.skip(f"{name} needs {task.requires}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = make_env(name, layout=layout, seed=0)
    check_env_specs(env)
    if layout == "joint" or task.family == "nav":
        assert env.full_action_spec["action"].shape[-1] == task.action_dim
        assert env.full_observation_spec["observation"].shape[-1] == task.state_dim
    else:
        assert env.full_action_spec["agents", "action"].shape[-2] == task.n_agents
        # smaclike (SMACv2's layout): local observations per agent, the global state at the root
        state_key = "state" if task.family == "smaclike" else ("agents", "observation")
        assert env.full_observation_spec[state_key].shape[-1] == task.state_dim


@pytest.mark.parametrize("name", ["mpe/navigation-3", "mpe/predator-prey"])
def test_pettingzoo_backend_through_registry(name):
    pytest.importorskip("mpe2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env_specs(make_env(name, backend="pettingzoo", seed=0))
        check_env_specs(make_env(name, backend="pettingzoo", layout="joint", seed=0))
    with pytest.raises(ValueError, match="one environment"):
        make_env(name, backend="pettingzoo", num_envs=4)


def test_vectorised_vmas_and_nav():
    pytest.importorskip("vmas")
    env = make_env("mpe/navigation-4", num_envs=16, seed=0)
    assert env.rollout(3)["agents", "action"].shape == (16, 3, 4, 2)
    check_env_specs(make_env("mpe/navigation-4", layout="joint", num_envs=16, seed=0))
    check_env_specs(make_env("nav/nonstationary", num_envs=16, seed=0))


def test_partition_helpers_roundtrip():
    part = [(2, 1, 0), (5, 4, 3)]
    joint = torch.randn(7, 6)
    agents = joint_to_agent_actions(joint, part)
    assert torch.equal(agents[:, 0], joint[:, [2, 1, 0]])
    assert torch.equal(agent_to_joint_actions(agents, part), joint)


def test_joint_env_routes_columns_to_the_right_agents():
    pytest.importorskip("vmas")
    env = make_env("mpe/navigation-3", layout="joint", num_envs=1, seed=0)
    assert isinstance(env, JointEnv)
    td = env.reset()
    action = torch.zeros(1, 6)
    action[0, 2:4] = torch.tensor([0.1, -0.05])  # agent 1 only
    td["action"] = action
    nxt = env.step(td)["next"]
    moved = (nxt["observation"] - td["observation"])[0, :6].view(3, 2)
    torch.testing.assert_close(
        moved, torch.tensor([[0.0, 0.0], [0.1, -0.05], [0.0, 0.0]]), atol=1e-6, rtol=0
    )
    assert nxt["reward"].shape == (1, 1)


def test_joint_env_truncates_and_resets_with_the_inner_env():
    pytest.importorskip("vmas")
    env = make_env("mpe/predator-prey", layout="joint", num_envs=2, seed=0)
    td = env.rollout(60, break_when_any_done=False)
    trunc = td["next", "truncated"].squeeze(-1)
    assert trunc[:, 24].all() and trunc[:, 49].all() and int(trunc.sum()) == 4
    # after each reset a new episode starts: observations jump
    assert not torch.equal(td["next", "observation"][:, 24], td["observation"][:, 25])
    assert torch.equal(td["next", "observation"][:, 23], td["observation"][:, 24])


@pytest.mark.skipif(importlib.util.find_spec("smacv2") is not None, reason="smacv2 is installed")
def test_smac_needs_the_game():
    with pytest.raises(ImportError, match="StarCraft II"):
        make_env("smac/5m_vs_6m")


def test_importing_envs_needs_no_simulator():
    code = (
        "import sys, importlib.abc, importlib.machinery\n"
        "BLOCKED = {'vmas', 'gymnasium_robotics', 'mpe2', 'pettingzoo', 'smacv2'}\n"
        "class Loader(importlib.abc.Loader):\n"
        "    def create_module(self, spec):\n"
        "        raise ImportError('blocked ' + spec.name)\n"
        "    def exec_module(self, module):\n"
        "        pass\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            return importlib.machinery.ModuleSpec(name, Loader())\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torchrl_otc.envs, torchrl_otc.data.datasets, torchrl_otc.data.transforms, torchrl_otc.cli\n"
        "from torchrl_otc.envs import make_env\n"
        "make_env('nav/nonstationary', num_envs=2).rollout(2)\n"
        "assert not BLOCKED & {m.split('.')[0] for m in sys.modules}\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_task_specs_are_consistent():
    for name, t in TASKS.items():
        if t.family == "smac":
            continue
        cols = sorted(c for p in t.action_partition for c in p)
        assert cols == list(range(t.action_dim)), name
        assert len(t.action_partition) == t.n_agents


def test_deployment_hooks_and_env_bounds():
    """The tuning loop asks the task, never its family: environment kwargs, row labels, how many envs at once."""
    rows = TensorDict({"beta": torch.tensor([[0.1], [-0.1]])}, [2])
    for name, task in TASKS.items():
        assert isinstance(task.deployments, DeploymentHook), name
        if name == "nav/nonstationary":
            assert set(task.deployment_env_kwargs(1, 3)) == {"beta"}
            assert task.right_dynamics(rows, 1, 3).tolist() == [True, False]
        elif name == "coord/partner-modes":
            assert task.deployment_env_kwargs(1, 3) == {"mode": 1}
            assert task.right_dynamics(rows, 1, 3) is None  # these rows carry no partner mode
        else:  # stationary, unlabelled
            assert task.deployments == StationaryDeployments()
            assert task.deployment_env_kwargs(1, 3) == {}
            assert task.right_dynamics(rows, 1, 3) is None
        bounded = task.family in ("mamujoco", "smac")
        assert task.num_envs(32) == (1 if bounded else 32), name
        assert task.num_envs(1) == 1
