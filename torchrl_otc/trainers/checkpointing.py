"""Checkpoints of the tuning loop: the loop's position, every agent's learner and online data, the random state.

A checkpoint folder (written whole by :func:`~torchrl_otc.trainers.run.atomic_checkpoint`, so a crash leaves the
previous one loadable) holds

* ``state.pt``: the loop's state (stage, step, returns, ``metrics.csv`` rows to keep), ``"format"``
  (:data:`FORMAT`), the process's random state (:class:`torchrl.checkpoint.GlobalRNGState`: Python, NumPy, torch
  CPU and CUDA) and, per agent, its :meth:`AgentLearner.state_dict
  <torchrl_otc.trainers.AgentLearner.state_dict>` and how many online rows its buffers hold (``"rows"``);
* ``agent{i}/merged`` and ``agent{i}/online``: the rows of the agent's merged storage after its offline ones
  (every deployment's ``D_i^k``) and the online buffer's rows (the latest ``D_i^k``), read from the buffers
  themselves and written as TensorDict memory maps (:meth:`tensordict.TensorDict.memmap`). The offline rows are
  not written: they come back from the dataset.

:func:`read_checkpoint` reads ``state.pt`` and checks every memory-mapped file's size against its metadata without
writing (opening a short memory map would extend it with zeros): :func:`~torchrl_otc.trainers.run.atomic_checkpoint`
uses it to verify a checkpoint before the previous one is dropped, and resuming to tell an unreadable checkpoint,
which :func:`~torchrl_otc.trainers.run.load_checkpoint` replaces by the previous one.

Checkpoints of format 1 (earlier versions: every deployment's rows pickled in ``state.pt`` under
``"online_rows"``, the online buffer under ``"current_online"``, torch's random states under ``"torch_rng"`` and
``"cuda_rng"``) still restore.

Why not :class:`torchrl.checkpoint.Checkpoint` for the whole folder: its swap (``os.replace`` of the old folder to
a backup, then of the new one into place) leaves no checkpoint when the process is killed between the two renames,
and nothing recovers the backup, whereas :func:`~torchrl_otc.trainers.run.recover_checkpoint` completes such a swap
(the kill-anywhere resume tests kill the loop at any point); it restores components in name order, whereas the
buffers must be written before the learner's state is loaded (writes move the samplers' caches); and a replay
buffer's own ``dumps`` writes its whole storage, offline rows included, where only the online rows are needed. Its
:class:`~torchrl.checkpoint.GlobalRNGState` serves as is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.checkpoint import GlobalRNGState

from torchrl_otc.trainers.learner import AgentLearner

__all__ = [
    "FORMAT",
    "STATE_FILE",
    "read_checkpoint",
    "read_state",
    "restore_checkpoint",
    "write_checkpoint",
]

#: The version of the checkpoint layout written by :func:`write_checkpoint`.
FORMAT = 2
#: The file holding the loop's and the learners' state.
STATE_FILE = "state.pt"


def _save_rows(rows: TensorDictBase, path: Path) -> None:
    rows.to("cpu").memmap(path)


def _load_rows(path: Path, device: torch.device) -> TensorDictBase:
    return TensorDict.load_memmap(path).to_tensordict().to(device)


def write_checkpoint(
    path: str | Path, state: dict[str, Any], learners: Sequence[AgentLearner]
) -> None:
    """Fills the checkpoint folder ``path``: ``state.pt`` and each agent's online rows.

    Args:
        path: an empty folder (:func:`~torchrl_otc.trainers.run.atomic_checkpoint` hands one over).
        state: the loop's own state (picklable).
        learners: the agents' learners, in order.

    Examples:
        >>> import tempfile
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, RandomSampler, Unbounded
        >>> from torchrl_otc.configs.algorithms import TD3BCConfig
        >>> def rows(n):
        ...     return TensorDict({"observation": torch.randn(n, 3), "action": torch.rand(n, 1),
        ...         ("next", "observation"): torch.randn(n, 3), ("next", "reward"): torch.randn(n, 1),
        ...         ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
        ...         ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool)}, [n])
        >>> def make():
        ...     learner = AgentLearner(TD3BCConfig(hidden_sizes=(8,)), Unbounded(shape=(3,)),
        ...         Bounded(-1.0, 1.0, (1,)), merged_capacity=200, sampler_factory=lambda online: RandomSampler())
        ...     learner.add_offline(rows(100))
        ...     return learner
        >>> source, dest = make(), make()
        >>> source.add_deployment(rows(20)); source.add_deployment(rows(10))
        >>> path = Path(tempfile.mkdtemp())
        >>> write_checkpoint(path, {"step": 3}, [source])
        >>> restore_checkpoint(path, read_state(path), [dest])["step"]
        3
        >>> len(dest.merged_buffer), len(dest.online_buffer), dest.deployments
        (130, 10, 2)
    """
    path = Path(path)
    agents = []
    for i, learner in enumerate(learners):
        merged, online = learner.merged_buffer, learner.online_buffer
        rows = {"merged": len(merged) - learner.num_offline, "online": len(online)}
        if rows["merged"]:
            _save_rows(
                merged.storage[learner.num_offline : len(merged)], path / f"agent{i}" / "merged"
            )
        if rows["online"]:
            _save_rows(online.storage[: len(online)], path / f"agent{i}" / "online")
        agents.append({"learner": learner.state_dict(), "rows": rows})
    full = {**state, "format": FORMAT, "rng": GlobalRNGState().state_dict(), "agents": agents}
    torch.save(full, path / STATE_FILE)


def read_state(path: str | Path) -> dict[str, Any]:
    """The content of ``state.pt`` in the checkpoint folder ``path`` (either format).

    Args:
        path: the checkpoint folder.
    """
    return torch.load(Path(path) / STATE_FILE, weights_only=False)


def _check_memmap(folder: Path, rows: int) -> None:
    """Checks a TensorDict memory-map folder against its metadata (``rows`` rows, every file of its full size),
    reading only the metadata and the files' sizes."""
    meta_file = folder / "meta.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{meta_file} is missing")
    meta = json.loads(meta_file.read_text())
    if list(meta.get("shape", [])[:1]) != [rows]:
        raise ValueError(f"{folder} holds {meta.get('shape')} rows, not [{rows}]")
    for key, entry in meta.items():
        if not isinstance(entry, dict):
            continue
        if entry.get("type") == "TensorDict" or "dtype" not in entry:
            if (folder / key).is_dir():
                _check_memmap(folder / key, rows)
            continue
        file = folder / f"{key}.memmap"
        itemsize = torch.empty(
            (), dtype=getattr(torch, entry["dtype"].split(".")[-1])
        ).element_size()
        expected = math.prod(entry["shape"]) * itemsize
        size = file.stat().st_size if file.exists() else None
        if size != expected:
            raise ValueError(
                f"{file} is {'missing' if size is None else f'{size} bytes'}; its metadata says {expected} bytes"
            )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """:func:`read_state` of the checkpoint folder ``path``, after checking that its row files are whole.

    Nothing is written (the memory maps are not opened: their sizes are compared with their metadata).

    Args:
        path: the checkpoint folder.

    Returns:
        The content of ``state.pt``.

    Raises:
        Exception: whatever makes the checkpoint unreadable (a truncated ``state.pt``, a short or missing row file).

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp())
        >>> _ = torch.save({"step": 3, "format": FORMAT, "agents": []}, path / STATE_FILE)
        >>> read_checkpoint(path)["step"]
        3
    """
    path = Path(path)
    state = read_state(path)
    if state.get("format", 1) >= 2:
        for i, saved in enumerate(state["agents"]):
            for kind in ("merged", "online"):
                if saved["rows"][kind]:
                    _check_memmap(path / f"agent{i}" / kind, saved["rows"][kind])
    return state


