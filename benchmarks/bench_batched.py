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

``--floor`` adds a third contender, only the batched update's matrix products (:func:`matmul_replay`): the
speed-up no batched update doing these products can exceed.

Usage: ``python benchmarks/bench_batched.py [--repeats 10] [--block 4] [--threads 1] [--algos bcq,awac,cql,td3bc]
[--seeds 5] [--agents 3] [--device cpu] [--floor]``
"""

from __future__ import annotations

import argparse
import datetime
import os
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


#: the matrix products a batched update runs, and the positions of their two matrix operands.
_PRODUCTS = {
    "aten::bmm": (0, 1),
    "aten::baddbmm": (1, 2),
    "aten::mm": (0, 1),
    "aten::addmm": (1, 2),
}


def matmul_replay(
    batched: Callable[[int], None], device: torch.device, updates: int = 2
) -> Callable[[int], None]:
    """Only the matrix products of the batched update: the floor of its time.

    Records the ``bmm``/``mm`` calls (with ``baddbmm``/``addmm`` as products) of ``updates`` consecutive batched
    updates (2: one with TD3+BC's actor step, one without); call ``j`` then replays the products of recorded
    update ``j % updates`` on random operands of the same shapes. Everything else (elementwise work, Adam, Python)
    left out, ``separate / replay`` bounds the speed-up any batched update with these products can reach.
    """
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
    ) as prof:
        for j in range(updates):
            with torch.profiler.record_function(f"update {j}"):
                batched(j)
    marks = sorted(
        (e.time_range.start, e.time_range.end, int(e.name.split()[1]))
        for e in prof.events()
        if e.name.startswith("update ")
    )
    products: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(updates)]
    for e in prof.events():
        if e.name in _PRODUCTS:
            i, k = _PRODUCTS[e.name]
            j = next(m for start, end, m in marks if start <= e.time_range.start <= end)
            shapes = e.input_shapes[i], e.input_shapes[k]
            products[j].append(tuple(torch.randn(s, device=device) for s in shapes))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(j: int) -> None:
        for a, b in products[j % updates]:
            torch.matmul(a, b)
        sync()

    return run


def measure(
    fns: dict[str, Callable[[int], None]], repeats: int, block: int, warmup: int = 4
) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms per update of each, and per contender the median over repeats of the ratio separate / it."""
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
    ratios = {
        k: statistics.median([s / b for s, b in zip(times["separate"], times[k])])
        for k in fns
        if k != "separate"
    }
    return {k: statistics.median(v) for k, v in times.items()}, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--block", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--algos", default="bcq,awac,cql,td3bc")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time only the batched update's matrix products (matmul_replay): the speed-up's ceiling",
    )
    args = parser.parse_args()
    if args.block % 2:
        parser.error("--block must be even (TD3+BC's policy delay is 2)")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n = args.seeds * args.agents
    pool = batches(2 * n, device, torch.Generator().manual_seed(0))
    load_before = os.getloadavg()[0]
    rows = []
    for name in args.algos.split(","):
        fns = contenders(name, n, device, pool)
        if args.floor:
            fns["products"] = matmul_replay(fns["batched"], device)
        medians, ratios = measure(fns, args.repeats, args.block)
        rows.append((name, medians, ratios))
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine())
    )
    print(
        f"\n{datetime.date.today()}, torch {torch.__version__}, {where}, {args.threads} thread(s), "
        f"{n} learners ({args.seeds} seeds x {args.agents} agents), batch {BATCH}, state {OBS}, action {ACT}, "
        f"medians of {args.repeats} interleaved blocks of {args.block} updates, 1-minute load average "
        f"{load_before:.2f} before and {os.getloadavg()[0]:.2f} after (other processes on the machine)\n"
    )
    header = "| algorithm | separate ms (N x update) | batched ms (one update) | speed-up (median ratio) |"
    if args.floor:
        header += " matrix products only ms | ceiling (separate / products) |"
    print(header)
    print("|---" * header.count(" | ") + "|---|")
    for name, medians, ratios in rows:
        line = f"| {name} | {medians['separate']:.1f} | {medians['batched']:.1f} | {ratios['batched']:.2f} |"
        if args.floor:
            line += f" {medians['products']:.1f} | {ratios['products']:.2f} |"
        print(line)


if __name__ == "__main__":
    main()
