"""AgentLearner and BatchedLearners: one agent's learner, isolation between agents, batched == separate."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, RandomSampler, Unbounded

from torchrl_otc.configs.algorithms import make_config
from torchrl_otc.trainers.batched import BatchedLearners
from torchrl_otc.trainers.learner import AgentLearner

OBS, ACT = 4, 2
ALGOS = ("bcq", "awac", "cql", "td3bc")


def transitions(n: int, seed: int, shift: float = 0.0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, OBS, generator=g)
    act = torch.rand(n, ACT, generator=g) * 2 - 1
    return TensorDict(
        {
            "observation": obs,
            "action": act,
            ("next", "observation"): obs + 0.1 * act.sum(-1, keepdim=True) + shift,
            ("next", "reward"): -act.pow(2).sum(-1, keepdim=True),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        [n],
    )


def learner(name: str = "td3bc", seed: int = 0, **kwargs) -> AgentLearner:
    overrides = kwargs.pop("overrides", {})
    cfg = make_config(name, **{"hidden_sizes": (16, 16), "batch_size": 32, **overrides})
    kwargs.setdefault("merged_capacity", 5000)
    kwargs.setdefault("online_capacity", 500)
    if "sampler_factory" not in kwargs:
        kwargs.setdefault("sampler_kwargs", {"num_candidates": 64, "num_online": 100})
    return AgentLearner(
        cfg, Unbounded(shape=(OBS,)), Bounded(-1.0, 1.0, (ACT,)), seed=seed, **kwargs
    )


def tensors_of(agent: AgentLearner) -> list[torch.Tensor]:
    loss = agent.algorithm.loss
    out = list(loss.state_dict(keep_vars=True).values())
    for opt in agent.algorithm.optimizers.values():
        for state in opt.state.values():
            out += [v for v in state.values() if isinstance(v, torch.Tensor)]
    distance = agent.distance
    if isinstance(distance, torch.nn.Module):
        out += list(distance.state_dict(keep_vars=True).values())
    return out


@pytest.mark.parametrize("name", ALGOS)
def test_agents_never_share_storage(name):
    agents = [learner(name, seed=i) for i in range(3)]
    for i, agent in enumerate(agents):
        agent.add_offline(transitions(300, seed=i))
        agent.update()
        agent.update()
    storages = [
        {t.untyped_storage().data_ptr() for t in tensors_of(a) if t.numel()} for a in agents
    ]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not storages[i] & storages[j], f"agents {i} and {j} share storage"
    assert len({id(a.generator) for a in agents}) == 3
    assert len({id(a.sampler) for a in agents}) == 3


def run_pair(data_a: TensorDict, steps: int = 6, interleave: bool = True) -> tuple[dict, list]:
    """Learner B's parameters and gradients after ``steps`` updates, next to a learner A trained on ``data_a``."""
    a, b = learner("td3bc", seed=0), learner("td3bc", seed=1)
    a.add_offline(data_a)
    b.add_offline(transitions(300, seed=7))
    grads: list[list[torch.Tensor]] = []

    def record(opt, args, kwargs):
        grads.append([p.grad.clone() for g in opt.param_groups for p in g["params"]])

    for opt in b.algorithm.optimizers.values():
        opt.register_step_pre_hook(record)
    for _ in range(steps):
        if interleave:
            a.update()
        b.update()
    return {k: v.clone() for k, v in b.algorithm.loss.state_dict().items()}, grads


def test_one_agents_data_does_not_reach_another_agents_gradients():
    state_1, grads_1 = run_pair(transitions(300, seed=1))
    state_2, grads_2 = run_pair(transitions(300, seed=2, shift=3.0))
    state_3, grads_3 = run_pair(transitions(300, seed=1), interleave=False)  # A never updates
    for other_state, other_grads in ((state_2, grads_2), (state_3, grads_3)):
        assert len(other_grads) == len(grads_1) > 0
        for g1, g2 in zip(grads_1, other_grads):
            assert all(torch.equal(x, y) for x, y in zip(g1, g2))
        assert all(torch.equal(state_1[k], other_state[k]) for k in state_1)


def test_updates_leave_the_callers_random_stream_alone():
    agent = learner("bcq")
    agent.add_offline(transitions(300, seed=0))
    obs = TensorDict({"observation": torch.randn(2, OBS)}, [2])
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    agent.update()
    agent.act(obs)
    assert torch.equal(torch.rand(3), expected)


def test_each_agent_fits_its_own_normaliser():
    a, b = learner(seed=0), learner(seed=1)
    a.add_offline(transitions(500, seed=0))
    b.add_offline(transitions(500, seed=1, shift=5.0))
    assert a.distance is not b.distance
    sa, sb = a.distance.state_dict(), b.distance.state_dict()
    assert any(not torch.allclose(sa[k], sb[k]) for k in sa if sa[k].is_floating_point())


