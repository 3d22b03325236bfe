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
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

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
    pairwise_l1,
)

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


def _flat_features(td: TensorDictBase, key: NestedKey) -> Tensor:
    value = td.get(key)
    value = value.reshape(value.shape[0], -1) if value.ndim != 1 else value.unsqueeze(-1)
    return value if value.is_floating_point() else value.float()


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
        nxt = _flat_features(td, self.next_state_key)
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
        state = _flat_features(flat, self.state_key)
        feats = {
            "state": state,
            "action": _flat_features(flat, self.action_key),
            "next": self._next_features(flat, state)
            if self.next_state == "displacement"
            else _flat_features(flat, self.next_state_key),
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
        state = _flat_features(transitions, self.state_key)
        action = _flat_features(transitions, self.action_key)
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
# Learned distances (section 3.3): d_e from a transition CVAE, d_q from the agent's critic.
# --------------------------------------------------------------------------------------------------------------
def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return value


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
            _check_positive_int(name, value)
        if train_batch_size is not None:
            _check_positive_int("train_batch_size", train_batch_size)
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive finite number; got {lr}.")
        if not (kl_weight >= 0 and math.isfinite(kl_weight)):
            raise ValueError(f"kl_weight must be a finite number >= 0; got {kl_weight}.")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
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
        self.vae = vae.to(self.device)

    def _inputs(self, td: TensorDictBase) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(_flat_features(td, key).to(self.device) for key in self.in_keys)  # type: ignore[return-value]

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


@runtime_checkable
class ValueFunctions(Protocol):
    """What the value distance ``d_q`` (paper section 3.3) needs from an agent's algorithm: ``Q(s, a)`` and ``V(s)``.

    Every :class:`~torchrl_otc.trainers.algorithms.Algorithm` follows it (BCQ, AWAC, CQL, TD3+BC; each says how it
    computes its values). Both values are computed without gradient, on flat rows.

    Examples:
        >>> class Linear:  # any object with these three methods
        ...     def q_value(self, observation, action, reduction="mean"):
        ...         return observation.sum(-1) + action.sum(-1)
        ...     def state_value(self, observation, actions="policy", num_samples=10, reduction="mean"):
        ...         return observation.sum(-1)
        ...     def check_state_value(self, actions):
        ...         pass
        >>> isinstance(Linear(), ValueFunctions)
        True
    """

    def q_value(
        self, observation: Tensor, action: Tensor, reduction: Literal["mean", "min"] = "mean"
    ) -> Tensor:
        """``Q(s, a)`` ``[N]`` of ``observation [N, ds]`` and ``action [N, da]``, ``reduction`` over the critics."""
        ...

    def state_value(
        self,
        observation: Tensor,
        actions: Literal["policy", "sample"] = "policy",
        num_samples: int = 10,
        reduction: Literal["mean", "min"] = "mean",
    ) -> Tensor:
        """``V(s) = E_a Q(s, a)`` ``[N]``: of the policy's action, or the mean over ``num_samples`` sampled ones."""
        ...

    def check_state_value(self, actions: str) -> None:
        """Raises ``ValueError`` when :meth:`state_value` cannot use ``actions`` (called when a distance binds)."""
        ...


class ValueDistance(L1EmbeddingDistance):
    r"""The value-based distance ``d_q`` of OTC (paper section 3.3), computed from the agent's own critic.

    Matching (eq. 1) compares the state-action values and the similarity compares the normalised values of the
    next states:

    .. math::
        d_q(s, a_i, s^*, a_i^*) = \lvert Q(s, a_i) - Q(s^*, a_i^*) \rvert, \qquad
        d_q(s', s'^*) = \left\lvert \frac{V(s')}{\lvert\mathbb{E}_{s'} V(s')\rvert}
            - \frac{V(s'^*)}{\lvert\mathbb{E}_{s'^*} V(s'^*)\rvert} \right\rvert,
        \qquad V(s') = \mathbb{E}_{a_i} Q(s', a_i).

    Transitions far apart in feature space but with isomorphic state-action pairs have similar values (the
    paper's DeepMDP argument), so ``d_q`` can match them where ``d_e`` cannot. It reuses the agent's critic: no
    module of its own, nothing to train; its numbers follow the critic as it learns.

    **Choices the paper leaves open.**

    * *Twin critics* are averaged (``critic_reduction="mean"``, default): a similarity needs the best estimate
      of the value, not the pessimistic one the targets use; ``"min"`` is the clipped double-Q reading.
    * ``V(s')`` comes from the policy's action (``value_actions="policy"``, default: the deterministic
      deployment action; for BCQ the best of ``num_action_samples`` perturbed VAE actions, BCQ's own target) or
      from the mean over ``num_action_samples`` actions sampled from the policy (``"sample"``; AWAC, CQL and
      BCQ): :meth:`ValueFunctions.state_value` of the algorithm.
    * *The expectations* ``E_{s'} V(s')`` and ``E_{s'*} V(s'*)`` are the means over the set being embedded:
      the ``|B|`` candidates for the first, the ``|D|`` online rows for the second (distinct rows, when the
      online buffer holds fewer than ``|D|``).
    * *The guarded denominator.* The paper divides by ``E[V]``. We divide by its magnitude ``|E[V]|``: when both
      means have the same sign this gives exactly the paper's distance (flipping both signs leaves the
      difference's absolute value unchanged); when they differ, the paper's ratio would flip one set's values
      against the other's and pair a value with its opposite. When ``|E[V]| < rel_tol * E|V|`` (values of
      both signs that average to about zero, where the mean says nothing about their scale) we divide by the
      mean magnitude ``E|V|`` instead, and never by less than ``eps`` (all values about zero: the
      distances are then those of the raw values / eps, so all next states look alike only if their values
      are). :meth:`value_scale` is that rule.

    Both embeddings are computed under :func:`torch.no_grad`: no gradient reaches the critic or the policy.
    The embedding of a set depends on the whole set (its mean), so :attr:`rowwise_embedding` is ``False`` and
    the sampler never caches online embeddings for this distance.

    Args:
        algorithm: the agent's algorithm, any :class:`ValueFunctions` (e.g. a
            :class:`~torchrl_otc.trainers.algorithms.Algorithm`: BCQ, AWAC, CQL or TD3+BC, each saying how it
            computes ``Q`` and ``V``). :class:`~torchrl_otc.trainers.AgentLearner` binds its own algorithm when
            given an unbound distance (see :meth:`bind`).

    Keyword Args:
        q_function: instead of ``algorithm``, a callable ``(s [N, ds], a [N, da]) -> Q [N]``.
        value_function: with ``q_function``, a callable ``(s' [N, ds]) -> V [N]``.
        critic_reduction: ``"mean"`` (default) or ``"min"`` over the critics.
        value_actions: ``"policy"`` (default) or ``"sample"``.
        num_action_samples: actions per next state for ``"sample"`` and for BCQ's ``"policy"``.
            Defaults to ``10`` (BCQ's target).
        rel_tol: see the guarded denominator. Defaults to ``0.1``.
        eps: smallest denominator. Defaults to ``1e-6``.
        state_key: key of ``s``. Defaults to ``"observation"``.
        action_key: key of ``a_i``. Defaults to ``"action"``.
        next_state_key: key of ``s'``. Defaults to ``("next", "observation")``.
        compile: compile the L1 step of the sampler's comparison (:class:`L1EmbeddingDistance`). Defaults to
            ``False``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> q = lambda s, a: s.sum(-1) + a.sum(-1)           # a critic with known values
        >>> v = lambda s: s.sum(-1)
        >>> dist = ValueDistance(q_function=q, value_function=v)
        >>> td = TensorDict({"observation": torch.tensor([[1.0], [2.0]]), "action": torch.tensor([[0.0], [1.0]]),
        ...                  ("next", "observation"): torch.tensor([[2.0], [4.0]])}, [2])
        >>> dist.state_action_distance(td, td)               # |Q - Q*| with Q = (1, 3)
        tensor([[0., 2.],
                [2., 0.]])
        >>> dist.embed(td)[1].squeeze(-1)                    # V / |E V| with V = (2, 4), E V = 3
        tensor([0.6667, 1.3333])
    """

    rowwise_embedding = False

    def __init__(
        self,
        algorithm: ValueFunctions | None = None,
        *,
        q_function: Callable[[Tensor, Tensor], Tensor] | None = None,
        value_function: Callable[[Tensor], Tensor] | None = None,
        critic_reduction: Literal["mean", "min"] = "mean",
        value_actions: Literal["policy", "sample"] = "policy",
        num_action_samples: int = 10,
        rel_tol: float = 0.1,
        eps: float = 1e-6,
        state_key: NestedKey = "observation",
        action_key: NestedKey = "action",
        next_state_key: NestedKey = ("next", "observation"),
        compile: bool = False,
    ) -> None:
        super().__init__(compile=compile)
        if critic_reduction not in ("mean", "min"):
            raise ValueError(f"critic_reduction must be 'mean' or 'min'; got {critic_reduction!r}.")
        if value_actions not in ("policy", "sample"):
            raise ValueError(f"value_actions must be 'policy' or 'sample'; got {value_actions!r}.")
        _check_positive_int("num_action_samples", num_action_samples)
        if not (rel_tol >= 0 and eps > 0):
            raise ValueError(f"rel_tol must be >= 0 and eps > 0; got rel_tol={rel_tol}, eps={eps}.")
        if (q_function is None) != (value_function is None):
            raise ValueError(
                "Pass both q_function and value_function, or neither (and an algorithm)."
            )
        if q_function is not None and algorithm is not None:
            raise ValueError("Pass either an algorithm or q_function/value_function, not both.")
        self.critic_reduction = critic_reduction
        self.value_actions = value_actions
        self.num_action_samples = num_action_samples
        self.rel_tol = float(rel_tol)
        self.eps = float(eps)
        self.in_keys = [state_key, action_key, next_state_key]
        self._user_functions = q_function is not None
        # Plain callables (not registered submodules): the critic's parameters belong to the agent's algorithm.
        self.__dict__["q_function"] = q_function
        self.__dict__["value_function"] = value_function
        self.__dict__["algorithm"] = None
        if algorithm is not None:
            self.bind(algorithm)

    def bind(self, algorithm: ValueFunctions) -> None:
        """Uses ``algorithm``'s values (no-op when built with ``q_function``/``value_function``).

        Args:
            algorithm: any :class:`ValueFunctions`, e.g. an :class:`~torchrl_otc.trainers.algorithms.Algorithm`.

        Raises:
            ValueError: the algorithm cannot compute ``V`` with ``value_actions`` (TD3+BC with ``"sample"``).
        """
        if self._user_functions:
            return
        algorithm.check_state_value(self.value_actions)
        reduction, actions, n = self.critic_reduction, self.value_actions, self.num_action_samples

        def q_function(obs: Tensor, action: Tensor) -> Tensor:
            return algorithm.q_value(obs, action, reduction)

        def value_function(obs: Tensor) -> Tensor:
            return algorithm.state_value(obs, actions, n, reduction)

        self.__dict__.update(
            q_function=q_function, value_function=value_function, algorithm=algorithm
        )

    @staticmethod
    def value_scale(values: Tensor, rel_tol: float = 0.1, eps: float = 1e-6) -> Tensor:
        """The guarded denominator: ``|E V|``, or ``E|V|`` when ``|E V| < rel_tol * E|V|``, at least ``eps``.

        Examples:
            >>> ValueDistance.value_scale(torch.tensor([-2.0, -4.0]))  # same sign: |mean|
            tensor(3.)
            >>> ValueDistance.value_scale(torch.tensor([-1.0, 1.0]))   # mean 0: mean magnitude
            tensor(1.)
            >>> ValueDistance.value_scale(torch.zeros(3))
            tensor(1.0000e-06)
        """
        mean = values.mean().abs()
        magnitude = values.abs().mean()
        scale = torch.where(mean >= rel_tol * magnitude, mean, magnitude)
        return scale.clamp_min(eps)

    @torch.no_grad()
    def embed(self, transitions: TensorDictBase) -> tuple[Tensor, Tensor]:
        """``(Q(s, a_i) [N, 1], V(s') / scale [N, 1])`` for the set ``transitions``."""
        q, v = self._values(transitions)
        return q.unsqueeze(-1), (v / self.value_scale(v, self.rel_tol, self.eps)).unsqueeze(-1)

    @torch.no_grad()
    def embed_sets(
        self, candidates: TensorDictBase, online: TensorDictBase
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Both sets' embeddings from one pass of the critics and the policy; each set keeps its own E[V]."""
        q, v = self._values(torch.cat([candidates, online.to(candidates.device)]))
        b = candidates.shape[0]
        out = []
        for part in (slice(0, b), slice(b, None)):
            vs = v[part]
            out.append(
                (
                    q[part].unsqueeze(-1),
                    (vs / self.value_scale(vs, self.rel_tol, self.eps)).unsqueeze(-1),
                )
            )
        return out[0], out[1]

    def _values(self, transitions: TensorDictBase) -> tuple[Tensor, Tensor]:
        """``Q(s, a_i)`` and ``V(s')`` ``[N]`` of the rows of ``transitions``."""
        q_function, value_function = self.__dict__["q_function"], self.__dict__["value_function"]
        if q_function is None:
            raise RuntimeError(
                "ValueDistance is not bound to a critic: pass algorithm=..., or q_function and value_function, "
                "or use it through AgentLearner (which binds the agent's own algorithm)."
            )
        state, action, nxt = (_flat_features(transitions, key) for key in self.in_keys)
        return q_function(state, action).reshape(-1), value_function(nxt).reshape(-1)

    def extra_repr(self) -> str:
        return (
            f"critic_reduction={self.critic_reduction!r}, value_actions={self.value_actions!r}, "
            f"bound={self.__dict__['q_function'] is not None}"
        )
