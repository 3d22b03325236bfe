"""Quick start: OTCSampler on point-mass data whose dynamics changed between offline and online collection.

Offline transitions move by ``beta * a`` with ``beta ~ U[-0.2, 0.2]`` (the non-stationary navigation task of the
paper, section 4.5); the deployment's online transitions all have ``beta = 0.15``. Uniform sampling of the merged
data draws offline rows whose ``beta`` has the online sign about half the time; OTC draws them far more often.

    python examples/quickstart.py
"""

from __future__ import annotations

import logging

from torchrl.data import RandomSampler

from torchrl_otc import FeatureDistance, OTCSampler
from torchrl_otc.data.synthetic import point_mass_sampling_shares

SAMPLERS = {
    "uniform (RandomSampler)": lambda online: RandomSampler(),
    "OTC alpha=1, raw next states": lambda online: OTCSampler(
        online, distance=FeatureDistance(next_state="next_state")
    ),
    "OTC alpha=1, displacements": lambda online: OTCSampler(online),
    "OTC alpha=2, displacements": lambda online: OTCSampler(online, alpha=2.0),
}


def main() -> None:
    print(
        "50000 offline rows (beta ~ U[-0.2, 0.2]), 500 online rows (beta = 0.15); 200 batches of 128"
    )
    print("| sampler | online rows in batches | offline rows with the online sign of beta |")
    print("|---|---|---|")
    for name, make in SAMPLERS.items():
        right, online_share = point_mass_sampling_shares(make, calls=200)
        print(f"| {name} | {online_share:.3f} | {right:.3f} |")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
