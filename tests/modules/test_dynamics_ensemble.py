"""BREMEN's dynamics ensemble: learns a known linear system, members differ, the decentralised contract holds."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from torchrl_otc.modules.models.dynamics_ensemble import (
    DynamicsEnsemble,
    DynamicsEnsembleLoss,
    EnsembleMLP,
    bootstrap_indices,
    member_minibatches,
)

STATE_DIM, ACTION_DIM = 3, 2


def linear_system(n: int, seed: int) -> TensorDict:
    """``s' = A s + B a``, ``r = c . s`` with fixed ``A, B, c``; ``s ~ N(0, I)``, ``a ~ U(-1, 1)``."""
    g = torch.Generator().manual_seed(1234)
    a_mat = torch.eye(STATE_DIM) + 0.2 * torch.randn(STATE_DIM, STATE_DIM, generator=g)
    b_mat = torch.randn(STATE_DIM, ACTION_DIM, generator=g)
    c = torch.randn(STATE_DIM, generator=g)
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, STATE_DIM, generator=g)
    a = torch.rand(n, ACTION_DIM, generator=g) * 2 - 1
    return TensorDict(
        {
            "observation": s,
            "action": a,
            ("next", "observation"): s @ a_mat.T + a @ b_mat.T,
            ("next", "reward"): (s @ c).unsqueeze(-1),
        },
        [n],
    )


