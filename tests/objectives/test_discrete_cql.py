"""MaskedDiscreteCQLLoss against TorchRL's DiscreteCQLLoss: equal where TorchRL is right, masks honoured where not."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from objectives_testing import grad_norm, zero_grads
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from test_discrete_bcq import CHAIN_GAMMA, CHAIN_STATES, chain_dataset
from torch import nn
from torchrl.data import Categorical, OneHot
from torchrl.modules import MLP, QValueActor
from torchrl.objectives import DiscreteCQLLoss, SoftUpdate

from torchrl_otc.objectives import MaskedDiscreteCQLLoss

N_OBS, N_ACT, BATCH, GAMMA = 3, 4, 16, 0.99
SPEC = OneHot(N_ACT)


def make_actor(*, seed: int = 0, mask_key: str | None = None, bias: list[float] | None = None):
    torch.manual_seed(seed)
    if bias is None:
        net = MLP(in_features=N_OBS, out_features=N_ACT, num_cells=[16])
    else:  # Q(s) = bias, the same in every state
        net = nn.Linear(N_OBS, N_ACT)
        with torch.no_grad():
            net.weight.zero_()
            net.bias.copy_(torch.tensor(bias))
    return QValueActor(net, in_keys=["observation"], spec=SPEC, action_mask_key=mask_key)


def make_loss(value_network, **kwargs) -> MaskedDiscreteCQLLoss:
    """Our loss with its TD(0) estimator and a target updater."""
    kwargs.setdefault("action_space", SPEC)
    loss = MaskedDiscreteCQLLoss(value_network, **kwargs).make_value_estimator(gamma=GAMMA)
    SoftUpdate(loss, tau=0.005)
    return loss


def build_pair(**actor_kwargs) -> tuple[MaskedDiscreteCQLLoss, DiscreteCQLLoss]:
    """Ours and TorchRL's loss on the same network and parameters."""
    actor = make_actor(**actor_kwargs)
    theirs = DiscreteCQLLoss(copy.deepcopy(actor), action_space=SPEC)
    theirs.make_value_estimator(gamma=GAMMA)
    ours = MaskedDiscreteCQLLoss(actor, action_space=SPEC).make_value_estimator(gamma=GAMMA)
    for loss in (ours, theirs):
        SoftUpdate(loss, tau=0.005)
    return ours, theirs


def make_batch(
    batch: int = BATCH,
    *,
    seed: int = 0,
    masks: bool = False,
    terminated_rows: int = 0,
    done_rows: int = 0,
) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(N_ACT, (batch,), generator=g)
    terminated = torch.zeros(batch, 1, dtype=torch.bool)
    terminated[:terminated_rows] = True
    done = terminated.clone()
    done[terminated_rows : terminated_rows + done_rows] = True
    td = TensorDict(
        {
            "observation": torch.randn(batch, N_OBS, generator=g),
            "action": F.one_hot(index, N_ACT).bool(),
            ("next", "observation"): torch.randn(batch, N_OBS, generator=g),
            ("next", "reward"): torch.randn(batch, 1, generator=g),
            ("next", "done"): done,
            ("next", "terminated"): terminated,
        },
        [batch],
    )
    if masks:
        mask = torch.rand(batch, N_ACT, generator=g) < 0.5
        mask[torch.arange(batch), index] = True
        next_mask = torch.rand(batch, N_ACT, generator=g) < 0.5
        next_mask[torch.arange(batch), torch.randint(N_ACT, (batch,), generator=g)] = True
        td.set("action_mask", mask)
        td.set(("next", "action_mask"), next_mask)
    return td


def all_masked_terminal_batch() -> TensorDict:
    batch = make_batch(masks=True, terminated_rows=2)
    batch["next", "action_mask"][0] = False  # a terminal state without legal actions
    return batch


# ------------------------------------------------------------------------ equal to TorchRL where it is right
def test_without_masks_the_numbers_are_torchrl_s():
    ours, theirs = build_pair(seed=1)
    batch = make_batch(terminated_rows=3, done_rows=3)
    a, b = ours(batch.clone()), theirs(batch.clone())
    assert set(a.keys()) == set(b.keys())
    for key in ("loss_qvalue", "loss_cql", "pred_value", "target_value", "td_error"):
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_with_a_masking_qvalue_actor_and_valid_masks_the_losses_are_torchrl_s():
    # TorchRL honours a mask only through QValueActor(action_mask_key=...): the QValueModule overwrites the
    # masked action values with the lowest float, which the log-sum-exp and the greedy target then skip.
    ours, theirs = build_pair(seed=2, mask_key="action_mask")
    batch = make_batch(masks=True, terminated_rows=3)
    a, b = ours(batch.clone()), theirs(batch.clone())
    for key in ("loss_qvalue", "loss_cql", "target_value", "td_error"):
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    # ... but TorchRL's logged pred_value averages the masked entries too
    assert not torch.isfinite(b["pred_value"]) and torch.isfinite(a["pred_value"])


