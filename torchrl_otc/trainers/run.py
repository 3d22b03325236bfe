"""Run folders: resolved config, provenance, long-format metrics and crash-safe checkpoints.

A run folder holds

* ``config.yaml``: the resolved :class:`~torchrl_otc.configs.tune.TuneConfig`;
* ``meta.json``: package, torch, torchrl and tensordict versions, git revision, dataset checksum, host, start
  time, and what floating-point results depend on (:func:`compute_environment`: intra-op threads, CPU model, BLAS,
  CPU capability);
* ``metrics.csv``: one row per scalar, columns :data:`METRIC_COLUMNS` (``step, phase, deployment, name, value``;
  both phases on one step axis: ``step`` counts gradient steps from the start of offline training);
* ``checkpoint/``: the last checkpoint. It is written next to the old one and swapped in by renames, so a crash or
  a full disk while checkpointing leaves the previous checkpoint loadable.

This module owns the metrics schema (:data:`METRIC_COLUMNS`, :data:`PHASES`, :data:`RETURN_METRIC`); readers such
as :mod:`torchrl_otc.report` take it from here.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tensordict
import torch
import torchrl
import yaml

from torchrl_otc._version import __version__

__all__ = [
    "METRIC_COLUMNS",
    "PHASES",
    "RETURN_METRIC",
    "RunFolder",
    "atomic_checkpoint",
    "compute_environment",
    "git_revision",
    "recover_checkpoint",
]

logger = logging.getLogger(__name__)

#: The columns of ``metrics.csv``, in order: one row per scalar (long format; see ``docs/metrics.rst``).
METRIC_COLUMNS = ("step", "phase", "deployment", "name", "value")

#: The values of the ``phase`` column: offline training (deployment 0) and online tuning (deployments 1..K).
PHASES = ("offline", "online")

#: The ``name`` of the mean team return of an evaluation (deployment 0 is the offline-trained policy).
RETURN_METRIC = "eval/return_mean"


def git_revision(path: str | Path | None = None) -> str | None:
    """The git revision of the package source (``None`` outside a checkout).

    Examples:
        >>> revision = git_revision()
        >>> revision is None or len(revision) == 40
        True
    """
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=path or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build_setting(name: str) -> str | None:
    found = re.search(rf"\b{name}=([^,\s]+)", torch.__config__.show())
    return found.group(1) if found else None


def compute_environment() -> dict[str, Any]:
    """What a run's floating-point results depend on besides its config and seed.

    The same seed gives bit-identical runs only with the same intra-op thread count, CPU kind and BLAS (sums are
    reduced in another order otherwise), so every run folder records them (``meta.json``) and reports print them.

    Returns:
        ``threads`` (intra-op, :func:`torch.get_num_threads`), ``interop_threads``, ``cpu`` (model name),
        ``cpu_count``, ``cpu_capability`` (the vector instructions torch dispatches to), ``blas`` and ``lapack``
        (torch's build settings), and the ``torch``, ``torchrl`` and ``tensordict`` versions.

    Examples:
        >>> env = compute_environment()
        >>> env["threads"] == torch.get_num_threads() and env["threads"] >= 1
        True
        >>> sorted(env)[:4]
        ['blas', 'cpu', 'cpu_capability', 'cpu_count']
    """
    return {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": _build_setting("BLAS_INFO"),
        "lapack": _build_setting("LAPACK_INFO"),
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "tensordict": tensordict.__version__,
    }


def atomic_checkpoint(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Writes a checkpoint folder so that ``target`` always holds a complete checkpoint.

    ``write(tmp)`` fills a fresh temporary folder; a ``COMPLETE`` marker is written last; then the old folder is
    moved aside, the new one renamed into place and the old one removed. If ``write`` raises (a full disk, an
    interruption), ``target`` is left as it was.

    Args:
        target: the checkpoint folder.
        write: fills the folder it is given.

    Examples:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> _ = atomic_checkpoint(root / "ckpt", lambda p: (p / "a.txt").write_text("1"))
        >>> (root / "ckpt" / "a.txt").read_text(), (root / "ckpt" / "COMPLETE").exists()
        ('1', True)
    """
    target = Path(target)
    recover_checkpoint(target)
    tmp = target.with_name(target.name + ".tmp")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        (tmp / "COMPLETE").write_text(str(time.time()))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def recover_checkpoint(target: str | Path) -> bool:
    """Completes a swap that :func:`atomic_checkpoint` did not finish; returns whether ``target`` is complete.

    A crash between its two renames leaves no ``target`` but a complete ``target.tmp`` (the new checkpoint) and a
    complete ``target.old`` (the previous one): the newer is moved into place.

    Examples:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "ckpt.old").mkdir(); _ = (root / "ckpt.old" / "COMPLETE").write_text("1")
        >>> recover_checkpoint(root / "ckpt"), (root / "ckpt" / "COMPLETE").exists()
        (True, True)
    """
    target = Path(target)
    if (target / "COMPLETE").exists():
        return True
    for candidate in (
        target.with_name(target.name + ".tmp"),
        target.with_name(target.name + ".old"),
    ):
        if (candidate / "COMPLETE").exists():
            shutil.rmtree(target, ignore_errors=True)
            os.replace(candidate, target)
            logger.warning("Recovered the checkpoint %s from %s.", target, candidate)
            return True
    return False


class RunFolder:
    """The folder of one run: config, provenance, metrics and checkpoints.

    Args:
        path: the run folder (created if missing).

    Examples:
        >>> import tempfile
        >>> run = RunFolder(tempfile.mkdtemp())
        >>> run.log({"eval/return_mean": -10.5}, step=0, phase="offline", deployment=0)
        >>> run.read_metrics()[0]["name"], run.read_metrics()[0]["value"]
        ('eval/return_mean', '-10.5')
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_file = self.path / "metrics.csv"
        self.checkpoint_dir = self.path / "checkpoint"
        self._extra_loggers: list[Any] = []

    # ---------------------------------------------------------------- config and provenance
    def write_config(self, config: dict[str, Any]) -> None:
        (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        file = self.path / "config.yaml"
        if not file.exists():
            raise FileNotFoundError(
                f"{self.path} is not a run folder (no config.yaml); cannot resume it."
            )
        return yaml.safe_load(file.read_text())

    def write_meta(self, **extra: Any) -> None:
        meta = {
            "package": "torchrl-otc",
            "version": __version__,
            "git_revision": git_revision(),
            **compute_environment(),
            "python": platform.python_version(),
            "host": platform.node(),
            "machine": platform.machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        meta.update(extra)
        (self.path / "meta.json").write_text(json.dumps(meta, indent=2))

    # ---------------------------------------------------------------- metrics
    def add_logger(self, torchrl_logger: Any) -> None:
        """Mirrors every scalar to a TorchRL logger (``log_scalar(name, value, step)``)."""
        self._extra_loggers.append(torchrl_logger)

    def log(self, scalars: dict[str, float], *, step: int, phase: str, deployment: int) -> None:
        """Appends one row per scalar to ``metrics.csv`` (and to the TorchRL loggers)."""
        new = not self.metrics_file.exists()
        with self.metrics_file.open("a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(METRIC_COLUMNS)
            for name, value in scalars.items():
                writer.writerow([step, phase, deployment, name, repr(float(value))])
        for extra in self._extra_loggers:
            for name, value in scalars.items():
                extra.log_scalar(name, float(value), step=step)

    def read_metrics(self) -> list[dict[str, str]]:
        if not self.metrics_file.exists():
            return []
        with self.metrics_file.open(newline="") as fh:
            return list(csv.DictReader(fh))

    def truncate_metrics(self, keep: Callable[[dict[str, str]], bool]) -> None:
        """Rewrites ``metrics.csv`` keeping the rows ``keep`` accepts (used when resuming a checkpoint)."""
        rows = [r for r in self.read_metrics() if keep(r)]
        tmp = self.metrics_file.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics_file)

    # ---------------------------------------------------------------- checkpoints
    def has_checkpoint(self) -> bool:
        """Whether a complete checkpoint exists (completing an interrupted swap first)."""
        return recover_checkpoint(self.checkpoint_dir)

    def save_checkpoint(self, write: Callable[[Path], None]) -> Path:
        return atomic_checkpoint(self.checkpoint_dir, write)
