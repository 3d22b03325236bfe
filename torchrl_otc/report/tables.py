"""Markdown tables of run records: the paper's Table 1 layout, returns, mechanism metrics, paired comparisons.

One row per (dataset, task), one column (or row) per method label (:attr:`RunRecord.label`). The statistical tables
(:func:`strategy_table`, :func:`versus_table`, :func:`decomposition_table`,
:func:`selector_table`) use :mod:`torchrl_otc.stats`.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from torchrl_otc.report.runs import RunRecord
from torchrl_otc.stats import (
    PairedSummary,
    bootstrap_ci,
    format_ci,
    paired_differences,
    paired_summary,
    unmatched_seeds,
)

__all__ = [
    "decomposition_table",
    "improvement",
    "improvement_table",
    "mechanism_table",
    "paired_table",
    "provenance",
    "returns_table",
    "selector_table",
    "strategy_table",
    "versus_table",
]


def improvement(returns: dict[int, float]) -> float:
    """Improvement (%) of the last deployment over the offline policy: ``100 (R_K - R_0) / |R_0|``.

    Examples:
        >>> improvement({0: -200.0, 1: -150.0, 2: -100.0})
        50.0
    """
    r0, rk = _offline_and_last(returns)
    if not math.isfinite(r0) or r0 == 0:
        return math.nan
    return 100.0 * (rk - r0) / abs(r0)


def _offline_and_last(returns: dict[int, float]) -> tuple[float, float]:
    """``(R_0, R_K)``: the offline policy's return and the last deployment's; NaNs without both."""
    if 0 not in returns or len(returns) < 2:
        return (math.nan, math.nan)
    return (returns[0], returns[max(returns)])


def _mean_std(values: Sequence[float]) -> str:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {std:.1f} (n={len(values)})"


def _table(runs: Iterable[RunRecord], cell: Any, fmt: Any = _mean_std) -> str:
    """One row per (dataset, task), one column per label; ``cell(run)`` per run, ``fmt(values)`` per cell."""
    cells: dict[tuple[str, str], dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    columns: list[str] = []
    for run in runs:
        cells[run.row_key][run.label].append(cell(run))
        if run.label not in columns:
            columns.append(run.label)
    formatted = {
        key: {c: fmt(by_label.get(c, [])) for c in columns} for key, by_label in cells.items()
    }
    return _markdown(sorted(columns), formatted)


def _markdown(
    columns: Sequence[str], cells: dict[tuple[str, str], dict[str, str]], footer: str = ""
) -> str:
    """The report's table layout: one row per (dataset, task), one column per label (``-`` when empty)."""
    lines = [
        "| dataset | task | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for (dataset, task), row in sorted(cells.items()):
        lines.append(
            f"| {dataset} | {task} | " + " | ".join(row.get(c, "-") for c in columns) + " |"
        )
    if footer:
        lines.append(footer)
    return "\n".join(lines)


def improvement_table(runs: Iterable[RunRecord]) -> str:
    """Markdown table in the layout of the paper's Table 1: improvement (%) at the last deployment over the
    offline-trained policy, mean ± std over seeds; one row per (dataset, task), one column per strategy.

    Examples:
        >>> from torchrl_otc.report import example_run
        >>> run = example_run()
        >>> print(improvement_table([run]))
        | dataset | task | otc-feature + td3bc |
        |---|---|---|
        | random | mpe/navigation-3 | 50.0 ± 0.0 (n=1) |
    """
    return _table(runs, lambda run: improvement(run.returns))


def _offline_to_online(values: Sequence[tuple[float, float]]) -> str:
    pairs = [(a, b) for a, b in values if math.isfinite(a) and math.isfinite(b)]
    if not pairs:
        return "-"

    def ms(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.2f}"

    return f"{ms([a for a, _ in pairs])} → {ms([b for _, b in pairs])} (n={len(pairs)})"


def returns_table(runs: Iterable[RunRecord]) -> str:
    """Markdown table of ``offline return → return at the last deployment``, mean ± std over seeds (CORL's
    offline-to-online layout). Unlike the improvement %, it stays readable when the offline return is near 0.

    Examples:
        >>> from torchrl_otc.report import example_run
        >>> run = example_run()
        >>> print(returns_table([run]).splitlines()[-1])
        | random | mpe/navigation-3 | -10.00 ± 0.00 → -5.00 ± 0.00 (n=1) |
    """

    return _table(runs, lambda run: _offline_and_last(run.returns), _offline_to_online)


def mechanism_table(runs: Iterable[RunRecord], suffix: str, digits: int = 3) -> str:
    """Markdown table of the online-phase mean of ``agent{i}/<suffix>`` (e.g. ``online_share``), mean ± std
    over seeds.

    Examples:
        >>> from torchrl_otc.report import example_run
        >>> run = example_run()
        >>> print(mechanism_table([run], "/online_share").splitlines()[-1])
        | random | mpe/navigation-3 | 0.267 ± 0.000 |
    """

    def fmt(values: Sequence[float]) -> str:
        values = [v for v in values if math.isfinite(v)]
        if not values:
            return "-"
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"

    return _table(runs, lambda run: run.online_mean(suffix), fmt)


def _baseline_label(by_label: dict[str, Any], baseline: str, algo: str) -> str:
    """The label of a cell's ``baseline`` runs: ``"<baseline> + <algo>"``, or with sequential exploration (section
    4.6, whose labels end in ``-sequential``) ``"<baseline>-sequential + <algo>"`` when the cell has those."""
    label = f"{baseline} + {algo}"
    sequential = f"{baseline}-sequential + {algo}"
    return sequential if label not in by_label and sequential in by_label else label


def paired_table(runs: Iterable[RunRecord], baseline: str = "uniform") -> str:
    """Markdown table of each strategy's paired difference to ``baseline`` sampling, seed by seed.

    A cell compares the gains ``R_K - R_0`` (return at the last deployment minus the offline policy's) of the two
    runs of each seed, method minus baseline. Runs of one seed in a sweep share their dataset and offline-trained
    agents (the tuner's cache), so this is the difference of their last returns, and the offline policy's spread
    over seeds drops out of the comparison. Returns, not Table 1's %, because the % divides by the offline
    return, which can be near 0 (HalfCheetah from random data). A cell is the mean ± standard error of that
    difference over the seeds both runs have, and how many seeds the method is ahead on; the last row counts the
    rows where the mean difference is positive.

    Args:
        runs: run records (e.g. one sweep's folder).
        baseline: the strategy compared against. Defaults to ``"uniform"`` (the base algorithm of Table 1).

    Returns:
        The table, or ``""`` when no run uses ``baseline``.

    Examples:
        >>> from pathlib import Path
        >>> def run(strategy, seed, last):
        ...     rows = [{"step": "0", "phase": "offline", "deployment": "0", "name": "eval/return_mean",
        ...              "value": "100"}, {"step": "9", "phase": "online", "deployment": "1",
        ...              "name": "eval/return_mean", "value": str(last)}]
        ...     cfg = {"strategy": strategy, "distance": "feature", "algo": "bcq", "dataset": "random",
        ...            "task": "mamujoco/hopper-3x1", "seed": seed}
        ...     return RunRecord(Path(f"runs/{strategy}{seed}"), cfg, rows)
        >>> runs = [run("uniform", 0, 90), run("uniform", 1, 100), run("otc", 0, 95), run("otc", 1, 99)]
        >>> print(paired_table(runs))
        | dataset | task | otc-feature + bcq − uniform + bcq |
        |---|---|---|
        | random | mamujoco/hopper-3x1 | +2.00 ± 3.00 (ahead on 1/2 seeds) |
        | rows with a positive mean | | 1/1 |
    """
    by_cell: dict[tuple[str, str, str], dict[str, dict[Any, float]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for r in runs:
        r0, rk = _offline_and_last(r.returns)
        if math.isfinite(r0):
            by_cell[(*r.row_key, r.config["algo"])][r.label][r.config.get("seed")] = rk - r0
    columns: list[str] = []
    cells: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    ahead: dict[str, list[bool]] = defaultdict(list)
    for (dataset, task, algo), by_label in sorted(by_cell.items()):
        base_label = _baseline_label(by_label, baseline, algo)
        base = by_label.get(base_label)
        if not base:
            continue
        for label, values in sorted(by_label.items()):
            seeds = sorted(set(values) & set(base), key=str)
            if label == base_label or not seeds:
                continue
            diffs = [values[s] - base[s] for s in seeds]
            sem = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
            mean = statistics.mean(diffs)
            column = f"{label} − {base_label}"
            if column not in columns:
                columns.append(column)
            wins = sum(d > 0 for d in diffs)
            cells[(dataset, task)][column] = (
                f"{mean:+.2f} ± {sem:.2f} (ahead on {wins}/{len(diffs)} seeds)"
            )
            ahead[column].append(mean > 0)
    if not columns:
        return ""
    columns.sort()
    footer = (
        "| rows with a positive mean | | "
        + " | ".join(f"{sum(ahead[c])}/{len(ahead[c])}" for c in columns)
        + " |"
    )
    return _markdown(columns, cells, footer)


def _by_cell(
    runs: Iterable[RunRecord],
) -> dict[tuple[str, str, str], dict[str, dict[Any, RunRecord]]]:
    """``{(dataset, task, algo): {label: {seed: run}}}``."""
    cells: dict[tuple[str, str, str], dict[str, dict[Any, RunRecord]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for run in runs:
        cells[(*run.row_key, run.config["algo"])][run.label][run.config.get("seed")] = run
    return cells


def _scores(runs: dict[Any, RunRecord], measure: str) -> dict[Any, float]:
    """``{seed: the run's measure}`` for the runs where it is defined, in the order of the seeds (so that a
    bootstrap interval does not depend on the order in which the run folders were read)."""
    try:
        seeds = sorted(runs)
    except TypeError:  # seeds of mixed types: any fixed order
        seeds = sorted(runs, key=repr)
    out = {seed: runs[seed].measure(measure) for seed in seeds}
    return {seed: value for seed, value in out.items() if math.isfinite(value)}


def _lines(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def strategy_table(runs: Iterable[RunRecord], measure: str = "mean", *, digits: int = 2) -> str:
    """Per cell and method: the mean and the interquartile mean of ``measure`` with 95 % bootstrap intervals,
    and the gain over the offline-trained policy (paired by seed) with its interval.

    Statistics as in Agarwal et al. (2021), :mod:`torchrl_otc.stats`: percentile bootstrap over seeds (2,000
    resamples, seed 0), IQM = mean of the middle 50 %. The gain column says whether online tuning moved returns
    at all: a cell whose gains all straddle zero ranks nothing.

    Args:
        runs: run records.
        measure: ``"last"`` or ``"mean"`` (see :data:`MEASURES`).
        digits: digits after the decimal point.

    Examples:
        >>> from torchrl_otc.report import example_run
        >>> print(strategy_table([example_run()], "last"))
        | dataset | task | method | n | mean [95 % CI] | IQM [95 % CI] | gain over offline [95 % CI] |
        |---|---|---|---|---|---|---|
        | random | mpe/navigation-3 | otc-feature + td3bc | 1 | -5.00 [-5.00, -5.00] | -5.00 [-5.00, -5.00] | +5.00 [+5.00, +5.00] |
    """
    rows = []
    for (dataset, task, _algo), by_label in sorted(_by_cell(runs).items()):
        for label, seeds in sorted(by_label.items()):
            scores = _scores(seeds, measure)
            if not scores:
                continue
            offline = _scores(seeds, "offline")
            gains = [scores[k] - offline[k] for k in scores if k in offline]
            mean = format_ci(*bootstrap_ci(scores, "mean"), digits=digits, signed=False)
            robust = format_ci(*bootstrap_ci(scores, "iqm"), digits=digits, signed=False)
            gain = format_ci(*bootstrap_ci(gains, "mean"), digits=digits) if gains else "-"
            rows.append((dataset, task, label, str(len(scores)), mean, robust, gain))
    header = ("dataset", "task", "method", "n", "mean [95 % CI]", "IQM [95 % CI]")
    return _lines((*header, "gain over offline [95 % CI]"), rows)


def _paired(x: dict[Any, float], y: dict[Any, float]) -> PairedSummary | None:
    """Scores of two methods (``{seed: score}``, from :func:`_scores`) paired by seed: the summary of ``x - y``
    over the seeds both have (:func:`~torchrl_otc.stats.paired_summary`, with the probability of improvement),
    ``None`` when they share no seed. The pairing of every comparison table (:func:`decomposition_table`,
    :func:`versus_table`, :func:`selector_table`)."""
    diffs = paired_differences(x, y)
    if not diffs:
        return None
    return paired_summary(diffs, scores=({k: x[k] for k in diffs}, {k: y[k] for k in diffs}))


def _compare(
    a: dict[Any, RunRecord], b: dict[Any, RunRecord], measure: str, digits: int
) -> tuple[str, ...] | None:
    """``n, mean difference [CI], W/T/L, P(a > b) [CI]`` of two methods' runs paired by seed."""
    summary = _paired(_scores(a, measure), _scores(b, measure))
    if summary is None:
        return None
    return (
        str(summary.n),
        format_ci(summary.mean, summary.ci_low, summary.ci_high, digits=digits),
        f"{summary.wins}/{summary.ties}/{summary.losses}",
        format_ci(summary.poi, summary.poi_low, summary.poi_high, digits=2, signed=False),
    )


_COMPARE_HEADER = ("n", "difference [95 % CI]", "W/T/L", "P(improvement) [95 % CI]")


def decomposition_table(
    runs: Iterable[RunRecord], measure: str = "mean", *, baseline: str = "uniform", digits: int = 2
) -> str:
    """Separates OTC's two effects, per cell: how many online rows a batch gets, and which offline rows it keeps.

    For every matched mix (``strategy=mix mix_fraction=matched``: per agent and deployment, the online share its
    paired OTC run measured) three comparisons, each paired by seed (a seed's runs share their offline-trained
    agents): OTC − uniform (OTC's whole effect), matched mix − uniform (the effect of the online share alone) and
    OTC − matched mix (the effect of OTC's choice of rows beyond its share). Each gives the mean difference with its
    95 % bootstrap interval, wins/ties/losses over seeds and the probability of improvement ``P(X > Y)`` with its
    interval (:mod:`torchrl_otc.stats`).

    Args:
        runs: run records (a sweep with uniform, OTC and matched-mix variants).
        measure: ``"last"`` or ``"mean"`` (see :data:`MEASURES`).
        baseline: the strategy of the reference runs. Defaults to ``"uniform"``.
        digits: digits after the decimal point.

    Returns:
        The table, or ``""`` when no cell has a matched mix with its OTC pair and the baseline.

    Examples:
        >>> from pathlib import Path
        >>> def run(strategy, seed, last, pair=None, **extra):
        ...     rows = [{"step": "0", "phase": "offline", "deployment": "0", "name": "eval/return_mean",
        ...              "value": "0"}, {"step": "9", "phase": "online", "deployment": "1",
        ...              "name": "eval/return_mean", "value": str(last)}]
        ...     cfg = {"strategy": strategy, "distance": "feature", "algo": "td3bc", "dataset": "random",
        ...            "task": "nav/nonstationary", "seed": seed, **extra}
        ...     return RunRecord(Path(f"runs/{strategy}{seed}"), cfg, rows, pair=pair)
        >>> otc_cfg = {"strategy": "otc", "distance": "feature", "algo": "td3bc"}
        >>> runs = [run("uniform", s, 1.0) for s in range(3)] + [run("otc", s, 2.0 + s) for s in range(3)]
        >>> runs += [run("mix", s, 2.0 + 2 * s, mix_fraction="matched", pair=otc_cfg) for s in range(3)]
        >>> print(decomposition_table(runs, "last").splitlines()[-1])
        | random | nav/nonstationary | otc-feature + td3bc − mix-matched-otc-feature + td3bc | 3 | -1.00 [-2.00, +0.00] | 0/1/2 | 0.33 [0.00, 0.83] |
    """
    rows = []
    for (dataset, task, algo), by_label in sorted(_by_cell(runs).items()):
        base_label = _baseline_label(by_label, baseline, algo)
        base = by_label.get(base_label)
        if not base:
            continue
        for label, mixes in sorted(by_label.items()):
            first = next(iter(mixes.values()))
            if first.config.get("strategy") != "mix" or first.pair is None:
                continue
            pair_label = RunRecord(first.path, first.pair).label
            otc = by_label.get(pair_label)
            if not otc:
                continue
            for name, a, b in (
                (f"{pair_label} − {base_label}", otc, base),
                (f"{label} − {base_label}", mixes, base),
                (f"{pair_label} − {label}", otc, mixes),
            ):
                compared = _compare(a, b, measure, digits)
                if compared is not None:
                    rows.append((dataset, task, name, *compared))
    if not rows:
        return ""
    return _lines(("dataset", "task", "comparison", *_COMPARE_HEADER), rows)


def _matched_mixes(
    by_label: dict[str, dict[Any, RunRecord]],
) -> dict[tuple[str | None, str], dict[Any, RunRecord]]:
    """A cell's matched mixes (``strategy=mix mix_fraction=matched``) by the label of their paired OTC run
    (``None`` when the pair's folder was not found) and their ``mix_source``."""
    mixes: dict[tuple[str | None, str], dict[Any, RunRecord]] = {}
    for runs in by_label.values():
        first = next(iter(runs.values()))
        if first.config.get("strategy") == "mix" and first.config.get("mix_fraction") == "matched":
            pair = None if first.pair is None else RunRecord(first.path, first.pair).label
            mixes.setdefault((pair, first.config.get("mix_source", "all")), {}).update(runs)
    return mixes


def _fixed_mix(
    by_label: dict[str, dict[Any, RunRecord]], fraction: float, source: str
) -> dict[Any, RunRecord] | None:
    """A cell's fixed mix (``strategy=mix mix_fraction=<fraction>``) with ``mix_source`` ``source``, if any."""
    for runs in by_label.values():
        first = next(iter(runs.values()))
        share = first.config.get("mix_fraction")
        if (
            first.config.get("strategy") == "mix"
            and isinstance(share, (int, float))
            and math.isclose(float(share), fraction)
            and first.config.get("mix_source", "all") == source
        ):
            return runs
    return None


def _share(runs: Iterable[RunRecord], suffix: str) -> str:
    """The mean over runs of the online-phase mean of ``agent{i}/<suffix>``; ``-`` where no run logs it."""
    values = [v for v in (run.online_mean(suffix) for run in runs) if math.isfinite(v)]
    return f"{statistics.fmean(values):.3f}" if values else "-"


def selector_table(
    runs: Iterable[RunRecord], measure: str = "mean", *, baseline: str = "uniform", digits: int = 2
) -> str:
    """Decomposed OTC, one selector per method, at the online share of its matched mix (issue 15, item 4).

    Per (dataset, task), one row per OTC method: the coupled OTC runs (the paper's procedure) and every decomposed
    OTC (``online_fraction`` set, e.g. ``otc-value-ofmatched + td3bc``). A decomposed run draws, per agent and
    deployment, the online share its paired coupled-OTC run (``mix_pair``) measured and chooses the offline rows
    with its selector; the matched mix of that pair draws the same share and its offline rows uniformly. So
    ``selector − matched mix`` is what the selector's choice of offline rows adds. The columns, over the seeds
    the method, its matched mix and ``baseline`` all have (a seed's runs share their offline-trained agents):

    * ``n`` and the mean of ``measure`` with its 95 % bootstrap interval;
    * the paired difference to the matched mix of the same seed (mean with its 95 % bootstrap interval,
      wins/ties/losses over seeds), and the same against ``baseline`` (``-`` when the cell has no such run);
    * the online share of the training batches and the share of the drawn offline rows with the deployment's
      dynamics (``agent{i}/online_share``, ``agent{i}/offline_right_dynamics_share``: online-phase means over
      agents, then over the seeds; ``-`` where not logged).

    A method's run with no matched-mix (or ``baseline``) run of the same seed is left out and counted in a note
    under the table. The matched mix of a coupled OTC method is the one paired with it; of a decomposed one at
    ``online_fraction=matched``, the one paired with the same coupled run (else the cell's only matched mix whose
    pair was not found); of a decomposed one at a fixed share ``F``, the fixed mix at the same ``F``
    (``strategy=mix mix_fraction=F``); all with the method's ``mix_source``.

    Args:
        runs: run records (a sweep like ``examples/recipes/selectors.yaml``).
        measure: ``"last"`` or ``"mean"`` (see :data:`MEASURES`).
        baseline: the strategy of the reference runs. Defaults to ``"uniform"``.
        digits: digits after the decimal point.

    Returns:
        The table (and its note line, if runs were left out), or ``""`` when no OTC method has a matched mix.

    Examples:
        >>> from pathlib import Path
        >>> def run(strategy, seed, last, pair=None, **extra):
        ...     rows = [{"step": "0", "phase": "offline", "deployment": "0", "name": "eval/return_mean",
        ...              "value": "0"}, {"step": "9", "phase": "online", "deployment": "1",
        ...              "name": "eval/return_mean", "value": str(last)}]
        ...     cfg = {"strategy": strategy, "distance": "feature", "algo": "td3bc", "dataset": "random",
        ...            "task": "nav/nonstationary", "seed": seed, **extra}
        ...     return RunRecord(Path(f"runs/{strategy}{seed}"), cfg, rows, pair=pair)
        >>> otc_cfg = {"strategy": "otc", "distance": "feature", "algo": "td3bc"}
        >>> runs = [run("uniform", s, 1.0) for s in range(3)] + [run("otc", s, 2.0) for s in range(3)]
        >>> runs += [run("mix", s, 3.0, mix_fraction="matched", pair=otc_cfg) for s in range(3)]
        >>> runs += [run("otc", s, 3.0 + s, pair=otc_cfg, distance="value", online_fraction="matched")
        ...          for s in range(4)]  # seed 3 has no matched mix: left out
        >>> for line in selector_table(runs, "last").splitlines()[2:]:
        ...     print(line)
        | random | nav/nonstationary | otc-feature + td3bc | 3 | 2.00 [2.00, 2.00] | -1.00 [-1.00, -1.00] | 0/0/3 | +1.00 [+1.00, +1.00] | 3/0/0 | - | - |
        | random | nav/nonstationary | otc-value-ofmatched + td3bc | 3 | 4.00 [3.00, 5.00] | +1.00 [+0.00, +2.00] | 2/1/0 | +3.00 [+2.00, +4.00] | 3/0/0 | - | - |
        Left out (no matched-mix or uniform run of the same seed): 1 run(s): random nav/nonstationary otc-value-ofmatched + td3bc seed 3.
    """
    rows, left_out = [], []
    for (dataset, task, algo), by_label in sorted(_by_cell(runs).items()):
        mixes = _matched_mixes(by_label)
        base = by_label.get(_baseline_label(by_label, baseline, algo))
        methods = [
            (label, seeds)
            for label, seeds in by_label.items()
            if next(iter(seeds.values())).config.get("strategy") == "otc"
        ]
        # the coupled OTC first, then the selectors
        methods.sort(
            key=lambda m: (
                next(iter(m[1].values())).config.get("online_fraction") is not None,
                m[0],
            )
        )
        for label, seeds in methods:
            first = next(iter(seeds.values()))
            source = first.config.get("mix_source", "all")
            fraction = first.config.get("online_fraction")
            if isinstance(fraction, (int, float)) and not isinstance(fraction, bool):
                # a fixed share: its control is the fixed mix at the same share and source
                mix = _fixed_mix(by_label, float(fraction), source)
            else:
                if fraction is None:
                    pair: str | None = label
                else:
                    paired = next((r.pair for r in seeds.values() if r.pair is not None), None)
                    pair = None if paired is None else RunRecord(first.path, paired).label
                mix = mixes.get((pair, source))
                if mix is None and [k for k in mixes if k[1] == source] == [(None, source)]:
                    mix = mixes[(None, source)]
            if mix is None:
                continue
            x, y = _scores(seeds, measure), _scores(mix, measure)
            u = _scores(base, measure) if base else None
            partners = {k: v for k, v in y.items() if u is None or k in u}
            unpaired, _ = unmatched_seeds(x, partners)
            left_out += [f"{dataset} {task} {label} seed {s}" for s in unpaired]
            x = {k: v for k, v in x.items() if k in partners}
            if not x:
                continue
            versus_mix = _paired(x, y)
            versus_base = _paired(x, u) if u is not None else None
            cells = []
            for summary in (versus_mix, versus_base):
                if summary is None:
                    cells += ["-", "-"]
                else:
                    ci = format_ci(summary.mean, summary.ci_low, summary.ci_high, digits=digits)
                    cells += [ci, f"{summary.wins}/{summary.ties}/{summary.losses}"]
            mean = format_ci(*bootstrap_ci(x, "mean"), digits=digits, signed=False)
            paired_runs = [seeds[k] for k in x]
            rows.append(
                (
                    dataset,
                    task,
                    label,
                    str(len(x)),
                    mean,
                    *cells,
                    _share(paired_runs, "/online_share"),
                    _share(paired_runs, "/offline_right_dynamics_share"),
                )
            )
    if not rows:
        return ""
    header = (
        "dataset",
        "task",
        "method",
        "n",
        "mean [95 % CI]",
        "− matched mix [95 % CI]",
        "W/T/L",
        f"− {baseline} [95 % CI]",
        "W/T/L",
        "online share",
        "offline right-dynamics share",
    )
    table = _lines(header, rows)
    if left_out:
        table += (
            f"\nLeft out (no matched-mix or {baseline} run of the same seed): {len(left_out)} run(s): "
            + "; ".join(left_out)
            + "."
        )
    return table


def versus_table(
    runs: Iterable[RunRecord], measure: str = "mean", *, baseline: str = "uniform", digits: int = 2
) -> str:
    """Every method against ``baseline`` sampling, paired by seed: mean difference of ``measure`` with its 95 %
    bootstrap interval, wins/ties/losses and the probability of improvement (see :func:`decomposition_table`).

    Examples:
        >>> from torchrl_otc.report import example_run
        >>> print(versus_table([example_run()]))
        <BLANKLINE>
    """
    rows = []
    for (dataset, task, algo), by_label in sorted(_by_cell(runs).items()):
        base_label = _baseline_label(by_label, baseline, algo)
        base = by_label.get(base_label)
        if not base:
            continue
        for label, seeds in sorted(by_label.items()):
            if label == base_label:
                continue
            compared = _compare(seeds, base, measure, digits)
            if compared is not None:
                rows.append((dataset, task, f"{label} − {base_label}", *compared))
    if not rows:
        return ""
    return _lines(("dataset", "task", "comparison", *_COMPARE_HEADER), rows)


def provenance(runs: Sequence[RunRecord]) -> list[str]:
    """Lines saying where the runs come from: machines, versions, git revisions, seeds, dates.

    Examples:
        >>> from torchrl_otc.report import example_run
        >>> run = example_run()
        >>> provenance([run])[0]
        '* runs: 1 in runs; seeds: [0]'
        >>> provenance([run])[2]  # what floating-point results depend on: recorded by every run (meta.json)
        '* compute: ? intra-op thread(s) (config: None), CPU ? (?), BLAS ?, tensordict ?, torchrl ?'
    """
    machines = sorted(
        {
            f"{r.meta.get('machine', '?')}, cuda: {r.meta.get('cuda') or 'none'}, device: {r.meta.get('device', '?')}"
            for r in runs
        }
    )
    revisions = sorted({str(r.meta.get("git_revision") or "unknown")[:10] for r in runs})
    versions = sorted(
        {
            f"torchrl-otc {r.meta.get('version', '?')}, torch {r.meta.get('torch', '?')}"
            for r in runs
        }
    )
    seeds = sorted({int(r.config.get("seed", 0)) for r in runs})
    started = sorted(str(r.meta.get("started", "?"))[:10] for r in runs)
    roots = sorted({str(r.path.parent) for r in runs})
    compute = sorted(
        {
            f"{r.meta.get('threads', '?')} intra-op thread(s) (config: {r.config.get('threads')}), "
            f"CPU {r.meta.get('cpu', '?')} ({r.meta.get('cpu_capability', '?')}), BLAS {r.meta.get('blas', '?')}, "
            f"tensordict {r.meta.get('tensordict', '?')}, torchrl {r.meta.get('torchrl', '?')}"
            for r in runs
        }
    )
    return [
        f"* runs: {len(runs)} in {', '.join(roots)}; seeds: {seeds}",
        f"* machines: {'; '.join(machines)}",
        f"* compute: {'; '.join(compute)}",
        f"* versions: {'; '.join(versions)}; git revisions: {', '.join(revisions)}",
        f"* run dates: {started[0]} to {started[-1]}; report written {time.strftime('%Y-%m-%d')}",
    ]
