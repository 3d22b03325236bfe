"""OTCSampler in a replay buffer you already have.

You hold one agent's offline transitions in a TorchRL replay buffer and are about to collect some online data with
the agents' new policies. OTC asks for two changes: a second, small buffer that holds the latest deployment's
data (``D_i^k``), and ``sampler=OTCSampler(online)`` on the buffer you train from (``B_i^k``, which keeps
everything). The batches stay ordinary TensorDicts; the sampler adds its bookkeeping under ``otc_*`` keys.

The data is a point mass whose speed factor ``beta`` differs between the offline data (``beta ~ U[-0.2, 0.2]``)
and the deployments (``beta = 0.15``): the dynamics of the paper's non-stationary navigation task (section 4.5).
The script prints how often OTC and uniform sampling draw offline rows that follow the online dynamics.

    python examples/tutorials/otc_sampler_in_your_buffer.py            # 50,000 offline rows
    python examples/tutorials/otc_sampler_in_your_buffer.py --tiny     # 5,000 offline rows, about a second
"""

from __future__ import annotations

import argparse

import torch
from tensordict import TensorDictBase
from torchrl.data import LazyTensorStorage, RandomSampler, TensorDictReplayBuffer

from torchrl_otc import OTCSampler
from torchrl_otc.data.synthetic import point_mass_transitions


# [start: the OTC part]
def make_buffers(offline_data: TensorDictBase, online_capacity: int, capacity: int):
    """The online buffer ``D_i^k`` and your training buffer ``B_i^k``, now sampled by OTC."""
    online = TensorDictReplayBuffer(storage=LazyTensorStorage(online_capacity))
    sampler = OTCSampler(online, alpha=1.0)  # |B| = 512, |D| = 2000 by default (Table 3)
    merged = TensorDictReplayBuffer(
        storage=LazyTensorStorage(capacity), sampler=sampler, batch_size=128
    )
    merged.extend(offline_data)  # B_i^0
    sampler.distance.fit(offline_data)  # standardise the features with offline statistics
    return online, merged


def add_deployment(online, merged, d_k: TensorDictBase) -> float:
    """After deployment k: D_i^k replaces the online buffer, B_i^k = B_i^{k-1} + D_i^k, alpha adapts."""
    online.empty()
    online.extend(d_k)
    merged.extend(d_k)
    return merged.sampler.adapt_alpha(merged)  # eq. 4; the first call only records D_1


# [end: the OTC part]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="OTCSampler in a replay buffer you already have.")
    parser.add_argument("--tiny", action="store_true", help="5,000 offline rows instead of 50,000")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_offline, n_online, batches = (5_000, 200, 50) if args.tiny else (50_000, 500, 200)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    offline_data = point_mass_transitions(n_offline, beta=(-0.2, 0.2), generator=g)
    deployments = [
        point_mass_transitions(n_online, beta=0.15, online=True, generator=g) for _ in range(2)
    ]

    online, merged = make_buffers(offline_data, n_online, n_offline + 2 * n_online)
    first = merged.sample()  # before any deployment: uniform, and the batch says so
    print(f"offline phase: otc_uniform={bool(first['otc_uniform'].all())}")
    for k, d_k in enumerate(deployments, start=1):
        alpha = add_deployment(online, merged, d_k)
        record = merged.sampler.alpha_history[-1]
        print(f"deployment {k}: D_{k} = {record['D']:.4f}, alpha = {alpha:.4f}")
    otc = torch.cat([merged.sample() for _ in range(batches)])
    print(
        "one OTC batch row:",
        {k: otc[k][0].item() for k in ("otc_distance", "otc_rank", "otc_prob")},
    )

    # The baseline: the same data in a buffer with TorchRL's uniform sampler.
    uniform_buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(n_offline + 2 * n_online), sampler=RandomSampler(), batch_size=128
    )
    uniform_buffer.extend(offline_data)
    for d_k in deployments:
        uniform_buffer.extend(d_k)
    uniform = torch.cat([uniform_buffer.sample() for _ in range(batches)])

    results: dict = {"alpha_history": list(merged.sampler.alpha_history)}
    print(
        f"{n_offline} offline rows (beta ~ U[-0.2, 0.2]), 2 x {n_online} online rows (beta = 0.15)"
    )
    print("| sampler | offline rows with the online dynamics (beta > 0) | online rows in batches |")
    print("|---|---|---|")
    for name, batch in (("uniform", uniform), ("otc", otc)):
        offline_rows = ~batch["is_online"]
        results[name] = (batch["beta"][offline_rows] > 0).float().mean().item()
        results[f"{name}_online_share"] = batch["is_online"].float().mean().item()
        print(f"| {name} | {results[name]:.3f} | {results[f'{name}_online_share']:.3f} |")
    return results


if __name__ == "__main__":
    main()
