"""OTCSampler(score_every=k): one scoring of k |B| candidates serves k batches (issue 14, item 3).

Each batch must keep the distribution of the per-update procedure (eq. 1-3 on fresh |B| candidates and a fresh |D|
draw): every group of |B| candidates is a fresh uniform draw, and the |D| draw, shared by the k batches, is a fresh
uniform draw too, so the *marginal* distribution of each batch is unchanged. The statistical tests compare the
rows drawn at each position of a group with the per-update procedure's by a chi-square test of homogeneity on
counts from fixed seeds; a control shows the same test rejects a procedure that differs (another alpha).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from scipy import stats
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from torchrl_otc import FeatureDistance, OTCSampler
from torchrl_otc.configs.parts import ConfigError
from torchrl_otc.configs.tune import TuneConfig

N_OFFLINE, N_ONLINE = 30, 12


def _data(n: int, seed: int, online: bool) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 2, generator=g)
    a = torch.rand(n, 1, generator=g)
    shift = 0.0 if online else 0.3 * torch.rand(n, 1, generator=g)
    return TensorDict(
        {
            "observation": s,
            "action": a,
            ("next", "observation"): s + a + shift,
            "is_online": torch.full((n,), online),
        },
        [n],
    )


class CountingDistance(FeatureDistance):
    """The feature distance, counting its comparisons."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def compare(self, *args, **kwargs):
        self.calls += 1
        return super().compare(*args, **kwargs)


def _buffers(seed: int = 0, distance=None, **kwargs):
    online = TensorDictReplayBuffer(storage=LazyTensorStorage(100))
    kwargs = {"num_candidates": 8, "num_online": 6, "alpha": 2.0, **kwargs}
    sampler = OTCSampler(online, distance=distance or CountingDistance(), **kwargs)
    merged = TensorDictReplayBuffer(storage=LazyTensorStorage(100), sampler=sampler, batch_size=4)
    offline = _data(N_OFFLINE, 1, False)
    merged.extend(offline)
    sampler.distance.fit(offline)
    d1 = _data(N_ONLINE, 2, True)
    online.extend(d1)
    merged.extend(d1)
    sampler._rng = torch.Generator().manual_seed(seed)
    return merged, online, sampler


def _counts(sampler: OTCSampler, storage, calls: int, k: int) -> np.ndarray:
    """Row counts ``[k, rows]``: the rows drawn at each position of a group of ``k`` consecutive batches.

    Batches of one row: the rows of one batch come from the same ranked candidates and are not independent, which
    the chi-square test assumes (the counts of successive calls at one position are independent).
    """
    counts = np.zeros((k, len(storage)), dtype=np.int64)
    for call in range(calls):
        index, _ = sampler.sample(storage, 1)
        np.add.at(counts[call % k], index.numpy(), 1)
    return counts


@pytest.mark.parametrize("online_fraction", [None, 0.25], ids=["coupled", "decomposed"])
def test_each_batch_has_the_per_update_distribution(online_fraction):
    k, groups = 4, 4000
    merged, _, ahead = _buffers(seed=1, score_every=k, online_fraction=online_fraction)
    per_position = _counts(ahead, merged.storage, k * groups, k)
    assert ahead.distance.calls == groups  # one scoring per k batches
    merged_1, _, per_update = _buffers(seed=2, online_fraction=online_fraction)
    reference = _counts(per_update, merged_1.storage, groups, 1)[0]
    for position in range(k):
        table = np.stack([per_position[position], reference])
        table = table[:, table.sum(0) > 0]
        p = stats.chi2_contingency(table).pvalue
        assert p > 1e-3, (position, p)
    # the test has power: the same counts from another alpha are told apart
    merged_2, _, other = _buffers(seed=3, alpha=0.5, online_fraction=online_fraction)
    different = _counts(other, merged_2.storage, groups, 1)[0]
    table = np.stack([different, reference])
    assert stats.chi2_contingency(table[:, table.sum(0) > 0]).pvalue < 1e-6


def test_consecutive_batches_share_the_online_draw_and_scores_are_refilled_on_change():
    merged, online, sampler = _buffers(score_every=3)
    distance = sampler.distance
    for _ in range(3):
        sampler.sample(merged.storage, 4)
    assert distance.calls == 1
    sampler.sample(merged.storage, 4)  # the fourth batch needs a new scoring
    assert distance.calls == 2
    changes = [
        lambda: online.extend(_data(2, 5, True)),  # the online buffer is written to
        lambda: merged.extend(_data(2, 6, False)),  # the merged storage is written to
        lambda: setattr(sampler, "alpha", 1.0),  # alpha moves
        lambda: distance.fit(merged[:]),  # the distance changes (its version)
        lambda: sampler.state_dict(),  # a checkpoint is taken
    ]
    for change in changes:
        sampler.sample(merged.storage, 4)
        before = distance.calls
        change()
        sampler.sample(merged.storage, 4)
        assert distance.calls == before + 1, change


def test_a_resumed_sampler_draws_what_the_one_that_went_on_draws():
    merged_a, _, a = _buffers(seed=7, score_every=4)
    a.sample(merged_a.storage, 4)
    state, rng = a.state_dict(), a._rng.get_state()
    merged_b, _, b = _buffers(seed=99, score_every=4)
    b.load_state_dict(state)
    b._rng.set_state(rng)
    for _ in range(6):
        ia, info_a = a.sample(merged_a.storage, 4)
        ib, info_b = b.sample(merged_b.storage, 4)
        assert torch.equal(ia, ib)
        assert torch.equal(info_a["otc_match_index"], info_b["otc_match_index"])


def test_score_every_one_is_the_per_update_procedure():
    (merged_a, _, a), (merged_b, _, b) = _buffers(seed=4), _buffers(seed=4, score_every=1)
    for _ in range(5):
        assert torch.equal(a.sample(merged_a.storage, 4)[0], b.sample(merged_b.storage, 4)[0])
    assert a.distance.calls == 5


def test_a_distance_without_version_is_scored_every_call(caplog):
    distance = CountingDistance()
    merged, _, sampler = _buffers(score_every=4, distance=distance)
    distance.version = None  # as ValueDistance: its critic changes at every update
    with caplog.at_level(logging.WARNING, logger="torchrl_otc.data.samplers.otc"):
        for _ in range(3):
            sampler.sample(merged.storage, 4)
    assert distance.calls == 3
    assert sum("no version" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_bad_score_every_is_refused_naming_the_value(bad):
    online = TensorDictReplayBuffer(storage=LazyTensorStorage(10))
    with pytest.raises(ValueError, match=f"score_every must be a positive integer; got {bad!r}"):
        OTCSampler(online, score_every=bad)


def test_config_score_every():
    assert TuneConfig(score_every=4).sampler.score_every == 4
    with pytest.raises(ConfigError, match="score_every"):
        TuneConfig(score_every=0).validate()
