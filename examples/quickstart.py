"""Quick start: OTCSampler on point-mass data whose dynamics changed between offline and online collection.

Offline transitions move by ``beta * a`` with ``beta ~ U[-0.2, 0.2]`` (the non-stationary navigation task of the
paper, section 4.5); the deployment's online transitions all have ``beta = 0.15``. Uniform sampling of the merged
data draws offline rows whose ``beta`` has the online sign about half the time; OTC draws them far more often.

    python examples/quickstart.py
"""

from __future__ import annotations

import logging

import torch
from torchrl.data import LazyTensorStorage, RandomSampler, TensorDictReplayBuffer

from torchrl_otc import FeatureDistance, OTCSampler
from torchrl_otc.data.synthetic import point_mass_transitions


def main(n_offline: int = 50_000, n_online: int = 500, calls: int = 200, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    offline = point_mass_transitions(n_offline, (-0.2, 0.2), generator=g)
    deployment = point_mass_transitions(n_online, 0.15, online=True, generator=g)
    rows = []
    for name, make in [
        ("uniform (RandomSampler)", lambda online: RandomSampler()),
        (
            "OTC alpha=1, raw next states",
            lambda online: OTCSampler(online, distance=FeatureDistance(next_state="next_state")),
        ),
        ("OTC alpha=1, displacements", lambda online: OTCSampler(online)),
        ("OTC alpha=2, displacements", lambda online: OTCSampler(online, alpha=2.0)),
    ]:
        online = TensorDictReplayBuffer(storage=LazyTensorStorage(n_online))
        sampler = make(online)
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
        right_sign = float((batch["beta"][off] > 0).float().mean())
        rows.append((name, float(batch["is_online"].float().mean()), right_sign))
    print(
        f"{n_offline} offline rows (beta ~ U[-0.2, 0.2]), {n_online} online rows (beta = 0.15); "
        f"{calls} batches of 128"
    )
    print("| sampler | online rows in batches | offline rows with the online sign of beta |")
    print("|---|---|---|")
    for name, online_share, share in rows:
        print(f"| {name} | {online_share:.3f} | {share:.3f} |")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
