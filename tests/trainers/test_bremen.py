"""BREMEN (OTC section 4.4): the update step, acting, checkpoints, the config, and the whole loop at tiny size."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torch.distributions import Normal, kl_divergence
from torchrl.data import Bounded, Unbounded

from torchrl_otc.configs.algorithms import BREMENConfig, make_config
from torchrl_otc.configs.parts import ConfigError
from torchrl_otc.configs.tune import parse_overrides
from torchrl_otc.report import load_run
from torchrl_otc.trainers.algorithms import BREMEN, make_algorithm
from torchrl_otc.trainers.learner import AgentLearner
from torchrl_otc.trainers.tuning import OnlineTuner

OBS, ACT = 5, 2


def specs():
    return Unbounded(shape=(OBS,)), Bounded(-1.0, 1.0, shape=(ACT,))


def small(**overrides) -> BREMENConfig:
    values = {
        "hidden_sizes": (16, 16),
        "ensemble_size": 3,
        "rollout_horizon": 4,
        "policy_every": 3,
        "bc_steps": 20,
        "batch_size": 32,
    }
    values.update(overrides)
    return make_config("bremen", **values)


def transitions(n: int = 256, seed: int = 0) -> TensorDict:
    """A linear system with reward ``-|s'|``, actions in the bounds."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, OBS, generator=g)
    action = torch.rand(n, ACT, generator=g) * 2 - 1
    nxt = 0.9 * obs + 0.1 * torch.cat([action, action, action[:, :1]], -1)
    return TensorDict(
        {
            "observation": obs,
            "action": action,
            ("next", "observation"): nxt,
            ("next", "reward"): -nxt.abs().sum(-1, keepdim=True),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        [n],
    )


def built(**overrides) -> BREMEN:
    algo = make_algorithm(small(**overrides), *specs(), seed=0)
    algo.bc_initialise(transitions())
    return algo


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


def policy_dist(algo: BREMEN, obs: torch.Tensor) -> Normal:
    with torch.no_grad():
        loc, scale = algo.loss.actor_network.module[0].module(obs)
    return Normal(loc, scale)


# ------------------------------------------------------------------------------------------- update
def test_update_returns_finite_metrics_and_moves_the_parts_on_schedule():
    algo = built()
    data = transitions(512, seed=1)
    for step in range(1, 7):
        model, actor, critic = (flat(algo.parameters(p)) for p in ("model", "actor", "critic"))
        metrics = algo.update(data[torch.randint(512, (32,))])
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        assert not torch.equal(
            model, flat(algo.parameters("model"))
        )  # the model moves every update
        policy_step = step % 3 == 0
        assert ("trpo_kl" in metrics) == policy_step
        assert (not torch.equal(critic, flat(algo.parameters("critic")))) == policy_step
        if not policy_step:  # the policy moves only on TRPO steps
            assert torch.equal(actor, flat(algo.parameters("actor")))
        else:
            moved = not torch.equal(actor, flat(algo.parameters("actor")))
            assert moved == bool(metrics["trpo_accepted"])
    assert algo.num_updates == 6


def test_trpo_step_respects_the_kl_bound_on_the_batch_states():
    # horizon 1: the rollouts' states are the batch's, so the TRPO bound is a bound on the batch states
    algo = built(rollout_horizon=1, policy_every=1, max_kl=0.01)
    batch = transitions(64, seed=2)
    accepted = 0
    for _ in range(3):
        before = policy_dist(algo, batch["observation"])
        metrics = algo.update(batch)
        after = policy_dist(algo, batch["observation"])
        kl = kl_divergence(before, after).sum(-1).mean()
        assert float(kl) <= 0.01 * (1 + 1e-4)
        assert float(kl) == pytest.approx(metrics["trpo_kl"], rel=1e-3, abs=1e-7)
        accepted += int(metrics["trpo_accepted"])
    assert accepted >= 1  # it does move


def test_act_is_the_clamped_mean_within_bounds():
    algo = make_algorithm(small(), Unbounded(shape=(OBS,)), Bounded(-0.5, 2.0, (ACT,)), seed=0)
    obs = 50 * torch.randn(64, OBS)
    action = algo.act(TensorDict({"observation": obs}, [64]))["action"]
    assert bool((action >= -0.5).all() and (action <= 2.0).all())
    loc = policy_dist(algo, obs).loc
    torch.testing.assert_close(action, loc.clamp(torch.tensor(-0.5), torch.tensor(2.0)))


def test_bc_initialisation_fits_the_model_statistics_and_clones_the_actions():
    algo = make_algorithm(small(bc_steps=300, actor_lr=3e-3), *specs(), seed=0)
    data = transitions(512)
    data["action"] = (0.5 * data["observation"][:, :ACT]).clamp(-1, 1)
    before = (algo.act(data.select("observation").clone())["action"] - data["action"]).abs().mean()
    info = algo.bc_initialise(data)
    after = (algo.act(data.select("observation").clone())["action"] - data["action"]).abs().mean()
    assert info["bc_steps"] == 300 and math.isfinite(info["loss_bc"])
    assert float(after) < 0.5 * float(before)
    torch.testing.assert_close(algo.dynamics.input_mean[:OBS], data["observation"].mean(0))


def test_learner_add_offline_runs_the_bc_hook_in_its_own_stream():
    data = transitions(256)
    learner = AgentLearner(small(), *specs(), seed=3)
    state = torch.random.get_rng_state()
    learner.add_offline(data)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's stream untouched
    assert not torch.equal(learner.algorithm.dynamics.input_std, torch.ones(OBS + ACT))
    other = AgentLearner(small(), *specs(), seed=3)
    other.add_offline(data)
    torch.testing.assert_close(flat(learner.parameters()), flat(other.parameters()))
    assert math.isfinite(learner.update()["loss_dynamics"])


def test_state_dict_round_trip_continues_identically():
    a = built()
    data = transitions(512, seed=4)
    for _ in range(4):
        a.update(data[:32])
    b = make_algorithm(small(), *specs(), seed=9)
    b.load_state_dict(a.state_dict())
    assert b.num_updates == 4
    torch.testing.assert_close(b.dynamics.target_std, a.dynamics.target_std)
    outs = []
    for algo in (a, b):
        torch.manual_seed(11)
        outs.append([algo.update(data[32:64]) for _ in range(3)])  # update 6 is a policy step
    torch.testing.assert_close(flat(a.parameters()), flat(b.parameters()))
    assert outs[0] == outs[1] and "trpo_kl" in outs[0][1]


def test_no_value_distance_and_the_config_fields_reach_the_algorithm():
    algo = make_algorithm(
        small(
            ensemble_size=4,
            model_hidden_sizes=(12,),
            model_lr=0.02,
            max_kl=0.07,
            gae_lambda=0.8,
        ),
        *specs(),
    )
    with pytest.raises(ValueError, match="no critic over actions"):
        algo.q_value(torch.zeros(2, OBS), torch.zeros(2, ACT))
    with pytest.raises(ValueError, match="distance=feature"):
        algo.check_state_value("policy")
    assert algo.dynamics.ensemble_size == 4 and algo.dynamics.hidden_sizes == (12,)
    assert algo.optimizers["model"].param_groups[0]["lr"] == 0.02
    assert algo.loss.max_kl == 0.07 and float(algo.loss.value_estimator.lmbda) == pytest.approx(0.8)
    # value_steps: that many critic steps per policy step (Adam's step counter)
    algo = built(policy_every=1, value_steps=3)
    algo.update(transitions(32))
    state = algo.optimizers["critic"].state_dict()["state"]
    assert int(next(iter(state.values()))["step"]) == 3
    # rollout_horizon: the imagined rollouts' length
    assert algo.imagine(torch.zeros(6, OBS)).batch_size == torch.Size([6, 4])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"ensemble_size": 0}, "ensemble_size must be an int >= 1"),
        ({"max_kl": 0.0}, "max_kl must be > 0"),
        ({"rollout_horizon": 0}, "rollout_horizon must be an int >= 1"),
        ({"gae_lambda": 1.5}, "gae_lambda must be in [0, 1]"),
        ({"bc_steps": -1}, "bc_steps must be an int >= 0"),
    ],
)
def test_config_refuses_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_config("bremen", **overrides)


