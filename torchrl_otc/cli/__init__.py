"""The ``otc`` command: every command of the package, on top of the library (the only layer that parses arguments).

* ``otc data ...`` (:mod:`.data`): build, inspect, import and check the offline datasets of section 4.1:
  ``otc data build TASK --kind {random,medium,medium-replay} --size N --seed S --out DIR``, ``otc data info PATH``,
  ``otc data import {d4rl,minari} SOURCE --task TASK --out DIR``, ``otc data train-behaviour TASK``,
  ``otc data tasks``.
* ``otc tune``, ``otc report``, ``otc sweep`` (:mod:`.runs`): Algorithm 1 on a task, the report of run folders, a
  recipe's grid of runs.

Adding a command: write a function ``add_<name>_command(sub)`` that calls ``sub.add_parser(...)``, declares its
arguments and ``set_defaults(func=<runner>)`` where the runner takes the parsed ``argparse.Namespace`` and returns an
exit code, then append it to :data:`COMMANDS`. Runners log progress with :mod:`logging` (tqdm bars for long work)
and write a command's actual output with ``sys.stdout.write``.

Bad input (a field, a ``config=`` file, a recipe, a dataset, a run folder, a path): a runner raises one of
:data:`CLEAR_ERRORS` (the package's own are :class:`ValueError` subclasses such as
:class:`~torchrl_otc.configs.parts.ConfigError`) with a message naming the file or field, the value and what to do;
:func:`main` logs it as one line and exits with code 2, and logs the traceback too under ``otc -v``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from torchrl_otc.cli.data import add_data_command
from torchrl_otc.cli.runs import add_report_command, add_sweep_command, add_tune_command
from torchrl_otc.configs.overrides import yaml_problem
from torchrl_otc.data.datasets.storage import DatasetError
from torchrl_otc.envs.registry import UnknownTaskError

__all__ = [
    "CLEAR_ERRORS",
    "COMMANDS",
    "add_data_command",
    "add_report_command",
    "add_sweep_command",
    "add_tune_command",
    "build_parser",
    "main",
]

logger = logging.getLogger("torchrl_otc.cli")

EXIT_USAGE = 2

#: The errors :func:`main` answers with one line and exit code 2: bad input, whose message says what to do. Every
#: error of the package about an input is a :class:`ValueError` (``ConfigError``, ``DatasetError``,
#: ``RunFolderError``, ...); the :class:`OSError` kinds are paths that name the wrong thing.
CLEAR_ERRORS: tuple[type[BaseException], ...] = (
    DatasetError,
    UnknownTaskError,
    ValueError,
    yaml.YAMLError,
    ImportError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def _one_line(err: BaseException) -> str:
    """The error's message on one line; an :class:`OSError` without one says which path and what is wrong."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        kind = {
            FileExistsError: "it already exists",
            IsADirectoryError: "it is a folder, a file was expected",
            NotADirectoryError: "a part of the path is a file, a folder was expected",
            PermissionError: "permission denied",
        }.get(type(err))
        target = f" -> {err.filename2}" if err.filename2 else ""
        what = f"{kind} ({err.strerror})" if kind else err.strerror
        return f"{err.filename}{target}: {what}; check the path."
    if isinstance(err, yaml.YAMLError):
        return f"not valid YAML ({yaml_problem(err)}); fix its syntax."
    text = " ".join(str(err).split())
    return text or type(err).__name__


#: Registration functions of the top-level commands, in help order. Append new commands here.
COMMANDS: list[Callable[[Any], None]] = [
    add_data_command,
    add_tune_command,
    add_report_command,
    add_sweep_command,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``otc`` argument parser with every registered command (``otc data``: section 4.1 datasets).

    Returns:
        The parser.

    Examples:
        >>> args = build_parser().parse_args(["data", "info", "some/folder"])
        >>> args.data_command, str(args.path)
        ('info', 'some/folder')
    """
    parser = argparse.ArgumentParser(
        prog="otc",
        description="Online Transition Correction (OTC) for offline decentralised multi-agent RL, on TorchRL.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otc`` command (datasets of section 4.1; tuning of Algorithm 1 via ``otc tune``).

    Args:
        argv: the arguments (without the program name); ``sys.argv[1:]`` when omitted.

    Returns:
        The exit code: 0 on success, 2 on a usage or data error (:data:`CLEAR_ERRORS`: one logged line that says
        what to do; with ``-v`` the traceback too).

    Examples:
        >>> main(["data", "info", "/nonexistent/folder"])
        2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    level = (
        logging.ERROR
        if args.quiet
        else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    )
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("torchrl_otc").setLevel(level)
    try:
        return int(args.func(args))
    except CLEAR_ERRORS as err:
        # one line; the traceback only when asked for (otc -v)
        logger.error("%s", _one_line(err), exc_info=args.verbose > 0)
        return EXIT_USAGE
