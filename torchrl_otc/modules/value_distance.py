"""The value-based transition distance ``d_q`` of OTC (paper section 3.3), from the agent's own critic.

:class:`ValueFunctions` declares what ``d_q`` needs from an algorithm (``Q(s, a)`` and ``V(s)``); every
:class:`~torchrl_otc.trainers.algorithms.Algorithm` provides it, so this module names no algorithm and reads no
loss's internals. Also importable from :mod:`torchrl_otc.modules.distances`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol, cast, runtime_checkable

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor

from torchrl_otc.modules.transition_distance import (
    Comparison,
    L1EmbeddingDistance,
    OnlineRows,
    RowsOnDemand,
    _l1_to_match,
    check_positive_int,
    flat_features,
)

__all__ = ["ValueDistance", "ValueFunctions", "nearest_on_line"]


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


def _chunked(function: Callable[..., Tensor], chunk: int, *inputs: Tensor) -> Tensor:
    """``function(*inputs).reshape(-1)``, computed over at most ``chunk`` rows at a time (cache-sized passes)."""
    n = inputs[0].shape[0]
    if n <= chunk:
        return function(*inputs).reshape(-1)
    return torch.cat(
        [function(*(t[i : i + chunk] for t in inputs)).reshape(-1) for i in range(0, n, chunk)]
    )


def _abs_gaps(x: Tensor, y: Tensor) -> RowsOnDemand:
    r"""The ``[B, D]`` matrix ``|x_j - y_i|`` of eq. (1) for 1-D keys, computed only for the rows read.

    Each entry is ``(x_j - y_i).abs()``, the same float as
    :func:`~torchrl_otc.modules.transition_distance.pairwise_l1` gives for one feature.
    """
    return RowsOnDemand(lambda rows: (x[rows].unsqueeze(-1) - y).abs(), (x.shape[0], y.shape[0]))


def _run_start(sorted_y: Tensor, i: Tensor) -> Tensor:
    """First sorted position holding the value at position ``i`` (the start of its run of equal values)."""
    return torch.searchsorted(sorted_y, sorted_y[i], side="left")


def _run_end(sorted_y: Tensor, i: Tensor) -> Tensor:
    """Last sorted position holding the value at position ``i``."""
    return torch.searchsorted(sorted_y, sorted_y[i], side="right") - 1


def nearest_on_line(
    x: Tensor, y: Tensor, sorted_y: Tensor | None = None, order: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Row minima, first argmins and tie counts of the ``[B, D]`` matrix ``|x_j - y_i|``, without building it.

    For a one-dimensional key (``d_q``'s eq. 1, :math:`\lvert Q(s, a_i) - Q(s^*, a_i^*) \rvert`) the nearest
    ``y`` of ``x_j`` is one of its two neighbours in sorted order: ``y`` is sorted once (``O(D log D)``) and
    every ``x_j`` is placed by :func:`torch.searchsorted` (``O(B log D)``) instead of the ``O(B D)`` matrix.

    The results are exactly those of the matrix (``minimum, argmin = m.min(-1)``, ``ties = (m == minimum).sum(-1)``
    with ``m = (x[:, None] - y).abs()``), floats included: the distances are computed by the same subtraction,
    ``fl(x - y)`` is monotone in ``y`` on each side of ``x``, so the columns reaching the minimum are one
    contiguous range ``[lo, hi]`` of sorted positions (equal values among the ``y`` and equidistant neighbours on
    both sides). Its ends are first guessed by :func:`torch.searchsorted` of ``x -/+ minimum`` and then moved a
    run of equal values at a time while they are wrong (rounding of ``x -/+ minimum``: a step or two).

    Args:
        x: ``[B]`` keys of the candidates (finite).
        y: ``[D]`` keys of the online rows (finite), ``D >= 1``.
        sorted_y: ``y`` sorted, with ``order`` (``torch.sort(y, stable=True)``): pass them to sort ``y`` once for
            several ``x``.
        order: see ``sorted_y``.

    Returns:
        ``(minimum [B], argmin [B], ties [B])``: the smallest distance, the first column (index into ``y``)
        reaching it, and how many columns reach it.

    Examples:
        >>> import torch
        >>> nearest_on_line(torch.tensor([0.9, 2.0, 5.0]), torch.tensor([3.0, 1.0, 1.0, 3.0]))
        (tensor([0.1000, 1.0000, 2.0000]), tensor([1, 0, 0]), tensor([2, 4, 2]))
    """
    if sorted_y is None or order is None:
        sorted_y, order = torch.sort(y, stable=True)
    d = sorted_y.shape[0]
    pos = torch.searchsorted(sorted_y, x)  # first position with sorted_y >= x
    inf = x.new_tensor(float("inf"))
    left, right = (pos - 1).clamp_min(0), pos.clamp_max(d - 1)
    d_left = torch.where(pos > 0, (x - sorted_y[left]).abs(), inf)
    d_right = torch.where(pos < d, (x - sorted_y[right]).abs(), inf)
    minimum = torch.minimum(d_left, d_right)

    def gap(i: Tensor) -> Tensor:
        return (x - sorted_y[i.clamp(0, d - 1)]).abs()

    # lo: first position left of pos with gap <= minimum (pos when none); gaps grow leftwards.
    lo = torch.minimum(torch.searchsorted(sorted_y, x - minimum), pos)
    while bool((down := (lo > 0) & (gap(lo - 1) <= minimum)).any()):
        lo = torch.where(down, _run_start(sorted_y, (lo - 1).clamp_min(0)), lo)
    while bool((up := (lo < pos) & (gap(lo) > minimum)).any()):
        lo = torch.where(up, _run_end(sorted_y, lo.clamp_max(d - 1)) + 1, lo)
    # hi: last position right of pos - 1 with gap <= minimum (pos - 1 when none); gaps grow rightwards.
    hi = torch.maximum(torch.searchsorted(sorted_y, x + minimum, side="right") - 1, pos - 1)
    while bool((up := (hi < d - 1) & (gap(hi + 1) <= minimum)).any()):
        hi = torch.where(up, _run_end(sorted_y, (hi + 1).clamp_max(d - 1)), hi)
    while bool((down := (hi >= pos) & (gap(hi) > minimum)).any()):
        hi = torch.where(down, _run_start(sorted_y, hi.clamp_min(0)) - 1, hi)
    ties = hi - lo + 1
    argmin = order[lo.clamp(0, d - 1)]
    tied = (ties > 1).nonzero().squeeze(-1)
    if tied.numel():
        # the first column among the tied ones: the smallest original index over positions lo..hi
        span = torch.arange(int(ties[tied].max()), device=x.device)
        at = lo[tied].unsqueeze(-1) + span
        columns = order[at.clamp_max(d - 1)].masked_fill(at > hi[tied].unsqueeze(-1), d)
        argmin = argmin.clone()
        argmin[tied] = columns.min(-1).values
    return minimum, argmin, ties


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

    **Matching without the matrix.** The state-action key is one number, so :meth:`compare` sorts the ``|D|``
    online values once and places each candidate among them with :func:`torch.searchsorted`
    (:func:`nearest_on_line`: ``O((|B| + |D|) log |D|)`` instead of the ``O(|B| |D|)`` matrix of
    :class:`L1EmbeddingDistance`). The row minima, first argmins and tie counts are exactly the matrix's; the
    :class:`~torchrl_otc.modules.Comparison`'s ``state_action`` computes the matrix's rows only when read (the
    sampler reads the rows with tied minima to break the ties at random, weighted by the online rows'
    multiplicities, eq. 1), so the match's distribution, the tie counts and the next-state distance are those of
    the matrix path. With ``exclude`` (``OTCSampler(self_match=False)``) or non-finite values it falls back to
    the matrix. The critic runs over at most :attr:`critic_chunk` rows at a time.

    **Stale values** (``refresh_every=k > 1``; an approximation, not in the paper). Exact d_q recomputes ``Q`` and
    ``V(s')`` of all ``|B| + |D|`` rows at every update, because the critic changed; that pass costs several
    updates (BCQ's ``V(s')`` decodes 10 actions per next state). With ``refresh_every=k`` the distance's
    :attr:`version` is ``algorithm.num_updates // k``, so an :class:`~torchrl_otc.OTCSampler` with
    ``score_every=k`` scores ``k |B|`` candidates against one ``|D|`` draw with the critic of the first update
    of each group of ``k`` and serves the ``k`` batches from it: one critic pass over ``k |B| + |D|`` rows per
    ``k`` updates instead of ``k`` passes over ``|B| + |D|``. The ``j``-th batch of a group uses values ``j``
    updates old, and ``E_{s'} V(s')`` is taken over the ``k |B|`` candidates. How much one update moves the
    matches is measured in ``benchmarks/bench_dq_refresh.py`` (see ``benchmarks/README.md``). It needs an
    algorithm that counts its updates (``num_updates``, as every
    :class:`~torchrl_otc.trainers.algorithms.Algorithm` does); it has no effect with ``score_every=1``.

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
        compile: compile the L1 step of the matrix path (:class:`L1EmbeddingDistance`), which is only taken
            with ``exclude`` or non-finite values (see above). Defaults to ``False``.
        refresh_every: ``k``: treat the values as current for ``k`` updates of the critic (see "Stale values").
            Defaults to ``1``: exact, the values of the critic of the update being made.

    Attributes:
        critic_chunk (int): the most rows given to the critic (``Q``, ``V``) in one call: a class attribute,
            ``4096``; every row's value is still computed once per call.

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
    critic_chunk: int = 4096

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
        refresh_every: int = 1,
    ) -> None:
        super().__init__(compile=compile)
        check_positive_int("refresh_every", refresh_every)
        self.refresh_every = refresh_every
        if critic_reduction not in ("mean", "min"):
            raise ValueError(f"critic_reduction must be 'mean' or 'min'; got {critic_reduction!r}.")
        if value_actions not in ("policy", "sample"):
            raise ValueError(f"value_actions must be 'policy' or 'sample'; got {value_actions!r}.")
        check_positive_int("num_action_samples", num_action_samples)
        if not (rel_tol >= 0 and eps > 0):
            raise ValueError(f"rel_tol must be >= 0 and eps > 0; got rel_tol={rel_tol}, eps={eps}.")
        if (q_function is None) != (value_function is None):
            raise ValueError(
                "Pass both q_function and value_function, or neither (and an algorithm)."
            )
        if q_function is not None and algorithm is not None:
            raise ValueError("Pass either an algorithm or q_function/value_function, not both.")
        if q_function is not None and refresh_every > 1:
            raise ValueError(
                f"refresh_every={refresh_every} counts the updates of an algorithm's critic; with q_function and "
                "value_function there is none. Pass algorithm=..., or refresh_every=1."
            )
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

    @property
    def version(self) -> int | None:  # type: ignore[override]
        """When the scores change: ``None`` (every update, the default) or ``num_updates // refresh_every``.

        With ``refresh_every=1`` the critic changes at every update, so no version can say when scores are still
        valid: nothing is cached on one (``OTCSampler(score_every=k)`` scores every call for it).
        """
        algorithm = self.__dict__.get("algorithm")
        if self.__dict__.get("refresh_every", 1) == 1 or algorithm is None:
            return None
        return int(algorithm.num_updates) // self.refresh_every

    @version.setter
    def version(self, value: int | None) -> None:
        # The base class starts every distance at version 0; this one's version follows the critic's updates.
        pass

    def bind(self, algorithm: ValueFunctions) -> None:
        """Uses ``algorithm``'s values (no-op when built with ``q_function``/``value_function``).

        Args:
            algorithm: any :class:`ValueFunctions`, e.g. an :class:`~torchrl_otc.trainers.algorithms.Algorithm`.

        Raises:
            ValueError: the algorithm cannot compute ``V`` with ``value_actions`` (TD3+BC with ``"sample"``), or
                ``refresh_every > 1`` and it does not count its updates (no integer ``num_updates``).
        """
        if self._user_functions:
            return
        algorithm.check_state_value(self.value_actions)
        if self.refresh_every > 1 and not isinstance(getattr(algorithm, "num_updates", None), int):
            raise ValueError(
                f"ValueDistance(refresh_every={self.refresh_every}) needs an algorithm that counts its updates "
                f"(an integer num_updates); {type(algorithm).__name__} has none. Use refresh_every=1."
            )
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

    @torch.no_grad()
    def compare(
        self,
        candidates: TensorDictBase,
        online: OnlineRows,
        *,
        exclude: tuple[Tensor, Tensor] | None = None,
    ) -> Comparison:
        r"""Eq. (1) by sorting: each candidate's nearest online row in :math:`\lvert Q(s, a_i) - Q(s^*, a_i^*) \rvert`.

        The same :class:`~torchrl_otc.modules.Comparison` as :meth:`L1EmbeddingDistance.compare` (minima, first
        argmins, tie counts, and ``d(s', s'*)`` to the chosen match), from :func:`nearest_on_line`; its
        ``state_action`` computes rows of the ``[|B|, |D|]`` matrix when they are read (the sampler's tie-breaking
        reads the tied rows). Falls back to the matrix with ``exclude``, with no candidate or online row, or with
        non-finite values.

        Args:
            candidates: flat TensorDict of ``|B|`` transitions holding :attr:`in_keys`.
            online: the online rows.

        Keyword Args:
            exclude: ``(candidate ids [B], online ids [D])``: pairs with equal ids may not match.
        """
        if exclude is not None or candidates.shape[0] == 0:
            return super().compare(candidates, online, exclude=exclude)
        (q_c, ns_c), (q_o, ns_o), cached = self._embedded(candidates, online)
        x, y = q_c.squeeze(-1), q_o.squeeze(-1)
        dtype = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(dtype), y.to(dtype)
        next_state = _l1_to_match(ns_c, ns_o)
        if y.shape[0] == 0 or not bool(torch.isfinite(x).all() & torch.isfinite(y).all()):
            return Comparison.of((x.unsqueeze(-1) - y).abs(), next_state)
        # the online values sorted once per set (the chunks of an eq. 4 estimate share the memoised embeddings)
        if cached:
            if "value_sort" not in online.memo:
                online.memo["value_sort"] = torch.sort(y, stable=True)
            sorted_y, order = online.memo["value_sort"]
        else:
            sorted_y, order = torch.sort(y, stable=True)
        minimum, argmin, ties = nearest_on_line(x, y, sorted_y, order)
        # break_ties reads rows of state_action (distances[tied]); only those rows are computed
        return Comparison(cast(Tensor, _abs_gaps(x, y)), minimum, argmin, ties, next_state)

    def _values(self, transitions: TensorDictBase) -> tuple[Tensor, Tensor]:
        """``Q(s, a_i)`` and ``V(s')`` ``[N]`` of the rows of ``transitions``."""
        q_function, value_function = self.__dict__["q_function"], self.__dict__["value_function"]
        if q_function is None:
            raise RuntimeError(
                "ValueDistance is not bound to a critic: pass algorithm=..., or q_function and value_function, "
                "or use it through AgentLearner (which binds the agent's own algorithm)."
            )
        state, action, nxt = (flat_features(transitions, key) for key in self.in_keys)
        return _chunked(q_function, self.critic_chunk, state, action), _chunked(
            value_function, self.critic_chunk, nxt
        )

    def extra_repr(self) -> str:
        return (
            f"critic_reduction={self.critic_reduction!r}, value_actions={self.value_actions!r}, "
            f"bound={self.__dict__['q_function'] is not None}, refresh_every={self.refresh_every}"
        )
