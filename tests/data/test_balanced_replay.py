"""Tests of BalancedReplaySampler (Lee et al., CoRL 2021, section 4.1): the JS density-ratio objective, the
priorities ``w^(1/T)``, the sampler's draws, its independence from the buffer's random stream, and its state.

The network is trained by :class:`~torchrl_otc.trainers.parts.BalancedReplayTrainer` (what the agent's learner
uses): the sampler only exposes the training rows' ratios."""

from __future__ import annotations

import logging
import math
import pickle

import pytest
import torch
from scipy import stats
from tensordict import TensorDict
from torchrl.data import (
    LazyTensorStorage,
    ListStorage,
    ReplayBuffer,
    TensorDictReplayBuffer,
)

import torchrl_otc
from torchrl_otc import BalancedReplaySampler
from torchrl_otc.data.samplers.balanced_replay import (
    PRIORITY_RANGE,
    DensityRatioNetwork,
    balanced_priorities,
    js_density_ratio_loss,
)
from torchrl_otc.trainers.parts import BalancedReplayTrainer

SMALL = {"hidden_sizes": (32, 32), "num_candidates": 512}
N_FAR, N_NEAR, N_ONLINE = 1800, 200, 200


def rows(g: torch.Generator, n: int, centre: float, online: bool, dim: int = 2) -> TensorDict:
    """``n`` transitions with states ``N(centre, 0.5^2)`` per coordinate and actions ``U(-1, 1)``."""
    return TensorDict(
        {
            "observation": torch.randn(n, dim, generator=g) * 0.5 + centre,
            "action": torch.rand(n, 1, generator=g) * 2 - 1,
            "is_online": torch.full((n,), online),
        },
        batch_size=[n],
    )


def two_regions(data_seed: int = 0, **kwargs):
    """Offline: 1800 rows around -2 ("far") and 200 around +2 ("near", online-like); online: 200 around +2.

    Storage rows ``[0, 1800)`` are far, ``[1800, 2200)`` online-like (near offline, then online).
    """
    g = torch.Generator().manual_seed(data_seed)
    far, near, online = (
        rows(g, N_FAR, -2.0, False),
        rows(g, N_NEAR, 2.0, False),
        rows(g, N_ONLINE, 2.0, True),
    )
    sampler = BalancedReplaySampler(**{**SMALL, **kwargs})
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(3000), sampler=sampler, batch_size=128)
    rb.extend(far)
    rb.extend(near)
    sampler.fit(rb[:])
    rb.extend(online)
    rb.set_rng(torch.Generator().manual_seed(data_seed + 1))
    return rb, sampler, far, near, online


# Population optimum of the JS objective on two_regions: offline = 0.9 far + 0.1 near, online = near, so
# JSD = 0.5 * log(1 / 0.55) + 0.5 * (0.1 * log(0.1 / 0.55) + 0.9 * log(0.9 / 0.45)) and min L = -2 JSD.
JSD_TWO_REGIONS = 0.5 * math.log(1 / 0.55) + 0.5 * (
    0.1 * math.log(0.1 / 0.55) + 0.9 * math.log(0.9 / 0.45)
)


@pytest.fixture(scope="module")
def trained():
    """two_regions after 300 training steps, with the loss of every step."""
    rb, sampler, far, near, online = two_regions()
    trainer = BalancedReplayTrainer(sampler)
    losses = [trainer.update()["loss"] for _ in range(300)]
    return rb, sampler, far, near, online, losses


