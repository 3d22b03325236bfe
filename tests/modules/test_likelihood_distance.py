"""Tests of the dynamics-likelihood selector (:class:`LikelihoodDistance` and its trainer): an ensemble of Gaussian
next-state models fitted to the latest deployment, offline rows ranked by their likelihood under it."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, RandomSampler, TensorDictReplayBuffer

from torchrl_otc import OTCSampler
from torchrl_otc.configs.parts import SamplerConfig
from torchrl_otc.data.samplers.ranking import rank_priorities
from torchrl_otc.data.synthetic import point_mass_transitions
from torchrl_otc.modules import LikelihoodDistance, OnlineRows, TransitionDistance
from torchrl_otc.trainers.parts import LikelihoodDistanceTrainer, trainable_part
from torchrl_otc.trainers.strategies import make_sampler


def linear_rows(
    n: int, matrix: torch.Tensor, g: torch.Generator, noise: float = 0.02
) -> TensorDict:
    """``s' = s + [s, a] @ matrix + noise``, with 3-d states and 2-d actions."""
    s, a = torch.randn(n, 3, generator=g), torch.rand(n, 2, generator=g) * 2 - 1
    nxt = s + torch.cat([s, a], -1) @ matrix + noise * torch.randn(n, 3, generator=g)
    return TensorDict({"observation": s, "action": a, ("next", "observation"): nxt}, [n])


def fitted(data: TensorDict, offline: TensorDict | None = None, **kw) -> LikelihoodDistance:
    dist = LikelihoodDistance(data["observation"].shape[-1], data["action"].shape[-1], **kw)
    trainer = LikelihoodDistanceTrainer(dist).fit(data if offline is None else offline)
    trainer.fit_online(data)
    return dist


def test_the_ensemble_prefers_rows_of_the_dynamics_it_was_fitted_on():
    g = torch.Generator().manual_seed(0)
    a1 = 0.3 * torch.randn(5, 3, generator=g)
    a2 = 0.3 * torch.randn(5, 3, generator=g)
    dist = fitted(linear_rows(1000, a1, g), fit_steps=300, hidden_sizes=(32, 32))
    ll_same = dist.log_likelihood(linear_rows(500, a1, g))
    ll_other = dist.log_likelihood(linear_rows(500, a2, g))
    # AUC = P(ll of a row of the fitted dynamics > ll of a row of the other); with 500 x 500 pairs its standard
    # error is below 0.015 (Hanley & McNeil), so 0.9 leaves > 6 standard errors below the near-1 value expected
    auc = (ll_same.unsqueeze(1) > ll_other.unsqueeze(0)).float().mean().item()
    assert auc >= 0.9, auc


def decomposed_right_share(make, *, calls: int = 60, seed: int = 0) -> tuple[float, int]:
    """Point-mass data (offline beta ~ U[-0.2, 0.2], deployment beta = 0.15), decomposed OTC at 0.3: the share of
    drawn offline rows with beta > 0 (the online sign) and how many offline rows were drawn."""
    g = torch.Generator().manual_seed(seed)
    offline = point_mass_transitions(20_000, (-0.2, 0.2), generator=g)
    deployment = point_mass_transitions(500, 0.15, online=True, generator=g)
    online = TensorDictReplayBuffer(storage=LazyTensorStorage(500))
    sampler = make(online)
    merged = TensorDictReplayBuffer(
        storage=LazyTensorStorage(20_500), sampler=sampler, batch_size=128
    )
    merged.extend(offline)
    online.extend(deployment)
    merged.extend(deployment)
    distance = getattr(sampler, "distance", None)
    if distance is not None:
        trainer = trainable_part(distance)
        trainer.fit(offline)
        trainer.fit_online(deployment)
    merged.set_rng(torch.Generator().manual_seed(seed))
    batch = torch.cat([merged.sample() for _ in range(calls)])
    off = ~batch["is_online"]
    return float((batch["beta"][off] > 0).float().mean()), int(off.sum())


