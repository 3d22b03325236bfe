"""Tests of decomposed OTC (``OTCSampler(online_fraction=...)``): a fixed online share per batch, the rest chosen by
eq. (3) among offline rows only; and of the adaptive share driven by eq. (4)'s D_k."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats
from torchrl.data import LazyTensorStorage, RandomSampler, TensorDictReplayBuffer

from torchrl_otc import OTCSampler
from torchrl_otc.data.samplers.decomposed import (
    DEFAULT_FRACTION_RANGE,
    adaptive_online_fraction,
    check_online_fraction,
)
from torchrl_otc.data.synthetic import point_mass_sampling_shares, point_mass_transitions


def merged_buffers(
    n_offline: int,
    deployments: list[tuple[int, float]],
    *,
    seed: int = 0,
    **sampler_kw,
) -> tuple[TensorDictReplayBuffer, OTCSampler]:
    """Point-mass rows: ``n_offline`` offline rows (beta ~ U[-0.2, 0.2]), then one deployment per ``(rows, beta)``;
    the online buffer holds the latest deployment (as the tuning loop's does)."""
    g = torch.Generator().manual_seed(seed)
    online = TensorDictReplayBuffer(storage=LazyTensorStorage(10_000))
    sampler = OTCSampler(online, **{"num_candidates": 128, "num_online": 200, **sampler_kw})
    merged = TensorDictReplayBuffer(
        storage=LazyTensorStorage(n_offline + sum(n for n, _ in deployments)),
        sampler=sampler,
    )
    offline = point_mass_transitions(n_offline, (-0.2, 0.2), generator=g)
    offline["deployment"] = torch.zeros(n_offline, dtype=torch.long)
    offline["row"] = torch.arange(n_offline)
    merged.extend(offline)
    sampler.distance.fit(offline)
    start = n_offline
    for k, (n, beta) in enumerate(deployments, 1):
        rows = point_mass_transitions(n, beta, online=True, generator=g)
        rows["deployment"] = torch.full((n,), k)
        rows["row"] = torch.arange(start, start + n)
        start += n
        online.empty()
        online.extend(rows)
        merged.extend(rows)
    merged.set_rng(torch.Generator().manual_seed(seed))
    return merged, sampler


@pytest.mark.parametrize(
    "fraction,batch", [(0.3, 128), (0.25, 16), (0.0, 64), (0.5, 7), (0.99, 64)]
)
def test_every_batch_holds_exactly_the_rounded_online_share_and_no_online_row_is_ranked(
    fraction, batch
):
    merged, sampler = merged_buffers(500, [(40, 0.15)], online_fraction=fraction)
    for _ in range(10):
        sample = merged.sample(batch)
        assert sample.batch_size == torch.Size([batch])
        online = sample["is_online"]
        assert int(online.sum()) == round(fraction * batch)
        # the eq. (3) part (ranked, rank >= 1) holds offline rows only; the online part is not ranked
        assert torch.equal(sample["otc_rank"] == 0, online)
        assert (sample["row"][~online] < 500).all() and (sample["row"][online] >= 500).all()
        assert torch.equal(sample["otc_match_index"] == -1, online)
        assert sample["otc_online_share"][0].item() == pytest.approx(
            round(fraction * batch) / batch
        )
        assert sample["otc_online_fraction"][0].item() == pytest.approx(fraction)


def test_offline_phase_is_uniform_and_coupled_default_needs_no_online_column():
    online = TensorDictReplayBuffer(storage=LazyTensorStorage(10))
    sampler = OTCSampler(online, online_fraction=0.3)
    merged = TensorDictReplayBuffer(storage=LazyTensorStorage(100), sampler=sampler, batch_size=8)
    merged.extend(point_mass_transitions(100, (-0.2, 0.2)))
    assert merged.sample()[
        "otc_uniform"
    ].all()  # empty online buffer: uniform, as the coupled sampler
    assert OTCSampler(online).online_fraction is None and not OTCSampler(online).decomposed


def test_the_offline_selection_prefers_the_online_dynamics_at_alpha_2():
    """Half the offline rows have the online sign of beta. Uniform draws them at ~1/2; decomposed OTC must beat
    that by a margin from the sample sizes: 100 calls of 128 rows, 96 offline rows each. A call's share is a mean
    of values in [0, 1] (SD <= 1/2) and calls are independent, so the 100-call mean has SD <= 0.05 however the
    rows of one call correlate; the uniform share (~9,600 independent rows) has SD <= 0.006. The margin is 4 SD of
    the difference, 0.2."""
    right_otc, share = point_mass_sampling_shares(
        lambda online: OTCSampler(online, alpha=2.0, online_fraction=0.25), seed=1
    )
    right_uniform, _ = point_mass_sampling_shares(lambda online: RandomSampler(), seed=1)
    assert share == pytest.approx(round(0.25 * 128) / 128)
    assert right_otc > right_uniform + 0.2, (right_otc, right_uniform)


def test_alpha_0_selects_offline_rows_uniformly_and_online_rows_uniformly():
    merged, _ = merged_buffers(20, [(10, 0.15)], alpha=0.0, online_fraction=0.5)
    rows = torch.cat([merged.sample(128)["row"] for _ in range(200)])  # 12,800 draws per part
    counts = torch.bincount(rows, minlength=30).double()
    for part in (counts[:20], counts[20:]):
        assert part.sum() == 12_800
        # chi-square goodness of fit against equal counts; fixed seed, so p is a fixed number
        assert stats.chisquare(part.numpy()).pvalue > 1e-3


def test_alpha_0_offline_right_dynamics_share_is_the_storage_share():
    """alpha = 0 keeps no preference: the drawn offline rows have the online sign as often as the stored ones (1/2).
    Bound: 100 independent calls, each a mean in [0, 1], so the mean has SD <= 0.05 (rows of one call may share
    candidates); the stored share is 1/2 within 1/sqrt(50,000). 4 SD."""
    right, _ = point_mass_sampling_shares(
        lambda online: OTCSampler(online, alpha=0.0, online_fraction=0.25), seed=2
    )
    # 100 independent calls, each a mean in [0, 1]: SD <= 0.05; the stored share is 1/2 up to 1/sqrt(50,000).
    assert abs(right - 0.5) < 4 * 0.05


def test_latest_source_draws_only_the_latest_deployment_and_all_draws_every_deployment():
    for source, expected in (("latest", {2}), ("all", {1, 2})):
        merged, _ = merged_buffers(
            300, [(50, -0.15), (50, 0.15)], online_fraction=0.5, source=source
        )
        batch = torch.cat([merged.sample(128) for _ in range(20)])
        drawn = set(batch["deployment"][batch["is_online"]].tolist())
        assert drawn == expected, source
        assert int(batch["is_online"].sum()) == 20 * 64


def test_the_online_part_follows_new_writes():
    merged, sampler = merged_buffers(300, [(50, 0.15)], online_fraction=0.5, source="latest")
    merged.sample(128)
    rows = point_mass_transitions(50, -0.1, online=True)
    rows["deployment"] = torch.full((50,), 2)
    rows["row"] = torch.arange(350, 400)
    sampler.online_buffer.empty()
    sampler.online_buffer.extend(rows)
    merged.extend(rows)
    batch = merged.sample(128)
    assert set(batch["deployment"][batch["is_online"]].tolist()) == {2}


def test_missing_online_column_says_what_to_write():
    online = TensorDictReplayBuffer(storage=LazyTensorStorage(100))
    sampler = OTCSampler(online, online_fraction=0.3, source="latest")
    merged = TensorDictReplayBuffer(storage=LazyTensorStorage(200), sampler=sampler, batch_size=8)
    data = point_mass_transitions(100, 0.1)
    merged.extend(data)
    sampler.distance.fit(data)
    online.extend(data[:10])
    with pytest.raises(KeyError, match="an integer column .{1,3}deployment"):
        merged.sample()


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, "abc", True, math.nan])
def test_bad_online_fraction_is_refused_in_one_line(bad):
    online = TensorDictReplayBuffer(storage=LazyTensorStorage(10))
    with pytest.raises(
        ValueError, match=r"online_fraction must be a number in \[0, 1\) or 'adaptive'"
    ) as err:
        OTCSampler(online, online_fraction=bad)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="online_key"):
        OTCSampler(online, online_fraction=0.3, online_key=None)
    with pytest.raises(ValueError, match="source"):
        OTCSampler(online, online_fraction=0.3, source="newest")
    with pytest.raises(ValueError, match="online_fraction_range"):
        OTCSampler(online, online_fraction="adaptive", online_fraction_range=(0.2, 1.0))