def test_deployment_replaces_the_online_buffer_and_grows_the_merged_one():
    agent = learner()
    agent.add_offline(transitions(300, seed=0))
    agent.add_deployment(transitions(50, seed=1))
    agent.add_deployment(transitions(40, seed=2))
    assert len(agent.online_buffer) == 40 and len(agent.merged_buffer) == 390
    storage = agent.merged_buffer.storage
    flags = storage[: len(storage)]["is_online"]
    assert int(flags.sum()) == 90
    assert len(agent.sampler.alpha_history) == 2  # eq. 4 once per deployment
    metrics = agent.update(diagnostics=True)
    assert metrics["otc_uniform"] == 0.0 and 0.0 <= metrics["otc_online_share"] <= 1.0
    assert metrics["online_share"] == metrics["otc_online_share"]


def test_update_returns_the_logged_metrics_under_their_final_names():
    """What the tuning loop logs (docs/metrics.rst), without the agent{i}/ prefix; diagnostics on request."""
    agent = learner(sampler_factory=lambda online: RandomSampler())
    agent.add_offline(transitions(300, seed=0))
    assert list(agent.update()) == ["loss_qvalue", "online_share"]  # TD3's delay: no actor loss yet
    agent.add_deployment(transitions(300, seed=1))
    metrics = agent.update(timings=True)
    assert list(metrics) == ["loss_qvalue", "loss_actor", "online_share", "sample_ms", "update_ms"]
    assert (
        0.0 < metrics["online_share"] < 1.0
    )  # RandomSampler reports none: the batch's is_online column
    assert 0.0 < metrics["sample_ms"] < metrics["update_ms"]
    assert {"pred_value", "target_value"} <= set(agent.update(diagnostics=True))


def test_right_dynamics_share_counts_the_offline_rows_a_labelling_function_accepts():
    agent = learner(sampler_factory=lambda online: RandomSampler())
    offline = transitions(300, seed=0)
    offline.set("label", torch.arange(300) % 4 == 0)  # a quarter of the offline rows are "right"
    agent.add_offline(offline)
    online = transitions(300, seed=1)
    online.set("label", torch.zeros(300, dtype=torch.bool))  # online rows never count
    agent.add_deployment(online)
    seen = []

    def labels(batch):
        seen.append(batch)
        return batch.get("label")

    metrics = agent.update(right_dynamics=labels)
    batch = seen[0]
    offline_rows = ~batch.get("is_online")
    assert metrics["offline_right_dynamics_share"] == float(
        batch.get("label")[offline_rows].float().mean()
    )
    assert "offline_right_dynamics_share" not in agent.update(right_dynamics=lambda batch: None)


def test_alpha_adapts_in_one_place_in_the_agents_stream():
    """add_deployment(adapt_alpha=True) and add_deployment(adapt_alpha=False) + adapt_alpha() are the same."""
    a, b = learner(), learner()
    for agent in (a, b):
        agent.add_offline(transitions(300, seed=0))
    for k in (1, 2):
        a.add_deployment(transitions(60, seed=k, shift=0.1 * k))
        b.add_deployment(transitions(60, seed=k, shift=0.1 * k), adapt_alpha=False)
        caller = torch.get_rng_state()
        b.adapt_alpha()
        assert torch.equal(torch.get_rng_state(), caller)  # the caller's stream is left alone
    assert a.sampler.alpha_history == b.sampler.alpha_history and len(a.sampler.alpha_history) == 2
    assert a.sampler_metrics() == {"alpha": a.sampler.alpha, "D": a.sampler.alpha_history[-1]["D"]}
    uniform = learner(sampler_factory=lambda online: RandomSampler())
    uniform.add_offline(transitions(300, seed=0))
    assert uniform.adapt_alpha() is None and uniform.sampler_metrics() == {}


def test_finetune_runs_config_L_updates_with_config_batch_size():
    agent = learner(overrides={"finetune_updates": 3, "batch_size": 24})
    agent.add_offline(transitions(300, seed=0))
    assert agent.batch_size == 24 and agent.sample().batch_size == torch.Size([24])
    metrics = agent.finetune()
    assert agent.num_updates == 3 and "loss_qvalue" in metrics
    agent.finetune(2)
    assert agent.num_updates == 5


class _LearnedDistance:
    """A user's learned part that trains itself: it implements the TrainablePart protocol."""

    in_keys = ["observation", "action", ("next", "observation")]

    def __init__(self) -> None:
        self.batches: list[int] = []

    def fit(self, data):
        return self

    def pretrain(self, data, num_updates, *, progress=False):
        return {}

    def update(self, batch):
        self.batches.append(batch.shape[0])
        return {"loss": torch.tensor(0.5)}

    def state_dict(self):
        return {"batches": list(self.batches)}

    def load_state_dict(self, state_dict):
        self.batches = list(state_dict["batches"])


