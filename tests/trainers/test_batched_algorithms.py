"""Batched learners of every algorithm: the numbers of separate updates, decentralised gradients, clear refusals."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Unbounded

from torchrl_otc.configs.algorithms import make_config
from torchrl_otc.trainers.algorithms import (
    BatchedAWAC,
    BatchedBCQ,
    BatchedCQL,
    BatchedTD3BC,
    make_algorithm,
)
from torchrl_otc.trainers.algorithms.batched_common import (
    clip_per_learner,
    stacked_adam,
    stacked_linear,
)
from torchrl_otc.trainers.batched import BATCHED_ALGORITHMS, BatchedLearners
from torchrl_otc.trainers.learner import AgentLearner

OBS, ACT, N = 4, 2, 3
ALGOS = ("bcq", "awac", "cql", "td3bc")
#: configurations that exercise every branch of the batched updates
CASES = [
    ("bcq", {}),
    ("bcq", {"target_selection": "q1", "max_grad_norm": 0.5}),
    ("awac", {"num_value_samples": 3}),
    ("cql", {}),
    ("cql", {"with_lagrange": True, "max_grad_norm": 0.5}),
    ("cql", {"max_q_backup": True, "deterministic_backup": False, "num_random": 3}),
    ("cql", {"fixed_alpha": True}),
    ("td3bc", {}),
]


def transitions(n: int, seed: int, shift: float = 0.0, low: float = -1.0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, OBS, generator=g)
    act = low + torch.rand(n, ACT, generator=g) * (-2 * low) * 0.95
    return TensorDict(
        {
            "observation": obs,
            "action": act,
            ("next", "observation"): obs + 0.1 * act.sum(-1, keepdim=True) + shift,
            ("next", "reward"): -act.pow(2).sum(-1, keepdim=True),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "terminated"): torch.rand(n, 1, generator=g) < 0.1,
        },
        [n],
    )


def learner(name: str, seed: int, overrides: dict, low: float = -1.0) -> AgentLearner:
    cfg = make_config(name, **{"hidden_sizes": (16, 16), "batch_size": 32, **overrides})
    return AgentLearner(
        cfg,
        Unbounded(shape=(OBS,)),
        Bounded(low, -low, (ACT,)),
        seed=seed,
        merged_capacity=5000,
        online_capacity=500,
        sampler_kwargs={"num_candidates": 64, "num_online": 100},
    )


def group(name: str, overrides: dict, low: float = -1.0) -> list[AgentLearner]:
    agents = [learner(name, seed=i, overrides=overrides, low=low) for i in range(N)]
    for i, agent in enumerate(agents):
        agent.add_offline(transitions(400, seed=10 + i, shift=0.5 * i, low=low))
        agent.add_deployment(transitions(80, seed=20 + i, low=low))
    return agents


def assert_close_states(separate: list[AgentLearner], batched: list[AgentLearner]) -> None:
    for s_agent, b_agent in zip(separate, batched):
        s, b = s_agent.algorithm.loss.state_dict(), b_agent.algorithm.loss.state_dict()
        for key in s:
            assert torch.allclose(s[key], b[key], atol=1e-5, rtol=1e-5), key
        for part, opt in s_agent.algorithm.optimizers.items():
            s_state = list(opt.state.values())
            b_state = list(b_agent.algorithm.optimizers[part].state.values())
            assert len(s_state) == len(b_state)
            for x, y in zip(s_state, b_state):
                assert float(x["step"]) == float(y["step"])
                assert torch.allclose(x["exp_avg"], y["exp_avg"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_batched_learners_equal_separate_learners(name, overrides):
    low = (
        -0.5 if name in ("awac", "cql") else -1.0
    )  # non-trivial bounds for the TanhNormal's affine map
    separate, batched_agents = group(name, overrides, low), group(name, overrides, low)
    grouped = BatchedLearners(batched_agents)
    assert isinstance(grouped.batched, BATCHED_ALGORITHMS[name])
    for _ in range(6):
        expected = [agent.update() for agent in separate]
        got = grouped.update()
        for e, g in zip(expected, got):
            assert set(e) == set(g)
            for key in e:
                assert e[key] == pytest.approx(g[key], abs=1e-5, rel=1e-5), key
    grouped.write_back()
    assert_close_states(separate, batched_agents)
    assert all(a.num_updates == a.algorithm.num_updates == 6 for a in batched_agents)
    # the written-back parameters and Adam states continue like the separate ones
    for agent in separate + batched_agents:
        agent.update()
    assert_close_states(separate, batched_agents)


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_a_learners_numbers_do_not_depend_on_the_other_learners_of_its_group(name, overrides):
    """Learner 1 batched alone and batched with two others: the same losses and states, bit for bit (on one
    device), so a lockstep run's numbers do not depend on how its sweep cut the groups or on a catch-up batch.

    The cases that once differed: one learner's single-output layer (``bmm`` of one matrix takes another BLAS
    path) and the per-learner gradient norm of a clipped part (a reduction over a stacked ``[P, 1]`` tensor sums
    in another order)."""
    low = -0.5 if name in ("awac", "cql") else -1.0
    alone, together = group(name, overrides, low)[1:2], group(name, overrides, low)
    one, three = BatchedLearners(alone), BatchedLearners(together)
    for _ in range(8):  # past TD3+BC's delayed actor steps
        a, b = one.update()[0], three.update()[1]
        assert {k: v for k, v in a.items() if k.startswith("loss")} == {
            k: v for k, v in b.items() if k.startswith("loss")
        }
    one.write_back()
    three.write_back()
    s, t = alone[0].algorithm.loss.state_dict(), together[1].algorithm.loss.state_dict()
    assert all(torch.equal(s[key], t[key]) for key in s)


@pytest.mark.parametrize("name", ALGOS)
def test_one_learners_data_does_not_reach_the_others(name):
    """Learner 0's batches are replaced by NaN: every other learner's update stays the same bit for bit."""
    results = []
    for poison in (False, True):
        agents = group(name, {"max_grad_norm": 1.0})
        grouped = BatchedLearners(agents)
        if poison:
            original = agents[0].sample

            def poisoned_sample(original=original):
                batch = original()
                for key in ("observation", ("next", "observation"), ("next", "reward")):
                    batch.set(key, torch.full_like(batch.get(key), float("nan")))
                return batch

            agents[0].sample = poisoned_sample
        for _ in range(3):
            grouped.update(train_sampler=False)
        grouped.write_back()
        results.append([a.algorithm.loss.state_dict() for a in agents])
    for i in range(1, N):
        assert all(torch.equal(results[0][i][k], results[1][i][k]) for k in results[0][i])
    nan_params = [
        k for k, v in results[1][0].items() if v.is_floating_point() and torch.isnan(v).any()
    ]
    assert nan_params, "learner 0's poisoned batches should have reached its own parameters"


class _Stop(Exception):
    pass


@pytest.mark.parametrize("name", ALGOS)
def test_gradient_of_one_learners_loss_is_zero_for_the_others(name):
    """Autograd on the stacked parameters: learner 1's first loss has no gradient in learners 0 and 2's slices."""
    extra = {"with_lagrange": True} if name == "cql" else {}
    cfg = make_config(name, hidden_sizes=(8, 8), **extra)
    algos = [
        make_algorithm(cfg, Unbounded(shape=(OBS,)), Bounded(-1.0, 1.0, (ACT,)), seed=i)
        for i in range(N)
    ]
    batched = BATCHED_ALGORITHMS[name](algos)
    batches = torch.stack([transitions(16, seed=i) for i in range(N)])
    if isinstance(batched, BatchedTD3BC):
        params = batched.actor + batched.critic
    else:
        params = [p for ps in batched.parts.values() for p in ps]
    captured = []

    def capture(*args):  # _step(part, loss) or CQL's _step_all(total, alpha_prime_grad)
        captured.append(args[1] if isinstance(args[0], str) else args[0])
        raise _Stop

    if name == "cql":
        batched._step_all = capture
    else:
        batched._step = capture
    with pytest.raises(_Stop):
        batched.update(batches)
    (loss,) = captured
    assert loss.shape == (N,)
    grads = [g for g in torch.autograd.grad(loss[1], params, allow_unused=True) if g is not None]
    assert grads
    for g in grads:
        assert torch.count_nonzero(g[0]) == 0 and torch.count_nonzero(g[2]) == 0
    assert any(torch.count_nonzero(g[1]) > 0 for g in grads)


def test_clipping_is_per_learner():
    p = torch.nn.Parameter(torch.zeros(3, 2))
    p.grad = torch.tensor([[30.0, 40.0], [0.3, 0.4], [0.0, 0.0]])
    q = torch.nn.Parameter(torch.zeros(3))
    q.grad = torch.tensor([0.0, 0.0, 5.0])
    clip_per_learner([p, q], 1.0)
    norms = (p.grad.pow(2).sum(1) + q.grad.pow(2)).sqrt()
    assert torch.allclose(norms, torch.tensor([1.0, 0.5, 1.0]), atol=1e-5)


@pytest.mark.parametrize(
    ("cls", "name"),
    [(BatchedBCQ, "bcq"), (BatchedAWAC, "awac"), (BatchedCQL, "cql"), (BatchedTD3BC, "td3bc")],
)
def test_mismatched_groups_are_refused_naming_what_differs(cls, name):
    def make(obs=OBS, seed=0, **overrides):
        cfg = make_config(name, hidden_sizes=(8,), **overrides)
        return make_algorithm(cfg, Unbounded(shape=(obs,)), Bounded(-1.0, 1.0, (ACT,)), seed=seed)

    other = "awac" if name != "awac" else "bcq"
    alien = make_algorithm(
        make_config(other, hidden_sizes=(8,)), Unbounded(shape=(OBS,)), Bounded(-1.0, 1.0, (ACT,))
    )
    with pytest.raises(ValueError, match=f"agents only; got learner 1: {other}"):
        cls([make(), alien])
    with pytest.raises(ValueError, match=r"identical configs; they differ in hidden_sizes"):
        cls(
            [
                make(),
                make_algorithm(
                    make_config(name, hidden_sizes=(16,)),
                    Unbounded(shape=(OBS,)),
                    Bounded(-1.0, 1.0, (ACT,)),
                ),
            ]
        )
    with pytest.raises(
        ValueError,
        match=r"equal shapes; \w+ \(.*\) is \(8, (\d+)\) for learner 0 and \(8, \d+\) for learner 1",
    ):
        cls([make(), make(obs=OBS + 1)])
    ahead = make(seed=1)
    ahead.num_updates = 1
    with pytest.raises(ValueError, match="same update count; got \\[0, 1\\]"):
        cls([make(), ahead])
    with pytest.raises(ValueError, match="at least one"):
        cls([])


def test_batched_learners_refuse_mixed_algorithms_and_weights():
    with pytest.raises(ValueError, match="BCQ agents only; got learner 1: cql"):
        BatchedLearners([learner("bcq", 0, {}), learner("cql", 1, {})])
    with pytest.raises(ValueError, match="at least one learner"):
        BatchedLearners([])
    agents = group("awac", {})
    grouped = BatchedLearners(agents)
    original = agents[1].sample

    def weighted(original=original):
        batch = original()
        batch.set("priority_weight", torch.ones(batch.shape))
        return batch

    agents[1].sample = weighted
    with pytest.raises(ValueError, match="priority_weight"):
        grouped.update()


@pytest.mark.parametrize(
    "hyperparameters",
    [
        {"lr": 1e-3},
        {"lr": 0.1, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.01, "amsgrad": True},
    ],
)
def test_stacked_adam_takes_each_learners_own_adam_steps_bit_for_bit(hyperparameters):
    """One (foreach) Adam over stacked parameters: the separate learners' default Adam steps, bit for bit."""
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 4), (5,), ()]
    stacked = [torch.nn.Parameter(torch.randn(N, *s, generator=g)) for s in shapes]
    separate = [[torch.nn.Parameter(p.detach()[i].clone()) for p in stacked] for i in range(N)]
    opt = stacked_adam(stacked, **hyperparameters)
    opts = [torch.optim.Adam(ps, **hyperparameters) for ps in separate]
    for _ in range(4):
        for p in stacked:
            p.grad = torch.randn(p.shape, generator=g) * 1e-3
        for i, ps in enumerate(separate):
            for p, q in zip(ps, stacked):
                p.grad = q.grad[i].clone()
        opt.step()
        for o in opts:
            o.step()
    for i, ps in enumerate(separate):
        for p, q in zip(ps, stacked):
            assert torch.equal(p, q[i])
            assert torch.equal(opts[i].state[p]["exp_avg_sq"], opt.state[q]["exp_avg_sq"][i])


