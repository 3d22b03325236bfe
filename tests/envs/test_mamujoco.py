"""Multi-agent MuJoCo (section 4.1): partitions, specs, equality with the single-agent gymnasium env."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs

pytest.importorskip("mujoco")
pytest.importorskip("gymnasium_robotics")

import gymnasium  # noqa: E402

from torchrl_otc.envs.mamujoco import ACTION_PARTITIONS, MaMuJoCoEnv  # noqa: E402

ROBOTS = [("HalfCheetah", "2x3"), ("Walker2d", "2x3"), ("Hopper", "3x1")]


@pytest.mark.parametrize("scenario,conf", ROBOTS)
def test_partition_matches_gymnasium_robotics(scenario, conf):
    from gymnasium_robotics.envs.multiagent_mujoco.obsk import get_parts_and_edges

    parts, _, _ = get_parts_and_edges(scenario, conf)
    assert (
        tuple(tuple(node.act_ids for node in p) for p in parts)
        == ACTION_PARTITIONS[(scenario, conf)]
    )
    assert MaMuJoCoEnv(scenario, conf).action_partition == ACTION_PARTITIONS[(scenario, conf)]


@pytest.mark.parametrize("scenario,conf", ROBOTS)
def test_partitions_are_gymnasium_robotics_own_action_ids(scenario, conf):
    """The joint-action columns of each agent are the partition's own ``act_ids`` (Walker2d's are reversed)."""
    from gymnasium_robotics import mamujoco_v1

    env = mamujoco_v1.parallel_env(scenario, conf)
    own = tuple(
        tuple(node.act_ids for node in part) for part in env.unwrapped.agent_action_partitions
    )
    env.close()
    assert tuple(map(tuple, ACTION_PARTITIONS[(scenario, conf)])) == own
    if scenario == "Walker2d":
        assert own[0] == (2, 1, 0)  # the reason the mapping exists


@pytest.mark.parametrize("scenario,conf", ROBOTS)
@pytest.mark.parametrize(
    "layout,local_obs", [("agents", False), ("agents", True), ("joint", False)]
)
def test_specs(scenario, conf, layout, local_obs):
    env = MaMuJoCoEnv(scenario, conf, layout=layout, local_obs=local_obs, seed=0)
    check_env_specs(env)
    if layout == "agents":
        n = len(ACTION_PARTITIONS[(scenario, conf)])
        td = env.rollout(3)
        obs = td["next", "agents", "observation"]
        assert obs.shape[-2] == n and torch.equal(
            obs[..., 0, :], obs[..., n - 1, :]
        )  # global state for all
        r = td["next", "agents", "reward"]
        assert torch.equal(r[..., 0, :], r[..., n - 1, :])  # shared reward
        if local_obs:
            local = td["next", "agents", "local_observation"]
            assert local.shape[-1] == max(env.local_obs_dims)


@pytest.mark.parametrize("scenario,conf", ROBOTS)
def test_rollout_from_agent_actions_equals_single_agent_env(scenario, conf):
    """Per-agent actions assembled by the partition give exactly the single-agent env's rollout."""
    from gymnasium_robotics import mamujoco_v1

    part = ACTION_PARTITIONS[(scenario, conf)]
    n_agents, act = len(part), len(part[0])
    env = MaMuJoCoEnv(scenario, conf, seed=7)
    ref = gymnasium.make(f"{scenario}-v5")
    ref_ma = mamujoco_v1.parallel_env(scenario, conf)
    rng = np.random.default_rng(0)
    td = env.reset()
    obs_ref, _ = ref.reset(seed=7)
    torch.testing.assert_close(
        td["agents", "observation"][0], torch.as_tensor(obs_ref, dtype=torch.float32)
    )
    steps = 300
    for t in range(steps):
        local = rng.uniform(-1, 1, size=(n_agents, act)).astype(np.float32)
        joint = np.empty(n_agents * act)
        for i, cols in enumerate(part):  # agent i's k-th action -> robot action cols[k]
            joint[list(cols)] = local[i]
        # the assembly agrees with gymnasium-robotics' own mapping
        mapped = ref_ma.map_local_actions_to_global_action(
            {f"agent_{i}": local[i] for i in range(n_agents)}
        )
        np.testing.assert_array_equal(mapped, joint)
        td["agents", "action"] = torch.as_tensor(local)
        out = env.step(td)
        nxt = out["next"]
        obs_ref, r_ref, term_ref, trunc_ref, _ = ref.step(joint)
        torch.testing.assert_close(
            nxt["agents", "observation"],
            torch.as_tensor(obs_ref, dtype=torch.float32).expand(n_agents, -1),
        )
        assert torch.allclose(
            nxt["agents", "reward"], torch.tensor(float(r_ref)), atol=1e-5, rtol=0
        ), t
        assert bool(nxt["terminated"]) == bool(term_ref)
        assert bool(nxt["truncated"]) == bool(trunc_ref)
        if term_ref or trunc_ref:
            env.set_seed(100 + t)
            td = env.reset()
            obs_ref, _ = ref.reset(seed=100 + t)
            torch.testing.assert_close(
                td["agents", "observation"][0], torch.as_tensor(obs_ref, dtype=torch.float32)
            )
        else:
            td = env.step_mdp(out)


