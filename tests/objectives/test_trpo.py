"""TRPO's trust-region step (conjugate gradients, KL bound, line search) and BC initialisation (BREMEN)."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torch.distributions import kl_divergence
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, TruncatedNormal, ValueOperator
from torchrl.objectives import ValueEstimators
from torchrl.objectives.value import GAE

from torchrl_otc.objectives.bc import BCLoss, bc_init
from torchrl_otc.objectives.trpo import (
    TRPOLoss,
    conjugate_gradient,
    gaussian_policy,
    trust_region_step,
)

KL_TOL = (
    1e-5  # relative slack on the bound (float rounding at the boundary of an exactly quadratic KL)
)


def spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=g, dtype=torch.float64)
    return q @ q.T + 0.5 * torch.eye(n, dtype=torch.float64)


# ------------------------------------------------------------------------------------ conjugate gradients
def test_conjugate_gradient_solves_spd_system():
    a = spd(8, 0)
    b = torch.randn(8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=8, residual_tol=0.0)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-6, atol=1e-8)
    # fewer iterations: a worse, but still improving, approximation
    r = [(a @ conjugate_gradient(lambda v: a @ v, b, iters=k) - b).norm() for k in (1, 4, 8)]
    assert r[0] > r[1] > r[2]


# ------------------------------------------------------------------------------- the generic trust-region step
def quadratic_problem(n: int = 4, curvature: float = 0.1):
    """Parameters ``x`` (from ``x0``), KL ``0.5 d^T M d`` (Fisher ``M``), surrogate ``g^T d - 0.5 c |d|^2``."""
    m = spd(n, 2).float()
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(n, generator=gen)
    x0 = torch.randn(n, generator=gen)
    x = nn.Parameter(x0.clone())

    def kl() -> torch.Tensor:
        d = x - x0
        return 0.5 * d @ m @ d

    def surrogate() -> torch.Tensor:
        d = x - x0
        return g @ d - 0.5 * curvature * d @ d

    return x, x0, m, g, kl, surrogate


def test_step_matches_closed_form_natural_gradient_and_respects_bound():
    """Without damping the step is sqrt(2 delta / g^T M^-1 g) M^-1 g, its KL is delta, the surrogate improves."""
    x, x0, m, g, kl, surrogate = quadratic_problem()
    delta = 0.01
    info = trust_region_step([x], surrogate, kl, delta, cg_damping=0.0, cg_iters=4)
    nat = torch.linalg.solve(m.double(), g.double())
    expected = x0.double() + torch.sqrt(2 * delta / (g.double() @ nat)) * nat
    assert bool(info["accepted"]) and int(info["backtracks"]) == 0
    torch.testing.assert_close(x.detach().double(), expected, rtol=1e-4, atol=1e-5)
    measured = float(kl().detach())
    assert measured <= delta * (1 + KL_TOL)
    assert measured == pytest.approx(delta, rel=1e-4)
    assert float(info["improvement"]) > 0
    assert float(surrogate().detach()) > 0  # the surrogate is 0 at x0


def test_damped_step_stays_inside_bound():
    x, _, _, _, kl, surrogate = quadratic_problem()
    info = trust_region_step([x], surrogate, kl, 0.01, cg_damping=0.1)
    assert bool(info["accepted"])
    assert float(kl().detach()) <= 0.01 * (1 + KL_TOL)
    assert float(info["kl"]) == pytest.approx(float(kl().detach()))
    assert float(surrogate().detach()) > 0


def test_line_search_rejects_step_that_breaks_bound():
    """A KL steeper than its quadratic model: the full step (quadratic KL = delta) measures far above delta,
    so the search must backtrack to a step inside the bound."""
    n, delta = 3, 0.05
    x0 = torch.zeros(n)
    g = torch.tensor([1.0, -2.0, 0.5])
    x = nn.Parameter(x0.clone())

    def kl() -> torch.Tensor:
        d2 = (x - x0).pow(2).sum()
        return 0.5 * d2 + 50.0 * d2.pow(2)  # Fisher at x0 is I; quartic term breaks the model

    def surrogate() -> torch.Tensor:
        return g @ (x - x0)

    full_step = torch.sqrt(torch.tensor(2 * delta)) * g / g.norm()
    with torch.no_grad():
        x.copy_(full_step)
        assert float(kl().detach()) > delta  # the quadratic model's step breaks the bound
        x.copy_(x0)
    info = trust_region_step([x], surrogate, kl, delta, cg_damping=0.0)
    assert bool(info["accepted"])
    assert int(info["backtracks"]) > 0
    assert float(kl().detach()) <= delta
    assert float(info["step_fraction"]) == pytest.approx(0.8 ** int(info["backtracks"]))
    assert float(surrogate().detach()) > 0


def test_line_search_restores_parameters_when_no_step_improves():
    x0 = torch.tensor([0.3, -0.1])
    x = nn.Parameter(x0.clone())
    g = torch.tensor([1.0, 1.0])

    def surrogate() -> torch.Tensor:
        d = x - x0
        return g @ d - 1e4 * d @ d  # improves only for tiny steps

    info = trust_region_step(
        [x], surrogate, lambda: 0.5 * (x - x0).pow(2).sum(), 0.05, max_backtracks=2
    )
    assert not bool(info["accepted"])
    assert torch.equal(x.detach(), x0)
    assert float(info["step_fraction"]) == 0.0


def test_bad_bounds():
    x = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="max_kl"):
        trust_region_step([x], lambda: x.sum(), lambda: x.pow(2).sum(), 0.0)
    with pytest.raises(ValueError, match="max_kl"):
        TRPOLoss(gaussian_policy(2, 1, hidden_sizes=(4,)), max_kl=-1.0)


# ------------------------------------------------------------------------------------------ TRPOLoss
def policy_batch(seed: int = 0, n: int = 256, obs_dim: int = 3, act_dim: int = 2):
    torch.manual_seed(seed)
    actor = gaussian_policy(obs_dim, act_dim, hidden_sizes=(32, 32))
    td = TensorDict({"observation": torch.randn(n, obs_dim)}, [n])
    with torch.no_grad():
        td = actor(td)
    return actor, td


def test_trpo_loss_step_respects_kl_bound_and_improves_surrogate():
    actor, td = policy_batch()
    target = torch.tensor([0.5, -0.5])
    reward = -(td["action"] - target).pow(2).sum(-1, keepdim=True)
    td["advantage"] = reward - reward.mean()
    loss = TRPOLoss(actor, max_kl=0.01)
    with torch.no_grad():
        old = actor.get_dist(td.clone())
        log_prob_old = old.log_prob(td["action"])
    adv = (td["advantage"] - td["advantage"].mean()) / td["advantage"].std()
    info = loss.step(td)
    assert bool(info["accepted"])
    with torch.no_grad():
        new = actor.get_dist(td.clone())  # the deployed actor itself was updated
        kl = kl_divergence(old, new).mean()
        surrogate = ((new.log_prob(td["action"]) - log_prob_old).exp() * adv.squeeze(-1)).mean()
    assert 0 < float(kl) <= 0.01 * (1 + KL_TOL)
    assert float(kl) == pytest.approx(float(info["kl"]), rel=1e-4)
    assert (
        float(surrogate) > float(adv.mean()) + 1e-4
    )  # the surrogate at the old policy is mean(adv) = 0


def test_trpo_steps_move_policy_towards_rewarded_actions():
    """On-policy steps with advantage -(a - a*)^2 (centred): the mean action approaches a*."""
    actor, td = policy_batch(seed=1)
    target = torch.tensor([0.8, -0.6])
    loss = TRPOLoss(actor, max_kl=0.05)

    def mean_gap() -> float:
        with torch.no_grad():
            return float((actor.get_dist(td.clone()).mean - target).norm(dim=-1).mean())

    before = mean_gap()
    for _ in range(8):
        with torch.no_grad():
            batch = actor(td.select("observation").clone())
        reward = -(batch["action"] - target).pow(2).sum(-1, keepdim=True)
        batch["advantage"] = reward - reward.mean()
        assert bool(loss.step(batch)["accepted"])
    assert mean_gap() < 0.7 * before


def test_trpo_step_computes_gae_advantages_like_torchrl():
    """Without an advantage, step runs TorchRL's GAE with the critic: same update as with GAE precomputed."""
    torch.manual_seed(4)
    actor = gaussian_policy(3, 2, hidden_sizes=(16,))
    critic = ValueOperator(
        MLP(in_features=3, out_features=1, num_cells=[16]), in_keys=["observation"]
    )
    td = TensorDict({"observation": torch.randn(4, 12, 3)}, [4, 12])
    with torch.no_grad():
        td = actor(td)
    td["next"] = TensorDict(
        {
            "observation": torch.randn(4, 12, 3),
            "reward": -td["action"].pow(2).sum(-1, keepdim=True),
            "done": torch.zeros(4, 12, 1, dtype=torch.bool),
            "terminated": torch.zeros(4, 12, 1, dtype=torch.bool),
        },
        [4, 12],
    )
    start = {k: v.clone() for k, v in actor.state_dict().items()}

    def run(precompute: bool) -> dict[str, torch.Tensor]:
        actor.load_state_dict(start)
        loss = TRPOLoss(actor, critic, max_kl=0.02)
        loss.make_value_estimator(ValueEstimators.GAE, gamma=0.99, lmbda=0.95)
        batch = td.clone()
        if precompute:
            with torch.no_grad():
                GAE(gamma=0.99, lmbda=0.95, value_network=critic)(batch)
        assert bool(loss.step(batch)["accepted"])
        assert ("advantage" in batch.keys()) == precompute  # step works on a copy
        return {k: v.clone() for k, v in actor.state_dict().items()}

    critic_before = [p.clone() for p in critic.parameters()]
    a, b = run(False), run(True)
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    gap = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert gap < 0.01 * moved, (gap, moved)  # float rounding between the two GAE calls only
    assert all(torch.equal(p, q) for p, q in zip(critic.parameters(), critic_before))