def test_torchrl_gets_nan_on_a_terminal_state_without_legal_actions_ours_does_not():
    ours, theirs = build_pair(seed=3, mask_key="action_mask")
    batch = all_masked_terminal_batch()
    theirs_out = theirs(batch.clone())
    assert torch.isnan(theirs_out["loss_qvalue"])  # TorchRL 0.14.1: 0 * (-inf)
    ours_batch = batch.clone()
    _, meta = ours.value_loss(ours_batch)
    assert torch.isfinite(meta["target_value"])
    per_sample = make_loss(make_actor(seed=3, mask_key="action_mask"), reduction="none")
    per_sample.load_state_dict(ours.state_dict())
    losses, _ = per_sample.value_loss(batch.clone())
    assert torch.isfinite(losses).all()


def test_ties_bootstrap_one_action_not_the_sum_of_the_tied_ones():
    ours, theirs = build_pair(bias=[2.0, 2.0, 0.0, 0.0])
    batch = make_batch()
    r = batch["next", "reward"].squeeze(-1)
    assert torch.allclose(ours(batch.clone())["target_value"], (r + GAMMA * 2.0).mean())
    assert torch.allclose(theirs(batch.clone())["target_value"], (r + GAMMA * 4.0).mean())


# ------------------------------------------------------------------------------------------- mask contract
@pytest.mark.parametrize("mask_key", [None, "action_mask"])
def test_masked_action_with_the_largest_q_is_excluded_everywhere(mask_key):
    bias = [1.0, 2.0, 0.5, 10.0]
    ours = make_loss(make_actor(bias=bias, mask_key=mask_key), reduction="none")
    batch = make_batch()
    batch["action"] = F.one_hot(
        torch.zeros(BATCH, dtype=torch.long), N_ACT
    ).bool()  # data: action 0
    mask = torch.tensor([[True, True, True, False]]).expand(BATCH, N_ACT).clone()
    batch.set("action_mask", mask)
    batch.set(("next", "action_mask"), mask.clone())
    loss_q, meta = ours.value_loss(batch)
    r = batch["next", "reward"].squeeze(-1)
    expected_target = r + GAMMA * 2.0  # best allowed, not 10
    assert torch.allclose(meta["target_value"], expected_target.mean())
    assert torch.allclose(loss_q, 0.5 * (1.0 - expected_target).pow(2), atol=1e-5)
    loss_cql, _ = ours.cql_loss(batch)
    expected_cql = torch.logsumexp(torch.tensor([1.0, 2.0, 0.5]), 0) - 1.0
    assert torch.allclose(loss_cql, expected_cql.expand(BATCH))
    assert not ours.greedy_action(batch)[:, 3].any()
    assert ours.greedy_action(batch)[:, 1].all()


def test_plain_module_value_network_honours_the_mask():
    net = nn.Linear(N_OBS, N_ACT)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor([0.0, 1.0, 0.0, 5.0]))
    # a plain module with a spec is refused by TorchRL 0.14.1's wrapper; the string works
    loss = make_loss(net, action_space="one-hot")
    batch = make_batch()
    batch.set("action_mask", torch.ones(BATCH, N_ACT, dtype=torch.bool))
    mask = torch.ones(BATCH, N_ACT, dtype=torch.bool)
    mask[:, 3] = False
    batch.set(("next", "action_mask"), mask)
    _, meta = loss.value_loss(batch)
    r = batch["next", "reward"].squeeze(-1)
    assert torch.allclose(meta["target_value"], (r + GAMMA * 1.0).mean())


@pytest.mark.parametrize("mask_key", [None, "action_mask"])
def test_greedy_action_is_one_allowed_action(mask_key):
    ours, _ = build_pair(seed=5, mask_key=mask_key)
    batch = make_batch(200, masks=True)
    action = ours.greedy_action(batch)
    assert action.dtype == torch.bool and SPEC.is_in(action)
    assert not (action & ~batch["action_mask"]).any()
    with torch.no_grad():
        q = ours.value_network.module[0](batch["observation"])
    expected = q.masked_fill(~batch["action_mask"], float("-inf")).argmax(-1)
    assert torch.equal(action.float().argmax(-1), expected)


def test_rows_without_available_action_and_masked_data_actions_raise():
    ours, _ = build_pair()
    batch = make_batch(masks=True, terminated_rows=2)
    bad = batch.clone()
    bad["next", "action_mask"][4] = False  # not terminated
    with pytest.raises(ValueError, match=r"\('next', 'action_mask'\).*no available action"):
        ours(bad)
    bad = batch.clone()
    bad["action_mask"][1] = False
    with pytest.raises(ValueError, match="'action_mask'.*no available action"):
        ours(bad)
    with pytest.raises(ValueError, match="no available action"):
        ours.greedy_action(bad)
    bad = batch.clone()
    bad["action_mask"][0] = ~bad["action"][0]
    with pytest.raises(ValueError, match="marks unavailable"):
        ours(bad)
    out = ours(all_masked_terminal_batch())  # terminal rows may have none
    assert torch.isfinite(out["loss_qvalue"]) and torch.isfinite(out["loss_cql"])


