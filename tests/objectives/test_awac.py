"""AWACLoss: gradients, targets, keys, state and the equations of Nair et al. (2020)."""

from __future__ import annotations

import pytest
import torch
from objectives_testing import build_awac, grad_norm, make_batch, param_groups, zero_grads
from tensordict import TensorDict
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import SoftUpdate

from torchrl_otc.objectives import AWACLoss


@pytest.fixture
def loss():
    loss = build_awac()
    SoftUpdate(loss, tau=0.005)
    return loss


@pytest.mark.parametrize(
    "part, trained", [("qvalue_loss", "qvalue_network"), ("actor_loss", "actor_network")]
)
def test_each_part_reaches_only_its_network(loss, part, trained):
    zero_grads(loss)
    value, _ = getattr(loss, part)(make_batch())
    value.backward()
    groups = param_groups(loss)
    assert grad_norm(groups[trained]) > 0
    for name, tensors in groups.items():
        if name != trained:
            assert grad_norm(tensors) == 0, f"{part} leaked a gradient into {name}"


def test_targets_get_no_gradient(loss):
    out = loss(make_batch())
    (out["loss_actor"] + out["loss_qvalue"]).backward()
    groups = param_groups(loss)
    assert "target_actor_network" not in groups  # AWAC samples a' from the current policy
    for t in groups["target_qvalue_network"]:
        assert t.grad is None and not t.requires_grad
    assert set(out.keys()) == set(loss.out_keys)


def _min_q(loss, params, td):
    qs = []
    for j in range(2):
        with params[j].to_module(loss.qvalue_network):
            qs.append(loss.qvalue_network(td.clone())["state_action_value"].squeeze(-1))
    return torch.stack(qs).min(0).values


def test_critic_target_uses_target_critics_and_policy_action(loss):
    with torch.no_grad():
        for t in loss.target_qvalue_network_params.values(True, True):
            t.add_(0.1 * torch.randn_like(t))
    batch = make_batch(terminated_rows=4, done_rows=4)
    torch.manual_seed(3)
    with torch.no_grad():
        _, meta = loss.qvalue_loss(batch)
    torch.manual_seed(3)
    with torch.no_grad():
        next_td = batch["next"].select("observation")
        next_td["action"] = loss.actor_network.get_dist(next_td.clone()).sample()
        v = _min_q(loss, loss.target_qvalue_network_params, next_td)
    not_term = (~batch["next", "terminated"]).float().squeeze(-1)
    expected = batch["next", "reward"].squeeze(-1) + 0.99 * not_term * v
    assert torch.allclose(meta["target_value"], expected, atol=1e-6)
    assert torch.equal(meta["target_value"][:4], batch["next", "reward"][:4].squeeze(-1))
    assert not torch.allclose(meta["target_value"][4:8], batch["next", "reward"][4:8].squeeze(-1))


@pytest.mark.parametrize("temperature, samples", [(1.0, 1), (0.3, 4)])
def test_actor_loss_is_advantage_weighted_log_likelihood(temperature, samples):
    loss = build_awac(temperature=temperature, num_value_samples=samples)
    SoftUpdate(loss, tau=0.005)
    batch = make_batch()
    torch.manual_seed(9)
    value, meta = loss.actor_loss(batch)
    torch.manual_seed(9)
    with torch.no_grad():
        obs = batch.select("observation")
        dist = loss.actor_network.get_dist(obs.clone())
        log_prob = dist.log_prob(batch["action"])
        q = _min_q(loss, loss.qvalue_network_params, batch.select("observation", "action"))
        pi = dist.sample((samples,))
        v_td = obs.expand(samples, 16).clone()
        v_td["action"] = pi
        v = _min_q(loss, loss.qvalue_network_params, v_td).mean(0)
        weight = torch.exp((q - v) / temperature).clamp_max(100.0)
    assert torch.allclose(value, -(weight * log_prob).mean(), atol=1e-5)
    assert torch.allclose(meta["advantage"], (q - v).mean(), atol=1e-6)


def test_weights_are_clipped_at_max_weight():
    loss = build_awac(temperature=1e-3, max_weight=7.0)
    SoftUpdate(loss, tau=0.005)
    _, meta = loss.actor_loss(make_batch(batch=64))
    assert meta["awac_weight"] <= 7.0 + 1e-6
    assert (
        meta["awac_weight"] > 0.5
    )  # with lambda -> 0 about half the rows have A > 0 and hit the clip


