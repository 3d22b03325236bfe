"""DiscreteBCQLoss and DiscreteBCQActor: targets, masks, threshold, keys, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from objectives_testing import grad_norm, zero_grads
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import OneHot
from torchrl.modules import MLP
from torchrl.objectives import SoftUpdate
from torchrl.objectives.utils import ValueEstimators

from torchrl_otc.data.synthetic import CHAIN_STATES, masked_chain
from torchrl_otc.objectives import DiscreteBCQActor, DiscreteBCQLoss
from torchrl_otc.objectives.discrete_bcq import check_action_mask, masked_argmax

N_OBS, N_ACT, BATCH = 3, 4, 16


def build(
    *, seed: int = 0, linear: bool = False, prefix: tuple[str, ...] = (), **kwargs
) -> DiscreteBCQLoss:
    """A small loss; ``linear`` networks make values easy to set by hand (Q(s) = W s + b)."""
    torch.manual_seed(seed)
    obs_key = (*prefix, "observation") if prefix else "observation"
    nets = []
    for out in ("action_value", "imitation_logits"):
        module = (
            nn.Linear(N_OBS, N_ACT)
            if linear
            else MLP(in_features=N_OBS, out_features=N_ACT, num_cells=[16])
        )
        nets.append(TensorDictModule(module, in_keys=[obs_key], out_keys=[out]))
    loss = DiscreteBCQLoss(*nets, **kwargs).make_value_estimator(gamma=0.99)
    SoftUpdate(loss, tau=0.005)
    return loss


def make_batch(
    batch: int = BATCH,
    *,
    seed: int = 0,
    masks: bool = False,
    terminated_rows: int = 0,
    done_rows: int = 0,
    prefix: tuple[str, ...] = (),
) -> TensorDict:
    """Random transitions with one-hot (bool) actions; with ``masks``, random masks that allow the action."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(N_ACT, (batch,), generator=g)
    terminated = torch.zeros(batch, 1, dtype=torch.bool)
    terminated[:terminated_rows] = True
    done = terminated.clone()
    done[terminated_rows : terminated_rows + done_rows] = True
    td = TensorDict({}, [batch])
    td.set((*prefix, "observation"), torch.randn(batch, N_OBS, generator=g))
    td.set((*prefix, "action"), F.one_hot(index, N_ACT).bool())
    td.set(("next", *prefix, "observation"), torch.randn(batch, N_OBS, generator=g))
    td.set(("next", *prefix, "reward"), torch.randn(batch, 1, generator=g))
    td.set(("next", *prefix, "done"), done)
    td.set(("next", *prefix, "terminated"), terminated)
    if masks:
        mask = torch.rand(batch, N_ACT, generator=g) < 0.5
        mask[torch.arange(batch), index] = True
        next_mask = torch.rand(batch, N_ACT, generator=g) < 0.5
        next_mask[torch.arange(batch), torch.randint(N_ACT, (batch,), generator=g)] = True
        td.set((*prefix, "action_mask"), mask)
        td.set(("next", *prefix, "action_mask"), next_mask)
    return td


def set_linear(module: nn.Linear, bias: list[float], weight_scale: float = 0.0) -> None:
    with torch.no_grad():
        module.weight.mul_(weight_scale)
        module.bias.copy_(torch.tensor(bias))


def sync_targets(loss: DiscreteBCQLoss) -> None:
    with torch.no_grad():
        for key, t in loss.target_value_network_params.items(True, True):
            t.copy_(loss.value_network_params.get(key))


def manual_target(loss: DiscreteBCQLoss, batch: TensorDict, threshold: float, mask: bool):
    """y = r + gamma (1 - terminated) Q'(s', argmax_{allowed} Q(s', .)), allowed by G's ratio test and the mask."""
    s_next = batch["next", "observation"]
    q_online = loss.value_network.module(s_next)
    with loss.target_value_network_params.to_module(loss.value_network):
        q_target = loss.value_network.module(s_next)
    logits = loss.imitation_network.module(s_next)
    allowed = torch.ones_like(logits, dtype=torch.bool)
    if mask:
        allowed = batch["next", "action_mask"].clone()
        logits = logits.masked_fill(~allowed, float("-inf"))
    probs = logits.softmax(-1)
    allowed &= probs / probs.max(-1, keepdim=True).values > threshold
    values = []
    for i in range(len(batch)):
        best = max(
            (a for a in range(N_ACT) if allowed[i, a]), key=lambda a, i=i: q_online[i, a].item()
        )
        values.append(q_target[i, best])
    v = torch.stack(values)
    not_term = (~batch["next", "terminated"]).float().squeeze(-1)
    return batch["next", "reward"].squeeze(-1) + 0.99 * not_term * v, v