def _two_head_actor(distribution_class: type) -> ProbabilisticActor:
    net = TensorDictModule(
        nn.Sequential(nn.Linear(3, 4), nn.Unflatten(-1, (2, 2))), ["observation"], ["params"]
    )
    loc_scale = TensorDictModule(
        lambda p: (p[..., 0], nn.functional.softplus(p[..., 1]) + 0.1), ["params"], ["loc", "scale"]
    )
    return ProbabilisticActor(
        TensorDictSequential(net, loc_scale),
        in_keys=["loc", "scale"],
        out_keys=["action"],
        distribution_class=distribution_class,
    )


def test_trpo_loss_with_tanh_normal_keeps_bound():
    """TanhNormal: torch's KL of two equally squashed Normals is the Normals' KL (exact under the bijection)."""
    torch.manual_seed(5)
    actor = _two_head_actor(TanhNormal)
    td = TensorDict({"observation": torch.randn(64, 3)}, [64])
    with torch.no_grad():
        old = actor.get_dist(td.clone())
        old_loc, old_scale = old.loc.clone(), old.scale.clone()
        td["action"] = old.sample()
    td["advantage"] = -td["action"].pow(2).sum(-1, keepdim=True)
    info = TRPOLoss(actor, max_kl=0.02).step(td)
    assert bool(info["accepted"])
    with torch.no_grad():
        new = actor.get_dist(td.clone())
        kl = (
            (new.scale / old_scale).log()
            + (old_scale.pow(2) + (old_loc - new.loc).pow(2)) / (2 * new.scale.pow(2))
            - 0.5
        )  # KL of the underlying Normals, by hand
    assert 0 < float(kl.sum(-1).mean()) <= 0.02 * (1 + KL_TOL)
    assert float(kl.sum(-1).mean()) == pytest.approx(float(info["kl"]), rel=1e-3)


