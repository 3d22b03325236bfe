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

from torchrl.data import RandomSampler

from torchrl_otc import FeatureDistance, OTCSampler
from torchrl_otc.data.synthetic import point_mass_sampling_shares


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
        runs = [
            point_mass_sampling_shares(
                make, n_offline=args.offline, n_online=args.online, calls=args.calls, seed=s
            )
            for s in range(args.seeds)
        ]
        right = [r[0] for r in runs]
        share = [r[1] for r in runs]
        print(
            f"| {name} | {statistics.mean(right):.3f} ± {statistics.stdev(right):.3f} "
            f"| {statistics.mean(share):.3f} ± {statistics.stdev(share):.3f} |"
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
