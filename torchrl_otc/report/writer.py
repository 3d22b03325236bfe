"""``report.md``: every table and figure of a set of run folders in one Markdown file (``otc report``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from torchrl_otc._paths import file_in_the_way
from torchrl_otc.configs.tune import ConfigError
from torchrl_otc.report.plots import plot_curves
from torchrl_otc.report.runs import MEASURES, load_run
from torchrl_otc.report.tables import (
    decomposition_table,
    improvement_table,
    mechanism_table,
    paired_table,
    provenance,
    returns_table,
    selector_table,
    strategy_table,
    versus_table,
)
from torchrl_otc.trainers.run import RETURN_METRIC

__all__ = ["check_report_folder", "write_report"]

logger = logging.getLogger(__name__)


def check_report_folder(out_dir: str | Path) -> Path:
    """Refuses a report folder that cannot be created: it, or one of its parents, is a regular file.

    Nothing is created; commands call it before their expensive work.

    Args:
        out_dir: the folder ``report.md`` and its figures go into.

    Returns:
        The folder as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: naming the file in the way (a :class:`ValueError`).

    Examples:
        >>> import pathlib, tempfile
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
        >>> _ = file.write_text("")
        >>> try:
        ...     check_report_folder(file)
        ... except ValueError as err:
        ...     print(str(err).replace(str(file), "notes.txt"))
        report folder notes.txt is a file, not a folder; choose another output folder.
    """
    out = Path(out_dir)
    folder = file_in_the_way(out)
    if folder == out:
        raise ConfigError(
            f"report folder {out} is a file, not a folder; choose another output folder."
        )
    if folder is not None:
        raise ConfigError(
            f"report folder {out} cannot be created: {folder} is a file, not a folder; choose another "
            f"output folder."
        )
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

    Raises:
        ConfigError: ``out_dir`` is (or lies under) a regular file, or no run folder can be read back (one line
            naming the file and what is wrong). A run folder that cannot be read back among others is skipped with
            a warning naming its file; the report lists the skipped folders.
        FileNotFoundError: no run folder under ``run_dirs``.

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
    out = check_report_folder(out_dir)
    run_dirs = list(run_dirs)
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
    runs, skipped = [], []
    for p in paths:
        # one damaged folder does not stop the report of the others
        try:
            runs.append(load_run(p))
        except (ValueError, OSError) as err:
            skipped.append((p, " ".join(str(err).split())))
    if not runs:
        first = skipped[0][1]
        raise ConfigError(
            first
            if len(skipped) == 1
            else f"none of the {len(skipped)} run folders can be read; the first: {first}"
        )
    for p, why in skipped:
        logger.warning("report: skipped run folder %s: %s", p, why)
    if skipped:
        logger.warning(
            "report: %d of %d run folders skipped (see above); the report covers the other %d.",
            len(skipped),
            len(paths),
            len(runs),
        )
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", "", *provenance(runs), ""]
    if skipped:
        parts += [
            f"**{len(skipped)} of {len(paths)} run folders skipped** (they cannot be read back):",
            "",
            *(f"- `{p}`: {why}" for p, why in skipped),
            "",
        ]
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
    if any(
        run.config.get("strategy") == "otc" and run.config.get("online_fraction") is not None
        for run in runs
    ):  # decomposed OTC (issue 15): each selector at its matched mix's online share
        for measure, what in MEASURES.items():
            table = selector_table(runs, measure)
            if table:
                parts += [
                    f"## Selectors: decomposed OTC against its matched mix ({what})",
                    "",
                    "Each decomposed OTC method draws the online share of its paired coupled-OTC run and chooses "
                    "the offline rows with its selector; the matched mix draws the same share and the offline rows "
                    "uniformly (a method at a fixed share F, e.g. 'of0.5', is compared with the fixed mix at F). "
                    f"Measure: {what}. Paired by seed: mean difference with its 95 % bootstrap "
                    "interval and wins/ties/losses over seeds; shares are online-phase means over agents and "
                    "seeds ('-': not logged).",
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
    returns_png = plot_curves(
        runs, out / "returns.png", RETURN_METRIC, "team return", per_agent=False
    )
    alpha_png = plot_curves(runs, out / "alpha.png", "/alpha", "alpha", per_agent=True)
    if returns_png:
        parts += ["## Learning curves (Figure 3/5 layout)", "", "![returns](returns.png)", ""]
    if alpha_png:
        parts += ["## Alpha per agent (Figure 4, right)", "", "![alpha](alpha.png)", ""]
    report = out / "report.md"
    report.write_text("\n".join(parts))
    return report
