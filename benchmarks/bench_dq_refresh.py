"""d_q's cost, its exact floor, and what stale values cost in matches (issue 14, item 4).

Part 1, cost: one ``AgentLearner.update()`` of BCQ at Table 3's sizes (the setting of
``bench_learned_distances.py``: batch 128, |B| = 512, |D| = 2000, a 17-d state and 3-d action) with uniform
sampling, exact d_q, and d_q with stale values (``ValueDistance(refresh_every=k)`` with ``OTCSampler(score_every=k)``),
interleaved in one process; medians over blocks, ratios against uniform.

Part 2, the floor of exact d_q: exact d_q computes ``Q(s, a)`` and ``V(s')`` of all |B| + |D| rows with the
critic of the update being made. That pass alone, timed on its own (``ValueDistance._values`` on 2,512 rows), over
the uniform update gives the lowest ratio any exact implementation can reach on this machine:
``1 + pass / update``.

Part 3, staleness: after ``--warmup`` updates of a BCQ learner with exact d_q, draw |B| candidates and |D| online
rows, compare them (eq. 1 and 3), make ``j`` more updates and compare the same rows again with the new critic.
Reported, as medians over ``--probes`` probes: the share of candidates whose match (first nearest online row) is
unchanged, the Spearman correlation of the candidates' eq. (3) scores (the next-state distance to the match), and
the overlap of the best quarter of the candidates by score. ``j = k - 1`` is the oldest values
``refresh_every=k`` uses.

``--device cuda`` puts the learners, buffers and data on the GPU and waits for it before each clock reading.

Usage: ``python benchmarks/bench_dq_refresh.py [--repeats 9] [--block 20] [--threads 1] [--only cost,floor,stale]
[--device cpu]``
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch
from bench_learned_distances import interleaved_update_ms, learner, synchronizer, transitions
from torchrl.data import RandomSampler

from torchrl_otc import OTCSampler, ValueDistance
from torchrl_otc.modules import OnlineRows
from torchrl_otc.trainers.learner import AgentLearner

NUM_CANDIDATES, NUM_ONLINE = 512, 2000


def bcq_learner(factory, args, warmup: int = 8) -> AgentLearner:
    return learner(
        "bcq",
        factory,
        transitions(args.offline, 0, False).to(args.device),
        transitions(args.online, 1, True).to(args.device),
        args.device,
        warmup=warmup,
    )


def samplers() -> dict:
    out = {
        "uniform": lambda online: RandomSampler(),
        "d_q exact": lambda online: OTCSampler(online, distance=ValueDistance()),
    }
    for k in (2, 4, 8):
        out[f"d_q, refresh_every={k}, score_every={k}"] = lambda online, k=k: OTCSampler(
            online, distance=ValueDistance(refresh_every=k), score_every=k
        )
    return out


def cost(args) -> list[tuple[str, float, float]]:
    learners = {name: bcq_learner(factory, args) for name, factory in samplers().items()}
    times = interleaved_update_ms(learners, args.repeats, args.block, synchronizer(args.device))
    base = statistics.median(times["uniform"])
    return [(name, statistics.median(v), statistics.median(v) / base) for name, v in times.items()]


def floor(args) -> tuple[float, float, float]:
    """(uniform update ms, value pass ms over |B| + |D| rows, 1 + pass / update), medians, interleaved."""
    uniform = bcq_learner(samplers()["uniform"], args, warmup=0)
    distance = ValueDistance(uniform.algorithm)
    rows = uniform.merged_buffer.storage[
        torch.randint(0, len(uniform.merged_buffer), (NUM_CANDIDATES + NUM_ONLINE,))
    ]
    sync = synchronizer(args.device)
    for _ in range(5):
        uniform.update()
        distance._values(rows)
    update_ms, pass_ms = [], []
    for _ in range(args.repeats):
        for step, out in ((uniform.update, update_ms), (lambda: distance._values(rows), pass_ms)):
            sync()
            t0 = time.perf_counter()
            for _ in range(args.block):
                step()
            sync()
            out.append((time.perf_counter() - t0) * 1e3 / args.block)
    u, p = statistics.median(update_ms), statistics.median(pass_ms)
    return u, p, 1.0 + p / u


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(x)).double()


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([_ranks(a), _ranks(b)]))[0, 1])


def staleness(args) -> list[tuple[int, float, float, float]]:
    """Per ``j``: medians of (matches kept, Spearman of scores, best-quarter overlap)."""
    each = bcq_learner(samplers()["d_q exact"], args, warmup=0)
    for _ in range(args.warmup):
        each.update()
    distance = each.sampler.distance
    g = torch.Generator().manual_seed(1)
    steps = sorted(args.stale_updates)
    results: dict[int, list[tuple[float, float, float]]] = {j: [] for j in steps}
    quarter = NUM_CANDIDATES // 4
    for _ in range(args.probes):
        candidates = each.merged_buffer.storage[
            torch.randint(0, len(each.merged_buffer), (NUM_CANDIDATES,), generator=g)
        ]
        online = each.online_buffer.storage[
            torch.randint(0, len(each.online_buffer), (NUM_ONLINE,), generator=g)
        ]

        def scores(candidates=candidates, online=online) -> tuple[torch.Tensor, torch.Tensor]:
            comparison = distance.compare(candidates, OnlineRows.of(online))
            return comparison.argmin, comparison.next_state(comparison.argmin)

        match0, score0 = scores()
        best0 = set(torch.argsort(score0)[:quarter].tolist())
        done = 0
        for j in steps:
            for _ in range(j - done):
                each.update()
            done = j
            match, score = scores()
            best = set(torch.argsort(score)[:quarter].tolist())
            results[j].append(
                (
                    float((match == match0).double().mean()),
                    _spearman(score0, score),
                    len(best0 & best) / quarter,
                )
            )
    return [(j, *(statistics.median(r[i] for r in results[j]) for i in range(3))) for j in steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--offline", type=int, default=100_000)
    parser.add_argument("--online", type=int, default=10_000)
    parser.add_argument(
        "--warmup", type=int, default=500, help="updates before the staleness probes"
    )
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--stale-updates", type=int, nargs="+", default=[1, 3, 7])
    parser.add_argument("--only", default="cost,floor,stale")
    parser.add_argument("--device", default="cpu", help="where the learners, buffers and data live")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"# {datetime.date.today()} | {platform.processor() or platform.machine()} | torch {torch.__version__} | "
        f"threads {args.threads} | device {args.device} | offline {args.offline} online {args.online}\n"
    )
    parts = args.only.split(",")
    if "cost" in parts:
        print("| BCQ update with | ms per update | ratio to uniform |\n|---|---|---|")
        for name, ms, ratio in cost(args):
            print(f"| {name} | {ms:.2f} | {ratio:.2f} |")
        print()
    if "floor" in parts:
        u, p, r = floor(args)
        print(
            f"exact d_q floor: uniform BCQ update {u:.2f} ms, Q and V(s') of {NUM_CANDIDATES + NUM_ONLINE} rows "
            f"{p:.2f} ms, lowest exact ratio 1 + pass / update = {r:.2f}\n"
        )
    if "stale" in parts:
        print(
            "| updates since scoring | matches kept | Spearman of scores | best quarter kept |\n"
            "|---|---|---|---|"
        )
        for j, kept, rho, overlap in staleness(args):
            print(f"| {j} | {kept:.3f} | {rho:.3f} | {overlap:.3f} |")


if __name__ == "__main__":
    main()