# ----------------------------------------------------------------------------------- shapes and keys
def test_forward_keys_shapes_and_priority():
    loss = build()
    batch = make_batch(masks=True)
    out = loss(batch)
    assert set(out.keys()) == set(loss.out_keys)
    assert out["loss_qvalue"].shape == () and out["loss_imitation"].shape == ()
    assert batch["td_error"].shape == (BATCH,)
    assert torch.allclose(batch["td_error"], (out["pred_value"] - out["target_value"]).pow(2))
    assert ("next", "reward") in loss.in_keys and ("next", "observation") in loss.in_keys
    assert "action_mask" not in loss.in_keys  # "auto": read when present, not required


def test_make_value_estimator_returns_self_and_sets_gamma():
    loss = build()
    assert loss.make_value_estimator(gamma=0.5) is loss
    assert loss.make_value_estimator(ValueEstimators.TD0, gamma=0.5) is loss
    batch = make_batch()
    _, meta = loss.qvalue_loss(batch)
    r = batch["next", "reward"].squeeze(-1)
    assert torch.allclose(meta["target_value"], r + 0.5 * meta["next_state_value"], atol=1e-6)


@pytest.mark.parametrize("part", ["qvalue_loss", "imitation_loss"])
def test_reduction_none_mean_sum(part):
    batch = make_batch(masks=True, terminated_rows=3)
    values = {}
    for reduction in ("none", "mean", "sum"):
        loss = build(seed=1, reduction=reduction)
        values[reduction] = getattr(loss, part)(batch.clone())[0]
    assert values["none"].shape == (BATCH,)
    assert torch.allclose(values["mean"], values["none"].mean())
    assert torch.allclose(values["sum"], values["none"].sum())


def test_set_keys_nested_gives_the_flat_numbers():
    flat = build(seed=2)
    nested = build(seed=2, prefix=("agent0",))
    nested.set_keys(
        action=("agent0", "action"),
        action_mask=("agent0", "action_mask"),
        reward=("agent0", "reward"),
        done=("agent0", "done"),
        terminated=("agent0", "terminated"),
        priority=("agent0", "td_error"),
    )
    flat_batch = make_batch(masks=True, terminated_rows=2, seed=3)
    nested_batch = make_batch(masks=True, terminated_rows=2, seed=3, prefix=("agent0",))
    out_flat, out_nested = flat(flat_batch), nested(nested_batch)
    for key in ("loss_qvalue", "loss_imitation", "target_value"):
        assert torch.allclose(out_flat[key], out_nested[key]), key
    assert torch.equal(nested_batch["agent0", "td_error"], flat_batch["td_error"])
    assert ("next", "agent0", "terminated") in nested.in_keys


# ---------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize(
    "part, trained, other",
    [
        ("qvalue_loss", "value_network_params", "imitation_network_params"),
        ("imitation_loss", "imitation_network_params", "value_network_params"),
    ],
)
def test_each_part_reaches_only_its_network(part, trained, other):
    loss = build()
    zero_grads(loss)
    getattr(loss, part)(make_batch(masks=True))[0].backward()
    assert grad_norm(list(getattr(loss, trained).values(True, True))) > 0
    assert grad_norm(list(getattr(loss, other).values(True, True))) == 0
    for t in loss.target_value_network_params.values(True, True):
        assert t.grad is None and not t.requires_grad