# ------------------------------------------------------------------------------------------- the equations
class TestEquations:
    def test_loss_closed_form(self):
        w_on, w_off = torch.tensor([0.5, 2.0, 4.0]), torch.tensor([0.25, 1.0])
        expected = (
            sum(math.log((w + 1) / 2) for w in (0.25, 1.0)) / 2
            - sum(math.log(2 * w / (w + 1)) for w in (0.5, 2.0, 4.0)) / 3
        )
        assert js_density_ratio_loss(w_on, w_off).item() == pytest.approx(expected, rel=1e-6)
        assert js_density_ratio_loss(torch.ones(4), torch.ones(7)).item() == 0.0

    def test_minimiser_is_online_over_offline(self):
        """A tabular w (one free value per region) trained on the objective converges to d_on / d_off."""
        # Region 0 holds 30 online / 10 offline rows, region 1 10 / 30, region 2 20 / 20.
        on_region = torch.tensor([0] * 30 + [1] * 10 + [2] * 20)
        off_region = torch.tensor([0] * 10 + [1] * 30 + [2] * 20)
        log_w = torch.zeros(3, requires_grad=True)
        opt = torch.optim.Adam([log_w], lr=0.05)
        for _ in range(2000):
            w = log_w.exp()
            loss = js_density_ratio_loss(w[on_region], w[off_region])
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.testing.assert_close(
            log_w.exp().detach(), torch.tensor([3.0, 1 / 3, 1.0]), atol=1e-3, rtol=1e-3
        )
        # and the minimum is -2 JSD of the two empirical distributions
        p, q = torch.tensor([0.5, 1 / 6, 1 / 3]), torch.tensor([1 / 6, 0.5, 1 / 3])
        m = (p + q) / 2
        jsd = 0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum()
        assert loss.item() == pytest.approx(-2 * jsd.item(), abs=1e-5)

    def test_priorities_closed_form(self):
        w = torch.tensor([4.0, 1.0, 0.0, 9.0])
        offline = torch.tensor([False, True, True, False])
        # w^(1/2) = [2, 1, 0, 3]; offline mean 0.5; the zero is clamped up to 1e-3.
        got = balanced_priorities(w, 2.0, offline)
        torch.testing.assert_close(got, torch.tensor([4.0, 2.0, PRIORITY_RANGE[0], 6.0]))
        # no offline row: normalised by the mean over all rows
        torch.testing.assert_close(
            balanced_priorities(w, 2.0), torch.tensor([4 / 3, 2 / 3, 1e-3, 2.0])
        )
        # the upper clamp
        assert (
            balanced_priorities(torch.tensor([1e12, 1.0]), 1.0, torch.tensor([False, True]))[0]
            == PRIORITY_RANGE[1]
        )

    def test_temperature_flattens(self):
        w = 1 + 9 * torch.rand(100, generator=torch.Generator().manual_seed(0))
        spread = []
        for t in (0.5, 1.0, 5.0, 50.0):
            p = balanced_priorities(w, t)
            p = p / p.sum()
            spread.append(float(p.max() / p.min()))
        assert all(b < a for a, b in zip(spread, spread[1:])), spread
        # P(j) / P(k) = (w_j / w_k)^(1/T) (no row is clamped here)
        ratio = float(w.max() / w.min())
        for t, got in zip((0.5, 1.0, 5.0, 50.0), spread):
            assert got == pytest.approx(ratio ** (1 / t), rel=1e-4)

    @pytest.mark.parametrize("activation", ["relu", "softplus"])
    def test_network_starts_at_one(self, activation):
        net = DensityRatioNetwork(3, 2, hidden_sizes=(16, 16), output_activation=activation)
        w = net(torch.randn(200, 3), torch.randn(200, 2))
        assert w.shape == (200,) and (w >= 0).all()
        assert (w - 1).abs().max() < 0.05


