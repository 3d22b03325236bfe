# Copyright (c) Meta Platforms, Inc. and affiliates.
#
# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
from __future__ import annotations

import numpy as np
import pytest
import torch

from torchrl.envs.libs.mamujoco import _has_mamujoco, MaMuJoCoEnv, MaMuJoCoWrapper
from torchrl.envs.utils import check_env_specs, MarlGroupMapType

TASKS = [("HalfCheetah", "2x3"), ("Walker2d", "2x3"), ("Hopper", "3x1")]


def _agent_actions(env, generator):
    """Uniform actions within the bounds of every group, drawn from ``generator``."""
    actions = {}
    for group in env.group_map:
        spec = env.full_action_spec[group, "action"]
        low, high = spec.space.low, spec.space.high
        actions[group] = torch.rand(low.shape, generator=generator) * (high - low) + low
    return actions


def _policy(env, generator):
    def policy(td):
        for group, action in _agent_actions(env, generator).items():
            td.set((group, "action"), action)
        return td

    return policy


@pytest.mark.skipif(not _has_mamujoco, reason="gymnasium-robotics or mujoco not found")
class TestMaMuJoCo:
    @pytest.mark.parametrize("scenario,agent_conf", TASKS)
    @pytest.mark.parametrize(
        "group_map",
        [MarlGroupMapType.ALL_IN_ONE_GROUP, MarlGroupMapType.ONE_GROUP_PER_AGENT],
    )
    @pytest.mark.parametrize("local_obs", [False, True])
    def test_specs(self, scenario, agent_conf, group_map, local_obs):
        env = MaMuJoCoEnv(
            scenario, agent_conf, group_map=group_map, local_obs=local_obs, seed=0
        )
        check_env_specs(env)
        n_agents = len(env.agent_names)
        assert env.n_agents == n_agents == int(agent_conf.split("x")[0])
        assert sum(len(agents) for agents in env.group_map.values()) == n_agents
        for group, agents in env.group_map.items():
            obs_spec = env.full_observation_spec[group, "observation"]
            assert obs_spec.shape == (len(agents), env.state_dim)
            assert env.full_reward_spec[group, "reward"].shape == (len(agents), 1)
            assert (
                "local_observation" in env.full_observation_spec[group].keys()
            ) == local_obs
        assert set(env.full_done_spec.keys()) == {"done", "terminated", "truncated"}

    @pytest.mark.parametrize("scenario,agent_conf", TASKS)
    def test_wrapper(self, scenario, agent_conf):
        from gymnasium_robotics import mamujoco_v1

        mamujoco_env = mamujoco_v1.parallel_env(scenario, agent_conf)
        env = MaMuJoCoWrapper(mamujoco_env, seed=0)
        assert env._env is mamujoco_env
        check_env_specs(env)
        with pytest.raises(TypeError, match="MultiAgentMujocoEnv"):
            MaMuJoCoWrapper(env=object())

    @pytest.mark.parametrize("scenario,agent_conf", TASKS)
    def test_global_state(self, scenario, agent_conf):
        # each agent observes gymnasium-robotics' global state, env.state()
        env = MaMuJoCoEnv(scenario, agent_conf, seed=0)
        generator = torch.Generator().manual_seed(0)
        td = env.reset()
        for _ in range(20):
            state = torch.as_tensor(env.state(), dtype=torch.float32)
            obs = td["agents", "observation"]
            assert obs.shape == (env.n_agents, env.state_dim)
            torch.testing.assert_close(obs, state.expand_as(obs), rtol=0, atol=0)
            td.set(("agents", "action"), _agent_actions(env, generator)["agents"])
            td = env.step_mdp(env.step(td))
            if td["done"].any():
                break

    @pytest.mark.parametrize("scenario,agent_conf", TASKS)
    def test_partitions(self, scenario, agent_conf):
        from gymnasium_robotics import mamujoco_v1
        from gymnasium_robotics.envs.multiagent_mujoco.obsk import get_parts_and_edges

        parts, _, _ = get_parts_and_edges(scenario, agent_conf)
        env = MaMuJoCoEnv(scenario, agent_conf)
        assert env.action_partition == tuple(
            tuple(node.act_ids for node in part) for part in parts
        )
        if scenario == "Walker2d":
            assert env.action_partition == ((2, 1, 0), (5, 4, 3))
        # agent i's k-th action lands where gymnasium-robotics puts it
        reference = mamujoco_v1.parallel_env(scenario, agent_conf)
        rng = np.random.default_rng(0)
        act = len(env.action_partition[0])
        for _ in range(5):
            local = rng.uniform(-1, 1, size=(env.n_agents, act))
            expected = reference.map_local_actions_to_global_action(
                {agent: local[i] for i, agent in enumerate(env.agent_names)}
            )
            np.testing.assert_array_equal(env.local_to_global_action(local), expected)

    @pytest.mark.parametrize("scenario,agent_conf", TASKS)
    @pytest.mark.parametrize(
        "group_map",
        [MarlGroupMapType.ALL_IN_ONE_GROUP, MarlGroupMapType.ONE_GROUP_PER_AGENT],
    )
    def test_steps_match_mamujoco(self, scenario, agent_conf, group_map):
        # the same per-agent actions stepped by gymnasium-robotics' own parallel env
        from gymnasium_robotics import mamujoco_v1

        reference = mamujoco_v1.parallel_env(scenario, agent_conf)
        env = MaMuJoCoEnv(
            scenario, agent_conf, group_map=group_map, local_obs=True, seed=3
        )
        reference.reset(seed=3)
        td = env.reset()
        generator = torch.Generator().manual_seed(1)
        for _ in range(50):
            actions = _agent_actions(env, generator)
            for group, action in actions.items():
                td.set((group, "action"), action)
            per_agent = {
                agent: actions[group][j].numpy()
                for group, agents in env.group_map.items()
                for j, agent in enumerate(agents)
            }
            obs, rewards, terminations, truncations, _ = reference.step(per_agent)
            stepped = env.step(td)
            out = stepped["next"]
            state = torch.as_tensor(reference.state(), dtype=torch.float32)
            for group, agents in env.group_map.items():
                for j, agent in enumerate(agents):
                    torch.testing.assert_close(
                        out[group, "observation"][j], state, rtol=0, atol=0
                    )
                    local = out[group, "local_observation"][j]
                    size = len(obs[agent])
                    torch.testing.assert_close(
                        local[:size],
                        torch.as_tensor(obs[agent], dtype=torch.float32),
                        rtol=0,
                        atol=0,
                    )
                    assert (local[size:] == 0).all()
                    assert out[group, "reward"][j].item() == pytest.approx(
                        rewards[agent], rel=1e-6
                    )
                    assert out["terminated"].item() == terminations[agent]
            if out["done"].item():
                break
            td = env.step_mdp(stepped)

    def test_seeding(self):
        def run(seed, actions_seed=0):
            env = MaMuJoCoEnv("Hopper", "3x1", seed=seed)
            generator = torch.Generator().manual_seed(actions_seed)
            return env.rollout(
                50, policy=_policy(env, generator), break_when_any_done=False
            )

        a, b, c = run(0), run(0), run(1)
        assert (a == b).all()
        assert not torch.equal(a["agents", "observation"], c["agents", "observation"])
        # set_seed seeds the next reset
        env = MaMuJoCoEnv("Hopper", "3x1", seed=5)
        first = env.reset()
        env.reset()
        env.set_seed(5)
        assert (env.reset() == first).all()

    def test_rollout_done(self):
        env = MaMuJoCoEnv("Hopper", "3x1", seed=0)
        generator = torch.Generator().manual_seed(0)
        td = env.rollout(1000, policy=_policy(env, generator))
        # random actions make the hopper fall: the rollout stops at the termination
        assert len(td) < 1000
        assert td["next", "terminated"][-1].all() and td["next", "done"][-1].all()
        assert not td["next", "done"][:-1].any()
        assert not td["next", "truncated"].any()
        # without breaking, the env is reset after each done
        td = env.rollout(300, policy=_policy(env, generator), break_when_any_done=False)
        assert len(td) == 300
        done = td["next", "done"].squeeze(-1)
        assert done.sum() >= 2
        after = torch.nonzero(done[:-1]).squeeze(-1) + 1
        assert not td["done"][after].any()
        assert not torch.equal(
            td["agents", "observation"][after],
            td["next", "agents", "observation"][after - 1],
        )

    def test_time_limit_is_truncation(self):
        env = MaMuJoCoEnv("HalfCheetah", "2x3", seed=0, max_episode_steps=5)
        td = env.rollout(5, break_when_any_done=False)
        assert td["next", "truncated"].squeeze(-1).tolist() == [False] * 4 + [True]
        assert not td["next", "terminated"].any()
        assert td["next", "done"][-1].all()

    def test_unequal_agents(self):
        # Humanoid 9|8: agents of different sizes need separate groups
        with pytest.raises(NotImplementedError, match="different numbers of joints"):
            MaMuJoCoEnv("Humanoid", "9|8")
        env = MaMuJoCoEnv(
            "Humanoid", "9|8", group_map=MarlGroupMapType.ONE_GROUP_PER_AGENT, seed=0
        )
        assert env.full_action_spec["agent_0", "action"].shape == (1, 9)
        assert env.full_action_spec["agent_1", "action"].shape == (1, 8)
        check_env_specs(env)

    def test_available_envs(self):
        assert {"HalfCheetah", "Walker2d", "Hopper"} <= set(MaMuJoCoEnv.available_envs)
