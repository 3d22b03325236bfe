"""The protocols of a sampler's learned parts: fitted statistics, and parameters trained by the agent's learner.

OTC's embedding distance ``d_e`` learns a transition CVAE (paper sections 3.3 and 3.5), and the Balanced Replay
baseline learns a density-ratio network (Lee et al., CoRL 2021, section 4.1). Neither trains itself: the parts are
functions of their inputs and of their parameters, and :class:`~torchrl_otc.trainers.AgentLearner` owns their
optimisers, random streams and schedules (one agent's learner owns every trainable part of that agent, paper
section 3.1). This module declares what the learner asks of a part:

* :class:`Fittable`: ``fit(data)`` sets statistics from the agent's offline data ``B_i^0`` (input
  standardisation); no gradient, no randomness.
* :class:`TrainablePart`: ``fit``, ``pretrain`` (before the first deployment), ``update`` (once per update of the
  agent), ``state_dict`` / ``load_state_dict`` (the training state a checkpoint carries).

The learner checks these protocols; a part that has ``update`` or ``pretrain`` but not the whole
:class:`TrainablePart` protocol is refused with an error naming what is missing (:func:`missing_methods`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor

__all__ = ["Fittable", "TrainablePart", "TRAINABLE_METHODS", "missing_methods", "flat_transitions"]

TRAINABLE_METHODS: tuple[str, ...] = ("fit", "pretrain", "update", "state_dict", "load_state_dict")
"""The methods of :class:`TrainablePart`, in the order the learner uses them."""


@runtime_checkable
class Fittable(Protocol):
    """A part whose statistics are fitted once on the agent's offline data (Algorithm 1, before deployment 1).

    :meth:`~torchrl_otc.trainers.AgentLearner.add_offline` calls ``fit`` on the sampler and on its distance when
    they follow this protocol, with the agent's own offline data only (decentralised: no statistic is shared).

    Examples:
        >>> from torchrl_otc.modules.distances import FeatureDistance
        >>> isinstance(FeatureDistance(), Fittable), isinstance(object(), Fittable)
        (True, False)
    """

    def fit(self, data: TensorDictBase) -> Any:
        """Sets statistics (e.g. means and standard deviations) from offline transitions ``data``."""
        ...


@runtime_checkable
class TrainablePart(Protocol):
    """What :class:`~torchrl_otc.trainers.AgentLearner` calls to train a learned part of its sampler.

    The learner holds one :class:`TrainablePart` per learned part: for the package's own parts (``d_e``'s CVAE in
    :class:`~torchrl_otc.EmbeddingDistance`, the density-ratio network of
    :class:`~torchrl_otc.BalancedReplaySampler`) a trainer of the learner's layer
    (:mod:`torchrl_otc.trainers.parts`) that owns the optimiser, the random stream and the counters; a user's
    part may implement the protocol itself. The learner calls, in this order:

    1. :meth:`fit` with the agent's offline data ``B_i^0`` (:meth:`~torchrl_otc.trainers.AgentLearner.add_offline`);
    2. :meth:`pretrain` with the merged data before the first deployment
       (:meth:`~torchrl_otc.trainers.AgentLearner.pretrain_sampler`);
    3. :meth:`update` once per update of the agent, with the agent's training batch;
    4. :meth:`state_dict` / :meth:`load_state_dict` when it is checkpointed and resumed.

    A part's training draws its randomness from its own stream, never the agent's, the buffers' or the caller's:
    adding or removing a learned part leaves the agent's own numbers unchanged.

    Examples:
        >>> class Counter:  # a part that counts the rows it is trained on
        ...     def __init__(self):
        ...         self.rows = 0
        ...     def fit(self, data):
        ...         return self
        ...     def pretrain(self, data, num_updates, *, progress=False):
        ...         return {}
        ...     def update(self, batch):
        ...         self.rows += batch.shape[0]
        ...         return {"rows": float(self.rows)}
        ...     def state_dict(self):
        ...         return {"rows": self.rows}
        ...     def load_state_dict(self, state_dict):
        ...         self.rows = state_dict["rows"]
        >>> isinstance(Counter(), TrainablePart)
        True
    """

    def fit(self, data: TensorDictBase) -> Any:
        """Sets the part's statistics from the agent's offline transitions (no gradient, no randomness)."""
        ...

    def pretrain(
        self, data: TensorDictBase, num_updates: int, *, progress: bool = False
    ) -> Mapping[str, float]:
        """Trains on ``data`` (the offline data) for ``num_updates`` steps; returns the last step's metrics."""
        ...

    def update(self, batch: TensorDictBase) -> Mapping[str, float | Tensor]:
        """One training call with the agent's batch; returns metrics (``{}`` when the call does not train)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The training state to checkpoint (optimiser moments, random stream, counters)."""
        ...

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> Any:
        """Restores what :meth:`state_dict` returned (copies: nothing is shared with the state's owner)."""
        ...


def missing_methods(part: Any) -> list[str]:
    """The methods of :class:`TrainablePart` that ``part`` lacks (for error messages).

    Examples:
        >>> class UpdateOnly:
        ...     def update(self, batch):
        ...         return {}
        >>> missing_methods(UpdateOnly())
        ['fit', 'pretrain', 'state_dict', 'load_state_dict']
    """
    return [name for name in TRAINABLE_METHODS if not callable(getattr(part, name, None))]


def flat_transitions(data: TensorDictBase, keys: Sequence[NestedKey], who: str) -> TensorDictBase:
    """``data``'s ``keys`` with the batch dimensions flattened into one; refuses missing keys and empty data.

    The shape in which a part is fitted or pretrained on a buffer's content (``buffer[:]``, any batch shape).

    Args:
        data: transitions.
        keys: the keys the part reads.
        who: names the caller in the errors.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> td = TensorDict({"observation": torch.zeros(2, 3, 4), "reward": torch.zeros(2, 3)}, [2, 3])
        >>> flat_transitions(td, ["observation"], "example").batch_size
        torch.Size([6])
    """
    missing = [k for k in keys if k not in data.keys(include_nested=True)]
    if missing:
        raise KeyError(
            f"{who}: missing keys {missing}; the data holds "
            f"{sorted(map(str, data.keys(include_nested=True, leaves_only=True)))}."
        )
    flat = data.select(*keys).reshape(-1)
    if flat.numel() == 0:
        raise ValueError(f"{who} needs at least one transition; got none.")
    return flat