# ------------------------------------------------------------------------------------------ targets
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.9])
def test_double_q_target_equals_the_hand_computation(mask, threshold):
    loss = build(linear=True, threshold=threshold)
    with torch.no_grad():  # targets differ from the online network, so double Q is visible
        for t in loss.target_value_network_params.values(True, True):
            t.add_(0.5 * torch.randn_like(t))
    batch = make_batch(masks=mask, terminated_rows=4, done_rows=4, seed=5)
    with torch.no_grad():
        value, meta = loss.qvalue_loss(batch)
        expected, v = manual_target(loss, batch, threshold, mask)
        pred = loss.value_network.module(batch["observation"])[batch["action"]]
    assert torch.allclose(meta["next_state_value"], v, atol=1e-6)
    assert torch.allclose(meta["target_value"], expected, atol=1e-6)
    assert torch.allclose(value, F.smooth_l1_loss(pred, expected), atol=1e-6)  # Huber
    r = batch["next", "reward"].squeeze(-1)
    assert torch.equal(meta["target_value"][:4], r[:4])  # terminated: no bootstrap
    assert not torch.allclose(meta["target_value"][4:8], r[4:8])  # timeouts bootstrap


def test_target_selects_by_online_q_and_values_by_target_q():
    loss = build(linear=True, threshold=0.0)
    set_linear(loss.value_network.module, [0.0, 1.0, 2.0, 3.0])  # online prefers action 3
    with torch.no_grad():
        loss.target_value_network_params["module", "weight"].zero_()
        loss.target_value_network_params["module", "bias"].copy_(torch.tensor([9.0, 8.0, 7.0, 6.0]))
    batch = make_batch()
    _, meta = loss.qvalue_loss(batch)
    assert torch.allclose(meta["next_state_value"], torch.full((BATCH,), 6.0))  # not max target = 9


def test_masked_action_with_the_largest_q_is_never_bootstrapped():
    loss = build(linear=True, threshold=0.3)
    set_linear(loss.value_network.module, [1.0, 2.0, 0.5, 10.0])  # action 3 is best ...
    set_linear(loss.imitation_network.module, [0.0, 0.0, 0.0, 0.0])  # ... and likely enough
    sync_targets(loss)  # targets = online
    batch = make_batch()
    _, unmasked = loss.qvalue_loss(batch.clone())
    assert torch.allclose(unmasked["next_state_value"], torch.full((BATCH,), 10.0))
    mask = torch.ones(BATCH, N_ACT, dtype=torch.bool)
    mask[:, 3] = False  # ... but unavailable in s'
    batch.set("action_mask", torch.ones(BATCH, N_ACT, dtype=torch.bool))
    batch.set(("next", "action_mask"), mask)
    _, meta = loss.qvalue_loss(batch)
    assert torch.allclose(meta["next_state_value"], torch.full((BATCH,), 2.0))  # best allowed
    r = batch["next", "reward"].squeeze(-1)
    assert torch.allclose(meta["target_value"], r + 0.99 * 2.0)


def test_threshold_excludes_actions_the_data_rarely_took():
    loss = build(linear=True, threshold=0.3)
    set_linear(loss.value_network.module, [1.0, 2.0, 5.0, 0.0])  # action 2 has the largest value
    # G(a|s) proportional to (1, 1, 0.2, 1): action 2's ratio 0.2 < 0.3
    set_linear(loss.imitation_network.module, [0.0, 0.0, float(torch.log(torch.tensor(0.2))), 0.0])
    sync_targets(loss)
    _, meta = loss.qvalue_loss(make_batch())
    assert torch.allclose(meta["next_state_value"], torch.full((BATCH,), 2.0))
    actor = DiscreteBCQActor(loss, use_action_mask=False)
    action = actor(torch.randn(50, N_OBS))
    assert action[:, 1].all() and not action[:, 2].any()
    loss.threshold = 0.1  # ratio 0.2 > 0.1: now allowed and chosen
    assert actor(torch.randn(5, N_OBS))[:, 2].all()


def test_allowed_actions_keeps_the_most_likely_available_action():
    loss = build(threshold=0.99)
    logits = torch.randn(200, N_ACT)
    mask = torch.rand(200, N_ACT) < 0.5
    mask[torch.arange(200), torch.randint(N_ACT, (200,))] = True
    allowed = loss.allowed_actions(logits, mask)
    best_available = logits.masked_fill(~mask, float("-inf")).argmax(-1)
    assert allowed[torch.arange(200), best_available].all()
    assert not (allowed & ~mask).any()
    log_g = torch.log_softmax(logits.masked_fill(~mask, float("-inf")), -1)
    ratio = (log_g - log_g.max(-1, keepdim=True).values).exp()
    assert torch.equal(allowed, mask & (ratio > 0.99))
    assert (allowed.sum(-1) < mask.sum(-1)).any()  # the threshold removed available actions


