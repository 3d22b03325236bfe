"""MPE tasks with MPE's 5 discrete actions (section 4.4): one-hot specs, moves, both backends, joint view, datasets."""

from __future__ import annotations

import warnings

import pytest
import torch
from torchrl.data import MultiOneHot, OneHot
from torchrl.envs.utils import check_env_specs

from torchrl_otc.data.datasets import build_dataset
from torchrl_otc.envs.mpe import (
    DISCRETE_VELOCITIES,
    N_DISCRETE_ACTIONS,
    OneHotJointEnv,
    discrete_velocity,
    vmas_discrete_index,
)
from torchrl_otc.envs.registry import TaskSpec, get_task, list_tasks, make_env

pytest.importorskip("vmas")

from torchrl_otc.envs.mpe import make_pettingzoo_env, make_vmas_env  # noqa: E402

warnings.filterwarnings("ignore", message="PettingZoo in TorchRL is tested", category=UserWarning)


@pytest.fixture(autouse=True)
def _keep_global_rng():
    """TorchRL's random actions draw from torch's global generator: leave it as these tests found it, so the
    tests and doctests that run after them see the same random numbers with or without this file."""
    with torch.random.fork_rng(devices=[]):
        yield


DISCRETE = [
    "mpe/navigation-3-discrete",
    "mpe/navigation-4-discrete",
    "mpe/navigation-5-discrete",
    "mpe/navigation-6-discrete",
    "mpe/predator-prey-discrete",
]
BACKENDS = ["vmas", "pettingzoo"]


def _make(name: str, backend: str, layout: str = "agents", **kwargs):
    if backend == "pettingzoo":
        pytest.importorskip("mpe2")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return make_env(name, backend="pettingzoo", layout=layout, seed=0, **kwargs)
    return make_env(name, layout=layout, num_envs=2, seed=0, **kwargs)