def test_check_online_fraction_accepts_text_as_the_command_line_gives_it():
    assert check_online_fraction("0.3") == 0.3 and check_online_fraction(0) == 0.0
    assert check_online_fraction("adaptive") == "adaptive"


# ------------------------------------------------------------------------------------------------ adaptive share
def test_adaptive_map_is_monotone_bounded_deterministic_and_scale_free():
    grid = [0.0, 1e-6, 0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 1e6]
    for d_0 in (0.01, 1.0, 100.0):
        values = [adaptive_online_fraction(d, d_0) for d in grid]
        assert values == sorted(values)  # monotone (non-decreasing) in D_k
        lo, hi = DEFAULT_FRACTION_RANGE
        assert all(lo <= v <= hi for v in values)  # bounded
        assert values == [adaptive_online_fraction(d, d_0) for d in grid]  # deterministic
        assert adaptive_online_fraction(d_0, d_0) == 0.5  # F_1 = 1/2
    for d_k, d_0, scale in itertools.product((0.3, 1.0, 3.0), (0.5, 2.0), (1e-3, 7.0)):
        assert adaptive_online_fraction(d_k * scale, d_0 * scale) == pytest.approx(
            adaptive_online_fraction(d_k, d_0)
        )
    # strictly increasing inside the clamp
    assert adaptive_online_fraction(1.0, 1.0) < adaptive_online_fraction(1.1, 1.0)
    assert adaptive_online_fraction(2.0, 1.0, (0.0, 0.6)) == 0.6
    for bad in ((math.nan, 1.0), (1.0, math.inf), (-1.0, 1.0), (0.0, 0.0)):
        assert adaptive_online_fraction(*bad) == 0.5


