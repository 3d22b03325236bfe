"""Whole sweeps with and without lockstep (``otc sweep`` and ``otc sweep --separate``): wall-clock time of the same grid (issue 14, item 2).

The grid: ``nav/nonstationary``, TD3+BC, random data of 20,000 transitions, 1,000 offline updates, 3 deployments of
500 steps and 500 updates, 10 evaluation episodes; two strategies (uniform, OTC with the feature distance) and
``--seeds`` seeds. Each mode runs ``otc sweep`` from scratch in its own folder (dataset builds and offline training
included, each mode with its own cache), one after the other, ``--repeats`` times in turn; the table gives every
wall-clock time and the medians.

Modes: ``separate`` (``--separate``: every run in its own process, ``--workers`` side by side) and ``batched`` (the
sweep's default: both strategies of consecutive seeds in one group, one process per group; ``--lockstep-seeds``
passes the sweep's option, else the sweep cuts the groups itself).

Usage: ``python benchmarks/bench_sweep_lockstep.py [--workers 2] [--seeds 8] [--repeats 2] [--lockstep-seeds N]
[--device cpu]`` (not in ``gpu.sh``: a sweep takes minutes).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = """\
description: sweep throughput, separate against lockstep runs
base: {{dataset: random, algo: td3bc, task: nav/nonstationary}}
grid:
  seed: {seeds}
variants:
  - {{label: uniform, strategy: uniform}}
  - {{label: otc-feature, strategy: otc, distance: feature}}
sizes:
  cpu:
    dataset_size: 20000
    offline_updates: 1000
    deployments: 3
    steps_per_deployment: 500
    updates_per_deployment: 500
    eval_episodes: 10
"""


def sweep(
    root: Path, recipe: Path, workers: int, batched: bool, lockstep_seeds: int | None, device: str
) -> float:
    """Seconds of one ``otc sweep`` from scratch in ``root``, every run on ``device``."""
    shutil.rmtree(root, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "torchrl_otc.cli",
        "sweep",
        str(recipe),
        f"cache_dir={root / 'cache'}",
        f"device={device}",
    ]
    command += [
        "--size",
        "cpu",
        "--workers",
        str(workers),
        "--runs-root",
        str(root),
        "--no-progress",
    ]
    if not batched:
        command += ["--separate"]
    elif lockstep_seeds is not None:
        command += ["--lockstep-seeds", str(lockstep_seeds)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--lockstep-seeds", type=int, default=None, help="the sweep's option (default: its own cut)"
    )
    parser.add_argument(
        "--device", default="cpu", help="the runs' device (the sweep's device= override)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "lockstep.yaml"
        recipe.write_text(RECIPE.format(seeds=list(range(args.seeds))))
        times: dict[str, list[float]] = {"separate": [], "batched": []}
        for _ in range(args.repeats):
            for mode in times:
                times[mode].append(
                    sweep(
                        Path(tmp) / mode,
                        recipe,
                        args.workers,
                        mode == "batched",
                        args.lockstep_seeds,
                        args.device,
                    )
                )
    load = os.getloadavg()[0]
    print(
        f"# {datetime.date.today()} | {platform.processor() or platform.machine()} | {os.cpu_count()} CPUs | "
        f"device {args.device} | workers {args.workers} | {args.seeds} seeds x 2 strategies | "
        f"lockstep seeds {args.lockstep_seeds or 'auto'} | "
        f"load {load:.2f}\n"
    )
    print("| mode | seconds (each run) | median |\n|---|---|---|")
    for mode, values in times.items():
        print(
            f"| {mode} | {', '.join(f'{v:.0f}' for v in values)} | {statistics.median(values):.0f} |"
        )
    ratio = statistics.median(times["separate"]) / statistics.median(times["batched"])
    print(f"\nseparate / batched: {ratio:.2f}")


if __name__ == "__main__":
    main()