# ------------------------------------------------------------------------------------------- learning
class TestLearning:
    def test_js_objective_decreases_to_the_population_bound(self, trained):
        *_, losses = trained
        first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
        # w = 1 at start: L = 0 up to the network's initial spread.
        assert abs(first) < 0.05, first
        assert last < first - 0.5, (first, last)
        # -L estimates a lower bound of 2 JSD: it cannot go far past the population optimum (the 20-step mean of
        # 512-row batch losses has a standard error below 0.01).
        assert last > -2 * JSD_TWO_REGIONS - 0.05, (last, -2 * JSD_TWO_REGIONS)

    def test_weights_favour_online_like_rows(self, trained):
        _, sampler, far, near, online, _ = trained
        w_near = sampler.density_ratio(near).mean().item()
        w_far = sampler.density_ratio(far).mean().item()
        w_online = sampler.density_ratio(online).mean().item()
        # true ratio: 10 near +2 (all online mass, a tenth of the offline mass), 0 near -2
        assert w_near > 2.0 and w_online > 2.0, (w_near, w_online)
        assert w_far < 0.25, w_far
        assert w_near - w_far > 2.0

    def test_batches_favour_online_like_rows(self, trained):
        rb, sampler, *_ = trained
        calls, batch = 20, 128
        p0 = (N_NEAR + N_ONLINE) / (N_FAR + N_NEAR + N_ONLINE)  # uniform share of online-like rows
        # Standard error of the share under uniform sampling: the draws are uniform over the storage, but
        # two-stage (candidates, then the batch): var <= p0 (1 - p0) (1 / draws + 1 / candidates).
        sigma = math.sqrt(
            p0 * (1 - p0) * (1 / (calls * batch) + 1 / (calls * sampler.num_candidates))
        )
        rb.set_rng(torch.Generator().manual_seed(7))
        share = (
            torch.cat([rb.sample()["index"] for _ in range(calls)]).ge(N_FAR).float().mean().item()
        )
        assert share > p0 + 5 * sigma, (share, p0, sigma)
        assert share > 2 * p0, (share, p0)
        # Online rows: the reported share agrees with the flags of the rows returned.
        rb.set_rng(torch.Generator().manual_seed(8))
        b = rb.sample()
        assert b["balanced_replay_online_share"][0].item() == pytest.approx(
            b["is_online"].float().mean().item()
        )
        assert not b["balanced_replay_uniform"].any()

    def test_untrained_sampler_is_uniform_in_distribution(self):
        rb, sampler, *_ = two_regions()
        calls, batch = 20, 128
        p0 = (N_NEAR + N_ONLINE) / (N_FAR + N_NEAR + N_ONLINE)
        sigma = math.sqrt(
            p0 * (1 - p0) * (1 / (calls * batch) + 1 / (calls * sampler.num_candidates))
        )
        share = (
            torch.cat([rb.sample()["index"] for _ in range(calls)]).ge(N_FAR).float().mean().item()
        )
        assert abs(share - p0) < 5 * sigma, (share, p0, sigma)

    def test_lower_temperature_concentrates_more(self, trained):
        rb, sampler, *_ = trained
        shares = {}
        for t in (5.0, 1.0):
            sampler.temperature = t
            rb.set_rng(torch.Generator().manual_seed(3))
            shares[t] = (
                torch.cat([rb.sample()["index"] for _ in range(10)]).ge(N_FAR).float().mean().item()
            )
        sampler.temperature = 5.0
        assert shares[1.0] > shares[5.0] + 0.05, shares

    def test_sample_uses_the_priorities(self, trained):
        """sample() = uniform candidates + balanced_priorities + multinomial, replayed with the same stream."""
        rb, sampler, *_ = trained
        gen = torch.Generator().manual_seed(11)
        rb.set_rng(gen)
        state = gen.get_state()
        data, info = rb.sample(return_info=True)
        gen.set_state(state)
        n = len(rb)
        cand = torch.randint(n, (sampler.num_candidates,), generator=gen)
        stored = rb[:]
        w = sampler.density_ratio(stored[cand])
        p = balanced_priorities(w, sampler.temperature, ~stored["is_online"][cand])
        p = p / p.sum()
        draw = torch.multinomial(p, 128, replacement=True, generator=gen)
        assert torch.equal(info["index"], cand[draw])
        torch.testing.assert_close(info["br_weight"], w[draw])
        torch.testing.assert_close(info["br_prob"], p[draw])
        assert "priority_weight" not in data.keys()

    def test_same_seed_same_training_and_seed_matters(self):
        results = []
        for seed in (0, 0, 1):
            _, sampler, *_ = two_regions(seed=seed)
            trainer = BalancedReplayTrainer(sampler)
            results.append([trainer.update()["loss"] for _ in range(5)])
        assert results[0] == results[1]
        assert results[0] != results[2]