def test_adaptive_share_follows_d_k_per_deployment_and_survives_a_state_dict_round_trip(tmp_path):
    merged, sampler = merged_buffers(2000, [(200, 0.15)], online_fraction="adaptive")
    assert sampler.current_online_fraction == 0.5  # before the first deployment's D_1
    sampler.adapt_alpha(merged)
    assert sampler.current_online_fraction == 0.5  # F_1 = D_1 / (D_1 + D_1)
    assert int(merged.sample(128)["is_online"].sum()) == 64
    # a second deployment whose dynamics are farther from the offline data's: D_2 > D_1, so F_2 > 1/2
    rows = point_mass_transitions(200, 0.6, online=True, generator=torch.Generator().manual_seed(5))
    rows["deployment"] = torch.full((200,), 2)
    rows["row"] = torch.arange(2200, 2400)
    sampler.online_buffer.empty()
    sampler.online_buffer.extend(rows)
    merged.extend(rows)
    sampler.adapt_alpha(merged)
    d_1, d_2 = (r["D"] for r in sampler.alpha_history)
    assert d_2 > d_1
    f_2 = adaptive_online_fraction(d_2, d_1)
    assert sampler.current_online_fraction == f_2 > 0.5
    assert sampler.alpha_history[-1]["online_fraction"] == f_2
    assert int(merged.sample(128)["is_online"].sum()) == round(f_2 * 128)
    # state_dict and dumps / loads round trips
    fresh = OTCSampler(sampler.online_buffer, online_fraction="adaptive")
    fresh.load_state_dict(sampler.state_dict())
    assert fresh.alpha_history == sampler.alpha_history and fresh.alpha == sampler.alpha
    assert fresh.current_online_fraction == f_2
    sampler.dumps(tmp_path / "s")
    loaded = OTCSampler(sampler.online_buffer, online_fraction="adaptive")
    loaded.loads(tmp_path / "s")
    assert loaded.current_online_fraction == f_2 and loaded.alpha == sampler.alpha