def test_decomposed_otc_with_the_likelihood_draws_the_online_dynamics_far_more_than_uniform():
    def likelihood(online):
        return OTCSampler(
            online,
            alpha=2.0,
            distance=LikelihoodDistance(2, 2, fit_steps=300),
            num_candidates=256,
            num_online=100,
            online_fraction=0.3,
        )

    right, n = decomposed_right_share(likelihood)
    uniform, _ = decomposed_right_share(lambda online: RandomSampler(), seed=1)
    # uniform draws beta > 0 half the time: 4 standard errors of a share of n draws are 2 / sqrt(n) < 0.04
    assert abs(uniform - 0.5) < 2 / math.sqrt(n)
    assert right > 0.5 + 0.3, (right, uniform, n)


def test_before_any_online_data_every_candidate_ties_so_eq3_draws_uniformly():
    g = torch.Generator().manual_seed(1)
    td = point_mass_transitions(64, (-0.2, 0.2), generator=g)
    dist = LikelihoodDistance(2, 2, hidden_sizes=(8,))
    LikelihoodDistanceTrainer(dist).fit(td)
    out = dist.compare(td, OnlineRows.of(td[:10]))
    nll = out.next_state(out.argmin)
    assert torch.equal(nll, torch.zeros(64))
    probs, _ = rank_priorities(nll, 2.0)
    assert torch.allclose(probs, torch.full((64,), 1 / 64))


def test_the_comparison_matches_the_first_online_row_at_distance_zero_and_ranks_by_nll():
    g = torch.Generator().manual_seed(2)
    data = point_mass_transitions(400, 0.1, generator=g)
    dist = fitted(data, hidden_sizes=(16,), fit_steps=50)
    assert isinstance(dist, TransitionDistance)
    cands = point_mass_transitions(32, (-0.2, 0.2), generator=g)
    out = dist.compare(cands, OnlineRows.of(data[:7]))
    assert out.state_action.shape == (32, 7)
    assert torch.equal(out.minimum, torch.zeros(32)) and torch.equal(
        out.argmin, torch.zeros(32, dtype=torch.long)
    )
    assert torch.equal(out.ties, torch.ones(32, dtype=torch.long))
    assert torch.allclose(out.next_state(torch.full((32,), 3)), -dist.log_likelihood(cands))
    # excluded pairs: the match is the first allowed column
    ids = torch.zeros(32, dtype=torch.long), torch.arange(7)
    excluded = dist.compare(cands, OnlineRows.of(data[:7]), exclude=ids)
    assert torch.equal(excluded.argmin, torch.ones(32, dtype=torch.long))
    assert torch.equal(excluded.minimum, torch.zeros(32))


def test_the_score_reads_the_agents_own_action_only():
    g = torch.Generator().manual_seed(3)
    data = point_mass_transitions(300, 0.1, generator=g)
    dist = fitted(data, hidden_sizes=(16,), fit_steps=30)
    assert dist.in_keys == ["observation", "action", ("next", "observation")]
    rows = data[:50].clone()
    rows["other_action"] = torch.randn(
        50, 2, generator=g
    )  # another agent's action in the joint row
    before = dist.log_likelihood(rows)
    rows["other_action"] = torch.randn(50, 2, generator=g)
    assert torch.equal(dist.log_likelihood(rows), before)
    assert torch.equal(dist.log_likelihood(rows.select(*dist.in_keys)), before)
    rows["action"] = -rows["action"]
    assert not torch.equal(dist.log_likelihood(rows), before)


def test_state_dict_round_trip_gives_the_same_scores_and_the_same_next_refit():
    g = torch.Generator().manual_seed(4)
    offline = point_mass_transitions(500, (-0.2, 0.2), generator=g)
    first, second = (point_mass_transitions(200, b, generator=g) for b in (0.1, -0.1))
    source = LikelihoodDistance(2, 2, hidden_sizes=(16,), fit_steps=20, seed=3)
    trainer = LikelihoodDistanceTrainer(source).fit(offline)
    trainer.fit_online(first)
    copy = LikelihoodDistance(2, 2, hidden_sizes=(16,), fit_steps=20, seed=9)
    copy_trainer = LikelihoodDistanceTrainer(copy)
    version = copy.version
    copy.load_state_dict(source.state_dict())
    copy_trainer.load_state_dict(trainer.state_dict())
    assert copy.version > version and bool(copy.trained)
    assert torch.equal(copy.log_likelihood(offline), source.log_likelihood(offline))
    assert copy_trainer.update() == trainer.update()
    trainer.fit_online(second)
    copy_trainer.fit_online(second)
    assert torch.equal(copy.log_likelihood(offline), source.log_likelihood(offline))


