"""``otc tune``, ``otc report`` and ``otc sweep``: the command-line side of the tuning loop and its reports.

``otc tune`` runs Algorithm 1 through :class:`~torchrl_otc.trainers.tuning.OnlineTuner` (its agents' updates batched
when the algorithm has a batched class: :func:`~torchrl_otc.trainers.lockstep.lockstep_mode`), ``otc sweep`` a recipe's
grid through :func:`~torchrl_otc.trainers.sweep.run_sweep`, and both end with :func:`~torchrl_otc.report.write_report`,
which ``otc report`` runs alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from torchrl_otc._paths import file_in_the_way
from torchrl_otc.configs.tune import ConfigError, parse_overrides
from torchrl_otc.modules.transition_distance import check_positive_int
from torchrl_otc.report import improvement_table, load_run, write_report
from torchrl_otc.report.writer import check_report_folder
from torchrl_otc.trainers.lockstep import LockstepTuners, lockstep_mode
from torchrl_otc.trainers.sweep import LOCKSTEP_SEEDS, expand_recipe, load_recipe, run_sweep
from torchrl_otc.trainers.tuning import OnlineTuner

__all__ = ["add_report_command", "add_sweep_command", "add_tune_command"]


def _run_tune(args: argparse.Namespace) -> int:
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
    batched = lockstep_mode(tuner, args.batched)
    summary = LockstepTuners([tuner]).run()[0] if batched else tuner.run()
    report = write_report([summary["run_dir"]], summary["run_dir"])
    run = load_run(summary["run_dir"])
    returns = ", ".join(f"{k}: {v:.3f}" for k, v in sorted(summary["returns"].items()))
    sys.stdout.write(
        f"run folder: {summary['run_dir']}\nmean team return per deployment (0 = offline policy): {returns}\n\n"
        f"{improvement_table([run])}\n\nreport: {report}\n"
    )
    return 0


def _add_mode_options(
    parser: argparse.ArgumentParser,
    *,
    default: bool | None,
    batched: str,
    separate: str,
    aliases: tuple[str, ...] = (),
) -> None:
    """``--batched`` / ``--separate`` (one of them; ``args.batched`` is ``True``, ``False`` or ``default``)."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--batched",
        *aliases,
        dest="batched",
        action="store_const",
        const=True,
        default=default,
        help=batched,
    )
    mode.add_argument(
        "--separate",
        dest="batched",
        action="store_const",
        const=False,
        help=(
            f"{separate}: numbers equal the batched ones to float tolerance, not bit for bit; a resumed run "
            f"keeps the mode it started in"
        ),
    )


def add_tune_command(sub: Any) -> None:
    """Registers ``otc tune [key=value ...]`` (Algorithm 1 end to end; Hydra-style overrides).

    Args:
        sub: the subparsers of the ``otc`` parser (``parser.add_subparsers(...)``).

    Examples:
        >>> import argparse
        >>> sub = argparse.ArgumentParser(prog="otc").add_subparsers(dest="command")
        >>> add_tune_command(sub)
        >>> sorted(sub.choices)
        ['tune']
    """
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
    _add_mode_options(
        tune,
        default=None,
        batched=(
            "update the agents with one batched call per step (the default when the algorithm has a batched "
            "class: BCQ, AWAC, CQL, TD3+BC with continuous actions)"
        ),
        separate="update the agents one after the other",
    )
    tune.set_defaults(func=_run_tune)


def _run_report(args: argparse.Namespace) -> int:
    check_report_folder(args.out)
    report = write_report(args.runs, args.out, title=args.title)
    sys.stdout.write(report.read_text() + f"\n\nreport written to {report}\n")
    return 0


def add_report_command(sub: Any) -> None:
    """Registers ``otc report RUN_DIR [RUN_DIR ...] [--out DIR]`` (Table 1 layout, Figures 3-5).

    Args:
        sub: the subparsers of the ``otc`` parser (``parser.add_subparsers(...)``).

    Examples:
        >>> import argparse
        >>> sub = argparse.ArgumentParser(prog="otc").add_subparsers(dest="command")
        >>> add_report_command(sub)
        >>> sorted(sub.choices)
        ['report']
    """
    report = sub.add_parser(
        "report",
        help="Table-1 layout and learning/alpha curves from run folders",
        description="Improvement % at the last deployment over the offline policy (mean ± std over seeds), "
        "learning curves and alpha curves, from run folders (or folders of run folders).",
    )
    report.add_argument("runs", nargs="+", help="run folders, or folders holding run folders")
    report.add_argument("--out", default="report", help="output folder (default: ./report)")
    report.add_argument("--title", default="OTC report", help="first heading of report.md")
    report.set_defaults(func=_run_report)


