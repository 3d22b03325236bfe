"""The non-stationary navigation task of section 4.5."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

from torchrl_otc.envs.nonstationary_nav import (
    OFFLINE_BETA_RANGE,
    BetaDeployments,
    NonStationaryNavEnv,
    beta_schedule,
)
from torchrl_otc.envs.registry import DeploymentHook, get_task


@pytest.mark.parametrize("num_envs", [1, 8])
def test_specs(num_envs):
    check_env_specs(NonStationaryNavEnv(num_envs, seed=0))


def _one_step_displacement(
    env: NonStationaryNavEnv, action: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    td = env.reset()
    td["action"] = action.expand(env.num_envs, 2).clone()
    nxt = env.step(td)["next"]
    return nxt["observation"][:, :2] - td["observation"][:, :2], td["beta"]


@pytest.mark.parametrize("action", [[1.0, 1.0], [1.0, -0.5], [-1.0, 0.0], [0.3, 0.7]])
def test_offline_beta_gives_zero_mean_displacement(action):
    """With beta ~ U[-0.2, 0.2] (offline collection) every action's expected displacement is zero."""
    n = 20_000
    env = NonStationaryNavEnv(n, seed=1)
    a = torch.tensor(action)
    disp, beta = _one_step_displacement(env, a)
    # Each displacement is exactly beta * a (no walls) ...
    torch.testing.assert_close(disp, beta * a, rtol=0, atol=1e-6)
    assert bool((beta >= OFFLINE_BETA_RANGE[0]).all() and (beta <= OFFLINE_BETA_RANGE[1]).all())
    # ... so its mean is zero up to sampling error: sd(beta) = 0.4 / sqrt(12), 5 standard errors of the mean.
    sd_beta = (OFFLINE_BETA_RANGE[1] - OFFLINE_BETA_RANGE[0]) / math.sqrt(12)
    tol = 5 * sd_beta * a.abs() / math.sqrt(n) + 1e-7
    assert bool((disp.mean(0).abs() <= tol).all()), (disp.mean(0), tol)
    # The same test detects the online dynamics (beta = 0.15): the mean moves by 0.15 * a.
    env.set_beta(0.15)
    disp_online, _ = _one_step_displacement(env, a)
    moved = a != 0
    assert bool((disp_online.mean(0)[moved].abs() > tol[moved]).all())


def test_reward_and_termination_on_set_positions():
    env = NonStationaryNavEnv(3, beta=0.2, seed=0, max_steps=5)
    td = env.reset()
    env._pos[:] = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    env._landmark[:] = torch.tensor([[0.15, 0.0], [0.5, 0.0], [-0.15, 0.0]])
    td["action"] = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    nxt = env.step(td)["next"]
    # env 0 lands at 0.2, 0.05 from its landmark (< 0.1): reward 10 and terminated; env 1 is 0.3 away; env 2 went
    # the wrong way.
    assert nxt["reward"].view(-1).tolist() == [10.0, 0.0, 0.0]
    assert nxt["terminated"].view(-1).tolist() == [True, False, False]
    assert nxt["done"].view(-1).tolist() == [True, False, False]
    torch.testing.assert_close(nxt["observation"][:, :2], torch.tensor([[0.2, 0.0]] * 3))
    torch.testing.assert_close(nxt["observation"][:, 2:], env._landmark - env._pos)


def test_timeout_is_truncation_not_termination():
    env = NonStationaryNavEnv(
        4, beta=0.0, seed=0, max_steps=7
    )  # beta = 0: nobody moves, nobody arrives
    td = env.rollout(7, break_when_any_done=False)
    assert td["next", "truncated"][:, -1].all() and not td["next", "truncated"][:, :-1].any()
    assert not td["next", "terminated"].any()
    assert td["next", "done"][:, -1].all()


def test_beta_is_per_episode_and_recorded():
    env = NonStationaryNavEnv(16, seed=0, max_steps=4)
    td = env.rollout(8, break_when_any_done=False)
    beta = td["beta"].squeeze(-1)
    done = td["next", "done"].squeeze(-1)
    # Constant within an episode, redrawn between episodes. Episodes end at the 4-step timeout or earlier when
    # the random actions reach the landmark, so the boundaries are read from the done flags.
    same = beta[:, 1:] == beta[:, :-1]
    assert same[~done[:, :-1]].all()
    assert done[:, :-1].any() and not same[done[:, :-1]].all()
    assert torch.equal(td["next", "beta"], td["beta"])


def test_partial_reset_keeps_other_envs():
    env = NonStationaryNavEnv(4, seed=0)
    td = env.reset()
    before = td["observation"].clone()
    td["_reset"] = torch.tensor([[True], [False], [False], [True]])
    out = env.reset(td)
    assert torch.equal(out["observation"][1:3], before[1:3])
    assert not torch.equal(out["observation"][0], before[0])


def test_schedule_and_set_beta():
    assert beta_schedule(1, 10) == pytest.approx(0.1)
    assert beta_schedule(10, 10) == pytest.approx(0.2)
    assert beta_schedule(1, 1) == pytest.approx(0.1)
    steps = [beta_schedule(k, 10) for k in range(1, 11)]
    assert all(b2 > b1 for b1, b2 in zip(steps, steps[1:]))
    with pytest.raises(ValueError, match="deployment must be in"):
        beta_schedule(0, 10)
    env = NonStationaryNavEnv(5, seed=0)
    env.set_beta(beta_schedule(4, 10))
    assert torch.allclose(env.reset()["beta"], torch.full((5, 1), 0.1 + 0.1 * 3 / 9))
    with pytest.raises(ValueError, match="low <= high"):
        env.set_beta((0.2, -0.2))


def test_seed_reproducible():
    a, b = NonStationaryNavEnv(3, seed=5).reset(), NonStationaryNavEnv(3, seed=5).reset()
    c = NonStationaryNavEnv(3, seed=6).reset()
    assert torch.equal(a["observation"], b["observation"]) and torch.equal(a["beta"], b["beta"])
    assert not torch.equal(a["observation"], c["observation"])


def test_beta_deployments_hook_follows_the_schedule_and_labels_by_sign():
    hook = BetaDeployments()
    assert isinstance(hook, DeploymentHook)
    assert hook.env_kwargs(0, 5) == hook.env_kwargs(1, 5) == {"beta": beta_schedule(1, 5)}
    assert hook.env_kwargs(5, 5) == {"beta": beta_schedule(5, 5)}
    rows = TensorDict({"beta": torch.tensor([[0.2], [0.05], [-0.01], [-0.2], [0.0]])}, [5])
    assert hook.right_dynamics(rows, 3, 5).tolist() == [True, True, False, False, False]
    flipped = BetaDeployments(start=-0.1, end=-0.2)  # a schedule of the other sign flips the labels
    assert flipped.right_dynamics(rows, 3, 5).tolist() == [False, False, True, True, False]
    assert hook.right_dynamics(TensorDict({}, [5]), 3, 5) is None
    # what the registry's task says is the hook's
    task = get_task("nav/nonstationary")
    assert task.deployments == hook
    assert task.deployment_env_kwargs(2, 5) == hook.env_kwargs(2, 5)
    assert torch.equal(task.right_dynamics(rows, 2, 5), hook.right_dynamics(rows, 2, 5))
