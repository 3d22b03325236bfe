"""Datasets of the discrete tasks (issue 17): random one-hot data everywhere, a scripted medium behaviour for the
discrete navigation tasks, and the kinds a discrete task has not refused with a line that says what to use."""

from __future__ import annotations

import pytest
import torch

from torchrl_otc.data.datasets.builders import (
    SCRIPTED_MEDIUM_EPSILON,
    build_dataset,
    scripted_navigation_policy,
    uniform_one_hot_policy,
)
from torchrl_otc.envs import make_env


def _mean_return(policy_of) -> float:
    env = make_env("mpe/navigation-3-discrete", layout="joint", num_envs=256, seed=1)
    data = env.rollout(25, policy=policy_of(env), break_when_any_done=False)
    return float(data["next", "reward"].sum(-2).mean())


def test_the_scripted_medium_behaviour_lies_between_random_and_greedy():
    """Mean returns over 256 episodes of fixed seeds (measured -50.2, -39.2, -18.9; per-episode standard
    deviations are below 10, so a margin of 5 is more than eight standard errors of each mean)."""
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    greedy = _mean_return(lambda env: scripted_navigation_policy(env, 3, 0.0, g()))
    medium = _mean_return(
        lambda env: scripted_navigation_policy(env, 3, SCRIPTED_MEDIUM_EPSILON, g())
    )
    random = _mean_return(lambda env: uniform_one_hot_policy(env, 5, g()))
    assert greedy - medium > 5 and medium - random > 5, (greedy, medium, random)
    assert 0.2 < (medium - random) / (greedy - random) < 0.5  # about a third, as D4RL's medium


def test_medium_dataset_of_discrete_navigation(tmp_path):
    data = build_dataset("mpe/navigation-4-discrete", "medium", 600, seed=3, out=tmp_path / "d")
    action = data.data["action"]
    assert action.shape[-1] == 20 and bool((action.view(-1, 4, 5).sum(-1) == 1).all())
    assert data.metadata["behaviour"]["epsilon"] == SCRIPTED_MEDIUM_EPSILON


@pytest.mark.parametrize(
    "task, kind",
    [
        ("mpe/predator-prey-discrete", "medium"),
        ("smaclike/3m", "medium"),
        ("mpe/navigation-3-discrete", "medium-replay"),
    ],
)
def test_kinds_a_discrete_task_has_not_are_refused(task, kind, tmp_path):
    with pytest.raises(ValueError, match="Use --kind random"):
        build_dataset(task, kind, 200, out=tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_epsilon_is_a_probability():
    env = make_env("mpe/navigation-3-discrete", layout="joint", num_envs=1, seed=0)
    with pytest.raises(ValueError, match="epsilon is a probability"):
        scripted_navigation_policy(env, 3, 1.5)