# ------------------------------------------------------------------------------------------- random streams
class TestRandomStreams:
    def test_update_touches_neither_the_buffer_stream_nor_the_global_one(self):
        before_all = torch.get_rng_state()
        rb, sampler, *_ = two_regions()
        trainer = BalancedReplayTrainer(sampler)
        rb.sample()
        buffer_state, global_state = rb._rng.get_state(), torch.get_rng_state()
        for _ in range(5):
            assert trainer.update()
        assert torch.equal(rb._rng.get_state(), buffer_state)
        assert torch.equal(torch.get_rng_state(), global_state)
        # construction, fit and sampling with the buffer's generator leave the global state alone too
        assert torch.equal(torch.get_rng_state(), before_all)

    def test_training_does_not_change_the_draw_stream(self):
        """Same seed, with and without update() between samples: the buffer's generator advances identically."""
        states = {}
        for train in (False, True):
            rb, sampler, *_ = two_regions()
            trainer = BalancedReplayTrainer(sampler)
            trace = []
            for _ in range(5):
                rb.sample()
                trace.append(rb._rng.get_state().clone())
                if train:
                    for _ in range(10):
                        trainer.update()
            states[train] = trace
            assert trainer.num_updates == (50 if train else 0)
        for a, b in zip(states[False], states[True]):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------- behaviour
