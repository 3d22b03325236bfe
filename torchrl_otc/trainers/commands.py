"""``otc tune`` and ``otc report``: the command-line side of :class:`~torchrl_otc.trainers.tuning.OnlineTuner`."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

__all__ = ["add_tune_command", "add_report_command"]

logger = logging.getLogger("torchrl_otc.cli")


def _run_tune(args: argparse.Namespace) -> int:
    from torchrl_otc.configs.tune import parse_overrides
    from torchrl_otc.report import improvement_table, load_run, write_report
    from torchrl_otc.trainers.tuning import OnlineTuner

    overrides = list(args.overrides)
    resume = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    if resume:
        if len(overrides) > 1:
            raise ValueError(
                "resume=RUN_DIR takes no other overrides: the run's own config.yaml is used."
            )
        tuner = OnlineTuner.resume(resume[0], progress=not args.no_progress)
    else:
        tuner = OnlineTuner(parse_overrides(overrides), progress=not args.no_progress)
    summary = tuner.run()
    report = write_report([summary["run_dir"]], summary["run_dir"])
    run = load_run(summary["run_dir"])
    returns = ", ".join(f"{k}: {v:.3f}" for k, v in sorted(summary["returns"].items()))
    sys.stdout.write(
        f"run folder: {summary['run_dir']}\nmean team return per deployment (0 = offline policy): {returns}\n\n"
        f"{improvement_table([run])}\n\nreport: {report}\n"
    )
    return 0


def add_tune_command(sub: Any) -> None:
    """Registers ``otc tune [key=value ...]`` (Algorithm 1 end to end; Hydra-style overrides)."""
    tune = sub.add_parser(
        "tune",
        help="offline training, K deployments and online tuning (Algorithm 1); writes a run folder",
        description=(
            "Runs Algorithm 1 for every agent of a task. Overrides are key=value pairs of TuneConfig, e.g. "
            "`otc tune task=mamujoco/halfcheetah-2x3 dataset=medium algo=bcq distance=feature strategy=otc "
            "seed=0`; `otc tune resume=RUN_DIR` continues a run from its last checkpoint."
        ),
    )
    tune.add_argument(
        "overrides", nargs="*", help="key=value overrides (see TuneConfig), or resume=RUN_DIR"
    )
    tune.add_argument("--no-progress", action="store_true", help="no progress bars")
    tune.set_defaults(func=_run_tune)


def _run_report(args: argparse.Namespace) -> int:
    from torchrl_otc.report import write_report

    report = write_report(args.runs, args.out)
    sys.stdout.write(report.read_text() + f"\n\nreport written to {report}\n")
    return 0


def add_report_command(sub: Any) -> None:
    """Registers ``otc report RUN_DIR [RUN_DIR ...] [--out DIR]`` (Table 1 layout, Figures 3-5)."""
    report = sub.add_parser(
        "report",
        help="Table-1 layout and learning/alpha curves from run folders",
        description="Improvement % at the last deployment over the offline policy (mean ± std over seeds), "
        "learning curves and alpha curves, from run folders (or folders of run folders).",
    )
    report.add_argument("runs", nargs="+", help="run folders, or folders holding run folders")
    report.add_argument("--out", default="report", help="output folder (default: ./report)")
    report.set_defaults(func=_run_report)
