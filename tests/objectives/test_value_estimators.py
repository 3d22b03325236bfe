"""``make_value_estimator`` follows TorchRL's contract: it returns the loss, so that calls chain."""

from __future__ import annotations

import pytest
import torch
from objectives_testing import build_awac, build_bcq, make_batch
from tensordict.nn import TensorDictModule
from torchrl.objectives.utils import ValueEstimators
from torchrl.objectives.value import TD0Estimator

from torchrl_otc.modules.models.vae import TransitionVAE
from torchrl_otc.objectives import TransitionVAELoss


@pytest.mark.parametrize("build", [build_bcq, build_awac], ids=["bcq", "awac"])
@pytest.mark.parametrize("how", ["default", "enum", "class", "instance"])
def test_make_value_estimator_returns_the_loss_and_builds_td0(build, how):
    loss = build()
    if how == "default":
        out = loss.make_value_estimator(gamma=0.9)
    elif how == "enum":
        out = loss.make_value_estimator(ValueEstimators.TD0, gamma=0.9)
    elif how == "class":
        out = loss.make_value_estimator(TD0Estimator, gamma=0.9, value_network=None)
    else:
        estimator = TD0Estimator(gamma=0.9, value_network=None)
        out = loss.make_value_estimator(estimator)
    assert out is loss
    assert isinstance(loss.value_estimator, TD0Estimator)
    assert float(loss.value_estimator.gamma) == pytest.approx(0.9)
    # the chained loss still computes its losses
    loss_q, _ = loss.qvalue_loss(make_batch(8))
    assert loss_q.isfinite()


def test_transition_vae_loss_chains_too():
    vae = TensorDictModule(
        TransitionVAE(3, 2, 4, hidden_sizes=(16,)),
        in_keys=["observation", "action", ("next", "observation")],
        out_keys=["reconstruction", "target", "loc", "log_std"],
    )
    loss = TransitionVAELoss(vae)
    assert loss.make_value_estimator(gamma=0.9) is loss


def trajectory_batch(num_traj: int = 3, steps: int = 6, seed: int = 0):
    """``[num_traj, steps]`` transitions (time last, TorchRL's layout for multi-step estimators): one terminal and
    one timeout inside the first trajectory, every trajectory done at its last step."""
    flat = make_batch(num_traj * steps, seed=seed).reshape(num_traj, steps)
    done = torch.zeros(num_traj, steps, 1, dtype=torch.bool)
    terminated = torch.zeros_like(done)
    done[:, -1] = True
    done[0, 1] = terminated[0, 1] = True  # a terminal: no bootstrap
    done[0, 3] = True  # a timeout: bootstrap from V(s'), then a new episode
    flat.set(("next", "done"), done)
    flat.set(("next", "terminated"), terminated)
    return flat


def hand_lambda_return(reward, next_value, done, terminated, gamma: float, lmbda: float):
    """TD(lambda) by its backward recursion per trajectory (lambda = 1: TD(1), the discounted return that
    bootstraps only where an episode stops):
    G_t = r_t + gamma (1 - term_t) [(1 - lambda) V(s'_t) + lambda (V(s'_t) if done_t else G_{t+1})]."""
    out = torch.zeros_like(reward)
    for i in range(reward.shape[0]):
        following = None
        for t in reversed(range(reward.shape[1])):
            v = next_value[i, t]
            tail = v if (done[i, t] or following is None) else following
            g = reward[i, t] + gamma * (1.0 - float(terminated[i, t])) * (
                (1 - lmbda) * v + lmbda * tail
            )
            out[i, t] = g
            following = g
    return out


@pytest.mark.parametrize("build", [build_bcq, build_awac], ids=["bcq", "awac"])
@pytest.mark.parametrize(
    "value_type,lmbda",
    [(ValueEstimators.TD0, 0.0), (ValueEstimators.TD1, 1.0), (ValueEstimators.TDLambda, 0.8)],
    ids=["td0", "td1", "tdlambda"],
)
def test_multi_step_targets_equal_the_hand_recursion(build, value_type, lmbda):
    # TD(1) and TD(lambda) as TorchRL's TD3BCLoss offers them: on trajectories ([*, T], time last) the critic's
    # target is the lambda-return built from the loss's own next-state values (BCQ: the mixed max over VAE
    # actions; AWAC: the min of the target critics at a policy action); on shuffled single transitions use TD(0).
    loss = build()
    extra = {"lmbda": lmbda} if value_type is ValueEstimators.TDLambda else {}
    assert loss.make_value_estimator(value_type, gamma=0.9, **extra) is loss
    data = trajectory_batch()
    _, meta = loss.qvalue_loss(data.clone())
    reward = data.get(("next", "reward")).squeeze(-1)
    expected = hand_lambda_return(
        reward,
        meta["next_state_value"],
        data.get(("next", "done")).squeeze(-1),
        data.get(("next", "terminated")).squeeze(-1),
        gamma=0.9,
        lmbda=lmbda,
    )
    torch.testing.assert_close(meta["target_value"], expected, rtol=1e-5, atol=1e-5)


def test_unsupported_estimator_is_refused_with_the_supported_ones():
    loss = build_bcq()
    with pytest.raises(NotImplementedError, match="GAE|not implemented|supported"):
        loss.make_value_estimator(ValueEstimators.GAE, gamma=0.9)
