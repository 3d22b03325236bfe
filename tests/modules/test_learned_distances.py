"""Learned transition distances (paper sections 3.3 and 3.5): d_e (transition CVAE) and d_q (the agent's critic)."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import (
    Bounded,
    LazyTensorStorage,
    RandomSampler,
    TensorDictReplayBuffer,
    Unbounded,
)

from torchrl_otc import EmbeddingDistance, OTCSampler, ValueDistance
from torchrl_otc.configs.algorithms import make_config
from torchrl_otc.data.synthetic import discrete_mdp, kernel_kl
from torchrl_otc.modules.distances import ValueFunctions
from torchrl_otc.modules.models.vae import TransitionVAE
from torchrl_otc.objectives import TransitionVAELoss
from torchrl_otc.trainers.algorithms import make_algorithm
from torchrl_otc.trainers.parts import EmbeddingDistanceTrainer


def two_dynamics(n: int, seed: int = 0) -> TensorDict:
    """Transitions ``s' = s + a`` (even rows) and ``s' = s - a`` (odd rows), states in R^3, actions in [-1, 1]^3."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 3, generator=g)
    a = torch.rand(n, 3, generator=g) * 2 - 1
    sign = (torch.arange(n) % 2 * 2 - 1).unsqueeze(-1).float()
    return TensorDict(
        {
            "observation": s,
            "action": a,
            ("next", "observation"): s + sign * a,
            "dynamics": (sign.squeeze(-1) > 0).long(),
        },
        [n],
    )


def trained_embedding(reconstruct: str = "action", steps: int = 1500, seed: int = 0):
    data = two_dynamics(4096)
    dist = EmbeddingDistance(3, 3, hidden_sizes=(64, 64), reconstruct=reconstruct, seed=seed)
    dist.fit(data)
    EmbeddingDistanceTrainer(dist).pretrain(data, steps)
    return dist


# ------------------------------------------------------------------------------------------- the CVAE
class TestTransitionVAE:
    @pytest.mark.parametrize("reconstruct", ["action", "next_state"])
    def test_shapes_and_standardised_target(self, reconstruct):
        vae = TransitionVAE(4, 2, 6, hidden_sizes=(8,), reconstruct=reconstruct)
        s, a, s2 = torch.randn(5, 4), torch.rand(5, 2), torch.randn(5, 4)
        vae.set_normalization(
            (torch.ones(4), 2 * torch.ones(4)),
            (torch.zeros(2), 0.5 * torch.ones(2)),
            (torch.zeros(4), torch.ones(4)),
        )
        recon, target, loc, log_std = vae(s, a, s2)
        expected = a / 0.5 if reconstruct == "action" else s2
        assert torch.allclose(target, expected)
        assert recon.shape == target.shape and loc.shape == (5, 6) == log_std.shape
        assert torch.equal(vae.embed(s, a, s2), vae.encode(*vae._standardised(s, a, s2))[0])

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="reconstruct"):
            TransitionVAE(3, 1, reconstruct="reward")
        vae = TransitionVAE(3, 1)
        with pytest.raises(ValueError, match="state statistics of shape"):
            vae.set_normalization(
                (torch.zeros(2), torch.ones(2)),
                (torch.zeros(1), torch.ones(1)),
                (torch.zeros(3), torch.ones(3)),
            )
        with pytest.raises(ValueError, match="std must be > 0"):
            vae.set_normalization(
                (torch.zeros(3), torch.zeros(3)),
                (torch.zeros(1), torch.ones(1)),
                (torch.zeros(3), torch.ones(3)),
            )


def _vae_loss(kl_weight: float = 0.5) -> TransitionVAELoss:
    module = TensorDictModule(
        TransitionVAE(3, 3, 4, hidden_sizes=(32,)),
        in_keys=["observation", "action", ("next", "observation")],
        out_keys=["vae_reconstruction", "vae_target", "vae_loc", "vae_log_std"],
    )
    return TransitionVAELoss(module, kl_weight=kl_weight)


