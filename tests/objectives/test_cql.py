"""BoundedCQLLoss: CQL's uniform actions in the action bounds, its density, and TorchRL's numbers on [-1, 1]."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from objectives_testing import ACT_DIM, HIDDEN, OBS_DIM, make_batch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import Tensor, nn
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import CQLLoss, SoftUpdate

from torchrl_otc.configs.algorithms import make_config
from torchrl_otc.objectives import BoundedCQLLoss
from torchrl_otc.trainers.algorithms import make_algorithm

NUM_RANDOM = 10


def networks(low, high, seed: int = 0) -> tuple[ProbabilisticActor, ValueOperator, Bounded]:
    """A TanhNormal actor on the bounds, a critic and the Bounded spec."""
    torch.manual_seed(seed)
    spec = Bounded(
        torch.as_tensor(low, dtype=torch.float32).expand(ACT_DIM),
        torch.as_tensor(high, dtype=torch.float32).expand(ACT_DIM),
        (ACT_DIM,),
    )
    net = nn.Sequential(
        MLP(in_features=OBS_DIM, out_features=2 * ACT_DIM, num_cells=list(HIDDEN)),
        NormalParamExtractor(),
    )
    actor = ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
    )
    qvalue = ValueOperator(
        MLP(in_features=OBS_DIM + ACT_DIM, out_features=1, num_cells=list(HIDDEN)),
        in_keys=["observation", "action"],
    )
    return actor, qvalue, spec


def build(cls: type[CQLLoss], low=-1.0, high=1.0, seed: int = 0, **kwargs) -> CQLLoss:
    """``cls`` on the same networks for the same seed (CQLLoss re-draws its second critic's parameters)."""
    actor, qvalue, spec = networks(low, high, seed)
    torch.manual_seed(seed + 1)
    kwargs.setdefault("num_random", NUM_RANDOM)
    loss = cls(actor, qvalue, action_spec=spec, **kwargs)
    loss.make_value_estimator(gamma=0.99)
    SoftUpdate(loss, tau=0.005)
    return loss


def record_conservative_inputs(loss: CQLLoss) -> list[Tensor]:
    """Record the actions at which the conservative term evaluates the critics, ``[3 * num_nets, B * N, d]``.

    ``cql_loss`` evaluates all of them in one call of ``_vmap_qvalue_network00`` (its only caller), stacked as
    ``[uniform actions, policy actions at s, policy actions at s']``, each once per critic.
    """
    seen: list[Tensor] = []
    inner = loss._vmap_qvalue_network00

    def recording(td, params):
        seen.append(td.get(loss.tensor_keys.action).detach().clone())
        return inner(td, params)

    loss._vmap_qvalue_network00 = recording
    return seen


def uniform_actions(loss: CQLLoss, seen: list[Tensor]) -> Tensor:
    (actions,) = seen
    random = actions[: loss.num_qvalue_nets]
    assert torch.equal(random[0], random[1])  # the same uniform actions for both critics
    return random[0]


def box(low, high) -> tuple[Tensor, Tensor]:
    return (
        torch.as_tensor(low, dtype=torch.float32).expand(ACT_DIM),
        torch.as_tensor(high, dtype=torch.float32).expand(ACT_DIM),
    )


# ------------------------------------------------------------------------------------ uniform actions
@pytest.mark.parametrize(
    "low, high", [(-0.1, 0.1), ([0.0, -2.0], [0.5, 3.0]), (-1.0, 1.0), ([-5.0, 1.0], [-4.0, 1.25])]
)
def test_every_uniform_action_lies_in_the_bounds_and_fills_them(low, high):
    loss = build(BoundedCQLLoss, low, high)
    seen = record_conservative_inputs(loss)
    batch = make_batch(32)
    loss.q_loss(batch)
    loss.cql_loss(batch)
    actions = uniform_actions(loss, seen)
    lo, hi = box(low, high)
    assert actions.shape == (32 * NUM_RANDOM, ACT_DIM)
    assert bool((actions >= lo).all() and (actions <= hi).all())
    # uniform on the box: each dimension reaches both ends (320 draws) and centres on the middle
    width = hi - lo
    assert bool((actions.min(0).values < lo + 0.05 * width).all())
    assert bool((actions.max(0).values > hi - 0.05 * width).all())
    assert torch.allclose(actions.mean(0), (lo + hi) / 2, atol=float(0.1 * width.max()))
    # the policy's actions, the rest of the conservative term, are in the bounds too (TanhNormal on them)
    everything = seen[0]
    assert bool((everything >= lo - 1e-6).all() and (everything <= hi + 1e-6).all())


def test_make_algorithm_cql_evaluates_the_conservative_term_in_mpe_bounds():
    """MPE's [-0.1, 0.1]: the update step's conservative term never leaves the box (it did with CQLLoss)."""
    algo = make_algorithm(
        make_config("cql", hidden_sizes=(16, 16)),
        Unbounded(shape=(OBS_DIM,)),
        Bounded(-0.1, 0.1, (ACT_DIM,)),
        seed=0,
    )
    seen = record_conservative_inputs(algo.loss)
    algo.update(make_batch(32))
    actions = uniform_actions(algo.loss, seen)
    assert actions.shape == (32 * algo.loss.num_random, ACT_DIM)
    assert float(actions.abs().max()) <= 0.1
    assert float(actions.abs().max()) > 0.09


def test_torchrl_cql_loss_draws_outside_the_bounds():
    """The bug BoundedCQLLoss fixes, and a check that the recording sees the uniform actions."""
    loss = build(CQLLoss, -0.1, 0.1)
    seen = record_conservative_inputs(loss)
    batch = make_batch(32)
    loss.q_loss(batch)
    loss.cql_loss(batch)
    actions = uniform_actions(loss, seen)
    assert (
        float(actions.abs().max()) > 0.5
    )  # uniform on [-1, 1]: ~90% of them are outside [-0.1, 0.1]
    assert float((actions.abs() > 0.1).float().mean()) > 0.8


# -------------------------------------------------------------------------- TorchRL's numbers on [-1, 1]
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"with_lagrange": True, "lagrange_thresh": 2.0},
        {
            "max_q_backup": True,
            "deterministic_backup": False,
            "temperature": 2.0,
            "min_q_weight": 5.0,
        },
    ],
)
def test_unit_bounds_give_torchrl_numbers_bit_for_bit(kwargs):
    batch = make_batch(32)
    outs, grads, cql_terms = [], [], []
    for cls in (CQLLoss, BoundedCQLLoss):
        loss = build(cls, **kwargs)
        td = batch.clone()
        torch.manual_seed(123)
        out = loss(td)
        total = sum(v for k, v in out.items() if k.startswith("loss_"))
        total.backward()
        outs.append(out)
        grads.append([p.grad for p in loss.parameters()])
        cql_terms.append((td.get("cql_q1_loss"), td.get("cql_q2_loss")))
    torchrl, ours = outs
    assert set(torchrl.keys()) == set(ours.keys())
    for key in torchrl.keys():
        assert torch.equal(torchrl[key], ours[key]), key
    assert all(torch.equal(a, b) for a, b in zip(*cql_terms))
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        assert (a is None and b is None) or torch.equal(a, b)