def test_concatenation_is_not_the_walker_action():
    """A naive concatenation of the agents' actions is a different robot action for Walker2d."""
    env = MaMuJoCoEnv("Walker2d", "2x3")
    local = np.arange(6.0).reshape(2, 3)
    assert env.local_to_global_action(local).tolist() == [2.0, 1.0, 0.0, 5.0, 4.0, 3.0]
    assert env.local_to_global_action(local).tolist() != local.reshape(-1).tolist()


def test_timeout_is_truncation():
    env = MaMuJoCoEnv("HalfCheetah", "2x3", seed=0, max_episode_steps=5)
    td = env.rollout(5, break_when_any_done=False)
    assert td["next", "truncated"].view(-1).tolist() == [False] * 4 + [True]
    assert not td["next", "terminated"].any()
    assert td["next", "done"][-1].all()


def test_joint_layout_matches_agents_layout():
    a = MaMuJoCoEnv("Walker2d", "2x3", seed=3)
    j = MaMuJoCoEnv("Walker2d", "2x3", seed=3, layout="joint")
    ta, tj = a.reset(), j.reset()
    torch.testing.assert_close(ta["agents", "observation"][0], tj["observation"])
    local = torch.tensor([[0.1, 0.2, 0.3], [-0.4, -0.5, -0.6]])
    ta["agents", "action"] = local
    tj["action"] = torch.tensor([0.3, 0.2, 0.1, -0.6, -0.5, -0.4])
    na, nj = a.step(ta)["next"], j.step(tj)["next"]
    torch.testing.assert_close(na["agents", "observation"][0], nj["observation"])
    torch.testing.assert_close(na["agents", "reward"][0], nj["reward"])


def test_package_env_is_the_torchrl_env():
    """The package's env is the TorchRL section's ``MaMuJoCoEnv`` (upstream/mamujoco-env.patch) plus its extras."""
    from torchrl_otc.envs import mamujoco

    assert issubclass(MaMuJoCoEnv, mamujoco._MaMuJoCoEnv)
    assert issubclass(mamujoco._MaMuJoCoEnv, mamujoco.MaMuJoCoWrapper)
    upstream = mamujoco._MaMuJoCoEnv("Hopper", "3x1", seed=4, device="cpu")
    ours = MaMuJoCoEnv("Hopper", "3x1", seed=4)
    torch.manual_seed(0)
    a = upstream.rollout(30, break_when_any_done=False)
    torch.manual_seed(0)
    b = ours.rollout(30, break_when_any_done=False)
    assert (a == b).all()


def test_group_map_and_wrapper():
    """TorchRL's options reach the package env; the wrapper takes a built gymnasium-robotics env."""
    from gymnasium_robotics import mamujoco_v1
    from torchrl.envs.utils import MarlGroupMapType

    from torchrl_otc.envs.mamujoco import MaMuJoCoWrapper

    per_agent = MaMuJoCoEnv(
        "Walker2d", "2x3", seed=2, group_map=MarlGroupMapType.ONE_GROUP_PER_AGENT
    )
    grouped = MaMuJoCoEnv("Walker2d", "2x3", seed=2)
    td_p, td_g = per_agent.reset(), grouped.reset()
    local = torch.tensor([[0.1, 0.2, 0.3], [-0.4, -0.5, -0.6]])
    td_p["agent_0", "action"], td_p["agent_1", "action"] = local[:1], local[1:]
    td_g["agents", "action"] = local
    nxt_p, nxt_g = per_agent.step(td_p)["next"], grouped.step(td_g)["next"]
    for i in range(2):
        assert torch.equal(nxt_p[f"agent_{i}", "observation"][0], nxt_g["agents", "observation"][i])
        assert torch.equal(nxt_p[f"agent_{i}", "reward"][0], nxt_g["agents", "reward"][i])
    check_env_specs(per_agent)
    wrapped = MaMuJoCoWrapper(mamujoco_v1.parallel_env("Hopper", "3x1"), seed=0)
    assert wrapped.action_partition == ACTION_PARTITIONS[("Hopper", "3x1")]
    check_env_specs(wrapped)
