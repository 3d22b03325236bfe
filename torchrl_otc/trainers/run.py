"""Run folders: resolved config, provenance, long-format metrics and crash-safe checkpoints.

A run folder holds

* ``config.yaml``: the resolved :class:`~torchrl_otc.configs.tune.TuneConfig`;
* ``meta.json``: package, torch, torchrl and tensordict versions, git revision, dataset checksum, host, start
  time, and what floating-point results depend on (:func:`compute_environment`: intra-op threads, CPU model, BLAS,
  CPU capability);
* ``metrics.csv``: one row per scalar, columns :data:`METRIC_COLUMNS` (``step, phase, deployment, name, value``;
  both phases on one step axis: ``step`` counts gradient steps from the start of offline training);
* ``checkpoint/``: the last checkpoint, and ``checkpoint.prev/``: the one before it. A checkpoint is written next to
  the old one, verified, and swapped in by renames, so a crash or a full disk while checkpointing leaves the previous
  checkpoint loadable; resuming falls back to ``checkpoint.prev/`` (with a warning) when the newest is unreadable;
* ``LOCK``: present while a process writes the folder (:meth:`RunFolder.lock`); a second writer is refused.

The folder is created when a run starts writing it (:meth:`RunFolder.lock`), not when a :class:`RunFolder` is made,
so a command refused before it starts leaves nothing behind.

This module owns the metrics schema (:data:`METRIC_COLUMNS`, :data:`PHASES`, :data:`RETURN_METRIC`); readers such
as :mod:`torchrl_otc.report` take it from here.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

try:  # POSIX only: on other platforms run folders are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

import tensordict
import torch
import torchrl
import yaml

from torchrl_otc._paths import file_in_the_way
from torchrl_otc._version import __version__

__all__ = [
    "CheckpointError",
    "METRIC_COLUMNS",
    "PHASES",
    "RETURN_METRIC",
    "RunExistsError",
    "RunFolder",
    "RunFolderError",
    "RunLockedError",
    "atomic_checkpoint",
    "check_folder_path",
    "compute_environment",
    "git_revision",
    "load_checkpoint",
    "recover_checkpoint",
]

logger = logging.getLogger(__name__)

#: The columns of ``metrics.csv``, in order: one row per scalar (long format; see ``docs/metrics.rst``).
METRIC_COLUMNS = ("step", "phase", "deployment", "name", "value")

#: The values of the ``phase`` column: offline training (deployment 0) and online tuning (deployments 1..K).
PHASES = ("offline", "online")

#: The ``name`` of the mean team return of an evaluation (deployment 0 is the offline-trained policy).
RETURN_METRIC = "eval/return_mean"

_T = TypeVar("_T")


class RunFolderError(ValueError):
    """A run folder cannot be used as asked (the message names it and says what to do).

    A :class:`ValueError`, so that the command line answers it with one line.

    Examples:
        >>> issubclass(RunLockedError, RunFolderError) and issubclass(CheckpointError, ValueError)
        True
    """


class RunExistsError(RunFolderError, FileExistsError):
    """A new run was asked for in a folder that already holds one (also a :class:`FileExistsError`)."""


class RunLockedError(RunFolderError):
    """Another process is writing the run folder (it holds its ``LOCK``)."""


class CheckpointError(RunFolderError):
    """A run folder holds a checkpoint, but neither it nor the previous one can be read."""


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


def _sibling(target: Path, suffix: str) -> Path:
    return target.with_name(target.name + suffix)


def _remove(folder: Path) -> None:
    """Removes ``folder``: renamed away first (one atomic step), so a crash never leaves a half-removed folder under
    a name that is read (a leftover ``*.del`` folder is removed next time)."""
    if not folder.exists():
        return
    trash = _sibling(folder, ".del")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def atomic_checkpoint(
    target: str | Path,
    write: Callable[[Path], None],
    verify: Callable[[Path], Any] | None = None,
) -> Path:
    """Writes a checkpoint folder so that ``target`` always holds a complete checkpoint, and keeps the previous one.

    ``write(tmp)`` fills a fresh temporary folder; ``verify(tmp)``, if given, reads it back (and raises if it is not
    whole); a ``COMPLETE`` marker is written last; then the old folder is moved aside, the new one renamed into
    place and the old one kept as ``target.prev`` (replacing the one before it). If ``write`` or ``verify`` raises
    (a full disk, an interruption), ``target`` is left as it was. Every step is a rename, so a crash anywhere leaves
    ``target`` complete or lets :func:`recover_checkpoint` complete the swap.

    Args:
        target: the checkpoint folder.
        write: fills the folder it is given.
        verify: reads the written folder back; raises if it is not complete.

    Returns:
        ``target``.

    Examples:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> _ = atomic_checkpoint(root / "ckpt", lambda p: (p / "a.txt").write_text("1"))
        >>> _ = atomic_checkpoint(root / "ckpt", lambda p: (p / "a.txt").write_text("2"))
        >>> (root / "ckpt" / "a.txt").read_text(), (root / "ckpt" / "COMPLETE").exists()
        ('2', True)
        >>> (root / "ckpt.prev" / "a.txt").read_text()  # the previous complete checkpoint
        '1'
    """
    target = Path(target)
    recover_checkpoint(target)
    tmp, old, prev = _sibling(target, ".tmp"), _sibling(target, ".old"), _sibling(target, ".prev")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        if verify is not None:
            verify(tmp)
        (tmp / "COMPLETE").write_text(str(time.time()))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        _remove(prev)
        os.replace(old, prev)
    return target


def recover_checkpoint(target: str | Path) -> bool:
    """Completes a swap that :func:`atomic_checkpoint` did not finish; returns whether ``target`` is complete.

    A crash between its renames leaves no ``target`` but a complete ``target.tmp`` (the new checkpoint) and a
    complete ``target.old`` (the previous one): the newer is moved into place and the older kept as
    ``target.prev``.

    Examples:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "ckpt.old").mkdir(); _ = (root / "ckpt.old" / "COMPLETE").write_text("1")
        >>> recover_checkpoint(root / "ckpt"), (root / "ckpt" / "COMPLETE").exists()
        (True, True)
    """
    target = Path(target)
    tmp, old, prev = _sibling(target, ".tmp"), _sibling(target, ".old"), _sibling(target, ".prev")
    if not (target / "COMPLETE").exists():
        for candidate in (tmp, old):
            if (candidate / "COMPLETE").exists():
                _remove(target)
                os.replace(candidate, target)
                logger.warning("Recovered the checkpoint %s from %s.", target, candidate)
                break
    if (target / "COMPLETE").exists():
        # the swap stopped before the old one became the previous one
        if (old / "COMPLETE").exists():
            _remove(prev)
            os.replace(old, prev)
        return True
    return False


def _why(err: BaseException) -> str:
    """``err`` in a few words: its type and the first sentence of its message."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if len(text) > 120 and ". " in text:
        text = text.split(". ", 1)[0]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def load_checkpoint(target: str | Path, read: Callable[[Path], _T]) -> _T | None:
    """Reads the newest readable checkpoint at ``target``, falling back to ``target.prev`` (with a warning).

    An interrupted swap is completed first (:func:`recover_checkpoint`). When ``read(target)`` raises (a truncated
    file in a checkpoint marked complete) and ``target.prev`` reads, the previous checkpoint takes the unreadable
    one's place.

    Args:
        target: the checkpoint folder.
        read: reads a checkpoint folder whole; raises if it cannot.

    Returns:
        What ``read`` returned, or ``None`` when there is no complete checkpoint at all.

    Raises:
        CheckpointError: a checkpoint exists but neither it nor the previous one can be read.

    Examples:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for text in ("1", "2"):
        ...     _ = atomic_checkpoint(root / "ckpt", lambda p: (p / "a.txt").write_text(text))
        >>> _ = (root / "ckpt" / "a.txt").write_text("")  # the newest is unreadable
        >>> def read(p):
        ...     return int((p / "a.txt").read_text())
        >>> load_checkpoint(root / "ckpt", read)
        1
    """
    target = Path(target)
    prev = _sibling(target, ".prev")
    if recover_checkpoint(target):
        try:
            return read(target)
        except Exception as err:  # noqa: BLE001 - any failure to read means: unreadable
            reason = _why(err)
    elif (prev / "COMPLETE").exists():
        reason = "missing or incomplete"
    else:
        return None
    if (prev / "COMPLETE").exists():
        try:
            value = read(prev)
        except Exception as err:  # noqa: BLE001
            reason += f"; so is the previous one ({_why(err)})"
        else:
            logger.warning(
                "The checkpoint %s is unreadable (%s); resuming from the previous one, %s.",
                target,
                reason,
                prev,
            )
            _remove(target)
            os.replace(prev, target)
            return value
    else:
        reason += "; there is no previous checkpoint"
    folder = target.parent
    raise CheckpointError(
        f"No readable checkpoint in {folder}: {target} is unreadable ({reason}). Start the run again with "
        f"another run_name, or delete {folder} and run the same command again."
    )


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet, or ``None``."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def check_folder_path(path: str | Path, what: str) -> None:
    """Refuses a folder path that cannot be created: one of its parents is a regular file.

    Nothing is created.

    Args:
        path: the folder.
        what: what the folder is, for the message (e.g. ``"runs_root"``).

    Raises:
        RunFolderError: names the file in the way.

    Examples:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "a-file"
        >>> _ = file.write_text("")
        >>> try:
        ...     check_folder_path(file / "runs", "runs_root")
        ... except RunFolderError as err:
        ...     print(str(err).split(": ", 1)[1].replace(str(file), "FILE"))
        FILE is a file, not a folder; choose another runs_root.
    """
    path = Path(path)
    folder = file_in_the_way(path)
    if folder is not None:
        raise RunFolderError(
            f"{what}={path} cannot be created: {folder} is a file, not a folder; choose another {what}."
        )