def test_set_keys_nested_gives_the_flat_numbers():
    flat = build_awac(seed=1)
    nested = build_awac(
        seed=1,
        obs_key=("agent0", "observation"),
        action_key=("agent0", "action"),
        value_key=("agent0", "sav"),
    )
    nested.set_keys(
        action=("agent0", "action"),
        state_action_value=("agent0", "sav"),
        reward=("agent0", "reward"),
        done=("agent0", "done"),
        terminated=("agent0", "terminated"),
        priority=("agent0", "td_error"),
    )
    for loss in (flat, nested):
        SoftUpdate(loss, tau=0.005)
    assert ("next", "agent0", "terminated") in nested.in_keys
    flat_batch = make_batch(terminated_rows=3)
    nested_batch = make_batch(
        obs_key=("agent0", "observation"),
        action_key=("agent0", "action"),
        prefix=("agent0",),
        terminated_rows=3,
    )
    torch.manual_seed(0)
    out_flat = flat(flat_batch)
    torch.manual_seed(0)
    out_nested = nested(nested_batch)
    for key in ("loss_actor", "loss_qvalue"):
        assert torch.allclose(out_flat[key], out_nested[key]), key
    assert torch.equal(nested_batch["agent0", "td_error"], flat_batch["td_error"])


def test_state_dict_round_trip():
    source, dest = build_awac(seed=0), build_awac(seed=1)
    for loss in (source, dest):
        SoftUpdate(loss, tau=0.005)
    with torch.no_grad():
        for t in source.target_qvalue_network_params.values(True, True):
            t.add_(1.0)
    state = source.state_dict()
    dest.load_state_dict(state)
    for key, value in dest.state_dict().items():
        assert torch.equal(value, state[key]), key
    batch = make_batch()
    torch.manual_seed(2)
    a = source(batch.clone())
    torch.manual_seed(2)
    b = dest(batch.clone())
    for key in ("loss_actor", "loss_qvalue"):
        assert torch.equal(a[key], b[key])


def test_soft_update_moves_targets_by_tau():
    loss = build_awac()
    tau = 0.25
    updater = SoftUpdate(loss, tau=tau)
    with torch.no_grad():
        for p in loss.qvalue_network_params.values(True, True):
            p.add_(torch.randn_like(p))
    target = loss.target_qvalue_network_params
    pairs = [
        (p.detach().clone(), target.get(k).clone(), target.get(k))
        for k, p in loss.qvalue_network_params.items(True, True)
    ]
    updater.step()
    for source, before, after in pairs:
        assert torch.allclose(after, (1 - tau) * before + tau * source, atol=1e-6)
        assert not torch.allclose(after, before)


def test_priority_weight_is_read_only_when_present(loss):
    batch = make_batch(terminated_rows=16)  # targets = rewards: no sampled next action
    torch.manual_seed(0)
    base, _ = loss.qvalue_loss(batch)
    weights = torch.zeros(16)
    weights[:2] = 1.0
    torch.manual_seed(0)
    weighted, _ = loss.qvalue_loss(batch.clone().set("priority_weight", weights))
    torch.manual_seed(0)
    first_two, _ = loss.qvalue_loss(batch[:2])
    assert torch.allclose(weighted, first_two, atol=1e-6)
    assert not torch.allclose(weighted, base)


def test_constructor_errors():
    with pytest.raises(ValueError, match="temperature"):
        build_awac(temperature=0.0)
    critic = ValueOperator(
        MLP(in_features=5, out_features=1, num_cells=[4]), in_keys=["observation", "action"]
    )
    with pytest.raises(TypeError, match="get_dist"):
        AWACLoss(critic, critic)


@pytest.mark.parametrize("part", ["qvalue_loss", "actor_loss"])
def test_fast_paths_equal_the_tensordict_paths(part):
    fast, slow = build_awac(seed=2), build_awac(seed=2, deactivate_vmap=True)
    assert fast._fast_qvalue is not None and slow._fast_qvalue is None
    slow.load_state_dict(fast.state_dict())
    for loss in (fast, slow):
        SoftUpdate(loss, tau=0.005)
    batch = make_batch(terminated_rows=2)
    out = []
    for loss in (fast, slow):
        torch.manual_seed(0)
        value, _ = getattr(loss, part)(batch)
        value.backward()
        out.append((value.detach(), {k: p.grad for k, p in loss.named_parameters()}))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-5)
    for key, grad in out[0][1].items():
        other = out[1][1][key]
        assert (grad is None) == (other is None), key
        if grad is not None:
            assert torch.allclose(grad, other, atol=1e-5), key


def test_policy_distribution_matches_get_dist(loss):
    from torchrl_otc.objectives.utils import policy_distribution

    obs = torch.randn(7, 3)
    action = torch.rand(7, 2) * 1.8 - 0.9
    fast = policy_distribution(
        loss, "actor_network", loss.actor_network_params, {"observation": obs}
    )
    with loss.actor_network_params.to_module(loss.actor_network):
        slow = loss.actor_network.get_dist(TensorDict({"observation": obs}, [7]))
    assert type(fast) is type(slow)
    assert torch.allclose(fast.log_prob(action), slow.log_prob(action), atol=1e-6)
    assert torch.allclose(fast.deterministic_sample, slow.deterministic_sample)