class _SamplerWithDistance(RandomSampler):
    def __init__(self) -> None:
        super().__init__()
        self.distance = _LearnedDistance()


def test_distance_update_hook_sees_every_training_batch():
    agent = learner(sampler_factory=lambda online: _SamplerWithDistance())
    agent.add_offline(transitions(300, seed=0))
    metrics = agent.update()
    agent.update()
    assert agent.distance.batches == [32, 32]
    assert metrics["distance/loss"] == 0.5
    assert agent.state_dict()["parts"] == {"distance": {"batches": [32, 32]}}


def test_a_part_that_half_implements_the_protocol_is_refused():
    class UpdateOnly(_LearnedDistance):
        state_dict = None  # no checkpoint: the learner could not resume it

    class Sampler(RandomSampler):
        def __init__(self) -> None:
            super().__init__()
            self.distance = UpdateOnly()

    with pytest.raises(
        TypeError, match=r"distance UpdateOnly has update\(\).*TrainablePart.*state_dict"
    ):
        learner(sampler_factory=lambda online: Sampler())


@pytest.mark.parametrize("name", ALGOS)
def test_state_dict_round_trip_continues_identically(name):
    data = transitions(300, seed=0)
    source = learner(name, seed=0)
    source.add_offline(data)
    source.add_deployment(transitions(60, seed=1))
    for _ in range(3):
        source.update()
    dest = learner(name, seed=5)
    dest.add_offline(data)
    dest.add_deployment(transitions(60, seed=1), adapt_alpha=False)
    dest.load_state_dict(source.state_dict())
    for agent in (source, dest):
        agent.update()
        agent.update()
    s, d = source.algorithm.loss.state_dict(), dest.algorithm.loss.state_dict()
    assert all(torch.equal(s[k], d[k]) for k in s)
    assert dest.sampler.alpha == source.sampler.alpha


def test_act_is_deterministic_for_td3bc_and_on_the_learner_device():
    agent = learner()
    agent.add_offline(transitions(300, seed=0))
    obs = TensorDict({"observation": torch.randn(5, OBS)}, [5])
    a1 = agent.act(obs.clone())["action"]
    a2 = agent.act(obs.clone())["action"]
    assert torch.equal(a1, a2) and a1.device == agent.device and a1.abs().max() <= 1


# ------------------------------------------------------------------------------------------ batched
def make_group(n: int, max_grad_norm: float | None = 1.0) -> list[AgentLearner]:
    agents = [
        learner("td3bc", seed=i, overrides={"max_grad_norm": max_grad_norm}) for i in range(n)
    ]
    for i, agent in enumerate(agents):
        agent.add_offline(transitions(400, seed=10 + i, shift=0.5 * i))
        agent.add_deployment(transitions(80, seed=20 + i))
    return agents


def test_batched_agents_equal_separate_agents():
    separate, batched_agents = make_group(3), make_group(3)
    group = BatchedLearners(batched_agents)
    for _ in range(6):
        for agent in separate:
            agent.update()
        group.update()
    group.write_back()
    for s_agent, b_agent in zip(separate, batched_agents):
        s, b = s_agent.algorithm.loss.state_dict(), b_agent.algorithm.loss.state_dict()
        for key in s:
            assert torch.allclose(s[key], b[key], atol=1e-5, rtol=1e-5), key
        assert b_agent.num_updates == s_agent.num_updates == 6
    # the written-back Adam states continue like the separate ones
    for agent in separate + batched_agents:
        agent.update()
    for s_agent, b_agent in zip(separate, batched_agents):
        s, b = s_agent.algorithm.loss.state_dict(), b_agent.algorithm.loss.state_dict()
        assert all(torch.allclose(s[k], b[k], atol=1e-5, rtol=1e-5) for k in s)


def test_batched_agent_data_does_not_reach_other_agents():
    results = []
    for shift in (0.0, 4.0):
        agents = make_group(3)
        agents[0].add_deployment(
            transitions(80, seed=99, shift=shift)
        )  # only agent 0's data differs
        group = BatchedLearners(agents)
        for _ in range(4):
            group.update()
        group.write_back()
        results.append([a.algorithm.loss.state_dict() for a in agents])
    for i in (1, 2):
        assert all(torch.equal(results[0][i][k], results[1][i][k]) for k in results[0][i])
    assert any(not torch.equal(results[0][0][k], results[1][0][k]) for k in results[0][0])


def test_batched_rejects_mixed_groups():
    with pytest.raises(ValueError, match="TD3\\+BC agents only"):
        BatchedLearners([learner("td3bc"), learner("awac")])
    with pytest.raises(ValueError, match="identical configs"):
        BatchedLearners([learner("td3bc"), learner("td3bc", overrides={"alpha": 1.0})])