@pytest.mark.parametrize("rows", [32, 256])
@pytest.mark.parametrize(("fan_in", "fan_out"), [(1, 64), (26, 1), (26, 64), (256, 256)])
def test_stacked_linear_gives_one_layer_the_same_bits_alone_and_stacked(rows, fan_in, fan_out):
    """A layer alone (``E = 1``) and the first of three: the same output and gradients, bit for bit (one output
    or one input column took another BLAS path alone)."""
    g = torch.Generator().manual_seed(rows + fan_in + fan_out)
    x, w = torch.randn(3, rows, fan_in, generator=g), torch.randn(3, fan_out, fan_in, generator=g)
    b, grad = torch.randn(3, fan_out, generator=g), torch.randn(3, rows, fan_out, generator=g)
    results = []
    for n in (1, 3):
        xs, ws, bs = (t[:n].clone().requires_grad_() for t in (x, w, b))
        out = stacked_linear(xs, ws, bs)
        out.backward(grad[:n])
        results.append([t[0] for t in (out, xs.grad, ws.grad, bs.grad)])
    assert all(torch.equal(a, c) for a, c in zip(*results))


def test_stacked_linear_equals_linear_layers_with_their_gradients():
    g = torch.Generator().manual_seed(0)
    layers = [torch.nn.Linear(4, 3) for _ in range(N)]
    weight = torch.nn.Parameter(torch.stack([m.weight.detach() for m in layers]))
    bias = torch.nn.Parameter(torch.stack([m.bias.detach() for m in layers]))
    x = torch.randn(N, 6, 4, generator=g, requires_grad=True)
    out = torch.randn(N, 6, 3, generator=g)
    (stacked_linear(x, weight, bias) * out).sum().backward()
    for i, m in enumerate(layers):
        xi = x.detach()[i].clone().requires_grad_()
        (m(xi) * out[i]).sum().backward()
        assert torch.allclose(weight.grad[i], m.weight.grad, atol=1e-6)
        assert torch.allclose(bias.grad[i], m.bias.grad, atol=1e-6)
        assert torch.allclose(x.grad[i], xi.grad, atol=1e-6)
    assert weight.grad.is_contiguous()  # in the weight's layout: accumulated without a copy
    # only the gradients asked for: detached layers (TD3+BC's actor loss through the critic), constant inputs
    x.grad = None
    (stacked_linear(x, weight.detach(), bias.detach()) * out).sum().backward()
    assert x.grad is not None
    y = stacked_linear(x.detach(), weight, bias)
    assert torch.autograd.grad(y.sum(), [weight])[0].shape == weight.shape