def test_use_action_mask_modes():
    required = make_loss(make_actor(), use_action_mask=True)
    assert {"action_mask", ("next", "action_mask")} <= set(required.in_keys)
    with pytest.raises(KeyError, match="needs the action mask"):
        required(make_batch())
    ignored = make_loss(make_actor(), use_action_mask=False)
    batch = make_batch(masks=True)
    batch["next", "action_mask"][:] = False
    ignored(batch)
    with pytest.raises(ValueError, match="use_action_mask"):
        MaskedDiscreteCQLLoss(make_actor(), action_space=SPEC, use_action_mask="yes")


# ------------------------------------------------------------------------------------------ conventions
def test_make_value_estimator_returns_self():
    loss = make_loss(make_actor())
    assert loss.make_value_estimator(gamma=0.5) is loss
    batch = make_batch(terminated_rows=BATCH)  # no bootstrap: target = reward
    _, meta = loss.value_loss(batch)
    assert torch.allclose(meta["target_value"], batch["next", "reward"].mean())


@pytest.mark.parametrize("part", ["value_loss", "cql_loss"])
def test_reduction_none_mean_sum(part):
    batch = make_batch(masks=True, terminated_rows=3)
    values = {}
    for reduction in ("none", "mean", "sum"):
        loss = make_loss(make_actor(seed=7), reduction=reduction)
        td = batch.clone()
        value, _ = loss.value_loss(td)
        if part == "cql_loss":
            value, _ = loss.cql_loss(td)
        values[reduction] = value
    assert values["none"].shape == (BATCH,)
    assert torch.allclose(values["mean"], values["none"].mean())
    assert torch.allclose(values["sum"], values["none"].sum())


def test_targets_get_no_gradient():
    ours, _ = build_pair(seed=8)
    zero_grads(ours)
    out = ours(make_batch(masks=True))
    (out["loss_qvalue"] + out["loss_cql"]).backward()
    assert grad_norm(list(ours.value_network_params.values(True, True))) > 0
    for t in ours.target_value_network_params.values(True, True):
        assert t.grad is None and not t.requires_grad


def test_categorical_actions_give_the_one_hot_numbers():
    spec = Categorical(N_ACT)
    actor = make_actor(seed=9)
    categorical = make_loss(
        QValueActor(copy.deepcopy(actor.module[0].module), in_keys=["observation"], spec=spec),
        action_space=spec,
    )
    one_hot = make_loss(actor)
    batch = make_batch(masks=True, terminated_rows=2)
    cat_batch = batch.clone()
    cat_batch["action"] = batch["action"].float().argmax(-1)
    a, b = one_hot(batch), categorical(cat_batch)
    for key in ("loss_qvalue", "loss_cql", "target_value"):
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_learns_the_optimal_action_of_a_tiny_chain_mdp():
    torch.manual_seed(0)
    net = MLP(in_features=CHAIN_STATES, out_features=3, num_cells=[32])
    with (
        torch.no_grad()
    ):  # the never-seen action 2 looks best: only the mask keeps it out of the target
        net[-1].bias[2] = 5.0
    spec = OneHot(3)
    actor = QValueActor(net, in_keys=["observation"], spec=spec)
    loss = MaskedDiscreteCQLLoss(actor, action_space=spec).make_value_estimator(gamma=CHAIN_GAMMA)
    updater = SoftUpdate(loss, tau=0.1)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-2)
    data = chain_dataset()
    first = None
    for _ in range(400):
        out = loss(data.clone())
        if first is None:
            first = out["loss_qvalue"].item()
        optim.zero_grad()
        (out["loss_qvalue"] + out["loss_cql"]).backward()
        optim.step()
        updater.step()
    assert loss(data.clone())["loss_qvalue"].item() < 0.05 * first
    states = TensorDict(
        {
            "observation": torch.eye(CHAIN_STATES)[: CHAIN_STATES - 1],
            "action_mask": torch.tensor([[True, True, False]]).expand(3, 3),
        },
        [3],
    )
    assert loss.greedy_action(states)[:, 0].all()  # "right" in every state


def test_torchrl_module_and_tensordict_module_value_networks_are_accepted():
    module = TensorDictModule(
        nn.Linear(N_OBS, N_ACT), in_keys=["observation"], out_keys=["action_value"]
    )
    loss = make_loss(module)
    out = loss(make_batch(masks=True))
    assert torch.isfinite(out["loss_qvalue"]) and torch.isfinite(out["loss_cql"])
