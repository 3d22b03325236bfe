"""Milliseconds per update of N learners (seeds x agents): N separate updates against one batched update.

For each base algorithm at the OTC paper's Table 3 sizes (batch 128; hidden (64, 64) for BCQ and its VAE,
(256, 256) otherwise) on a HalfCheetah-2x3-like agent (17-d state, 3-d action), ``--seeds`` x ``--agents``
learners (default 5 x 3 = 15) each update on their own pre-drawn batch:

* separate: per learner, ``Algorithm.update`` inside its own random stream (what ``AgentLearner.update`` does after
  sampling);
* batched: per learner, the batched class's ``draw_noise`` inside its own random stream, the batches stacked, then
  one ``update`` of the batched class (what ``BatchedLearners.update`` does after sampling).

Sampling costs the same in both and is left out. Both run interleaved in one process, block after block, so that
machine load hits them alike; the figure reported is the median over repeats of the ratio separate / batched in
the same repeat, next to the median milliseconds of each.

Usage: ``python benchmarks/bench_batched.py [--repeats 10] [--block 4] [--threads 1] [--algos bcq,awac,cql,td3bc]
[--seeds 5] [--agents 3] [--device cpu]``
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from collections.abc import Callable

import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Unbounded

from torchrl_otc._random import RandomStream
from torchrl_otc.configs.algorithms import make_config
from torchrl_otc.trainers.algorithms import make_algorithm
from torchrl_otc.trainers.batched import BATCHED_ALGORITHMS

OBS, ACT, BATCH = 17, 3, 128


def batches(count: int, device: torch.device, generator: torch.Generator) -> list[TensorDict]:
    out = []
    for _ in range(count):
        obs = torch.randn(BATCH, OBS, generator=generator)
        act = torch.rand(BATCH, ACT, generator=generator) * 1.8 - 0.9
        out.append(
            TensorDict(
                {
                    "observation": obs,
                    "action": act,
                    ("next", "observation"): obs
                    + 0.1 * torch.randn(BATCH, OBS, generator=generator),
                    ("next", "reward"): torch.randn(BATCH, 1, generator=generator),
                    ("next", "done"): torch.zeros(BATCH, 1, dtype=torch.bool),
                    ("next", "terminated"): torch.zeros(BATCH, 1, dtype=torch.bool),
                },
                [BATCH],
            ).to(device)
        )
    return out


def contenders(
    name: str, n: int, device: torch.device, pool: list[TensorDict]
) -> dict[str, Callable[[int], None]]:
    """The separate and the batched update of ``n`` learners of ``name`` (Table 3 config)."""
    spec = (Unbounded(shape=(OBS,)), Bounded(-1.0, 1.0, (ACT,)))
    cfg = make_config(name)
    separate = [make_algorithm(cfg, *spec, device, seed=i) for i in range(n)]
    batched = BATCHED_ALGORITHMS[name](
        [make_algorithm(cfg, *spec, device, seed=i) for i in range(n)]
    )
    streams_s = [RandomStream(100 + i, device) for i in range(n)]
    streams_b = [RandomStream(100 + i, device) for i in range(n)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def pick(j: int) -> list[TensorDict]:
        return [pool[(j + i) % len(pool)] for i in range(n)]

    def run_separate(j: int) -> None:
        for algo, stream, batch in zip(separate, streams_s, pick(j)):
            with stream.activate():
                algo.update(batch)
        sync()

    def run_batched(j: int) -> None:
        group = pick(j)
        noise = []
        for stream, batch in zip(streams_b, group):
            with stream.activate():
                noise.append(batched.draw_noise(batch))
        batched.update(
            torch.stack(group), {k: torch.stack([d[k] for d in noise]) for k in noise[0]}
        )
        sync()

    return {"separate": run_separate, "batched": run_batched}


def measure(
    fns: dict[str, Callable[[int], None]], repeats: int, block: int, warmup: int = 4
) -> tuple[dict[str, float], float]:
    """Median ms per update of each, and the median over repeats of the ratio separate / batched."""
    for fn in fns.values():
        for i in range(warmup):
            fn(i)
    times: dict[str, list[float]] = {k: [] for k in fns}
    step = warmup
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            for i in range(block):
                fn(step + i)
            times[key].append((time.perf_counter() - start) * 1e3 / block)
        step += block
    ratios = [s / b for s, b in zip(times["separate"], times["batched"])]
    return {k: statistics.median(v) for k, v in times.items()}, statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--block", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--algos", default="bcq,awac,cql,td3bc")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.block % 2:
        parser.error("--block must be even (TD3+BC's policy delay is 2)")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n = args.seeds * args.agents
    pool = batches(2 * n, device, torch.Generator().manual_seed(0))
    rows = []
    for name in args.algos.split(","):
        medians, ratio = measure(contenders(name, n, device, pool), args.repeats, args.block)
        rows.append((name, medians["separate"], medians["batched"], ratio))
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine())
    )
    print(
        f"\n{datetime.date.today()}, torch {torch.__version__}, {where}, {args.threads} thread(s), "
        f"{n} learners ({args.seeds} seeds x {args.agents} agents), batch {BATCH}, state {OBS}, action {ACT}, "
        f"medians of {args.repeats} interleaved blocks of {args.block} updates\n"
    )
    print(
        "| algorithm | separate ms (N x update) | batched ms (one update) | speed-up (median ratio) |"
    )
    print("|---|---|---|---|")
    for name, sep, bat, ratio in rows:
        print(f"| {name} | {sep:.1f} | {bat:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
