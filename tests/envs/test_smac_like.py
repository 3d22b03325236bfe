"""The SMAC-shaped test task (section 4.6): SMACv2's layout, masks that change, deaths, the shared team reward."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import MultiOneHot, OneHot
from torchrl.envs.utils import check_env_specs

from torchrl_otc.data.datasets import build_dataset
from torchrl_otc.data.datasets.builders import uniform_one_hot_policy
from torchrl_otc.envs import make_env
from torchrl_otc.envs.registry import get_task
from torchrl_otc.envs.smac_like import N_NON_ATTACK_ACTIONS, SmacLikeEnv


@pytest.fixture(autouse=True)
def _keep_global_rng():
    """TorchRL's random actions draw from torch's global generator: leave it as these tests found it, so the
    tests and doctests that run after them see the same random numbers with or without this file."""
    with torch.random.fork_rng(devices=[]):
        yield


TASK = "smaclike/3m"
NO_OP, STOP, NORTH, SOUTH, EAST, WEST = range(6)


def _one_hot(index: list[int], n_actions: int = 9) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(index), n_actions)


def _place(env: SmacLikeEnv, allies, enemies, ally_hp=None, enemy_hp=None) -> TensorDict:
    """Put env 0's units at the given cells (and health) and return its observation after the change."""
    env.reset()
    return env.set_units(
        ally_pos=allies, enemy_pos=enemies, ally_health=ally_hp, enemy_health=enemy_hp
    )


def _step(env: SmacLikeEnv, td: TensorDict, index: list[int]) -> TensorDict:
    td["agents", "action"] = _one_hot(index).unsqueeze(0).expand(env.num_envs, -1, -1).clone()
    return env.step(td)["next"]


@pytest.mark.parametrize("layout", ["agents", "joint"])
@pytest.mark.parametrize("num_envs", [1, 8])
def test_specs(layout, num_envs):
    check_env_specs(make_env(TASK, layout=layout, num_envs=num_envs, seed=0))
    check_env_specs(SmacLikeEnv(num_envs, layout=layout, seed=0, max_steps=7))
    if layout == "joint":
        check_env_specs(make_env(TASK, layout=layout, num_envs=num_envs, seed=0, local_obs=True))


def test_registered_in_smacv2_layout():
    task = get_task(TASK)
    assert (task.family, task.n_agents, task.action_kind, task.num_actions) == (
        "smaclike",
        3,
        "discrete",
        9,
    )
    assert (task.state_dim, task.max_steps, task.action_dim) == (45, 60, 27)
    assert task.available() and task.num_envs(32) == 32
    env = make_env(TASK, num_envs=4, seed=0)
    # SMACv2Env(categorical_actions=False)'s keys
    obs_keys = set(env.full_observation_spec.keys(True, True))
    assert {
        ("agents", "observation"),
        ("agents", "action_mask"),
        "state",
        ("info", "battle_won"),
        ("info", "episode_limit"),
        ("info", "dead_allies"),
        ("info", "dead_enemies"),
    } <= obs_keys
    action = env.full_action_spec["agents", "action"]
    assert isinstance(action, OneHot) and action.shape == (4, 3, 9)
    assert env.full_observation_spec["agents", "observation"].shape == (4, 3, 30)
    assert env.full_observation_spec["state"].shape == (4, task.state_dim)
    assert list(env.full_reward_spec.keys(True, True)) == [
        "reward"
    ]  # one shared reward, at the root
    assert env.full_reward_spec["reward"].shape == (4, 1)
    joint = make_env(TASK, layout="joint", num_envs=4, seed=0)
    assert isinstance(joint.action_spec, MultiOneHot) and joint.action_spec.shape == (4, 27)
    assert joint.full_observation_spec["observation"].shape == (4, task.state_dim)
    with pytest.raises(ValueError, match="joint layout"):
        make_env(TASK, local_obs=True)


def _rollout(seed: int = 0, num_envs: int = 16, steps: int = 60) -> TensorDict:
    env = SmacLikeEnv(num_envs, seed=seed)
    return env.rollout(steps, break_when_any_done=False)


def test_rollouts_take_one_hot_available_actions_only():
    """TorchRL's random policy samples from the masked spec: every action is one-hot and available."""
    td = _rollout()
    action, mask = td["agents", "action"], td["agents", "action_mask"]
    assert bool((action.sum(-1) == 1).all()) and set(action.unique().tolist()) == {0, 1}
    assert bool((action.bool() <= mask).all())


