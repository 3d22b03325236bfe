"""Statistics for comparing RL results over few seeds: IQM, bootstrap intervals, paired differences.

The methods follow Agarwal et al. (2021), "Deep Reinforcement Learning at the Edge of the Statistical
Precipice", and its library `rliable`: the interquartile mean (IQM) as a robust aggregate, percentile
bootstrap confidence intervals, stratified over tasks when scores of several tasks are pooled, and the
probability of improvement ``P(X > Y)`` (the Mann-Whitney U statistic divided by ``n * m``). They are written
here once, with numpy only, so that a table cell and a test use the same numbers.

Every random draw comes from a :class:`numpy.random.Generator` seeded with the ``seed`` argument, so an
interval is the same on every call with the same inputs and seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PairedSummary",
    "bootstrap_ci",
    "format_ci",
    "iqm",
    "paired_differences",
    "paired_summary",
    "probability_of_improvement",
    "probability_of_improvement_ci",
    "unmatched_seeds",
]

Statistic = str | Callable[[np.ndarray], float]
"""A statistic of a 1-D sample: ``"mean"``, ``"iqm"`` or a function of a 1-D array returning a float."""


def _as_sample(values: Iterable[float] | Mapping[Any, float], name: str = "values") -> np.ndarray:
    """``values`` as a 1-D float array; a mapping gives its values. Raises on empty or non-finite input."""
    if isinstance(values, Mapping):
        values = list(values.values())
    x = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}; flatten it first")
    if x.size == 0:
        raise ValueError(f"{name} is empty; pass at least one value (e.g. one seed's score)")
    if not np.all(np.isfinite(x)):
        raise ValueError(
            f"{name} contains NaN or infinite values; drop them (e.g. failed runs) before the statistic"
        )
    return x


def _iqm_rows(samples: np.ndarray) -> np.ndarray:
    """The IQM of each row of a 2-D array (``scipy.stats.trim_mean(samples, 0.25, axis=1)``)."""
    n = samples.shape[1]
    cut = int(0.25 * n)
    return np.sort(samples, axis=1)[:, cut : n - cut].mean(axis=1)


def iqm(values: Iterable[float] | Mapping[Any, float]) -> float:
    """Interquartile mean: the mean of the values left after trimming 25 % from each end.

    Same as ``scipy.stats.trim_mean(values, 0.25)``: ``cut = int(0.25 * n)`` of the sorted values are dropped
    at each end, and the rest are averaged. ``cut`` rounds down, so for ``n < 4`` nothing is dropped and the IQM
    is the plain mean; for ``n = 4 ... 7`` one value is dropped at each end (for ``n = 5`` the middle 3 of 5 are
    kept, 60 % rather than 50 %). With few seeds it is therefore close to the mean; its robustness to one outlier
    run starts at ``n = 4``.

    Args:
        values: the scores (a sequence, an array or a mapping of seed to score).

    Returns:
        The interquartile mean.

    Raises:
        ValueError: when ``values`` is empty, not one-dimensional or not finite.

    Examples:
        >>> iqm([1.0, 2.0, 3.0, 100.0])
        2.5
        >>> iqm([4.0, 1.0, 3.0, 2.0, 5.0, 8.0, 6.0, 7.0])
        4.5
        >>> iqm([1.0, 2.0, 9.0])  # n < 4: nothing trimmed, the mean
        4.0
    """
    x = _as_sample(values)
    return float(_iqm_rows(x[None, :])[0])


def _statistic_rows(statistic: Statistic) -> Callable[[np.ndarray], np.ndarray]:
    """A function computing ``statistic`` on each row of a 2-D array."""
    if statistic == "mean":
        return lambda s: s.mean(axis=1)
    if statistic == "iqm":
        return _iqm_rows
    if callable(statistic):
        fn = statistic
        return lambda s: np.array([float(fn(row)) for row in s])
    raise ValueError(f"statistic must be 'mean', 'iqm' or a callable, got {statistic!r}")


def _check_interval_args(confidence: float, reps: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence!r}")
    if int(reps) != reps or reps < 1:
        raise ValueError(
            f"reps must be a positive integer (2000 or more for a 95 % interval), got {reps!r}"
        )


def _percentiles(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(stats, [alpha, 100.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(
    values: Iterable[float] | Mapping[Any, float],
    statistic: Statistic = "mean",
    *,
    confidence: float = 0.95,
    reps: int = 2000,
    seed: int = 0,
    strata: Sequence[Hashable] | None = None,
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of a statistic: ``(point, low, high)``.

    Each of ``reps`` resamples draws ``n`` values with replacement; the interval is the ``(1 - confidence) / 2``
    and ``(1 + confidence) / 2`` quantiles of the statistic over the resamples, and the point estimate is the
    statistic of ``values`` themselves. With ``strata`` (one label per value, e.g. the task of each score), the
    bootstrap is stratified as rliable's ``StratifiedBootstrap``: each stratum is resampled with replacement
    within itself, independently, so every resample keeps each stratum's count, and the statistic is computed
    on the pooled resample (e.g. the IQM over all tasks' runs).

    The percentile bootstrap undercovers for small samples (about 93 % actual coverage of a nominal 95 %
    interval of a normal mean at ``n = 30``, less for ``n < 10``): with 3-5 seeds read the interval as a rough
    spread rather than an exact 95 % guarantee.

    Args:
        values: the sample (a sequence, an array, or a mapping of seed to value).
        statistic: ``"mean"``, ``"iqm"`` or a function of a 1-D array returning a float. Defaults to ``"mean"``.
        confidence: the interval's nominal coverage, in (0, 1). Defaults to 0.95.
        reps: the number of bootstrap resamples. Defaults to 2000.
        seed: seed of the numpy random generator; the same seed gives the same interval. Defaults to 0.
        strata: a label per value to stratify the resampling by, or ``None`` (plain bootstrap).

    Returns:
        ``(point, low, high)``. With one value, or all values equal, the interval is degenerate:
        ``(point, point, point)``.

    Raises:
        ValueError: for empty or non-finite ``values``, ``confidence`` outside (0, 1), ``reps < 1``, an unknown
            ``statistic`` or ``strata`` whose length differs from that of ``values``.

    Examples:
        >>> point, low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0], reps=1000)
        >>> point, low < point < high
        (3.0, True)
        >>> bootstrap_ci([2.0, 2.0, 2.0])
        (2.0, 2.0, 2.0)
        >>> bootstrap_ci([0.0] * 10 + [1.0] * 30, strata=["a"] * 10 + ["b"] * 30)
        (0.75, 0.75, 0.75)
    """
    x = _as_sample(values)
    _check_interval_args(confidence, reps)
    rows = _statistic_rows(statistic)
    labels: list[Hashable] | None = None
    if strata is not None:
        labels = list(strata)
        if len(labels) != x.size:
            raise ValueError(
                f"strata has {len(labels)} labels for {x.size} values; pass one label per value"
            )
    point = float(rows(x[None, :])[0])
    if x.size == 1 or np.all(x == x[0]):
        return point, point, point
    rng = np.random.default_rng(seed)
    if labels is None:
        index = rng.integers(0, x.size, size=(int(reps), x.size))
    else:
        groups: dict[Hashable, list[int]] = {}
        for i, label in enumerate(labels):
            groups.setdefault(label, []).append(i)
        parts = []
        for members in groups.values():
            idx = np.asarray(members)
            parts.append(idx[rng.integers(0, idx.size, size=(int(reps), idx.size))])
        index = np.concatenate(parts, axis=1)
    low, high = _percentiles(rows(x[index]), confidence)
    return point, low, high