# ------------------------------------------------------------------------------------------ the loop
TINY = [
    "algo=bremen",
    "task=nav/nonstationary",
    "dataset_size=600",
    "offline_updates=12",
    "deployments=2",
    "steps_per_deployment=60",
    "updates_per_deployment=12",
    "eval_episodes=2",
    "num_candidates=64",
    "num_online=30",
    "checkpoint_every=5",
    "algorithm.hidden_sizes=[16,16]",
    "algorithm.batch_size=32",
    "algorithm.ensemble_size=2",
    "algorithm.rollout_horizon=3",
    "algorithm.policy_every=4",
    "algorithm.bc_steps=10",
]


def config(tmp_path, *overrides):
    cfg = parse_overrides([*TINY, *overrides])
    cfg.run.runs_root, cfg.data.cache_dir = str(tmp_path / "runs"), str(tmp_path / "cache")
    return cfg


@pytest.mark.parametrize(
    "strategy",
    [("strategy=otc", "distance=feature"), ("strategy=uniform", "task=mpe/navigation-3")],
)
def test_the_whole_loop_runs_end_to_end(tmp_path, strategy):
    tuner = OnlineTuner(config(tmp_path, *strategy), progress=False)
    summary = tuner.run()
    assert sorted(summary["returns"]) == [0, 1, 2]
    # decentralised: each agent's models read the global state and its own action only, and own their tensors
    action_dims = [agent.learner.algorithm.dynamics.action_dim for agent in tuner.agents]
    joint = sum(agent.learner.merged_buffer[:1]["action"].shape[-1] for agent in tuner.agents)
    assert all(d == joint // len(tuner.agents) for d in action_dims)
    params = [{id(p) for p in agent.learner.parameters()} for agent in tuner.agents]
    assert all(a.isdisjoint(b) for i, a in enumerate(params) for b in params[i + 1 :])
    assert all(math.isfinite(v) for v in summary["returns"].values())
    run = load_run(summary["run_dir"])
    losses = run.series("agent0/loss_dynamics")
    assert losses and all(math.isfinite(v) for v in losses)
    assert run.series("agent0/loss_critic")  # policy steps happened and were logged


def test_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    reference = OnlineTuner(config(tmp_path / "a"), progress=False).run()
    tuner = OnlineTuner(config(tmp_path / "b"), progress=False)
    original = tuner._train

    def train(steps, *, phase, deployment, start=0):
        if phase == "online" and deployment == 2:
            learner = tuner.agents[0].learner
            update = learner.update

            def failing(**kwargs):
                if tuner._stage["update"] >= 9:  # after the in-phase checkpoint at update 5
                    raise KeyboardInterrupt("killed in the online phase")
                return update(**kwargs)

            monkeypatch.setattr(learner, "update", failing)
        return original(steps, phase=phase, deployment=deployment, start=start)

    monkeypatch.setattr(tuner, "_train", train)
    with pytest.raises(KeyboardInterrupt):
        tuner.run()
    monkeypatch.undo()
    resumed = OnlineTuner.resume(tuner.folder.path, progress=False).run()
    assert resumed["returns"] == reference["returns"]
    a, b = load_run(reference["run_dir"]), load_run(resumed["run_dir"])

    def rows(run, values: bool):
        return [
            (r["step"], r["phase"], r["name"], r["value"] if values else None)
            for r in run.rows
            if values is not _is_timing(r["name"])
        ]

    assert rows(a, True) == rows(b, True)  # every metric but the timings, exactly
    assert rows(a, False) == rows(b, False)  # and the timings' rows: none lost or duplicated


def _is_timing(name: str) -> bool:
    return name.endswith("_ms") or name.endswith("_s") or "time" in name


def test_the_loop_refuses_value_distance_and_discrete_tasks(tmp_path):
    with pytest.raises(ConfigError, match="algo=bremen has none"):
        config(tmp_path, "distance=value").validate()
    with pytest.raises(ConfigError, match="mpe/navigation-3-discrete has discrete"):
        OnlineTuner(config(tmp_path, "task=mpe/navigation-3-discrete"), progress=False)


def test_batched_paths_say_bremen_has_no_batched_class():
    from torchrl_otc.trainers.lockstep import batchable

    assert batchable("bremen") == (
        "algorithm 'bremen' has no batched class (batched: bcq, awac, cql, td3bc)"
    )