def test_masked_random_policy_of_the_datasets_takes_available_actions_only():
    env = make_env(TASK, layout="joint", num_envs=8, seed=0)
    policy = uniform_one_hot_policy(env, 9, torch.Generator().manual_seed(0))
    td = env.rollout(60, policy=policy, break_when_any_done=False)
    assert bool((td["action"].bool() <= td["action_mask"]).all())
    # and it takes every kind of available action: stops, moves and attacks
    taken = td["action"].view(8, 60, 3, 9).sum((0, 1, 2))
    assert bool((taken[1:] > 0).all())


def test_unavailable_and_malformed_actions_are_refused():
    env = SmacLikeEnv(1, seed=0)
    td = env.reset()
    with pytest.raises(ValueError, match="cannot perform action 0"):  # a living agent cannot no-op
        _step(env, td, [NO_OP, STOP, STOP])
    td = env.reset()
    td["agents", "action"] = torch.zeros(1, 3, 9, dtype=torch.long)
    with pytest.raises(ValueError, match="one-hot"):
        env.step(td)


def test_masks_change_within_an_episode():
    td = _rollout()
    mask, done = td["agents", "action_mask"], td["next", "done"].squeeze(-1)
    env_i = 0
    end = int(done[env_i].nonzero()[0]) + 1  # the first episode of env 0
    first = mask[env_i, :end]
    assert not bool((first == first[0]).all())
    attacks = first[..., N_NON_ATTACK_ACTIONS:]
    assert not bool(attacks[0].any())  # nobody in range at the start
    assert bool(attacks.any())  # later, enemies in range


def test_masks_follow_range_edges_and_deaths_by_hand():
    env = SmacLikeEnv(1, seed=0)
    # ally 0 at the corner (0, 0): no south, no west; enemy 0 at distance 3 (in range), enemy 1 dead, enemy 2 far
    td = _place(
        env,
        allies=[[0, 0], [2, 5], [1, 3]],
        enemies=[[3, 0], [1, 0], [9, 5]],
        ally_hp=[45, 0, 45],
        enemy_hp=[45, 0, 45],
    )
    mask = td["agents", "action_mask"][0]
    assert mask[0].tolist() == [False, True, True, False, True, False, True, False, False]
    assert mask[1].tolist() == [True] + [False] * 8  # the dead agent: no-op only
    assert not bool(td["agents", "observation"][0, 1].any())  # and sees nothing
    assert td["info", "dead_allies"].item() == 1 and td["info", "dead_enemies"].item() == 1


def test_dead_agents_stay_dead_with_no_op_only_and_zero_observations():
    td = _rollout(num_envs=32)
    obs, mask = td["agents", "observation"], td["agents", "action_mask"]
    nxt_obs, nxt_mask = td["next", "agents", "observation"], td["next", "agents", "action_mask"]
    done = td["next", "done"].squeeze(-1)
    only_no_op = torch.zeros(9, dtype=torch.bool)
    only_no_op[NO_OP] = True
    deaths = 0
    for e in range(32):
        for t in range(60):
            if done[e, t]:
                continue  # the next step starts a new episode
            for a in range(3):
                alive = bool(obs[e, t, a].any())
                dead_next = bool((nxt_mask[e, t, a] == only_no_op).all())
                if alive and dead_next:
                    deaths += 1
                    assert not bool(nxt_obs[e, t, a].any())
                    # dead until the episode ends
                    ends = done[e, t:].nonzero()
                    end = t + int(ends[0]) if len(ends) else 59
                    assert bool((mask[e, t + 1 : end + 1, a] == only_no_op).all())
                    assert not bool(obs[e, t + 1 : end + 1, a].any())
                    taken = td["agents", "action"][e, t + 1 : end + 1, a]
                    assert bool((taken.argmax(-1) == NO_OP).all())
                if not alive:
                    assert bool((mask[e, t, a] == only_no_op).all())
    assert deaths > 0
    # the count of dead allies never falls within an episode
    dead = td["next", "info", "dead_allies"]
    same_episode = ~done[:, :-1]
    assert bool((dead[:, 1:] >= dead[:, :-1])[same_episode].all())