def probability_of_improvement(
    x: Iterable[float] | Mapping[Any, float], y: Iterable[float] | Mapping[Any, float]
) -> float:
    """Probability of improvement ``P(X > Y)`` of the scores ``x`` over the scores ``y``, as in rliable.

    The mean over all ``n * m`` pairs ``(x_i, y_j)`` of ``1[x_i > y_j] + 0.5 * 1[x_i == y_j]``, i.e. the
    Mann-Whitney U statistic of ``x`` divided by ``n * m``. The pairing of seeds is not used: it compares the
    two score distributions (0.5: no difference; 1.0: every score of ``x`` beats every score of ``y``).

    Args:
        x: scores of the method (a sequence, an array or a mapping of seed to score).
        y: scores of the method compared against.

    Returns:
        ``P(X > Y)`` in [0, 1].

    Raises:
        ValueError: when ``x`` or ``y`` is empty or not finite.

    Examples:
        >>> probability_of_improvement([3.0, 4.0], [1.0, 2.0])
        1.0
        >>> probability_of_improvement([1.0, 2.0], [1.0, 2.0])
        0.5
        >>> round(probability_of_improvement([2.0, 3.0], [1.0, 2.0, 4.0]), 3)  # (1.5 + 2) / 6
        0.583
    """
    xs = _as_sample(x, "x")
    ys = np.sort(_as_sample(y, "y"))
    below = np.searchsorted(ys, xs, side="left")
    at_or_below = np.searchsorted(ys, xs, side="right")
    u = float(np.sum(below + 0.5 * (at_or_below - below)))
    return u / (xs.size * ys.size)


