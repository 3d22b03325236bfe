"""Tables and figures from run folders: the paper's Table 1 layout and Figures 3-5 (``otc report``).

A run folder (written by :class:`~torchrl_otc.trainers.tuning.OnlineTuner` through
:class:`~torchrl_otc.trainers.run.RunFolder`) holds ``config.yaml`` and ``metrics.csv`` in long format: one row per
scalar with the columns :data:`~torchrl_otc.trainers.run.METRIC_COLUMNS` (``step, phase, deployment, name,
value``). The report reads the evaluation rows ``eval/return_mean`` (deployment 0 is the offline-trained policy) and
the per-agent ``agent{i}/alpha`` rows.

The package reads the schema from :mod:`torchrl_otc.trainers.run` (the writer); it is split by idea:

* :mod:`.runs`: run folders read back (:class:`RunRecord`, :func:`load_run`, :data:`~.runs.MEASURES`);
* :mod:`.tables`: the Markdown tables (Table 1 layout, paired and bootstrap comparisons, provenance);
* :mod:`.plots`: learning and alpha curves (matplotlib, optional);
* :mod:`.writer`: :func:`write_report`, everything in one ``report.md``.
"""

from torchrl_otc.report.plots import plot_curves
from torchrl_otc.report.runs import MEASURES, RunRecord, example_run, load_run
from torchrl_otc.report.tables import (
    decomposition_table,
    improvement,
    improvement_table,
    mechanism_table,
    paired_table,
    provenance,
    returns_table,
    selector_table,
    strategy_table,
    versus_table,
)
from torchrl_otc.report.writer import write_report
from torchrl_otc.trainers.run import METRIC_COLUMNS

__all__ = [
    "RunRecord",
    "example_run",
    "load_run",
    "improvement",
    "improvement_table",
    "mechanism_table",
    "paired_table",
    "decomposition_table",
    "selector_table",
    "strategy_table",
    "versus_table",
    "MEASURES",
    "provenance",
    "plot_curves",
    "returns_table",
    "write_report",
    "METRIC_COLUMNS",
]
