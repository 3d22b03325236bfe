"""Offline to online on Cooperative Navigation (VMAS), end to end with OnlineTuner.

Three agents learn to cover three landmarks (the paper's MPE task, section 4.4). The script runs Algorithm 1 once
per sampling strategy, every agent on its own:

1. build a joint offline dataset with uniformly random actions (``dataset=random``) and give each agent its own
   transitions ``(s, a_i, r, s')``, the other agents' actions removed (section 4.1);
2. train one TD3+BC agent per agent offline on its own data;
3. deploy the three policies together ``K`` times; after each deployment every agent tunes its policy on its merged
   buffer, sampled by OTC (or uniformly, for comparison).

Both strategies start from the same offline-trained agents (``OnlineTuner`` caches them per task, dataset,
algorithm, seed and number of offline updates), so their returns differ only by what happens online. Each run writes
a run folder (``config.yaml``, ``meta.json``, ``metrics.csv``, ``checkpoint/``) under ``--runs-root``.

    python examples/tutorials/offline_to_online_navigation.py --tiny     # seconds; checks that it all runs
    python examples/tutorials/offline_to_online_navigation.py            # minutes on a 2-core CPU
    python examples/tutorials/offline_to_online_navigation.py --set deployments=10 --set seed=1

Needs the ``envs`` extra (VMAS): ``pip install -e ".[envs]"``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from torchrl_otc import OnlineTuner, TuneConfig, parse_overrides
from torchrl_otc.report import load_run

#: Sizes for a run of a few seconds (a smoke test, not an experiment).
TINY = {
    "dataset_size": 1000,
    "offline_updates": 20,
    "deployments": 2,
    "steps_per_deployment": 100,
    "updates_per_deployment": 20,
    "eval_episodes": 2,
    "num_candidates": 64,
    "num_online": 50,
}
#: Sizes of the default run: TuneConfig's defaults (|B| = 512, |D| = 2000, M = 1 % of the dataset).
DEFAULT = {"dataset_size": 20_000, "offline_updates": 2000, "deployments": 3}


def make_config(strategy: str, sizes: dict, runs_root: Path, extra: list[str]) -> TuneConfig:
    """A TuneConfig for one strategy: the same ``key=value`` strings as ``otc tune`` (shortcuts such as ``algo``,
    or dotted paths such as ``algorithm.actor_lr``)."""
    overrides = [
        "task=mpe/navigation-3",
        "dataset=random",
        "algo=td3bc",
        f"strategy={strategy}",
        "device=cpu",
        f"runs_root={runs_root / 'runs'}",
        f"cache_dir={runs_root / 'cache'}",
        *(f"{key}={value}" for key, value in sizes.items()),
        *extra,
    ]
    return parse_overrides(overrides)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Offline to online on Cooperative Navigation.")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a run of a few seconds")
    parser.add_argument(
        "--runs-root",
        type=Path,
        default=None,
        help="where run folders and caches go (default: a new temp dir)",
    )
    parser.add_argument(
        "--strategies", nargs="+", default=["otc", "uniform"], help="sampling strategies to compare"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any TuneConfig field, by shortcut or dotted path, e.g. seed=1 or algorithm.actor_lr=0.0001",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1 is fastest at these sizes)",
    )
    args = parser.parse_args(argv)
    # Small networks on a shared CPU: one thread avoids oversubscription (see benchmarks/README.md).
    torch.set_num_threads(args.threads)
    runs_root = args.runs_root or Path(tempfile.mkdtemp(prefix="otc-navigation-"))
    sizes = TINY if args.tiny else DEFAULT

    runs = {}
    for strategy in args.strategies:
        config = make_config(strategy, sizes, runs_root, args.set)
        summary = OnlineTuner(config, progress=not args.tiny).run()  # Algorithm 1
        runs[strategy] = load_run(summary["run_dir"])  # metrics.csv, read back

    print(f"mpe/navigation-3, random dataset, TD3+BC; run folders under {runs_root / 'runs'}")
    print("| strategy | return after offline training -> after each deployment | alpha (agent 0) |")
    print("|---|---|---|")
    results = {}
    for strategy, run in runs.items():
        returns = run.returns  # eval/return_mean per deployment, 0 = the offline-trained policy
        alpha = run.series("agent0/alpha")  # OTC only
        curve = " -> ".join(f"{returns[k]:.1f}" for k in sorted(returns))
        alphas = ", ".join(f"{alpha[k]:.3f}" for k in sorted(alpha)) or "-"
        print(f"| {strategy} | {curve} | {alphas} |")
        results[strategy] = {
            "returns": returns,
            "alpha": alpha,
            "online_share": run.series("agent0/online_share"),
            "run_dir": str(run.path),
        }
    return results


if __name__ == "__main__":
    main()