class TestTransitionVAELoss:
    def test_loss_equals_its_formula(self):
        torch.manual_seed(0)
        loss = _vae_loss(kl_weight=0.3)
        batch = two_dynamics(16)
        torch.manual_seed(1)
        out = loss(batch)
        torch.manual_seed(1)
        recon, target, loc, log_std = loss.vae_network.module(
            batch["observation"], batch["action"], batch["next", "observation"]
        )
        kl = 0.5 * (loc.pow(2) + (2 * log_std).exp() - 1 - 2 * log_std).mean(-1)
        expected = ((recon - target).pow(2).mean(-1) + 0.3 * kl).mean()
        assert torch.allclose(out["loss_vae"], expected)

    def test_loss_falls_during_training(self):
        torch.manual_seed(0)
        loss = _vae_loss()
        opt = torch.optim.Adam(loss.parameters(), lr=3e-3)
        data = two_dynamics(2048)
        values = []
        for _ in range(300):
            batch = data[torch.randint(len(data), (128,))]
            value = loss(batch)["loss_vae"]
            opt.zero_grad()
            value.backward()
            opt.step()
            values.append(float(value.detach()))
        first, last = torch.tensor(values[:50]), torch.tensor(values[-50:])
        # The windows' means differ by more than five standard errors of their difference.
        se = math.sqrt(float(first.var() + last.var()) / 50)
        assert float(first.mean() - last.mean()) > 5 * se, (first.mean(), last.mean(), se)

    def test_priority_weights_are_read_only_when_present_and_allowed(self):
        torch.manual_seed(0)
        loss = _vae_loss()
        batch = two_dynamics(8)
        loss.reduction = "none"
        torch.manual_seed(2)
        rows = loss(batch)["loss_vae"].detach()
        loss.reduction = "mean"
        weighted = batch.clone()
        weighted["priority_weight"] = torch.zeros(8)
        weighted["priority_weight"][0] = 1.0
        torch.manual_seed(2)
        assert torch.allclose(loss(weighted)["loss_vae"].detach(), rows[0])
        loss.use_prioritized_weights = False
        torch.manual_seed(2)
        assert torch.allclose(loss(weighted)["loss_vae"].detach(), rows.mean())

    def test_set_keys_and_state_dict(self):
        loss = _vae_loss()
        loss.set_keys(priority_weight="w")
        assert loss.tensor_keys.priority_weight == "w"
        other = _vae_loss()
        other.load_state_dict(loss.state_dict())
        for a, b in zip(loss.parameters(), other.parameters()):
            assert torch.equal(a, b)

    def test_bad_network(self):
        with pytest.raises(TypeError, match="four out_keys"):
            TransitionVAELoss(
                TensorDictModule(torch.nn.Linear(2, 2), in_keys=["x"], out_keys=["y"])
            )
        with pytest.raises(ValueError, match="kl_weight"):
            _vae_loss(kl_weight=-1.0)


# ------------------------------------------------------------------------------------------- d_e
@pytest.fixture(scope="module")
def embedding():
    with torch.random.fork_rng():
        return trained_embedding()


