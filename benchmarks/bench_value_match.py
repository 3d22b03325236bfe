"""d_q's eq. (1) matching: the ``[|B|, |D|]`` L1 matrix against sorting the online values (issue 14, item 4).

Part 1 (the matching alone, a fixed critic-free input): for ``|B| = 512`` candidate values and ``|D| = 2000``
online values, the matrix path (``pairwise_l1`` + ``Comparison.of``: minima, first argmins, tie counts, as
:class:`~torchrl_otc.modules.L1EmbeddingDistance` does) against the sorted path (``torch.sort`` of the online
values + :func:`~torchrl_otc.modules.value_distance.nearest_on_line`), and both through
``ValueDistance.compare`` + the sampler's tie-breaking with a trivial critic (the values are the states).

Part 2 (``--update``): one ``AgentLearner.update()`` of BCQ at Table 3's sizes (batch 128, ``|B| = 512``,
``|D| = 2000``; data of ``bench_learned_distances.py``) with uniform sampling, d_q by the matrix and d_q by
sorting, run interleaved; medians over blocks, ratios against uniform.

Usage: ``python benchmarks/bench_value_match.py [--repeats 20] [--block 20] [--threads 1] [--update]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from tensordict import TensorDict

from torchrl_otc import ValueDistance
from torchrl_otc.data.samplers.ranking import break_ties
from torchrl_otc.modules.transition_distance import (
    Comparison,
    L1EmbeddingDistance,
    OnlineRows,
    pairwise_l1,
)
from torchrl_otc.modules.value_distance import nearest_on_line


class MatrixValueDistance(ValueDistance):
    """d_q through the ``[B, D]`` L1 matrix: the comparison before the sorted path."""

    def compare(self, candidates, online, *, exclude=None):
        return L1EmbeddingDistance.compare(self, candidates, online, exclude=exclude)


def timed(fn: Callable[[], object], repeats: int, block: int) -> float:
    """Median over ``repeats`` blocks of the mean time of one call, in microseconds."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(block):
            fn()
        times.append((time.perf_counter() - t0) * 1e6 / block)
    return statistics.median(times)


def matching(args) -> None:
    g = torch.Generator().manual_seed(0)
    b, d = 512, 2000
    x, y = torch.randn(b, generator=g), torch.randn(d, generator=g)

    def matrix() -> Comparison:
        return Comparison.of(pairwise_l1(x.unsqueeze(-1), y.unsqueeze(-1)), lambda m: m)

    def sorted_path() -> tuple[torch.Tensor, ...]:
        sorted_y, order = torch.sort(y, stable=True)
        return nearest_on_line(x, y, sorted_y, order)

    def td(q: torch.Tensor) -> TensorDict:
        return TensorDict(
            {
                "observation": q.unsqueeze(-1),
                "action": torch.zeros(q.shape[0], 1),
                ("next", "observation"): q.unsqueeze(-1),
            },
            [q.shape[0]],
        )

    cands, online = td(x), td(y)
    rng = torch.Generator().manual_seed(1)

    def through(distance: ValueDistance) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            out = distance.compare(cands, OnlineRows.of(online))
            match = break_ties(out.state_action, out.minimum, out.argmin, out.ties, rng)
            return out.next_state(match)

        return run

    def q(s, a):
        return s[:, 0]

    def v(s):
        return s[:, 0]

    rows = {
        "eq. 1 kernel, matrix (pairwise_l1 + Comparison.of)": matrix,
        "eq. 1 kernel, sorted (sort + searchsorted)": sorted_path,
        "ValueDistance.compare + break_ties, matrix": through(
            MatrixValueDistance(q_function=q, value_function=v)
        ),
        "ValueDistance.compare + break_ties, sorted": through(
            ValueDistance(q_function=q, value_function=v)
        ),
    }
    results = {name: timed(fn, args.repeats, args.block) for name, fn in rows.items()}
    for name, us in results.items():
        print(f"{name:55s} {us:9.1f} us")
    names = list(results)
    print(
        f"kernel speed-up: {results[names[0]] / results[names[1]]:.1f}x; "
        f"compare speed-up: {results[names[2]] / results[names[3]]:.1f}x"
    )


def update(args) -> None:
    from bench_learned_distances import interleaved_update_ms, learner, transitions
    from torchrl.data import RandomSampler

    from torchrl_otc import OTCSampler

    def small_chunks() -> ValueDistance:
        distance = ValueDistance()
        distance.critic_chunk = 512
        return distance

    factories = {
        "uniform": lambda online: RandomSampler(),
        "OTC d_q, matrix": lambda online: OTCSampler(online, distance=MatrixValueDistance()),
        "OTC d_q, sorted": lambda online: OTCSampler(online, distance=ValueDistance()),
        "OTC d_q, sorted, chunk 512": lambda online: OTCSampler(online, distance=small_chunks()),
    }
    offline, online = transitions(args.offline, 0, False), transitions(args.online, 1, True)
    learners = {
        name: learner("bcq", factory, offline, online) for name, factory in factories.items()
    }
    times = interleaved_update_ms(learners, args.repeats, args.block)
    base = statistics.median(times["uniform"])
    for name, values in times.items():
        ms = statistics.median(values)
        print(f"BCQ update, {name:28s} {ms:8.2f} ms  ({ms / base:.2f}x uniform)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--update", action="store_true", help="also time BCQ updates (part 2)")
    parser.add_argument("--offline", type=int, default=20_000)
    parser.add_argument("--online", type=int, default=2_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    matching(args)
    if args.update:
        update(args)


if __name__ == "__main__":
    main()
