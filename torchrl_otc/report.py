"""Tables and figures from run folders: the paper's Table 1 layout and Figures 3-5 (``otc report``).

A run folder (written by :class:`~torchrl_otc.trainers.tuning.OnlineTuner`) holds ``config.yaml`` and
``metrics.csv`` in long format: one row per scalar with the columns ``step, phase, deployment, name, value``.
The report reads the evaluation rows ``eval/return_mean`` (deployment 0 is the offline-trained policy) and the
per-agent ``agent{i}/alpha`` rows.
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = [
    "RunRecord",
    "load_run",
    "improvement",
    "improvement_table",
    "write_report",
    "METRIC_COLUMNS",
]

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ("step", "phase", "deployment", "name", "value")


@dataclass
class RunRecord:
    """One run folder, read back: its config and its metric rows."""

    path: Path
    config: dict
    rows: list[dict] = field(default_factory=list)

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
        """The column of the run in Table 1, the strategy (and distance for OTC) + algorithm."""
        cfg = self.config
        strategy = cfg["strategy"]
        if strategy == "otc":
            strategy = f"otc-{cfg['distance']}" + (
                "" if cfg.get("adaptive_alpha", True) else "-fixed"
            )
        return f"{strategy} + {cfg['algo']}"

    @property
    def row_key(self) -> tuple[str, str]:
        return (self.config["dataset"], self.config["task"])


def load_run(path: str | Path) -> RunRecord:
    """Reads a run folder; raises :class:`FileNotFoundError` naming what is missing."""
    path = Path(path)
    config_file, metrics_file = path / "config.yaml", path / "metrics.csv"
    for f in (config_file, metrics_file):
        if not f.exists():
            raise FileNotFoundError(f"{path} is not a run folder: {f.name} is missing.")
    config = yaml.safe_load(config_file.read_text())
    with metrics_file.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return RunRecord(path, config, rows)


def improvement(returns: dict[int, float]) -> float:
    """Improvement (%) of the last deployment over the offline policy: ``100 (R_K - R_0) / |R_0|``.

    Examples:
        >>> improvement({0: -200.0, 1: -150.0, 2: -100.0})
        50.0
    """
    if 0 not in returns or len(returns) < 2:
        return math.nan
    r0, rk = returns[0], returns[max(returns)]
    if r0 == 0:
        return math.nan
    return 100.0 * (rk - r0) / abs(r0)


def _mean_std(values: Sequence[float]) -> str:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {std:.1f} (n={len(values)})"


def improvement_table(runs: Iterable[RunRecord]) -> str:
    """Markdown table in the layout of the paper's Table 1: improvement (%) at the last deployment over the
    offline-trained policy, mean ± std over seeds; one row per (dataset, task), one column per strategy."""
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    columns: list[str] = []
    for run in runs:
        cells[run.row_key][run.label].append(improvement(run.returns))
        if run.label not in columns:
            columns.append(run.label)
    columns.sort()
    lines = [
        "| dataset | task | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for (dataset, task), by_label in sorted(cells.items()):
        lines.append(
            f"| {dataset} | {task} | "
            + " | ".join(_mean_std(by_label.get(c, [])) for c in columns)
            + " |"
        )
    return "\n".join(lines)


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


def write_report(run_dirs: Iterable[str | Path], out_dir: str | Path) -> Path:
    """Writes ``report.md`` with the Table-1 layout, learning curves and alpha curves into ``out_dir``.

    Args:
        run_dirs: run folders (or folders of run folders).
        out_dir: where ``report.md``, ``returns.png`` and ``alpha.png`` go.

    Returns:
        The path of ``report.md``.
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
    parts = [
        "# OTC report",
        "",
        f"{len(runs)} run(s): " + ", ".join(sorted(str(r.path) for r in runs)),
        "",
        "## Improvement (%) at the last deployment over the offline-trained policy (Table 1 layout)",
        "",
        improvement_table(runs),
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