def test_the_learner_refits_on_each_deployment_through_the_fit_online_hook():
    from torchrl.data import Bounded, Unbounded

    from torchrl_otc.trainers import AgentLearner

    g = torch.Generator().manual_seed(5)

    def rows(n, beta):
        td = point_mass_transitions(n, beta, generator=g)
        td[("next", "reward")] = torch.zeros(n, 1)
        td[("next", "done")] = torch.zeros(n, 1, dtype=torch.bool)
        td[("next", "terminated")] = torch.zeros(n, 1, dtype=torch.bool)
        del td["is_online"]
        return td

    agent = AgentLearner(
        "td3bc",
        Unbounded(shape=(2,)),
        Bounded(-1.0, 1.0, (2,)),
        seed=0,
        merged_capacity=5_000,
        online_capacity=500,
        sampler_kwargs={
            "num_candidates": 64,
            "num_online": 50,
            "online_fraction": 0.3,
            "adaptive_alpha": False,
            "distance": LikelihoodDistance(2, 2, hidden_sizes=(16,), fit_steps=10),
        },
    )
    assert isinstance(agent.trained_parts["distance"], LikelihoodDistanceTrainer)
    agent.add_offline(rows(1000, (-0.2, 0.2)))
    assert "distance/fit_nll" not in agent.update()
    version = agent.distance.version
    agent.add_deployment(rows(100, 0.15))
    assert set(agent.deployment_metrics) == {"distance/fit_nll", "distance/num_fits"}
    assert agent.distance.version == version + 1
    metrics = agent.update()
    assert metrics["distance/num_fits"] == 1.0 and math.isfinite(metrics["distance/fit_nll"])
    agent.add_deployment(rows(100, -0.15))
    assert agent.update()["distance/num_fits"] == 2.0


# -------------------------------------------------------------------------------------------------- config
def test_the_config_builds_it_from_sampler_distance_fields_and_refuses_it_without_a_numeric_share():
    online = TensorDictReplayBuffer(storage=LazyTensorStorage(10))
    cfg = SamplerConfig(online_fraction=0.3)
    cfg.distance.name = "likelihood"
    cfg.distance.ensemble_size, cfg.distance.ensemble_hidden_sizes = 3, (8, 4)
    cfg.distance.fit_steps, cfg.distance.fit_batch_size = 7, 32
    sampler = make_sampler(cfg.validate(), online, state_dim=4, action_dim=2, seed=5)
    dist = sampler.distance
    assert isinstance(dist, LikelihoodDistance)
    assert (dist.ensemble_size, dist.hidden_sizes, dist.fit_steps, dist.fit_batch_size) == (
        3,
        (8, 4),
        7,
        32,
    )
    assert not sampler.adaptive_alpha  # eq. (4)'s ratio of NLLs has no meaning
    for fraction in (None, "adaptive"):
        bad = SamplerConfig(online_fraction=fraction)
        bad.distance.name = "likelihood"
        with pytest.raises(ValueError, match="distance=likelihood .* needs decomposed OTC"):
            bad.validate()
    ok = SamplerConfig(online_fraction="matched", mix_pair="runs/otc")
    ok.distance.name = "likelihood"
    assert ok.validate().online_fraction == "matched"


def test_a_tiny_tuner_run_logs_the_online_share_and_the_fit_nll(tmp_path):
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
            "distance=likelihood",
            "online_fraction=0.3",
            "sampler.distance.fit_steps=20",
            "sampler.distance.ensemble_hidden_sizes=[16]",
        ]
    )
    cfg.run.runs_root, cfg.data.cache_dir = str(tmp_path / "runs"), str(tmp_path / "cache")
    run = load_run(OnlineTuner(cfg, progress=False).run()["run_dir"])
    batch = cfg.algorithm.batch_size
    share = run.series("agent0/online_share")
    for k in (1, 2):
        assert share[k] == pytest.approx(round(0.3 * batch) / batch, abs=1e-6)
    fit = run.series("agent0/distance/fit_nll")
    assert set(fit) >= {1, 2} and all(math.isfinite(v) for v in fit.values())
