"""Speed of OTCSampler.sample against uniform sampling (issue: sampler speed; paper Table 2 for context).

Medians over repeats, all in one process. Sizes: 10^6 merged rows, 10^4 online rows, |B| = 512, |D| = 2000,
batch 128, HalfCheetah-2x3-like features (17-d state, 3-d action per agent). The ``part:`` rows time pieces
alone, among them what a packed, pre-standardised feature cache would replace (not built).

    python benchmarks/bench_sampler.py [--rows 1000000] [--repeats 200] [--device cpu] [--no-compile]

``score_every=4`` rows are the median of blocks of four consecutive calls (one scoring, four draws), divided by
four: the cost per batch.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time

import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, RandomSampler, TensorDictReplayBuffer

from torchrl_otc import FeatureDistance, MixSampler, OTCSampler
from torchrl_otc.data.samplers import argmin_random_ties, rank_priorities
from torchrl_otc.data.samplers._storage import gather
from torchrl_otc.modules.transition_distance import _l1_min, pairwise_l1


def _matrix_kernel(x: torch.Tensor, y_t: torch.Tensor):
    """The kernel the sampler compiled until 2026-12-06, kept here as the reference its successor is timed
    against: it returns the ``[B, D]`` matrix with the row minima, argmins and tie counts."""
    d = (x.unsqueeze(2) - y_t.unsqueeze(0)).abs().sum(1)
    values, index = d.min(1)
    return d, values, index, (d == values.unsqueeze(1)).sum(1)


def make(n: int, obs: int, act: int, device: str) -> TensorDict:
    g = torch.Generator().manual_seed(n)
    s = torch.randn(n, obs, generator=g)
    return TensorDict(
        {
            "observation": s,
            "action": torch.rand(n, act, generator=g) * 2 - 1,
            ("next", "observation"): s + 0.1 * torch.randn(n, obs, generator=g),
            ("next", "reward"): torch.randn(n, 1, generator=g),
        },
        batch_size=[n],
    ).to(device)


def timeit(fn, repeats: int, device: str = "cpu", warmup: int = 10) -> float:
    """Median ms of ``fn()``; on CUDA the clock starts and stops only after the queued work has finished."""

    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--online", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    offline = make(args.rows, 17, 3, args.device)
    deployment = make(args.online, 17, 3, args.device)

    results = {}
    uniform = TensorDictReplayBuffer(
        storage=LazyTensorStorage(args.rows, device=args.device),
        sampler=RandomSampler(),
        batch_size=128,
    )
    uniform.extend(offline)
    results["uniform rb.sample(128)"] = timeit(uniform.sample, args.repeats, args.device)
    results["uniform sampler.sample (indices only)"] = timeit(
        lambda: uniform.sampler.sample(uniform.storage, 128), args.repeats, args.device
    )
    # The matched-mix control (strategy=mix): a fixed online share, uniform within each part.
    flagged = offline.clone()
    flagged.set("is_online", torch.zeros(args.rows, dtype=torch.bool, device=args.device))
    fresh = deployment.clone()
    fresh.set("is_online", torch.ones(args.online, dtype=torch.bool, device=args.device))
    mix = TensorDictReplayBuffer(
        storage=LazyTensorStorage(args.rows + args.online, device=args.device),
        sampler=MixSampler(0.5),
        batch_size=128,
    )
    mix.extend(flagged)
    mix.extend(fresh)
    results["mix (0.5) rb.sample(128)"] = timeit(mix.sample, args.repeats, args.device)
    results["mix (0.5) sampler.sample (indices only)"] = timeit(
        lambda: mix.sampler.sample(mix.storage, 128), args.repeats, args.device
    )
    variants = [(False, 1), (False, 4)] + ([] if args.no_compile else [(True, 1), (True, 4)])
    for compiled, score_every in variants:
        online = TensorDictReplayBuffer(storage=LazyTensorStorage(args.online, device=args.device))
        sampler = OTCSampler(
            online, alpha=1.0, distance=FeatureDistance(compile=compiled), score_every=score_every
        )
        merged = TensorDictReplayBuffer(
            storage=LazyTensorStorage(args.rows + args.online, device=args.device),
            sampler=sampler,
            batch_size=128,
        )
        merged.extend(offline)
        sampler.distance.fit(offline[:100_000])
        online.extend(deployment)
        merged.extend(deployment)
        tag = ("compiled" if compiled else "eager") + (
            f", score_every={score_every}" if score_every > 1 else ""
        )
        k = score_every

        def per_batch(fn, k=k):  # the median of blocks of k calls (one scoring), per call
            return timeit(lambda: [fn() for _ in range(k)], args.repeats, args.device) / k

        results[f"OTC rb.sample(128), {tag}"] = per_batch(merged.sample)
        results[f"OTC sampler.sample (indices only), {tag}"] = per_batch(
            lambda s=sampler, m=merged: s.sample(m.storage, 128)
        )

    # What a packed, pre-standardised feature cache (issue 14 item 3; not built) could save: the candidates' read
    # and embedding as the sampler does them (k |B| = 2048 rows with score_every=4, 512 without), against one
    # index_select from a [rows, 37] matrix of the same embeddings computed once.
    keys = list(sampler.distance.in_keys)
    packed = torch.cat(
        sampler.distance.embed(
            gather(merged.storage, torch.arange(args.rows, device=args.device), keys)
        ),
        -1,
    )
    # Fresh random rows on every call (cold reads, as the sampler's), the draw included in both.
    draw = torch.Generator(device=args.device).manual_seed(1)
    for rows in (512, 2048):

        def fresh(rows=rows):
            return torch.randint(args.rows, (rows,), generator=draw, device=args.device)

        results[f"  part: read + embed {rows} new candidates (the sampler's)"] = timeit(
            lambda: sampler.distance.embed(gather(merged.storage, fresh(), keys)),
            args.repeats,
            args.device,
        )
        results[f"  part: index_select {rows} new rows of a packed {list(packed.shape)} cache"] = (
            timeit(lambda: packed.index_select(0, fresh()), args.repeats, args.device)
        )

    # Breakdown of the eager path.
    g = torch.Generator(device=args.device).manual_seed(0)
    x = torch.randn(512, 20, device=args.device)
    y = torch.randn(2000, 20, device=args.device)
    d = pairwise_l1(x, y)
    results["  part: pairwise L1 512x2000x20 (cdist)"] = timeit(
        lambda: pairwise_l1(x, y), args.repeats, args.device
    )
    results["  part: argmin with random ties"] = timeit(
        lambda: argmin_random_ties(d, g), args.repeats, args.device
    )
    results["  part: rank priorities (eq. 3)"] = timeit(
        lambda: rank_priorities(d[:, 0], 1.0), args.repeats, args.device
    )
    if not args.no_compile:
        fused = torch.compile(_l1_min, dynamic=False)
        before = torch.compile(_matrix_kernel, dynamic=False)
        y_t = y.t().contiguous()
        results["  part: fused L1 + row min + first/last column, compiled (the sampler's)"] = (
            timeit(lambda: fused(x, y_t), args.repeats, args.device)
        )
        results["  part: fused L1 returning the matrix + min + tie count, compiled (before)"] = (
            timeit(lambda: before(x, y_t), args.repeats, args.device)
        )

    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor() or "cpu"
    )
    print(
        f"device: {device}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"rows {args.rows}; online {args.online}; medians of {args.repeats}"
    )
    print("| step | ms |")
    print("|---|---|")
    for name, ms in results.items():
        print(f"| {name} | {ms:.3f} |")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
