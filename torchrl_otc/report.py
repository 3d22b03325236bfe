"""Tables and figures from run folders: the paper's Table 1 layout and Figures 3-5 (``otc report``).

A run folder (written by :class:`~torchrl_otc.trainers.tuning.OnlineTuner`) holds ``config.yaml`` and
``metrics.csv`` in long format: one row per scalar with the columns ``step, phase, deployment, name, value``.
The report reads the evaluation rows ``eval/return_mean`` (deployment 0 is the offline-trained policy) and the
per-agent ``agent{i}/alpha`` rows.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "RunRecord",
    "example_run",
    "load_run",
    "improvement",
    "improvement_table",
    "mechanism_table",
    "paired_table",
    "decomposition_table",
    "strategy_table",
    "versus_table",
    "MEASURES",
    "provenance",
    "returns_table",
    "write_report",
    "METRIC_COLUMNS",
]

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ("step", "phase", "deployment", "name", "value")

#: What the statistical tables compare, per run: the last deployment's return, and the mean over deployments 1..K
#: (less noisy; it also credits a method that improves early).
MEASURES = {
    "last": "return at the last deployment",
    "mean": "mean return over deployments 1..K",
}


@dataclass
class RunRecord:
    """One run folder, read back: its config, its metric rows and its provenance (``meta.json``).

    Examples:
        >>> from pathlib import Path
        >>> rows = [{"step": str(10 * k), "phase": "online", "deployment": str(k), "name": name, "value": str(v)}
        ...         for k, (r, share) in enumerate([(-10.0, 0.0), (-8.0, 0.3), (-5.0, 0.5)])
        ...         for name, v in (("eval/return_mean", r), ("agent0/online_share", share))]
        >>> run = RunRecord(Path("runs/r"), {"strategy": "otc", "distance": "feature", "algo": "td3bc",
        ...                 "dataset": "random", "task": "mpe/navigation-3", "seed": 0}, rows)
        >>> run.label, run.returns
        ('otc-feature + td3bc', {0: -10.0, 1: -8.0, 2: -5.0})
        >>> round(run.online_mean("/online_share"), 3)
        0.267
    """

    path: Path
    config: dict
    rows: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    pair: dict | None = None  # a matched mix: its paired OTC run's config

    def measure(self, which: str) -> float:
        """A scalar of the run's returns: ``"last"`` (the last deployment's), ``"mean"`` (the mean over deployments
        ``1..K``) or ``"offline"`` (deployment 0's); NaN when the run has no online evaluation yet."""
        returns = self.returns
        online = [v for k, v in sorted(returns.items()) if k >= 1]
        if which not in MEASURES and which != "offline":
            raise ValueError(f"Unknown measure {which!r}; use one of {', '.join(MEASURES)}.")
        if which == "offline":
            return returns.get(0, math.nan)
        if not online:
            return math.nan
        return online[-1] if which == "last" else statistics.fmean(online)

    def series(self, name: str) -> dict[int, float]:
        """The last value of metric ``name`` per deployment."""
        out: dict[int, float] = {}
        for row in self.rows:
            if row["name"] == name:
                out[int(row["deployment"])] = float(row["value"])
        return out

    @property
    def returns(self) -> dict[int, float]:
        """Mean evaluation return per deployment (0 = after offline training)."""
        return self.series("eval/return_mean")

    @property
    def label(self) -> str:
        """The column of the run in Table 1, the strategy (with OTC's options that differ from the defaults)
        and the algorithm, e.g. ``otc-feature-next_state + td3bc``."""
        cfg = self.config
        strategy = cfg["strategy"]
        if strategy == "otc":
            parts = [f"otc-{cfg['distance']}"]
            if not cfg.get("adaptive_alpha", True):
                parts.append(f"fixed{float(cfg.get('alpha', 1.0)):g}")
            elif float(cfg.get("alpha", 1.0)) != 1.0:
                parts.append(f"alpha0={float(cfg['alpha']):g}")
            if (
                cfg["distance"] == "feature"
                and cfg.get("next_state", "displacement") != "displacement"
            ):
                parts.append(cfg["next_state"])
            if (
                cfg["distance"] == "embedding"
                and cfg.get("embedding_reconstruct", "action") != "action"
            ):
                parts.append(f"decode-{cfg['embedding_reconstruct']}")
            if not cfg.get("self_match", True):
                parts.append("no-self-match")
            strategy = "-".join(parts)
        if strategy == "mix":
            if cfg.get("mix_fraction") == "matched":
                strategy = "mix-matched"
                if self.pair is not None:
                    strategy += f"-{RunRecord(self.path, self.pair).label.split(' + ')[0]}"
            else:
                strategy = f"mix-{float(cfg.get('mix_fraction', 0.5)):g}"
            if cfg.get("mix_source", "all") != "all":
                strategy += f"-{cfg['mix_source']}"
        if cfg.get("sequential_exploration"):
            strategy += "-sequential"
        return f"{strategy} + {cfg['algo']}"

    def online_mean(self, suffix: str) -> float:
        """Mean over the online phase's rows and the agents of the metrics ``agent{i}/<suffix>``."""
        values = [
            float(r["value"])
            for r in self.rows
            if r["phase"] == "online"
            and r["name"].startswith("agent")
            and r["name"].endswith(suffix)
        ]
        return statistics.mean(values) if values else math.nan

    @property
    def row_key(self) -> tuple[str, str]:
        return (self.config["dataset"], self.config["task"])


def example_run() -> RunRecord:
    """A small in-memory run (OTC with the feature distance, TD3+BC, three evaluations) for examples and tests.

    Examples:
        >>> example_run().returns
        {0: -10.0, 1: -8.0, 2: -5.0}
    """
    rows = [
        {
            "step": str(10 * k),
            "phase": "online",
            "deployment": str(k),
            "name": name,
            "value": str(v),
        }
        for k, (ret, share) in enumerate([(-10.0, 0.0), (-8.0, 0.3), (-5.0, 0.5)])
        for name, v in (("eval/return_mean", ret), ("agent0/online_share", share))
    ]
    config = {
        "strategy": "otc",
        "distance": "feature",
        "algo": "td3bc",
        "dataset": "random",
        "task": "mpe/navigation-3",
        "seed": 0,
    }
    return RunRecord(Path("runs/r"), config, rows)


def load_run(path: str | Path) -> RunRecord:
    """Reads a run folder; raises :class:`FileNotFoundError` naming what is missing.

    Examples:
        >>> import tempfile
        >>> from torchrl_otc.trainers.run import RunFolder
        >>> folder = RunFolder(tempfile.mkdtemp())
        >>> folder.write_config({"strategy": "uniform", "algo": "td3bc", "dataset": "random", "task": "nav/nonstationary"})
        >>> folder.log({"eval/return_mean": 1.0}, step=0, phase="offline", deployment=0)
        >>> folder.log({"eval/return_mean": 4.0}, step=50, phase="online", deployment=1)
        >>> load_run(folder.path).returns
        {0: 1.0, 1: 4.0}
    """
    path = Path(path)
    config_file, metrics_file = path / "config.yaml", path / "metrics.csv"
    for f in (config_file, metrics_file):
        if not f.exists():
            raise FileNotFoundError(f"{path} is not a run folder: {f.name} is missing.")
    config = yaml.safe_load(config_file.read_text())
    with metrics_file.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    meta_file = path / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    pair = None
    if config.get("strategy") == "mix" and config.get("mix_pair"):
        # where the sweep wrote it, else beside this run (a copied or moved sweep folder)
        for where in (Path(config["mix_pair"]), path.parent / Path(config["mix_pair"]).name):
            if (where / "config.yaml").exists():
                pair = yaml.safe_load((where / "config.yaml").read_text())
                break
    return RunRecord(path, config, rows, meta, pair)


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
        >>> run = example_run()
        >>> print(returns_table([run]).splitlines()[-1])
        | random | mpe/navigation-3 | -10.00 ± 0.00 → -5.00 ± 0.00 (n=1) |
    """

    return _table(runs, lambda run: _offline_and_last(run.returns), _offline_to_online)


def mechanism_table(runs: Iterable[RunRecord], suffix: str, digits: int = 3) -> str:
    """Markdown table of the online-phase mean of ``agent{i}/<suffix>`` (e.g. ``online_share``), mean ± std
    over seeds.

    Examples:
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
        base_label = f"{baseline} + {algo}"
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
        >>> print(strategy_table([example_run()], "last"))
        | dataset | task | method | n | mean [95 % CI] | IQM [95 % CI] | gain over offline [95 % CI] |
        |---|---|---|---|---|---|---|
        | random | mpe/navigation-3 | otc-feature + td3bc | 1 | -5.00 [-5.00, -5.00] | -5.00 [-5.00, -5.00] | +5.00 [+5.00, +5.00] |
    """
    from torchrl_otc.stats import bootstrap_ci, format_ci

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


def _compare(
    a: dict[Any, RunRecord], b: dict[Any, RunRecord], measure: str, digits: int
) -> tuple[str, ...] | None:
    """``n, mean difference [CI], W/T/L, P(a > b) [CI]`` of two methods' runs paired by seed."""
    from torchrl_otc.stats import format_ci, paired_differences, paired_summary

    x, y = _scores(a, measure), _scores(b, measure)
    diffs = paired_differences(x, y)
    if not diffs:
        return None
    paired_x = {k: x[k] for k in diffs}
    paired_y = {k: y[k] for k in diffs}
    summary = paired_summary(diffs, scores=(paired_x, paired_y))
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
        base = by_label.get(f"{baseline} + {algo}")
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
            base_label = f"{baseline} + {algo}"
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


def versus_table(
    runs: Iterable[RunRecord], measure: str = "mean", *, baseline: str = "uniform", digits: int = 2
) -> str:
    """Every method against ``baseline`` sampling, paired by seed: mean difference of ``measure`` with its 95 %
    bootstrap interval, wins/ties/losses and the probability of improvement (see :func:`decomposition_table`).

    Examples:
        >>> print(versus_table([example_run()]))
        <BLANKLINE>
    """
    rows = []
    for (dataset, task, algo), by_label in sorted(_by_cell(runs).items()):
        base_label = f"{baseline} + {algo}"
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


def _plot_curves(
    runs: list[RunRecord], out: Path, metric: str, ylabel: str, per_agent: bool
) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:  # pragma: no cover - plots are optional
        logger.warning(
            "matplotlib is not installed: no figures (pip install 'torchrl-otc[plots]')."
        )
        return None
    groups: dict[tuple, dict[str, list[dict[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if per_agent:
            names = sorted({r["name"] for r in run.rows if r["name"].endswith(metric)})
            for name in names:
                groups[run.row_key][f"{run.label} {name.split('/')[0]}"].append(run.series(name))
        else:
            groups[run.row_key][run.label].append(run.series(metric))
    groups = {k: v for k, v in groups.items() if any(any(s) for s in v.values())}
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.5), squeeze=False)
    for ax, ((dataset, task), by_label) in zip(axes[0], sorted(groups.items())):
        for label, series in sorted(by_label.items()):
            steps = sorted({k for s in series for k in s})
            means = [statistics.mean([s[k] for s in series if k in s]) for k in steps]
            stds = [statistics.pstdev([s[k] for s in series if k in s]) for k in steps]
            ax.plot(steps, means, marker="o", label=label)
            ax.fill_between(
                steps,
                [m - s for m, s in zip(means, stds)],
                [m + s for m, s in zip(means, stds)],
                alpha=0.2,
            )
        ax.set_title(f"{task} ({dataset})")
        ax.set_xlabel("deployment")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_report(
    run_dirs: Iterable[str | Path], out_dir: str | Path, *, title: str = "OTC report"
) -> Path:
    """Writes ``report.md`` with the Table-1 layout, learning curves and alpha curves into ``out_dir``.

    Args:
        run_dirs: run folders (or folders of run folders).
        out_dir: where ``report.md``, ``returns.png`` and ``alpha.png`` go.

    Keyword Args:
        title: the report's first heading.

    Returns:
        The path of ``report.md``.

    Examples:
        >>> import tempfile
        >>> from torchrl_otc.trainers.run import RunFolder
        >>> folder = RunFolder(tempfile.mkdtemp())
        >>> folder.write_config({"strategy": "uniform", "algo": "td3bc", "dataset": "random", "task": "nav/nonstationary"})
        >>> folder.log({"eval/return_mean": 1.0}, step=0, phase="offline", deployment=0)
        >>> folder.log({"eval/return_mean": 4.0}, step=50, phase="online", deployment=1)
        >>> report = write_report([folder.path], folder.path / "report")
        >>> "| random | nav/nonstationary | 300.0 ± 0.0 (n=1) |" in report.read_text()
        True
    """
    paths: list[Path] = []
    for d in map(Path, run_dirs):
        if (d / "metrics.csv").exists():
            paths.append(d)
        else:
            paths.extend(sorted(p.parent for p in d.glob("*/metrics.csv")))
    if not paths:
        raise FileNotFoundError(
            f"No run folders (with metrics.csv) under {list(map(str, run_dirs))}."
        )
    runs = [load_run(p) for p in paths]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", "", *provenance(runs), ""]
    for measure, what in MEASURES.items():
        table = decomposition_table(runs, measure)
        if table:
            parts += [
                f"## Decomposition: OTC, its matched mix and uniform sampling ({what})",
                "",
                "Paired by seed (a seed's runs share their offline-trained agents): mean difference with its "
                "95 % bootstrap interval, wins/ties/losses over seeds, probability of improvement P(X > Y) with "
                "its interval. OTC − matched mix is the effect of OTC's choice of rows beyond its online share.",
                "",
                table,
                "",
            ]
    for measure, what in MEASURES.items():
        parts += [
            f"## Per method: {what}, mean and IQM over seeds (95 % bootstrap intervals)",
            "",
            strategy_table(runs, measure),
            "",
        ]
        versus = versus_table(runs, measure)
        if versus:
            parts += [
                f"## Every method against uniform sampling, paired by seed ({what})",
                "",
                versus,
                "",
            ]
    parts += [
        "## Improvement (%) at the last deployment over the offline-trained policy (Table 1 layout)",
        "",
        improvement_table(runs),
        "",
        "## Team return: offline-trained policy → last deployment",
        "",
        returns_table(runs),
        "",
    ]
    paired = paired_table(runs)
    if paired:
        parts += [
            "## Paired by seed: gain in return (last deployment - offline) minus uniform sampling's",
            "",
            "Mean ± standard error over the seeds both runs have; a seed's runs start from the same "
            "offline-trained agents, so this is the difference of their last returns.",
            "",
            paired,
            "",
        ]
    parts += [
        "## Mechanism: share of online rows in the training batches (online phase)",
        "",
        mechanism_table(runs, "/online_share"),
        "",
    ]
    if any(
        any(r["name"].endswith("offline_right_dynamics_share") for r in run.rows) for run in runs
    ):
        parts += [
            "## Mechanism: share of sampled offline rows with the current dynamics (online phase)",
            "",
            mechanism_table(runs, "/offline_right_dynamics_share"),
            "",
        ]
    returns_png = _plot_curves(
        runs, out / "returns.png", "eval/return_mean", "team return", per_agent=False
    )
    alpha_png = _plot_curves(runs, out / "alpha.png", "/alpha", "alpha", per_agent=True)
    if returns_png:
        parts += ["## Learning curves (Figure 3/5 layout)", "", "![returns](returns.png)", ""]
    if alpha_png:
        parts += ["## Alpha per agent (Figure 4, right)", "", "![alpha](alpha.png)", ""]
    report = out / "report.md"
    report.write_text("\n".join(parts))
    return report
