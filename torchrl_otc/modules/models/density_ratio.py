"""The density-ratio network of Balanced Replay (Lee et al., CoRL 2021, section 4.1) and its training objective.

A network ``w_psi(s, a) >= 0`` estimates the density ratio ``d_online(s, a) / d_offline(s, a)`` with the variational
Jensen-Shannon objective of likelihood-free importance weighting (Sinha, Song, Garg and Ermon, "Experience Replay
with Likelihood-free Importance Weights", arXiv:2006.13169). The objective sits next to its network, as
:func:`~torchrl_otc.modules.models.vae.gaussian_kl` next to the VAEs; the sampler that reads the network is
:class:`~torchrl_otc.BalancedReplaySampler`, the trainer that minimises the objective is the agent's learner's
(:class:`~torchrl_otc.trainers.parts.BalancedReplayTrainer`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from torchrl_otc.modules.models.vae import mlp

__all__ = ["DensityRatioNetwork", "js_density_ratio_loss", "LOG_EPS", "LAST_LAYER_INIT"]

# Constants of the authors' implementation (shlee94/Off2OnRL, rlkit/rlkit/torch/sac/ours.py).
LOG_EPS: float = 1e-10
"""Added inside the logarithms of the JS objective, and to the normaliser of Balanced Replay's priorities."""
LAST_LAYER_INIT: float = 3e-3
"""Last-layer weights are drawn from ``U(-3e-3, 3e-3)`` and its bias set so that ``w = 1`` at initialisation."""

_ACTIVATIONS = ("relu", "softplus")


def js_density_ratio_loss(weight_online: Tensor, weight_offline: Tensor) -> Tensor:
    r"""The variational Jensen-Shannon objective whose minimiser is ``w = d_online / d_offline``.

    For a convex ``f`` with derivative ``f'`` and convex conjugate ``f^*``, any positive ``w`` gives the lower bound
    ``D_f(P \| Q) \ge E_P[f'(w)] - E_Q[f^*(f'(w))]``, tight at ``w = dP/dQ`` (Nguyen, Wainwright and Jordan 2010;
    likelihood-free importance weighting, Sinha et al.). With the Jensen-Shannon generator
    ``f(u) = u \log u - (u + 1) \log\frac{u + 1}{2}``, ``P`` the online and ``Q`` the offline distribution
    (Lee et al. 2021, section 4.1), the loss minimised is

    .. math::
        L(\psi) = \mathbb{E}_{x \sim d_{\mathrm{off}}}\left[\log\frac{w_\psi(x) + 1}{2}\right]
                - \mathbb{E}_{x \sim d_{\mathrm{on}}}\left[\log\frac{2 w_\psi(x)}{w_\psi(x) + 1}\right],

    since ``f'(u) = \log\frac{2u}{u+1}`` and ``f^*(f'(u)) = \log\frac{u+1}{2}``. ``-L`` is a lower bound on
    ``D_f = 2\,\mathrm{JSD}(d_{\mathrm{on}}, d_{\mathrm{off}}) \le 2 \log 2``; ``L = 0`` when ``w = 1``. As in the
    authors' code, ``1e-10`` is added inside both logarithms (``w = 0`` stays finite).

    Args:
        weight_online: ``w`` on transitions drawn from the online data, any shape.
        weight_offline: ``w`` on transitions drawn from the offline data, any shape.

    Returns:
        the scalar loss (the mean over each set).

    Examples:
        >>> import torch
        >>> js_density_ratio_loss(torch.ones(3), torch.ones(5))  # w = 1: both terms vanish
        tensor(0.)
        >>> # Region A holds 3/4 of the online and 1/4 of the offline rows (ratio 3), region B the rest (1/3).
        >>> def loss(w_a, w_b):
        ...     return js_density_ratio_loss(torch.tensor([w_a] * 3 + [w_b]), torch.tensor([w_a] + [w_b] * 3))
        >>> bool(loss(3.0, 1 / 3) < loss(2.0, 0.5) < loss(1.0, 1.0))  # lowest at the true ratios
        True
    """
    f_prime_online = torch.log(2.0 * weight_online / (weight_online + 1.0) + LOG_EPS)
    f_star_offline = -torch.log(2.0 / (weight_offline + 1.0) + LOG_EPS)
    return f_star_offline.mean() - f_prime_online.mean()


class DensityRatioNetwork(nn.Module):
    """``w(s, a) >= 0``: a multi-layer perceptron on standardised ``[s, a]`` with a non-negative output.

    The input statistics (offline mean and standard deviation of the state and the action) are buffers, so they
    travel with :meth:`~torch.nn.Module.to` and :meth:`~torch.nn.Module.state_dict`; unfitted, they are
    ``0`` and ``1`` (raw features). The last layer starts with weights in ``U(-3e-3, 3e-3)`` and a bias that makes
    the output ``1`` everywhere (the authors set the bias to 1 under a ReLU), so training starts from "online and
    offline alike".

    Args:
        state_dim: width of the flattened state.
        action_dim: width of the flattened action.

    Keyword Args:
        hidden_sizes: hidden widths (ReLU after each). Defaults to ``(256, 256)`` (Lee et al.).
        output_activation: ``"relu"`` (the authors' choice) or ``"softplus"`` (strictly positive, never a dead
            output). Defaults to ``"relu"``.

    Examples:
        >>> import torch
        >>> net = DensityRatioNetwork(3, 2, hidden_sizes=(8,))
        >>> w = net(torch.randn(5, 3), torch.randn(5, 2))
        >>> w.shape, bool((w - 1).abs().max() < 0.1)
        (torch.Size([5]), True)
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        *,
        hidden_sizes: Sequence[int] = (256, 256),
        output_activation: Literal["relu", "softplus"] = "relu",
    ) -> None:
        super().__init__()
        if state_dim < 1 or action_dim < 1:
            raise ValueError(
                f"DensityRatioNetwork needs positive widths; got state_dim={state_dim}, action_dim={action_dim}."
            )
        if output_activation not in _ACTIVATIONS:
            raise ValueError(
                f"output_activation must be one of {_ACTIVATIONS}; got {output_activation!r}."
            )
        self.state_dim = int(state_dim)
        self.action_dim = int(action_dim)
        self.output_activation = output_activation
        self.net = mlp(state_dim + action_dim, 1, tuple(hidden_sizes))
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.weight.uniform_(-LAST_LAYER_INIT, LAST_LAYER_INIT)
            # relu(1) = 1; softplus(log(e - 1)) = 1
            last.bias.fill_(1.0 if output_activation == "relu" else math.log(math.e - 1.0))
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_std", torch.ones(action_dim))
        self.register_buffer("fitted", torch.tensor(False))

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        """``w`` of ``[N, state_dim]`` states and ``[N, action_dim]`` actions, shape ``[N]``."""
        x = torch.cat(
            [
                (state - self.state_mean) / self.state_std,
                (action - self.action_mean) / self.action_std,
            ],
            -1,
        )
        out = self.net(x).squeeze(-1)
        if self.output_activation == "relu":
            return torch.relu(out)
        return nn.functional.softplus(out)
