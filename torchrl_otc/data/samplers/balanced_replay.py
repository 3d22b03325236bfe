"""Balanced Replay: the density-ratio prioritised sampler of Lee et al. (CoRL 2021), an offline-to-online baseline.

Lee, Seo, Lee, Abbeel and Shin, "Offline-to-Online Reinforcement Learning via Balanced Replay and Pessimistic
Q-Ensemble", CoRL 2021, section 4.1. The merged offline + online data is sampled in proportion to how
*online-like* each transition is: a network ``w(s, a)`` estimates the density ratio
``d_online(s, a) / d_offline(s, a)`` with the variational Jensen-Shannon objective of likelihood-free importance
weighting (Sinha, Song, Garg and Ermon, "Experience Replay with Likelihood-free Importance Weights",
arXiv:2006.13169), and the sampling
priority of a transition is ``w(s, a)^(1/T)``.

* :class:`BalancedReplaySampler` is the TorchRL :class:`~torchrl.data.replay_buffers.samplers.Sampler`.
* :func:`balanced_priorities` is its sampling rule, exposed for tests and for users who build their own samplers.
* Its network :class:`~torchrl_otc.modules.models.density_ratio.DensityRatioNetwork` (a plain
  :class:`~torch.nn.Module` on standardised ``[s, a]``) and the network's objective
  :func:`~torchrl_otc.modules.models.density_ratio.js_density_ratio_loss` live in
  :mod:`torchrl_otc.modules.models.density_ratio` (importable from here too).

The sampler is a function of its storage and of the network's parameters: it holds no optimiser and no random
stream of its own. The agent's learner trains the network (:class:`~torchrl_otc.trainers.AgentLearner`, through
:class:`~torchrl_otc.trainers.parts.BalancedReplayTrainer`): it draws the training rows with
:meth:`BalancedReplaySampler.training_weights`, minimises :func:`js_density_ratio_loss` with Adam and keeps the
generator and the counters.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.data.replay_buffers.storages import Storage, TensorStorage

from torchrl_otc.data.samplers._storage import (
    OnlineRowIndex,
    OnlineRowsSampler,
    backing,
    check_no_prefetch,
    check_tensor_storage,
    flat_column,
    keys_present,
    storage_device,
    to_storage_index,
)
from torchrl_otc.modules.models.density_ratio import (
    LOG_EPS,
    DensityRatioNetwork,
    js_density_ratio_loss,
)
from torchrl_otc.modules.transition_distance import check_positive_int

__all__ = [
    "BalancedReplaySampler",
    "DensityRatioNetwork",
    "balanced_priorities",
    "js_density_ratio_loss",
]

logger = logging.getLogger(__name__)

# Version 1: before the learner owned the training (the optimiser, generator and counter were here).
_STATE_VERSION = 2
_STATE_FILE = "balanced_replay.pt"

PRIORITY_RANGE: tuple[float, float] = (1e-3, 1e3)
"""Clamp of the self-normalised priorities ``w^(1/T) / E_offline[w^(1/T)]`` (the authors' code,
shlee94/Off2OnRL)."""

_ACTIVATIONS = ("relu", "softplus")


# --------------------------------------------------------------------------------------------------------------
# The priorities
# --------------------------------------------------------------------------------------------------------------
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
# The sampler
# --------------------------------------------------------------------------------------------------------------
def _features(value: Tensor) -> Tensor:
    value = value.reshape(value.shape[0], -1)
    return value if value.is_floating_point() else value.float()


class BalancedReplaySampler(OnlineRowsSampler):
    r"""Balanced Replay (Lee et al., CoRL 2021): samples merged offline + online data by how online-like it is.

    Paper: Lee, Seo, Lee, Abbeel and Shin, "Offline-to-Online Reinforcement Learning via Balanced Replay and
    Pessimistic Q-Ensemble", CoRL 2021, section 4.1; reference implementation ``shlee94/Off2OnRL``. The sampler is
    attached to the *merged* storage, whose boolean column ``online_key`` marks the online rows (the tuning loop
    writes it). A network ``w_psi(s, a)`` (:class:`~torchrl_otc.modules.models.density_ratio.DensityRatioNetwork`) estimates the density ratio
    ``d_on(s, a) / d_off(s, a)``; its owner (the agent's learner) makes Adam steps on the Jensen-Shannon
    variational objective
    (:func:`~torchrl_otc.modules.models.density_ratio.js_density_ratio_loss`)

    .. math::
        L(\psi) = \mathbb{E}_{d_{\mathrm{off}}}\left[\log\frac{w_\psi + 1}{2}\right]
                - \mathbb{E}_{d_{\mathrm{on}}}\left[\log\frac{2 w_\psi}{w_\psi + 1}\right],

    minimised at ``w = d_on / d_off``, on ``train_batch_size`` online rows and as many offline rows, drawn
    uniformly with replacement from the storage last seen (:meth:`training_weights`), with a generator of the
    owner's (never the buffer's: training does not change which batches the buffer draws). On every
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
    candidate in one draw; ``1 / len(storage)`` while uniform), and per batch ``balanced_replay_uniform`` and
    ``balanced_replay_online_share`` (the share of online rows in the batch). No key is named ``priority_weight``: TorchRL's
    losses would weight by it.

    **Where this departs from Lee et al.'s implementation** (candidates instead of a sum tree, standardised
    inputs, online training rows from the merged storage, one step per update of the agent, initialisation, output
    activation) **and why**: see the reference page of :mod:`torchrl_otc.data`, section *Balanced Replay*.
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
        lr: Adam learning rate of the network's training (read by its trainer). Defaults to ``3e-4``.
        train_batch_size: online rows, and offline rows, per training step (:meth:`training_weights`).
            Defaults to ``256``.
        seed: seeds the network's initial parameters (drawn inside :func:`torch.random.fork_rng`, so the global
            random state is left untouched) and the generator of its training. Defaults to ``0``.
        device: where the network lives. ``None`` (default) follows the storage's device.
        output_activation: ``"relu"`` (default, the authors') or ``"softplus"``; see above.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
        >>> from torchrl_otc import BalancedReplaySampler
        >>> from torchrl_otc.data.samplers.balanced_replay import js_density_ratio_loss
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
        BalancedReplaySampler(temperature=5, num_candidates=256, fitted=True)
        >>> train = torch.Generator().manual_seed(1)  # the owner's stream (AgentLearner keeps one per agent)
        >>> sampler.training_weights(train) is None  # no online row yet: nothing to learn
        True
        >>> bool(rb.sample()["balanced_replay_uniform"].all())
        True
        >>> _ = rb.extend(transitions(200, 2.0, True))
        >>> optimizer = torch.optim.Adam(sampler.network.parameters(), lr=sampler.lr)
        >>> for _ in range(100):  # what the learner does at every update of the agent
        ...     w_online, w_offline = sampler.training_weights(train)
        ...     loss = js_density_ratio_loss(w_online, w_offline)
        ...     optimizer.zero_grad()
        ...     loss.backward()
        ...     optimizer.step()
        >>> float(w_online.detach().mean()) > 1.0 > float(w_offline.detach().mean())
        True
        >>> batch = rb.sample()
        >>> bool(batch["balanced_replay_uniform"].any()), bool(batch["balanced_replay_online_share"][0] > 200 / 2_200)
        (False, True)
    """

    info_prefix = "balanced_replay_"

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
        self.num_candidates = check_positive_int("num_candidates", num_candidates)
        self.train_batch_size = check_positive_int("train_batch_size", train_batch_size)
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
            check_positive_int("every hidden size", size)
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
        self.network: DensityRatioNetwork | None = None
        self._storage: TensorStorage | None = None
        self._rows = OnlineRowIndex()
        self._warned_unfitted = False
        self._warned_no_offline = False

    # ---------------------------------------------------------------- network
    def _build(self, state_dim: int, action_dim: int, device: torch.device) -> DensityRatioNetwork:
        """Creates the network (parameters from ``seed``, global random state untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            network = DensityRatioNetwork(
                state_dim,
                action_dim,
                hidden_sizes=self.hidden_sizes,
                output_activation=self.output_activation,
            )
        self.network = network.to(device)
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
            # the parameters stay the same objects: an optimiser's state follows them
            net.to(device)
        return net

    def _network_device(self, storage: TensorStorage) -> torch.device:
        return self.device if self.device is not None else storage_device(storage)

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
        present = backing(storage).keys(include_nested=True)
        keys = (self.online_key, self.state_key, self.action_key)
        missing = [key for key in keys if key not in present]
        if missing:
            raise KeyError(
                f"BalancedReplaySampler: the storage has no key {missing[0]!r} (missing: {missing}); keys "
                f"present: {keys_present(storage)}. Write a boolean column {self.online_key!r} (True for online "
                f"transitions) with every transition, or set online_key/state_key/action_key."
            )

    def _online_offline_rows(self, storage: TensorStorage) -> tuple[Tensor, Tensor]:
        """Flat indices of the online and of the offline rows, cached until the next write."""
        return self._rows.rows(storage, self.online_key)

    def _gather(
        self, storage: TensorStorage, flat: Tensor, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        state = _features(flat_column(storage, self.state_key)[flat]).to(device)
        action = _features(flat_column(storage, self.action_key)[flat]).to(device)
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
        storage = check_tensor_storage(storage, "BalancedReplaySampler")
        n = len(storage)
        if n == 0:
            raise RuntimeError(
                "Cannot sample from an empty storage: extend the buffer with offline data first."
            )
        check_no_prefetch(
            storage, "BalancedReplaySampler", "before the density-ratio network's latest step"
        )
        self._validate(storage)
        self._storage = storage
        device = storage_device(storage)
        rng = self._rng
        online_rows, offline_rows = self._online_offline_rows(storage)
        flags = flat_column(storage, self.online_key)
        if online_rows.numel() == 0:
            flat = self._randint(n, batch_size, rng, device)
            info: dict[str, Any] = {
                "br_weight": torch.ones(batch_size, device=device),
                "br_prob": torch.full((batch_size,), 1.0 / n, device=device),
                "balanced_replay_uniform": torch.tensor(True),
                "balanced_replay_online_share": torch.tensor(0.0),
            }
            return to_storage_index(storage, flat), info
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
            "balanced_replay_uniform": torch.tensor(False),
            "balanced_replay_online_share": cand_online[draw].float().mean().cpu(),
        }
        return to_storage_index(storage, flat), info

    def training_weights(
        self, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor] | None:
        """``w`` on one training step's rows, with gradient: the inputs of :func:`js_density_ratio_loss`.

        ``train_batch_size`` online rows and as many offline rows are drawn uniformly, with replacement, from the
        storage last sampled from (or written to), with ``generator`` (the owner's: never the buffer's generator
        nor the global random state, so training does not change which batches the buffer draws). Before the
        storage holds an online row (or an offline row, with a warning) there is nothing to learn: ``None``.

        Args:
            generator: draws the rows (on the CPU for a CPU generator); ``None`` uses the global random state.

        Returns:
            ``(w_online [train_batch_size], w_offline [train_batch_size])`` on the network's device, or ``None``.
        """
        storage = self._storage
        if storage is None or len(storage) == 0:
            return None
        self._validate(storage)
        online_rows, offline_rows = self._online_offline_rows(storage)
        if online_rows.numel() == 0:
            return None
        if offline_rows.numel() == 0:
            if not self._warned_no_offline:
                logger.warning(
                    "BalancedReplaySampler: the storage holds no offline row (none with %r False); the "
                    "density ratio is not trained.",
                    self.online_key,
                )
                self._warned_no_offline = True
            return None
        rows_device = online_rows.device
        size = self.train_batch_size
        on = online_rows[self._randint(online_rows.numel(), size, generator, rows_device)]
        off = offline_rows[self._randint(offline_rows.numel(), size, generator, rows_device)]
        weight = self._ratio(storage, torch.cat([on, off]))
        return weight[:size], weight[size:]

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
        """The network's widths and parameters (its training state is its trainer's)."""
        net = self.network
        return {
            "version": _STATE_VERSION,
            "dims": None if net is None else (net.state_dim, net.action_dim),
            "network": None if net is None else net.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s network (building it first if needed).

        States of version 1 (whose optimiser, generator and counter the learner now keeps: see
        :func:`torchrl_otc.trainers.parts.legacy_part_states`) load too.
        """
        version = state_dict.get("version")
        if version not in (1, _STATE_VERSION):
            raise ValueError(
                f"BalancedReplaySampler state version {version!r} is not {_STATE_VERSION} (or 1); it was saved "
                f"by another version of torchrl-otc."
            )
        dims = state_dict["dims"]
        if dims is not None:
            device = self.device if self.device is not None else torch.device("cpu")
            if self.network is not None:
                device = self.network.state_mean.device
            net = self._network_for(int(dims[0]), int(dims[1]), device)
            net.load_state_dict(state_dict["network"])

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
        state["_rows"] = OnlineRowIndex()
        return state

    def __repr__(self) -> str:
        fitted = self.network is not None and bool(self.network.fitted)
        return (
            f"{type(self).__name__}(temperature={self.temperature:.4g}, num_candidates={self.num_candidates}, "
            f"fitted={fitted})"
        )