class TestSamplerBehaviour:
    def test_uniform_without_online_rows(self):
        g = torch.Generator().manual_seed(0)
        sampler = BalancedReplaySampler(**SMALL)
        rb = TensorDictReplayBuffer(
            storage=LazyTensorStorage(2000), sampler=sampler, batch_size=100
        )
        rb.extend(rows(g, 1000, 0.0, False))
        rb.set_rng(torch.Generator().manual_seed(0))
        batches = [rb.sample() for _ in range(100)]
        assert all(b["balanced_replay_uniform"].all() for b in batches)
        b = batches[0]
        torch.testing.assert_close(b["br_prob"], torch.full((100,), 1 / 1000))
        assert (b["balanced_replay_online_share"] == 0).all() and "priority_weight" not in b.keys()
        idx = torch.cat([b["index"] for b in batches])
        counts = torch.bincount(
            idx // 100, minlength=10
        ).numpy()  # 10 bins of 100 rows, 1000 draws each
        assert stats.chisquare(counts).pvalue > 1e-3
        trainer = BalancedReplayTrainer(sampler)
        assert trainer.update() == {} and trainer.num_updates == 0

    def test_update_before_anything_is_a_no_op(self):
        assert BalancedReplayTrainer(BalancedReplaySampler(**SMALL)).update() == {}

    def test_new_online_rows_are_seen_after_overwrite(self):
        """A full circular storage keeps its length: only the write hooks can tell the cache it is stale."""
        g = torch.Generator().manual_seed(0)
        sampler = BalancedReplaySampler(**SMALL)
        rb = TensorDictReplayBuffer(storage=LazyTensorStorage(100), sampler=sampler, batch_size=16)
        rb.extend(rows(g, 100, 0.0, False))
        assert rb.sample()["balanced_replay_uniform"].all()
        rb.extend(rows(g, 10, 2.0, True))  # overwrites rows 0-9; len stays 100
        assert len(rb) == 100
        assert not rb.sample()["balanced_replay_uniform"].any()
        assert BalancedReplayTrainer(sampler).update()["num_updates"] == 1.0
        rb.empty()
        rb.extend(rows(g, 100, 0.0, False))
        assert rb.sample()["balanced_replay_uniform"].all()

    def test_storage_with_two_dims(self):
        g = torch.Generator().manual_seed(0)
        sampler = BalancedReplaySampler(hidden_sizes=(16,), num_candidates=64)
        rb = TensorDictReplayBuffer(
            storage=LazyTensorStorage(400, ndim=2), sampler=sampler, batch_size=32
        )

        def block(t: int, centre: float, online: bool) -> TensorDict:
            data = rows(g, 5 * t, centre, online).reshape(5, t)
            return data

        rb.extend(block(40, -2.0, False))
        sampler.fit(rb[:])
        rb.extend(block(10, 2.0, True))
        storage = rb.storage
        assert storage.ndim == 2 and len(storage) == 250
        online_rows, offline_rows = sampler._online_offline_rows(storage)
        assert online_rows.numel() == 50 and offline_rows.numel() == 200
        trainer = BalancedReplayTrainer(sampler)
        for _ in range(30):
            metrics = trainer.update()
        assert metrics["weight_online"] > metrics["weight_offline"]
        batch = rb.sample()
        index = batch["index"]
        assert index.shape == (32, 2)
        assert (index[:, 0] < storage.shape[0]).all() and (index[:, 1] < storage.shape[1]).all()
        stored = storage.get((index[:, 0], index[:, 1]))
        torch.testing.assert_close(batch["observation"], stored["observation"])
        # the ratios were computed on the rows returned (flat index <-> unravelled index)
        torch.testing.assert_close(batch["br_weight"], sampler.density_ratio(stored))
        assert batch["balanced_replay_online_share"][0].item() == pytest.approx(
            stored["is_online"].float().mean().item()
        )

    def test_plain_replay_buffer_returns_info(self):
        g = torch.Generator().manual_seed(0)
        rb = ReplayBuffer(
            storage=LazyTensorStorage(500), sampler=BalancedReplaySampler(**SMALL), batch_size=8
        )
        rb.extend(rows(g, 100, 0.0, False))
        rb.extend(rows(g, 20, 2.0, True))
        _, info = rb.sample(return_info=True)
        assert info["br_prob"].shape == (8,) and info["br_weight"].shape == (8,)
        assert not bool(info["balanced_replay_uniform"])

    def test_fit_statistics_use_offline_rows_only(self):
        g = torch.Generator().manual_seed(0)
        off, on = rows(g, 500, -2.0, False), rows(g, 500, 5.0, True)
        sampler = BalancedReplaySampler(**SMALL).fit(torch.cat([off, on]))
        net = sampler.network
        torch.testing.assert_close(net.state_mean, off["observation"].mean(0))
        torch.testing.assert_close(net.state_std, off["observation"].std(0, correction=0))
        torch.testing.assert_close(net.action_mean, off["action"].mean(0))
        assert bool(net.fitted)
        with pytest.raises(ValueError, match="3 and 1"):
            sampler.fit(
                TensorDict({"observation": torch.zeros(4, 3), "action": torch.zeros(4, 1)}, [4])
            )

    def test_unfitted_warns_once(self, caplog):
        g = torch.Generator().manual_seed(0)
        rb = TensorDictReplayBuffer(
            storage=LazyTensorStorage(500), sampler=BalancedReplaySampler(**SMALL), batch_size=8
        )
        rb.extend(rows(g, 100, 0.0, False))
        rb.extend(rows(g, 20, 2.0, True))
        with caplog.at_level(logging.WARNING, logger="torchrl_otc.data.samplers.balanced_replay"):
            rb.sample()
            BalancedReplayTrainer(rb.sampler).update()
            rb.sample()
        assert sum("before fit()" in r.getMessage() for r in caplog.records) == 1

    def test_softplus_output_learns_too(self):
        rb, sampler, far, near, *_ = two_regions(output_activation="softplus")
        trainer = BalancedReplayTrainer(sampler)
        for _ in range(200):
            trainer.update()
        assert sampler.density_ratio(near).mean() > 2 * sampler.density_ratio(far).mean()

    def test_exported(self):
        assert "BalancedReplaySampler" in torchrl_otc.__all__
        assert torchrl_otc.data.BalancedReplaySampler is BalancedReplaySampler

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_cuda_storage(self):
        g = torch.Generator().manual_seed(0)
        sampler = BalancedReplaySampler(**SMALL)
        rb = TensorDictReplayBuffer(
            storage=LazyTensorStorage(500, device="cuda"), sampler=sampler, batch_size=8
        )
        rb.extend(rows(g, 100, -2.0, False))
        sampler.fit(rb[:])
        rb.extend(rows(g, 20, 2.0, True))
        rb.set_rng(torch.Generator().manual_seed(0))
        batch = rb.sample()
        assert next(sampler.network.parameters()).device.type == "cuda"
        assert batch["br_weight"].device.type == "cuda"
        trainer = BalancedReplayTrainer(sampler)
        for _ in range(20):
            metrics = trainer.update()
        assert metrics["weight_online"] > metrics["weight_offline"]
        state = sampler.state_dict()
        other = BalancedReplaySampler(**SMALL)
        other.load_state_dict(state)
        torch.testing.assert_close(
            other.density_ratio(rb[:]).cpu(), sampler.density_ratio(rb[:]).cpu()
        )