class TestEmbeddingDistance:
    def test_same_dynamics_is_nearer_than_other_dynamics(self, embedding):
        """Queries with s' = s + a against a near copy with the same dynamics and one with s' = s - a."""
        g = torch.Generator().manual_seed(5)
        n = 600
        s = torch.randn(n, 3, generator=g)
        a = torch.rand(n, 3, generator=g) * 2 - 1
        s2, a2 = (
            s + 0.05 * torch.randn(n, 3, generator=g),
            a + 0.05 * torch.randn(n, 3, generator=g),
        )

        def td(s, a, nxt):
            return TensorDict({"observation": s, "action": a, ("next", "observation"): nxt}, [n])

        query = embedding.embed(td(s, a, s + a))[0]
        same = embedding.embed(td(s2, a2, s2 + a2))[0]
        other = embedding.embed(td(s2, a2, s2 - a2))[0]
        d_same = (query - same).abs().sum(-1)
        d_other = (query - other).abs().sum(-1)
        nearer = float((d_same < d_other).float().mean())
        # Under "the embedding ignores the dynamics" the share is 1/2 with std 0.5 / sqrt(n) = 0.02.
        assert nearer > 0.5 + 10 * 0.5 / math.sqrt(n), nearer
        assert float(d_same.median()) < 0.8 * float(d_other.median())

    def test_pretraining_reduces_the_loss(self):
        data = two_dynamics(2048)
        dist = EmbeddingDistance(3, 3, hidden_sizes=(32, 32), seed=1).fit(data)
        trainer = EmbeddingDistanceTrainer(dist)
        first = trainer.pretrain(data, 5)["loss_vae"]
        last = trainer.pretrain(data, 400)["loss_vae"]
        assert last < 0.7 * first, (first, last)
        assert trainer.num_updates == 405 and dist.version == 406  # fit made it 1

    def test_same_seed_same_parameters_and_no_global_randomness(self):
        data = two_dynamics(512)
        torch.manual_seed(123)
        before = torch.get_rng_state()
        dists = [EmbeddingDistance(3, 3, hidden_sizes=(16,), seed=3).fit(data) for _ in range(2)]
        for dist in dists:
            trainer = EmbeddingDistanceTrainer(dist)
            trainer.pretrain(data, 20)
            trainer.update(data[:64])
        assert torch.equal(torch.get_rng_state(), before)  # own stream: the caller's is untouched
        for a, b in zip(dists[0].parameters(), dists[1].parameters()):
            assert torch.equal(a, b)

    def test_update_every_and_version(self):
        data = two_dynamics(256)
        dist = EmbeddingDistance(3, 3, hidden_sizes=(16,), update_every=3).fit(data)
        trainer = EmbeddingDistanceTrainer(dist)
        versions, trained = [], []
        for _ in range(7):
            trained.append(bool(trainer.update(data[:32])))
            versions.append(dist.version)
        assert trained == [True, False, False, True, False, False, True]
        assert versions == [2, 2, 2, 3, 3, 3, 4]  # fit made it 1

    def test_state_dict_round_trip_continues_identically(self, tmp_path):
        data = two_dynamics(512)
        source = EmbeddingDistance(3, 3, hidden_sizes=(16,), seed=0).fit(data)
        source_trainer = EmbeddingDistanceTrainer(source)
        source_trainer.pretrain(data, 10)
        torch.save(
            {"distance": source.state_dict(), "trainer": source_trainer.state_dict()},
            tmp_path / "d.pt",
        )
        copy = EmbeddingDistance(3, 3, hidden_sizes=(16,), seed=9)
        copy_trainer = EmbeddingDistanceTrainer(copy)
        saved = torch.load(tmp_path / "d.pt", weights_only=True)
        copy.load_state_dict(saved["distance"])
        copy_trainer.load_state_dict(saved["trainer"])
        assert torch.equal(source.embed(data)[0], copy.embed(data)[0])
        source_trainer.pretrain(data, 5)
        copy_trainer.pretrain(data, 5)  # same optimiser moments and random stream: the same steps
        assert torch.equal(source.embed(data)[0], copy.embed(data)[0])
        assert copy_trainer.num_updates == source_trainer.num_updates == 15

    def test_no_gradient_reaches_the_encoder_through_the_sampler(self):
        data = two_dynamics(600)
        online = TensorDictReplayBuffer(storage=LazyTensorStorage(200))
        dist = EmbeddingDistance(3, 3, hidden_sizes=(16,)).fit(data)
        sampler = OTCSampler(online, distance=dist, num_candidates=64, num_online=50)
        merged = TensorDictReplayBuffer(
            storage=LazyTensorStorage(1000), sampler=sampler, batch_size=16
        )
        merged.extend(data[:500])
        online.extend(data[500:])
        merged.extend(data[500:])
        batch = merged.sample()
        assert not batch["otc_distance"].requires_grad
        assert all(p.grad is None for p in dist.parameters())
        sampler.adapt_alpha(merged)
        assert all(p.grad is None for p in dist.parameters())

    def test_sampler_checkpoint_carries_the_cvae(self, tmp_path):
        data = two_dynamics(300)
        online = TensorDictReplayBuffer(storage=LazyTensorStorage(10))
        dist = EmbeddingDistance(3, 3, hidden_sizes=(16,)).fit(data)
        EmbeddingDistanceTrainer(dist).pretrain(data, 5)
        sampler = OTCSampler(online, distance=dist)
        sampler.dumps(tmp_path / "sampler")
        other = OTCSampler(online, distance=EmbeddingDistance(3, 3, hidden_sizes=(16,), seed=4))
        other.loads(tmp_path / "sampler")
        assert torch.equal(dist.embed(data)[0], other.distance.embed(data)[0])

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="update_every"):
            EmbeddingDistance(3, 1, update_every=0)
        with pytest.raises(ValueError, match="lr"):
            EmbeddingDistance(3, 1, lr=0.0)
        with pytest.raises(ValueError, match="kl_weight"):
            EmbeddingDistance(3, 1, kl_weight=-1.0)
        with pytest.raises(KeyError, match="missing keys"):
            EmbeddingDistance(3, 1).fit(TensorDict({"observation": torch.zeros(2, 3)}, [2]))


