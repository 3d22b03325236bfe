"""Online Transition Correction: the sampler of Jiang & Lu (AAAI 2023), section 3.2 and Algorithm 1 lines 10-14.

:class:`OTCSampler` is the TorchRL :class:`~torchrl.data.replay_buffers.samplers.Sampler`: rank-based
prioritised sampling of the merged offline + online data by how well each transition agrees with its best-matched
online transition (eq. 1-3), with alpha adapted per deployment (eq. 4). Its math (eq. 1's tie-breaking, eq. 3's
priorities) is in :mod:`torchrl_otc.data.samplers.ranking`.

The distances come from a :class:`~torchrl_otc.modules.TransitionDistance`; the sampler asks it only for
:meth:`~torchrl_otc.modules.TransitionDistance.compare` (caching and compiling are the distance's).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.data import ReplayBuffer
from torchrl.data.replay_buffers.storages import Storage, TensorStorage

from torchrl_otc.data.samplers._storage import (
    OnlineRowIndex,
    OnlineRowsSampler,
    WriteTracker,
    backing,
    check_keys,
    check_no_prefetch,
    check_online_columns,
    check_tensor_storage,
    flat_column,
    gather,
    storage_device,
    to_storage_index,
)
from torchrl_otc.data.samplers.decomposed import (
    ADAPTIVE,
    DEFAULT_FRACTION_RANGE,
    OnlineSource,
    adaptive_online_fraction,
    check_online_fraction,
    join_online_rows,
)
from torchrl_otc.data.samplers.ranking import break_ties, rank_priorities
from torchrl_otc.modules.distances import FeatureDistance
from torchrl_otc.modules.transition_distance import (
    OnlineRows,
    TransitionDistance,
    check_positive_int,
)

__all__ = ["OTCSampler"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1


@dataclass
class _Scored:
    """Candidates scored against one draw of online rows (eq. 1), handed out ``size`` at a time."""

    key: tuple | None
    cand: Tensor
    on: Tensor
    match: Tensor
    match_value: Tensor
    ns: Tensor
    size: int
    next: int = 0

    @property
    def left(self) -> bool:
        return self.next < self.cand.shape[0]

    def pop(self) -> _Scored:
        """The next ``size`` candidates (their own :class:`_Scored`, sharing the online rows)."""
        part = slice(self.next, self.next + self.size)
        self.next += self.size
        return _Scored(
            self.key,
            self.cand[part],
            self.on,
            self.match[part],
            self.match_value[part],
            self.ns[part],
            self.size,
        )


# --------------------------------------------------------------------------------------------------------------
# OTCSampler
# --------------------------------------------------------------------------------------------------------------
class OTCSampler(OnlineRowsSampler):
    """Online Transition Correction: samples merged offline + online data by agreement with online dynamics.

    Paper: Jiang & Lu, "Online Tuning for Offline Decentralized Multi-Agent Reinforcement Learning", AAAI 2023,
    section 3.2 and Algorithm 1 (lines 10-14). On every :meth:`sample` call:

    1. draw ``|B|`` candidate transitions uniformly from the storage this sampler is attached to (the merged
       data ``B_i^k``) and ``|D|`` transitions from ``online_buffer`` (the latest deployment's data ``D_i^k``;
       without replacement, or with replacement when it holds fewer than ``|D|``);
    2. for every candidate find the best-matched online transition by the state-action distance (eq. 1), ties
       broken uniformly at random;
    3. rank the candidates by the next-state distance to their match (rank 1 = smallest), priority
       ``p_j = 1 / rank(j)`` (eq. 2), and draw the batch (with replacement) with

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

    **The distance** is asked only through :meth:`~torchrl_otc.modules.TransitionDistance.compare`,
    with the online rows described as :class:`~torchrl_otc.modules.OnlineRows` whose ``version``
    changes at every write to the online buffer: caching embeddings and compiling the pairwise step are the
    distance's business (see :class:`~torchrl_otc.L1EmbeddingDistance`).

    **Decomposed OTC** (``online_fraction`` set; not in the paper). The coupled procedure above decides both
    *how many* online rows a batch gets (online candidates self-match at distance 0 and rank first) and *which*
    offline rows it keeps. With ``online_fraction=F`` the two are separated: each batch holds exactly
    ``round(F * batch_size)`` rows drawn uniformly (with replacement) from the online rows of the merged storage
    (the rows whose ``online_key`` column is true; with ``source="latest"`` only those of the latest deployment,
    the largest ``deployment_key``, as :class:`~torchrl_otc.MixSampler` reads them), and the rest by steps 1-3
    with the ``|B|`` candidates drawn uniformly from the *offline* rows only: no candidate can self-match, so alpha
    controls only the offline selection. The two parts are shuffled together. In this mode eq. (4)'s
    ``D_k`` is estimated over offline rows too (the gap between the offline and the online dynamics), and
    ``online_fraction="adaptive"`` sets ``F`` at every :meth:`adapt_alpha` call from it by
    :func:`~torchrl_otc.data.samplers.decomposed.adaptive_online_fraction` (``F_k = D_k / (D_k + D_1)``
    clamped to ``online_fraction_range``; ``1/2`` before the first call). The online rows' per-row ``info``
    holds distances 0, rank 0, match index -1 and ``otc_prob = 1 / number of online rows``; ``info`` adds
    ``otc_online_fraction`` (the ``F`` used).

    **Scoring ahead** (``score_every=k``; not in the paper). One call draws ``k |B|`` candidates and one set of
    ``|D|`` online rows, matches them all (eq. 1) in one pass, and keeps the scores for the next ``k - 1`` calls;
    each call ranks its own group of ``|B|`` candidates (eq. 3 over that group alone) and draws its batch from it.
    Every group is a fresh uniform draw of ``|B|`` candidates and the online rows are a fresh draw of ``|D|``, so
    each batch has the distribution of the per-call procedure; what changes is that ``k`` consecutive batches
    share their ``|D|`` draw (their matches are not independent). The kept scores are dropped whenever the
    storage or the online buffer is written to, alpha, the distance (its ``version``), the pool of candidates
    (coupled or decomposed) or the sizes change, and when the state is taken (:meth:`state_dict`). A distance
    with no ``version`` (``ValueDistance``: its critic changes at every update) is scored at every call.

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
            statistics on offline data (``distance.fit(offline_td)``) before online tuning. To compile its
            pairwise step, build it with ``compile=True``.
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
            replacement needs ``num_candidates >= batch_size``. TorchRL's ``replacement=`` keyword sets it:
            ``OTCSampler(online, replacement=False)`` draws no candidate twice *within a batch*. The candidates
            themselves are drawn uniformly with replacement and every call ranks fresh ones, so a row can still
            appear twice and there is no epoch over the storage as in TorchRL's ``SamplerWithoutReplacement``.
        importance_weights: add PER-style importance weights ``(|B| P(j))^{-beta} / max`` under
            ``"priority_weight"``. Defaults to ``False``.
        beta: exponent of the importance weights. Defaults to ``0.4``.
        alpha_samples: candidates used by :meth:`adapt_alpha` to estimate ``D_k``. Defaults to ``4096``.
        online_fraction: ``None`` (default: the paper's coupled procedure), a share in ``[0, 1)`` of every
            batch drawn from the online rows (decomposed OTC, see above), or ``"adaptive"``. Needs
            ``online_key``. May be changed between calls.
        online_fraction_range: ``(f_min, f_max)``, the clamp of the adaptive share. Defaults to
            ``(0.05, 0.95)``.
        source: decomposed OTC's online rows: ``"all"`` (every deployment so far, default) or ``"latest"``.
        deployment_key: key of the integer column numbering the deployments (read with ``source="latest"``).
        score_every: ``k``, the calls one scoring serves (see "Scoring ahead"). Defaults to ``1``, the paper's
            procedure.

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

        Decomposed OTC: a quarter of every batch from the online rows, the rest by eq. (3) among offline rows.

        >>> flag = lambda td, on: td.set("is_online", torch.full((len(td),), on))
        >>> online = TensorDictReplayBuffer(storage=LazyTensorStorage(1_000))
        >>> sampler = OTCSampler(online, alpha=2.0, num_candidates=64, num_online=100, online_fraction=0.25)
        >>> merged = TensorDictReplayBuffer(storage=LazyTensorStorage(10_000), sampler=sampler, batch_size=16)
        >>> _ = merged.extend(flag(offline, False)); _ = sampler.distance.fit(offline)
        >>> _ = online.extend(d1); _ = merged.extend(flag(d1.clone(), True))
        >>> int(merged.sample()["is_online"].sum())  # round(0.25 * 16)
        4
    """

    _replacement_argument = "with_replacement"
    info_prefix = "otc_"

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
        online_fraction: float | str | None = None,
        online_fraction_range: tuple[float, float] = DEFAULT_FRACTION_RANGE,
        source: OnlineSource = "all",
        deployment_key: NestedKey = "deployment",
        score_every: int = 1,
    ) -> None:
        if not isinstance(online_buffer, ReplayBuffer):
            raise TypeError(
                f"OTCSampler's first argument is the online replay buffer (a torchrl ReplayBuffer holding "
                f"D_i^k); got {type(online_buffer).__name__}."
            )
        check_tensor_storage(online_buffer.storage, "OTCSampler (online buffer)")
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
            ("score_every", score_every),
        ):
            check_positive_int(name, value)
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0; got {beta}.")
        f_lo, f_hi = (float(f) for f in online_fraction_range)
        if not 0.0 <= f_lo <= f_hi < 1.0:
            raise ValueError(
                f"online_fraction_range must be (min, max) with 0 <= min <= max < 1; got {online_fraction_range}."
            )
        if source not in ("all", "latest"):
            raise ValueError(f"OTCSampler: source must be 'all' or 'latest'; got {source!r}.")
        if distance is None:
            distance = FeatureDistance()
        if not isinstance(distance, TransitionDistance):
            raise TypeError(
                f"distance must follow the TransitionDistance protocol (in_keys, state_action_distance, "
                f"next_state_distance, compare; subclass TransitionDistance to derive compare from the other "
                f"two); got {type(distance).__name__}."
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
        self.alpha_history: list[dict[str, float]] = []
        self.online_fraction_range = (f_lo, f_hi)
        self.source = source
        self.deployment_key = deployment_key
        self.online_fraction = online_fraction
        self.score_every = score_every
        # Candidates scored ahead for the next batches (score_every > 1), with what they were scored against.
        self._scored: _Scored | None = None
        self._warned_no_version = False
        # The online / offline rows of the merged storage (decomposed OTC), dropped at every write.
        self._rows = OnlineRowIndex()
        # Counts the writes to the online buffer: the online set's version, which the distance caches on.
        self._online_tracker = WriteTracker()
        online_buffer.storage.attach(self._online_tracker)

    # ---------------------------------------------------------------- decomposed OTC
    @property
    def online_fraction(self) -> float | str | None:
        """``None`` (coupled, the paper's procedure), the fixed online share in ``[0, 1)``, or ``"adaptive"``."""
        return self._online_fraction

    @online_fraction.setter
    def online_fraction(self, value: float | str | None) -> None:
        value = check_online_fraction(value)
        if value is not None and self.online_key is None:
            raise ValueError(
                "OTCSampler(online_fraction=...) draws its online share from the rows the column online_key marks; "
                "set online_key (e.g. 'is_online')."
            )
        self._online_fraction = value

    @property
    def decomposed(self) -> bool:
        """Whether the online share is fixed apart from the offline selection (``online_fraction`` set)."""
        return self._online_fraction is not None

    @property
    def current_online_fraction(self) -> float | None:
        """The share the next batch draws from online rows: ``online_fraction``, or with ``"adaptive"`` the last
        share :meth:`adapt_alpha` set (``1/2`` clamped before the first call); ``None`` when coupled."""
        if self._online_fraction != ADAPTIVE:
            return self._online_fraction
        for record in reversed(self.alpha_history):
            if "online_fraction" in record:
                return record["online_fraction"]
        return adaptive_online_fraction(1.0, 1.0, self.online_fraction_range)

    def _split_rows(self, storage: TensorStorage) -> tuple[Tensor, Tensor]:
        """``(online rows, offline rows)`` of the merged storage, flat (``source`` applied to the online rows)."""
        latest = self.deployment_key if self.source == "latest" else None
        check_online_columns(storage, self.online_key, latest, "OTCSampler(online_fraction=...)")
        return self._rows.rows(storage, self.online_key, latest)

    # ---------------------------------------------------------------- helpers
    @property
    def _online_storage(self) -> TensorStorage:
        return self.online_buffer.storage

    def _keys(self) -> list[NestedKey]:
        keys = list(self.distance.in_keys)
        if not self.self_match and self.id_key not in keys:
            keys.append(self.id_key)
        return keys

    def _validate(self, storage: TensorStorage) -> list[NestedKey]:
        keys = self._keys()
        check_keys(storage, keys, "OTCSampler", "merged storage")
        check_keys(self._online_storage, keys, "OTCSampler", "online buffer")
        merged_td, online_td = backing(storage), backing(self._online_storage)
        for key in keys:
            a = merged_td.get(key).shape[storage.ndim :]
            b = online_td.get(key).shape[self._online_storage.ndim :]
            if a != b:
                raise ValueError(
                    f"OTCSampler: feature shapes differ for key {key!r}: {tuple(a)} in the merged storage, "
                    f"{tuple(b)} in the online buffer. Both buffers must hold the same agent's transitions."
                )
        return keys

    def online_rows(self, device: torch.device, rows: Tensor | None = None) -> OnlineRows:
        """The online buffer's rows ``rows`` (``None``: every row) as the distance sees them.

        Args:
            device: where the distance reads them (the merged storage's device).
            rows: flat row indices of the online storage, or ``None`` for every row.

        Returns:
            :class:`~torchrl_otc.modules.OnlineRows` with ``draws = num_online`` and a ``version``
            that changes at every write to the online buffer.
        """
        storage, keys = self._online_storage, list(self.distance.in_keys)
        size = len(storage)

        def read(index: Tensor | None) -> TensorDictBase:
            if index is None:
                index = torch.arange(size, device=storage_device(storage))
            return gather(storage, index, keys).to(device)

        version = (id(self._online_tracker), self._online_tracker.version)
        return OnlineRows(read=read, size=size, rows=rows, draws=self.num_online, version=version)

    def _exclusion(
        self, candidates: TensorDictBase, online_ids: Tensor | None
    ) -> tuple[Tensor, Tensor] | None:
        """``(candidate ids, online ids)`` whose equal pairs may not match (``self_match=False``), else ``None``."""
        if self.self_match:
            return None
        if online_ids is None:
            raise ValueError(
                f"OTCSampler(self_match=False) needs the online rows' ids ({self.id_key!r}) to score."
            )
        return candidates.get(self.id_key).reshape(-1), online_ids.reshape(-1)

    @torch.no_grad()
    def _score(
        self,
        candidates: TensorDictBase,
        online: OnlineRows,
        online_weights: Tensor | None,
        online_ids: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(match [B], state-action distance of the match [B], next-state distance [B])``: eq. (1) and the
        distance ranked by eq. (3)."""
        exclude = self._exclusion(candidates, online_ids)
        comparison = self.distance.compare(
            candidates.select(*self.distance.in_keys), online, exclude=exclude
        )
        match = break_ties(
            comparison.state_action,
            comparison.minimum,
            comparison.argmin,
            comparison.ties,
            self._rng,
            online_weights,
        )
        match_value = comparison.minimum
        ns = comparison.next_state(match)
        if not self.self_match:
            # A candidate whose only possible matches were its own copies has no match: rank it last.
            ns = torch.where(torch.isinf(match_value), torch.full_like(ns, float("inf")), ns)
        return match, match_value, ns

    @torch.no_grad()
    def score(
        self,
        candidates: TensorDictBase,
        online: TensorDictBase | OnlineRows,
        online_weights: Tensor | None = None,
        *,
        online_ids: Tensor | None = None,
    ) -> TensorDict:
        """Scores candidate transitions against online transitions (Algorithm 1, lines 11-14).

        This is the deterministic core of :meth:`sample` (up to random tie-breaking), exposed so that the
        probabilities can be inspected or reused.

        Args:
            candidates: ``|B|`` transitions (a flat TensorDict holding the distance's ``in_keys``, and ``id_key``
                with ``self_match=False``).
            online: ``|D|`` online transitions (same keys), or rows of the online buffer (:meth:`online_rows`).
            online_weights: how many times each online row was drawn (``|D|`` draws from fewer rows are passed
                as the distinct rows and their counts: the same eq. 1 and tie-breaking, less work).

        Keyword Args:
            online_ids: with ``self_match=False`` and ``online`` given as :class:`OnlineRows`, the online rows'
                ids (read from ``online`` when it is a TensorDict).

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
        if isinstance(online, TensorDictBase):
            if not self.self_match and online_ids is None:
                online_ids = online.get(self.id_key)
            online = OnlineRows.of(online.select(*self.distance.in_keys))
        match, match_value, ns = self._score(candidates, online, online_weights, online_ids)
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

    def _online_ids(self, rows: Tensor, device: torch.device) -> Tensor | None:
        if self.self_match:
            return None
        return flat_column(self._online_storage, self.id_key)[rows].to(device)

    def _uniform(self, storage: TensorStorage, n: int, batch_size: int) -> tuple[Any, dict]:
        device = storage_device(storage)
        flat = torch.randint(n, (batch_size,), generator=self._rng, device=device)
        info: dict[str, Any] = {
            "otc_uniform": torch.tensor(True),
            "otc_alpha": torch.tensor(self.alpha),
            "otc_prob": torch.full((batch_size,), 1.0 / n),
        }
        self._add_online_share(storage, flat, info)
        return to_storage_index(storage, flat), info

    def _add_online_share(self, storage: TensorStorage, flat: Tensor, info: dict) -> None:
        if self.online_key is not None and self.online_key in backing(storage).keys(
            include_nested=True
        ):
            flags = flat_column(storage, self.online_key)[flat]
            info["otc_online_share"] = flags.float().mean()

    # ---------------------------------------------------------------- Sampler API
    def sample(self, storage: Storage, batch_size: int) -> tuple[Any, dict]:
        """Draws ``batch_size`` storage indices by eq. (3); see the class docstring for ``info``."""
        storage = check_tensor_storage(storage, "OTCSampler")
        n = len(storage)
        if n == 0:
            raise RuntimeError(
                "Cannot sample from an empty storage: extend the buffer with offline data first."
            )
        check_no_prefetch(
            storage, "OTCSampler", "before alpha adapts (the OTC step costs about a millisecond)"
        )
        if not self.with_replacement and self.num_candidates < batch_size:
            raise ValueError(
                f"OTCSampler(with_replacement=False) draws the batch from {self.num_candidates} candidates, fewer "
                f"than batch_size={batch_size}: raise num_candidates or use with_replacement=True."
            )
        m = len(self._online_storage)
        if m == 0:
            return self._uniform(storage, n, batch_size)
        keys = self._validate(storage)
        device = storage_device(storage)
        if self.decomposed:
            return self._sample_decomposed(storage, n, batch_size, keys, device)
        flat, info = self._draw_ranked(storage, None, batch_size, keys, device)
        self._add_online_share(storage, flat, info)
        return to_storage_index(storage, flat), info

    def _scores_key(self, storage: TensorStorage, pool: Tensor | None) -> tuple | None:
        """What scored candidates depend on; ``None`` when the distance has no ``version`` (scores every call)."""
        version = getattr(self.distance, "version", None)
        if version is None:
            if self.score_every > 1 and not self._warned_no_version:
                logger.warning(
                    "OTCSampler(score_every=%d): %s has no version that says when its scores change, so every "
                    "batch is scored on its own (score_every has no effect).",
                    self.score_every,
                    type(self.distance).__name__,
                )
                self._warned_no_version = True
            return None
        return (
            self._writes,
            id(storage),
            len(storage),
            (id(self._online_tracker), self._online_tracker.version),
            version,
            self.alpha,
            pool is None,
            self.num_candidates,
            self.num_online,
            self.self_match,
        )

    def _next_scored(
        self,
        storage: TensorStorage,
        pool: Tensor | None,
        keys: list[NestedKey],
        device: torch.device,
    ) -> _Scored:
        """The next ``|B|`` scored candidates (Algorithm 1, lines 11-13) drawn from ``pool`` (flat rows of
        ``storage``; ``None`` for all of them).

        With ``score_every = k > 1`` one call scores ``k |B|`` candidates against one draw of ``|D|`` online rows
        and keeps them for the next ``k - 1`` calls, as long as nothing they depend on changes (see
        :meth:`_scores_key`); each group of ``|B|`` is then ranked on its own (eq. 3) by :meth:`_draw_ranked`.
        """
        key = self._scores_key(storage, pool)
        scored = self._scored
        if key is not None and scored is not None and scored.key == key and scored.left:
            return scored.pop()
        groups = self.score_every if key is not None else 1
        rng = self._rng
        total = groups * self.num_candidates
        if pool is None:
            cand = torch.randint(len(storage), (total,), generator=rng, device=device)
        else:
            cand = pool[torch.randint(pool.numel(), (total,), generator=rng, device=device)]
        m = len(self._online_storage)
        online_device = storage_device(self._online_storage)
        multiplicity = None
        if m < self.num_online:
            # |D| draws with replacement, scored as the distinct rows and their counts (same eq. 1, less work)
            on = torch.randint(m, (self.num_online,), generator=rng, device=online_device)
            on, multiplicity = torch.unique(on, return_counts=True)
        else:
            on = torch.randperm(m, generator=rng, device=online_device)[: self.num_online]
        cand_td = gather(storage, cand, keys)
        online = self.online_rows(device, on)
        match, match_value, ns = self._score(
            cand_td, online, multiplicity, self._online_ids(on, device)
        )
        self._check_finite(ns, match_value, cand)
        self._scored = _Scored(key, cand, on, match, match_value, ns, self.num_candidates)
        return self._scored.pop()

    def _draw_ranked(
        self,
        storage: TensorStorage,
        pool: Tensor | None,
        batch_size: int,
        keys: list[NestedKey],
        device: torch.device,
    ) -> tuple[Tensor, dict[str, Any]]:
        """Algorithm 1, lines 11-14 on ``|B|`` candidates drawn from ``pool`` (flat rows of ``storage``;
        ``None``: all rows): ``|D|`` online rows, eq. (1)'s matches, eq. (3)'s draw of ``batch_size`` of them.
        Returns their flat rows and ``info``."""
        rng = self._rng
        online_device = storage_device(self._online_storage)
        scored = self._next_scored(storage, pool, keys, device)
        cand, on, match, match_value, ns = (
            scored.cand,
            scored.on,
            scored.match,
            scored.match_value,
            scored.ns,
        )
        probs, rank = rank_priorities(ns, self.alpha)
        if batch_size:
            draw = torch.multinomial(
                probs, batch_size, replacement=self.with_replacement, generator=rng
            )
        else:  # decomposed OTC with an all-online batch
            draw = cand.new_empty(0)
        flat = cand[draw]
        info: dict[str, Any] = {
            "otc_distance": ns[draw],
            "otc_match_distance": match_value[draw],
            "otc_rank": rank[draw],
            "otc_prob": probs[draw],
            "otc_match_index": to_storage_index(
                self._online_storage, on[match[draw]].to(online_device)
            ),
            "otc_alpha": torch.tensor(self.alpha),
            "otc_uniform": torch.tensor(False),
        }
        if isinstance(info["otc_match_index"], tuple):
            info["otc_match_index"] = torch.stack(info["otc_match_index"], -1)
        if self.importance_weights and batch_size:
            weights = (self.num_candidates * probs[draw]).pow(-self.beta)
            info["priority_weight"] = weights / weights.max()
        return flat, info

    def _sample_decomposed(
        self,
        storage: TensorStorage,
        n: int,
        batch_size: int,
        keys: list[NestedKey],
        device: torch.device,
    ) -> tuple[Any, dict]:
        """Decomposed OTC: ``round(F * batch_size)`` online rows uniformly, the rest by eq. (3) among
        ``|B|`` offline candidates, shuffled together."""
        online, offline = self._split_rows(storage)
        if online.numel() == 0 or offline.numel() == 0:
            return self._uniform(storage, n, batch_size)
        fraction = self.current_online_fraction
        n_online = round(fraction * batch_size)
        rng = self._rng
        flat_off, info = self._draw_ranked(storage, offline, batch_size - n_online, keys, device)
        pick = torch.randint(online.numel(), (n_online,), generator=rng, device=device)
        flat, info = join_online_rows(online[pick], flat_off, info, 1.0 / online.numel(), rng)
        info["otc_online_fraction"] = torch.tensor(fraction)
        self._add_online_share(storage, flat, info)
        return to_storage_index(storage, flat), info

    # ---------------------------------------------------------------- eq. (4)
    @torch.no_grad()
    def expected_distance(
        self, storage: Storage | ReplayBuffer, num_samples: int | None = None
    ) -> float:
        """Estimates ``D_k = E_{(s, a_i, s') ~ B^k} d(s', s'*)`` of eq. (4).

        ``num_samples`` transitions are drawn uniformly from the merged ``storage`` (decomposed OTC: from its
        offline rows, when it has any); each is matched (eq. 1) against the *whole* online buffer and the mean
        next-state distance to the match is returned.

        Args:
            storage: the merged storage (or the merged replay buffer).
            num_samples: number of transitions; defaults to ``alpha_samples``.
        """
        if isinstance(storage, ReplayBuffer):
            storage = storage._storage
        storage = check_tensor_storage(storage, "OTCSampler.expected_distance")
        n, m = len(storage), len(self._online_storage)
        if n == 0 or m == 0:
            raise RuntimeError(
                "expected_distance needs data in both the merged storage and the online buffer; write the "
                "deployment's transitions to both before calling adapt_alpha."
            )
        keys = self._validate(storage)
        device = storage_device(storage)
        num_samples = num_samples or self.alpha_samples
        rows = self._split_rows(storage)[1] if self.decomposed else None
        if rows is not None and rows.numel():  # decomposed OTC: the gap of the offline rows only
            cand = rows[
                torch.randint(rows.numel(), (num_samples,), generator=self._rng, device=device)
            ]
        else:
            cand = torch.randint(n, (num_samples,), generator=self._rng, device=device)
        online = self.online_rows(device)  # every row: one comparison shared by the chunks below
        online_ids = self._online_ids(torch.arange(m), device)
        total, count = 0.0, 0
        for chunk in cand.split(max(1, (1 << 22) // m)):
            cand_td = gather(storage, chunk, keys)
            _, match_value, ns = self._score(cand_td, online, None, online_ids)
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
        With ``online_fraction="adaptive"`` it also sets the online share from ``D_k`` and ``D_1`` (recorded as
        ``online_fraction`` in :attr:`alpha_history`).

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
        record = {"deployment": float(len(self.alpha_history) + 1), "D": d_k, "alpha": self.alpha}
        if self._online_fraction == ADAPTIVE:
            d_0 = self.alpha_history[0]["D"] if self.alpha_history else d_k
            record["online_fraction"] = adaptive_online_fraction(
                d_k, d_0, self.online_fraction_range
            )
        elif self.decomposed:
            record["online_fraction"] = float(self._online_fraction)
        self.alpha_history.append(record)
        logger.info("OTC adapt_alpha: D_k=%.6g alpha=%.6g", d_k, self.alpha)
        return self.alpha

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """alpha, its history and the distance's state.

        Candidates scored ahead (``score_every > 1``) are not part of it: taking the state drops them, so that the
        run that goes on and a run resumed from this state score their next batch alike.
        """
        self._scored = None
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
        self._rows.invalidate()
        self._scored = None
        self.alpha = self.alpha0
        self.alpha_history = []

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(alpha={self.alpha:.4g}, num_candidates={self.num_candidates}, "
            f"num_online={self.num_online}, adaptive_alpha={self.adaptive_alpha}, "
            f"self_match={self.self_match}, distance={type(self.distance).__name__}"
            + (
                ""
                if self._online_fraction is None
                else f", online_fraction={self._online_fraction!r}"
            )
            + ")"
        )
