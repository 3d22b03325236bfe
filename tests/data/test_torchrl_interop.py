"""OTC inside TorchRL's own offline-to-online buffer (issue 19, item 3).

TorchRL 0.14's :class:`~torchrl.data.OfflineToOnlineReplayBuffer` draws exactly ``round(offline_fraction * B)`` rows
of every batch from an offline buffer (with that buffer's own sampler) and the rest uniformly from its online
buffer. Giving the offline buffer an :class:`~torchrl_otc.OTCSampler` that matches against a buffer over the same
online storage is decomposed OTC (``online_fraction = 1 - offline_fraction``): the online share is fixed, and eq. (3)
chooses the offline rows by their agreement with the online dynamics. The offline storage holds no online rows, so
no candidate can self-match and alpha acts on the offline selection only.
"""

from __future__ import annotations

import pytest
import torch
from torchrl.data import (
    LazyTensorStorage,
    OfflineToOnlineReplayBuffer,
    RandomSampler,
    ReplayBuffer,
)

from torchrl_otc import OTCSampler
from torchrl_otc.data.synthetic import point_mass_transitions

N_OFFLINE, N_ONLINE, BATCH, CALLS = 4000, 500, 128, 60


def otc_in_torchrl_buffer(sampler_factory, seed: int = 0):
    """TorchRL's buffer with the offline rows (beta ~ U[-0.2, 0.2]) sampled by ``sampler_factory(online_view)`` and
    the online rows (beta = 0.15) in an online storage that the sampler reads through ``online_view``."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    offline = point_mass_transitions(N_OFFLINE, (-0.2, 0.2), generator=g)
    online_storage = LazyTensorStorage(10_000)
    online_view = ReplayBuffer(storage=online_storage)  # reads what TorchRL's buffer writes
    sampler = sampler_factory(online_view)
    offline_rb = ReplayBuffer(storage=LazyTensorStorage(N_OFFLINE), sampler=sampler)
    offline_rb.extend(offline)
    if isinstance(sampler, OTCSampler):
        sampler.distance.fit(offline)
    rb = OfflineToOnlineReplayBuffer(
        offline_rb, online_storage=online_storage, offline_fraction=0.75, batch_size=BATCH
    )
    rb.extend(point_mass_transitions(N_ONLINE, 0.15, online=True, generator=g))
    return rb


def right_dynamics_share(rb) -> tuple[float, float]:
    """Over CALLS batches: the share of online rows, and the share of offline rows whose beta has the online sign."""
    online, right = [], []
    for _ in range(CALLS):
        batch = rb.sample()
        flags = batch["is_online"].reshape(-1)
        online.append(flags.float().mean())
        right.append((batch["beta"].reshape(-1)[~flags] > 0).float().mean())
    return float(torch.stack(online).mean()), float(torch.stack(right).mean())


def test_torchrl_buffer_fixes_the_share_and_otc_chooses_the_offline_rows():
    """Every batch holds exactly 32 online rows (TorchRL's split). The offline rows: uniform draws have the online
    sign of beta about half the time; OTC (alpha 2) must beat that by 0.2. Each call's share is a mean in [0, 1]
    (SD <= 1/2) and calls are independent, so a 60-call mean has SD <= 0.065 and the difference of two such means
    SD <= 0.092; the margin 0.2 is about 2.2 SD of a worst case whose rows would all move together, and far more
    for the real, nearly independent rows (the uniform mean over 5,760 rows has SD <= 0.007)."""
    otc = otc_in_torchrl_buffer(
        lambda online: OTCSampler(
            online, alpha=2.0, num_candidates=128, num_online=200, online_key=None
        )
    )
    uniform = otc_in_torchrl_buffer(lambda online: RandomSampler())
    share_otc, right_otc = right_dynamics_share(otc)
    share_uniform, right_uniform = right_dynamics_share(uniform)
    assert share_otc == share_uniform == pytest.approx(round(0.25 * BATCH) / BATCH)
    assert abs(right_uniform - 0.5) < 0.05
    assert right_otc > right_uniform + 0.2, (right_otc, right_uniform)


def test_before_online_data_the_otc_offline_buffer_is_uniform():
    """TorchRL's buffer samples the offline buffer alone while its online buffer is empty; OTC, with nothing to
    match, then draws uniformly (as in the offline phase of Algorithm 1)."""
    g = torch.Generator().manual_seed(0)
    online_storage = LazyTensorStorage(100)
    sampler = OTCSampler(ReplayBuffer(storage=online_storage), online_key=None)
    offline_rb = ReplayBuffer(storage=LazyTensorStorage(200), sampler=sampler)
    offline_rb.extend(point_mass_transitions(200, (-0.2, 0.2), generator=g))
    rb = OfflineToOnlineReplayBuffer(
        offline_rb, online_storage=online_storage, offline_fraction=0.5
    )
    batch, info = offline_rb.sample(16, return_info=True)
    assert bool(info["otc_uniform"])
    assert rb.sample(16).batch_size == torch.Size([16])