def test_unit_bounds_cql_loss_alone_matches_torchrl():
    """The part ``CQL.update`` calls (``cql_loss`` after ``q_loss``), from the same random stream."""
    batch = make_batch(16)
    values = []
    for cls in (CQLLoss, BoundedCQLLoss):
        loss = build(cls)
        td = batch.clone()
        torch.manual_seed(7)
        loss.q_loss(td)
        values.append(loss.cql_loss(td)[0])
        values.append(torch.rand(3))  # the random stream continues alike
    assert torch.equal(values[0], values[2])
    assert torch.equal(values[1], values[3])


# --------------------------------------------------------------------------------- the uniform density
@pytest.mark.parametrize(
    "low, high", [(-0.1, 0.1), (-1.0, 1.0), ([0.0, -2.0], [0.5, 3.0]), (-3.0, 3.0)]
)
def test_random_log_density_is_minus_the_log_volume(low, high):
    loss = build(BoundedCQLLoss, low, high)
    lo, hi = box(low, high)
    assert loss.random_log_density == pytest.approx(-float(torch.log(hi - lo).sum()), rel=1e-6)
    if np.isscalar(low):
        assert loss.random_log_density == pytest.approx(-ACT_DIM * math.log(high - low), rel=1e-6)


def test_random_log_density_is_torchrls_on_unit_bounds():
    assert build(BoundedCQLLoss).random_log_density == np.log(0.5**ACT_DIM)


@pytest.mark.parametrize(
    "cls, low, high",
    [(BoundedCQLLoss, -0.1, 0.1), (BoundedCQLLoss, -3.0, 3.0), (CQLLoss, -1.0, 1.0)],
)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_conservative_term_subtracts_the_uniform_log_density_per_sample(
    cls, low, high, temperature
):
    """A zero critic and policy log-densities of 1e4 leave only the uniform actions' terms.

    TorchRL's ``cql_loss`` (and so ours) takes the log-sum-exp over the three proposals of each of the ``B * N``
    draws (one uniform action, one policy action at s, one at s'; not over all ``3 N`` actions of a state as the
    CQL authors' code does) and broadcasts it against ``pred_q`` (``[B, 1]``), giving ``cql_q*_loss`` of shape
    ``[B, B * N]``. Every entry is then ``T log exp(-log mu / T) - 0 = d log(h - l)``, whatever ``T``.
    """
    loss = build(cls, low, high, temperature=temperature)
    with torch.no_grad():
        for p in loss.qvalue_network_params.values(True, True):
            p.zero_()
    policy_actions = loss._get_policy_actions

    def negligible_policy_terms(data, actor_params, num_actions=10):
        td, log_prob = policy_actions(data, actor_params, num_actions=num_actions)
        return td, torch.full_like(log_prob, 1e4)

    loss._get_policy_actions = negligible_policy_terms
    td = make_batch(16)
    loss.q_loss(td)
    value, _ = loss.cql_loss(td)
    expected = ACT_DIM * math.log(high - low)  # -log mu(a) = d log(h - l)
    for key in ("cql_q1_loss", "cql_q2_loss"):
        per_sample = td.get(key)
        assert per_sample.numel() == 16 * 16 * NUM_RANDOM
        torch.testing.assert_close(
            per_sample, torch.full_like(per_sample, expected), rtol=1e-5, atol=1e-5
        )
    assert float(value.detach()) == pytest.approx(2 * expected, rel=1e-5, abs=1e-5)  # both critics