def test_team_reward_damage_kill_and_win():
    env = SmacLikeEnv(1, seed=0)
    scale = 20.0 / (3 * (45 + 10) + 200)
    # allies 0 and 1 attack enemy 0 (in range); ally 2 stops. Enemies are out of range of everything else.
    td = _place(env, allies=[[3, 0], [3, 1], [0, 5]], enemies=[[5, 0], [9, 5], [9, 4]])
    nxt = _step(env, td, [6, 6, STOP])
    assert nxt["reward"].shape == (1, 1)  # one reward for the team
    assert nxt["reward"].item() == pytest.approx(2 * 6 * scale)
    # a kill: enemy 0 left with 6 health, ally 0 finishes it; 6 damage + 10 for the kill
    td = _place(
        env, allies=[[3, 0], [3, 1], [0, 5]], enemies=[[5, 0], [9, 5], [9, 4]], enemy_hp=[6, 45, 45]
    )
    nxt = _step(env, td, [6, STOP, STOP])
    assert nxt["reward"].item() == pytest.approx((6 + 10) * scale)
    assert nxt["info", "dead_enemies"].item() == 1 and not nxt["done"].item()
    # overkill counts only the health there was; the last kill wins: 4 + 10 + 200
    td = _place(
        env, allies=[[3, 0], [3, 1], [0, 5]], enemies=[[5, 0], [9, 5], [9, 4]], enemy_hp=[4, 0, 0]
    )
    nxt = _step(env, td, [6, 6, STOP])
    assert nxt["reward"].item() == pytest.approx((4 + 10 + 200) * scale)
    assert nxt["terminated"].item() and nxt["done"].item() and not nxt["truncated"].item()
    assert nxt["info", "battle_won"].item()


def test_scripted_enemies_attack_the_nearest_ally_in_range_else_approach():
    env = SmacLikeEnv(1, seed=0)
    # enemy 0 has ally 1 at 2 cells (in range): it fires; enemy 1 is 6 cells from ally 1: it steps west
    td = _place(
        env, allies=[[0, 5], [4, 0], [0, 3]], enemies=[[6, 0], [9, 3], [9, 5]], enemy_hp=[45, 45, 0]
    )
    nxt = _step(env, td, [STOP, STOP, STOP])
    assert env._ally_hp[0].tolist() == [45, 39, 45]
    assert env._enemy_pos[0, 1].tolist() == [8.0, 3.0]  # |dx| = 5 > |dy| = 3: along x
    assert env._enemy_pos[0, 0].tolist() == [6.0, 0.0]  # firing, not moving
    assert nxt["reward"].item() == 0.0  # damage taken is not a reward (SMAC's reward_only_positive)


def test_episodes_end_on_loss_and_on_the_time_limit():
    td = _rollout(num_envs=16)
    term, trunc = td["next", "terminated"], td["next", "truncated"]
    assert bool(term.any())  # random allies lose to the scripted enemies
    lost = term & ~td["next", "info", "battle_won"].unsqueeze(-1)
    assert bool((td["next", "info", "dead_allies"].unsqueeze(-1)[lost] == 3).all())
    # a short limit truncates, without termination, at max_steps
    env = SmacLikeEnv(4, seed=0, max_steps=3)
    td = env.rollout(3)
    assert bool(td["next", "truncated"][:, -1].all()) and not bool(td["next", "terminated"].any())
    assert bool(td["next", "info", "episode_limit"][:, -1].all())
    assert not bool(trunc[term].any())


def test_deterministic_given_a_seed():
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(0)  # TorchRL's random actions draw from torch's global generator
        runs.append(_rollout(seed=seed, num_envs=4))
    a, b, c = runs
    assert torch.equal(a["state"], b["state"]) and torch.equal(
        a["next", "reward"], b["next", "reward"]
    )
    assert not torch.equal(a["state"][:, 0], c["state"][:, 0])  # other start positions
    env = make_env(TASK, layout="joint", num_envs=4, seed=5)
    joint = []
    for _ in range(2):
        env.set_seed(5)
        policy = uniform_one_hot_policy(env, 9, torch.Generator().manual_seed(0))
        joint.append(env.rollout(30, policy=policy, break_when_any_done=False))
    assert torch.equal(joint[0]["observation"], joint[1]["observation"])
    assert torch.equal(joint[0]["next", "reward"], joint[1]["next", "reward"])


def test_random_dataset():
    ds = build_dataset(TASK, "random", 300, seed=0, num_envs=8, progress=False)
    data = ds.data
    assert data["action"].shape == (300, 27) and data["observation"].shape == (300, 45)
    blocks = data["action"].view(300, 3, 9)
    assert bool((blocks.sum(-1) == 1).all())
    assert bool((data["action"].bool() <= data["action_mask"]).all())
    assert data["next", "action_mask"].shape == (300, 27)
    assert ds.metadata["behaviour"]["policy"].startswith("uniform random among available actions")
    with pytest.raises(ValueError, match="Use --kind random"):
        build_dataset(TASK, "medium", 10, progress=False)
