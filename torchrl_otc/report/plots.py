"""Figures from run records: learning curves and alpha curves (the paper's Figures 3-5), with matplotlib.

matplotlib is optional (``pip install 'torchrl-otc[plots]'``): without it no figure is drawn.
"""

from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from pathlib import Path

from torchrl_otc.report.runs import RunRecord

__all__ = ["plot_curves"]

logger = logging.getLogger(__name__)


def plot_curves(
    runs: list[RunRecord], out: Path, metric: str, ylabel: str, *, per_agent: bool = False
) -> Path | None:
    """One panel per (dataset, task): the metric per deployment, mean ± std over seeds, one line per method.

    Args:
        runs: run records.
        out: the image file to write (e.g. ``returns.png``).
        metric: the metric's name (``"eval/return_mean"``, Figure 3/5), or with ``per_agent`` the suffix of the
            per-agent names (``"/alpha"``: one line per agent, Figure 4).
        ylabel: the y axis' label.

    Keyword Args:
        per_agent: plot every ``agent{i}<metric>`` series separately.

    Returns:
        ``out``, or ``None`` when no run has the metric or matplotlib is not installed.

    Examples:
        >>> import pathlib, tempfile
        >>> from torchrl_otc.report import example_run
        >>> png = plot_curves([example_run()], pathlib.Path(tempfile.mkdtemp()) / "r.png", "eval/return_mean", "return")
        >>> png is None or png.exists()
        True
    """
    try:  # optional dependency: matplotlib (the plots extra)
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