def train(
    model: DynamicsEnsemble, data: TensorDict, epochs: int, batch_size: int = 128, lr: float = 3e-3
) -> DynamicsEnsembleLoss:
    loss = DynamicsEnsembleLoss(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(7)
    rows = bootstrap_indices(data.shape[0], model.ensemble_size, generator=g)
    for _ in range(epochs):
        for idx in member_minibatches(rows, batch_size, generator=g):
            opt.zero_grad()
            loss(data[idx])["loss_dynamics"].backward()
            opt.step()
    return loss


@pytest.fixture(scope="module")
def trained() -> tuple[DynamicsEnsemble, TensorDict]:
    torch.manual_seed(0)
    data = linear_system(2000, seed=0)
    model = DynamicsEnsemble(STATE_DIM, ACTION_DIM, hidden_sizes=(64, 64), seed=0).fit(data)
    train(model, data, epochs=40)
    return model, data


def test_learns_linear_system_on_held_out_data(trained):
    """Every member explains > 99.5 % of the held-out variance of ``s' - s`` and of ``r`` (relative MSE < 5e-3;
    measured about 6e-4 after training, about 1 untrained)."""
    model, _ = trained
    test = linear_system(500, seed=1)
    with torch.no_grad():
        next_obs, reward = model.predict(test["observation"], test["action"])
    delta = test["next", "observation"] - test["observation"]
    rel_state = (next_obs - test["next", "observation"]).pow(2).mean((1, 2)) / delta.var(0).mean()
    rel_reward = (reward - test["next", "reward"]).pow(2).mean((1, 2)) / test[
        "next", "reward"
    ].var()
    assert rel_state.shape == (5,)
    assert (rel_state < 5e-3).all(), rel_state
    assert (rel_reward < 5e-3).all(), rel_reward


def test_members_differ(trained):
    """Bootstrap resamples differ, and so do the trained members' predictions (most off the data)."""
    model, _ = trained
    rows = bootstrap_indices(100, 5, generator=torch.Generator().manual_seed(0))
    for k in range(1, 5):
        assert not torch.equal(rows[0].sort().values, rows[k].sort().values)
    far = torch.full((4, STATE_DIM), 6.0), torch.full((4, ACTION_DIM), 3.0)
    with torch.no_grad():
        next_obs, _ = model.predict(*far)
    spread = next_obs.std(0).mean()
    assert spread > 1e-3
    w = model.members.weights[0]
    assert not torch.allclose(w[0], w[1])


def test_member_gradient_reaches_only_its_own_rows():
    """With one minibatch per member, changing member 0's rows changes no other member's gradient."""
    data = linear_system(64, seed=3)
    model = DynamicsEnsemble(STATE_DIM, ACTION_DIM, ensemble_size=3, hidden_sizes=(8,)).fit(data)
    loss = DynamicsEnsembleLoss(model)
    idx = torch.arange(48).reshape(3, 16)

    def grads(batch: TensorDict) -> list[torch.Tensor]:
        model.zero_grad()
        loss(batch)["loss_dynamics"].backward()
        return [p.grad.clone() for p in model.members.weights]

    batch = data[idx]
    before = grads(batch)
    batch = batch.clone()
    batch["next", "observation"][0] += 5.0
    after = grads(batch)
    for g0, g1 in zip(before, after):
        assert not torch.allclose(g0[0], g1[0])
        assert torch.equal(g0[1:], g1[1:])


def test_decentralised_contract_no_other_agent_in_input_or_gradient():
    """Agent 0's model sees agent 0's action only: perturbing agent 1's columns changes neither input nor loss,
    and the gradient of agent 0's loss with respect to the joint action is zero on agent 1's columns."""
    n = 32
    g = torch.Generator().manual_seed(5)
    joint = TensorDict(
        {
            "observation": torch.randn(n, STATE_DIM, generator=g),
            ("agents", "action"): torch.rand(n, 2, ACTION_DIM, generator=g),
            ("next", "observation"): torch.randn(n, STATE_DIM, generator=g),
            ("next", "reward"): torch.randn(n, 1, generator=g),
        },
        [n],
    )

    def agent_view(td: TensorDict, i: int) -> TensorDict:
        view = td.exclude(("agents", "action"))
        view["action"] = td["agents", "action"][:, i]
        return view

    model = DynamicsEnsemble(STATE_DIM, ACTION_DIM, ensemble_size=2, hidden_sizes=(16,))
    model.fit(agent_view(joint, 0))
    loss = DynamicsEnsembleLoss(model)

    perturbed = joint.clone()
    perturbed["agents", "action"][:, 1] += torch.randn(n, ACTION_DIM, generator=g)
    v0, v1 = agent_view(joint, 0), agent_view(perturbed, 0)
    assert torch.equal(
        model.normalized_inputs(v0["observation"], v0["action"]),
        model.normalized_inputs(v1["observation"], v1["action"]),
    )
    assert torch.equal(loss(v0)["loss_dynamics"], loss(v1)["loss_dynamics"])

    action = joint["agents", "action"].clone().requires_grad_(True)
    view = joint.exclude(("agents", "action"))
    view["action"] = action[:, 0]
    loss(view)["loss_dynamics"].backward()
    assert action.grad[:, 1].abs().max() == 0
    assert action.grad[:, 0].abs().max() > 0
    with pytest.raises(ValueError, match="own action"):
        model.normalized_inputs(joint["observation"], joint["agents", "action"].flatten(1))


def test_predict_member_forms_agree():
    data = linear_system(20, seed=4)
    model = DynamicsEnsemble(STATE_DIM, ACTION_DIM, hidden_sizes=(16,)).fit(data)
    s, a = data["observation"], data["action"]
    with torch.no_grad():
        all_s, all_r = model.predict(s, a)
        members = torch.arange(20) % 5
        row_s, row_r = model.predict(s, a, member=members)
        for k in range(5):
            one_s, one_r = model.predict(s, a, member=k)
            torch.testing.assert_close(one_s, all_s[k])
            torch.testing.assert_close(one_r, all_r[k])
        torch.testing.assert_close(row_s, all_s[members, torch.arange(20)])
        torch.testing.assert_close(row_r, all_r[members, torch.arange(20)])
        # a batch with two dimensions keeps its shape
        two_s, _ = model.predict(
            s.reshape(4, 5, -1), a.reshape(4, 5, -1), member=members.reshape(4, 5)
        )
        torch.testing.assert_close(two_s.reshape(20, -1), row_s)
    draws = [model.sample_member(torch.Generator().manual_seed(3)) for _ in range(2)]
    assert draws[0] == draws[1] and 0 <= draws[0] < 5
    with pytest.raises(IndexError):
        model.predict(s, a, member=5)
    with pytest.raises(ValueError, match="batch shape"):
        model.predict(s, a, member=members[:3])


def test_standardisation_fitted_on_data():
    data = linear_system(500, seed=2)
    data["action"][:, 1] = 0.5  # a constant column keeps scale 1
    model = DynamicsEnsemble(STATE_DIM, ACTION_DIM, hidden_sizes=(8,)).fit(data)
    x = model.normalized_inputs(data["observation"], data["action"])
    torch.testing.assert_close(x.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    assert model.input_std[STATE_DIM + 1] == 1.0
    y = model.normalized_targets(
        data["observation"], data["next", "observation"], data["next", "reward"]
    )
    torch.testing.assert_close(y.std(0, correction=0), torch.ones(STATE_DIM + 1), atol=1e-4, rtol=0)


def test_loss_keys_reduction_and_state_dict():
    data = linear_system(16, seed=6)
    renamed = TensorDict(
        {
            "obs": data["observation"],
            "act": data["action"],
            ("next", "obs"): data["next", "observation"],
            ("next", "rew"): data["next", "reward"],
        },
        [16],
    )
    model = DynamicsEnsemble(STATE_DIM, ACTION_DIM, ensemble_size=2, hidden_sizes=(8,)).fit(data)
    loss = DynamicsEnsembleLoss(model)
    loss.set_keys(observation="obs", action="act", reward="rew")
    assert loss.in_keys == ["obs", "act", ("next", "obs"), ("next", "rew")]
    mean = loss(renamed)["loss_dynamics"]
    torch.testing.assert_close(mean, DynamicsEnsembleLoss(model)(data)["loss_dynamics"])
    none = DynamicsEnsembleLoss(model, reduction="none")
    none.set_keys(observation="obs", action="act", reward="rew")
    per_row = none(renamed)["loss_dynamics"]
    assert per_row.shape == (2, 16)
    torch.testing.assert_close(per_row.mean(1).sum(), mean)
    clone = DynamicsEnsemble(STATE_DIM, ACTION_DIM, ensemble_size=2, hidden_sizes=(8,), seed=9)
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(
        clone.predict(data["observation"], data["action"])[0],
        model.predict(data["observation"], data["action"])[0],
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="ensemble_size"):
        DynamicsEnsemble(3, 1, ensemble_size=0)
    with pytest.raises(TypeError, match="DynamicsEnsemble"):
        DynamicsEnsembleLoss(EnsembleMLP(3, 1, 2, (4,)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rows"):
        next(member_minibatches(torch.arange(4), 2))