# ------------------------------------------------------------------------------- a TorchRL loss module
def test_same_state_dict_as_torchrl_cql_loss():
    """The bounds are not in the state dict: CQLLoss checkpoints load, and ours load into CQLLoss."""
    ours, torchrl = build(BoundedCQLLoss, -0.1, 0.1), build(CQLLoss, -0.1, 0.1, seed=3)
    assert list(ours.state_dict()) == list(torchrl.state_dict())
    ours.load_state_dict(torchrl.state_dict())
    for a, b in zip(ours.parameters(), torchrl.parameters()):
        assert torch.equal(a, b)


def test_keys_follow_set_keys():
    loss = build(BoundedCQLLoss, -0.1, 0.1)
    loss.set_keys(pred_q1="q1", pred_q2="q2", cql_q1_loss="c1", cql_q2_loss="c2")
    td = make_batch(8)
    loss.q_loss(td)
    loss.cql_loss(td)
    assert {"q1", "q2", "c1", "c2"} <= set(td.keys())


def test_bounds_follow_the_module_dtype():
    loss = build(BoundedCQLLoss, -0.1, 0.1).double()
    td = make_batch(8).apply(lambda x: x.double() if x.is_floating_point() else x)
    seen = record_conservative_inputs(loss)
    loss.q_loss(td)
    value, _ = loss.cql_loss(td)
    actions = uniform_actions(loss, seen)
    assert value.dtype == actions.dtype == torch.float64
    assert float(actions.abs().max()) <= 0.1


def test_composite_spec_and_actor_spec_are_read():
    actor, qvalue, spec = networks(-0.1, 0.1)
    from_composite = BoundedCQLLoss(actor, qvalue, action_spec=Composite(action=spec))
    actor, qvalue, spec = networks(-0.1, 0.1)
    from_actor = BoundedCQLLoss(
        actor, qvalue
    )  # ProbabilisticActor(spec=...) holds Composite(action=spec)
    for loss in (from_composite, from_actor):
        assert torch.equal(loss.random_action_low, spec.space.low)
        assert torch.equal(loss.random_action_high, spec.space.high)


def test_invalid_specs_are_refused():
    actor, qvalue, _ = networks(-1.0, 1.0)
    with pytest.raises(TypeError, match="Bounded action spec"):
        BoundedCQLLoss(actor, qvalue, action_spec=Unbounded(shape=(ACT_DIM,)))
    agents = Bounded(
        torch.tensor([[-1.0, -1.0], [-0.5, -1.0]]),
        torch.tensor([[1.0, 1.0], [1.0, 1.0]]),
        (2, ACT_DIM),
    )
    with pytest.raises(ValueError, match="same for every leading index"):
        BoundedCQLLoss(actor, qvalue, action_spec=agents)
    stacked = Bounded(-1.0, 1.0, (3, ACT_DIM))  # the same bounds for every agent: accepted
    assert BoundedCQLLoss(actor, qvalue, action_spec=stacked).random_action_low.shape == (ACT_DIM,)


def test_action_dimension_mismatch_is_an_error():
    actor, qvalue, _ = networks(-1.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = BoundedCQLLoss(
            actor, qvalue, action_spec=Bounded(-1.0, 1.0, (ACT_DIM + 1,)), target_entropy=-2.0
        )
    loss.make_value_estimator(gamma=0.99)
    SoftUpdate(loss, tau=0.005)
    td = make_batch(8)
    loss.q_loss(td)
    with pytest.raises(ValueError, match="the action spec has 3"):
        loss.cql_loss(td)


def test_forward_trains_on_mpe_bounds():
    loss = build(BoundedCQLLoss, -0.1, 0.1, with_lagrange=True)
    td = make_batch(16)
    td["action"] = td["action"] * 0.1
    out = loss(td)
    total = sum(v for k, v in out.items() if k.startswith("loss_"))
    assert torch.isfinite(total)
    total.backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all()
        for p in loss.qvalue_network_params.values(True, True)
    )
