"""The online-tuning loop (Algorithm 1) on discrete-action tasks at tiny sizes (issue 17).

``otc tune task=mpe/navigation-3-discrete algo=bcq`` and ``algo=cql`` run end to end; on the SMAC-shaped task
``smaclike/3m`` (per-agent action masks that change during an episode, units that die and can then only take the
no-op) every agent's rows carry its own columns of the mask, no stored action is one the mask forbade, and
sequential exploration (section 4.6, epsilon-greedy on discrete actions) and d_q on discrete Q-values run.
"""

from __future__ import annotations

import math

import pytest

from torchrl_otc.configs.parts import ConfigError
from torchrl_otc.configs.tune import parse_overrides
from torchrl_otc.envs.registry import get_task
from torchrl_otc.report import load_run
from torchrl_otc.trainers.tuning import OnlineTuner

TINY = [
    "dataset_size=1500",
    "offline_updates=20",
    "deployments=2",
    "steps_per_deployment=120",
    "updates_per_deployment=20",
    "eval_episodes=2",
    "num_candidates=64",
    "num_online=50",
    "checkpoint_every=8",
]


def _tuner(tmp_path, *overrides: str) -> OnlineTuner:
    cfg = parse_overrides([*TINY, *overrides])
    cfg.run.runs_root, cfg.data.cache_dir = str(tmp_path / "runs"), str(tmp_path / "cache")
    return OnlineTuner(cfg, progress=False)


@pytest.mark.parametrize(
    "algo, distance", [("bcq", "feature"), ("cql", "feature"), ("bcq", "embedding")]
)
def test_discrete_navigation_runs_end_to_end(tmp_path, algo, distance):
    tuner = _tuner(
        tmp_path, "task=mpe/navigation-3-discrete", f"algo={algo}", f"distance={distance}"
    )
    summary = tuner.run()
    assert sorted(summary["returns"]) == [0, 1, 2]
    assert all(math.isfinite(r) for r in summary["returns"].values())
    run = load_run(summary["run_dir"])
    assert all(math.isfinite(float(r["value"])) for r in run.rows)
    names = {r["name"] for r in run.rows}
    assert "agent0/loss_qvalue" in names
    for agent in tuner.agents:
        assert type(agent.learner.algorithm).__name__ == f"Discrete{algo.upper()}"
        rows = agent.learner.merged_buffer.storage[: len(agent.learner.merged_buffer)]
        action = rows.get("action")
        assert action.shape[-1] == 5 and bool(
            (action.sum(-1) == 1).all()
        )  # one-hot, the agent's own


def test_smac_shaped_task_masks_deaths_sequential_exploration_and_d_q(tmp_path):
    task = get_task("smaclike/3m")
    # long enough episodes for units to die: 6000 rows from 256 environments, 640 online steps from 32
    tuner = _tuner(
        tmp_path,
        "dataset_size=6000",
        "steps_per_deployment=640",
        "task=smaclike/3m",
        "algo=cql",
        "distance=value",
        "sequential_exploration=true",
        "exploration_noise=0.3",
    )
    summary = tuner.run()
    assert sorted(summary["returns"]) == [0, 1, 2]
    dead_rows = 0
    for agent in tuner.agents:
        buffer = agent.learner.merged_buffer
        rows = buffer.storage[: len(buffer)]
        mask, action = rows.get("action_mask"), rows.get("action").bool()
        assert mask.shape[-1] == task.num_actions == action.shape[-1]
        assert bool((action.sum(-1) == 1).all())
        assert not bool((action & ~mask.bool()).any()), "an action the mask forbade was stored"
        online = rows.get("is_online")
        # sequential (section 4.6): one collection per agent per deployment, each agent keeping its own
        assert int(online.sum()) == 2 * 640
        # a dead unit's only available action is the no-op (column 0), and it takes it
        only_noop = mask.bool()[:, 0] & (mask.bool().sum(-1) == 1)
        dead_rows += int((only_noop & online).sum())
        assert bool(action[only_noop, 0].all())
    assert dead_rows > 0, "no unit died in the online data: the test exercises nothing"


def test_continuous_algorithms_are_refused_on_discrete_tasks(tmp_path):
    with pytest.raises(ConfigError, match="algo=td3bc is a continuous-action algorithm"):
        _tuner(tmp_path, "task=mpe/navigation-3-discrete", "algo=td3bc")
    assert not (tmp_path / "runs").exists()
