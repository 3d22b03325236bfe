"""The protocol of a transition distance (paper section 3.3) and the base class of the L1-embedding distances.

:class:`~torchrl_otc.OTCSampler` asks its distance for nothing but :class:`TransitionDistance`'s
:meth:`~TransitionDistance.compare`: the ``|B|`` candidates, the online rows (:class:`OnlineRows`, which the
distance reads, or not, as it needs) and the pairs that may not match; it gets back a :class:`Comparison` (the
state-action distances of eq. 1 with their row minima, and the next-state distance ranked by eq. 3).
:class:`L1EmbeddingDistance` implements it for distances that are L1 norms between embeddings; it owns what the
sampler used to do for them: one forward pass over both sets, a cache of the online rows' embeddings, a compiled
pairwise kernel. The distances themselves are in :mod:`torchrl_otc.modules.distances`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor, nn

__all__ = [
    "Comparison",
    "L1EmbeddingDistance",
    "OnlineRows",
    "RowsOnDemand",
    "TransitionDistance",
    "pairwise_l1",
]


@dataclass(frozen=True)
class OnlineRows:
    """The online transitions ``D`` that candidates are compared with (eq. 1): rows of a set a distance may cache.

    :class:`~torchrl_otc.OTCSampler` describes its online buffer this way; the distance reads only what it
    needs (one that keeps every row's embedding reads nothing while the buffer and the distance are unchanged).

    Attributes:
        read: ``read(rows)`` returns the rows ``rows`` (flat indices into the set; ``None`` for every row) as a
            flat TensorDict holding the distance's ``in_keys``, on the candidates' device.
        size: the number of rows in the set.
        rows: the rows compared, ``[D']`` flat indices, or ``None`` for every row of the set.
        draws: how many online transitions ``rows`` stand for (``|D|``: the distinct rows of ``|D|`` draws with
            replacement are fewer). ``None`` means ``len(rows)`` (or ``size``).
        version: identifies the set's content and changes whenever the set is written to. ``None`` for a set
            that is not kept: nothing about it is cached across calls.
        memo: scratch space for one comparison of several candidate sets with these rows (the chunks of an
            eq. 4 estimate): what a distance computes once for the rows.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> online = OnlineRows.of(TensorDict({"observation": torch.arange(3.0).unsqueeze(-1)}, [3]))
        >>> online.size, online.num_draws, online.read(torch.tensor([2]))["observation"]
        (3, 3, tensor([[2.]]))
    """

    read: Callable[[Tensor | None], TensorDictBase]
    size: int
    rows: Tensor | None = None
    draws: int | None = None
    version: Hashable | None = None
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, transitions: TensorDictBase) -> OnlineRows:
        """Every row of a flat TensorDict of transitions, as a set that is not kept (no caching).

        Args:
            transitions: flat TensorDict holding the distance's ``in_keys``.
        """

        def read(rows: Tensor | None) -> TensorDictBase:
            return transitions if rows is None else transitions[rows]

        return cls(read=read, size=transitions.shape[0])

    @property
    def num_draws(self) -> int:
        """``draws``, or the number of rows compared."""
        if self.draws is not None:
            return self.draws
        return self.size if self.rows is None else self.rows.shape[0]

    def selected(self) -> TensorDictBase:
        """The compared rows, ``read(rows)``, read once per :class:`OnlineRows`."""
        if "selected" not in self.memo:
            self.memo["selected"] = self.read(self.rows)
        return self.memo["selected"]


@dataclass(frozen=True)
class Comparison:
    """What eq. (1) and eq. (3) need from a distance, for ``|B|`` candidates and ``|D|`` online rows.

    The row minima are computed with the distances (a compiled kernel fuses them); the sampler breaks ties among
    the minima at random (eq. 1: "we uniformly select one").

    Attributes:
        state_action: ``[B, D]`` state-action distances ``d(s, a_i, s*, a_i*)``; ``inf`` for excluded pairs. A
            distance that finds the minima without the matrix passes a :class:`RowsOnDemand`, which computes the
            rows that are read (the sampler reads only the rows with ties).
        minimum: ``[B]`` row minima of ``state_action``.
        argmin: ``[B]`` the first column reaching the minimum.
        ties: ``[B]`` how many columns reach the minimum.
        next_state: ``next_state(match) -> [B]``: ``d(s', s'*)`` between every candidate and the online row
            ``match[j]`` (a column index) chosen for it.

    Examples:
        >>> import torch
        >>> out = Comparison.of(torch.tensor([[2.0, 1.0, 1.0]]), lambda match: match.float())
        >>> out.minimum, out.argmin, out.ties, out.next_state(torch.tensor([2]))
        (tensor([1.]), tensor([1]), tensor([2]), tensor([2.]))
    """

    state_action: Tensor
    minimum: Tensor
    argmin: Tensor
    ties: Tensor
    next_state: Callable[[Tensor], Tensor]

    @classmethod
    def of(cls, state_action: Tensor, next_state: Callable[[Tensor], Tensor]) -> Comparison:
        """From a ``[B, D]`` matrix: its row minima, first argmins and tie counts.

        Args:
            state_action: ``[B, D]`` state-action distances (``inf`` for excluded pairs).
            next_state: see :attr:`next_state`.
        """
        minimum, argmin = state_action.min(-1)
        ties = (state_action == minimum.unsqueeze(-1)).sum(-1)
        return cls(state_action, minimum, argmin, ties, next_state)


def _l1_to_match(ns_c: Tensor, ns_o: Tensor) -> Callable[[Tensor], Tensor]:
    """Eq. (3)'s next-state distance of each candidate to its match: ``match -> |ns_c - ns_o[match]|_1``."""

    def next_state(match: Tensor) -> Tensor:
        return (ns_c - ns_o[match]).abs().sum(-1)

    return next_state


def _excluded(distances: Tensor, exclude: tuple[Tensor, Tensor] | None) -> Tensor:
    """``distances [B, D]`` with ``inf`` where the candidate's id equals the online row's id."""
    if exclude is None:
        return distances
    return distances.masked_fill(exclude[0].unsqueeze(1) == exclude[1].unsqueeze(0), float("inf"))


@runtime_checkable
class TransitionDistance(Protocol):
    """The protocol a distance follows to plug into :class:`~torchrl_otc.OTCSampler` (section 3.3, eq. 1 and 3).

    The sampler draws ``|B|`` candidate transitions and ``|D|`` online transitions and calls :meth:`compare`
    under :func:`torch.no_grad`, with the candidates as a flat TensorDict (batch size ``[|B|]``, the keys
    :attr:`in_keys`) and the online rows as :class:`OnlineRows`. :meth:`compare` returns a :class:`Comparison`:
    the ``[|B|, |D|]`` state-action distances of eq. (1) (non-negative, smaller meaning more alike) with their
    row minima, and the next-state distance ``d(s', s'*)`` to whichever match the sampler picks, ranked by
    eq. (3).

    Subclasses of this protocol inherit a :meth:`compare` built from :meth:`state_action_distance` and
    :meth:`next_state_distance`; a class that only has the structure must implement all three. A distance whose
    numbers change over time (a learned one) increases an integer attribute ``version`` when they do: caches
    keyed on it are then refreshed. One whose numbers may change at any call, with nothing to tell when (d_q
    follows a critic trained at every update), sets ``version = None``: nothing is kept for it across calls.

    Attributes:
        in_keys: the keys the distance reads from a transition (nested keys allowed).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> class StateGap(TransitionDistance):  # compare is inherited
        ...     in_keys = ["observation", ("next", "observation")]
        ...     def state_action_distance(self, candidates, online):
        ...         return torch.cdist(candidates["observation"], online["observation"], p=1.0)
        ...     def next_state_distance(self, candidates, matches):
        ...         return (candidates["next", "observation"] - matches["next", "observation"]).abs().sum(-1)
        >>> td = TensorDict({"observation": torch.tensor([[0.0], [3.0]]),
        ...                  ("next", "observation"): torch.tensor([[1.0], [5.0]])}, [2])
        >>> out = StateGap().compare(td, OnlineRows.of(td[:1]))
        >>> out.minimum, out.next_state(out.argmin)
        (tensor([0., 3.]), tensor([0., 4.]))
        >>> from torchrl_otc.modules.distances import FeatureDistance
        >>> isinstance(FeatureDistance(), TransitionDistance)  # a structural check: any such object plugs in
        True
    """

    in_keys: Sequence[NestedKey]

    def state_action_distance(self, candidates: TensorDictBase, online: TensorDictBase) -> Tensor:
        """Pairwise state-action distances, shape ``[len(candidates), len(online)]``."""
        ...

    def next_state_distance(self, candidates: TensorDictBase, matches: TensorDictBase) -> Tensor:
        """Row-wise next-state distances, shape ``[len(candidates)]`` (``matches[j]`` is ``candidates[j]``'s)."""
        ...

    def compare(
        self,
        candidates: TensorDictBase,
        online: OnlineRows,
        *,
        exclude: tuple[Tensor, Tensor] | None = None,
    ) -> Comparison:
        """Compares ``|B|`` candidates with the online rows ``online.rows``: eq. (1)'s distances, and eq. (3)'s.

        Args:
            candidates: flat TensorDict of ``|B|`` transitions holding :attr:`in_keys`.
            online: the online rows.

        Keyword Args:
            exclude: ``(candidate ids [B], online ids [D])``: pairs with equal ids may not match (their
                state-action distance is ``inf``).

        Returns:
            the :class:`Comparison`.
        """
        rows = online.selected()
        distances = self.state_action_distance(candidates, rows)
        expected = (candidates.shape[0], rows.shape[0])
        if tuple(distances.shape) != expected:
            raise ValueError(
                f"{type(self).__name__}.state_action_distance returned shape {tuple(distances.shape)}; "
                f"expected {expected} (candidates x online)."
            )

        def next_state(match: Tensor) -> Tensor:
            return self.next_state_distance(candidates, rows[match])

        return Comparison.of(_excluded(distances, exclude), next_state)


def pairwise_l1(x: Tensor, y: Tensor) -> Tensor:
    """L1 distance between every row of ``x`` ``[B, k]`` and every row of ``y`` ``[D, k]``: ``[B, D]``.

    Uses :func:`torch.cdist` with ``p=1`` (about 12x faster than broadcasting ``(x[:, None] - y).abs().sum(-1)``
    on CPU at ``512 x 2000 x 10``).

    Examples:
        >>> import torch
        >>> pairwise_l1(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, -2.0], [0.5, 0.5]]))
        tensor([[3., 1.]])
    """
    if x.shape[-1] == 0:
        return x.new_zeros(x.shape[0], y.shape[0])
    return torch.cdist(x.unsqueeze(0), y.unsqueeze(0), p=1.0).squeeze(0)


def _l1_by_feature(x: Tensor, y_t: Tensor) -> Tensor:
    """Pairwise L1 ``[B, D]`` of ``x [B, k]`` and ``y_t [k, D]``, summed one feature after the other.

    The order of the additions is fixed (feature 0, then 1, ...), so the compiled kernel and an eager
    recomputation of some of its rows give the same floats; written out feature by feature, the compiler keeps the
    running sum in registers while it vectorises over the ``D`` online rows.
    """
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0], y_t.shape[1])
    d = (x[:, 0:1] - y_t[0]).abs()
    for j in range(1, x.shape[1]):
        d = d + (x[:, j : j + 1] - y_t[j]).abs()
    return d


