"""Samplers for online tuning: Online Transition Correction (OTC) and the baselines it is compared with.

* :class:`OTCSampler` implements Algorithm 1, lines 10-14 of Jiang & Lu, "Online Tuning for Offline
  Decentralized Multi-Agent Reinforcement Learning" (AAAI 2023): rank-based prioritised sampling of the merged
  offline + online data by how well each transition agrees with its best-matched online transition.
* :class:`OnlineOnlySampler` samples uniformly from the online rows of the merged data.
* :class:`MixSampler` draws a fixed share of every batch from the online rows and the rest from the offline rows
  (the matched-mix control of OTC: the same online share, without OTC's choice of offline rows).
* Uniform sampling from the merged data is TorchRL's :class:`~torchrl.data.RandomSampler`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.data import ReplayBuffer
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.storages import Storage, TensorStorage
from torchrl.data.replay_buffers.utils import unravel_index

from torchrl_otc.modules.distances import (
    FeatureDistance,
    L1EmbeddingDistance,
    TransitionDistance,
    pairwise_l1,
)

__all__ = [
    "OTCSampler",
    "OnlineOnlySampler",
    "MixSampler",
    "rank_priorities",
    "argmin_random_ties",
]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1


# --------------------------------------------------------------------------------------------------------------
# Pure functions (the math of eq. 1 and eq. 3), exposed for tests and for users who build their own samplers.
# --------------------------------------------------------------------------------------------------------------
def argmin_random_ties(
    distances: Tensor, generator: torch.Generator | None = None, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Row-wise argmin with ties broken uniformly at random (eq. 1: "if there is more than one best-matched
    transition, we uniformly select one").

    Ties are rare with continuous features, so the random choice is only made for the rows that have them.

    Args:
        distances: ``[B, D]`` non-negative distances (``inf`` allowed).
        generator: the random generator for the tie-breaking.
        weights: ``[D]`` multiplicities of the columns (a column standing for a transition drawn several times);
            tied columns are chosen in proportion to them, which is the uniform choice among the copies.

    Returns:
        ``(index [B], value [B])``: the chosen column and its distance.

    Examples:
        >>> import torch
        >>> argmin_random_ties(torch.tensor([[3.0, 1.0, 2.0]]))
        (tensor([1]), tensor([1.]))
    """
    values, index = distances.min(-1)
    counts = (distances == values.unsqueeze(-1)).sum(-1)
    return _break_ties(distances, values, index, counts, generator, weights), values


def _break_ties(
    distances: Tensor,
    values: Tensor,
    index: Tensor,
    counts: Tensor,
    generator: torch.Generator | None,
    weights: Tensor | None = None,
) -> Tensor:
    """Replaces ``index`` by a (weighted) uniform choice among the minima in the rows that have more than one."""
    tied = (counts > 1).nonzero().squeeze(-1)
    if tied.numel():
        is_min = (distances[tied] == values[tied].unsqueeze(-1)).float()
        if weights is not None:
            is_min = is_min * weights.to(is_min)
        index = index.clone()
        index[tied] = torch.multinomial(is_min, 1, generator=generator).squeeze(-1)
    return index


def rank_priorities(distances: Tensor, alpha: float | Tensor) -> tuple[Tensor, Tensor]:
    """Rank-based priorities of eq. (3): ``P(j) = p_j^alpha / sum_m p_m^alpha`` with ``p_j = 1 / rank(j)``.

    Rank 1 is the smallest distance. Tied distances share their ranks fairly: a group of ``g`` equal distances
    that occupies ranks ``r .. r + g - 1`` gives each member the mean of ``(1/r)^alpha .. (1/(r+g-1))^alpha``.
    This keeps the group's total probability what any ordering of the ties would give, and gives equal
    distances equal probability (the paper's f-function is a function of the distance alone). Without ties this
    is exactly eq. (3).

    Args:
        distances: ``[B]`` next-state distances ``d(s', s'*)`` (``inf`` allowed: ranked last).
        alpha: the exponent ``alpha >= 0``; ``0`` gives uniform probabilities.

    Returns:
        ``(probabilities [B], rank [B])``; ``rank`` is the competition rank (ties share the smallest rank).

    Examples:
        >>> import torch
        >>> probs, rank = rank_priorities(torch.tensor([0.3, 0.1, 0.2]), alpha=1.0)
        >>> rank
        tensor([3, 1, 2])
        >>> torch.allclose(probs, torch.tensor([1 / 3, 1.0, 1 / 2]) / (1 + 1 / 2 + 1 / 3))
        True
    """
    n = distances.shape[0]
    device = distances.device
    ordered, order = torch.sort(distances, stable=True)
    positions = torch.arange(1, n + 1, device=device, dtype=torch.float64)
    base = positions.pow(-torch.as_tensor(alpha, dtype=torch.float64, device=device))
    rank = torch.empty(n, dtype=torch.long, device=device)
    priority = torch.empty_like(base)
    new_group = torch.ones(n, dtype=torch.bool, device=device)
    if n > 1:
        new_group[1:] = ordered[1:] != ordered[:-1]
    if bool(new_group.all()):  # no ties (the usual case with continuous features)
        priority[order] = base
        rank[order] = positions.long()
    else:
        group = new_group.cumsum(0) - 1
        n_groups = int(group[-1]) + 1
        group_sum = torch.zeros(n_groups, dtype=torch.float64, device=device)
        group_sum.scatter_add_(0, group, base)
        group_count = torch.bincount(group, minlength=n_groups).to(torch.float64)
        priority[order] = (group_sum / group_count)[group]
        rank[order] = positions.long()[new_group][group]
    return (priority / priority.sum()).to(torch.float32), rank