# -------------------------------------------------------------------------------- imitation part
@pytest.mark.parametrize("mask", [False, True])
def test_imitation_loss_is_cross_entropy_plus_logit_penalty(mask):
    loss = build(logit_penalty=1e-2)
    batch = make_batch(masks=mask)
    value, meta = loss.imitation_loss(batch)
    logits = loss.imitation_network.module(batch["observation"])
    masked = logits.masked_fill(~batch["action_mask"], float("-inf")) if mask else logits
    ce = F.cross_entropy(masked, batch["action"].float().argmax(-1))
    assert torch.allclose(value, ce + 1e-2 * logits.pow(2).mean(), atol=1e-6)
    assert torch.allclose(meta["imitation_nll"], ce, atol=1e-6)


# ------------------------------------------------------------------------------------- mask errors
def test_row_without_available_action_raises_naming_the_key():
    loss = build()
    batch = make_batch(masks=True, terminated_rows=2)
    bad = batch.clone()
    bad["next", "action_mask"][5] = False  # not terminated: bootstrapped from
    with pytest.raises(ValueError, match=r"\('next', 'action_mask'\).*no available action"):
        loss(bad)
    ok = batch.clone()
    ok["next", "action_mask"][0] = False  # terminated: a terminal state may have no legal action
    out = loss(ok)
    assert torch.isfinite(out["loss_qvalue"]) and torch.isfinite(out["target_value"]).all()
    bad = batch.clone()
    bad["action_mask"][3] = False
    with pytest.raises(ValueError, match="'action_mask'.*no available action"):
        loss.imitation_loss(bad)
    actor = DiscreteBCQActor(loss)
    with pytest.raises(ValueError, match="no available action"):
        actor(torch.randn(2, N_OBS), torch.tensor([[True, False, False, False], [False] * 4]))


def test_masked_data_action_raises():
    loss = build()
    batch = make_batch(masks=True)
    batch["action_mask"][0] = ~batch["action"][0]
    with pytest.raises(ValueError, match="marks unavailable"):
        loss(batch)


def test_categorical_actions_are_refused_with_a_clear_error():
    batch = make_batch()
    batch["action"] = batch["action"].float().argmax(-1)
    with pytest.raises(ValueError, match="one-hot actions"):
        build()(batch)


def test_use_action_mask_modes():
    required = build(use_action_mask=True)
    assert {"action_mask", ("next", "action_mask")} <= set(required.in_keys)
    with pytest.raises(KeyError, match="needs the action mask"):
        required(make_batch())
    ignored = build(use_action_mask=False)
    batch = make_batch(masks=True)
    batch["next", "action_mask"][:] = False  # would raise if read
    ignored(batch)
    with pytest.raises(ValueError, match="use_action_mask"):
        build(use_action_mask="yes")
    with pytest.raises(ValueError, match="threshold"):
        build(threshold=1.0)


def test_check_action_mask_and_masked_argmax():
    check_action_mask(torch.tensor([[False, False]]), "k", rows=torch.tensor([False]))
    with pytest.raises(ValueError, match="'k'"):
        check_action_mask(torch.tensor([[False, False]]), "k")
    q = torch.tensor([[3.0, 3.0, 1.0]])
    assert masked_argmax(q).tolist() == [0]  # one action on ties
    assert masked_argmax(q, torch.tensor([[False, True, True]])).tolist() == [1]


# ------------------------------------------------------------------------------------------ actor
def test_actor_is_the_greedy_allowed_action_one_hot():
    loss = build(seed=4, threshold=0.3)
    actor = DiscreteBCQActor(loss)
    obs = torch.randn(300, N_OBS)
    mask = torch.rand(300, N_ACT) < 0.5
    mask[torch.arange(300), torch.randint(N_ACT, (300,))] = True
    action = actor(obs, mask)
    assert action.dtype == torch.bool and OneHot(N_ACT).is_in(action)
    assert not (action & ~mask).any()
    with torch.no_grad():
        q = loss.value_network.module(obs)
        allowed = loss.allowed_actions(loss.imitation_network.module(obs), mask)
    expected = q.masked_fill(~allowed, float("-inf")).argmax(-1)
    assert torch.equal(action.float().argmax(-1), expected)
    # as a TorchRL policy
    policy = TensorDictModule(actor, in_keys=actor.in_keys, out_keys=["action"])
    td = policy(TensorDict({"observation": obs, "action_mask": mask}, [300]))
    assert torch.equal(td["action"], action)
    with pytest.raises(TypeError, match="action mask"):
        actor(obs)


