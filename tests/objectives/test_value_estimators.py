"""``make_value_estimator`` follows TorchRL's contract: it returns the loss, so that calls chain."""

from __future__ import annotations

import pytest
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
