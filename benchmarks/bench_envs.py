"""Environment speed and dataset build time (paper tasks: sections 4.1, 4.4, 4.5, 4.7).

Prints two markdown tables:

1. environment steps per second with uniformly random actions, through the TorchRL env (``env.rollout``), for
   every task: VMAS at 1, 64 and 4096 environments on ``--device`` (and 1 PettingZoo env), non-stationary
   navigation at 1, 64 and 4096, MaMuJoCo (one env; the bare gymnasium env for comparison);
2. seconds to build 10^5 joint transitions with ``build_dataset`` (``random``; ``medium`` where a behaviour policy
   is shipped); with ``--medium-replay`` also the ``medium-replay`` builds, which re-run the behaviour-policy
   training (minutes each; reported per build).

    python benchmarks/bench_envs.py                  # full, CPU
    python benchmarks/bench_envs.py --device cuda    # VMAS and navigation simulated on the GPU
    python benchmarks/bench_envs.py --quick          # fewer steps, no 4096-env runs, smaller builds (scaled)
    python benchmarks/bench_envs.py --only envs      # the first table only (``--only builds``: the second;
                                                     # ``--only sim-builds``: its navigation and VMAS rows)

With ``--device cuda`` the clock is read after ``torch.cuda.synchronize``; the ``nav`` and MPE builds simulate on
``--device`` too, the MaMuJoCo, PettingZoo and bare gymnasium rows are CPU simulators whatever the device.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import time
import warnings

import torch

from torchrl_otc.data.datasets.behaviour import behaviour_checkpoint_path
from torchrl_otc.envs import make_env
from torchrl_otc.trainers.behaviour import build_dataset


def _rate(env, steps: int, repeats: int = 3) -> float:
    """Median env-steps per second of ``env.rollout(steps)`` with random actions (all envs counted)."""
    n = env.batch_size.numel() if len(env.batch_size) else 1
    device = torch.device(env.device) if env.device is not None else torch.device("cpu")

    def sync() -> None:  # CUDA runs asynchronously: read the clock on finished work
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    env.rollout(min(steps, 5), break_when_any_done=False)  # warm-up
    rates = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        env.rollout(steps, break_when_any_done=False)
        sync()
        rates.append(steps * n / (time.perf_counter() - t0))
    rates.sort()
    return rates[len(rates) // 2]


def _gym_rate(scenario: str, steps: int) -> float:
    import gymnasium

    env = gymnasium.make(f"{scenario}-v5")
    env.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t0)


MPE_TASKS = (*(f"mpe/navigation-{n}" for n in range(3, 7)), "mpe/predator-prey")


def bench_envs(quick: bool, device: str = "cpu") -> list[tuple[str, str, int, float]]:
    rows = []
    counts = (1, 64) if quick else (1, 64, 4096)
    if importlib.util.find_spec("vmas"):
        for name in MPE_TASKS:
            for n in counts:
                steps = 50 if n < 4096 else 25
                env = make_env(name, num_envs=n, seed=0, device=device)
                rows.append((name, f"VMAS ({device})", n, _rate(env, steps)))
        if importlib.util.find_spec("mpe2"):
            for name in MPE_TASKS:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    env = make_env(name, backend="pettingzoo", seed=0)
                rows.append((name, "PettingZoo (mpe2)", 1, _rate(env, 200 if quick else 500)))
    for n in counts:
        rows.append(
            (
                "nav/nonstationary",
                f"pure torch ({device})",
                n,
                _rate(make_env("nav/nonstationary", num_envs=n, seed=0, device=device), 50),
            )
        )
    if importlib.util.find_spec("gymnasium_robotics") and importlib.util.find_spec("mujoco"):
        for name, scenario in (
            ("mamujoco/halfcheetah-2x3", "HalfCheetah"),
            ("mamujoco/walker2d-2x3", "Walker2d"),
            ("mamujoco/hopper-3x1", "Hopper"),
        ):
            steps = 500 if quick else 2000
            rows.append((name, "TorchRL agents layout", 1, _rate(make_env(name, seed=0), steps)))
            rows.append(
                (
                    name,
                    "TorchRL joint layout",
                    1,
                    _rate(make_env(name, layout="joint", seed=0), steps),
                )
            )
            rows.append((name, "bare gymnasium -v5", 1, _gym_rate(scenario, steps)))
    return rows


MAMUJOCO_TASKS = ("mamujoco/halfcheetah-2x3", "mamujoco/walker2d-2x3", "mamujoco/hopper-3x1")


def bench_builds(
    quick: bool, medium_replay: bool = False, device: str = "cpu", simulated_only: bool = False
) -> list[tuple[str, str, int, int, float, float]]:
    """``(task, kind, envs, transitions, seconds per 10^5, seconds)`` per build.

    ``simulated_only`` keeps the builds that simulate on ``device`` (navigation, VMAS), not MaMuJoCo's.
    """
    size = 20_000 if quick else 100_000
    rows = []
    jobs = [("nav/nonstationary", "random"), ("nav/nonstationary", "medium")]
    if importlib.util.find_spec("vmas"):
        jobs += [
            ("mpe/navigation-3", "random"),
            ("mpe/navigation-3", "medium"),
            ("mpe/predator-prey", "random"),
            ("mpe/predator-prey", "medium"),
        ]
    if importlib.util.find_spec("gymnasium_robotics") and not simulated_only:
        jobs += [(task, kind) for task in MAMUJOCO_TASKS for kind in ("random", "medium")]
        if medium_replay:
            jobs += [(task, "medium-replay") for task in MAMUJOCO_TASKS]
    for task, kind in jobs:
        if kind != "random" and not behaviour_checkpoint_path(task).exists():
            continue
        # VMAS and navigation simulate on ``device``; MaMuJoCo is a CPU simulator
        where = {} if task.startswith("mamujoco/") else {"device": device}
        sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        ds = build_dataset(task, kind, size, seed=0, progress=False, **where)
        sync()
        seconds = time.perf_counter() - t0
        rows.append(
            (
                task,
                kind,
                ds.metadata["env"]["num_envs"],
                len(ds),
                seconds * 100_000 / len(ds),
                seconds,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", help="simulation device of VMAS and navigation")
    parser.add_argument(
        "--only",
        default="envs,builds",
        help="envs, builds (all) or sim-builds (only navigation's and VMAS's, which run on --device)",
    )
    parser.add_argument(
        "--medium-replay",
        action="store_true",
        help="also time the medium-replay builds (minutes each)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    gpu = f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}{gpu}"
    )
    parts = args.only.split(",")
    if "envs" in parts:
        print()
        print("| task | backend | envs | env-steps/s |")
        print("|---|---|---|---|")
        for task, backend, n, rate in bench_envs(args.quick, args.device):
            print(f"| {task} | {backend} | {n} | {rate:,.0f} |", flush=True)
    if "builds" in parts or "sim-builds" in parts:
        print()
        print(
            "| task | kind | envs in parallel | transitions built | seconds per 10^5 transitions "
            "| seconds |"
        )
        print("|---|---|---|---|---|---|")
        builds = bench_builds(
            args.quick, args.medium_replay, args.device, simulated_only="builds" not in parts
        )
        for task, kind, n, size, per, sec in builds:
            print(f"| {task} | {kind} | {n} | {size:,} | {per:.1f} | {sec:.1f} |")


if __name__ == "__main__":
    main()