def test_actor_never_picks_a_masked_action_with_the_largest_q():
    loss = build(linear=True)
    set_linear(loss.value_network.module, [0.0, 1.0, 2.0, 100.0])
    set_linear(loss.imitation_network.module, [0.0, 0.0, 0.0, 5.0])  # action 3 also most likely
    mask = torch.tensor([[True, True, True, False]]).expand(20, N_ACT)
    action = DiscreteBCQActor(loss, dtype=torch.long)(torch.randn(20, N_OBS), mask)
    assert action.dtype == torch.long and (action[:, 3] == 0).all()
    # action 3 being unavailable, G renormalises over 0..2: uniform, so the best allowed is 2
    assert (action[:, 2] == 1).all()


def test_actor_follows_the_loss_parameters():
    loss = build(linear=True)
    actor = DiscreteBCQActor(loss, use_action_mask=False)
    assert any(k.startswith("value_params") for k in actor.state_dict())
    set_linear(loss.value_network.module, [0.0, 0.0, 0.0, 1.0])
    set_linear(loss.imitation_network.module, [0.0] * N_ACT)
    assert actor(torch.randn(3, N_OBS))[:, 3].all()
    set_linear(loss.value_network.module, [1.0, 0.0, 0.0, 0.0])
    assert actor(torch.randn(3, N_OBS))[:, 0].all()


def test_state_dict_round_trip():
    source, dest = build(seed=0), build(seed=1)
    with torch.no_grad():
        for t in source.target_value_network_params.values(True, True):
            t.add_(1.0)
    dest.load_state_dict(source.state_dict())
    batch = make_batch(masks=True)
    a, b = source(batch.clone()), dest(batch.clone())
    for key in ("loss_qvalue", "loss_imitation"):
        assert torch.equal(a[key], b[key])


# ------------------------------------------------------------------------------------- learning
CHAIN_GAMMA = 0.9


def chain_dataset() -> TensorDict:
    """The masked chain of :func:`torchrl_otc.data.synthetic.masked_chain`, bool one-hot actions."""
    return masked_chain(torch.bool)


CHAIN_Q_RIGHT = torch.tensor([CHAIN_GAMMA**2, CHAIN_GAMMA, 1.0])


def test_learns_the_optimal_action_of_a_tiny_chain_mdp():
    torch.manual_seed(0)
    nets = []
    for out in ("action_value", "imitation_logits"):
        mlp = MLP(in_features=CHAIN_STATES, out_features=3, num_cells=[32])
        nets.append(TensorDictModule(mlp, in_keys=["observation"], out_keys=[out]))
    with (
        torch.no_grad()
    ):  # the never-seen action 2 looks best: only the mask keeps it out of the target
        nets[0].module[-1].bias[2] = 5.0
    loss = DiscreteBCQLoss(*nets).make_value_estimator(gamma=CHAIN_GAMMA)
    updater = SoftUpdate(loss, tau=0.1)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-2)
    data = chain_dataset()
    first = None
    for _ in range(400):
        out = loss(data.clone())
        if first is None:
            first = out["loss_qvalue"].item()
        optim.zero_grad()
        (out["loss_qvalue"] + out["loss_imitation"]).backward()
        optim.step()
        updater.step()
    last = loss(data.clone())["loss_qvalue"].item()
    assert last < 0.05 * first
    obs = torch.eye(CHAIN_STATES)[: CHAIN_STATES - 1]
    mask = torch.tensor([[True, True, False]]).expand(3, 3)
    action = DiscreteBCQActor(loss)(obs, mask)
    assert action[:, 0].all(), action  # "right" in every state
    with torch.no_grad():
        q_right = loss.value_network.module(obs)[:, 0]
    assert torch.allclose(q_right, CHAIN_Q_RIGHT, atol=0.05), q_right
