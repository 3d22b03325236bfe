"""Balanced Replay: the density-ratio prioritised sampler of Lee et al. (CoRL 2021), an offline-to-online baseline.

Lee, Seo, Lee, Abbeel and Shin, "Offline-to-Online Reinforcement Learning via Balanced Replay and Pessimistic
Q-Ensemble", CoRL 2021, section 4.1. The merged offline + online data is sampled in proportion to how
*online-like* each transition is: a network ``w(s, a)`` estimates the density ratio
``d_online(s, a) / d_offline(s, a)`` with the variational Jensen-Shannon objective of likelihood-free importance
weighting (Sinha, Song, Garg and Ermon, "Experience Replay with Likelihood-free Importance Weights",
arXiv:2006.13169), and the sampling
priority of a transition is ``w(s, a)^(1/T)``.

* :class:`BalancedReplaySampler` is the TorchRL :class:`~torchrl.data.replay_buffers.samplers.Sampler`.
* :class:`DensityRatioNetwork` is its network: a plain :class:`~torch.nn.Module` on standardised ``[s, a]``.
* :func:`js_density_ratio_loss` and :func:`balanced_priorities` are the two equations, exposed for tests and
  for users who build their own samplers.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torchrl.data.replay_buffers.storages import Storage, TensorStorage

from torchrl_otc.data.samplers import (
    _backing,
    _check_no_prefetch,
    _check_tensor_storage,
    _flat_column,
    _keys_present,
    _OnlineRowIndex,
    _OnlineRowsSampler,
    _storage_device,
    _to_storage_index,
)
from torchrl_otc.modules.models.vae import mlp

__all__ = [
    "BalancedReplaySampler",
    "DensityRatioNetwork",
    "balanced_priorities",
    "js_density_ratio_loss",
]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1
_STATE_FILE = "balanced_replay.pt"

# Constants of the authors' implementation (shlee94/Off2OnRL, rlkit/rlkit/torch/sac/ours.py).
LOG_EPS: float = 1e-10
"""Added inside the logarithms of the JS objective, and to the normaliser of the priorities."""
PRIORITY_RANGE: tuple[float, float] = (1e-3, 1e3)
"""Clamp of the self-normalised priorities ``w^(1/T) / E_offline[w^(1/T)]``."""
LAST_LAYER_INIT: float = 3e-3
"""Last-layer weights are drawn from ``U(-3e-3, 3e-3)`` and its bias set so that ``w = 1`` at initialisation."""

_ACTIVATIONS = ("relu", "softplus")


# --------------------------------------------------------------------------------------------------------------
# The two equations
# --------------------------------------------------------------------------------------------------------------
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


def balanced_priorities(
    weight: Tensor, temperature: float, offline: Tensor | None = None
) -> Tensor:
    r"""Self-normalised Balanced Replay priorities ``w^(1/T) / E_offline[w^(1/T)]``, clamped to ``[1e-3, 1e3]``.

    Lee et al. 2021 sample a transition with probability proportional to its priority

    .. math::
        \tilde w(s, a) = \frac{w_\psi(s, a)^{1/T}}{\mathbb{E}_{(s', a') \sim d_{\mathrm{off}}}
                         \left[w_\psi(s', a')^{1/T}\right]},

    where the temperature ``T`` flattens the estimated ratios (``T = 1``: the ratio itself; large ``T``: close to
    uniform). The normaliser is a constant factor within one set of candidates; it matters only through the clamp
    (``[1e-3, 1e3]`` relative to the offline mean, as in the authors' code): a row whose ratio is exactly zero
    (a ReLU output at zero) keeps a small chance of being drawn.

    Args:
        weight: ``[N]`` non-negative density ratios.
        temperature: ``T > 0``.
        offline: ``[N]`` boolean mask of the offline rows, whose mean normalises the priorities. ``None`` or a
            mask with no offline row normalises by the mean over all rows.

    Returns:
        ``[N]`` priorities (divide by their sum for probabilities).

    Examples:
        >>> import torch
        >>> balanced_priorities(torch.tensor([4.0, 1.0, 0.0]), temperature=2.0,
        ...                     offline=torch.tensor([False, True, True]))
        tensor([4.0000e+00, 2.0000e+00, 1.0000e-03])
    """
    powered = weight.clamp_min(0).pow(1.0 / temperature)
    if offline is not None and bool(offline.any()):
        normaliser = powered[offline].mean()
    else:
        normaliser = powered.mean()
    return (powered / (normaliser + LOG_EPS)).clamp(*PRIORITY_RANGE)


# --------------------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------------------------------
def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return value


def _features(value: Tensor) -> Tensor:
    value = value.reshape(value.shape[0], -1)
    return value if value.is_floating_point() else value.float()


class BalancedReplaySampler(_OnlineRowsSampler):
    r"""Balanced Replay (Lee et al., CoRL 2021): samples merged offline + online data by how online-like it is.

    Paper: Lee, Seo, Lee, Abbeel and Shin, "Offline-to-Online Reinforcement Learning via Balanced Replay and
    Pessimistic Q-Ensemble", CoRL 2021, section 4.1; reference implementation ``shlee94/Off2OnRL``. The sampler is
    attached to the *merged* storage, whose boolean column ``online_key`` marks the online rows (the tuning loop
    writes it). A network ``w_psi(s, a)`` (:class:`DensityRatioNetwork`) estimates the density ratio
    ``d_on(s, a) / d_off(s, a)``; each :meth:`update` is one Adam step on the Jensen-Shannon variational objective
    (:func:`js_density_ratio_loss`)

    .. math::
        L(\psi) = \mathbb{E}_{d_{\mathrm{off}}}\left[\log\frac{w_\psi + 1}{2}\right]
                - \mathbb{E}_{d_{\mathrm{on}}}\left[\log\frac{2 w_\psi}{w_\psi + 1}\right],

    minimised at ``w = d_on / d_off``, on ``train_batch_size`` online rows and as many offline rows, drawn
    uniformly with replacement from the storage last seen, with the sampler's *own* generator. On every
    :meth:`sample` call:

    1. draw ``num_candidates`` candidates uniformly (with replacement) from the storage, with the buffer's
       generator;
    2. evaluate ``w`` on them (under :func:`torch.no_grad`) and their priorities (:func:`balanced_priorities`)

    .. math::
        \tilde w_j = \frac{w_\psi(s_j, a_j)^{1/T}}{\mathbb{E}_{\mathrm{offline}\ j'}\left[w_\psi(s_{j'},
        a_{j'})^{1/T}\right]}, \qquad P(j) = \frac{\tilde w_j}{\sum_m \tilde w_m};

    3. draw the batch from the candidates with replacement by ``P``.

    While the storage holds no online row (offline training) it samples uniformly and says so in ``info``.
    ``info`` (copied into every :class:`~torchrl.data.TensorDictReplayBuffer` batch) holds, per row,
    ``br_weight`` (the density ratio ``w``; ``1`` while uniform) and ``br_prob`` (the probability of that
    candidate in one draw; ``1 / len(storage)`` while uniform), and per batch ``otc_uniform`` and
    ``otc_online_share`` (the share of online rows in the batch). No key is named ``priority_weight``: TorchRL's
    losses would weight by it.

    **Where this departs from Lee et al.'s implementation, and why.**

    * *Candidates instead of a sum tree.* The authors keep every transition's priority in a prioritised replay
      buffer (a sum tree); a priority is refreshed only when its transition is drawn for an RL update, and a new
      transition enters with the running maximum priority, which they initialise so that the first 1000 online
      transitions take a set share of the sampling mass (``init_online_fraction``, 0.5 by default). Here the
      priorities of ``num_candidates`` uniform candidates are recomputed on every call
      (sampling-importance-resampling, as :class:`~torchrl_otc.OTCSampler` does): no priority is ever stale, new
      rows need no special value, and the cost does not grow with the storage. The price: the batch follows ``P`` within a candidate set of
      ``num_candidates``, not exactly over the whole storage, and there is no initial online fraction: until the
      network has learned, online rows are drawn at their uniform share. The normaliser
      ``E_offline[w^(1/T)]`` is the mean over the offline candidates (theirs: over the offline half of the
      density-ratio batch); it only matters through the clamp.
    * *Standardised inputs.* The authors feed raw ``[s, a]``; here the inputs are standardised by offline
      statistics (:meth:`fit`), as every network of this package is. Unfitted, the raw features are used (with
      a warning).
    * *Online training rows.* The authors draw the online half of each density-ratio batch from a separate
      first-in-first-out online buffer (250k transitions) and the offline half from the offline dataset. Here
      both come from the merged storage, split by ``online_key``: the online rows are all online rows still in
      the storage. With the authors' budget (about 250k online steps) their online buffer also held all online
      data, so the two coincide there.
    * *Schedule.* The authors take one density-ratio step per RL step, inside the RL update, from batches of 256
      and 256. Here :meth:`update` is one step and the caller decides when to call it (the learner: once per RL
      step).
    * *Initialisation.* Hidden layers use PyTorch's default initialisation instead of rlkit's ``fanin_init``
      with zero biases; the last layer is initialised as theirs (``U(-3e-3, 3e-3)``, output 1 at start).
    * *Output activation.* ReLU by default, as theirs; ``output_activation="softplus"`` is offered because a ReLU
      output at zero has no gradient (an online row that falls in such a region cannot pull its ratio up).

    Hyperparameters from the authors' code: ``temperature=5.0`` (``--temperature``), hidden ``(256, 256)``,
    Adam with ``lr=3e-4`` (``--weight_net_lr``), ``train_batch_size=256`` (``--weight_net_batch_size``), the
    ``1e-10`` inside the logarithms and the ``[1e-3, 1e3]`` clamp of the priorities.

    Keyword Args:
        online_key: key of the boolean column of the merged storage marking online rows. Defaults to
            ``"is_online"``.
        state_key: key of the state (flattened). Defaults to ``"observation"``.
        action_key: key of the action (flattened). Defaults to ``"action"``.
        num_candidates: candidates drawn uniformly per :meth:`sample` call. Defaults to ``512`` (OTC's ``|B|``).
        temperature: ``T > 0`` of the priorities ``w^(1/T)``. Defaults to ``5.0`` (the authors' code); ``1.0``
            samples in proportion to the estimated ratio itself.
        hidden_sizes: hidden widths of the network. Defaults to ``(256, 256)``.
        lr: Adam learning rate of the network. Defaults to ``3e-4``.
        train_batch_size: online rows, and offline rows, per :meth:`update`. Defaults to ``256``.
        seed: seeds the network's initial parameters (drawn inside :func:`torch.random.fork_rng`, so the global
            random state is left untouched) and the sampler's own generator for :meth:`update`. Defaults to ``0``.
        device: where the network lives. ``None`` (default) follows the storage's device.
        output_activation: ``"relu"`` (default, the authors') or ``"softplus"``; see above.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
        >>> from torchrl_otc import BalancedReplaySampler
        >>> g = torch.Generator().manual_seed(0)
        >>> def transitions(n, centre, online):
        ...     return TensorDict({"observation": torch.randn(n, 2, generator=g) + centre,
        ...                        "action": torch.rand(n, 1, generator=g),
        ...                        "is_online": torch.full((n,), online)}, batch_size=[n])
        >>> sampler = BalancedReplaySampler(num_candidates=256, hidden_sizes=(32, 32), lr=1e-3)
        >>> rb = TensorDictReplayBuffer(storage=LazyTensorStorage(3_000), sampler=sampler, batch_size=64,
        ...                             generator=torch.Generator().manual_seed(0))
        >>> offline = transitions(2_000, -2.0, False)
        >>> _ = rb.extend(offline)
        >>> sampler.fit(offline)
        BalancedReplaySampler(temperature=5, num_candidates=256, updates=0, fitted=True)
        >>> sampler.update()  # no online row yet: nothing to learn
        {}
        >>> bool(rb.sample()["otc_uniform"].all())
        True
        >>> _ = rb.extend(transitions(200, 2.0, True))
        >>> for _ in range(100):
        ...     metrics = sampler.update()
        >>> metrics["weight_online"] > 1.0 > metrics["weight_offline"]
        True
        >>> batch = rb.sample()
        >>> bool(batch["otc_uniform"].any()), bool(batch["otc_online_share"][0] > 200 / 2_200)
        (False, True)
    """

    def __init__(
        self,
        *,
        online_key: NestedKey = "is_online",
        state_key: NestedKey = "observation",
        action_key: NestedKey = "action",
        num_candidates: int = 512,
        temperature: float = 5.0,
        hidden_sizes: Sequence[int] = (256, 256),
        lr: float = 3e-4,
        train_batch_size: int = 256,
        seed: int = 0,
        device: torch.device | str | None = None,
        output_activation: Literal["relu", "softplus"] = "relu",
    ) -> None:
        for name, key in (
            ("online_key", online_key),
            ("state_key", state_key),
            ("action_key", action_key),
        ):
            if not (
                isinstance(key, str)
                or (isinstance(key, tuple) and key and all(isinstance(k, str) for k in key))
            ):
                raise TypeError(
                    f"{name} must be a key of the storage (a string or a tuple of strings); got {key!r}."
                )
        self.num_candidates = _positive_int("num_candidates", num_candidates)
        self.train_batch_size = _positive_int("train_batch_size", train_batch_size)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TypeError(f"temperature must be a number > 0; got {temperature!r}.")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(
                f"temperature must be a finite number > 0 (the priorities are w^(1/T)); got {temperature}. "
                f"Use 1.0 to sample in proportion to the density ratio, larger values to flatten it."
            )
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise TypeError(f"lr must be a number > 0; got {lr!r}.")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0; got {lr}.")
        if isinstance(hidden_sizes, (str, bytes)) or not isinstance(hidden_sizes, Sequence):
            raise TypeError(
                f"hidden_sizes must be a sequence of positive integers such as (256, 256); got {hidden_sizes!r}."
            )
        for size in hidden_sizes:
            _positive_int("every hidden size", size)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer; got {seed!r}.")
        if output_activation not in _ACTIVATIONS:
            raise ValueError(
                f"output_activation must be one of {_ACTIVATIONS}; got {output_activation!r}."
            )
        try:
            self.device = torch.device(device) if device is not None else None
        except (RuntimeError, TypeError) as err:
            raise ValueError(
                f"device must be a torch device (e.g. 'cpu', 'cuda:0') or None to follow the storage; got "
                f"{device!r}."
            ) from err
        self.online_key = online_key
        self.state_key = state_key
        self.action_key = action_key
        self.temperature = float(temperature)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.lr = float(lr)
        self.seed = seed
        self.output_activation = output_activation
        self.num_updates = 0
        self.network: DensityRatioNetwork | None = None
        self.optimizer: torch.optim.Adam | None = None
        self._generator = torch.Generator().manual_seed(seed)
        self._storage: TensorStorage | None = None
        self._rows = _OnlineRowIndex()
        self._warned_unfitted = False
        self._warned_no_offline = False

    # ---------------------------------------------------------------- network
    def _build(self, state_dim: int, action_dim: int, device: torch.device) -> DensityRatioNetwork:
        """Creates the network (parameters from ``seed``, global random state untouched) and its optimiser."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            network = DensityRatioNetwork(
                state_dim,
                action_dim,
                hidden_sizes=self.hidden_sizes,
                output_activation=self.output_activation,
            )
        self.network = network.to(device)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=self.lr)
        return self.network

    def _network_for(
        self, state_dim: int, action_dim: int, device: torch.device
    ) -> DensityRatioNetwork:
        """The network, built on first use, checked against the data's widths, moved to ``device``."""
        if self.network is None:
            return self._build(state_dim, action_dim, device)
        net = self.network
        if (net.state_dim, net.action_dim) != (state_dim, action_dim):
            raise ValueError(
                f"BalancedReplaySampler's network was built for states of {net.state_dim} and actions of "
                f"{net.action_dim} features; the data has {state_dim} and {action_dim} (keys "
                f"{self.state_key!r}, {self.action_key!r}). One sampler serves one agent's transitions."
            )
        if net.state_mean.device != device:
            self._move(device)
        return net

    def _move(self, device: torch.device) -> None:
        """Moves the network and the optimiser's state (Adam's step counters stay where they are)."""
        assert self.network is not None and self.optimizer is not None
        self.network.to(device)
        for state in self.optimizer.state.values():
            for name, value in state.items():
                if isinstance(value, Tensor) and name != "step":
                    state[name] = value.to(device)

    def _network_device(self, storage: TensorStorage) -> torch.device:
        return self.device if self.device is not None else _storage_device(storage)

    def _warn_if_unfitted(self) -> None:
        assert self.network is not None
        if not bool(self.network.fitted) and not self._warned_unfitted:
            logger.warning(
                "BalancedReplaySampler is used before fit(): the density-ratio network sees raw, unscaled "
                "states and actions. Call sampler.fit(offline_data) once to standardise them."
            )
            self._warned_unfitted = True

    @torch.no_grad()
    def fit(self, data: TensorDictBase) -> BalancedReplaySampler:
        """Fits the input standardisation (mean and std of state and action) on offline data; returns ``self``.

        Called once by the learner with the agent's offline data. Rows that ``data`` marks as online under
        ``online_key`` (if it has that column) are left out. Constant features get a standard deviation of 1.

        Args:
            data: a TensorDict of transitions with any batch shape (flattened here) holding ``state_key`` and
                ``action_key``. To fit on a replay buffer, pass ``buffer[:]``.
        """
        if not isinstance(data, TensorDictBase):
            raise TypeError(
                f"BalancedReplaySampler.fit takes a TensorDict of offline transitions; got {type(data).__name__}."
            )
        present = data.keys(include_nested=True)
        missing = [k for k in (self.state_key, self.action_key) if k not in present]
        if missing:
            raise KeyError(
                f"BalancedReplaySampler.fit: the data has no key {missing[0]!r} (missing: {missing}); keys "
                f"present: {sorted(map(str, data.keys(include_nested=True, leaves_only=True)))}."
            )
        flat = data.reshape(-1)
        state = _features(flat.get(self.state_key)).double()
        action = _features(flat.get(self.action_key)).double()
        if self.online_key in present:
            offline = ~flat.get(self.online_key).reshape(flat.shape[0], -1).any(-1)
            state, action = state[offline.to(state.device)], action[offline.to(action.device)]
        if state.shape[0] == 0:
            raise ValueError(
                "BalancedReplaySampler.fit needs at least one offline transition; got none (every row was "
                f"empty or marked online under {self.online_key!r})."
            )
        if not (torch.isfinite(state).all() and torch.isfinite(action).all()):
            raise ValueError(
                "BalancedReplaySampler.fit: non-finite values in the states or actions; clean the data first."
            )
        if self.device is not None:
            device = self.device
        elif self.network is not None:
            device = self.network.state_mean.device
        else:
            device = state.device
        net = self._network_for(state.shape[1], action.shape[1], device)
        for name, x in (("state", state), ("action", action)):
            mean = x.mean(0)
            std = x.std(0, correction=0) if x.shape[0] > 1 else torch.ones_like(mean)
            std = torch.where(std < 1e-6, torch.ones_like(std), std)
            getattr(net, f"{name}_mean").copy_(mean)
            getattr(net, f"{name}_std").copy_(std)
        net.fitted.fill_(True)
        return self

    @torch.no_grad()
    def density_ratio(self, data: TensorDictBase) -> Tensor:
        """The current estimate ``w(s, a)`` on a TensorDict of transitions (any batch shape, flattened).

        Args:
            data: transitions holding ``state_key`` and ``action_key``.

        Returns:
            ``[N]`` ratios on the network's device.
        """
        if self.network is None:
            raise RuntimeError(
                "BalancedReplaySampler has no network yet: call fit(offline_data) or sample from the buffer first."
            )
        flat = data.reshape(-1)
        device = self.network.state_mean.device
        state = _features(flat.get(self.state_key)).to(device)
        action = _features(flat.get(self.action_key)).to(device)
        return self._network_for(state.shape[1], action.shape[1], device)(state, action)

    # ---------------------------------------------------------------- storage access
    def _validate(self, storage: TensorStorage) -> None:
        present = _backing(storage).keys(include_nested=True)
        keys = (self.online_key, self.state_key, self.action_key)
        missing = [key for key in keys if key not in present]
        if missing:
            raise KeyError(
                f"BalancedReplaySampler: the storage has no key {missing[0]!r} (missing: {missing}); keys "
                f"present: {_keys_present(storage)}. Write a boolean column {self.online_key!r} (True for online "
                f"transitions) with every transition, or set online_key/state_key/action_key."
            )

    def _online_offline_rows(self, storage: TensorStorage) -> tuple[Tensor, Tensor]:
        """Flat indices of the online and of the offline rows, cached until the next write."""
        return self._rows.rows(storage, self.online_key)

    def _gather(
        self, storage: TensorStorage, flat: Tensor, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        state = _features(_flat_column(storage, self.state_key)[flat]).to(device)
        action = _features(_flat_column(storage, self.action_key)[flat]).to(device)
        return state, action

    def _ratio(self, storage: TensorStorage, flat: Tensor) -> Tensor:
        device = self._network_device(storage)
        state, action = self._gather(storage, flat, device)
        net = self._network_for(state.shape[1], action.shape[1], device)
        self._warn_if_unfitted()
        return net(state, action)

    def _randint(
        self, high: int, size: int, generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        """``size`` uniform integers in ``[0, high)`` drawn on the generator's device, returned on ``device``."""
        gen_device = generator.device if generator is not None else device
        return torch.randint(high, (size,), generator=generator, device=gen_device).to(device)

    # ---------------------------------------------------------------- Sampler API
    def sample(self, storage: Storage, batch_size: int) -> tuple[Any, dict]:
        """Draws ``batch_size`` storage indices in proportion to the Balanced Replay priorities.

        See the class docstring for ``info``.
        """
        storage = _check_tensor_storage(storage, "BalancedReplaySampler")
        n = len(storage)
        if n == 0:
            raise RuntimeError(
                "Cannot sample from an empty storage: extend the buffer with offline data first."
            )
        _check_no_prefetch(storage, "BalancedReplaySampler")
        self._validate(storage)
        self._storage = storage
        device = _storage_device(storage)
        rng = self._rng
        online_rows, offline_rows = self._online_offline_rows(storage)
        flags = _flat_column(storage, self.online_key)
        if online_rows.numel() == 0:
            flat = self._randint(n, batch_size, rng, device)
            info: dict[str, Any] = {
                "br_weight": torch.ones(batch_size, device=device),
                "br_prob": torch.full((batch_size,), 1.0 / n, device=device),
                "otc_uniform": torch.tensor(True),
                "otc_online_share": torch.tensor(0.0),
            }
            return _to_storage_index(storage, flat), info
        cand = self._randint(n, self.num_candidates, rng, device)
        cand_online = flags[cand].reshape(cand.shape[0], -1).any(-1)
        with torch.no_grad():
            weight = self._ratio(storage, cand)
            if not bool(torch.isfinite(weight).all()):
                bad = cand[~torch.isfinite(weight).to(cand.device)][:10].tolist()
                raise ValueError(
                    f"BalancedReplaySampler: non-finite density ratios for storage rows {bad}. Check these "
                    f"transitions for NaN/inf values."
                )
            priority = balanced_priorities(weight, self.temperature, ~cand_online.to(weight.device))
            probs = priority / priority.sum()
        gen_device = rng.device if rng is not None else probs.device
        draw = torch.multinomial(
            probs.to(gen_device), batch_size, replacement=True, generator=rng
        ).to(device)
        flat = cand[draw]
        info = {
            "br_weight": weight.to(device)[draw],
            "br_prob": probs.to(device)[draw],
            "otc_uniform": torch.tensor(False),
            "otc_online_share": cand_online[draw].float().mean().cpu(),
        }
        return _to_storage_index(storage, flat), info

    def update(self, batch: TensorDictBase | None = None) -> dict[str, float]:
        """One Adam step of the density-ratio network on the JS objective (:func:`js_density_ratio_loss`).

        ``batch`` is ignored: ``train_batch_size`` online rows and as many offline rows are drawn uniformly, with
        replacement, from the storage last sampled from (or written to), with the sampler's own generator (never
        the buffer's generator nor the global torch random state: training does not change which batches the
        buffer draws). Before the storage holds an online row (or an offline row) it does nothing and returns
        ``{}``.

        Args:
            batch: ignored (the learner passes its training batch to every learned component).

        Returns:
            ``loss`` (the objective on this step's rows, before the step), ``js_lower_bound`` (``-loss / 2``, a
            lower bound on the Jensen-Shannon divergence between online and offline state-action distributions,
            at most ``log 2``), ``weight_online`` and ``weight_offline`` (mean ``w`` on the online and offline
            rows), ``num_updates``.
        """
        storage = self._storage
        if storage is None or len(storage) == 0:
            return {}
        self._validate(storage)
        online_rows, offline_rows = self._online_offline_rows(storage)
        if online_rows.numel() == 0:
            return {}
        if offline_rows.numel() == 0:
            if not self._warned_no_offline:
                logger.warning(
                    "BalancedReplaySampler.update: the storage holds no offline row (none with %r False); the "
                    "density ratio is not trained.",
                    self.online_key,
                )
                self._warned_no_offline = True
            return {}
        rows_device = online_rows.device
        size = self.train_batch_size
        on = online_rows[self._randint(online_rows.numel(), size, self._generator, rows_device)]
        off = offline_rows[self._randint(offline_rows.numel(), size, self._generator, rows_device)]
        weight = self._ratio(storage, torch.cat([on, off]))
        w_on, w_off = weight[:size], weight[size:]
        loss = js_density_ratio_loss(w_on, w_off)
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.num_updates += 1
        loss_value = float(loss.detach())
        return {
            "loss": loss_value,
            "js_lower_bound": -loss_value / 2,
            "weight_online": float(w_on.detach().mean()),
            "weight_offline": float(w_off.detach().mean()),
            "num_updates": float(self.num_updates),
        }

    # ---------------------------------------------------------------- write hooks (extend, add: the base's)
    def mark_update(self, index: Any, *, storage: Storage | None = None) -> None:
        super().mark_update(index, storage=storage)
        if isinstance(storage, TensorStorage):
            self._storage = storage

    def _empty(self) -> None:
        # The rows are gone; the network and its statistics describe the agent's data, not rows: kept.
        self._rows.invalidate()

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        net = self.network
        return {
            "version": _STATE_VERSION,
            "dims": None if net is None else (net.state_dim, net.action_dim),
            "network": None if net is None else net.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "generator": self._generator.get_state(),
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = state_dict.get("version")
        if version != _STATE_VERSION:
            raise ValueError(
                f"BalancedReplaySampler state version {version!r} is not {_STATE_VERSION}; it was saved by "
                f"another version of torchrl-otc."
            )
        dims = state_dict["dims"]
        if dims is not None:
            if self.network is None:
                self._build(
                    int(dims[0]),
                    int(dims[1]),
                    self.device if self.device is not None else torch.device("cpu"),
                )
            net = self._network_for(int(dims[0]), int(dims[1]), self.network.state_mean.device)
            net.load_state_dict(state_dict["network"])
            assert self.optimizer is not None
            # deep copy: Optimizer.load_state_dict keeps the given moment tensors, which would otherwise be
            # shared with (and advanced by) the optimiser the state came from
            self.optimizer.load_state_dict(copy.deepcopy(state_dict["optimizer"]))
        self._generator.set_state(state_dict["generator"].clone())
        self.num_updates = int(state_dict["num_updates"])

    def dumps(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path / _STATE_FILE)

    def loads(self, path: str | Path) -> None:
        file = Path(path) / _STATE_FILE
        if not file.exists():
            raise FileNotFoundError(
                f"No BalancedReplaySampler state at {file}; save one with sampler.dumps(path) or "
                f"replay_buffer.dumps(path)."
            )
        self.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_storage"] = None  # never pickle the storage itself
        state["_rows"] = _OnlineRowIndex()
        state["_generator"] = self._generator.get_state()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator_state = state.pop("_generator")
        self.__dict__.update(state)
        self._generator = torch.Generator()
        self._generator.set_state(generator_state)

    def __repr__(self) -> str:
        fitted = self.network is not None and bool(self.network.fitted)
        return (
            f"{type(self).__name__}(temperature={self.temperature:.4g}, num_candidates={self.num_candidates}, "
            f"updates={self.num_updates}, fitted={fitted})"
        )
