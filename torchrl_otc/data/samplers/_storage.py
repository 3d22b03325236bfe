"""Storage helpers shared by the samplers of this package (private: no stable API).

What every sampler here needs from a TorchRL storage: checks (a :class:`~torchrl.data.TensorStorage` holding
TensorDicts, no prefetching, the keys it reads), reads (a column with the storage dimensions flattened, a few
columns of some rows), index conversion (flat indices to the storage's own, ``ndim > 1`` included), the online /
offline rows of a storage marked by a boolean column, and the write hooks that tell a sampler its caches are
stale (the writer calls ``mark_update`` / ``extend`` on the storage's attached entities).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.storages import Storage, TensorStorage
from torchrl.data.replay_buffers.utils import unravel_index

__all__ = [
    "OnlineRowIndex",
    "OnlineRowsSampler",
    "WriteTracker",
    "backing",
    "check_keys",
    "check_no_prefetch",
    "check_online_columns",
    "check_tensor_storage",
    "flat_column",
    "gather",
    "keys_present",
    "storage_device",
    "to_storage_index",
]


def check_tensor_storage(storage: Any, who: str) -> TensorStorage:
    """``storage`` if it is a :class:`~torchrl.data.TensorStorage` (readable by index as TensorDicts); else a
    :class:`TypeError` saying how to build the buffer."""
    if not isinstance(storage, TensorStorage):
        raise TypeError(
            f"{who} needs a TensorStorage (LazyTensorStorage, LazyMemmapStorage, TensorStorage) that can be "
            f"read by index as TensorDicts; got {type(storage).__name__}. Build the replay buffer with "
            f"storage=LazyTensorStorage(capacity) or LazyMemmapStorage(capacity)."
        )
    return storage


def backing(storage: TensorStorage) -> TensorDictBase:
    """The TensorDict a tensor storage writes into (a :class:`TypeError` for other contents)."""
    content = storage._storage
    if not isinstance(content, TensorDictBase):
        raise TypeError(
            f"OTC samplers read transitions as TensorDicts; this storage holds {type(content).__name__}. "
            f"Write TensorDicts (TorchRL's transition layout) into the buffer."
        )
    return content


def flat_column(storage: TensorStorage, key: NestedKey) -> Tensor:
    """The column ``key`` of a storage with its storage dimensions flattened into one (a view when possible)."""
    value = backing(storage).get(key)
    if storage.ndim > 1:
        value = value.flatten(0, storage.ndim - 1)
    return value


def gather(storage: TensorStorage, flat_index: Tensor, keys: Sequence[NestedKey]) -> TensorDict:
    """Reads ``keys`` of the rows ``flat_index`` straight from the storage's tensors (no full-row gather).

    :func:`torch.index_select` gathers the same rows as indexing, about twice as fast on the CPU for a few hundred
    rows (``benchmarks/bench_sampler.py``).
    """
    return TensorDict(
        {key: torch.index_select(flat_column(storage, key), 0, flat_index) for key in keys},
        batch_size=[flat_index.shape[0]],
        device=flat_index.device,
    )


def keys_present(storage: TensorStorage) -> list[str]:
    """The storage's leaf keys, sorted, for error messages."""
    return sorted(map(str, backing(storage).keys(include_nested=True, leaves_only=True)))


def check_keys(storage: TensorStorage, keys: Sequence[NestedKey], who: str, where: str) -> None:
    """A :class:`KeyError` naming the first missing key, all missing keys and the keys present."""
    present = backing(storage).keys(include_nested=True)
    missing = [key for key in keys if key not in present]
    if missing:
        raise KeyError(
            f"{who}: the {where} has no key {missing[0]!r} (missing: {missing}); keys present: "
            f"{keys_present(storage)}. Write these keys into the buffer or configure the distance's keys."
        )


def to_storage_index(storage: Storage, flat_index: Tensor) -> Tensor | tuple[Tensor, ...]:
    """Flat row indices as the storage's own indices (a tuple of per-dimension indices when ``ndim > 1``)."""
    if storage.ndim > 1:
        return unravel_index(flat_index, storage.shape)
    return flat_index


def storage_device(storage: TensorStorage) -> torch.device:
    """Where the storage's tensors live (the CPU when the TensorDict has no device)."""
    return backing(storage).device or torch.device("cpu")


def check_no_prefetch(storage: Storage, who: str, stale: str) -> None:
    """Refuses buffers with ``prefetch > 0``: their batches would be drawn before new data and new priorities.

    Args:
        storage: the sampled storage.
        who: the sampler's name, for the message.
        stale: what a prefetched batch would miss, for the message (e.g. ``"before alpha adapts"``).
    """
    for buffer in getattr(storage, "_attached_entities", []):
        if getattr(buffer, "_prefetch", False):
            raise RuntimeError(
                f"{who} cannot be used with prefetch > 0: prefetched batches are drawn before new online data "
                f"is written and {stale}, so they would follow stale priorities. Build the replay buffer with "
                f"prefetch=None."
            )