def test_decomposed_d_k_is_measured_over_offline_rows_only():
    """Online rows match their own copies at distance 0: counted in D_k they would lower it as online data grows."""
    merged, coupled = merged_buffers(200, [(200, 0.15)])
    merged2, decomposed = merged_buffers(200, [(200, 0.15)], online_fraction=0.5)
    d_coupled = coupled.expected_distance(merged, 4096)
    d_decomposed = decomposed.expected_distance(merged2, 4096)
    assert d_decomposed > d_coupled  # half the coupled candidates are online rows at distance ~0


def test_fixed_share_is_recorded_and_state_round_trips():
    merged, sampler = merged_buffers(500, [(50, 0.15)], online_fraction=0.3)
    sampler.adapt_alpha(merged)
    assert sampler.alpha_history[-1]["online_fraction"] == 0.3
    fresh = OTCSampler(sampler.online_buffer, online_fraction=0.3)
    fresh.load_state_dict(sampler.state_dict())
    assert fresh.alpha_history == sampler.alpha_history and fresh.alpha == sampler.alpha
    assert "online_fraction=0.3" in repr(sampler)


def test_importance_weights_of_online_rows_are_one():
    merged, _ = merged_buffers(500, [(50, 0.15)], online_fraction=0.25, importance_weights=True)
    batch = merged.sample(64)
    weights = batch["priority_weight"]
    assert (weights[batch["is_online"]] == 1).all() and (weights <= 1).all() and (weights > 0).all()


def test_rows_are_shuffled():
    merged, _ = merged_buffers(500, [(50, 0.15)], online_fraction=0.5)
    flags = merged.sample(128)["is_online"]
    assert not torch.equal(flags, torch.arange(128) < 64)


# ------------------------------------------------------------------------------------------------ through the tuner
@pytest.mark.parametrize("fraction", ["0.3", "adaptive"])
def test_otc_tune_with_an_online_fraction_logs_the_rounded_share(tmp_path, fraction):
    from torchrl_otc.configs.tune import parse_overrides
    from torchrl_otc.report import load_run
    from torchrl_otc.trainers.tuning import OnlineTuner

    cfg = parse_overrides(
        [
            "task=nav/nonstationary",
            "dataset_size=1500",
            "offline_updates=10",
            "deployments=2",
            "steps_per_deployment=100",
            "updates_per_deployment=10",
            "eval_episodes=1",
            "num_candidates=64",
            "num_online=50",
            "checkpoint_every=1000",
            "strategy=otc",
            f"online_fraction={fraction}",
        ]
    )
    cfg.run.runs_root, cfg.data.cache_dir = str(tmp_path / "runs"), str(tmp_path / "cache")
    tuner = OnlineTuner(cfg, progress=False)
    run = load_run(tuner.run()["run_dir"])
    assert run.config["online_fraction"] == (0.3 if fraction == "0.3" else "adaptive")
    batch = cfg.algorithm.batch_size
    share = run.series("agent0/online_share")
    for k in (1, 2):
        expected = (
            0.3
            if fraction == "0.3"
            else adaptive_online_fraction(*(run.series("agent0/D")[j] for j in (k, 1)))
        )
        assert share[k] == pytest.approx(round(expected * batch) / batch, abs=1e-6), (k, share)
    assert run.series("agent0/offline_right_dynamics_share")