# ------------------------------------------------------------------------------------------- d_q
def _set_linear_critics(algorithm, weights: list[torch.Tensor]) -> None:
    """Makes critic k compute ``w_k . [s, a]`` exactly: hidden (2,) with relu(x) - relu(-x) = x."""
    params = algorithm.loss.qvalue_network_params
    with torch.no_grad():
        for k, w in enumerate(weights):
            params["module", "0", "weight"][k].copy_(torch.stack([w, -w]))
            params["module", "0", "bias"][k].zero_()
            params["module", "2", "weight"][k].copy_(torch.tensor([[1.0, -1.0]]))
            params["module", "2", "bias"][k].zero_()


def _td(s, a, s2):
    return TensorDict({"observation": s, "action": a, ("next", "observation"): s2}, [len(s)])


class TestValueDistance:
    def test_equals_a_hand_computation_with_set_critics(self):
        algo = make_algorithm(
            make_config("td3bc", hidden_sizes=(2,)),
            Unbounded(shape=(2,)),
            Bounded(-1.0, 1.0, (1,)),
            seed=0,
        )
        w1, w2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 0.0, -1.0])
        _set_linear_critics(algo, [w1, w2])
        g = torch.Generator().manual_seed(0)
        s, a, s2 = (
            torch.randn(6, 2, generator=g),
            torch.rand(6, 1, generator=g),
            torch.randn(6, 2, generator=g),
        )
        for reduction in ("mean", "min"):
            dist = ValueDistance(algo, critic_reduction=reduction)
            q_sa, v_next = dist.embed(_td(s, a, s2))
            qs = torch.stack([torch.cat([s, a], -1) @ w for w in (w1, w2)])
            q_hand = qs.mean(0) if reduction == "mean" else qs.min(0).values
            assert torch.allclose(q_sa.squeeze(-1), q_hand, atol=1e-5)
            pi = algo.policy(TensorDict({"observation": s2}, [6]))["action"]
            vs = torch.stack([torch.cat([s2, pi], -1) @ w for w in (w1, w2)])
            v_hand = vs.mean(0) if reduction == "mean" else vs.min(0).values
            scale = v_hand.mean().abs()
            if scale < 0.1 * v_hand.abs().mean():
                scale = v_hand.abs().mean()
            assert torch.allclose(v_next.squeeze(-1), v_hand / scale, atol=1e-5)
            # eq. 1 and the similarity on these embeddings
            sa = dist.state_action_distance(_td(s, a, s2), _td(s, a, s2))
            assert torch.allclose(sa, (q_hand[:, None] - q_hand[None, :]).abs(), atol=1e-4)

    def test_guarded_denominators(self):
        q = lambda s, a: s.sum(-1)  # noqa: E731
        values = {}
        dist = ValueDistance(q_function=q, value_function=lambda s: values["v"])

        def similarity(v_cand, v_online):
            out = []
            for v in (v_cand, v_online):  # each set embedded on its own, as the sampler does
                values["v"] = v
                zeros = torch.zeros(len(v), 1)
                out.append(dist.embed(_td(zeros, zeros, zeros))[1])
            c, o = out
            return c.squeeze(-1), o.squeeze(-1)

        # Both means negative: exactly the paper's V / E[V] distances.
        vc, vo = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -6.0])
        c, o = similarity(vc, vo)
        paper = (vc / vc.mean())[:, None] - (vo / vo.mean())[None, :]
        assert torch.allclose((c[:, None] - o[None, :]).abs(), paper.abs())
        # Means of opposite signs: the paper's ratio would flip one set; the guard divides by |E V|.
        c, o = similarity(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -3.0]))
        assert torch.allclose(c, torch.tensor([0.5, 1.5])) and torch.allclose(
            o, torch.tensor([-0.5, -1.5])
        )
        # Mean about zero (values straddle 0): divide by the mean magnitude instead of ~0.
        c, _ = similarity(torch.tensor([-2.0, 2.0, 1e-4]), torch.tensor([1.0]))
        assert torch.allclose(c, torch.tensor([-2.0, 2.0, 1e-4]) / (4.0001 / 3), atol=1e-6)
        # All zero: divide by eps, finite.
        c, _ = similarity(torch.zeros(3), torch.ones(1))
        assert torch.isfinite(c).all() and bool((c == 0).all())

    @pytest.mark.parametrize("name", ["bcq", "awac", "cql", "td3bc"])
    @pytest.mark.parametrize("value_actions", ["policy", "sample"])
    def test_every_algorithm_binds_and_no_gradient_leaks(self, name, value_actions):
        algo = make_algorithm(
            make_config(name, hidden_sizes=(8,)),
            Unbounded(shape=(3,)),
            Bounded(-1.0, 1.0, (2,)),
            seed=0,
        )
        if name == "td3bc" and value_actions == "sample":
            with pytest.raises(ValueError, match="deterministic"):
                ValueDistance(algo, value_actions=value_actions)
            return
        dist = ValueDistance(algo, value_actions=value_actions, num_action_samples=4)
        online = TensorDictReplayBuffer(storage=LazyTensorStorage(100))
        sampler = OTCSampler(online, distance=dist, num_candidates=32, num_online=20)
        merged = TensorDictReplayBuffer(
            storage=LazyTensorStorage(400), sampler=sampler, batch_size=8
        )
        data = _td(torch.randn(300, 3), torch.rand(300, 2) * 2 - 1, torch.randn(300, 3))
        merged.extend(data[:250])
        online.extend(data[250:])
        merged.extend(data[250:])
        batch = merged.sample()
        assert torch.isfinite(batch["otc_distance"]).all()
        assert all(p.grad is None for p in algo.parameters())
        q, v = dist.embed(data[:10])
        assert q.shape == (10, 1) == v.shape and not q.requires_grad and not v.requires_grad

    def test_any_value_functions_object_serves(self):
        """d_q reads Q and V through the ValueFunctions protocol only: a hand-written object works."""

        class Known:
            def __init__(self):
                self.calls = []

            def q_value(self, observation, action, reduction="mean"):
                self.calls.append(("q", reduction))
                return observation.sum(-1) + action.sum(-1)

            def state_value(self, observation, actions="policy", num_samples=10, reduction="mean"):
                self.calls.append(("v", actions, num_samples, reduction))
                return 2 * observation.sum(-1)

            def check_state_value(self, actions):
                self.calls.append(("check", actions))
                if actions == "sample":
                    raise ValueError("no sampling here")

        known = Known()
        assert isinstance(known, ValueFunctions)
        dist = ValueDistance(known, critic_reduction="min", num_action_samples=3)
        s, a = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [1.0]])
        q, v = dist.embed(_td(s, a, torch.tensor([[1.0], [3.0]])))
        assert torch.equal(q.squeeze(-1), torch.tensor([1.0, 3.0]))
        assert torch.allclose(v.squeeze(-1), torch.tensor([2.0, 6.0]) / 4.0)
        assert known.calls == [("check", "policy"), ("q", "min"), ("v", "policy", 3, "min")]
        assert dist.__dict__["algorithm"] is known
        # refused when binding, not at the first use
        with pytest.raises(ValueError, match="no sampling here"):
            ValueDistance(Known(), value_actions="sample")

    @pytest.mark.parametrize("name", ["bcq", "awac", "cql", "td3bc"])
    @pytest.mark.parametrize("value_actions", ["policy", "sample"])
    def test_embeddings_are_the_algorithms_values(self, name, value_actions):
        """``embed`` = ``(Q(s, a), V(s') / scale)`` with Q and V from the algorithm's own value functions."""
        if name == "td3bc" and value_actions == "sample":
            return
        algo = make_algorithm(
            make_config(name, hidden_sizes=(8,)),
            Unbounded(shape=(3,)),
            Bounded(-1.0, 1.0, (2,)),
            seed=0,
        )
        data = _td(torch.randn(12, 3), torch.rand(12, 2) * 2 - 1, torch.randn(12, 3))
        dist = ValueDistance(algo, value_actions=value_actions, num_action_samples=4)
        torch.manual_seed(0)
        q, v = dist.embed(data)
        torch.manual_seed(0)
        want_q = algo.q_value(data["observation"], data["action"], "mean")
        want_v = algo.state_value(data["next", "observation"], value_actions, 4, "mean")
        assert torch.equal(q.squeeze(-1), want_q)
        assert torch.equal(v.squeeze(-1), want_v / ValueDistance.value_scale(want_v))

    def test_one_pass_over_both_sets_keeps_each_sets_normalisation(self):
        algo = make_algorithm(
            make_config("awac", hidden_sizes=(8,)),
            Unbounded(shape=(3,)),
            Bounded(-1.0, 1.0, (2,)),
            seed=0,
        )
        dist = ValueDistance(algo)
        data = _td(torch.randn(30, 3), torch.rand(30, 2) * 2 - 1, torch.randn(30, 3))
        (qc, vc), (qo, vo) = dist.embed_sets(data[:20], data[20:])
        for got, want in zip((qc, vc, qo, vo), (*dist.embed(data[:20]), *dist.embed(data[20:]))):
            torch.testing.assert_close(got, want)

    def test_unbound_and_bad_arguments(self):
        with pytest.raises(RuntimeError, match="not bound"):
            ValueDistance().embed(_td(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, 1)))
        with pytest.raises(ValueError, match="both"):
            ValueDistance(q_function=lambda s, a: s)
        with pytest.raises(ValueError, match="critic_reduction"):
            ValueDistance(critic_reduction="max")

    def test_learner_binds_its_own_critic(self):
        from torchrl_otc.trainers.learner import AgentLearner

        agents = [
            AgentLearner(
                make_config("td3bc", hidden_sizes=(8,)),
                Unbounded(shape=(3,)),
                Bounded(-1.0, 1.0, (2,)),
                seed=i,
                merged_capacity=100,
                online_capacity=10,
                sampler_kwargs={"distance": ValueDistance()},
            )
            for i in range(2)
        ]
        for agent in agents:
            assert agent.distance.__dict__["algorithm"] is agent.algorithm


