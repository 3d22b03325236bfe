"""Wall time of a grid cell's seeds: separate runs one after the other against one lockstep group (the default).

The runs are those of a reduced ``cpu`` size of ``examples/recipes/figure6_mpe_and_nonstationary.yaml`` (the
navigation task, OTC with the feature distance, TD3+BC or BCQ at Table 3's sizes): ``--seeds`` runs with their
offline training, ``--deployments`` deployments of ``--steps`` environment steps and ``--updates`` updates, and
evaluations. The datasets are built once beforehand and copied into a fresh cache for every measurement (so neither
mode loads offline agents the other trained). Separate and lockstep alternate, repeat after repeat, so that machine
load hits them alike; the figure reported is the median over repeats of the ratio separate / lockstep in the same
repeat, next to the median seconds of each. The run folders go to a temporary folder, removed at the end.

Usage: ``python benchmarks/bench_lockstep.py [--seeds 5] [--algo td3bc] [--repeats 2] [--threads 1]
[--offline-updates 300] [--deployments 2] [--steps 200] [--updates 200] [--dataset-size 5000] [--device cpu]``
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from torchrl_otc.configs.tune import parse_overrides
from torchrl_otc.trainers.lockstep import LockstepTuners
from torchrl_otc.trainers.tuning import OnlineTuner


def configs(args: argparse.Namespace, root: Path, cache: Path) -> list:
    out = []
    for seed in range(args.seeds):
        cfg = parse_overrides(
            [
                "task=nav/nonstationary",
                f"algo={args.algo}",
                "strategy=otc",
                "distance=feature",
                f"dataset_size={args.dataset_size}",
                f"offline_updates={args.offline_updates}",
                f"deployments={args.deployments}",
                f"steps_per_deployment={args.steps}",
                f"updates_per_deployment={args.updates}",
                "eval_episodes=5",
                f"threads={args.threads}",
                f"device={args.device}",
                f"seed={seed}",
            ]
        )
        cfg.run.runs_root, cfg.data.cache_dir = str(root), str(cache)
        out.append(cfg)
    return out


def sync(device: str) -> None:
    """Waits for the GPU's queued work before the clock is read (CUDA runs asynchronously)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def fresh_cache(work: Path, datasets: Path, name: str) -> Path:
    cache = work / name / "cache"
    shutil.copytree(datasets, cache / "datasets")
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--algo", default="td3bc")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--offline-updates", type=int, default=300)
    parser.add_argument("--deployments", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--dataset-size", type=int, default=5000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_lockstep-"))
    try:
        # the datasets, once
        prep = configs(args, work / "prep" / "runs", work / "prep" / "cache")
        for cfg in prep:
            OnlineTuner(cfg, progress=False)._load_dataset()
        datasets = work / "prep" / "cache" / "datasets"
        separate_s, lockstep_s, ratios = [], [], []
        for r in range(args.repeats):
            cache = fresh_cache(work, datasets, f"separate{r}")
            sync(args.device)
            t0 = time.perf_counter()
            for cfg in configs(args, work / f"separate{r}" / "runs", cache):
                OnlineTuner(cfg, progress=False).run()
            sync(args.device)
            separate_s.append(time.perf_counter() - t0)
            cache = fresh_cache(work, datasets, f"lockstep{r}")
            tuners = [
                OnlineTuner(cfg, progress=False)
                for cfg in configs(args, work / f"lockstep{r}" / "runs", cache)
            ]
            sync(args.device)
            t0 = time.perf_counter()
            LockstepTuners(tuners).run()
            sync(args.device)
            lockstep_s.append(time.perf_counter() - t0)
            ratios.append(separate_s[-1] / lockstep_s[-1])
            print(
                f"repeat {r}: separate {separate_s[-1]:.1f} s, lockstep {lockstep_s[-1]:.1f} s, "
                f"ratio {ratios[-1]:.2f}",
                flush=True,
            )
        where = (
            torch.cuda.get_device_name(args.device)
            if torch.device(args.device).type == "cuda"
            else platform.processor() or platform.machine()
        )
        print(
            f"{args.seeds} seeds of {args.algo} (nav/nonstationary, {args.offline_updates} offline updates, "
            f"{args.deployments} x ({args.steps} steps, {args.updates} updates)), {args.threads} thread(s), "
            f"{args.device}: separate {statistics.median(separate_s):.1f} s, lockstep "
            f"{statistics.median(lockstep_s):.1f} s, separate / lockstep {statistics.median(ratios):.2f} "
            f"(median of {args.repeats}); {where}, "
            f"{datetime.date.today().isoformat()}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