def _l1_min(
    x: Tensor, y_t: Tensor, x_ids: Tensor | None = None, y_ids: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Row minima of the pairwise L1 ``[B, D]`` of ``x [B, k]`` and ``y_t [k, D]``, with the first and the last
    column reaching each: the kernel :func:`torch.compile` fuses, without writing the ``[B, D]`` matrix out.

    A row ties (more than one column reaches its minimum) exactly when its first and last columns differ; only
    those rows are recomputed (:func:`_l1_comparison`). Pairs with equal ids (``x_ids [B]``, ``y_ids [D]``) get
    ``inf``. ``benchmarks/bench_sampler.py`` times it.
    """
    d = _l1_by_feature(x, y_t)
    if x_ids is not None and y_ids is not None:
        d = d.masked_fill(x_ids.unsqueeze(1) == y_ids.unsqueeze(0), float("inf"))
    minimum = d.amin(1, keepdim=True)
    column = torch.arange(d.shape[1], device=d.device)
    reach = d == minimum
    first = torch.where(reach, column, d.shape[1]).amin(1)
    last = torch.where(reach, column, -1).amax(1)
    return minimum.squeeze(1), first, last


class RowsOnDemand:
    """A ``[B, D]`` matrix whose rows are computed only when they are indexed.

    :class:`Comparison` carries eq. (1)'s state-action distances this way when a distance found the row minima
    without the matrix: the sampler reads only the rows whose minimum ties
    (:func:`~torchrl_otc.data.samplers.ranking.break_ties`, ``distances[tied]``).

    Args:
        rows: ``rows(index) -> [len(index), D]`` for a tensor of row indices or a slice (``[D]`` for an integer).
        shape: ``(B, D)``.

    Examples:
        >>> import torch
        >>> x, y = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 5.0, 2.0])
        >>> gaps = RowsOnDemand(lambda r: (x[r].unsqueeze(-1) - y).abs(), (2, 3))
        >>> gaps[torch.tensor([1])]
        tensor([[1., 3., 0.]])
        >>> gaps.dense().shape
        torch.Size([2, 3])
    """

    def __init__(self, rows: Callable[[Any], Tensor], shape: tuple[int, int]) -> None:
        self._rows = rows
        self.shape = torch.Size(shape)

    def __getitem__(self, index: Any) -> Tensor:
        return self._rows(index)

    def dense(self) -> Tensor:
        """The whole ``[B, D]`` matrix."""
        return self[:]


def _l1_comparison(
    x: Tensor,
    y_t: Tensor,
    ids: tuple[Tensor, Tensor] | None,
    kernel: Callable[..., tuple[Tensor, Tensor, Tensor]],
    next_state: Callable[[Tensor], Tensor],
) -> Comparison:
    """:class:`Comparison` of ``x [B, k]`` with ``y_t [k, D]`` from the fused kernel's minima and first / last
    columns: exact tie counts for the rows whose first and last columns differ (recomputed alone), lazy rows."""
    x_ids, y_ids = ids if ids is not None else (None, None)
    minimum, first, last = kernel(x, y_t, x_ids, y_ids)
    n_cols = y_t.shape[1]

    def rows(index: Any) -> Tensor:
        d = _l1_by_feature(x[index].reshape(-1, x.shape[1]), y_t)
        if x_ids is not None and y_ids is not None:
            d = d.masked_fill(x_ids[index].reshape(-1, 1) == y_ids.unsqueeze(0), float("inf"))
        return d.reshape(*x[index].shape[:-1], n_cols)

    ties = (first != last).long() + 1
    tied = (first != last).nonzero().squeeze(-1)
    if tied.numel():  # rare with continuous features: count exactly, on the recomputed rows
        ties[tied] = (rows(tied) == minimum[tied].unsqueeze(-1)).sum(-1)
    argmin = first.clamp(
        max=max(n_cols - 1, 0)
    )  # a NaN row reaches nothing; the sampler reports it
    return Comparison(
        cast(Tensor, RowsOnDemand(rows, (x.shape[0], n_cols))), minimum, argmin, ties, next_state
    )


class L1EmbeddingDistance(nn.Module, TransitionDistance):
    """Base class for distances that are L1 norms between embeddings of transitions.

    Subclasses implement :meth:`embed`, which maps a flat TensorDict of transitions to two tensors: the
    state-action embedding ``e(s, a_i)`` ``[N, k]`` and the next-state embedding ``e(s')`` ``[N, m]``. Then
    (section 3.3)

    .. math::
        d(s, a_i, s^*, a_i^*) = \\lVert e(s, a_i) - e(s^*, a_i^*) \\rVert_1, \\qquad
        d(s', s'^*) = \\lVert e(s') - e(s'^*) \\rVert_1 .

    :meth:`compare` computes the ``[|B|, |D|]`` matrix from the embeddings, so subclasses get batching, caching
    and compiling for free:

    * **one forward pass** embeds the ``|B| + |D|`` rows together (:meth:`embed_sets`);
    * **the online rows' embeddings are cached** (:meth:`online_embeddings`): with a row-wise embedding, every
      row of the online set is embedded once and reused until the set is written to (its
      :attr:`OnlineRows.version`), its size changes, the distance changes (:attr:`version`) or the device does.
      A distance that changes at every update (d_e trained once per update) would make the cache stale at every
      call; when the set holds more rows than the ``|D|`` drawn, embedding all of them per call costs more than
      embedding the drawn rows, so the cache is only rebuilt when :attr:`version` has not moved since the
      previous call (a comparison with every row, the eq. 4 estimate, rebuilds it anyway);
    * ``compile=True`` runs the pairwise step and its row minima as one kernel compiled by :func:`torch.compile`
      (on first use, for fixed shapes; not pickled). The kernel never writes the ``[|B|, |D|]`` matrix out: it
      returns each row's minimum with the first and the last column reaching it, and only the rows where those
      differ (ties) are recomputed, to count the ties and break them (:class:`RowsOnDemand`).

    Args:
        compile: compile the pairwise step. Defaults to ``False``.

    Attributes:
        version (int): increases whenever the embedding function changes (refit, parameter update, load).
        rowwise_embedding (bool): whether a row's embedding depends on that row alone. Only then are the online
            rows' embeddings cached across calls. A distance that normalises over the set it embeds sets it to
            ``False``.
        compile (bool): see ``compile``; may be changed at any time.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> class RawStates(L1EmbeddingDistance):  # match and rank on the raw states alone
        ...     in_keys = ["observation", ("next", "observation")]
        ...     def embed(self, td):
        ...         return td["observation"], td["next", "observation"]
        >>> td = TensorDict({"observation": torch.tensor([[0.0], [1.0]]),
        ...                  ("next", "observation"): torch.tensor([[1.0], [3.0]])}, [2])
        >>> RawStates().next_state_distance(td, td.flip(0))
        tensor([2., 2.])
        >>> RawStates().compare(td, OnlineRows.of(td)).argmin  # each row matches itself
        tensor([0, 1])
    """

    in_keys: list[NestedKey]
    rowwise_embedding: bool = True

    def __init__(self, *, compile: bool = False) -> None:
        super().__init__()
        self.version = 0
        self.compile = bool(compile)
        self._compiled: Callable[..., tuple[Tensor, Tensor, Tensor]] | None = None
        self._row_cache: tuple[tuple, Tensor, Tensor] | None = None
        self._last_version: int | None = None

    def embed(self, transitions: TensorDictBase) -> tuple[Tensor, Tensor]:
        """Returns ``(state_action_embedding [N, k], next_state_embedding [N, m])``."""
        raise NotImplementedError

    def embed_sets(
        self, candidates: TensorDictBase, online: TensorDictBase
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """``(embed(candidates), embed(online))`` computed with one forward pass over the ``|B| + |D|`` rows.

        Valid as it is for row-wise embeddings; a distance whose embedding depends on the set it embeds
        (:class:`~torchrl_otc.ValueDistance`) overrides it to keep each set's own normalisation.
        """
        if not self.rowwise_embedding:
            return self.embed(candidates), self.embed(online)
        sa, ns = self.embed(torch.cat([candidates, online.to(candidates.device)]))
        b = candidates.shape[0]
        return (sa[:b], ns[:b]), (sa[b:], ns[b:])

    def state_action_distance(self, candidates: TensorDictBase, online: TensorDictBase) -> Tensor:
        """Pairwise L1 distances between state-action embeddings, ``[len(candidates), len(online)]``."""
        return pairwise_l1(self.embed(candidates)[0], self.embed(online)[0])

    def next_state_distance(self, candidates: TensorDictBase, matches: TensorDictBase) -> Tensor:
        """Row-wise L1 distances between next-state embeddings, ``[len(candidates)]``."""
        return (self.embed(candidates)[1] - self.embed(matches)[1]).abs().sum(-1)

    @torch.no_grad()
    def compare(
        self,
        candidates: TensorDictBase,
        online: OnlineRows,
        *,
        exclude: tuple[Tensor, Tensor] | None = None,
    ) -> Comparison:
        """Eq. (1) and (3) on the embeddings: L1 distances between them (see :class:`TransitionDistance`).

        Args:
            candidates: flat TensorDict of ``|B|`` transitions holding :attr:`in_keys`.
            online: the online rows (their embeddings come from :meth:`online_embeddings` when it has them).

        Keyword Args:
            exclude: ``(candidate ids [B], online ids [D])``: pairs with equal ids may not match.
        """
        (sa_c, ns_c), (sa_o, ns_o), _ = self._embedded(candidates, online)
        next_state = _l1_to_match(ns_c, ns_o)
        if self.compile:
            if self._compiled is None:
                self._compiled = torch.compile(_l1_min, dynamic=False)
            return _l1_comparison(sa_c, sa_o.t().contiguous(), exclude, self._compiled, next_state)
        return Comparison.of(_excluded(pairwise_l1(sa_c, sa_o), exclude), next_state)

    def _embedded(
        self, candidates: TensorDictBase, online: OnlineRows
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], bool]:
        """The candidates' and the online rows' embeddings, and whether the online ones came from
        :meth:`online_embeddings` (else one pass over the |B| + |D| rows, so that a network runs once)."""
        embedded = self.online_embeddings(online, candidates.device)
        if embedded is None:
            return (*self.embed_sets(candidates, online.selected()), False)
        return self.embed(candidates), embedded, True

    @torch.no_grad()
    def online_embeddings(
        self, online: OnlineRows, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor] | None:
        """The compared online rows' embeddings without a pass over candidates, or ``None`` when one joint pass
        over candidates and online rows is the better way (see the class docstring).

        Args:
            online: the online rows. A set that is not kept (``version=None``) is never cached.
            device: where the embeddings are wanted (the candidates' device). Defaults to the CPU.

        Returns:
            ``(state_action [D', k], next_state [D', m])`` of ``online.rows`` (of every row when ``rows`` is
            ``None``), or ``None``.
        """
        if online.version is None:
            return None
        device = torch.device(device) if device is not None else torch.device("cpu")
        if not self.rowwise_embedding:
            if online.rows is not None:
                return None
            # a set-dependent embedding (ValueDistance's E[V]): once over the whole set, for every chunk
            if "embeddings" not in online.memo:
                online.memo["embeddings"] = self.embed(online.read(None))
            return online.memo["embeddings"]
        key = (online.version, online.size, self.version, str(device))
        version_moved = self._last_version not in (None, self.version)
        self._last_version = self.version
        if self._row_cache is None or self._row_cache[0] != key:
            if version_moved and online.rows is not None and online.size > online.num_draws:
                return None
            self._row_cache = (key, *self.embed(online.read(None)))
        sa, ns = self._row_cache[1], self._row_cache[2]
        if online.rows is None:
            return sa, ns
        rows = online.rows.to(device)
        return torch.index_select(sa, 0, rows), torch.index_select(ns, 0, rows)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"] = None  # compiled functions do not pickle; recompiled on first use
        state["_row_cache"] = None
        return state


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return value


def flat_features(td: TensorDictBase, key: NestedKey) -> Tensor:
    """``td[key]`` as a float ``[N, features]`` matrix (a vector becomes one column)."""
    value = td.get(key)
    value = value.reshape(value.shape[0], -1) if value.ndim != 1 else value.unsqueeze(-1)
    return value if value.is_floating_point() else value.float()
