"""Tests of OTCSampler and OnlineOnlySampler (paper section 3, Algorithm 1 lines 10-14, eq. 1, 3, 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import (
    Bounded,
    LazyMemmapStorage,
    LazyTensorStorage,
    ListStorage,
    RandomSampler,
    ReplayBuffer,
    TensorDictReplayBuffer,
)
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import TD3BCLoss

from torchrl_otc import FeatureDistance, OnlineOnlySampler, OTCSampler, TransitionDistance
from torchrl_otc.data.samplers import argmin_random_ties, rank_priorities
from torchrl_otc.data.synthetic import discrete_mdp, kernel_kl


def transitions(s, a, s2, **extra) -> TensorDict:
    s, a, s2 = (torch.as_tensor(x, dtype=torch.float32) for x in (s, a, s2))
    s, a, s2 = (x.unsqueeze(-1) if x.ndim == 1 else x for x in (s, a, s2))
    data = {"observation": s, "action": a, ("next", "observation"): s2}
    data.update({k: torch.as_tensor(v) for k, v in extra.items()})
    return TensorDict(data, batch_size=[s.shape[0]])


def buffers(capacity=10_000, online_capacity=5_000, storage_cls=LazyTensorStorage, **kwargs):
    online = TensorDictReplayBuffer(storage=storage_cls(online_capacity))
    sampler = OTCSampler(online, **kwargs)
    merged = TensorDictReplayBuffer(storage=storage_cls(capacity), sampler=sampler, batch_size=128)
    return merged, online, sampler


def expected_eq3(distances: list[float], alpha: float) -> torch.Tensor:
    """eq. (3) by hand, for distinct distances: rank 1 = smallest, p = 1 / rank, P ∝ p^alpha."""
    order = sorted(range(len(distances)), key=lambda j: distances[j])
    rank = {j: r + 1 for r, j in enumerate(order)}
    p = torch.tensor([(1.0 / rank[j]) ** alpha for j in range(len(distances))], dtype=torch.float64)
    return p / p.sum()


# ------------------------------------------------------------------------------------------- closed form
class TestClosedForm:
    @pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0, 3.7])
    def test_rank_priorities_equal_eq3(self, alpha):
        d = [0.7, 0.1, 0.35, 2.0, 0.05, 1.1]
        probs, rank = rank_priorities(torch.tensor(d), alpha)
        torch.testing.assert_close(probs.double(), expected_eq3(d, alpha), rtol=1e-6, atol=1e-7)
        assert rank.tolist() == [4, 2, 3, 6, 1, 5]

    def test_score_on_hand_made_sets_equals_eq1_and_eq3(self):
        # Candidates j and online rows; matches by L1 on (s, a), distance = |displacement - displacement*|.
        cands = transitions([0.0, 0.0, 5.0, 5.1, 9.0], [1.0] * 5, [1.0, 3.0, 6.2, 6.0, 9.4])
        online = transitions([0.0, 5.0, 9.0], [1.0] * 3, [1.0, 6.0, 10.0])
        _, _, sampler = buffers(alpha=1.5)
        scores = sampler.score(cands, online)
        assert scores["match"].tolist() == [0, 0, 1, 1, 2]
        expected_d = [0.0, 2.0, 0.2, 0.1, 0.6]  # displacements 1, 3, 1.2, 0.9, 0.4 vs 1, 1, 1, 1, 1
        torch.testing.assert_close(scores["distance"], torch.tensor(expected_d), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            scores["prob"].double(), expected_eq3(expected_d, 1.5), rtol=1e-5, atol=1e-7
        )

    def test_raw_next_state_reading(self):
        cands = transitions([0.0, 0.5], [1.0, 1.0], [1.0, 1.5])
        online = transitions([0.0], [1.0], [1.0])
        dist = FeatureDistance(next_state="next_state")
        _, _, sampler = buffers(distance=dist)
        scores = sampler.score(cands, online)
        # raw next states: |1 - 1| and |1.5 - 1|; displacements would call both 0.
        torch.testing.assert_close(scores["distance"], torch.tensor([0.0, 0.5]))

    def test_alpha_zero_is_uniform_and_alpha_concentrates(self):
        d = torch.rand(512, generator=torch.Generator().manual_seed(0))
        p0, _ = rank_priorities(d, 0.0)
        torch.testing.assert_close(p0, torch.full((512,), 1 / 512))
        nearest = d.argsort()[:10]
        mass = [float(rank_priorities(d, a)[0][nearest].sum()) for a in (0.0, 0.5, 1.0, 2.0, 4.0)]
        assert all(b > a for a, b in zip(mass, mass[1:])), mass
        assert mass[-1] > 0.99

    def test_tied_distances_share_their_ranks(self):
        probs, rank = rank_priorities(torch.tensor([0.0, 1.0, 0.0, 0.0]), 1.0)
        group = (1 + 1 / 2 + 1 / 3) / 3
        expected = torch.tensor([group, 1 / 4, group, group], dtype=torch.float64)
        torch.testing.assert_close(probs.double(), expected / expected.sum(), rtol=1e-6, atol=1e-7)
        assert rank.tolist() == [1, 4, 1, 1]

    def test_sample_uses_the_scores(self):
        """sample() = uniform candidates + score() + multinomial, replayed with the same random stream."""
        merged, online, sampler = buffers(num_candidates=64, num_online=50, alpha=1.3)
        g = torch.Generator().manual_seed(3)
        merged.extend(
            transitions(
                torch.randn(300, 2, generator=g),
                torch.rand(300, 1, generator=g),
                torch.randn(300, 2, generator=g),
            )
        )
        online.extend(
            transitions(
                torch.randn(80, 2, generator=g),
                torch.rand(80, 1, generator=g),
                torch.randn(80, 2, generator=g),
            )
        )
        sampler.distance.fit(merged[:])
        gen = torch.Generator().manual_seed(11)
        merged.set_rng(gen)
        state = gen.get_state()
        batch = merged.sample(128)
        gen.set_state(state)
        cand = torch.randint(300, (64,), generator=gen)
        on = torch.randperm(80, generator=gen)[:50]
        keys = sampler.distance.in_keys
        scores = sampler.score(merged[:].select(*keys)[cand], online[:].select(*keys)[on])
        draw = torch.multinomial(scores["prob"], 128, replacement=True, generator=gen)
        assert torch.equal(batch["index"], cand[draw])
        torch.testing.assert_close(batch["otc_prob"], scores["prob"][draw])
        assert torch.equal(batch["otc_rank"], scores["rank"][draw])
        assert torch.equal(batch["otc_match_index"], on[scores["match"][draw]])


# ------------------------------------------------------------------------------------------- ties
class TestTies:
    def test_argmin_ties_are_uniform_chi_square(self):
        # Row with 4 tied minima (columns 1, 3, 4, 7): each must be chosen with probability 1/4.
        row = torch.tensor([5.0, 1.0, 2.0, 1.0, 1.0, 3.0, 9.0, 1.0])
        n = 8000
        gen = torch.Generator().manual_seed(0)
        idx, val = argmin_random_ties(row.expand(n, -1), gen)
        assert torch.all(val == 1.0)
        counts = torch.bincount(idx, minlength=8)
        assert counts[[0, 2, 5, 6]].sum() == 0
        observed = counts[[1, 3, 4, 7]].numpy()
        assert stats.chisquare(observed).pvalue > 1e-3, observed

    def test_weighted_ties_follow_the_multiplicities(self):
        # Columns 0 and 2 tie; column 2 stands for three copies of its transition: P = 1/4 and 3/4.
        n = 8000
        idx, _ = argmin_random_ties(
            torch.tensor([1.0, 2.0, 1.0]).expand(n, -1),
            torch.Generator().manual_seed(0),
            torch.tensor([1, 5, 3]),
        )
        counts = torch.bincount(idx, minlength=3).numpy()
        assert counts[1] == 0
        assert stats.chisquare(counts[[0, 2]], f_exp=[n / 4, 3 * n / 4]).pvalue > 1e-3, counts

    def test_small_online_buffer_matches_copies_uniformly_through_sample(self):
        # 4 online rows, |D| = 2000 drawn with replacement and scored as distinct rows with their counts: the
        # match of a candidate tied with all four must still be uniform over them.
        merged, online, sampler = buffers(num_candidates=256, num_online=2000)
        merged.extend(transitions([0.0] * 10, [0.0] * 10, [0.0] * 10))
        online.extend(
            transitions([0.0] * 4, [0.0] * 4, [0.0] * 4)
        )  # identical features: only the index differs
        merged.set_rng(torch.Generator().manual_seed(0))
        matches = torch.cat([merged.sample(128)["otc_match_index"] for _ in range(30)])
        assert stats.chisquare(np.bincount(matches.numpy(), minlength=4)).pvalue > 1e-3

    def test_ties_broken_independently_per_candidate(self):
        # Within one call, rows with the same tie set must not all pick the same column.
        gen = torch.Generator().manual_seed(1)
        idx, _ = argmin_random_ties(torch.zeros(200, 2), gen)
        assert 60 < int(idx.sum()) < 140  # Binomial(200, 1/2): mean 100, sd 7.1; bounds are ±5.6 sd

    def test_sampler_matches_tied_online_rows_uniformly(self):
        # Every online row has the same (s, a) as the candidate: the match must be uniform over them.
        merged, online, sampler = buffers(num_candidates=256, num_online=4)
        merged.extend(transitions([0.0] * 10, [0.0] * 10, [0.0] * 10))
        online.extend(transitions([0.0] * 4, [0.0] * 4, [0.0, 1.0, 2.0, 3.0]))
        merged.set_rng(torch.Generator().manual_seed(0))
        counts = np.zeros(4)
        for _ in range(20):
            cands = merged[:].select(*sampler.distance.in_keys)[torch.zeros(256, dtype=torch.long)]
            matches = sampler.score(cands, online[:].select(*sampler.distance.in_keys))["match"]
            counts += np.bincount(matches.numpy(), minlength=4)
        assert stats.chisquare(counts).pvalue > 1e-3, counts


# ------------------------------------------------------------------------------------------- the point
@pytest.fixture(scope="module")
def mdp():
    return discrete_mdp()


class TestTransitionCorrection:
    def _kl_of(self, mdp, sampler_factory, calls=150):
        p_b, p_d, offline, online_data = mdp
        online = TensorDictReplayBuffer(storage=LazyTensorStorage(5_000))
        merged = TensorDictReplayBuffer(
            storage=LazyTensorStorage(30_000), sampler=sampler_factory(online), batch_size=128
        )
        merged.extend(offline)
        online.extend(online_data)
        merged.extend(online_data)
        merged.set_rng(torch.Generator().manual_seed(0))
        batches = torch.cat([merged.sample() for _ in range(calls)])
        return kernel_kl(batches, p_d)

    def test_otc_is_closer_to_online_kernel_than_uniform_and_gap_grows_with_alpha(self, mdp):
        kl_uniform, n_min = self._kl_of(mdp, lambda online: RandomSampler())
        kls = {}
        for alpha in (0.5, 1.0, 2.0):
            kls[alpha], n_min_otc = self._kl_of(
                mdp, lambda online, a=alpha: OTCSampler(online, alpha=a)
            )
            n_min = min(n_min, n_min_otc)
        # Margin from the sample size: the plug-in KL over K = 5 outcomes has a bias and a standard error
        # of order (K - 1) / (2 n); with n >= n_min draws per (s, a) pair we require a gap of 20x that.
        margin = 20 * (5 - 1) / (2 * n_min)
        assert n_min > 500
        assert kls[1.0] < kl_uniform - margin, (kls, kl_uniform, margin)
        # The documented range: on this MDP the KL keeps falling from alpha = 0.5 to 2.
        assert kls[0.5] > kls[1.0] + margin / 4 > kls[2.0] + margin / 2, (kls, margin)

    def test_alpha_zero_matches_uniform(self, mdp):
        kl_uniform, n_min = self._kl_of(mdp, lambda online: RandomSampler())
        kl_zero, _ = self._kl_of(mdp, lambda online: OTCSampler(online, alpha=0.0))
        assert abs(kl_zero - kl_uniform) < 20 * (5 - 1) / (2 * n_min)


class TestMechanism:
    """Offline data holds every (s, a) twice: with the online dynamics (s' = s + a) and other ones (s - a)."""

    def _share(self, alpha, n=4000, calls=100, seed=0):
        g = torch.Generator().manual_seed(seed)
        s, a = torch.rand(n, 2, generator=g) * 2 - 1, torch.rand(n, 2, generator=g) * 2 - 1
        offline = torch.cat(
            [
                transitions(
                    s,
                    a,
                    s + a,
                    good=torch.ones(n, dtype=torch.bool),
                    is_online=torch.zeros(n, dtype=torch.bool),
                ),
                transitions(
                    s,
                    a,
                    s - a,
                    good=torch.zeros(n, dtype=torch.bool),
                    is_online=torch.zeros(n, dtype=torch.bool),
                ),
            ]
        )
        so, ao = torch.rand(2000, 2, generator=g) * 2 - 1, torch.rand(2000, 2, generator=g) * 2 - 1
        online_data = transitions(
            so,
            ao,
            so + ao,
            good=torch.ones(2000, dtype=torch.bool),
            is_online=torch.ones(2000, dtype=torch.bool),
        )
        merged, online, sampler = buffers(alpha=alpha)
        merged.extend(offline)
        sampler.distance.fit(offline)
        online.extend(online_data)  # isolated: the merged storage holds only the offline rows
        merged.set_rng(torch.Generator().manual_seed(seed))
        batch = torch.cat([merged.sample() for _ in range(calls)])
        offline_rows = ~batch["is_online"]
        return float(batch["good"][offline_rows].float().mean()), int(offline_rows.sum())

    def test_share_of_offline_rows_with_online_dynamics(self):
        share0, n0 = self._share(0.0)
        share1, n1 = self._share(1.0)
        share2, _ = self._share(2.0)
        # Uniform: 0.5. Batches are 128 draws from 512 candidates per call, so draws within a call are
        # correlated; 6 binomial standard errors of the per-row count cover that comfortably.
        assert abs(share0 - 0.5) < 6 * math.sqrt(0.25 / n0) * 2, share0
        # With a perfect split of the 512 candidates into halves, alpha = 1 puts H_256 / H_512 = 0.898 of the
        # mass on the better half; imperfect matches lower it a little.
        assert 0.8 < share1 < 0.97, share1
        assert share2 > share1 + 0.03, (share1, share2)


# ------------------------------------------------------------------------------------------- eq. (4)
class TestAdaptiveAlpha:
    @staticmethod
    def _deploy(online, disp_merged, disp_online, n=50):
        """All merged rows displace by disp_merged, all online rows by disp_online: D_k is exact."""
        s = torch.linspace(-1, 1, n)
        merged = TensorDictReplayBuffer(storage=LazyTensorStorage(n))
        merged.extend(transitions(s, torch.zeros(n), s + disp_merged))
        online.empty()
        online.extend(transitions(s, torch.zeros(n), s + disp_online))
        return merged

    def test_follows_eq4(self):
        online = TensorDictReplayBuffer(storage=LazyTensorStorage(100))
        # Unfitted FeatureDistance: raw features, so D_k = |disp_merged - disp_online| exactly.
        sampler = OTCSampler(online, alpha=1.0, alpha_range=(0.1, 10.0))
        for disp_m, disp_o in [(1.0, 0.0), (2.0, 0.0), (0.5, 0.0), (0.5, 0.45), (1000.0, 0.0)]:
            sampler.adapt_alpha(self._deploy(online, disp_m, disp_o))
        d = [r["D"] for r in sampler.alpha_history]
        alphas = [r["alpha"] for r in sampler.alpha_history]
        np.testing.assert_allclose(d, [1.0, 2.0, 0.5, 0.05, 1000.0], rtol=1e-4)
        # k = 1 unchanged; then alpha_k = alpha_{k-1} * D_k / D_{k-1}, clamped to [0.1, 10]:
        # 1 -> 1 * 2/1 = 2 -> 2 * 0.5/2 = 0.5 -> 0.5 * 0.05/0.5 = 0.05, clamped to 0.1 -> 0.1 * 20000 -> 10.
        np.testing.assert_allclose(alphas, [1.0, 2.0, 0.5, 0.1, 10.0], rtol=1e-4)
        assert [r["deployment"] for r in sampler.alpha_history] == [1, 2, 3, 4, 5]

    def test_fixed_alpha_records_but_keeps(self):
        online = TensorDictReplayBuffer(storage=LazyTensorStorage(100))
        sampler = OTCSampler(online, alpha=1.0, adaptive_alpha=False)
        for disp in (1.0, 3.0):
            sampler.adapt_alpha(self._deploy(online, disp, 0.0))
        assert sampler.alpha == 1.0
        np.testing.assert_allclose([r["D"] for r in sampler.alpha_history], [1.0, 3.0], rtol=1e-4)

    def test_estimate_on_mixed_data_within_sampling_error(self):
        # Half the merged rows displace by 0 (like the online rows), half by 2: D = 1 in expectation.
        merged, online, sampler = buffers(alpha=1.0, alpha_samples=8000)
        sampler.distance = FeatureDistance()
        s = torch.linspace(-1, 1, 1000)
        disp = torch.where(torch.arange(1000) % 2 == 0, 0.0, 2.0)
        merged.extend(transitions(s, torch.zeros(1000), s + disp))
        online.extend(transitions(s, torch.zeros(1000), s))
        merged.set_rng(torch.Generator().manual_seed(0))
        estimate = sampler.expected_distance(merged)
        # Each sampled distance is 0 or 2 with probability 1/2: sd 1, so the mean of 8000 has sd 0.0112.
        assert abs(estimate - 1.0) < 5 * 1.0 / math.sqrt(8000)


# ------------------------------------------------------------------------------------------- integration
class TestIntegration:
    def _fill(self, merged, online, n=400, m=60, seed=0):
        g = torch.Generator().manual_seed(seed)
        off = transitions(
            torch.randn(n, 3, generator=g),
            torch.rand(n, 2, generator=g),
            torch.randn(n, 3, generator=g),
            is_online=torch.zeros(n, dtype=torch.bool),
        )
        on = transitions(
            torch.randn(m, 3, generator=g),
            torch.rand(m, 2, generator=g),
            torch.randn(m, 3, generator=g),
            is_online=torch.ones(m, dtype=torch.bool),
        )
        merged.extend(off)
        merged.sampler.distance.fit(off)
        online.extend(on)
        merged.extend(on)
        return off, on

    @pytest.mark.parametrize("storage_cls", [LazyTensorStorage, LazyMemmapStorage])
    def test_tensordict_replay_buffer(self, storage_cls, tmp_path):
        merged, online, sampler = buffers(
            storage_cls=storage_cls, num_candidates=128, num_online=100
        )
        self._fill(merged, online)
        batch = merged.sample()
        assert batch.batch_size == torch.Size([128])
        for key in ("otc_distance", "otc_rank", "otc_prob", "otc_match_index", "otc_online_share"):
            assert key in batch.keys()
        assert "priority_weight" not in batch.keys()
        assert not batch["otc_uniform"].any()
        assert (batch["index"] < len(merged)).all()
        torch.testing.assert_close(batch["otc_online_share"][0], batch["is_online"].float().mean())
        # The rows returned are the storage rows at the returned indices.
        torch.testing.assert_close(batch["observation"], merged[:]["observation"][batch["index"]])

    def test_plain_replay_buffer_returns_info(self):
        online = ReplayBuffer(storage=LazyTensorStorage(100))
        merged = ReplayBuffer(
            storage=LazyTensorStorage(1000), sampler=OTCSampler(online), batch_size=16
        )
        self._fill(merged, online)
        data, info = merged.sample(return_info=True)
        assert data.batch_size == torch.Size([16])
        assert info["otc_prob"].shape == (16,) and not bool(info["otc_uniform"])

    def test_empty_online_buffer_is_uniform_and_says_so(self):
        merged, online, sampler = buffers()
        merged.extend(transitions(torch.randn(1000, 2), torch.rand(1000, 1), torch.randn(1000, 2)))
        merged.set_rng(torch.Generator().manual_seed(0))
        idx = torch.cat([merged.sample()["index"] for _ in range(100)])
        assert merged.sample()["otc_uniform"].all()
        counts = torch.bincount(idx // 100, minlength=10).numpy()  # 10 bins of 100 rows
        assert stats.chisquare(counts).pvalue > 1e-3

    def test_storage_with_two_dims(self):
        online = TensorDictReplayBuffer(storage=LazyTensorStorage(50, ndim=2))
        sampler = OTCSampler(online, num_candidates=64, num_online=40)
        merged = TensorDictReplayBuffer(
            storage=LazyTensorStorage(100, ndim=2), sampler=sampler, batch_size=32
        )
        g = torch.Generator().manual_seed(0)
        off = transitions(
            torch.randn(30, 5, 2, generator=g),
            torch.rand(30, 5, 1, generator=g),
            torch.randn(30, 5, 2, generator=g),
        )
        off.batch_size = [30, 5]
        on = transitions(
            torch.randn(8, 5, 2, generator=g),
            torch.rand(8, 5, 1, generator=g),
            torch.randn(8, 5, 2, generator=g),
        )
        on.batch_size = [8, 5]
        merged.extend(off)
        sampler.distance.fit(off)
        online.extend(on)
        assert merged.storage.ndim == 2 and online.storage.ndim == 2
        batch = merged.sample()
        index = batch["index"]
        assert index.shape == (32, 2)
        shape = merged.storage.shape
        assert (index[:, 0] < shape[0]).all() and (index[:, 1] < shape[1]).all()
        stored = merged.storage.get((index[:, 0], index[:, 1]))
        torch.testing.assert_close(batch["observation"], stored["observation"])
        # The distances were computed on the rows the buffer returns (flat index <-> unravelled index).
        flat = index[:, 0] * shape[1] + index[:, 1]
        obs = merged.storage._storage["observation"].flatten(0, 1)[flat]
        torch.testing.assert_close(batch["observation"], obs)
        assert batch["otc_match_index"].shape == (32, 2)

    def test_growth_by_extend(self):
        merged, online, sampler = buffers(num_candidates=256, num_online=50)
        self._fill(merged, online, n=100, m=20)
        before = len(merged)
        merged.extend(
            transitions(torch.full((500, 3), 7.0), torch.rand(500, 2), torch.full((500, 3), 7.0))
        )
        merged.set_rng(torch.Generator().manual_seed(0))
        idx = torch.cat([merged.sample()["index"] for _ in range(20)])
        assert (idx >= before).any()  # new rows are candidates too

    def test_checkpoint_round_trip_continues_random_stream(self, tmp_path):
        merged, online, sampler = buffers(num_candidates=128, num_online=50)
        merged.set_rng(torch.Generator().manual_seed(5))
        self._fill(merged, online)
        sampler.adapt_alpha(merged)
        online.dumps(tmp_path / "online")
        merged.dumps(tmp_path / "merged")
        expected = [merged.sample()["index"] for _ in range(3)]
        merged2, online2, sampler2 = buffers(num_candidates=128, num_online=50)
        online2.loads(tmp_path / "online")
        merged2.loads(tmp_path / "merged")
        assert sampler2.alpha_history == sampler.alpha_history
        torch.testing.assert_close(sampler2.distance.state_mean, sampler.distance.state_mean)
        got = [merged2.sample()["index"] for _ in range(3)]
        for a, b in zip(expected, got):
            assert torch.equal(a, b)

    def test_sampler_dumps_creates_its_folder_and_state_dict_round_trips(self, tmp_path):
        merged, online, sampler = buffers()
        self._fill(merged, online)
        sampler.adapt_alpha(merged)
        sampler.alpha = 2.5
        sampler.dumps(tmp_path / "a" / "b" / "sampler")
        _, _, other = buffers()
        other.loads(tmp_path / "a" / "b" / "sampler")
        assert other.alpha == 2.5 and other.alpha_history == sampler.alpha_history
        _, _, third = buffers()
        third.load_state_dict(sampler.state_dict())
        assert third.alpha == 2.5
        torch.testing.assert_close(third.distance.next_std, sampler.distance.next_std)

    def test_empty_resets_alpha(self):
        merged, online, sampler = buffers(alpha=1.0)
        sampler.alpha = 3.0
        merged.empty()
        assert sampler.alpha == 1.0 and sampler.alpha_history == []

    def test_torchrl_loss_is_not_silently_reweighted(self):

        torch.manual_seed(0)
        actor = TensorDictModule(
            torch.nn.Sequential(MLP(3, 2, num_cells=[16]), torch.nn.Tanh()),
            ["observation"],
            ["action"],
        )

        class Q(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = MLP(5, 1, num_cells=[16])

            def forward(self, obs, act):
                return self.net(torch.cat([obs, act], -1))

        loss = TD3BCLoss(
            actor,
            ValueOperator(Q(), in_keys=["observation", "action"]),
            action_spec=Bounded(-1, 1, shape=(2,)),
        )
        results = {}
        for weights in (False, True):
            merged, online, sampler = buffers(
                num_candidates=128, num_online=50, importance_weights=weights
            )
            self._fill(merged, online)
            merged.set_rng(torch.Generator().manual_seed(0))
            batch = merged.sample()
            batch.set(
                ("next", "reward"), torch.randn(128, 1, generator=torch.Generator().manual_seed(1))
            )
            batch.set(("next", "done"), torch.zeros(128, 1, dtype=torch.bool))
            batch.set(("next", "terminated"), torch.zeros(128, 1, dtype=torch.bool))
            torch.manual_seed(0)
            with_info = loss(batch.clone())["loss_qvalue"]
            torch.manual_seed(0)
            stripped = loss(
                batch.exclude(*[k for k in batch.keys() if str(k).startswith(("otc_", "priority"))])
            )
            results[weights] = (with_info, stripped["loss_qvalue"])
        torch.testing.assert_close(
            results[False][0], results[False][1]
        )  # otc_* keys change nothing
        assert not torch.allclose(
            results[True][0], results[True][1]
        )  # opt-in weights do reach the loss


# ------------------------------------------------------------------------------------------- bad input
class TestBadInput:
    def test_list_storage_refused(self):
        with pytest.raises(TypeError, match="TensorStorage.*ListStorage"):
            OTCSampler(ReplayBuffer(storage=ListStorage(10)))
        online = TensorDictReplayBuffer(storage=LazyTensorStorage(10))
        merged = ReplayBuffer(storage=ListStorage(10), sampler=OTCSampler(online), batch_size=2)
        merged.extend([1, 2, 3])
        with pytest.raises(TypeError, match="ListStorage"):
            merged.sample()

    @pytest.mark.parametrize("alpha", [-0.1, float("nan"), float("inf")])
    def test_bad_alpha(self, alpha):
        with pytest.raises(ValueError, match="alpha"):
            OTCSampler(TensorDictReplayBuffer(storage=LazyTensorStorage(10)), alpha=alpha)

    def test_bad_sizes_and_range(self):
        online = TensorDictReplayBuffer(storage=LazyTensorStorage(10))
        with pytest.raises(ValueError, match="num_candidates"):
            OTCSampler(online, num_candidates=0)
        with pytest.raises(ValueError, match="alpha_range"):
            OTCSampler(online, alpha_range=(2.0, 1.0))
        with pytest.raises(TypeError, match="TransitionDistance"):
            OTCSampler(online, distance=object())
        with pytest.raises(TypeError, match="online replay buffer"):
            OTCSampler(LazyTensorStorage(10))

    def test_missing_key_names_key_and_keys_present(self):
        merged, online, _ = buffers()
        merged.extend(
            TensorDict({"observation": torch.zeros(5, 2), "action": torch.zeros(5, 1)}, [5])
        )
        online.extend(
            TensorDict({"observation": torch.zeros(5, 2), "action": torch.zeros(5, 1)}, [5])
        )
        with pytest.raises(KeyError, match=r"('next', 'observation').*keys present.*action"):
            merged.sample()

    def test_mismatched_shapes_between_buffers(self):
        merged, online, _ = buffers()
        merged.extend(transitions(torch.zeros(5, 3), torch.zeros(5, 1), torch.zeros(5, 3)))
        online.extend(transitions(torch.zeros(5, 3), torch.zeros(5, 2), torch.zeros(5, 3)))
        with pytest.raises(ValueError, match=r"'action'.*\(1,\).*\(2,\)"):
            merged.sample()

    def test_too_few_candidates_without_replacement(self):
        merged, online, _ = buffers(num_candidates=64, with_replacement=False)
        merged.extend(transitions(torch.zeros(5, 3), torch.zeros(5, 1), torch.zeros(5, 3)))
        online.extend(transitions(torch.zeros(5, 3), torch.zeros(5, 1), torch.zeros(5, 3)))
        with pytest.raises(ValueError, match="num_candidates"):
            merged.sample(128)

    def test_torchrl_replacement_keyword(self):
        # TorchRL's sampler metaclass would raise TypeError for replacement=False; here it sets with_replacement
        # (no candidate twice within a batch): a batch of as many rows as candidates is a permutation of them, so
        # every rank 1..16 appears once.
        assert OTCSampler(
            TensorDictReplayBuffer(storage=LazyTensorStorage(5)), replacement=True
        ).with_replacement
        merged, online, sampler = buffers(num_candidates=16, replacement=False)
        assert sampler.with_replacement is False
        torch.manual_seed(0)  # 16 candidates among 5,000 distinct rows: no two equal for this seed
        merged.extend(transitions(torch.randn(5000, 3), torch.zeros(5000, 1), torch.randn(5000, 3)))
        online.extend(transitions(torch.randn(5, 3), torch.zeros(5, 1), torch.randn(5, 3)))
        _, info = merged.sample(16, return_info=True)
        assert sorted(info["otc_rank"].tolist()) == list(range(1, 17))
        with pytest.raises(TypeError, match="not both"):
            buffers(replacement=False, with_replacement=True)

    @pytest.mark.parametrize("cls", ["MixSampler", "OnlineOnlySampler", "BalancedReplaySampler"])
    def test_replacement_false_refused_by_with_replacement_samplers(self, cls):
        import torchrl_otc

        sampler_cls = getattr(torchrl_otc, cls)
        args = (0.5,) if cls == "MixSampler" else ()
        assert isinstance(sampler_cls(*args, replacement=True), sampler_cls)
        with pytest.raises(TypeError, match=f"{cls} draws every batch with replacement"):
            sampler_cls(*args, replacement=False)

    def test_nan_distances_name_the_rows(self):
        merged, online, _ = buffers(num_candidates=64)
        obs = torch.zeros(5, 3)
        obs[3] = float("nan")
        merged.extend(transitions(obs, torch.zeros(5, 1), torch.zeros(5, 3)))
        online.extend(transitions(torch.zeros(5, 3), torch.zeros(5, 1), torch.zeros(5, 3)))
        with pytest.raises(ValueError, match=r"non-finite.*storage rows \[3"):
            merged.sample(8)

    def test_prefetch_refused(self):
        online = TensorDictReplayBuffer(storage=LazyTensorStorage(10))
        merged = TensorDictReplayBuffer(
            storage=LazyTensorStorage(10), sampler=OTCSampler(online), batch_size=2, prefetch=2
        )
        merged.extend(transitions(torch.zeros(5, 3), torch.zeros(5, 1), torch.zeros(5, 3)))
        with pytest.raises(RuntimeError, match="prefetch"):
            merged.sample()

    def test_self_match_false_needs_ids(self):
        merged, online, _ = buffers(self_match=False)
        merged.extend(transitions(torch.zeros(5, 3), torch.zeros(5, 1), torch.zeros(5, 3)))
        online.extend(transitions(torch.zeros(5, 3), torch.zeros(5, 1), torch.zeros(5, 3)))
        with pytest.raises(KeyError, match="transition_id"):
            merged.sample()


def test_compiled_path_equals_eager():
    g = torch.Generator().manual_seed(0)
    cands = transitions(
        torch.randn(64, 4, generator=g),
        torch.rand(64, 2, generator=g),
        torch.randn(64, 4, generator=g),
        transition_id=torch.arange(64),
    )
    online = transitions(
        torch.randn(100, 4, generator=g),
        torch.rand(100, 2, generator=g),
        torch.randn(100, 4, generator=g),
        transition_id=torch.arange(30, 130),
    )
    for self_match in (True, False):
        out = []
        for compiled in (False, True):
            _, _, sampler = buffers(
                alpha=1.0, distance=FeatureDistance(compile=compiled), self_match=self_match
            )
            sampler.distance.fit(cands)
            out.append(sampler.score(cands, online))
        assert torch.equal(out[0]["match"], out[1]["match"])
        torch.testing.assert_close(out[0]["distance"], out[1]["distance"])
        torch.testing.assert_close(out[0]["prob"], out[1]["prob"])
    # Ties through the compiled path are still broken uniformly.
    _, _, sampler = buffers(distance=FeatureDistance(compile=True))
    tied = transitions(torch.zeros(64, 4), torch.zeros(64, 2), torch.zeros(64, 4))
    counts = np.bincount(
        torch.cat([sampler.score(tied, tied[:4])["match"] for _ in range(40)]).numpy(), minlength=4
    )
    assert stats.chisquare(counts).pvalue > 1e-3, counts


class _PlainDistance(TransitionDistance):
    """A distance with the two primitive methods only: ``compare`` comes from the protocol."""

    def __init__(self, inner: FeatureDistance) -> None:
        self.inner = inner
        self.in_keys = inner.in_keys

    def state_action_distance(self, candidates, online):
        return self.inner.state_action_distance(candidates, online)

    def next_state_distance(self, candidates, matches):
        return self.inner.next_state_distance(candidates, matches)


class TestDistanceProtocol:
    """The sampler asks its distance through TransitionDistance.compare only."""

    def test_inherited_compare_equals_the_embedding_path(self):
        g = torch.Generator().manual_seed(1)
        data = transitions(
            torch.randn(300, 3, generator=g),
            torch.rand(300, 1, generator=g),
            torch.randn(300, 3, generator=g),
            transition_id=torch.arange(300),
        )
        for self_match in (True, False):
            scores = []
            for plain in (False, True):
                feature = FeatureDistance().fit(data)
                distance = _PlainDistance(feature) if plain else feature
                merged, online, sampler = buffers(
                    distance=distance, num_candidates=64, num_online=40, self_match=self_match
                )
                merged.extend(data)
                online.extend(data[250:])
                merged.set_rng(torch.Generator().manual_seed(5))
                scores.append(merged.sample(return_info=True)[1])
            for key in ("index", "otc_match_index", "otc_distance", "otc_prob"):
                assert torch.equal(scores[0][key], scores[1][key]), (self_match, key)

    def test_a_distance_without_compare_is_refused(self):
        class Structural:  # the two distances, but neither compare nor the protocol as a base
            in_keys = ["observation"]

            def state_action_distance(self, candidates, online):
                return torch.zeros(len(candidates), len(online))

            def next_state_distance(self, candidates, matches):
                return torch.zeros(len(candidates))

        online = TensorDictReplayBuffer(storage=LazyTensorStorage(10))
        with pytest.raises(TypeError, match="compare"):
            OTCSampler(online, distance=Structural())

    def test_compiling_is_the_distances_option(self):
        online = TensorDictReplayBuffer(storage=LazyTensorStorage(10))
        assert OTCSampler(online, distance=FeatureDistance(compile=True)).distance.compile
        with pytest.raises(TypeError, match="compile"):
            OTCSampler(online, compile=True)


class TestOnlineEmbeddingCache:
    def _setup(self):
        merged, online, sampler = buffers(num_candidates=128, num_online=100)
        g = torch.Generator().manual_seed(0)
        off = transitions(
            torch.randn(2000, 3, generator=g),
            torch.rand(2000, 1, generator=g),
            torch.randn(2000, 3, generator=g),
        )
        merged.extend(off)
        sampler.distance.fit(off)
        online.extend(
            transitions(
                torch.randn(300, 3, generator=g),
                torch.rand(300, 1, generator=g),
                torch.randn(300, 3, generator=g),
            )
        )
        return merged, online, sampler

    def test_refill_with_the_same_number_of_rows_is_seen(self):
        merged, online, sampler = self._setup()
        assert (merged.sample()["otc_match_distance"] < 40).all()
        online.empty()
        online.extend(
            transitions(torch.full((300, 3), 50.0), torch.rand(300, 1), torch.full((300, 3), 50.0))
        )
        assert (merged.sample()["otc_match_distance"] > 40).all()  # matched against the new rows

    def test_cached_scores_equal_fresh_ones_and_refit_invalidates(self):
        merged, online, sampler = self._setup()
        keys = sampler.distance.in_keys
        cands, on = merged[:128].select(*keys), online[:100].select(*keys)
        cpu = torch.device("cpu")
        cached = sampler.distance.online_embeddings(sampler.online_rows(cpu), cpu)
        fresh = sampler.distance.embed(online[:].select(*keys))
        torch.testing.assert_close(cached[0], fresh[0])
        torch.testing.assert_close(cached[1], fresh[1])
        a = sampler.score(cands, on)  # a TensorDict: embedded with the candidates, nothing cached
        b = sampler.score(cands, sampler.online_rows(cpu, torch.arange(100)))  # rows of the cache
        assert torch.equal(a["match"], b["match"]) and torch.equal(a["prob"], b["prob"])
        sampler.distance.fit(online[:])  # new statistics: the cache must follow
        refit = sampler.distance.online_embeddings(sampler.online_rows(cpu), cpu)
        torch.testing.assert_close(refit[0], sampler.distance.embed(online[:].select(*keys))[0])
        assert not torch.allclose(refit[0], cached[0])

    def test_a_distance_that_moves_every_call_is_not_cached(self):
        """A learned distance trained at every update: embedding the |D| drawn rows beats re-embedding all."""
        merged, online, sampler = self._setup()
        sampler.num_online = 100  # fewer than the 300 online rows
        device, distance = torch.device("cpu"), sampler.distance

        def drawn():  # the |D| = 100 rows of one call
            return distance.online_embeddings(
                sampler.online_rows(device, torch.arange(100)), device
            )

        assert drawn() is not None  # built once
        distance.version += 1
        assert drawn() is None  # moved since the last call: not rebuilt
        assert drawn() is not None  # stable for one call: rebuilt and reused
        distance.version += 1
        # every row (the eq. 4 estimate): rebuilt anyway
        assert distance.online_embeddings(sampler.online_rows(device), device) is not None


# ------------------------------------------------------------------------------------------- self-matches
def test_self_match_option_changes_online_share():
    """With self-matches online rows take the top ranks; without, they compete like offline rows."""
    g = torch.Generator().manual_seed(0)
    shares = {}
    for self_match in (True, False):
        merged, online, sampler = buffers(self_match=self_match)
        n, m = 9000, 1000
        s, a = torch.randn(n + m, 2, generator=g), torch.rand(n + m, 1, generator=g)
        s2 = s + a + 0.3 * torch.randn(n + m, 2, generator=g)
        data = transitions(
            s, a, s2, is_online=torch.arange(n + m) >= n, transition_id=torch.arange(n + m)
        )
        merged.extend(data)
        sampler.distance.fit(data[:n])
        online.extend(data[n:])
        merged.set_rng(torch.Generator().manual_seed(0))
        shares[self_match] = float(
            torch.stack([merged.sample()["otc_online_share"][0] for _ in range(30)]).mean()
        )
    # Online rows are 10 % of the data; self-matches lift them far above that, their exclusion does not.
    assert shares[True] > 0.3, shares
    assert shares[False] < 0.2, shares


# ------------------------------------------------------------------------------------------- OnlineOnlySampler
class TestOnlineOnly:
    def test_only_online_rows_and_uniform(self):
        rb = TensorDictReplayBuffer(
            storage=LazyTensorStorage(1000), sampler=OnlineOnlySampler(), batch_size=64
        )
        rb.extend(
            TensorDict(
                {"x": torch.arange(500), "is_online": torch.zeros(500, dtype=torch.bool)}, [500]
            )
        )
        assert rb.sample()["online_only_uniform"].all()  # no online rows yet
        rb.extend(
            TensorDict(
                {"x": torch.arange(500, 510), "is_online": torch.ones(10, dtype=torch.bool)}, [10]
            )
        )
        rb.set_rng(torch.Generator().manual_seed(0))
        xs = torch.cat([rb.sample()["x"] for _ in range(100)])
        assert (xs >= 500).all()
        assert stats.chisquare(torch.bincount(xs - 500, minlength=10).numpy()).pvalue > 1e-3

    def test_missing_flag(self):
        rb = TensorDictReplayBuffer(
            storage=LazyTensorStorage(10), sampler=OnlineOnlySampler(), batch_size=2
        )
        rb.extend(TensorDict({"x": torch.arange(3)}, [3]))
        with pytest.raises(KeyError, match="is_online"):
            rb.sample()


# ------------------------------------------------------------------------------------------- properties
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300),
    m=st.integers(1, 300),
    num_candidates=st.integers(1, 64),
    num_online=st.integers(1, 64),
    batch=st.integers(1, 64),
    dim=st.integers(1, 4),
    alpha=st.floats(0.0, 6.0),
    seed=st.integers(0, 2**16),
)
def test_properties(n, m, num_candidates, num_online, batch, dim, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    online = TensorDictReplayBuffer(storage=LazyTensorStorage(m))
    sampler = OTCSampler(online, alpha=alpha, num_candidates=num_candidates, num_online=num_online)
    merged = TensorDictReplayBuffer(storage=LazyTensorStorage(n + m), sampler=sampler)
    # Rounded features create ties in both distances.
    merged.extend(
        transitions(
            torch.randn(n, dim, generator=g).round(),
            torch.rand(n, 1, generator=g).round(),
            torch.randn(n, dim, generator=g).round(),
        )
    )
    online.extend(
        transitions(
            torch.randn(m, dim, generator=g).round(),
            torch.rand(m, 1, generator=g).round(),
            torch.randn(m, dim, generator=g).round(),
        )
    )
    merged.set_rng(torch.Generator().manual_seed(seed))
    data, info = merged.sample(batch, return_info=True)
    index = info["index"]
    assert index.shape == (batch,) and ((index >= 0) & (index < n)).all()
    assert info["otc_prob"].shape == (batch,) and (info["otc_prob"] > 0).all()
    assert ((info["otc_rank"] >= 1) & (info["otc_rank"] <= num_candidates)).all()
    assert ((info["otc_match_index"] >= 0) & (info["otc_match_index"] < m)).all()
    keys = sampler.distance.in_keys
    cands = merged[:].select(*keys)[torch.randint(n, (num_candidates,), generator=g)]
    scores = sampler.score(
        cands, online[:].select(*keys)[torch.randint(m, (num_online,), generator=g)]
    )
    probs, dist = scores["prob"].double(), scores["distance"]
    assert abs(float(probs.sum()) - 1.0) < 1e-5
    # Monotone (the f-function's prior, section 3.4): a smaller distance never gets a smaller probability.
    order = dist.argsort()
    assert (probs[order][1:] <= probs[order][:-1] + 1e-7).all()
    # Equal distances get equal probabilities.
    same = dist.unsqueeze(0) == dist.unsqueeze(1)
    assert torch.allclose(
        probs.unsqueeze(0).expand_as(same)[same], probs.unsqueeze(1).expand_as(same)[same]
    )


@pytest.mark.parametrize("compiled", [False, True], ids=["eager-kernel", "compiled-kernel"])
def test_fused_kernel_gives_the_matrix_minima_and_exact_tie_counts(compiled):
    """The kernel returns row minima with first and last columns, never the [B, D] matrix; tie counts are
    recomputed for tied rows only. On integer features (many ties, duplicate columns, excluded pairs, a NaN row)
    it must give Comparison.of's minima, first argmins, tie counts and rows."""
    from torchrl_otc.modules.transition_distance import (
        Comparison,
        _excluded,
        _l1_comparison,
        _l1_min,
        pairwise_l1,
    )

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (300, 4), generator=g).float()
    y = torch.randint(0, 3, (40, 4), generator=g).float()
    y[7] = y[3]  # duplicate columns
    x[5, 1] = float("nan")
    kernel = torch.compile(_l1_min, dynamic=False) if compiled else _l1_min
    for ids in (None, (torch.arange(300) % 50, torch.arange(40))):
        reference = Comparison.of(_excluded(pairwise_l1(x, y), ids), lambda m: m)
        out = _l1_comparison(x, y.t().contiguous(), ids, kernel, lambda m: m)
        ok = ~torch.isnan(x).any(-1)
        torch.testing.assert_close(out.minimum[ok], reference.minimum[ok])
        assert torch.equal(out.argmin[ok], reference.argmin[ok])
        assert torch.equal(out.ties[ok], reference.ties[ok])
        assert (out.ties[ok] > 1).float().mean() > 0.3  # the data really ties
        rows = torch.tensor([0, 9, 150])
        assert torch.equal(out.state_action[rows], reference.state_action[rows])
        assert torch.isnan(out.minimum[5]) and 0 <= int(out.argmin[5]) < 40