def _one_hot(index: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(index, N_DISCRETE_ACTIONS)


def _set_positions(env, positions: torch.Tensor) -> None:
    """Place agents then landmarks/prey at ``positions`` in env 0 of either backend."""
    if hasattr(env, "base_env"):  # VMAS (TransformedEnv)
        world = env.base_env._env.world
        for e, p in zip(world.agents + world.landmarks, positions):
            e.set_pos(p.to(torch.float32), batch_index=0)
    else:  # PettingZoo
        world = env._env.aec_env.unwrapped.world
        for e, p in zip(world.agents + world.landmarks, positions):
            e.state.p_pos = p.double().numpy().copy()


def _step(env, td, actions: torch.Tensor):
    """Step with per-agent actions ``[n, ...]`` (the same in every env) and return env 0's next tensordict."""
    if len(env.batch_size):
        td[("agents", "action")] = actions.expand(env.batch_size[0], *actions.shape).clone()
        return env.step(td)["next"][0]
    td[("agents", "action")] = actions.clone()
    return env.step(td)["next"]


def test_registered_with_their_action_kind():
    assert set(DISCRETE) <= set(list_tasks("mpe"))
    for name in DISCRETE:
        task = get_task(name)
        cont = get_task(name.removesuffix("-discrete"))
        assert (task.action_kind, task.num_actions, task.discrete) == ("discrete", 5, True)
        assert (cont.action_kind, cont.num_actions, cont.discrete) == ("continuous", None, False)
        assert (task.n_agents, task.state_dim, task.max_steps) == (
            cont.n_agents,
            cont.state_dim,
            cont.max_steps,
        )
        # each agent holds its own 5 one-hot columns, in order
        assert task.action_partition == tuple(
            tuple(range(5 * i, 5 * i + 5)) for i in range(task.n_agents)
        )
        assert task.action_dim == 5 * task.n_agents


def test_task_spec_refuses_inconsistent_action_kinds():
    base = dict(
        name="x",
        family="mpe",
        n_agents=1,
        state_dim=2,
        action_low=0.0,
        action_high=1.0,
        max_steps=5,
        description="",
    )
    with pytest.raises(ValueError, match="num_actions"):
        TaskSpec(action_partition=((0, 1),), action_kind="discrete", **base)
    with pytest.raises(ValueError, match="num_actions"):
        TaskSpec(action_partition=((0, 1),), num_actions=2, **base)
    with pytest.raises(ValueError, match="one-hot columns"):
        TaskSpec(action_partition=((0, 1),), action_kind="discrete", num_actions=5, **base)
    with pytest.raises(ValueError, match="action_kind"):
        TaskSpec(action_partition=((0, 1),), action_kind="categorical", **base)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", DISCRETE)
def test_specs_are_one_hot(name, backend):
    task = get_task(name)
    env = _make(name, backend)
    check_env_specs(env)
    spec = env.full_action_spec["agents", "action"]
    assert isinstance(spec, OneHot)
    assert spec.shape[-2:] == (task.n_agents, 5)
    assert env.full_observation_spec["agents", "observation"].shape[-1] == task.state_dim
    joint = _make(name, backend, layout="joint")
    assert isinstance(joint, OneHotJointEnv)
    check_env_specs(joint)
    assert isinstance(joint.action_spec, MultiOneHot)
    assert joint.action_spec.shape[-1] == task.action_dim
    assert joint.full_observation_spec["observation"].shape[-1] == task.state_dim


@pytest.mark.parametrize("backend", BACKENDS)
def test_rollout_actions_are_one_hot(backend):
    env = _make("mpe/predator-prey-discrete", backend)
    td = env.rollout(5)
    action = td["agents", "action"]
    assert action.shape[-2:] == (3, 5)
    assert set(action.unique().tolist()) <= {0, 1}
    assert bool((action.sum(-1) == 1).all())
    joint = _make("mpe/predator-prey-discrete", backend, layout="joint").rollout(5)["action"]
    assert bool((joint.view(*joint.shape[:-1], 3, 5).sum(-1) == 1).all())


def test_velocity_tables():
    torch.testing.assert_close(
        DISCRETE_VELOCITIES,
        torch.tensor([[0.0, 0.0], [-0.1, 0.0], [0.1, 0.0], [0.0, -0.1], [0.0, 0.1]]),
    )
    # VMAS puts index k at u = {0, -r, -r/2, r/2, r}[k]; the decoder inverts it
    u = torch.tensor([0.0, -0.1, -0.05, 0.05, 0.1])
    assert vmas_discrete_index(u).tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(discrete_velocity(torch.arange(5)), DISCRETE_VELOCITIES)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_action_moves_its_way(backend):
    """no-op, left, right, down, up: agent 0 takes each, the others no-op; positions move by 0.1 that way."""
    env = _make("mpe/navigation-3-discrete", backend)
    td = env.reset()
    start = torch.tensor([[0.0, 0.0], [0.5, 0.5], [-0.5, 0.5], [0.3, 0.3], [0.6, 0.6], [0.9, 0.9]])
    expected = [[0.0, 0.0], [-0.1, 0.0], [0.1, 0.0], [0.0, -0.1], [0.0, 0.1]]
    for k in range(5):
        td = env.reset()
        _set_positions(env, start)
        nxt = _step(env, td, _one_hot(torch.tensor([k, 0, 0])))
        state = nxt["agents", "observation"][0]
        torch.testing.assert_close(state[:2], torch.tensor(expected[k]), atol=1e-6, rtol=0)
        torch.testing.assert_close(state[2:6], start[1:3].flatten(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("task", ["navigation", "predator_prey"])
def test_same_rewards_and_observations_as_the_continuous_task(task):
    """A discrete action gives what the continuous task gives for its velocity (same arithmetic)."""
    n = 3
    g = torch.Generator().manual_seed(0)
    d = make_vmas_env(task, n, num_envs=1, seed=0, discrete=True)
    c = make_vmas_env(task, n, num_envs=1, seed=0)
    td_d, td_c = d.reset(), c.reset()
    pos = torch.rand(2 * n if task == "navigation" else 4, 2, generator=g) * 2 - 1
    _set_positions(d, pos)
    _set_positions(c, pos)
    for _ in range(8):
        k = torch.randint(0, 5, (n,), generator=g)
        td_d[("agents", "action")] = _one_hot(k).unsqueeze(0)
        td_c[("agents", "action")] = discrete_velocity(k).unsqueeze(0)
        nd, nc = d.step(td_d)["next"], c.step(td_c)["next"]
        torch.testing.assert_close(
            nd["agents", "reward"], nc["agents", "reward"], atol=1e-6, rtol=0
        )
        torch.testing.assert_close(
            nd["agents", "observation"], nc["agents", "observation"], atol=1e-6, rtol=0
        )
        td_d, td_c = nd, nc


def test_backends_agree_step_for_step():
    pytest.importorskip("mpe2")
    g = torch.Generator().manual_seed(3)
    for task, n in (("navigation", 4), ("predator_prey", 3)):
        v = make_vmas_env(task, n, num_envs=1, seed=0, discrete=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            p = make_pettingzoo_env(task, n, seed=0, discrete=True)
        tv, tp = v.reset(), p.reset()
        pos = torch.rand(2 * n if task == "navigation" else 4, 2, generator=g) * 2 - 1
        _set_positions(v, pos)
        _set_positions(p, pos)
        for _ in range(10):
            a = _one_hot(torch.randint(0, 5, (n,), generator=g))
            tv[("agents", "action")] = a.unsqueeze(0)
            tp[("agents", "action")] = a
            ov, op = v.step(tv)["next"], p.step(tp)["next"]
            torch.testing.assert_close(
                ov["agents", "reward"][0], op["agents", "reward"], atol=1e-5, rtol=0
            )
            torch.testing.assert_close(
                ov["agents", "observation"][0], op["agents", "observation"], atol=1e-5, rtol=0
            )
            tv, tp = ov, op


def test_joint_view_routes_one_hot_blocks_to_their_agents():
    env = make_env("mpe/navigation-3-discrete", layout="joint", num_envs=1, seed=0)
    td = env.reset()
    action = torch.zeros(1, 15, dtype=torch.long)
    action[0, [0, 5 + 4, 10]] = 1  # agent 0 no-op, agent 1 up, agent 2 no-op
    td["action"] = action
    nxt = env.step(td)["next"]
    moved = (nxt["observation"] - td["observation"])[0, :6].view(3, 2)
    torch.testing.assert_close(
        moved, torch.tensor([[0.0, 0.0], [0.0, 0.1], [0.0, 0.0]]), atol=1e-6, rtol=0
    )
    with pytest.raises(ValueError, match="consecutive columns"):
        OneHotJointEnv(make_vmas_env("navigation", 3, discrete=True), [(0, 1, 2, 3, 4)] * 3)
    with pytest.raises(TypeError, match="OneHot"):
        OneHotJointEnv(make_vmas_env("navigation", 3), [(0, 1), (2, 3), (4, 5)])


@pytest.mark.parametrize("name", DISCRETE)
def test_random_dataset(name):
    task = get_task(name)
    ds = build_dataset(name, "random", 200, seed=0, num_envs=8, progress=False)
    action = ds.data["action"]
    assert action.shape == (200, task.action_dim)
    blocks = action.view(200, task.n_agents, 5)
    assert bool((blocks.sum(-1) == 1).all())
    counts = blocks.sum((0, 1))
    assert bool((counts > 0).all())  # every action drawn
    assert ds.metadata["action_partition"] == [list(p) for p in task.action_partition]
    assert ds.data["observation"].shape == (200, task.state_dim)
    again = build_dataset(name, "random", 200, seed=0, num_envs=8, progress=False)
    assert torch.equal(again.data["action"], action)


def test_discrete_tasks_have_no_trained_behaviour_datasets():
    # navigation has a scripted medium behaviour (tests/data/test_discrete_datasets.py); predator-prey has none
    with pytest.raises(ValueError, match="Use --kind random"):
        build_dataset("mpe/predator-prey-discrete", "medium", 10, progress=False)
    with pytest.raises(ValueError, match="Use --kind random"):
        build_dataset("mpe/navigation-3-discrete", "medium-replay", 10, progress=False)
