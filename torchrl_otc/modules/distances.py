"""Transition distances for Online Transition Correction (paper section 3.3).

OTC needs two distances between an agent's transitions ``<s, a_i, s'>``:

* a *state-action* distance ``d(s, a_i, s*, a_i*)``, used to find, for every candidate transition drawn from
  the merged data, its best-matched online transition (eq. 1);
* a *next-state* distance ``d(s', s'*)`` between a candidate and its match, whose rank sets the candidate's
  sampling priority (eq. 3).

:class:`~torchrl_otc.OTCSampler` asks its distance for nothing but :class:`TransitionDistance`'s
:meth:`~TransitionDistance.compare` (the protocol, :class:`OnlineRows` and :class:`Comparison` are in
:mod:`torchrl_otc.modules.transition_distance`, importable from here). Subclassing :class:`TransitionDistance`
derives ``compare`` from the two distances above. Most distances (all of the paper's) are L1 distances between two
embeddings of a transition, one for the state-action pair and one for the next state; they derive from
:class:`L1EmbeddingDistance` and only implement :meth:`~L1EmbeddingDistance.embed`: the base class batches both
sets through one forward pass, caches the online rows' embeddings while neither the online buffer nor the distance
changes, and can compile the pairwise step.

The distances hold no optimiser and no random stream: a learned one (:class:`EmbeddingDistance`) is a function of
its inputs and its parameters, trained by the agent's learner (:mod:`torchrl_otc.modules.trainable`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor, nn

from torchrl_otc.modules.models.vae import TransitionVAE
from torchrl_otc.modules.trainable import flat_transitions
from torchrl_otc.modules.transition_distance import (
    Comparison,
    L1EmbeddingDistance,
    OnlineRows,
    TransitionDistance,
    check_positive_int,
    flat_features,
    pairwise_l1,
)
from torchrl_otc.modules.value_distance import ValueDistance, ValueFunctions

__all__ = [
    "TransitionDistance",
    "OnlineRows",
    "Comparison",
    "L1EmbeddingDistance",
    "FeatureDistance",
    "EmbeddingDistance",
    "ValueDistance",
    "ValueFunctions",
    "feature_statistics",
    "pairwise_l1",
]

logger = logging.getLogger(__name__)


def feature_statistics(
    x: Tensor, eps: float = 1e-6, what: str = "features"
) -> tuple[Tensor, Tensor]:
    """Per-column mean and standard deviation of ``x`` ``[N, k]`` (float64 sums), constant columns get std 1.

    Args:
        x: the features.
        eps: standard deviations below it are replaced by 1.
        what: names the features in the error raised on non-finite values.

    Examples:
        >>> feature_statistics(torch.tensor([[0.0, 5.0], [2.0, 5.0]]))
        (tensor([1., 5.]), tensor([1., 1.]))
    """
    x = x.double()
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: non-finite values; remove the rows with NaN or inf first.")
    mean = x.mean(0)
    std = x.std(0, correction=0) if x.shape[0] > 1 else torch.ones_like(mean)
    std = torch.where(std < eps, torch.ones_like(std), std)
    return mean.float(), std.float()


class FeatureDistance(L1EmbeddingDistance):
    """L1 distance on standardised raw features: the default distance of :class:`~torchrl_otc.OTCSampler`.

    The state-action embedding is the concatenation ``[(s - mu_s) / sigma_s, (a_i - mu_a) / sigma_a]``; the
    next-state embedding is, depending on ``next_state``:

    * ``"displacement"`` (default): the standardised change of state ``((s' - s) - mu_d) / sigma_d``. The
      distance ``d(s', s'*)`` then compares what the transitions *did* (``s' - s`` against ``s'* - s*``) rather
      than where they ended. With an imperfect state-action match (the usual case in continuous spaces), the
      distance between raw next states mostly measures how far apart the two start states were, not whether
      the dynamics agree; the displacement removes that offset. See the package docs (theory page) for the
      measurement behind this default.
    * ``"next_state"``: the standardised next state ``(s' - mu_s) / sigma_s``, the literal reading of the
      paper's ``d(s', s'*)`` (section 3.2).

    The statistics ``mu`` and ``sigma`` are fitted once on offline data with :meth:`fit`. An unfitted distance
    uses the raw features (``mu = 0``, ``sigma = 1``) and logs a warning on first use. Constant features get
    ``sigma = 1``.

    Args:
        state_key: key of the state ``s``. Defaults to ``"observation"``.
        action_key: key of the agent's action ``a_i``. Defaults to ``"action"``.
        next_state_key: key of the next state ``s'``. Defaults to ``("next", "observation")``.

    Keyword Args:
        next_state: ``"displacement"`` (default) or ``"next_state"``, see above.
        eps: floor on the standard deviations. Defaults to ``1e-6``.
        compile: compile the pairwise step of :meth:`~L1EmbeddingDistance.compare` (:func:`torch.compile`).
            Defaults to ``False``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> td = TensorDict({
        ...     "observation": torch.tensor([[0.0], [2.0]]),
        ...     "action": torch.tensor([[1.0], [1.0]]),
        ...     ("next", "observation"): torch.tensor([[1.0], [3.0]]),
        ... }, batch_size=[2])
        >>> dist = FeatureDistance().fit(td)
        >>> dist.state_action_distance(td, td)  # states standardised to -1 and 1; the action is constant
        tensor([[0., 2.],
                [2., 0.]])
        >>> dist.next_state_distance(td, td.flip(0))  # both moved by +1: same displacement
        tensor([0., 0.])
    """

    def __init__(
        self,
        state_key: NestedKey = "observation",
        action_key: NestedKey = "action",
        next_state_key: NestedKey = ("next", "observation"),
        *,
        next_state: Literal["displacement", "next_state"] = "displacement",
        eps: float = 1e-6,
        compile: bool = False,
    ) -> None:
        super().__init__(compile=compile)
        if next_state not in ("displacement", "next_state"):
            raise ValueError(
                f"next_state must be 'displacement' or 'next_state'; got {next_state!r}."
            )
        if not eps > 0:
            raise ValueError(f"eps must be positive; got {eps}.")
        self.state_key = state_key
        self.action_key = action_key
        self.next_state_key = next_state_key
        self.next_state = next_state
        self.eps = float(eps)
        self.in_keys = [state_key, action_key, next_state_key]
        for name in ("state", "action", "next"):
            self.register_buffer(f"{name}_mean", torch.zeros(0))
            self.register_buffer(f"{name}_std", torch.ones(0))
        self.register_buffer("fitted", torch.tensor(False))
        self._warned = False

    def _next_features(self, td: TensorDictBase, state: Tensor) -> Tensor:
        nxt = flat_features(td, self.next_state_key)
        if self.next_state == "displacement":
            if nxt.shape != state.shape:
                raise ValueError(
                    f"next_state='displacement' needs states and next states of the same size; got "
                    f"{tuple(state.shape[1:])} for {self.state_key!r} and {tuple(nxt.shape[1:])} for "
                    f"{self.next_state_key!r}. Use next_state='next_state'."
                )
            return nxt - state
        return nxt

    @torch.no_grad()
    def fit(self, data: TensorDictBase) -> FeatureDistance:
        """Fits the standardisation statistics on (offline) transitions; returns ``self``.

        Args:
            data: a TensorDict of transitions with any batch shape (flattened here), holding :attr:`in_keys`.
                To fit on a replay buffer, pass ``buffer[:]`` or a large ``buffer.sample(n)``.
        """
        flat = flat_transitions(data, self.in_keys, "FeatureDistance.fit")
        state = flat_features(flat, self.state_key)
        feats = {
            "state": state,
            "action": flat_features(flat, self.action_key),
            "next": self._next_features(flat, state)
            if self.next_state == "displacement"
            else flat_features(flat, self.next_state_key),
        }
        for name, x in feats.items():
            mean, std = feature_statistics(x, self.eps, f"FeatureDistance.fit ({name} features)")
            setattr(self, f"{name}_mean", mean)
            setattr(self, f"{name}_std", std)
        if self.next_state == "next_state":
            # Next states live in the state space: standardise them with the state statistics.
            self.next_mean, self.next_std = self.state_mean.clone(), self.state_std.clone()
        self.fitted.fill_(True)
        self.version += 1
        return self

    @staticmethod
    def _standardise(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        if mean.numel() == 0:
            return x
        if mean.shape[0] != x.shape[-1]:
            raise ValueError(
                f"FeatureDistance was fitted on {mean.shape[0]} features but got {x.shape[-1]}."
            )
        return (x - mean.to(x)) / std.to(x)

    def embed(self, transitions: TensorDictBase) -> tuple[Tensor, Tensor]:
        """Standardised ``([s, a_i], s' - s or s')`` features, shapes ``[N, ds + da]`` and ``[N, ds]``."""
        if not bool(self.fitted) and not self._warned:
            logger.warning(
                "FeatureDistance is used before fit(): distances are computed on raw, unscaled features. "
                "Call distance.fit(offline_data) once to standardise them."
            )
            self._warned = True
        state = flat_features(transitions, self.state_key)
        action = flat_features(transitions, self.action_key)
        nxt = self._next_features(transitions, state)
        sa = torch.cat(
            [
                self._standardise(state, self.state_mean, self.state_std),
                self._standardise(action, self.action_mean, self.action_std),
            ],
            -1,
        )
        return sa, self._standardise(nxt, self.next_mean, self.next_std)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D401
        # Buffers are created empty and take the fitted shapes on load.
        for name in ("state", "action", "next"):
            for stat in ("mean", "std"):
                key = f"{prefix}{name}_{stat}"
                if key in state_dict:
                    setattr(self, f"{name}_{stat}", torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.version += 1

    def extra_repr(self) -> str:
        return f"next_state={self.next_state!r}, fitted={bool(self.fitted)}"


# --------------------------------------------------------------------------------------------------------------
# Learned distances (section 3.3): d_e from a transition CVAE (d_q, from the agent's critic: value_distance.py).
# --------------------------------------------------------------------------------------------------------------
class EmbeddingDistance(L1EmbeddingDistance):
    r"""The embedding-based distance ``d_e`` of OTC (paper sections 3.3 and 3.5), learned by a transition CVAE.

    A conditional VAE ``G_i = {E_i(mu, sigma | s, a_i, s'), D_i(a_i | s, s', z)}``
    (:class:`~torchrl_otc.modules.models.vae.TransitionVAE`) is trained on agent ``i``'s transitions, and its
    encoder mean ``mu(s, a_i, s')`` is the one embedding used for both of OTC's distances (section 3.5):

    .. math::
        d_e(s, a_i, s^*, a_i^*) = d_e(s', s'^*) = \lVert \mu(s, a_i, s') - \mu(s^*, a_i^*, s'^*) \rVert_1 .

    So the best match of a candidate (eq. 1) is its nearest online transition in embedding space, and its rank
    (eq. 3) is set by that same distance.

    **Training.** The distance is a function of its inputs and of the CVAE's parameters (:attr:`vae`): it holds
    no optimiser, no random stream and no schedule. The agent's learner trains it
    (:class:`~torchrl_otc.trainers.AgentLearner`, through
    :class:`~torchrl_otc.trainers.parts.EmbeddingDistanceTrainer`): the CVAE's loss
    :class:`~torchrl_otc.objectives.TransitionVAELoss` (reconstruction of the standardised action +
    ``kl_weight`` * KL), Adam at ``lr``, a random stream seeded from ``seed`` (the reparameterisation noise never
    reads or advances the agent's stream), one gradient step every ``update_every`` updates of the agent on its
    training batch, and pretraining on the offline data before the first deployment. Those settings are
    arguments here so that one object describes ``d_e``. Every step increases :attr:`version`, which tells
    :meth:`~L1EmbeddingDistance.online_embeddings` that cached online embeddings are stale. :meth:`fit` sets the
    input standardisation from offline data.

    **Choices the paper leaves open.** Embedding size 10 is Table 3's. The paper gives neither the CVAE's widths
    nor its learning rate nor its KL weight: the defaults are Table 3's BCQ width ``(64, 64)`` (also that of
    BCQ's own action VAE), Adam at ``1e-3`` and BCQ's KL weight 0.5 (KL averaged over latent dimensions).

    The distances are computed without gradient: the sampler's calls never build a graph through the encoder.

    Args:
        state_dim: width of the state ``s`` (and of ``s'``); states are flat vectors.
        action_dim: width of the agent's action ``a_i``.
        embedding_dim: width of ``mu`` (Table 3: 10).

    Keyword Args:
        hidden_sizes: hidden widths of the encoder and of the decoder. Defaults to ``(64, 64)``.
        activation: activation class. Defaults to ReLU (Table 3).
        kl_weight: weight of the KL term of the training loss. Defaults to ``0.5``.
        lr: Adam learning rate of the training. Defaults to ``1e-3``.
        update_every: one gradient step every this many updates of the agent. Defaults to ``1``.
        train_batch_size: rows of the agent's batch used per step (a random subset of a larger batch; ``None``:
            all). Pretraining draws batches of this size (``None``: 256).
        state_key: key of ``s``. Defaults to ``"observation"``.
        action_key: key of ``a_i``. Defaults to ``"action"``.
        next_state_key: key of ``s'``. Defaults to ``("next", "observation")``.
        reconstruct: what the decoder reconstructs: ``"action"`` (default, the paper's
            ``D_i(a_i | s, s', z)``) or ``"next_state"`` (``D_i(s' | s, a_i, z)``: the embedding then has to carry
            what ``(s, a_i)`` does not tell about ``s'``, i.e. the dynamics). See the benchmarks for how the
            two compare.
        seed: seeds the CVAE's initial parameters (the global random state is left untouched) and, plus one,
            its training's random stream. Defaults to ``0``.
        device: where the CVAE lives. Defaults to the CPU.
        compile: compile the pairwise step (see :class:`L1EmbeddingDistance`). Defaults to ``False``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_otc.trainers.parts import EmbeddingDistanceTrainer  # what AgentLearner trains it with
        >>> g = torch.Generator().manual_seed(0)
        >>> s, a = torch.randn(512, 3, generator=g), torch.rand(512, 1, generator=g) * 2 - 1
        >>> sign = (torch.arange(512) % 2 * 2 - 1).unsqueeze(-1)  # two dynamics: s' = s + a and s' = s - a
        >>> data = TensorDict({"observation": s, "action": a, ("next", "observation"): s + sign * a}, [512])
        >>> dist = EmbeddingDistance(3, 1, hidden_sizes=(32, 32), seed=0).fit(data)
        >>> metrics = EmbeddingDistanceTrainer(dist).pretrain(data, 200)
        >>> sorted(metrics)
        ['loss_vae', 'vae_kl', 'vae_reconstruction']
        >>> dist.state_action_distance(data[:4], data[:6]).shape
        torch.Size([4, 6])
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        embedding_dim: int = 10,
        *,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.ReLU,
        kl_weight: float = 0.5,
        lr: float = 1e-3,
        update_every: int = 1,
        train_batch_size: int | None = None,
        state_key: NestedKey = "observation",
        action_key: NestedKey = "action",
        next_state_key: NestedKey = ("next", "observation"),
        reconstruct: Literal["action", "next_state"] = "action",
        seed: int = 0,
        device: torch.device | str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(compile=compile)
        for name, value in (
            ("state_dim", state_dim),
            ("action_dim", action_dim),
            ("embedding_dim", embedding_dim),
            ("update_every", update_every),
        ):
            check_positive_int(name, value)
        if train_batch_size is not None:
            check_positive_int("train_batch_size", train_batch_size)
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive finite number; got {lr}.")
        if not (kl_weight >= 0 and math.isfinite(kl_weight)):
            raise ValueError(f"kl_weight must be a finite number >= 0; got {kl_weight}.")
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.state_key, self.action_key, self.next_state_key = state_key, action_key, next_state_key
        self.in_keys = [state_key, action_key, next_state_key]
        self.embedding_dim = embedding_dim
        self.reconstruct = reconstruct
        self.kl_weight = float(kl_weight)
        self.lr = float(lr)
        self.update_every = update_every
        self.train_batch_size = train_batch_size
        self.seed = seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = TransitionVAE(
                state_dim,
                action_dim,
                embedding_dim,
                hidden_sizes=hidden_sizes,
                activation=activation,
                reconstruct=reconstruct,
            )
        self.vae = vae.to(device)

    @property
    def device(self) -> torch.device:
        """Where the CVAE lives (follows ``.to(...)``, as a module's device should)."""
        return next(self.vae.parameters()).device

    def _inputs(self, td: TensorDictBase) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(flat_features(td, key).to(self.device) for key in self.in_keys)  # type: ignore[return-value]

    @torch.no_grad()
    def fit(self, data: TensorDictBase) -> EmbeddingDistance:
        """Sets the CVAE's input standardisation from (offline) transitions; returns ``self``.

        Args:
            data: transitions holding :attr:`in_keys`, any batch shape.
        """
        flat = flat_transitions(data, self.in_keys, "EmbeddingDistance.fit")
        stats = [
            feature_statistics(x, what=f"EmbeddingDistance.fit ({key!r})")
            for key, x in zip(self.in_keys, self._inputs(flat))
        ]
        self.vae.set_normalization(*[(m.to(self.device), s.to(self.device)) for m, s in stats])
        self.version += 1
        return self

    @torch.no_grad()
    def embed(self, transitions: TensorDictBase) -> tuple[Tensor, Tensor]:
        """``(mu, mu)``: the one embedding ``mu(s, a_i, s')`` ``[N, embedding_dim]`` serves both distances."""
        mu = self.vae.embed(*self._inputs(transitions))
        return mu, mu

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D401
        # Checkpoints written before the learner owned d_e's training kept the CVAE under
        # "loss_module.vae_network_params.module." and its optimiser, random stream and counters as extra state
        # (the learner reads those: torchrl_otc.trainers.parts.legacy_part_states).
        legacy = f"{prefix}loss_module.vae_network_params.module."
        for key in [k for k in state_dict if k.startswith(legacy)]:
            state_dict[f"{prefix}vae.{key[len(legacy) :]}"] = state_dict.pop(key)
        state_dict.pop(f"{prefix}_extra_state", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.version += 1

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, reconstruct={self.reconstruct!r}, "
            f"update_every={self.update_every}"
        )