def restore_checkpoint(
    path: str | Path,
    state: dict[str, Any],
    learners: Sequence[AgentLearner],
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Restores the learners (built afresh, holding their offline rows) and the random state from a checkpoint.

    Each agent's online rows are written back to its buffers first, then its learner state is loaded (last:
    the writes must not move its streams), then the process's random state is set.

    Args:
        path: the checkpoint folder.
        state: :func:`read_state` of it.
        learners: the agents' learners, in order, each with exactly its offline rows in its buffers.
        device: where the rows go; ``None`` means each buffer's storage device.

    Returns:
        ``state`` (the loop's own entries are the caller's to read).
    """
    path = Path(path)
    for i, (learner, saved) in enumerate(zip(learners, state["agents"])):
        if len(learner.merged_buffer) != learner.num_offline:
            raise RuntimeError(
                f"restore_checkpoint: agent {i}'s merged buffer must hold only its offline rows; it holds "
                f"{len(learner.merged_buffer)} rows, {learner.num_offline} of them offline."
            )
        target = (
            torch.device(device) if device is not None else learner.merged_buffer.storage.device
        )
        if state.get("format", 1) == 1:
            for rows in saved["online_rows"]:
                learner.merged_buffer.extend(rows.to(target))
            current = saved["current_online"]
        else:
            folder = path / f"agent{i}"
            if saved["rows"]["merged"]:
                learner.merged_buffer.extend(_load_rows(folder / "merged", target))
            current = _load_rows(folder / "online", target) if saved["rows"]["online"] else None
        learner.online_buffer.empty()
        if current is not None:
            learner.online_buffer.extend(current.to(target))
        learner.load_state_dict(saved["learner"])
    if "rng" in state:
        rng = dict(state["rng"])
        if not torch.cuda.is_available():  # a GPU run resumed on a CPU: no CUDA state to set
            rng.pop("torch_cuda", None)
        GlobalRNGState().load_state_dict(rng)
    else:  # format 1
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state