# --------------------------------------------------------------------------------------------------------------
# Storage access
# --------------------------------------------------------------------------------------------------------------
def _check_tensor_storage(storage: Any, who: str) -> TensorStorage:
    if not isinstance(storage, TensorStorage):
        raise TypeError(
            f"{who} needs a TensorStorage (LazyTensorStorage, LazyMemmapStorage, TensorStorage) that can be "
            f"read by index as TensorDicts; got {type(storage).__name__}. Build the replay buffer with "
            f"storage=LazyTensorStorage(capacity) or LazyMemmapStorage(capacity)."
        )
    return storage


def _backing(storage: TensorStorage) -> TensorDictBase:
    backing = storage._storage
    if not isinstance(backing, TensorDictBase):
        raise TypeError(
            f"OTC samplers read transitions as TensorDicts; this storage holds {type(backing).__name__}. "
            f"Write TensorDicts (TorchRL's transition layout) into the buffer."
        )
    return backing


def _flat_column(storage: TensorStorage, key: NestedKey) -> Tensor:
    """The column ``key`` of a storage with its storage dimensions flattened into one (a view when possible)."""
    value = _backing(storage).get(key)
    if storage.ndim > 1:
        value = value.flatten(0, storage.ndim - 1)
    return value


def _gather(storage: TensorStorage, flat_index: Tensor, keys: Sequence[NestedKey]) -> TensorDict:
    """Reads ``keys`` of the rows ``flat_index`` straight from the storage's tensors (no full-row gather)."""
    return TensorDict(
        {key: _flat_column(storage, key)[flat_index] for key in keys},
        batch_size=[flat_index.shape[0]],
        device=flat_index.device,
    )


def _keys_present(storage: TensorStorage) -> list[str]:
    return sorted(map(str, _backing(storage).keys(include_nested=True, leaves_only=True)))


def _check_keys(storage: TensorStorage, keys: Sequence[NestedKey], where: str) -> None:
    present = _backing(storage).keys(include_nested=True)
    missing = [key for key in keys if key not in present]
    if missing:
        raise KeyError(
            f"OTCSampler: the {where} has no key {missing[0]!r} (missing: {missing}); keys present: "
            f"{_keys_present(storage)}. Write these keys into the buffer or configure the distance's keys."
        )


def _to_storage_index(storage: Storage, flat_index: Tensor) -> Tensor | tuple[Tensor, ...]:
    if storage.ndim > 1:
        return unravel_index(flat_index, storage.shape)
    return flat_index


def _storage_device(storage: TensorStorage) -> torch.device:
    return _backing(storage).device or torch.device("cpu")


def _check_no_prefetch(storage: Storage, who: str) -> None:
    for buffer in getattr(storage, "_attached_entities", []):
        if getattr(buffer, "_prefetch", False):
            raise RuntimeError(
                f"{who} cannot be used with prefetch > 0: prefetched batches are drawn before new online data "
                f"is written and before alpha adapts, so they would follow stale priorities. Build the "
                f"replay buffer with prefetch=None (the OTC step costs about a millisecond)."
            )


class _OnlineRowIndex:
    """Flat indices of a storage's online and offline rows (its boolean column ``key``), cached.

    The cache holds until :meth:`invalidate` (the samplers call it from their write hooks) or until the storage
    or its length changes.
    """

    def __init__(self) -> None:
        self._cache: tuple[tuple, Tensor, Tensor] | None = None

    def invalidate(self) -> None:
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
            flags = _flat_column(storage, key)[:n].reshape(n, -1).any(-1)
            online = flags.nonzero().squeeze(-1)
            if latest_key is not None and online.numel():
                deployment = _flat_column(storage, latest_key)[:n].reshape(n, -1)[:, 0][online]
                online = online[deployment == deployment.max()]
            self._cache = (cache_key, online, (~flags).nonzero().squeeze(-1))
        return self._cache[1], self._cache[2]


class _OnlineRowsSampler(Sampler):
    """A sampler keeping an :class:`_OnlineRowIndex` of its storage (``self._rows``), dropped at every write."""

    _rows: _OnlineRowIndex

    def extend(self, index: Any) -> None:
        self._rows.invalidate()

    def add(self, index: Any) -> None:
        self._rows.invalidate()

    def mark_update(self, index: Any, *, storage: Storage | None = None) -> None:
        self._rows.invalidate()


class _WriteTracker:
    """Attached to the online buffer's storage: the writer calls :meth:`mark_update` on every write."""

    def __init__(self) -> None:
        self.version = 0

    def mark_update(self, index: Any, *, storage: Storage | None = None) -> None:
        self.version += 1