def _poi_rows(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """``probability_of_improvement`` of each row of ``xs`` (reps, n) over the same row of ``ys`` (reps, m)."""
    n, m = xs.shape[1], ys.shape[1]
    greater = np.zeros(xs.shape[0])
    for j in range(m):  # loops over m, not over the resamples: (reps, n) per step
        col = ys[:, j : j + 1]
        greater += (xs > col).sum(axis=1) + 0.5 * (xs == col).sum(axis=1)
    return greater / (n * m)


def probability_of_improvement_ci(
    x: Iterable[float] | Mapping[Any, float],
    y: Iterable[float] | Mapping[Any, float],
    *,
    confidence: float = 0.95,
    reps: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """:func:`probability_of_improvement` with a percentile bootstrap interval: ``(point, low, high)``.

    ``x`` and ``y`` are resampled independently (rliable's ``StratifiedIndependentBootstrap`` for one task).

    Args:
        x: scores of the method.
        y: scores of the method compared against.
        confidence: the interval's nominal coverage, in (0, 1). Defaults to 0.95.
        reps: the number of bootstrap resamples. Defaults to 2000.
        seed: seed of the numpy random generator. Defaults to 0.

    Returns:
        ``(point, low, high)``; degenerate when every resample gives the same value (e.g. all ``x`` above all
        ``y``).

    Raises:
        ValueError: for empty or non-finite scores, ``confidence`` outside (0, 1) or ``reps < 1``.

    Examples:
        >>> probability_of_improvement_ci([5.0, 6.0, 7.0], [1.0, 2.0])
        (1.0, 1.0, 1.0)
        >>> point, low, high = probability_of_improvement_ci([1.0, 3.0, 5.0], [2.0, 4.0], reps=500)
        >>> point, low <= point <= high
        (0.5, True)
    """
    xs = _as_sample(x, "x")
    ys = _as_sample(y, "y")
    _check_interval_args(confidence, reps)
    point = probability_of_improvement(xs, ys)
    if xs.min() > ys.max() or xs.max() < ys.min():
        return point, point, point
    rng = np.random.default_rng(seed)
    rx = xs[rng.integers(0, xs.size, size=(int(reps), xs.size))]
    ry = ys[rng.integers(0, ys.size, size=(int(reps), ys.size))]
    low, high = _percentiles(_poi_rows(rx, ry), confidence)
    return point, low, high


def paired_differences(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> dict:
    """Seed-by-seed differences ``a[seed] - b[seed]`` over the seeds both mappings have.

    Seeds in only one of them are left out; :func:`unmatched_seeds` says which.

    Args:
        a: seed -> score of the method.
        b: seed -> score of the method compared against.

    Returns:
        ``{seed: a[seed] - b[seed]}``, in the order of ``a``.

    Examples:
        >>> paired_differences({0: 3.0, 1: 5.0, 2: 1.0}, {1: 4.0, 0: 1.0, 7: 0.0})
        {0: 2.0, 1: 1.0}
    """
    return {s: float(a[s]) - float(b[s]) for s in a if s in b}


def unmatched_seeds(
    a: Mapping[Hashable, float], b: Mapping[Hashable, float]
) -> tuple[list[Hashable], list[Hashable]]:
    """The seeds :func:`paired_differences` leaves out: ``(only in a, only in b)``.

    Examples:
        >>> unmatched_seeds({0: 3.0, 1: 5.0, 2: 1.0}, {1: 4.0, 0: 1.0, 7: 0.0})
        ([2], [7])
    """
    return [s for s in a if s not in b], [s for s in b if s not in a]


@dataclass(frozen=True)
class PairedSummary:
    """Summary of seed-by-seed differences (method minus baseline), from :func:`paired_summary`.

    Attributes:
        n: number of paired seeds.
        mean: mean difference.
        sem: standard error of the mean difference (sample standard deviation over ``sqrt(n)``; NaN for
            ``n = 1``).
        ci_low: lower end of the bootstrap interval of the mean difference.
        ci_high: upper end of that interval.
        confidence: the interval's nominal coverage.
        wins: seeds with a difference above ``tol``.
        ties: seeds with ``|difference| <= tol``.
        losses: seeds with a difference below ``-tol``.
        poi: probability of improvement ``P(X > Y)`` of the two score sets, NaN when no scores were given.
        poi_low: lower end of its bootstrap interval (NaN without scores).
        poi_high: upper end of its bootstrap interval (NaN without scores).
    """

    n: int
    mean: float
    sem: float
    ci_low: float
    ci_high: float
    confidence: float
    wins: int
    ties: int
    losses: int
    poi: float = math.nan
    poi_low: float = math.nan
    poi_high: float = math.nan

    def cell(self, digits: int = 2) -> str:
        """A markdown cell: the mean difference, its interval and the wins, e.g. ``+0.72 [+0.55, +0.89] (3/4)``.

        Examples:
            >>> paired_summary({0: 1.0, 1: 1.0}).cell()
            '+1.00 [+1.00, +1.00] (2/2)'
        """
        return f"{format_ci(self.mean, self.ci_low, self.ci_high, digits=digits)} ({self.wins}/{self.n})"


def paired_summary(
    diffs: Mapping[Hashable, float] | Iterable[float],
    *,
    confidence: float = 0.95,
    reps: int = 2000,
    seed: int = 0,
    tol: float = 0.0,
    scores: tuple[Iterable[float] | Mapping[Any, float], Iterable[float] | Mapping[Any, float]]
    | None = None,
) -> PairedSummary:
    """Summarise paired differences: mean, standard error, bootstrap interval, wins / ties / losses.

    Args:
        diffs: the differences, method minus baseline (e.g. from :func:`paired_differences`), as a mapping of
            seed to difference or a sequence.
        confidence: the interval's nominal coverage, in (0, 1). Defaults to 0.95.
        reps: the number of bootstrap resamples. Defaults to 2000.
        seed: seed of the numpy random generator. Defaults to 0.
        tol: differences with ``|d| <= tol`` count as ties. Defaults to 0.0 (exact ties).
        scores: ``(x, y)``, the two raw score sets (method, baseline), to add the probability of improvement
            ``P(X > Y)`` and its interval (:func:`probability_of_improvement_ci`); ``None`` leaves them NaN.

    Returns:
        The :class:`PairedSummary`.

    Raises:
        ValueError: for empty or non-finite differences, ``tol < 0``, ``confidence`` outside (0, 1) or
            ``reps < 1``.

    Examples:
        >>> a = {0: 10.0, 1: 12.0, 2: 9.0, 3: 11.0}
        >>> b = {0: 8.0, 1: 12.0, 2: 10.0, 3: 7.0}
        >>> s = paired_summary(paired_differences(a, b), scores=(a, b))
        >>> s.n, s.mean, (s.wins, s.ties, s.losses), round(s.sem, 3), s.poi
        (4, 1.25, (2, 1, 1), 1.109, 0.6875)
    """
    d = _as_sample(diffs, "diffs")
    if not tol >= 0.0:
        raise ValueError(f"tol must be >= 0 (differences within tol are ties), got {tol!r}")
    point, low, high = bootstrap_ci(d, "mean", confidence=confidence, reps=reps, seed=seed)
    sem = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan
    poi = poi_low = poi_high = math.nan
    if scores is not None:
        x, y = scores
        poi, poi_low, poi_high = probability_of_improvement_ci(
            x, y, confidence=confidence, reps=reps, seed=seed
        )
    return PairedSummary(
        n=int(d.size),
        mean=point,
        sem=sem,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        wins=int(np.sum(d > tol)),
        ties=int(np.sum(np.abs(d) <= tol)),
        losses=int(np.sum(d < -tol)),
        poi=poi,
        poi_low=poi_low,
        poi_high=poi_high,
    )


def _signed(value: float, digits: int, signed: bool) -> str:
    if not math.isfinite(value):
        return "n/a"
    rounded = round(value, digits) + 0.0  # + 0.0 turns -0.0 into 0.0: "+0.00", not "-0.00"
    return f"{rounded:{'+' if signed else ''}.{digits}f}"


def format_ci(
    point: float,
    low: float | None = None,
    high: float | None = None,
    *,
    digits: int = 2,
    signed: bool = True,
) -> str:
    """A markdown cell for an estimate and its interval: ``"+0.72 [+0.55, +0.89]"``.

    Args:
        point: the estimate.
        low: lower end of the interval, or ``None`` for the estimate alone.
        high: upper end of the interval, or ``None`` for the estimate alone.
        digits: digits after the decimal point. Defaults to 2.
        signed: write a ``+`` before non-negative numbers (for differences). Defaults to ``True``.

    Returns:
        The text; non-finite numbers are written ``n/a``.

    Examples:
        >>> format_ci(0.7249, 0.55, 0.891)
        '+0.72 [+0.55, +0.89]'
        >>> format_ci(*bootstrap_ci([2.0, 2.0]), digits=1, signed=False)
        '2.0 [2.0, 2.0]'
        >>> format_ci(-0.001, -0.5, float("nan"))
        '+0.00 [-0.50, n/a]'
    """
    text = _signed(point, digits, signed)
    if low is None and high is None:
        return text
    lo = _signed(math.nan if low is None else low, digits, signed)
    hi = _signed(math.nan if high is None else high, digits, signed)
    return f"{text} [{lo}, {hi}]"
