"""The partner-modes task: a multi-agent task whose rows carry the ground truth of the partner's mode."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs.utils import check_env_specs

from torchrl_otc.data.datasets import build_dataset, load_offline_dataset
from torchrl_otc.data.transforms import AgentView, agent_transitions
from torchrl_otc.envs import make_env
from torchrl_otc.envs.partner_modes import MODE_KEY, PartnerDeployments, PartnerModesEnv
from torchrl_otc.envs.registry import DeploymentHook, get_task

TASK = "coord/partner-modes"


@pytest.mark.parametrize("layout", ["agents", "joint"])
@pytest.mark.parametrize("num_envs", [1, 8])
def test_specs(layout, num_envs):
    check_env_specs(PartnerModesEnv(num_envs, layout=layout, seed=0))
    check_env_specs(make_env(TASK, layout=layout, num_envs=num_envs, seed=0, mode=-1))
    check_env_specs(PartnerModesEnv(num_envs, n_agents=3, layout=layout, seed=0))


def test_registered_like_the_other_tasks():
    task = get_task(TASK)
    assert (task.n_agents, task.state_dim, task.action_dim) == (2, 4, 4)
    assert (task.action_low, task.action_high, task.max_steps) == (-1.0, 1.0, 50)
    assert isinstance(task.deployments, DeploymentHook) and task.label_keys == (MODE_KEY,)
    env = make_env(TASK, layout="joint", num_envs=3, seed=0)
    assert env.full_action_spec["action"].shape[-1] == task.action_dim
    assert env.full_observation_spec["observation"].shape[-1] == task.state_dim
    assert env.max_steps == task.max_steps
    with pytest.raises(ValueError, match="local observations"):
        make_env(TASK, local_obs=True)


def _one_step(layout: str, mode: int, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """State and next state of a fixed state-action pair under ``mode``."""
    env = PartnerModesEnv(1, layout=layout, mode=mode, seed=0)
    td = env.reset()
    env._box[:] = torch.tensor([[0.2, -0.3]])
    env._goal[:] = torch.tensor([[0.9, 0.5]])
    td = env.reset(td.set("_reset", torch.zeros(1, 1, dtype=torch.bool)))  # keeps the positions set
    obs_key = ("agents", "observation") if layout == "agents" else "observation"
    state = env._state()
    if layout == "agents":
        td["agents", "action"] = actions.view(1, 2, 2)
    else:
        td["action"] = actions.view(1, 4)
    nxt = env.step(td)["next"]
    assert torch.equal(nxt[MODE_KEY], torch.full((1, 1), float(mode)))
    out = nxt[obs_key]
    return state[0], (out[0, 0] if layout == "agents" else out[0])


@pytest.mark.parametrize("layout", ["agents", "joint"])
def test_a_state_action_pair_moves_the_box_as_documented_in_each_mode(layout):
    actions = torch.tensor([[1.0, 0.5], [0.6, -0.5]])  # mean push (0.8, 0)
    state, left = _one_step(layout, 1, actions)
    _, right = _one_step(layout, -1, actions)
    speed = 0.15
    # Mode +1 turns the mean push a quarter turn left, mode -1 a quarter turn right.
    torch.testing.assert_close(
        left[:2] - state[:2], torch.tensor([0.0, 0.8 * speed]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        right[:2] - state[:2], torch.tensor([0.0, -0.8 * speed]), atol=1e-6, rtol=0
    )
    assert (left[:2] - right[:2]).norm() > 0.2
    # The goal does not move; the state's second half is the goal's offset.
    torch.testing.assert_close(left[:2] + left[2:], state[:2] + state[2:])
    # Another turn: the rotation is general.
    env = PartnerModesEnv(turn=30.0)
    d = env.displacement(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([-1.0]))
    torch.testing.assert_close(
        d, speed * torch.tensor([math.cos(-math.pi / 6), math.sin(-math.pi / 6)])
    )


def test_reward_is_progress_plus_the_goal_bonus():
    env = PartnerModesEnv(2, layout="joint", mode=1, seed=0, max_steps=5)
    td = env.reset()
    env._box[:] = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    env._goal[:] = torch.tensor([[0.0, 0.2], [0.0, 1.0]])
    td["action"] = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]])  # turned left: north
    nxt = env.step(td)["next"]
    torch.testing.assert_close(nxt["reward"], torch.tensor([[10.15], [0.15]]), atol=1e-5, rtol=0)
    assert nxt["terminated"].squeeze(-1).tolist() == [True, False]


def test_the_mode_decides_the_best_action_and_the_return():
    """The team that knows the mode reaches every goal; the same team assuming the other mode reaches none."""
    env = PartnerModesEnv(64, layout="agents", mode=-1, seed=3)

    def rollout(assumed):
        policy = lambda td: td.set(("agents", "action"), env.expert_action(td, mode=assumed))  # noqa: E731
        td = env.rollout(env.max_steps, policy=policy, break_when_any_done=False)
        first = (
            torch.cumsum(td["next", "done"].squeeze(-1).long(), 1)
            - td["next", "done"].squeeze(-1).long()
            == 0
        )
        return (td["next", "agents", "reward"][..., 0, 0] * first).sum(1)

    right, wrong = rollout(-1.0), rollout(1.0)
    assert bool((right > 10).all()) and bool((wrong < 0).all())


def test_the_mode_is_drawn_per_episode_and_fixed_on_request():
    env = PartnerModesEnv(
        256, layout="joint", seed=0, max_steps=4, reach_radius=1e-4
    )  # no early ends
    td = env.rollout(12, break_when_any_done=False)
    mode = td[MODE_KEY].squeeze(-1)
    assert set(mode.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(td["next", MODE_KEY], td[MODE_KEY])
    for start in (0, 4, 8):  # episodes of 4 steps: constant within, redrawn between
        assert bool((mode[:, start : start + 4] == mode[:, start : start + 1]).all())
    assert not torch.equal(mode[:, 0], mode[:, 4])
    env.set_mode("right")
    assert bool((env.reset()[MODE_KEY] == -1.0).all())
    for bad in (0, 2, "up", True):
        with pytest.raises(ValueError, match="mode must be"):
            PartnerModesEnv(mode=bad)


def test_deployment_hook_sets_the_mode_and_masks_rows():
    hook = get_task(TASK).deployments
    assert hook == PartnerDeployments() and hook.schedule == (1,)
    assert [hook.env_kwargs(k, 3) for k in range(4)] == [{"mode": 1}] * 4
    rows = TensorDict({MODE_KEY: torch.tensor([[1.0], [-1.0], [-1.0], [1.0]])}, [4])
    assert hook.right_dynamics(rows, 2, 3).tolist() == [True, False, False, True]
    alternating = PartnerDeployments(schedule=("left", "right"))
    assert [alternating.mode(k, 4) for k in range(5)] == [1, 1, -1, 1, -1]
    assert alternating.right_dynamics(rows, 2, 4).tolist() == [False, True, True, False]
    assert hook.right_dynamics(TensorDict({"beta": torch.ones(4, 1)}, [4]), 1, 3) is None
    with pytest.raises(ValueError):
        PartnerDeployments(schedule=())
    # Online rows collected at a deployment carry its mode.
    env = make_env(
        TASK, layout="joint", num_envs=8, seed=1, **get_task(TASK).deployment_env_kwargs(2, 3)
    )
    td = env.rollout(60, break_when_any_done=False)
    assert bool((td[MODE_KEY] == 1.0).all()) and bool((td["next", MODE_KEY] == 1.0).all())
    assert hook.right_dynamics(td.reshape(-1), 2, 3).all()


def test_random_dataset_rows_carry_the_mode_of_their_episode(tmp_path):
    size = 20_000
    built = build_dataset(
        TASK, "random", size, seed=0, num_envs=64, out=tmp_path / "ds", progress=False
    )
    data = load_offline_dataset(tmp_path / "ds").data
    assert len(built) == size and set(data.keys()) >= {MODE_KEY, "episode"}
    mode = data[MODE_KEY].squeeze(-1)
    torch.testing.assert_close(data["next", MODE_KEY].squeeze(-1), mode)
    # The label is the mode that produced the row: each displacement is speed * R(mode * 90 deg) * mean push.
    env = PartnerModesEnv()
    moved = data["next", "observation"][:, :2] - data["observation"][:, :2]
    expected = env.displacement(data["action"].view(-1, 2, 2), data[MODE_KEY])
    torch.testing.assert_close(moved, expected, atol=1e-5, rtol=0)
    # Constant within an episode, drawn per episode: about half of the episodes in each mode.
    episode = data["episode"]
    n_ep = int(episode.max()) + 1
    first = torch.full((n_ep,), float("nan")).scatter_reduce(
        0, episode, mode, "amin", include_self=False
    )
    last = torch.full((n_ep,), float("nan")).scatter_reduce(
        0, episode, mode, "amax", include_self=False
    )
    seen = ~first.isnan()
    assert torch.equal(first[seen], last[seen])
    per_episode = first[seen]
    assert set(per_episode.unique().tolist()) == {-1.0, 1.0}
    share = float((per_episode == 1.0).float().mean())
    n = int(seen.sum())
    assert n > 300 and abs(share - 0.5) < 4 * 0.5 / math.sqrt(n), (share, n)


def test_each_agents_rows_keep_the_label():
    ds = build_dataset(TASK, "random", 2000, seed=1, progress=False)
    task = get_task(TASK)
    for agent in range(task.n_agents):
        rows = agent_transitions(ds.data, task.action_partition, agent)
        assert rows["action"].shape == (2000, 2)
        assert torch.equal(rows[MODE_KEY], ds.data[MODE_KEY])
        assert torch.equal(rows["next", MODE_KEY], ds.data["next", MODE_KEY])
        rb = TensorDictReplayBuffer(
            storage=LazyTensorStorage(2000), transform=AgentView(agent, task.action_partition)
        )
        rb.extend(ds.data.clone())
        stored = rb.storage[:]
        assert torch.equal(stored[MODE_KEY], ds.data[MODE_KEY])
        mask = task.right_dynamics(stored, 1, 2)
        assert torch.equal(mask, ds.data[MODE_KEY].squeeze(-1) == 1.0)


def test_a_tiny_tuning_run_logs_each_agents_right_dynamics_share(tmp_path):
    from torchrl_otc.configs.tune import parse_overrides
    from torchrl_otc.report import load_run
    from torchrl_otc.trainers.strategies import ONLINE_KEY
    from torchrl_otc.trainers.tuning import OnlineTuner

    cfg = parse_overrides(
        [
            f"task={TASK}",
            "dataset_size=2000",
            "offline_updates=20",
            "deployments=2",
            "steps_per_deployment=100",
            "updates_per_deployment=10",
            "eval_episodes=2",
            "num_candidates=64",
            "num_online=50",
        ]
    )
    cfg.run.runs_root, cfg.data.cache_dir = str(tmp_path / "runs"), str(tmp_path / "cache")
    tuner = OnlineTuner(cfg, progress=False)
    summary = tuner.run()
    run = load_run(summary["run_dir"])
    assert sorted(summary["returns"]) == [0, 1, 2]
    for agent in (0, 1):
        share = run.series(f"agent{agent}/offline_right_dynamics_share")
        assert sorted(share) == [0, 1, 2], share
        assert all(0.0 <= s <= 1.0 for s in share.values())
        assert 0.2 < share[0] < 0.8  # offline training: uniform draws over both modes
        # The online rows in the agent's merged buffer carry the deployed mode.
        stored = tuner.agents[agent].learner.merged_buffer.storage[:]
        online = stored[ONLINE_KEY].reshape(-1)
        assert int(online.sum()) == 200
        assert bool((stored[MODE_KEY].reshape(-1)[online] == 1.0).all())
