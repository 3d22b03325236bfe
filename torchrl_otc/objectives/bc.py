r"""Behaviour cloning by maximum likelihood: BREMEN's policy initialisation on the (offline) data.

BREMEN (Matsushima et al., ICLR 2021, Algorithm 1 and section 4) estimates the behaviour policy
:math:`\hat\pi_\beta` by behaviour cloning and starts every round of trust-region updates from it, so that the KL
bound of each TRPO step (:mod:`torchrl_otc.objectives.trpo`) keeps the policy near the data (its implicit
behaviour regularisation). OTC section 4.4 trains each agent's policy this way on its own offline data first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential, dispatch
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.objectives import LossModule

__all__ = ["BCLoss", "bc_init"]


class BCLoss(LossModule):
    r"""Negative log-likelihood of the data's actions under a probabilistic policy.

    .. math:: \mathcal{L}(\theta) = -\frac{1}{N}\sum_n \log \pi_\theta(a_n \mid s_n)

    For a Gaussian policy this fits both the mean (a weighted regression of the actions) and the standard
    deviation (to the residual spread). The policy is held as a plain submodule (no functional copy), so an
    optimiser over ``policy.parameters()`` trains the very policy that is deployed.

    Args:
        actor_network: a probabilistic actor with ``get_dist`` (e.g.
            :func:`~torchrl_otc.objectives.trpo.gaussian_policy`).

    Keyword Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"``. Defaults to ``"mean"``.

    Examples:
        >>> from torchrl_otc.objectives.trpo import gaussian_policy
        >>> policy = gaussian_policy(3, 2, hidden_sizes=(8,))
        >>> data = TensorDict({"observation": torch.randn(16, 3), "action": torch.randn(16, 2)}, [16])
        >>> out = BCLoss(policy)(data)
        >>> out["loss_bc"].backward()
        >>> sorted(out.keys())
        ['bc_log_prob', 'loss_bc']
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys (``set_keys(name=key)``).

        Attributes:
            action (NestedKey): the data's action. Defaults to ``"action"``.
        """

        action: NestedKey = "action"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = None
    out_keys = ["loss_bc", "bc_log_prob"]

    def __init__(
        self, actor_network: ProbabilisticTensorDictSequential, *, reduction: str | None = None
    ) -> None:
        super().__init__()
        if not callable(getattr(actor_network, "get_dist", None)):
            raise TypeError(
                "BCLoss needs a probabilistic actor with a get_dist method (e.g. a ProbabilisticActor); "
                f"got {type(actor_network).__name__}."
            )
        if reduction is None:
            reduction = "mean"
        self.actor_network = actor_network
        self.reduction = reduction

    @property
    def in_keys(self) -> list[NestedKey]:
        """The actor's input keys and the action."""
        return [*self.actor_network.in_keys, self.tensor_keys.action]

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """``loss_bc`` (reduced) and ``bc_log_prob`` (the detached mean log-likelihood)."""
        action = tensordict.get(self.tensor_keys.action)
        dist = self.actor_network.get_dist(tensordict.exclude(self.tensor_keys.action))
        log_prob = dist.log_prob(action)
        return TensorDict(
            {
                "loss_bc": self._reduce_loss(-log_prob, tensordict),
                "bc_log_prob": log_prob.detach().mean(),
            }
        )


def bc_init(
    policy: ProbabilisticTensorDictSequential,
    data: TensorDictBase,
    steps: int,
    *,
    batch_size: int = 256,
    lr: float = 5e-4,
    generator: torch.Generator | None = None,
    action_key: NestedKey = "action",
) -> Tensor:
    r"""Fits ``policy`` to ``data``'s actions by maximum likelihood (Adam, rows drawn with replacement).

    BREMEN's behaviour-cloning initialisation (Algorithm 1). Defaults from BREMEN's configurations for its
    behaviour policy: batch size 256, learning rate ``5e-4`` (its step count, 3e5, is the caller's ``steps``).
    The optimiser is local to the call (a fresh Adam each time, as a re-initialisation should be).

    Args:
        policy: a probabilistic actor (e.g. :func:`~torchrl_otc.objectives.trpo.gaussian_policy`); trained in
            place.
        data: transitions with the policy's observation keys and ``action_key`` (any batch shape).
        steps: optimiser steps (``0`` leaves the policy as it is).

    Keyword Args:
        batch_size: rows per step. Defaults to ``256``.
        lr: Adam's learning rate. Defaults to ``5e-4``.
        generator: the random stream of the row draws. Defaults to the global one.
        action_key: the data's action key. Defaults to ``"action"``.

    Returns:
        the ``[steps]`` training losses (mean negative log-likelihood per step), detached.

    Examples:
        >>> from torchrl_otc.objectives.trpo import gaussian_policy
        >>> _ = torch.manual_seed(0)
        >>> obs = torch.randn(512, 2)
        >>> data = TensorDict({"observation": obs, "action": 0.5 * obs[:, :1] + 0.1 * torch.randn(512, 1)}, [512])
        >>> policy = gaussian_policy(2, 1, hidden_sizes=(16,))
        >>> losses = bc_init(policy, data, 300, lr=1e-2, generator=torch.Generator().manual_seed(0))
        >>> bool(losses[-20:].mean() < losses[:20].mean())
        True
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer; got {steps!r}.")
    if batch_size < 1 or not lr > 0:
        raise ValueError(f"batch_size must be >= 1 and lr > 0; got {batch_size}, {lr}.")
    loss = BCLoss(policy)
    loss.set_keys(action=action_key)
    flat = data.select(*loss.in_keys).reshape(-1)
    if flat.shape[0] == 0:
        raise ValueError("bc_init needs at least one transition; got none.")
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    losses = torch.empty(steps)
    device = generator.device if generator is not None else None
    for step in range(steps):
        idx = torch.randint(flat.shape[0], (batch_size,), generator=generator, device=device)
        value = loss(flat[idx.to(flat.device)])["loss_bc"]
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        losses[step] = value.detach()
    return losses
