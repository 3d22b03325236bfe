"""Conditional variational auto-encoders (Kingma and Welling 2013) used by the package.

The file holds one base class and its specialisations:

* :class:`ConditionalVAE`: ``E(mu, sigma | c, x)`` and ``D(x | c, z)``, a Gaussian encoder and a deterministic
  decoder, both multi-layer perceptrons. Everything the specialisations share (the networks, the
  reparameterised sample, the KL divergence to ``N(0, I)``) lives here.
* :class:`ActionVAE`: BCQ's generative model of the behaviour policy (Fujimoto, Meger and Precup 2019, section 4):
  the condition is the state ``s``, the encoded variable the action ``a``, and the decoder output is squashed into
  the action bounds. Sampling clips the latent to ``[-0.5, 0.5]`` as in BCQ.
* :class:`TransitionVAE`: the transition CVAE of OTC's embedding distance ``d_e`` (paper section 3.5), whose
  condition is ``(s, s')``, encoded variable ``a_i`` and embedding ``mu(s, a_i, s')``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["ConditionalVAE", "ActionVAE", "TransitionVAE", "action_bounds", "gaussian_kl", "mlp"]

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


def action_bounds(
    action_dim: int,
    low: float | Tensor,
    high: float | Tensor,
    action_spec: Any = None,
    who: str = "the module",
) -> tuple[Tensor, Tensor]:
    """``(low, high)`` as ``[action_dim]`` tensors, from the numbers or from a bounded TorchRL action spec.

    Args:
        action_dim: width of the action.
        low: lower bound (float or ``[action_dim]`` tensor); ignored with ``action_spec``.
        high: upper bound; ignored with ``action_spec``.
        action_spec: a :class:`~torchrl.data.Bounded` spec of shape ``[action_dim]`` (what an env's
            ``action_spec`` or an agent's slice of it is); its ``space.low`` / ``space.high`` are the bounds.
        who: the caller, for the messages.

    Returns:
        The bounds, in the default dtype.

    Raises:
        ValueError: a spec of another width or without finite bounds, or ``high <= low``.

    Examples:
        >>> from torchrl.data import Bounded
        >>> action_bounds(2, -1.0, 1.0, Bounded(-0.5, 2.0, (2,)))
        (tensor([-0.5000, -0.5000]), tensor([2., 2.]))
    """
    if action_spec is not None:
        space = getattr(action_spec, "space", None)
        if space is None or not hasattr(space, "low") or not hasattr(space, "high"):
            raise ValueError(
                f"{who} needs a bounded action spec (torchrl.data.Bounded); got {type(action_spec).__name__}."
            )
        if tuple(action_spec.shape)[-1:] != (action_dim,):
            raise ValueError(
                f"{who}: the action spec has shape {tuple(action_spec.shape)} but the action is {action_dim} wide."
            )
        low, high = space.low.reshape(-1, action_dim)[0], space.high.reshape(-1, action_dim)[0]
    low_t = torch.as_tensor(low, dtype=torch.get_default_dtype()).expand(action_dim).clone()
    high_t = torch.as_tensor(high, dtype=torch.get_default_dtype()).expand(action_dim).clone()
    if not bool(torch.isfinite(low_t).all() and torch.isfinite(high_t).all()):
        raise ValueError(f"{who} needs finite action bounds; got low={low_t}, high={high_t}.")
    if not bool((high_t > low_t).all()):
        raise ValueError(f"{who} needs high > low; got low={low_t}, high={high_t}.")
    return low_t, high_t


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
        action_spec: a bounded TorchRL action spec (:class:`~torchrl.data.Bounded`) giving ``low`` and ``high``
            instead (see :func:`action_bounds`).

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
        action_spec: Any = None,
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
        low_t, high_t = action_bounds(action_dim, low, high, action_spec, "ActionVAE")
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


class TransitionVAE(ConditionalVAE):
    r"""OTC's transition CVAE: ``E(mu, sigma | s, a_i, s')`` and ``D(a_i | s, s', z)`` (paper section 3.5).

    Jiang & Lu (AAAI 2023), section 3.5: instead of two embeddings ``e(s, a_i)`` and ``e(s')``, a conditional VAE
    ``G_i = {E_i(mu, sigma | s, a_i, s'), D_i(a_i | s, s', z)}`` is trained on the agent's transitions, and the
    encoder mean ``mu(s, a_i, s')`` is the single embedding used both to match transitions (eq. 1) and to measure
    their similarity (section 3.3's ``d_e``). The condition is ``c = (s, s')``, the encoded variable ``x = a_i``.

    Inputs are standardised inside the module with statistics set by :meth:`set_normalization` (offline means
    and standard deviations; identity until set), so that the embedding does not depend on the raw scale of the
    features, and the decoder reconstructs the *standardised* action. :meth:`forward` takes raw tensors and
    returns the standardised action it was given next to its reconstruction, so that a loss compares the two in
    the same units (:class:`~torchrl_otc.objectives.TransitionVAELoss`).

    Args:
        state_dim: width of ``s`` (and of ``s'``).
        action_dim: width of the agent's action ``a_i``.
        embedding_dim: width of ``z`` and of the embedding ``mu`` (Table 3: 10).

    Keyword Args:
        hidden_sizes: hidden widths of encoder and decoder. The paper does not give them for this VAE; the default
            ``(64, 64)`` is Table 3's width for BCQ's networks, its action VAE included.
        activation: activation class (Table 3: ReLU).
        next_state_dim: width of ``s'`` when it differs from ``state_dim``.
        reconstruct: ``"action"`` (default, the paper's ``D(a_i | s, s', z)``: condition ``(s, s')``, encoded
            ``a_i``) or ``"next_state"`` (``D(s' | s, a_i, z)``: condition ``(s, a_i)``, encoded ``s'``). The
            encoder always reads all of ``(s, a_i, s')``.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> vae = TransitionVAE(4, 2)
        >>> s, a, s2 = torch.randn(5, 4), torch.rand(5, 2), torch.randn(5, 4)
        >>> vae.embed(s, a, s2).shape
        torch.Size([5, 10])
        >>> recon, target, loc, log_std = vae(s, a, s2)
        >>> recon.shape, bool(torch.equal(target, a))  # identity normalisation until set_normalization
        (torch.Size([5, 2]), True)
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        embedding_dim: int = 10,
        *,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.ReLU,
        next_state_dim: int | None = None,
        reconstruct: Literal["action", "next_state"] = "action",
    ) -> None:
        next_state_dim = state_dim if next_state_dim is None else next_state_dim
        if reconstruct not in ("action", "next_state"):
            raise ValueError(
                f"reconstruct must be 'action' (the paper's D(a_i | s, s', z)) or 'next_state' "
                f"(D(s' | s, a_i, z)); got {reconstruct!r}."
            )
        if reconstruct == "action":
            condition_dim, input_dim = state_dim + next_state_dim, action_dim
        else:
            condition_dim, input_dim = state_dim + action_dim, next_state_dim
        super().__init__(
            condition_dim,
            input_dim,
            embedding_dim,
            hidden_sizes=hidden_sizes,
            activation=activation,
        )
        self.reconstruct = reconstruct
        self.state_dim = state_dim
        self.action_dim = action_dim
        self.next_state_dim = next_state_dim
        self.embedding_dim = embedding_dim
        for name, width in (
            ("state", state_dim),
            ("action", action_dim),
            ("next_state", next_state_dim),
        ):
            self.register_buffer(f"{name}_mean", torch.zeros(width))
            self.register_buffer(f"{name}_std", torch.ones(width))

    @torch.no_grad()
    def set_normalization(
        self,
        state: tuple[Tensor, Tensor],
        action: tuple[Tensor, Tensor],
        next_state: tuple[Tensor, Tensor],
    ) -> None:
        """Sets the ``(mean, std)`` of the state, action and next state used to standardise the inputs."""
        for name, (mean, std) in (
            ("state", state),
            ("action", action),
            ("next_state", next_state),
        ):
            buffer = getattr(self, f"{name}_mean")
            if mean.shape != buffer.shape or std.shape != buffer.shape:
                raise ValueError(
                    f"TransitionVAE.set_normalization: {name} statistics of shape {tuple(mean.shape)} / "
                    f"{tuple(std.shape)}; the module expects {tuple(buffer.shape)}."
                )
            if not bool((std > 0).all()):
                raise ValueError(f"TransitionVAE.set_normalization: {name} std must be > 0.")
            buffer.copy_(mean)
            getattr(self, f"{name}_std").copy_(std)

    def _standardised(
        self, state: Tensor, action: Tensor, next_state: Tensor
    ) -> tuple[Tensor, Tensor]:
        s = (state - self.state_mean) / self.state_std
        a = (action - self.action_mean) / self.action_std
        s2 = (next_state - self.next_state_mean) / self.next_state_std
        if self.reconstruct == "next_state":
            return torch.cat([s, a], -1), s2
        return torch.cat([s, s2], -1), a

    def embed(self, state: Tensor, action: Tensor, next_state: Tensor) -> Tensor:
        """The embedding ``mu(s, a_i, s')``, shape ``[*B, embedding_dim]``."""
        condition, x = self._standardised(state, action, next_state)
        return self.encode(condition, x)[0]

    def forward(  # type: ignore[override]
        self, state: Tensor, action: Tensor, next_state: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Encodes, draws ``z = mu + sigma * eps`` (reparameterised) and decodes the standardised action.

        Returns:
            ``(reconstruction, standardised target, loc, log_std)``; the target is the standardised action
            (or next state with ``reconstruct="next_state"``).
        """
        condition, x = self._standardised(state, action, next_state)
        loc, log_std = self.encode(condition, x)
        z = loc + log_std.exp() * torch.randn_like(loc)
        return self.decode(condition, z), x, loc, log_std

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, reconstruct={self.reconstruct!r}"