def test_trpo_loss_refuses_distribution_without_kl_and_missing_advantage():
    actor = _two_head_actor(TruncatedNormal)
    td = TensorDict({"observation": torch.randn(8, 3), "action": torch.rand(8, 2) * 0.5}, [8])
    td["advantage"] = torch.randn(8, 1)
    with pytest.raises(TypeError, match="closed-form"):
        TRPOLoss(actor).step(td)
    with pytest.raises(KeyError, match="advantage"):
        TRPOLoss(gaussian_policy(3, 2, hidden_sizes=(4,))).step(td.exclude("advantage"))


# ------------------------------------------------------------------------------------ behaviour cloning
def test_bc_init_reproduces_linear_gaussian_behaviour_policy():
    """Data from a = W s + b + 0.2 eps: after BC the policy mean matches W s + b on the data (RMSE < 0.06, under a
    third of the noise and a tenth of the mean's spread; measured 0.037, about 0.7 untrained) and its standard
    deviation is 0.2 within 10 %."""
    gen = torch.Generator().manual_seed(0)
    w = torch.tensor([[0.5, -0.3, 0.2], [0.1, 0.4, -0.6]])
    b = torch.tensor([0.1, -0.2])
    s = torch.randn(4000, 3, generator=gen)
    mean = s @ w.T + b
    data = TensorDict(
        {"observation": s, "action": mean + 0.2 * torch.randn(4000, 2, generator=gen)}, [4000]
    )
    torch.manual_seed(0)
    policy = gaussian_policy(3, 2, hidden_sizes=(64, 64))
    with torch.no_grad():
        rmse_before = float((policy.get_dist(data.clone()).mean - mean).pow(2).mean().sqrt())
    losses = bc_init(policy, data, 1000, lr=3e-3, generator=torch.Generator().manual_seed(1))
    assert losses.shape == (1000,)
    with torch.no_grad():
        dist = policy.get_dist(data.clone())
        rmse = float((dist.mean - mean).pow(2).mean().sqrt())
        std = dist.stddev[0]
    assert rmse < 0.06 < rmse_before, (rmse, rmse_before)
    torch.testing.assert_close(std, torch.full((2,), 0.2), rtol=0.1, atol=0.0)


def test_bc_loss_keys_and_gradient():
    policy = gaussian_policy(3, 2, hidden_sizes=(8,))
    data = TensorDict({"observation": torch.randn(8, 3), "act": torch.randn(8, 2)}, [8])
    loss = BCLoss(policy)
    loss.set_keys(action="act")
    assert loss.in_keys == ["observation", "act"]
    out = loss(data)
    expected = -policy.get_dist(data.clone()).log_prob(data["act"]).mean()
    torch.testing.assert_close(out["loss_bc"], expected)
    out["loss_bc"].backward()
    assert all(p.grad is not None for p in policy.parameters())
    assert "loc" not in data.keys()  # the batch is not written to
    with pytest.raises(TypeError, match="get_dist"):
        BCLoss(nn.Linear(3, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        bc_init(policy, data, -1)