def _run_sweep(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ConfigError(
            f"--workers must be >= 1 (processes running side by side); got {args.workers}."
        )
    recipe = load_recipe(args.recipe)
    bad = [item for item in args.overrides if "=" not in item]
    if bad:
        raise ConfigError(f"Overrides look like key=value; got {bad[0]!r}.")
    if args.lockstep_seeds is not None:
        check_positive_int("--lockstep-seeds", args.lockstep_seeds)
    # the values stay text: expand_recipe hands them to parse_overrides, which checks and converts them
    extra = dict(item.split("=", 1) for item in args.overrides)
    only = [label.strip() for label in args.variants.split(",")] if args.variants else None
    configs = expand_recipe(recipe, args.size, runs_root=args.runs_root, only=only, **extra)
    if args.dry_run:
        for cfg in configs:
            sys.stdout.write(f"{cfg.run.runs_root}/{cfg.run.run_name}\n")
        return 0
    # the folders are checked before any run starts: a report folder under a file would fail after the whole grid
    folder = Path(configs[0].run.runs_root)
    for path, what in (
        (folder, "--runs-root"),
        *((Path(c.data.cache_dir), "cache_dir") for c in configs),
    ):
        parent = file_in_the_way(path)
        if parent is not None:
            raise ConfigError(
                f"{what} {path} cannot be created: {parent} is a file, not a folder; choose another {what}."
            )
    check_report_folder(args.report or folder / "report")
    results = run_sweep(
        configs,
        backend=args.backend,
        workers=args.workers,
        progress=not args.no_progress,
        ray_address=args.ray_address,
        batched=args.batched,
        lockstep_seeds=args.lockstep_seeds,
    )
    report = write_report([folder], args.report or folder / "report")
    ran = sum(not r["skipped"] for r in results)
    sys.stdout.write(
        f"{len(results)} runs ({ran} run now, {len(results) - ran} already finished) in {folder}\n"
        f"report: {report}\n"
    )
    return 0


def add_sweep_command(sub: Any) -> None:
    """Registers ``otc sweep RECIPE --size {smoke,cpu,paper}`` (a grid of runs, local or on Ray).

    Args:
        sub: the subparsers of the ``otc`` parser (``parser.add_subparsers(...)``).

    Examples:
        >>> import argparse
        >>> sub = argparse.ArgumentParser(prog="otc").add_subparsers(dest="command")
        >>> add_sweep_command(sub)
        >>> sorted(sub.choices)
        ['sweep']
    """
    sweep = sub.add_parser(
        "sweep",
        help="run a recipe's grid of (task, dataset, algorithm, strategy, seed), skipping finished runs",
        description=(
            "Runs every configuration of a recipe (examples/recipes/*.yaml) at one size preset: smoke "
            "(seconds), cpu (about an hour on a 2-core CPU) or paper (the paper's sizes). Finished runs are "
            "skipped and interrupted ones resumed, so the command can be repeated until the grid is done. "
            "backend=ray hands the runs to a Ray cluster. Writes a report of the grid at the end."
        ),
    )
    sweep.add_argument("recipe", help="recipe YAML file")
    sweep.add_argument("--size", default="cpu", choices=["smoke", "cpu", "paper"])
    sweep.add_argument("--backend", default="local", choices=["local", "ray"])
    sweep.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local backend: runs side by side in this many processes (runs sharing a dataset stay in one)",
    )
    sweep.add_argument("--ray-address", default=None, help="address of a running Ray cluster")
    sweep.add_argument(
        "--runs-root", default="runs", help="root of the run folders (default: runs)"
    )
    sweep.add_argument("--report", default=None, help="report folder (default: <runs>/report)")
    sweep.add_argument(
        "--variants",
        default=None,
        help="comma-separated labels: run only these variants now (the same runs as in the whole preset)",
    )
    _add_mode_options(
        sweep,
        default=True,
        batched=(
            "(the default) train the seeds and strategies of a grid cell in one process, one batched update of "
            "all their agents per step; same run folders, resumable per run; a run's numbers are those of "
            "`otc tune` of its config"
        ),
        separate=(
            "every run on its own, its agents updated one after the other (the mode of the sweeps before "
            "lockstep became the default)"
        ),
        aliases=("--batch-seeds",),
    )
    sweep.add_argument(
        "--lockstep-seeds",
        type=int,
        default=None,
        help=(
            f"the most seeds one process trains in lockstep (consecutive seeds, every strategy of them; groups "
            f"of different seeds run in parallel workers); default: each grid cell cut to keep every worker "
            f"busy, at most {LOCKSTEP_SEEDS} seeds"
        ),
    )
    sweep.add_argument("--dry-run", action="store_true", help="list the run folders and stop")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bars")
    sweep.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    sweep.set_defaults(func=_run_sweep)