# ------------------------------------------------------------------------------------------- state
class TestState:
    def test_state_dict_round_trip_gives_identical_priorities_and_training(self):
        rb, sampler, *_ = two_regions()
        trainer = BalancedReplayTrainer(sampler)
        for _ in range(30):
            trainer.update()
        rb2, other, *_ = two_regions()  # same data, untrained
        other_trainer = BalancedReplayTrainer(other)
        other.load_state_dict(sampler.state_dict())
        other_trainer.load_state_dict(trainer.state_dict())
        assert other_trainer.num_updates == 30
        torch.testing.assert_close(
            other.density_ratio(rb2[:]), sampler.density_ratio(rb[:]), rtol=0, atol=0
        )
        rb.set_rng(torch.Generator().manual_seed(4))
        rb2.set_rng(torch.Generator().manual_seed(4))
        a, b = rb.sample(), rb2.sample()
        assert torch.equal(a["index"], b["index"])
        torch.testing.assert_close(a["br_prob"], b["br_prob"], rtol=0, atol=0)
        # optimiser moments and the training's own generator came along: training continues identically
        assert [trainer.update()["loss"] for _ in range(3)] == [
            other_trainer.update()["loss"] for _ in range(3)
        ]

    def test_state_dict_of_an_unbuilt_sampler(self):
        other = BalancedReplaySampler(**SMALL)
        other.load_state_dict(BalancedReplaySampler(**SMALL).state_dict())
        assert other.network is None
        with pytest.raises(ValueError, match="version"):
            other.load_state_dict({"version": 99})

    def test_dumps_creates_its_folder_and_loads(self, tmp_path):
        rb, sampler, *_ = two_regions()
        trainer = BalancedReplayTrainer(sampler)
        for _ in range(10):
            trainer.update()
        path = tmp_path / "a" / "b" / "sampler"
        sampler.dumps(path)
        assert path.is_dir()
        other = BalancedReplaySampler(**SMALL)
        other.loads(path)
        torch.testing.assert_close(
            other.density_ratio(rb[:]), sampler.density_ratio(rb[:]), rtol=0, atol=0
        )
        assert other.state_dict()["dims"] == sampler.state_dict()["dims"] == (2, 1)
        with pytest.raises(FileNotFoundError, match="dumps"):
            BalancedReplaySampler().loads(tmp_path / "nothing")

    def test_replay_buffer_dumps_and_loads(self, tmp_path):
        rb, sampler, *_ = two_regions()
        trainer = BalancedReplayTrainer(sampler)
        for _ in range(10):
            trainer.update()
        rb.dumps(
            tmp_path / "merged"
        )  # calls sampler.dumps(path / "sampler") before that folder exists
        expected = [rb.sample()["index"] for _ in range(3)]
        rb2 = TensorDictReplayBuffer(
            storage=LazyTensorStorage(3000), sampler=BalancedReplaySampler(**SMALL), batch_size=128
        )
        rb2.loads(tmp_path / "merged")
        got = [rb2.sample()["index"] for _ in range(3)]
        for a, b in zip(expected, got):
            assert torch.equal(a, b)

    def test_pickle(self):
        rb, sampler, *_ = two_regions()
        trainer = BalancedReplayTrainer(sampler)
        trainer.update()
        clone = pickle.loads(pickle.dumps(sampler))
        assert clone._storage is None
        torch.testing.assert_close(clone.density_ratio(rb[:]), sampler.density_ratio(rb[:]))
        # the training state is the trainer's: a clone trains on like the original from the same state
        clone._storage = sampler._storage
        clone_trainer = BalancedReplayTrainer(clone)
        clone_trainer.load_state_dict(pickle.loads(pickle.dumps(trainer.state_dict())))
        assert trainer.update()["loss"] == clone_trainer.update()["loss"]


