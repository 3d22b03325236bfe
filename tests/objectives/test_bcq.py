"""BCQLoss, BCQActor, BCQPerturbation and ActionVAE: gradients, targets, keys, state, equations."""

from __future__ import annotations

import pytest
import torch
from objectives_testing import (
    ACT_DIM,
    OBS_DIM,
    build_bcq,
    grad_norm,
    make_batch,
    param_groups,
    zero_grads,
)
from tensordict import TensorDict
from torch.distributions import Normal, kl_divergence
from torchrl.objectives import SoftUpdate

from torchrl_otc.modules.models.vae import ActionVAE, gaussian_kl
from torchrl_otc.objectives import BCQActor, BCQPerturbation


@pytest.fixture
def loss():
    loss = build_bcq()
    SoftUpdate(loss, tau=0.005)
    return loss


@pytest.mark.parametrize(
    "part, trained",
    [
        ("vae_loss", "vae_network"),
        ("qvalue_loss", "qvalue_network"),
        ("actor_loss", "actor_network"),
    ],
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


def test_targets_get_no_gradient_and_are_distinct(loss):
    out = loss(make_batch())
    (out["loss_actor"] + out["loss_qvalue"] + out["loss_vae"]).backward()
    groups = param_groups(loss)
    for name in ("target_actor_network", "target_qvalue_network"):
        for t in groups[name]:
            assert t.grad is None and not t.requires_grad
    # targets are copies, not the trained tensors; there is no VAE target
    trained = {t.data_ptr() for t in groups["actor_network"] + groups["qvalue_network"]}
    assert not trained & {
        t.data_ptr() for t in groups["target_actor_network"] + groups["target_qvalue_network"]
    }
    assert "target_vae_network" not in groups


def test_forward_out_keys_and_priority(loss):
    batch = make_batch()
    out = loss(batch)
    assert set(out.keys()) == set(loss.out_keys)
    assert batch["td_error"].shape == (16,)
    assert torch.allclose(
        batch["td_error"], (out["pred_value"] - out["target_value"]).pow(2).max(0).values
    )


def _manual_target(loss, batch, selection="mixed"):
    """y = r + gamma (1 - terminated) max_i [lmbda min_j Q'_j + (1 - lmbda) max_j Q'_j](s', a_i)."""
    next_obs = {"observation": batch["next", "observation"]}
    actions = loss.perturbed_vae_actions(
        next_obs, loss.num_samples, loss.target_actor_network_params
    )
    n = loss.num_samples
    cand = TensorDict(
        {"observation": next_obs["observation"].expand(n, 16, OBS_DIM), "action": actions}, [n, 16]
    )
    qs = []
    for j in range(2):
        with loss.target_qvalue_network_params[j].to_module(loss.qvalue_network):
            qs.append(loss.qvalue_network(cand.clone())["state_action_value"].squeeze(-1))
    q = torch.stack(qs)  # [2, n, B]
    mixed = 0.75 * q.min(0).values + 0.25 * q.max(0).values
    if selection == "mixed":
        v = mixed.max(0).values
    else:
        v = mixed.gather(0, q[0].argmax(0, keepdim=True)).squeeze(0)
    not_term = (~batch["next", "terminated"]).float().squeeze(-1)
    return batch["next", "reward"].squeeze(-1) + 0.99 * not_term * v, v


@pytest.mark.parametrize("selection", ["mixed", "q1"])
def test_qvalue_target_is_clipped_double_q_with_lambda(selection):
    loss = build_bcq(target_selection=selection)
    SoftUpdate(loss, tau=0.005)
    # perturb the targets so that they differ from the trained critics
    with torch.no_grad():
        for t in loss.target_qvalue_network_params.values(True, True):
            t.add_(0.1 * torch.randn_like(t))
    batch = make_batch(terminated_rows=4, done_rows=4)
    torch.manual_seed(123)
    with torch.no_grad():
        _, meta = loss.qvalue_loss(batch)
    torch.manual_seed(123)
    with torch.no_grad():
        expected, v = _manual_target(loss, batch, selection)
    assert torch.allclose(meta["target_value"], expected, atol=1e-6)
    assert torch.allclose(meta["next_state_value"], v, atol=1e-6)
    # terminated rows do not bootstrap; done-but-not-terminated rows (timeouts) do
    r = batch["next", "reward"].squeeze(-1)
    assert torch.equal(meta["target_value"][:4], r[:4])
    assert not torch.allclose(meta["target_value"][4:8], r[4:8])


def test_q1_selection_never_exceeds_mixed_max():
    batch = make_batch()
    values = {}
    for selection in ("mixed", "q1"):
        loss = build_bcq(target_selection=selection, seed=3)
        SoftUpdate(loss, tau=0.005)
        torch.manual_seed(7)
        values[selection] = loss.qvalue_loss(batch)[1]["next_state_value"]
    assert (values["q1"] <= values["mixed"] + 1e-6).all()
    assert (values["q1"] < values["mixed"] - 1e-6).any()


def test_vae_loss_is_reconstruction_plus_half_kl(loss):
    batch = make_batch()
    torch.manual_seed(5)
    value, meta = loss.vae_loss(batch)
    torch.manual_seed(5)
    vae = loss.vae_network.module
    recon, loc, log_std = vae(batch["observation"], batch["action"])
    expected_recon = (recon - batch["action"]).pow(2).mean()
    kl = kl_divergence(Normal(loc, log_std.exp()), Normal(0.0, 1.0)).mean()
    assert torch.allclose(value, expected_recon + 0.5 * kl, atol=1e-6)
    assert torch.allclose(meta["vae_kl"], kl, atol=1e-6)


def test_gaussian_kl_matches_torch():
    loc, log_std = torch.randn(5, 4), torch.randn(5, 4)
    expected = kl_divergence(Normal(loc, log_std.exp()), Normal(0.0, 1.0)).mean(-1)
    assert torch.allclose(gaussian_kl(loc, log_std), expected, atol=1e-5)


def test_actor_loss_is_minus_q1_of_perturbed_vae_action(loss):
    batch = make_batch()
    torch.manual_seed(11)
    value, meta = loss.actor_loss(batch)
    torch.manual_seed(11)
    with torch.no_grad():
        obs = batch["observation"]
        actions = loss.perturbed_vae_actions({"observation": obs}, 1, loss.actor_network_params)
        cand = TensorDict({"observation": obs[None], "action": actions}, [1, 16])
        with loss.qvalue_network_params[0].to_module(loss.qvalue_network):
            q1 = loss.qvalue_network(cand)["state_action_value"].squeeze(-1).squeeze(0)
    assert torch.allclose(value, -q1.mean(), atol=1e-6)
    assert torch.allclose(meta["state_action_value_actor"], q1, atol=1e-6)


def test_set_keys_nested_gives_the_flat_numbers():
    flat = build_bcq(seed=1)
    nested = build_bcq(
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
    assert ("next", "agent0", "reward") in nested.in_keys
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
    for key in ("loss_actor", "loss_qvalue", "loss_vae"):
        assert torch.allclose(out_flat[key], out_nested[key]), key
    assert torch.equal(nested_batch["agent0", "td_error"], flat_batch["td_error"])


def test_state_dict_round_trip():
    source, dest = build_bcq(seed=0), build_bcq(seed=1)
    for loss in (source, dest):
        SoftUpdate(loss, tau=0.005)
    with torch.no_grad():
        for t in source.target_qvalue_network_params.values(True, True):
            t.add_(1.0)
    state = source.state_dict()
    assert any(k.startswith("target_qvalue_network_params") for k in state)
    dest.load_state_dict(state)
    for key, value in dest.state_dict().items():
        assert torch.equal(value, state[key]), key
    batch = make_batch()
    torch.manual_seed(2)
    a = source(batch.clone())
    torch.manual_seed(2)
    b = dest(batch.clone())
    for key in ("loss_actor", "loss_qvalue", "loss_vae"):
        assert torch.equal(a[key], b[key])


def test_soft_update_moves_targets_by_tau():
    loss = build_bcq()
    tau = 0.1
    updater = SoftUpdate(loss, tau=tau)
    with torch.no_grad():  # move the sources away from the targets
        for p in loss.actor_network_params.values(True, True):
            p.add_(torch.randn_like(p))
        for p in loss.qvalue_network_params.values(True, True):
            p.add_(torch.randn_like(p))
    pairs = []
    for name in ("actor_network", "qvalue_network"):
        src = getattr(loss, f"{name}_params")
        tgt = getattr(loss, f"target_{name}_params")
        for key, p in src.items(True, True):
            if isinstance(p, torch.nn.Parameter):
                pairs.append((p.detach().clone(), tgt.get(key).clone(), tgt.get(key)))
    updater.step()
    for source, before, after in pairs:
        assert torch.allclose(after, (1 - tau) * before + tau * source, atol=1e-6)
        assert not torch.allclose(after, before)


def test_priority_weight_read_only_when_present():
    loss = build_bcq()
    SoftUpdate(loss, tau=0.005)
    batch = make_batch()
    unweighted = loss.vae_loss(batch.clone())
    ones = batch.clone().set("priority_weight", torch.ones(16))
    torch.manual_seed(0)
    base, _ = loss.vae_loss(batch)
    torch.manual_seed(0)
    with_ones, _ = loss.vae_loss(ones)
    assert torch.allclose(base, with_ones)
    assert unweighted[0].shape == ()
    weights = torch.zeros(16)
    weights[0] = 1.0
    weighted = batch.clone().set("priority_weight", weights)
    torch.manual_seed(0)
    first_only, _ = loss.vae_loss(weighted)
    torch.manual_seed(0)
    per_sample = build_bcq(reduction="none")
    per_sample.load_state_dict(loss.state_dict())
    torch.manual_seed(0)
    all_rows, _ = per_sample.vae_loss(batch)
    assert torch.allclose(first_only, all_rows[0])
    loss.use_prioritized_weights = False
    torch.manual_seed(0)
    ignored, _ = loss.vae_loss(weighted)
    assert torch.allclose(ignored, base)


def test_bcq_actor_is_argmax_q1_over_perturbed_samples(loss):
    obs = torch.randn(6, OBS_DIM)
    actor = BCQActor(loss, num_samples=20)
    torch.manual_seed(4)
    action = actor(obs)
    torch.manual_seed(4)
    with torch.no_grad():
        actions = loss.perturbed_vae_actions({"observation": obs}, 20, loss.actor_network_params)
        cand = TensorDict({"observation": obs.expand(20, 6, OBS_DIM), "action": actions}, [20, 6])
        with loss.qvalue_network_params[0].to_module(loss.qvalue_network):
            q1 = loss.qvalue_network(cand.clone())["state_action_value"].squeeze(-1)  # [20, 6]
    best = cand["action"][q1.argmax(0), torch.arange(6)]
    assert torch.equal(action, best)
    assert action.shape == (6, ACT_DIM) and action.abs().max() <= 1


def test_bcq_actor_follows_and_saves_the_loss_parameters(loss):
    actor = BCQActor(loss, num_samples=5)
    names = set(actor.state_dict())
    assert any(n.startswith("qvalue_params") for n in names)
    assert any(n.startswith("vae_params") for n in names) and any(
        n.startswith("actor_params") for n in names
    )
    obs = torch.randn(4, OBS_DIM)
    torch.manual_seed(0)
    before = actor(obs)
    with torch.no_grad():
        for p in loss.actor_network_params.values(True, True):
            if isinstance(p, torch.nn.Parameter):
                p.add_(1.0)
    torch.manual_seed(0)
    assert not torch.equal(actor(obs), before)


def test_perturbation_is_bounded_and_clipped():
    low, high = torch.tensor([-0.2, 0.0]), torch.tensor([0.2, 1.0])
    xi = BCQPerturbation(OBS_DIM, ACT_DIM, low=low, high=high, max_perturbation=0.05)
    with torch.no_grad():
        for p in xi.parameters():
            p.mul_(50)  # saturate the tanh
    a = low + (high - low) * torch.rand(256, ACT_DIM)
    out = xi(torch.randn(256, OBS_DIM), a)
    half = (high - low) / 2
    assert ((out - a).abs() <= 0.05 * half + 1e-6).all()
    assert ((out - a).abs() >= 0.05 * half * 0.5).any()  # the bound is reachable, not tiny
    assert (out >= low).all() and (out <= high).all()


def test_action_vae_decodes_inside_bounds_with_clipped_latent():
    vae = ActionVAE(OBS_DIM, ACT_DIM, low=torch.tensor([-0.1, 0.0]), high=torch.tensor([0.1, 2.0]))
    assert vae.latent_dim == 2 * ACT_DIM
    z = vae.sample_latent(torch.Size([10_000]), torch.zeros(1))
    assert z.abs().max() <= 0.5 and z.abs().max() > 0.45
    a = vae.decode(torch.randn(1000, OBS_DIM))
    assert (a[:, 0].abs() <= 0.1).all() and (a[:, 1] >= 0).all() and (a[:, 1] <= 2).all()
    with pytest.raises(ValueError, match="high > low"):
        ActionVAE(OBS_DIM, ACT_DIM, low=1.0, high=-1.0)


def test_constructor_errors():
    with pytest.raises(ValueError, match="target_selection"):
        build_bcq(target_selection="max")
    with pytest.raises(ValueError, match="lmbda"):
        build_bcq(lmbda=1.5)


def _grads(loss):
    return {k: (p.grad.clone() if p.grad is not None else None) for k, p in loss.named_parameters()}


@pytest.mark.parametrize("part", ["vae_loss", "qvalue_loss", "actor_loss"])
def test_fast_critic_path_equals_the_vmap_path(part):
    fast, slow = build_bcq(seed=2), build_bcq(seed=2, deactivate_vmap=True)
    assert fast._fast_qvalue is not None and slow._fast_qvalue is None
    slow.load_state_dict(fast.state_dict())
    for loss in (fast, slow):
        SoftUpdate(loss, tau=0.005)
    batch = make_batch(terminated_rows=2)
    values = []
    for loss in (fast, slow):
        torch.manual_seed(0)
        value, _ = getattr(loss, part)(batch)
        value.backward()
        values.append((value.detach(), _grads(loss)))
    assert torch.allclose(values[0][0], values[1][0], atol=1e-5)
    for key, grad in values[0][1].items():
        other = values[1][1][key]
        assert (grad is None) == (other is None), key
        if grad is not None:
            assert torch.allclose(grad, other, atol=1e-5), key


def test_target_actor_call_uses_the_target_parameters(loss):
    with torch.no_grad():
        for t in loss.target_actor_network_params.values(True, True):
            if t.is_floating_point() and t.dim() > 1:
                t.add_(0.5)
    obs = torch.randn(5, OBS_DIM)
    torch.manual_seed(1)
    got = loss.perturbed_vae_actions({"observation": obs}, 3, loss.target_actor_network_params)
    torch.manual_seed(1)
    with torch.no_grad():
        sampled = loss.vae_network.module.decode(obs.expand(3, 5, OBS_DIM))
        with loss.target_actor_network_params.to_module(loss.actor_network):
            expected = loss.actor_network.module(obs.expand(3, 5, OBS_DIM), sampled)
    assert torch.allclose(got, expected, atol=1e-6)
    torch.manual_seed(1)
    current = loss.perturbed_vae_actions({"observation": obs}, 3, loss.actor_network_params)
    assert not torch.allclose(got, current)


def test_cast_loss_recomputes_its_caches():
    loss32 = build_bcq(seed=4)
    SoftUpdate(loss32, tau=0.005)
    batch = make_batch(terminated_rows=16)  # critic targets = rewards: no sampling in qvalue_loss
    expected, _ = loss32.qvalue_loss(batch.clone())
    loss64 = build_bcq(seed=4)
    updater = SoftUpdate(loss64, tau=0.005)
    loss64(batch.clone())  # fill the caches, then cast
    updater.step()
    loss64.load_state_dict(loss32.state_dict())
    loss64 = loss64.double()
    batch64 = batch.clone().apply(lambda x: x.double() if x.is_floating_point() else x)
    got, _ = loss64.qvalue_loss(batch64)
    assert got.dtype == torch.float64 and torch.allclose(got.float(), expected, atol=1e-5)
    for part, trained in (("vae_loss", "vae_network"), ("actor_loss", "actor_network")):
        zero_grads(loss64)
        getattr(loss64, part)(batch64)[0].backward()
        grads = [p.grad for p in param_groups(loss64)[trained]]
        assert all(g is not None and g.dtype == torch.float64 for g in grads), part


def test_torchrl_actor_and_action_spec_are_accepted():
    # TorchRL's Actor (a TensorDictModule subclass) as the perturbation model, and bounds from a Bounded spec
    from tensordict.nn import TensorDictModule
    from torchrl.data import Bounded
    from torchrl.modules import MLP, Actor, ValueOperator

    from torchrl_otc.modules.models.vae import ActionVAE
    from torchrl_otc.objectives.bcq import BCQLoss, BCQPerturbation

    spec = Bounded(-0.5, 0.5, (2,))
    xi = BCQPerturbation(3, 2, action_spec=spec, max_perturbation=1.0)
    assert xi.low.tolist() == [-0.5, -0.5] and xi.high.tolist() == [0.5, 0.5]
    actor = Actor(xi, in_keys=["observation", "action"], out_keys=["action"], spec=spec)
    qvalue = ValueOperator(
        MLP(in_features=5, out_features=1, num_cells=[8]), in_keys=["observation", "action"]
    )
    vae = TensorDictModule(
        ActionVAE(3, 2, action_spec=spec, hidden_sizes=(8,)),
        in_keys=["observation", "action"],
        out_keys=["vae_reconstruction", "vae_loc", "vae_log_std"],
    )
    loss = BCQLoss(actor, qvalue, vae).make_value_estimator(gamma=0.99)
    out = loss(make_batch(8))
    assert all(out[k].isfinite() for k in ("loss_actor", "loss_qvalue", "loss_vae"))
    assert loss.vae_network.module.decode(torch.randn(16, 3)).abs().max() <= 0.5
    with pytest.raises(ValueError, match="action spec has shape"):
        BCQPerturbation(3, 4, action_spec=spec)
    with pytest.raises(ValueError, match="finite action bounds"):
        ActionVAE(3, 2, low=-float("inf"), high=1.0)
