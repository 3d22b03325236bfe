"""Tests of MixSampler: a fixed share of online rows per batch, uniform within each part (the matched-mix control)."""

from __future__ import annotations

import pytest
import torch
from scipy import stats
from tensordict import TensorDict
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, ListStorage, TensorDictReplayBuffer

from torchrl_otc import MixSampler


def rows(n: int, *, online: bool, deployment: int = 0, start: int = 0) -> TensorDict:
    return TensorDict(
        {
            "x": torch.arange(start, start + n),
            "is_online": torch.full((n,), online),
            "deployment": torch.full((n,), deployment),
        },
        batch_size=[n],
    )


def buffer(sampler: MixSampler, capacity: int = 10_000, storage_cls=LazyTensorStorage, **kw):
    return TensorDictReplayBuffer(
        storage=storage_cls(capacity), sampler=sampler, batch_size=128, **kw
    )


@pytest.mark.parametrize(
    "fraction,batch", [(0.5, 128), (0.25, 128), (0.3477, 128), (0.01, 64), (0.99, 7)]
)
def test_every_batch_holds_exactly_the_rounded_share_of_online_rows(fraction, batch):
    rb = buffer(MixSampler(fraction))
    rb.extend(rows(900, online=False))
    rb.extend(rows(40, online=True, deployment=1, start=900))
    for _ in range(20):
        sample = rb.sample(batch)
        assert int(sample["is_online"].sum()) == round(fraction * batch)
        assert sample.batch_size == torch.Size([batch])


def test_rows_are_uniform_within_the_online_and_the_offline_part():
    torch.manual_seed(0)
    rb = buffer(MixSampler(0.5))
    rb.extend(rows(20, online=False))
    rb.extend(rows(10, online=True, deployment=1, start=20))
    x = torch.cat([rb.sample(128)["x"] for _ in range(200)])  # 25,600 draws, 12,800 per part
    counts = torch.bincount(x, minlength=30).double()
    for part in (counts[:20], counts[20:]):
        # chi-square goodness of fit against equal counts; fixed seed, so p is a fixed number
        assert stats.chisquare(part.numpy()).pvalue > 1e-3
        assert part.sum() == 12_800


def test_latest_source_draws_the_latest_deployment_only_and_all_draws_every_deployment():
    latest, everything = MixSampler(0.5, source="latest"), MixSampler(0.5)
    for sampler in (latest, everything):
        rb = buffer(sampler)
        rb.extend(rows(100, online=False))
        rb.extend(rows(50, online=True, deployment=1, start=100))
        rb.extend(rows(50, online=True, deployment=2, start=150))
        online = torch.cat([(s := rb.sample(128))["deployment"][s["is_online"]] for _ in range(30)])
        assert set(online.tolist()) == ({2} if sampler is latest else {1, 2})


def test_new_online_rows_are_seen_at_once():
    rb = buffer(MixSampler(0.5, source="latest"))
    rb.extend(rows(100, online=False))
    rb.extend(rows(10, online=True, deployment=1, start=100))
    assert set(rb.sample()["deployment"].tolist()) == {0, 1}
    rb.extend(
        rows(10, online=True, deployment=2, start=110)
    )  # the write hook drops the cached row index
    assert set(rb.sample()["deployment"].tolist()) == {0, 2}


def test_without_online_rows_it_samples_the_whole_storage_uniformly():
    rb = buffer(MixSampler(0.5))
    rb.extend(rows(50, online=False))
    x = torch.cat([rb.sample(128)["x"] for _ in range(50)])
    assert x.unique().numel() == 50


def test_same_generator_same_draws_and_the_fraction_round_trips(tmp_path):
    draws = []
    for _ in range(2):
        rb = buffer(MixSampler(0.3), generator=torch.Generator().manual_seed(3))
        rb.extend(rows(100, online=False))
        rb.extend(rows(20, online=True, deployment=1, start=100))
        draws.append(torch.cat([rb.sample()["x"] for _ in range(5)]))
    assert torch.equal(*draws)
    sampler = MixSampler(0.3)
    sampler.online_fraction = 0.7
    other = MixSampler(0.1)
    other.load_state_dict(sampler.state_dict())
    assert other.online_fraction == 0.7
    sampler.dumps(tmp_path / "sampler")  # TorchRL's dumps calls it before the folder exists
    other = MixSampler(0.1)
    other.loads(tmp_path / "sampler")
    assert other.online_fraction == 0.7


def test_memmap_and_two_dimensional_storages():
    rb = buffer(MixSampler(0.25), storage_cls=LazyMemmapStorage)
    rb.extend(rows(100, online=False))
    rb.extend(rows(100, online=True, deployment=1, start=100))
    assert int(rb.sample()["is_online"].sum()) == 32
    rb2 = TensorDictReplayBuffer(storage=LazyTensorStorage(400, ndim=2), sampler=MixSampler(0.25))
    data = torch.stack([rows(100, online=False), rows(100, online=True, deployment=1)], 1)
    rb2.extend(data)
    assert int(rb2.sample(128)["is_online"].sum()) == 32


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_a_fraction_outside_the_open_interval_is_refused(fraction):
    with pytest.raises(ValueError, match="online_fraction must lie in"):
        MixSampler(fraction)


def test_bad_storages_and_missing_columns_say_what_to_do():
    with pytest.raises(ValueError, match="source must be"):
        MixSampler(0.5, source="newest")
    rb = buffer(MixSampler(0.5))
    rb.extend(TensorDict({"x": torch.arange(10)}, batch_size=[10]))
    with pytest.raises(KeyError, match="boolean column 'is_online'"):
        rb.sample()
    rb = buffer(MixSampler(0.5, source="latest"))
    rb.extend(
        TensorDict({"x": torch.arange(10), "is_online": torch.ones(10, dtype=torch.bool)}, [10])
    )
    with pytest.raises(KeyError, match="integer column 'deployment'"):
        rb.sample()
    listed = TensorDictReplayBuffer(storage=ListStorage(10), sampler=MixSampler(0.5))
    listed.extend(rows(5, online=False))
    with pytest.raises(TypeError, match="TensorStorage"):
        listed.sample(2)
