"""Conditional variational auto-encoders (Kingma and Welling 2013) used by the package.

The file holds one base class and its specialisations:

* :class:`ConditionalVAE`: ``E(mu, sigma | c, x)`` and ``D(x | c, z)``, a Gaussian encoder and a deterministic
  decoder, both multi-layer perceptrons. Everything the specialisations share (the networks, the
  reparameterised sample, the KL divergence to ``N(0, I)``) lives here.
* :class:`ActionVAE`: BCQ's generative model of the behaviour policy (Fujimoto, Meger and Precup 2019, section 4):
  the condition is the state ``s``, the encoded variable the action ``a``, and the decoder output is squashed into
  the action bounds. Sampling clips the latent to ``[-0.5, 0.5]`` as in BCQ.
* (later) the transition CVAE of OTC's embedding distance ``d_e`` (paper section 3.5), whose condition is
  ``(s, s')``, encoded variable ``a_i`` and embedding ``mu(s, a_i, s')``: it subclasses :class:`ConditionalVAE`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ConditionalVAE", "ActionVAE", "gaussian_kl", "mlp"]

# BCQ clamps the encoder's log-std to this range (authors' implementation) to keep exp() finite.
LOG_STD_MIN: float = -4.0
LOG_STD_MAX: float = 15.0


def mlp(
    in_features: int,
    out_features: int,
    hidden_sizes: Sequence[int],
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """A plain multi-layer perceptron: ``Linear -> activation`` per hidden size, then a ``Linear``.

    Args:
        in_features: input width.
        out_features: output width.
        hidden_sizes: widths of the hidden layers (Table 3 of the OTC paper: ``(64, 64)`` for BCQ).
        activation: activation class placed after every hidden layer (Table 3: ReLU).

    Examples:
        >>> net = mlp(3, 2, (8, 8))
        >>> net(torch.zeros(5, 3)).shape
        torch.Size([5, 2])
    """
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden_sizes:
        layers += [nn.Linear(width, size), activation()]
        width = size
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def gaussian_kl(loc: Tensor, log_std: Tensor) -> Tensor:
    r"""KL divergence of ``N(loc, exp(log_std)^2)`` from ``N(0, I)``, averaged over the last dimension.

    .. math::

        \mathrm{KL} = \frac{1}{d}\sum_{j=1}^{d} -\tfrac12\left(1 + \log\sigma_j^2 - \mu_j^2 - \sigma_j^2\right)

    The average (not the sum) over latent dimensions is what BCQ's implementation optimises
    (``-0.5 * (1 + log std^2 - mean^2 - std^2).mean()``).

    Args:
        loc: the encoder mean, ``[..., d]``.
        log_std: the encoder log standard deviation, ``[..., d]``.

    Returns:
        a tensor of shape ``[...]``.

    Examples:
        >>> gaussian_kl(torch.zeros(2, 4), torch.zeros(2, 4))
        tensor([0., 0.])
    """
    return 0.5 * (loc.pow(2) + (2 * log_std).exp() - 1 - 2 * log_std).mean(-1)


class ConditionalVAE(nn.Module):
    r"""A conditional VAE ``E(mu, sigma | c, x)``, ``D(x | c, z)`` with multi-layer perceptrons.

    The encoder maps ``(c, x)`` to the mean and log standard deviation of a diagonal Gaussian over ``z``
    (log-std clamped to ``[-4, 15]`` as in BCQ); the decoder maps ``(c, z)`` to ``x``. Subclasses choose how the
    decoder output is squashed (:meth:`_squash`) and how the prior is sampled (:meth:`sample_latent`).

    Args:
        condition_dim: width of the condition ``c``.
        input_dim: width of the encoded variable ``x``.
        latent_dim: width of ``z``.

    Keyword Args:
        hidden_sizes: hidden widths of the encoder and of the decoder.
        activation: activation class of both networks.

    Examples:
        >>> vae = ConditionalVAE(3, 2, 4, hidden_sizes=(16,))
        >>> x_hat, loc, log_std = vae(torch.randn(5, 3), torch.randn(5, 2))
        >>> x_hat.shape, loc.shape
        (torch.Size([5, 2]), torch.Size([5, 4]))
    """

    def __init__(
        self,
        condition_dim: int,
        input_dim: int,
        latent_dim: int,
        *,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if min(condition_dim, input_dim, latent_dim) < 1:
            raise ValueError(
                "ConditionalVAE needs positive widths; got "
                f"condition_dim={condition_dim}, input_dim={input_dim}, latent_dim={latent_dim}."
            )
        self.condition_dim = condition_dim
        self.input_dim = input_dim
        self.latent_dim = latent_dim
        self.encoder = mlp(condition_dim + input_dim, 2 * latent_dim, hidden_sizes, activation)
        self.decoder = mlp(condition_dim + latent_dim, input_dim, hidden_sizes, activation)

    def encode(self, condition: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and (clamped) log standard deviation of ``q(z | c, x)``."""
        loc, log_std = self.encoder(torch.cat([condition, x], -1)).chunk(2, -1)
        return loc, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def _squash(self, x: Tensor) -> Tensor:
        """Maps the decoder's raw output to the data space (identity here)."""
        return x

    def sample_latent(self, batch_shape: torch.Size, like: Tensor) -> Tensor:
        """A draw of ``z`` from the prior ``N(0, I)`` (unclipped here)."""
        return torch.randn(*batch_shape, self.latent_dim, dtype=like.dtype, device=like.device)

    def decode(self, condition: Tensor, z: Tensor | None = None) -> Tensor:
        """``D(x | c, z)``; with ``z=None`` the latent is drawn by :meth:`sample_latent`."""
        if z is None:
            z = self.sample_latent(condition.shape[:-1], condition)
        return self._squash(self.decoder(torch.cat([condition, z], -1)))

    def forward(self, condition: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encodes, draws ``z = mu + sigma * eps`` (reparameterised) and decodes.

        Returns:
            ``(reconstruction, loc, log_std)``.
        """
        loc, log_std = self.encode(condition, x)
        z = loc + log_std.exp() * torch.randn_like(loc)
        return self.decode(condition, z), loc, log_std


class ActionVAE(ConditionalVAE):
    r"""BCQ's state-conditioned generative model of the behaviour policy's actions.

    Fujimoto, Meger and Precup (2019), "Off-Policy Deep Reinforcement Learning without Exploration", section 4:
    ``G_w = {E_w1(mu, sigma | s, a), D_w2(a | s, z)}`` is trained on the batch with

    .. math::

        \mathcal{L}_{VAE} = \lVert a - \tilde a \rVert^2 + \beta\,
            D_{KL}\left(\mathcal{N}(\mu, \sigma) \,\Vert\, \mathcal{N}(0, I)\right),
        \qquad \tilde a = D_{w_2}(s, z),\; z = \mu + \sigma\epsilon

    (``beta = 0.5`` in :class:`~torchrl_otc.objectives.BCQLoss`). The decoder output is squashed into the action
    bounds: ``a = c + h * tanh(.)`` with ``c = (high + low) / 2`` and ``h = (high - low) / 2``. At sampling time the
    latent is drawn from ``N(0, I)`` and clipped to ``[-latent_clip, latent_clip]`` (0.5 in BCQ), which keeps
    generated actions near the data.

    Args:
        observation_dim: width of the state.
        action_dim: width of the action.
        latent_dim: width of ``z``; ``None`` means ``2 * action_dim`` (BCQ).

    Keyword Args:
        low: lower action bound (float or ``[action_dim]`` tensor). Defaults to ``-1``.
        high: upper action bound. Defaults to ``1``.
        hidden_sizes: hidden widths of encoder and decoder. The OTC paper (Table 3) uses ``(64, 64)``; the
            original BCQ ``(750, 750)``.
        activation: activation class (Table 3: ReLU).
        latent_clip: clip of the prior samples at decoding. Defaults to ``0.5``.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> vae = ActionVAE(3, 2, low=-0.1, high=0.1)
        >>> vae.latent_dim
        4
        >>> a = vae.decode(torch.randn(7, 3))
        >>> a.shape, bool(a.abs().max() <= 0.1)
        (torch.Size([7, 2]), True)
        >>> recon, loc, log_std = vae(torch.randn(7, 3), a)
        >>> recon.shape, loc.shape
        (torch.Size([7, 2]), torch.Size([7, 4]))
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        latent_dim: int | None = None,
        *,
        low: float | Tensor = -1.0,
        high: float | Tensor = 1.0,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.ReLU,
        latent_clip: float = 0.5,
    ) -> None:
        if latent_dim is None:
            latent_dim = 2 * action_dim
        super().__init__(
            observation_dim,
            action_dim,
            latent_dim,
            hidden_sizes=hidden_sizes,
            activation=activation,
        )
        low_t = torch.as_tensor(low, dtype=torch.get_default_dtype()).expand(action_dim).clone()
        high_t = torch.as_tensor(high, dtype=torch.get_default_dtype()).expand(action_dim).clone()
        if not bool((high_t > low_t).all()):
            raise ValueError(f"ActionVAE needs high > low; got low={low_t}, high={high_t}.")
        if latent_clip <= 0:
            raise ValueError(f"latent_clip must be > 0; got {latent_clip}.")
        self.register_buffer("action_center", (high_t + low_t) / 2)
        self.register_buffer("action_half_range", (high_t - low_t) / 2)
        self.latent_clip = latent_clip

    def _squash(self, x: Tensor) -> Tensor:
        return self.action_center + self.action_half_range * torch.tanh(x)

    def sample_latent(self, batch_shape: torch.Size, like: Tensor) -> Tensor:
        """A prior draw clipped to ``[-latent_clip, latent_clip]`` (BCQ)."""
        z = super().sample_latent(batch_shape, like)
        return z.clamp(-self.latent_clip, self.latent_clip)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, latent_clip={self.latent_clip}"