# ------------------------------------------------------------------------------------------- the point
@pytest.fixture(scope="module")
def mdp():
    return discrete_mdp()


def _kl_of(mdp, make_sampler, prepare=None, calls=150):
    p_b, p_d, offline, online_data = mdp
    online = TensorDictReplayBuffer(storage=LazyTensorStorage(5_000))
    sampler = make_sampler(online)
    merged = TensorDictReplayBuffer(
        storage=LazyTensorStorage(30_000), sampler=sampler, batch_size=128
    )
    merged.extend(offline)
    online.extend(online_data)
    merged.extend(online_data)
    if prepare is not None:
        prepare(sampler, merged)
    merged.set_rng(torch.Generator().manual_seed(0))
    batches = torch.cat([merged.sample() for _ in range(calls)])
    return kernel_kl(batches, p_d)


def test_learned_distances_beat_uniform_on_the_discrete_mdp(mdp):
    """The sampler issue's discrete MDP: batches drawn with d_e and d_q are closer to the online kernel P_D."""
    kl_uniform, n_min = _kl_of(mdp, lambda online: RandomSampler())

    def pretrain(sampler, merged):
        with torch.random.fork_rng():
            sampler.distance.fit(merged[:])
            EmbeddingDistanceTrainer(sampler.distance).pretrain(merged[:], 1000)

    kl_e, n_e = _kl_of(
        mdp,
        lambda online: OTCSampler(online, distance=EmbeddingDistance(5, 2, hidden_sizes=(32, 32))),
        pretrain,
    )
    # d_q with a critic of known structure: distinct values per (s, a) and per next state.
    table = (
        torch.randperm(10, generator=torch.Generator().manual_seed(3)).float().reshape(5, 2) + 1.0
    )
    q = lambda s, a: (s @ table * a).sum(-1)  # noqa: E731  one-hot s and a pick table[s, a]
    v = lambda s: s @ table.mean(-1)  # noqa: E731
    kl_q, n_q = _kl_of(
        mdp,
        lambda online: OTCSampler(online, distance=ValueDistance(q_function=q, value_function=v)),
    )
    n_min = min(n_min, n_e, n_q)
    margin = (
        20 * (5 - 1) / (2 * n_min)
    )  # as in the sampler's test: 20x the plug-in KL's bias at n_min
    assert n_min > 500
    assert kl_e < kl_uniform - margin, (kl_e, kl_uniform, margin)
    assert kl_q < kl_uniform - margin, (kl_q, kl_uniform, margin)


@pytest.mark.parametrize("cls", ["EmbeddingDistance", "LikelihoodDistance"])
def test_device_follows_the_module(cls):
    # a module's device is where its tensors are, not an attribute fixed at construction (nn.Module.to moves it)
    import torchrl_otc.modules as modules

    dist = getattr(modules, cls)(3, 2, hidden_sizes=(8,))
    assert dist.device == torch.device("cpu")
    dist.to("meta")
    assert dist.device == torch.device("meta")