# ------------------------------------------------------------------------------------------- bad input
class TestBadInput:
    def test_list_storage_refused(self):
        rb = ReplayBuffer(storage=ListStorage(10), sampler=BalancedReplaySampler(), batch_size=2)
        rb.extend([1, 2, 3])
        with pytest.raises(TypeError, match="TensorStorage.*ListStorage"):
            rb.sample()

    def test_missing_key_names_the_key_and_the_keys_present(self):
        rb = TensorDictReplayBuffer(
            storage=LazyTensorStorage(10), sampler=BalancedReplaySampler(), batch_size=2
        )
        rb.extend(TensorDict({"observation": torch.zeros(5, 2), "action": torch.zeros(5, 1)}, [5]))
        with pytest.raises(KeyError, match=r"'is_online'.*keys present.*action.*observation"):
            rb.sample()
        rb2 = TensorDictReplayBuffer(
            storage=LazyTensorStorage(10),
            sampler=BalancedReplaySampler(action_key="act"),
            batch_size=2,
        )
        rb2.extend(rows(torch.Generator().manual_seed(0), 5, 0.0, False))
        with pytest.raises(KeyError, match=r"'act'.*keys present.*is_online"):
            rb2.sample()
        with pytest.raises(KeyError, match="'action'"):
            BalancedReplaySampler().fit(TensorDict({"observation": torch.zeros(3, 2)}, [3]))

    def test_prefetch_refused(self):
        rb = TensorDictReplayBuffer(
            storage=LazyTensorStorage(10), sampler=BalancedReplaySampler(), batch_size=2, prefetch=2
        )
        rb.extend(rows(torch.Generator().manual_seed(0), 5, 0.0, False))
        with pytest.raises(RuntimeError, match="prefetch > 0.*density-ratio"):
            rb.sample()

    @pytest.mark.parametrize(
        ("kwargs", "error", "match"),
        [
            ({"num_candidates": 0}, ValueError, "num_candidates"),
            ({"num_candidates": 2.5}, ValueError, "num_candidates"),
            ({"train_batch_size": -1}, ValueError, "train_batch_size"),
            ({"temperature": 0.0}, ValueError, "temperature"),
            ({"temperature": float("inf")}, ValueError, "temperature"),
            ({"temperature": "hot"}, TypeError, "temperature"),
            ({"lr": 0.0}, ValueError, "lr"),
            ({"lr": float("nan")}, ValueError, "lr"),
            ({"hidden_sizes": (32, 0)}, ValueError, "hidden size"),
            ({"hidden_sizes": 32}, TypeError, "hidden_sizes"),
            ({"seed": -1}, ValueError, "seed"),
            ({"seed": True}, ValueError, "seed"),
            ({"device": "not-a-device"}, ValueError, "device"),
            ({"online_key": 3}, TypeError, "online_key"),
            ({"state_key": ()}, TypeError, "state_key"),
            ({"output_activation": "tanh"}, ValueError, "output_activation"),
        ],
    )
    def test_bad_arguments(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            BalancedReplaySampler(**kwargs)

    def test_positional_arguments_refused(self):
        with pytest.raises(TypeError):
            BalancedReplaySampler("is_online")  # type: ignore[misc]

    def test_empty_storage(self):
        rb = TensorDictReplayBuffer(
            storage=LazyTensorStorage(10), sampler=BalancedReplaySampler(), batch_size=2
        )
        with pytest.raises(RuntimeError, match="empty"):
            rb.sampler.sample(rb.storage, 2)

    def test_nan_features_name_the_rows(self):
        g = torch.Generator().manual_seed(0)
        sampler = BalancedReplaySampler(hidden_sizes=(8,), num_candidates=64)
        rb = TensorDictReplayBuffer(storage=LazyTensorStorage(20), sampler=sampler, batch_size=4)
        off = rows(g, 5, 0.0, False)
        off["observation"][3] = float("nan")
        rb.extend(off)
        rb.extend(rows(g, 2, 1.0, True))
        with pytest.raises(ValueError, match=r"non-finite.*storage rows \[3"):
            rb.sample()
