"""What d_q draws on discrete actions: the batches of one agent after one deployment, against uniform sampling.

A diagnostic for the discrete Figure 6d result (docs/results.rst): OTC with d_q on discrete CQL ended far below its
matched mix. This runs the recipe's cpu-size cell for one seed and one deployment with uniform sampling, OTC with
d_q and OTC with the feature distance, then draws 50 batches of agent 0 from each and prints how many distinct rows
a batch of 128 holds, how the batch's actions spread over MPE's five moves (0 no-op, 1 left, 2 right, 3 down,
4 up) and its online share.

    python examples/discrete_dq_batches.py        # about 2 minutes on one CPU thread
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import torch

from torchrl_otc.configs.tune import parse_overrides
from torchrl_otc.trainers.tuning import OnlineTuner

CELL = [
    "task=mpe/navigation-3-discrete",
    "algo=cql",
    "dataset=random",
    "sequential_exploration=true",
    "exploration_noise=0.1",
    "dataset_size=20000",
    "offline_updates=1000",
    "deployments=1",
    "steps_per_deployment=300",
    "updates_per_deployment=200",
    "eval_episodes=10",
    "threads=1",
]


def batches(root: Path, *strategy: str, draws: int = 50) -> str:
    cfg = parse_overrides([*CELL, *strategy])
    cfg.run.runs_root, cfg.data.cache_dir = str(root / "runs"), str(root / "cache")
    tuner = OnlineTuner(cfg, progress=False)
    returns = tuner.run()["returns"]
    learner = tuner.agents[0].learner
    distinct, actions, online = [], collections.Counter(), []
    for _ in range(draws):
        batch = learner.sample()
        distinct.append(len(torch.unique(batch["transition_id"])))
        actions.update(batch["action"].float().argmax(-1).tolist())
        online.append(float(batch["is_online"].float().mean()))
    total = sum(actions.values())
    spread = " ".join(f"{a}:{actions[a] / total:.2f}" for a in range(5))
    return (
        f"| {' '.join(strategy)} | {returns[0]:.1f} → {returns[1]:.1f} | {sum(distinct) / draws:.1f} | {spread} | "
        f"{sum(online) / draws:.3f} |"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(
            "| sampler | return, offline → deployment 1 | distinct rows per 128 | actions | online share |"
        )
        print("|---|---|---|---|---|")
        for strategy in (
            ("strategy=uniform",),
            ("strategy=otc", "distance=value"),
            ("strategy=otc", "distance=feature"),
        ):
            print(batches(Path(tmp), *strategy))


if __name__ == "__main__":
    main()
