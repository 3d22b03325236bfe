"""Which reading of the next-state distance, and whether to allow self-matches: measured (issue: sampler, item 5).

Data: point-mass transitions with the dynamics of the non-stationary navigation task (paper section 4.5):
``s' = s + beta * a``; offline ``beta ~ U[-0.2, 0.2]``, the deployment's online data ``beta = 0.15``. For each
setting we report, over seeds (mean ± std), the share of drawn *offline* rows whose ``beta`` has the online sign
(uniform sampling: 0.5; an oracle: 1.0) and the share of online rows in the batches.

    python benchmarks/bench_sampler_readings.py [--seeds 5] [--offline 50000] [--online 500]
"""

from __future__ import annotations

import argparse
import logging
import statistics

import torch
from torchrl.data import LazyTensorStorage, RandomSampler, TensorDictReplayBuffer

from torchrl_otc import FeatureDistance, OTCSampler
from torchrl_otc.data.synthetic import point_mass_transitions


def measure(
    make_sampler, n_offline: int, n_online: int, calls: int, seed: int
) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    offline = point_mass_transitions(n_offline, (-0.2, 0.2), generator=g)
    deployment = point_mass_transitions(n_online, 0.15, online=True, generator=g)
    offline["transition_id"] = torch.arange(n_offline)
    deployment["transition_id"] = torch.arange(n_offline, n_offline + n_online)
    online = TensorDictReplayBuffer(storage=LazyTensorStorage(n_online))
    sampler = make_sampler(online)
    merged = TensorDictReplayBuffer(
        storage=LazyTensorStorage(n_offline + n_online), sampler=sampler, batch_size=128
    )
    merged.extend(offline)
    if isinstance(sampler, OTCSampler):
        sampler.distance.fit(offline)
    online.extend(deployment)
    merged.extend(deployment)
    merged.set_rng(torch.Generator().manual_seed(seed))
    batch = torch.cat([merged.sample() for _ in range(calls)])
    off = ~batch["is_online"]
    return float((batch["beta"][off] > 0).float().mean()), float(batch["is_online"].float().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--offline", type=int, default=50_000)
    parser.add_argument("--online", type=int, default=500)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    settings = {"uniform (RandomSampler)": lambda online: RandomSampler()}
    for reading in ("next_state", "displacement"):
        for self_match in (True, False):
            for alpha in (1.0, 2.0):
                name = f"OTC {reading}, self_match={self_match}, alpha={alpha:g}"
                settings[name] = lambda online, r=reading, sm=self_match, a=alpha: OTCSampler(
                    online, alpha=a, self_match=sm, distance=FeatureDistance(next_state=r)
                )
    print(
        f"{args.offline} offline rows (beta ~ U[-0.2, 0.2]), {args.online} online rows (beta = 0.15), "
        f"{args.calls} batches of 128 per seed, {args.seeds} seeds (mean ± std)"
    )
    print("| sampler | offline rows with the online dynamics | online rows in batches |")
    print("|---|---|---|")
    for name, make in settings.items():
        runs = [measure(make, args.offline, args.online, args.calls, s) for s in range(args.seeds)]
        right = [r[0] for r in runs]
        share = [r[1] for r in runs]
        print(
            f"| {name} | {statistics.mean(right):.3f} ± {statistics.stdev(right):.3f} "
            f"| {statistics.mean(share):.3f} ± {statistics.stdev(share):.3f} |"
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