# --------------------------------------------------------------------------------------------------------------
# OTCSampler
# --------------------------------------------------------------------------------------------------------------
class OTCSampler(Sampler):
    """Online Transition Correction: samples merged offline + online data by agreement with online dynamics.

    Paper: Jiang & Lu, "Online Tuning for Offline Decentralized Multi-Agent Reinforcement Learning", AAAI 2023,
    section 3 and Algorithm 1 (lines 10-14). On every :meth:`sample` call:

    1. draw ``|B|`` candidate transitions uniformly from the storage this sampler is attached to (the merged
       data ``B_i^k``) and ``|D|`` transitions from ``online_buffer`` (the latest deployment's data ``D_i^k``;
       without replacement, or with replacement when it holds fewer than ``|D|``);
    2. for every candidate find the best-matched online transition by the state-action distance (eq. 1), ties
       broken uniformly at random;
    3. rank the candidates by the next-state distance to their match (rank 1 = smallest), priority
       ``p_j = 1 / rank(j)``, and draw the batch (with replacement) with

    .. math::
        P(j) = \\frac{p_j^{\\alpha}}{\\sum_m p_m^{\\alpha}} \\qquad (3)

    With an empty online buffer (offline training) it samples uniformly and says so in ``info``.

    **Adaptive alpha** (eq. 4). Call :meth:`adapt_alpha` once per deployment, after the deployment's data has
    been written to both buffers. It estimates ``D_k = E_{(s, a_i, s') ~ B^k} d(s', s'*)`` (``s'*`` the next
    state of the best match in the whole online buffer) and sets ``alpha_k = alpha_{k-1} * D_k / D_{k-1}``
    (unchanged at the first call), clamped to ``alpha_range``. ``adaptive_alpha=False`` keeps alpha fixed
    while still recording ``D_k``. :attr:`alpha_history` holds one record per call.

    **Two readings the paper leaves open** are options:

    * what ``d(s', s'*)`` compares: an option of the distance (see :class:`~torchrl_otc.FeatureDistance`'s
      ``next_state``: displacements ``s' - s`` by default, the raw next states as the paper's text reads);
    * ``self_match``: whether a candidate that *is* an online transition may match its own copy among the
      ``|D|`` online rows (distance 0, so online rows take the top ranks). The paper's Algorithm 1 allows it
      (``B`` is drawn from ``B^k``, which contains ``D^k``), and it is the default. ``self_match=False``
      needs a per-transition id written to both buffers under ``id_key`` and forbids matching equal ids.

    ``info`` (copied into every :class:`~torchrl.data.TensorDictReplayBuffer` batch) holds, per row,
    ``otc_distance`` (next-state distance to the match), ``otc_match_distance`` (state-action distance),
    ``otc_rank``, ``otc_prob`` (probability of the candidate in one draw), ``otc_match_index`` (row of the
    match in the online storage); and per batch ``otc_alpha``, ``otc_uniform`` and, when the merged storage
    marks online rows under ``online_key``, ``otc_online_share``. Importance weights are only added under
    ``priority_weight`` when ``importance_weights=True`` (TorchRL's losses weight by that key).

    Args:
        online_buffer: the replay buffer holding the current deployment's online transitions ``D_i^k``. Its
            storage must be a :class:`~torchrl.data.TensorStorage`.
        alpha: the initial exponent ``alpha_i^0 >= 0`` (section 4.3 uses 1.0). ``0`` is uniform over the
            candidates.

    Keyword Args:
        distance: a :class:`~torchrl_otc.TransitionDistance`. Defaults to :class:`~torchrl_otc.FeatureDistance`
            (standardised L1 on ``observation``, ``action``, ``("next", "observation")``). Fit its
            statistics on offline data (``distance.fit(offline_td)``) before online tuning.
        num_candidates: ``|B|``, candidates per call (Table 3: 512).
        num_online: ``|D|``, online transitions per call (Table 3: 2000).
        adaptive_alpha: whether :meth:`adapt_alpha` changes alpha (eq. 4). Defaults to ``True``.
        alpha_range: ``(min, max)`` clamp of the adapted alpha. Defaults to ``(0.1, 10.0)``: below 0.1 the
            correction has all but vanished, above 10 the batch is drawn almost only from the top-ranked
            candidate; one noisy ``D_k`` estimate must not push alpha to either end for good.
        self_match: see above. Defaults to ``True`` (the paper's procedure).
        online_key: key of a boolean column of the merged storage marking online rows; when present, ``info``
            reports ``otc_online_share``. Defaults to ``"is_online"``. ``None`` disables it.
        id_key: key of an integer id written with every transition into both buffers, used when
            ``self_match=False``. Defaults to ``"transition_id"``.
        with_replacement: draw the batch from the candidates with replacement (default, as in PER). Without
            replacement needs ``num_candidates >= batch_size``.
        importance_weights: add PER-style importance weights ``(|B| P(j))^{-beta} / max`` under
            ``"priority_weight"``. Defaults to ``False``.
        beta: exponent of the importance weights. Defaults to ``0.4``.
        alpha_samples: candidates used by :meth:`adapt_alpha` to estimate ``D_k``. Defaults to ``4096``.
        compile: compile the pairwise distance step with :func:`torch.compile` (for
            :class:`~torchrl_otc.L1EmbeddingDistance` distances). Defaults to ``False``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
        >>> from torchrl_otc import OTCSampler
        >>> def transitions(n, shift):
        ...     obs, act = torch.randn(n, 3), torch.rand(n, 1)
        ...     return TensorDict({"observation": obs, "action": act,
        ...                        ("next", "observation"): obs + act + shift}, batch_size=[n])
        >>> online = TensorDictReplayBuffer(storage=LazyTensorStorage(1_000))
        >>> sampler = OTCSampler(online, alpha=1.0, num_candidates=64, num_online=100)
        >>> merged = TensorDictReplayBuffer(storage=LazyTensorStorage(10_000), sampler=sampler, batch_size=16)
        >>> offline = transitions(5_000, shift=0.5)
        >>> _ = merged.extend(offline)
        >>> sampler.distance.fit(offline)
        FeatureDistance(next_state='displacement', fitted=True)
        >>> merged.sample()["otc_uniform"].all().item()  # no online data yet: uniform
        True
        >>> d1 = transitions(100, shift=0.0)
        >>> _ = online.extend(d1); _ = merged.extend(d1)
        >>> batch = merged.sample()
        >>> batch["otc_prob"].shape, bool(batch["otc_uniform"].any())
        (torch.Size([16]), False)
    """

    def __init__(
        self,
        online_buffer: ReplayBuffer,
        alpha: float = 1.0,
        *,
        distance: TransitionDistance | None = None,
        num_candidates: int = 512,
        num_online: int = 2000,
        adaptive_alpha: bool = True,
        alpha_range: tuple[float, float] = (0.1, 10.0),
        self_match: bool = True,
        online_key: NestedKey | None = "is_online",
        id_key: NestedKey = "transition_id",
        with_replacement: bool = True,
        importance_weights: bool = False,
        beta: float = 0.4,
        alpha_samples: int = 4096,
        compile: bool = False,
    ) -> None:
        if not isinstance(online_buffer, ReplayBuffer):
            raise TypeError(
                f"OTCSampler's first argument is the online replay buffer (a torchrl ReplayBuffer holding "
                f"D_i^k); got {type(online_buffer).__name__}."
            )
        _check_tensor_storage(online_buffer._storage, "OTCSampler (online buffer)")
        alpha = float(alpha)
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0; got {alpha}.")
        lo, hi = (float(a) for a in alpha_range)
        if not (0 <= lo <= hi and math.isfinite(hi)):
            raise ValueError(
                f"alpha_range must be (min, max) with 0 <= min <= max < inf; got {alpha_range}."
            )
        for name, value in (
            ("num_candidates", num_candidates),
            ("num_online", num_online),
            ("alpha_samples", alpha_samples),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}.")
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0; got {beta}.")
        if distance is None:
            distance = FeatureDistance()
        if not isinstance(distance, TransitionDistance):
            raise TypeError(
                f"distance must follow the TransitionDistance protocol (in_keys, state_action_distance, "
                f"next_state_distance); got {type(distance).__name__}."
            )
        self.online_buffer = online_buffer
        self.distance = distance
        self.alpha0 = alpha
        self.alpha = alpha
        self.num_candidates = num_candidates
        self.num_online = num_online
        self.adaptive_alpha = bool(adaptive_alpha)
        self.alpha_range = (lo, hi)
        self.self_match = bool(self_match)
        self.online_key = online_key
        self.id_key = id_key
        self.with_replacement = bool(with_replacement)
        self.importance_weights = bool(importance_weights)
        self.beta = float(beta)
        self.alpha_samples = alpha_samples
        self.compile = bool(compile)
        self.alpha_history: list[dict[str, float]] = []
        self._compiled_pairwise = None
        # Online embeddings are computed once per online buffer content and distance version.
        self._online_tracker = _WriteTracker()
        online_buffer._storage.attach(self._online_tracker)
        self._online_cache: tuple[tuple, Tensor, Tensor] | None = None
        self._last_distance_version: int | None = None

    # ---------------------------------------------------------------- helpers
    @property
    def _online_storage(self) -> TensorStorage:
        return self.online_buffer._storage

    def _keys(self) -> list[NestedKey]:
        keys = list(self.distance.in_keys)
        if not self.self_match and self.id_key not in keys:
            keys.append(self.id_key)
        return keys

    def _validate(self, storage: TensorStorage) -> list[NestedKey]:
        keys = self._keys()
        _check_keys(storage, keys, "merged storage")
        _check_keys(self._online_storage, keys, "online buffer")
        merged_td, online_td = _backing(storage), _backing(self._online_storage)
        for key in keys:
            a = merged_td.get(key).shape[storage.ndim :]
            b = online_td.get(key).shape[self._online_storage.ndim :]
            if a != b:
                raise ValueError(
                    f"OTCSampler: feature shapes differ for key {key!r}: {tuple(a)} in the merged storage, "
                    f"{tuple(b)} in the online buffer. Both buffers must hold the same agent's transitions."
                )
        return keys

    def _match(
        self,
        candidates: TensorDictBase,
        online: TensorDictBase,
        weights: Tensor | None = None,
        online_embeddings: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
        """eq. (1): ``(match [B], its state-action distance [B], next-state embeddings or None)``."""
        ids = None
        if not self.self_match:
            ids = (candidates.get(self.id_key).reshape(-1), online.get(self.id_key).reshape(-1))
        if isinstance(self.distance, L1EmbeddingDistance):
            if online_embeddings is None:
                # one forward pass for the |B| + |D| rows (a learned distance's networks run once)
                (sa_c, ns_c), (sa_o, ns_o) = self.distance.embed_sets(candidates, online)
            else:
                sa_c, ns_c = self.distance.embed(candidates)
                sa_o, ns_o = online_embeddings
            embeddings = (ns_c, ns_o)
            if self.compile:
                if self._compiled_pairwise is None:
                    self._compiled_pairwise = torch.compile(_l1_min, dynamic=False)
                sa, values, index, counts = self._compiled_pairwise(
                    sa_c, sa_o.t().contiguous(), *(ids or (None, None))
                )
                return (
                    _break_ties(sa, values, index, counts, self._rng, weights),
                    values,
                    embeddings,
                )
            sa = pairwise_l1(sa_c, sa_o)
        else:
            embeddings = None
            sa = self.distance.state_action_distance(candidates, online)
            expected = (candidates.shape[0], online.shape[0])
            if tuple(sa.shape) != expected:
                raise ValueError(
                    f"{type(self.distance).__name__}.state_action_distance returned shape "
                    f"{tuple(sa.shape)}; expected {expected} (candidates x online)."
                )
        if ids is not None:
            sa = sa.masked_fill(ids[0].unsqueeze(1) == ids[1].unsqueeze(0), float("inf"))
        index, values = argmin_random_ties(sa, self._rng, weights)
        return index, values, embeddings

    def _distances(
        self,
        candidates: TensorDictBase,
        online: TensorDictBase,
        weights: Tensor | None = None,
        online_embeddings: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(match [B], state-action distance of the match [B], next-state distance [B])``."""
        match, match_value, embeddings = self._match(candidates, online, weights, online_embeddings)
        if embeddings is not None:
            ns_c, ns_o = embeddings
            ns = (ns_c - ns_o[match]).abs().sum(-1)
        else:
            ns = self.distance.next_state_distance(candidates, online[match])
        if not self.self_match:
            # A candidate whose only possible matches were its own copies has no match: rank it last.
            ns = torch.where(torch.isinf(match_value), torch.full_like(ns, float("inf")), ns)
        return match, match_value, ns

    @torch.no_grad()
    def _online_embeddings(
        self, device: torch.device, *, force: bool = False
    ) -> tuple[Tensor, Tensor] | None:
        """Embeddings of every online row, recomputed only after a write to the online buffer or a new
        distance ``version`` (``None`` for distances that are not row-wise L1 embeddings).

        A learned distance that changes at every update (:class:`~torchrl_otc.EmbeddingDistance` trained once
        per update) would make the cache stale at every call; when the online buffer holds more than ``|D|``
        rows, embedding all of them per call costs more than embedding the ``|D|`` drawn rows, so the cache is
        only rebuilt when the distance's version has not moved since the previous call (``force`` rebuilds it
        anyway: :meth:`expected_distance` embeds the whole buffer).
        """
        distance = self.distance
        if not isinstance(distance, L1EmbeddingDistance) or not distance.rowwise_embedding:
            return None
        m = len(self._online_storage)
        key = (self._online_tracker.version, m, distance.version, str(device))
        version_moved = self._last_distance_version not in (None, distance.version)
        self._last_distance_version = distance.version
        if self._online_cache is None or self._online_cache[0] != key:
            if version_moved and m > self.num_online and not force:
                return None
            rows = torch.arange(m, device=_storage_device(self._online_storage))
            online = _gather(self._online_storage, rows, list(distance.in_keys)).to(device)
            self._online_cache = (key, *distance.embed(online))
        return self._online_cache[1], self._online_cache[2]

    @torch.no_grad()
    def score(
        self,
        candidates: TensorDictBase,
        online: TensorDictBase,
        online_weights: Tensor | None = None,
        *,
        online_embeddings: tuple[Tensor, Tensor] | None = None,
    ) -> TensorDict:
        """Scores candidate transitions against online transitions (Algorithm 1, lines 11-14).

        This is the deterministic core of :meth:`sample` (up to random tie-breaking), exposed so that the
        probabilities can be inspected or reused.

        Args:
            candidates: ``|B|`` transitions (a flat TensorDict holding the distance's ``in_keys``).
            online: ``|D|`` online transitions (same keys).
            online_weights: how many times each online row was drawn (``|D|`` draws from fewer rows are passed
                as the distinct rows and their counts: the same eq. 1 and tie-breaking, less work).
            online_embeddings: precomputed ``embed(online)`` of an :class:`~torchrl_otc.L1EmbeddingDistance`.

        Returns:
            A TensorDict of batch size ``[|B|]`` with ``match`` (row of ``online`` matched by eq. 1),
            ``match_distance`` (its state-action distance), ``distance`` (next-state distance ``d(s', s'*)``),
            ``rank`` (1 = smallest distance) and ``prob`` (eq. 3 with the current alpha).

        Examples:
            >>> import torch
            >>> from tensordict import TensorDict
            >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
            >>> sampler = OTCSampler(TensorDictReplayBuffer(storage=LazyTensorStorage(10)), alpha=1.0)
            >>> td = lambda s, a, s2: TensorDict({"observation": torch.tensor(s), "action": torch.tensor(a),
            ...     ("next", "observation"): torch.tensor(s2)}, batch_size=[len(s)])
            >>> cands = td([[0.0], [0.0], [5.0]], [[1.0], [1.0], [1.0]], [[1.0], [3.0], [6.2]])
            >>> online = td([[0.0], [5.0]], [[1.0], [1.0]], [[1.0], [6.0]])
            >>> scores = sampler.score(cands, online)
            >>> scores["match"], scores["rank"]
            (tensor([0, 0, 1]), tensor([1, 3, 2]))
        """
        match, match_value, ns = self._distances(
            candidates, online, online_weights, online_embeddings
        )
        probs, rank = rank_priorities(ns, self.alpha)
        return TensorDict(
            {
                "match": match,
                "match_distance": match_value,
                "distance": ns,
                "rank": rank,
                "prob": probs,
            },
            batch_size=[ns.shape[0]],
        )

    def _check_finite(self, ns: Tensor, match_value: Tensor, cand: Tensor) -> None:
        if self.self_match and bool(torch.isfinite(ns).all() & torch.isfinite(match_value).all()):
            return
        bad = torch.isnan(ns) | torch.isnan(match_value)
        bad |= torch.isinf(ns) & torch.isfinite(match_value)
        if self.self_match:
            bad |= torch.isinf(match_value)
        if bad.any():
            rows = cand[bad][:10].tolist()
            raise ValueError(
                f"OTCSampler: non-finite distances for {int(bad.sum())} candidate(s), storage rows {rows}"
                f"{' ...' if int(bad.sum()) > 10 else ''}. Check these transitions for NaN/inf values "
                f"and the distance's statistics (e.g. FeatureDistance.fit on data without NaNs)."
            )

    def _uniform(self, storage: TensorStorage, n: int, batch_size: int) -> tuple[Any, dict]:
        device = _storage_device(storage)
        flat = torch.randint(n, (batch_size,), generator=self._rng, device=device)
        info: dict[str, Any] = {
            "otc_uniform": torch.tensor(True),
            "otc_alpha": torch.tensor(self.alpha),
            "otc_prob": torch.full((batch_size,), 1.0 / n),
        }
        self._add_online_share(storage, flat, info)
        return _to_storage_index(storage, flat), info

    def _add_online_share(self, storage: TensorStorage, flat: Tensor, info: dict) -> None:
        if self.online_key is not None and self.online_key in _backing(storage).keys(
            include_nested=True
        ):
            flags = _flat_column(storage, self.online_key)[flat]
            info["otc_online_share"] = flags.float().mean()

    # ---------------------------------------------------------------- Sampler API
    def sample(self, storage: Storage, batch_size: int) -> tuple[Any, dict]:
        """Draws ``batch_size`` storage indices by eq. (3); see the class docstring for ``info``."""
        storage = _check_tensor_storage(storage, "OTCSampler")
        n = len(storage)
        if n == 0:
            raise RuntimeError(
                "Cannot sample from an empty storage: extend the buffer with offline data first."
            )
        _check_no_prefetch(storage, "OTCSampler")
        if not self.with_replacement and self.num_candidates < batch_size:
            raise ValueError(
                f"OTCSampler(with_replacement=False) draws the batch from {self.num_candidates} candidates, fewer "
                f"than batch_size={batch_size}: raise num_candidates or use with_replacement=True."
            )
        m = len(self._online_storage)
        if m == 0:
            return self._uniform(storage, n, batch_size)
        keys = self._validate(storage)
        device = _storage_device(storage)
        rng = self._rng
        cand = torch.randint(n, (self.num_candidates,), generator=rng, device=device)
        online_device = _storage_device(self._online_storage)
        multiplicity = None
        if m < self.num_online:
            # |D| draws with replacement, scored as the distinct rows and their counts (same eq. 1, less work)
            on = torch.randint(m, (self.num_online,), generator=rng, device=online_device)
            on, multiplicity = torch.unique(on, return_counts=True)
        else:
            on = torch.randperm(m, generator=rng, device=online_device)[: self.num_online]
        cand_td = _gather(storage, cand, keys)
        cached = self._online_embeddings(device)
        if cached is not None:  # only the id column is still read per call (self_match=False)
            id_keys = [k for k in keys if k == self.id_key and not self.self_match]
            online_td = _gather(self._online_storage, on, id_keys).to(device)
            embeddings = (cached[0][on.to(device)], cached[1][on.to(device)])
        else:
            online_td, embeddings = _gather(self._online_storage, on, keys).to(device), None
        scores = self.score(cand_td, online_td, multiplicity, online_embeddings=embeddings)
        self._check_finite(scores["distance"], scores["match_distance"], cand)
        probs = scores["prob"]
        draw = torch.multinomial(
            probs, batch_size, replacement=self.with_replacement, generator=rng
        )
        flat = cand[draw]
        info: dict[str, Any] = {
            "otc_distance": scores["distance"][draw],
            "otc_match_distance": scores["match_distance"][draw],
            "otc_rank": scores["rank"][draw],
            "otc_prob": probs[draw],
            "otc_match_index": _to_storage_index(
                self._online_storage, on[scores["match"][draw]].to(online_device)
            ),
            "otc_alpha": torch.tensor(self.alpha),
            "otc_uniform": torch.tensor(False),
        }
        if isinstance(info["otc_match_index"], tuple):
            info["otc_match_index"] = torch.stack(info["otc_match_index"], -1)
        self._add_online_share(storage, flat, info)
        if self.importance_weights:
            weights = (self.num_candidates * probs[draw]).pow(-self.beta)
            info["priority_weight"] = weights / weights.max()
        return _to_storage_index(storage, flat), info

    # ---------------------------------------------------------------- eq. (4)
    @torch.no_grad()
    def expected_distance(
        self, storage: Storage | ReplayBuffer, num_samples: int | None = None
    ) -> float:
        """Estimates ``D_k = E_{(s, a_i, s') ~ B^k} d(s', s'*)`` of eq. (4).

        ``num_samples`` transitions are drawn uniformly from the merged ``storage``; each is matched (eq. 1)
        against the *whole* online buffer and the mean next-state distance to the match is returned.

        Args:
            storage: the merged storage (or the merged replay buffer).
            num_samples: number of transitions; defaults to ``alpha_samples``.
        """
        if isinstance(storage, ReplayBuffer):
            storage = storage._storage
        storage = _check_tensor_storage(storage, "OTCSampler.expected_distance")
        n, m = len(storage), len(self._online_storage)
        if n == 0 or m == 0:
            raise RuntimeError(
                "expected_distance needs data in both the merged storage and the online buffer; write the "
                "deployment's transitions to both before calling adapt_alpha."
            )
        keys = self._validate(storage)
        device = _storage_device(storage)
        num_samples = num_samples or self.alpha_samples
        cand = torch.randint(n, (num_samples,), generator=self._rng, device=device)
        online_td = _gather(self._online_storage, torch.arange(m), keys).to(device)
        embeddings = self._online_embeddings(device, force=True)
        if embeddings is None and isinstance(self.distance, L1EmbeddingDistance):
            # a set-dependent embedding (ValueDistance's E[V]) is computed once, over the whole online buffer
            embeddings = self.distance.embed(online_td)
        total, count = 0.0, 0
        for chunk in cand.split(max(1, (1 << 22) // m)):
            cand_td = _gather(storage, chunk, keys)
            _, match_value, ns = self._distances(cand_td, online_td, online_embeddings=embeddings)
            self._check_finite(ns, match_value, chunk)
            finite = torch.isfinite(ns)
            total += float(ns[finite].double().sum())
            count += int(finite.sum())
        if count == 0:
            raise RuntimeError("expected_distance: no candidate had a valid match.")
        return total / count

    def adapt_alpha(self, storage: Storage | ReplayBuffer, num_samples: int | None = None) -> float:
        """Adapts alpha once per deployment by eq. (4) and returns the new alpha.

        .. math::
            \\alpha_i^k = \\alpha_i^{k-1} \\, \\mathbb{D}_i^k / \\mathbb{D}_i^{k-1}

        Call it after the deployment's transitions have been written to the online buffer and the merged
        buffer. The first call only records ``D_1`` (Algorithm 1 adapts from ``k > 1``). The result is clamped to
        ``alpha_range``; with ``adaptive_alpha=False`` alpha stays fixed. If ``D_{k-1}`` is zero, alpha is kept.

        Args:
            storage: the merged storage or replay buffer.
            num_samples: transitions used to estimate ``D_k`` (defaults to ``alpha_samples``).

        Examples:
            >>> import torch
            >>> from tensordict import TensorDict
            >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
            >>> td = lambda x: TensorDict({"observation": x, "action": x, ("next", "observation"): x},
            ...                           batch_size=[len(x)])
            >>> online = TensorDictReplayBuffer(storage=LazyTensorStorage(10))
            >>> sampler = OTCSampler(online, alpha=1.0)
            >>> merged = TensorDictReplayBuffer(storage=LazyTensorStorage(10), sampler=sampler)
            >>> _ = merged.extend(td(torch.zeros(1, 1))); _ = online.extend(td(torch.zeros(1, 1)))
            >>> sampler.adapt_alpha(merged)  # D_1 = 0: alpha unchanged at the first deployment
            1.0
        """
        d_k = self.expected_distance(storage, num_samples)
        previous = self.alpha_history[-1]["D"] if self.alpha_history else None
        alpha = self.alpha
        if self.adaptive_alpha and previous is not None:
            if previous > 0 and math.isfinite(previous):
                alpha = min(max(alpha * d_k / previous, self.alpha_range[0]), self.alpha_range[1])
            else:
                logger.warning("adapt_alpha: D_{k-1} = %s; alpha kept at %s.", previous, alpha)
        self.alpha = float(alpha)
        self.alpha_history.append(
            {"deployment": float(len(self.alpha_history) + 1), "D": d_k, "alpha": self.alpha}
        )
        logger.info("OTC adapt_alpha: D_k=%.6g alpha=%.6g", d_k, self.alpha)
        return self.alpha

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "alpha": self.alpha,
            "alpha0": self.alpha0,
            "alpha_history": [dict(record) for record in self.alpha_history],
        }
        if isinstance(self.distance, torch.nn.Module):
            state["distance"] = self.distance.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.alpha = float(state_dict["alpha"])
        self.alpha0 = float(state_dict["alpha0"])
        self.alpha_history = [
            {k: float(v) for k, v in record.items()} for record in state_dict["alpha_history"]
        ]
        if "distance" in state_dict and isinstance(self.distance, torch.nn.Module):
            self.distance.load_state_dict(state_dict["distance"])

    def dumps(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        distance_state = state.pop("distance", None)
        (path / "otc_sampler.json").write_text(json.dumps(state, indent=2))
        if distance_state is not None:
            torch.save(distance_state, path / "distance.pt")

    def loads(self, path: str | Path) -> None:
        path = Path(path)
        state = json.loads((path / "otc_sampler.json").read_text())
        if (path / "distance.pt").exists():
            state["distance"] = torch.load(path / "distance.pt", weights_only=True)
        self.load_state_dict(state)

    def _empty(self) -> None:
        # The merged data is gone: start over from alpha_0.
        self.alpha = self.alpha0
        self.alpha_history = []

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_compiled_pairwise"] = (
            None  # compiled functions do not pickle; recompiled on first use
        )
        return state

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(alpha={self.alpha:.4g}, num_candidates={self.num_candidates}, "
            f"num_online={self.num_online}, adaptive_alpha={self.adaptive_alpha}, "
            f"self_match={self.self_match}, distance={type(self.distance).__name__})"
        )


def _l1_min(
    x: Tensor, y_t: Tensor, x_ids: Tensor | None = None, y_ids: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pairwise L1 ``[B, D]`` of ``x [B, k]`` and ``y_t [k, D]``, its row minima, argmins and tie counts.

    Written for :func:`torch.compile`: with ``y`` transposed the compiler vectorises over the ``D`` online rows
    and fuses the distance, the minimum and the tie count (``benchmarks/bench_sampler.py`` times it against
    ``cdist``).
    """
    d = (x.unsqueeze(2) - y_t.unsqueeze(0)).abs().sum(1)
    if x_ids is not None and y_ids is not None:
        d = d.masked_fill(x_ids.unsqueeze(1) == y_ids.unsqueeze(0), float("inf"))
    values, index = d.min(1)
    counts = (d == values.unsqueeze(1)).sum(1)
    return d, values, index, counts


# --------------------------------------------------------------------------------------------------------------
# OnlineOnlySampler
# --------------------------------------------------------------------------------------------------------------
class OnlineOnlySampler(_OnlineRowsSampler):
    """Samples uniformly (with replacement) from the online rows of the merged storage.

    The "online only" baseline of the paper (section 4.3, Figure 5): the agent is tuned on the online
    transitions collected so far and ignores the offline data. Online rows are those whose boolean column
    ``online_key`` is true (the tuning loop writes it). While no online row exists (offline training) it falls
    back to uniform sampling of the whole storage and says so in ``info["otc_uniform"]``.

    Keyword Args:
        online_key: key of the boolean column marking online rows. Defaults to ``"is_online"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
        >>> rb = TensorDictReplayBuffer(storage=LazyTensorStorage(100), sampler=OnlineOnlySampler(),
        ...                             batch_size=8)
        >>> _ = rb.extend(TensorDict({"x": torch.arange(10), "is_online": torch.arange(10) >= 7},
        ...                          batch_size=[10]))
        >>> bool((rb.sample()["x"] >= 7).all())
        True
    """

    def __init__(self, *, online_key: NestedKey = "is_online") -> None:
        self.online_key = online_key
        self._rows = _OnlineRowIndex()

    def sample(self, storage: Storage, batch_size: int) -> tuple[Any, dict]:
        """Draws ``batch_size`` indices uniformly among the online rows."""
        storage = _check_tensor_storage(storage, "OnlineOnlySampler")
        n = len(storage)
        if n == 0:
            raise RuntimeError("Cannot sample from an empty storage.")
        if self.online_key not in _backing(storage).keys(include_nested=True):
            raise KeyError(
                f"OnlineOnlySampler: the storage has no key {self.online_key!r} marking online rows; keys "
                f"present: {_keys_present(storage)}. Write a boolean column {self.online_key!r} with every "
                f"transition (True for online data)."
            )
        rows = self._rows.rows(storage, self.online_key)[0]
        device = _storage_device(storage)
        if rows.numel() == 0:
            flat = torch.randint(n, (batch_size,), generator=self._rng, device=device)
            return _to_storage_index(storage, flat), {"otc_uniform": torch.tensor(True)}
        flat = rows[torch.randint(rows.numel(), (batch_size,), generator=self._rng, device=device)]
        return _to_storage_index(storage, flat), {"otc_uniform": torch.tensor(False)}

    def _empty(self) -> None:
        self._rows.invalidate()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return

    def dumps(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    def loads(self, path: str | Path) -> None:
        return

    def __repr__(self) -> str:
        return f"{type(self).__name__}(online_key={self.online_key!r})"


# --------------------------------------------------------------------------------------------------------------
# MixSampler
# --------------------------------------------------------------------------------------------------------------
class MixSampler(_OnlineRowsSampler):
    """A fixed share of every batch from the online rows, the rest from the offline rows, both uniformly.

    The control that separates OTC's two effects (see the OTC paper, section 3.2 and eq. 3): OTC's ranking puts
    online rows (which match their own copies, or lie near the online data) at the top ranks, so it raises the
    *share* of online rows in a batch, and it also *chooses* among offline rows. A mix sampler at OTC's measured
    online share reproduces the first effect without the second: an OTC gain over uniform sampling that a
    matched mix also gets is a gain of the share, not of the correction.

    Every batch of ``batch_size`` rows holds ``round(online_fraction * batch_size)`` rows drawn uniformly with
    replacement from the online rows (those whose boolean column ``online_key`` is true; with
    ``source="latest"`` only those of the latest deployment, the largest value of the column ``deployment_key``)
    and the rest drawn uniformly with replacement from the offline rows; the batch is then shuffled. While the
    storage holds no online row (offline training), or no offline row, it samples the whole storage uniformly.

    Relation to TorchRL: :class:`torchrl.data.OfflineToOnlineReplayBuffer` (0.14.1) draws the same fixed
    count per batch (``round(offline_fraction * batch_size)`` offline rows, not a binomial number), but it is a
    buffer wrapping *two* buffers, not a sampler: it cannot be handed to ``ReplayBuffer(sampler=...)`` of the
    merged storage ``B_i^k`` that every strategy here samples from (Algorithm 1), and it has no "latest deployment
    only" source. This sampler keeps one merged storage, so the tuning loop, checkpoints and metrics do not change
    with the strategy.

    Args:
        online_fraction: the share of online rows, ``0 < online_fraction < 1``. May be changed between calls
            (the tuning loop sets the matched share per deployment).

    Keyword Args:
        online_key: key of the boolean column marking online rows. Defaults to ``"is_online"``.
        source: ``"all"`` (every online row so far) or ``"latest"`` (the latest deployment's rows only).
        deployment_key: key of the integer column numbering the deployments (read with ``source="latest"``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
        >>> rb = TensorDictReplayBuffer(storage=LazyTensorStorage(1000), sampler=MixSampler(0.25),
        ...                             batch_size=128)
        >>> _ = rb.extend(TensorDict({"x": torch.arange(1000), "is_online": torch.arange(1000) >= 990},
        ...                          batch_size=[1000]))
        >>> int(rb.sample()["is_online"].sum())  # round(0.25 * 128) online rows, whatever the storage holds
        32
    """

    def __init__(
        self,
        online_fraction: float,
        *,
        online_key: NestedKey = "is_online",
        source: str = "all",
        deployment_key: NestedKey = "deployment",
    ) -> None:
        if source not in ("all", "latest"):
            raise ValueError(f"MixSampler: source must be 'all' or 'latest'; got {source!r}.")
        self.online_fraction = online_fraction
        self.online_key = online_key
        self.source = source
        self.deployment_key = deployment_key
        self._rows = _OnlineRowIndex()

    @property
    def online_fraction(self) -> float:
        """The share of online rows in every batch, in (0, 1)."""
        return self._online_fraction

    @online_fraction.setter
    def online_fraction(self, value: float) -> None:
        value = float(value)
        if not 0.0 < value < 1.0:
            raise ValueError(
                f"MixSampler: online_fraction must lie in (0, 1); got {value}. Use OnlineOnlySampler for 1 "
                f"and RandomSampler (or an offline-only buffer) for 0."
            )
        self._online_fraction = value

    def sample(self, storage: Storage, batch_size: int) -> tuple[Any, dict]:
        """Draws ``round(online_fraction * batch_size)`` online rows and the rest offline rows, shuffled."""
        storage = _check_tensor_storage(storage, "MixSampler")
        n = len(storage)
        if n == 0:
            raise RuntimeError(
                "Cannot sample from an empty storage: extend the buffer with offline data first."
            )
        keys = _backing(storage).keys(include_nested=True)
        needed = [self.online_key] + ([self.deployment_key] if self.source == "latest" else [])
        missing = [key for key in needed if key not in keys]
        if missing:
            raise KeyError(
                f"MixSampler: the storage has no column {missing[0]!r}; keys present: {_keys_present(storage)}. "
                f"Write a boolean column {self.online_key!r} (True for online rows)"
                + (
                    f" and an integer column {self.deployment_key!r} (the deployment of each row)"
                    if self.source == "latest"
                    else ""
                )
                + " with every transition."
            )
        latest = self.deployment_key if self.source == "latest" else None
        online, offline = self._rows.rows(storage, self.online_key, latest)
        device = _storage_device(storage)
        if online.numel() == 0 or offline.numel() == 0:
            flat = torch.randint(n, (batch_size,), generator=self._rng, device=device)
            return _to_storage_index(storage, flat), {}
        n_online = round(self.online_fraction * batch_size)
        pick_on = torch.randint(online.numel(), (n_online,), generator=self._rng, device=device)
        pick_off = torch.randint(
            offline.numel(), (batch_size - n_online,), generator=self._rng, device=device
        )
        flat = torch.cat([online[pick_on], offline[pick_off]])
        flat = flat[torch.randperm(batch_size, generator=self._rng, device=device)]
        return _to_storage_index(storage, flat), {}

    def _empty(self) -> None:
        self._rows.invalidate()

    def state_dict(self) -> dict[str, Any]:
        return {"online_fraction": self.online_fraction}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "online_fraction" in state_dict:
            self.online_fraction = state_dict["online_fraction"]

    def dumps(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "mix_sampler.json").write_text(json.dumps(self.state_dict()))

    def loads(self, path: str | Path) -> None:
        file = Path(path) / "mix_sampler.json"
        if file.exists():
            self.load_state_dict(json.loads(file.read_text()))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(online_fraction={self.online_fraction:g}, source={self.source!r}, "
            f"online_key={self.online_key!r})"
        )