class RunFolder:
    """The folder of one run: config, provenance, metrics and checkpoints.

    The folder is created by the first write (:meth:`lock` creates it for a run), not here: a refused command
    leaves nothing behind.

    Args:
        path: the run folder.

    Examples:
        >>> import tempfile, pathlib
        >>> run = RunFolder(pathlib.Path(tempfile.mkdtemp()) / "run")
        >>> run.path.exists()
        False
        >>> run.log({"eval/return_mean": -10.5}, step=0, phase="offline", deployment=0)
        >>> run.read_metrics()[0]["name"], run.read_metrics()[0]["value"]
        ('eval/return_mean', '-10.5')
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.metrics_file = self.path / "metrics.csv"
        self.checkpoint_dir = self.path / "checkpoint"
        self.lock_file = self.path / "LOCK"
        self._extra_loggers: list[Any] = []

    def _mkdir(self) -> None:
        check_folder_path(self.path, "the run folder")
        self.path.mkdir(parents=True, exist_ok=True)

    def holds_run(self) -> bool:
        """Whether the folder holds a run (a config, metrics or a checkpoint): a new run must not start there."""
        return any(
            (self.path / name).exists()
            for name in (
                "config.yaml",
                "metrics.csv",
                "checkpoint",
                "checkpoint.tmp",
                "checkpoint.old",
                "checkpoint.prev",
            )
        )

    # ---------------------------------------------------------------- lock
    @contextlib.contextmanager
    def lock(self) -> Iterator[RunFolder]:
        """Holds the folder's ``LOCK`` while a run writes it; creates the folder (and removes it again if the run
        fails before anything else was written to it).

        The lock is an exclusive, non-blocking :func:`fcntl.flock` on ``LOCK`` (which records this process's PID
        and host); the kernel releases it when the process ends, however it ends, so a killed run leaves no stale
        lock. On platforms without :mod:`fcntl` the folder is not locked.

        Raises:
            RunLockedError: another process holds the lock (the message names the folder, and the holder's PID
                and host).

        Examples:
            >>> import tempfile, pathlib
            >>> run = RunFolder(pathlib.Path(tempfile.mkdtemp()) / "run")
            >>> with run.lock():
            ...     try:
            ...         with RunFolder(run.path).lock():
            ...             pass
            ...     except RunLockedError as err:
            ...         print("being written by another process (PID" in str(err))
            True
            >>> run.path.exists()  # nothing was written: the folder is gone again
            False
        """
        created = _first_missing(self.path)
        self._mkdir()
        try:
            handle = self._acquire()
        except BaseException:
            self._remove_if_empty(created)
            raise
        try:
            yield self
        finally:
            if handle is not None:
                with contextlib.suppress(OSError):
                    self.lock_file.unlink()  # while still held: no one can lock a file about to vanish
                handle.close()  # releases the lock
            self._remove_if_empty(created)

    def _acquire(self) -> Any:
        if fcntl is None:  # pragma: no cover
            return None
        while True:
            handle = open(self.lock_file, "a+")  # noqa: SIM115 - held until the run ends
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip()
                handle.close()
                raise RunLockedError(
                    f"{self.path} is being written by another process ({holder or 'PID unknown'}); wait for it "
                    f"to finish or stop it, or choose another run_name."
                ) from None
            try:
                same = os.fstat(handle.fileno()).st_ino == os.stat(self.lock_file).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the holder removed the file as we opened it: lock the new one
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on host {platform.node()}\n")
        handle.flush()
        return handle

    def _remove_if_empty(self, created: Path | None) -> None:
        """Removes the folders :meth:`lock` created, when they are still empty."""
        if created is None:
            return
        for folder in (self.path, *self.path.parents):
            try:
                folder.rmdir()
            except OSError:
                return
            if folder == created:
                return

    # ---------------------------------------------------------------- config and provenance
    def write_config(self, config: dict[str, Any]) -> None:
        self._mkdir()
        (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        """The run's ``config.yaml`` (a mapping).

        Raises:
            FileNotFoundError: no run folder, or no ``config.yaml`` in it.
            RunFolderError: the file is not valid YAML or not a mapping.
        """
        file = self.path / "config.yaml"
        if not self.path.exists():
            raise FileNotFoundError(f"No run folder at {self.path}; cannot resume it.")
        if not file.exists():
            raise FileNotFoundError(
                f"{self.path} is not a run folder (no config.yaml); cannot resume it."
            )
        try:
            config = yaml.safe_load(file.read_text())
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" (line {where.line + 1})" if where is not None else ""
            raise RunFolderError(
                f"{file} is not valid YAML{line}: {getattr(err, 'problem', None) or err}. Fix the file (it is "
                f"the run's resolved config) to resume the run."
            ) from None
        if not isinstance(config, dict):
            raise RunFolderError(
                f"{file} holds {type(config).__name__}, not a mapping of config fields; it is not a run's "
                f"config. Restore the file to resume the run."
            )
        return config

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
        self._mkdir()
        (self.path / "meta.json").write_text(json.dumps(meta, indent=2))

    # ---------------------------------------------------------------- metrics
    def add_logger(self, torchrl_logger: Any) -> None:
        """Mirrors every scalar to a TorchRL logger (``log_scalar(name, value, step)``)."""
        self._extra_loggers.append(torchrl_logger)

    def log(self, scalars: dict[str, float], *, step: int, phase: str, deployment: int) -> None:
        """Appends one row per scalar to ``metrics.csv`` (and to the TorchRL loggers)."""
        new = not self.metrics_file.exists()
        if new:
            self._mkdir()
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

    def save_checkpoint(
        self, write: Callable[[Path], None], verify: Callable[[Path], Any] | None = None
    ) -> Path:
        """Writes a checkpoint with :func:`atomic_checkpoint` (the previous one is kept as ``checkpoint.prev``)."""
        self._mkdir()
        return atomic_checkpoint(self.checkpoint_dir, write, verify)

    def load_checkpoint(self, read: Callable[[Path], _T]) -> _T | None:
        """:func:`load_checkpoint` of the folder's checkpoint (``None`` when it has none)."""
        return load_checkpoint(self.checkpoint_dir, read)