def check_online_columns(
    storage: TensorStorage, online_key: NestedKey, deployment_key: NestedKey | None, who: str
) -> None:
    """A :class:`KeyError` saying which columns to write when the storage lacks the boolean column ``online_key``
    (or, when ``deployment_key`` is given, the integer column numbering the deployments)."""
    keys = backing(storage).keys(include_nested=True)
    needed = [online_key] + ([deployment_key] if deployment_key is not None else [])
    missing = [key for key in needed if key not in keys]
    if missing:
        raise KeyError(
            f"{who}: the storage has no column {missing[0]!r}; keys present: {keys_present(storage)}. "
            f"Write a boolean column {online_key!r} (True for online rows)"
            + (
                f" and an integer column {deployment_key!r} (the deployment of each row)"
                if deployment_key is not None
                else ""
            )
            + " with every transition."
        )


class OnlineRowIndex:
    """Flat indices of a storage's online and offline rows (its boolean column ``key``), cached.

    The cache holds until :meth:`invalidate` (the samplers call it from their write hooks) or until the storage
    or its length changes.
    """

    def __init__(self) -> None:
        self._cache: tuple[tuple, Tensor, Tensor] | None = None

    def invalidate(self) -> None:
        """Drops the cached rows."""
        self._cache = None

    def rows(
        self, storage: TensorStorage, key: NestedKey, latest_key: NestedKey | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(online rows, offline rows)`` as flat indices.

        With ``latest_key`` (a column numbering the deployments), the online rows are only those of the latest
        deployment (the largest value of that column among the online rows).
        """
        n = len(storage)
        cache_key = (id(storage), n, key, latest_key)
        if self._cache is None or self._cache[0] != cache_key:
            flags = flat_column(storage, key)[:n].reshape(n, -1).any(-1)
            online = flags.nonzero().squeeze(-1)
            if latest_key is not None and online.numel():
                deployment = flat_column(storage, latest_key)[:n].reshape(n, -1)[:, 0][online]
                online = online[deployment == deployment.max()]
            self._cache = (cache_key, online, (~flags).nonzero().squeeze(-1))
        return self._cache[1], self._cache[2]


class _ReplacementKeyword(type(Sampler)):
    """TorchRL's ``replacement=`` constructor keyword, with its meaning for the samplers of this package.

    TorchRL's sampler metaclass pops ``replacement`` before the constructor runs and, for ``replacement=False``,
    swaps in a registered without-replacement class or raises a :class:`TypeError`. The samplers here redraw their
    batch from fresh candidates at every call, so "without replacement" can only mean *within a batch* (no
    candidate twice in one batch), not TorchRL's *within an epoch*. A class whose constructor has such an option names it in
    ``_replacement_argument`` and receives ``replacement`` under that name; the others draw with replacement only
    (as TorchRL's :class:`~torchrl.data.PrioritizedSampler`) and refuse ``replacement=False`` with a line that
    says so. ``replacement=True`` is always accepted.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if "replacement" in kwargs:
            replacement = bool(kwargs.pop("replacement"))
            argument = getattr(cls, "_replacement_argument", None)
            if argument is not None:
                if argument in kwargs:
                    raise TypeError(
                        f"{cls.__name__}: give replacement= or {argument}=, not both (they are the same option)."
                    )
                kwargs[argument] = replacement
            elif not replacement:
                raise TypeError(
                    f"{cls.__name__} draws every batch with replacement (like TorchRL's PrioritizedSampler it has no "
                    f"without-replacement variant); drop replacement=False."
                )
        return super().__call__(*args, **kwargs)


class OnlineRowsSampler(Sampler, metaclass=_ReplacementKeyword):
    """A sampler keeping an :class:`OnlineRowIndex` of its storage (``self._rows``), dropped at every write.

    Accepts TorchRL's ``replacement=`` keyword (see :class:`_ReplacementKeyword`).
    """

    _rows: OnlineRowIndex
    #: The constructor argument that ``replacement=`` sets (``None``: with replacement only).
    _replacement_argument: str | None = None
    #: The prefix of the keys this sampler writes into ``info`` (and so into sampled batches), e.g. ``"otc_"``
    #: for ``otc_uniform``; one per sampler, so two samplers' keys never mean different things under one name.
    info_prefix: str = ""
    #: Counts the writes to the storage this sampler draws from (every write reaches one of the hooks below):
    #: what the sampler computed from the storage's content is stale once it moves.
    _writes: int = 0

    def extend(self, index: Any) -> None:
        self._rows.invalidate()
        self._writes += 1

    def add(self, index: Any) -> None:
        self._rows.invalidate()
        self._writes += 1

    def mark_update(self, index: Any, *, storage: Storage | None = None) -> None:
        self._rows.invalidate()
        self._writes += 1


class WriteTracker:
    """Attached to a storage (``storage.attach(tracker)``): the writer calls :meth:`mark_update` on every write.

    :attr:`version` counts the writes; a sampler passes it to its distance as the online set's version, so that
    per-row caches are dropped whenever the online buffer is written to (even with the same number of rows).
    """

    def __init__(self) -> None:
        self.version = 0

    def mark_update(self, index: Any, *, storage: Storage | None = None) -> None:
        """Counts one write."""
        self.version += 1
