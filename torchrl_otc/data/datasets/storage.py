"""The one on-disk format of offline datasets: a memory-mapped TorchRL transition TensorDict plus a metadata file.

A dataset folder holds

* ``data/``: a memory-mapped TensorDict (the layout ``LazyMemmapStorage`` writes) of batch size ``[N]`` with
  TorchRL's transition keys: ``observation`` (the global state ``s``), ``action`` (the joint action; agent ``i``
  holds the columns ``action_partition[i]``), ``("next", "observation")``, ``("next", "reward")``,
  ``("next", "done")``, ``("next", "terminated")``, ``("next", "truncated")``; optional extras such as
  ``episode``, ``beta`` / ``("next", "beta")`` (non-stationary navigation) or ``local_observation``;
* ``metadata.json``: the task, the kind and behaviour policy, the size, the seed, the package version, the
  agents' action partition and a SHA-256 checksum of the content.

Next observations are never zeroed at episode ends (a terminal next state is the real state the robot reached),
and timeouts are truncations, not terminals (see ``DESIGN.md``).

:func:`load_offline_dataset` opens the folder read-only (nothing in it is ever written, even when it is damaged), checks every
file's size against the metadata, verifies the checksum and refuses data that is all zeros, that has NaNs or
infinities, or that lacks required keys, with a message that names the file and says what to do.
:func:`save_dataset` writes atomically: into a temporary sibling folder, ``metadata.json`` last, renamed into place
when complete; an overwritten dataset is kept until its replacement is complete.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import _encode_key_for_filesystem
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, TensorDictReplayBuffer

from torchrl_otc._paths import file_in_the_way
from torchrl_otc._version import __version__
from torchrl_otc.data.transforms import agent_transitions

__all__ = [
    "REQUIRED_KEYS",
    "FORMAT_VERSION",
    "DatasetError",
    "OfflineDataset",
    "content_checksum",
    "validate_transitions",
    "save_dataset",
    "load_dataset",
    "load_offline_dataset",
    "read_metadata",
    "prepare_dataset_folder",
    "check_dataset_for_task",
]

logger = logging.getLogger(__name__)

#: Version of the folder layout written by :func:`save_dataset`.
FORMAT_VERSION = 1
#: Keys every dataset must hold.
REQUIRED_KEYS: tuple = (
    "observation",
    "action",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
    ("next", "truncated"),
)
#: Keys that may not be entirely zero (an all-zero reward or done column can be legitimate).
_NONZERO_KEYS: tuple = ("observation", "action", ("next", "observation"))
_DATA_DIR = "data"
_METADATA_FILE = "metadata.json"


class DatasetError(ValueError):
    """A dataset folder or TensorDict that cannot be used; the message says why and what to do.

    Examples:
        >>> import tempfile
        >>> try:
        ...     load_offline_dataset(tempfile.mkdtemp())
        ... except DatasetError as err:
        ...     print(type(err).__name__)
        DatasetError
    """


def _key_str(key: str | tuple) -> str:
    return key if isinstance(key, str) else ".".join(key)


def content_checksum(data: TensorDictBase) -> str:
    """SHA-256 of a dataset's content (section 4.1 datasets): every leaf's key, dtype, shape and bytes, sorted keys.

    Args:
        data: the transitions.

    Returns:
        The hexadecimal digest.

    Examples:
        >>> td = TensorDict({"observation": torch.zeros(2, 3)}, [2])
        >>> a = content_checksum(td)
        >>> td["observation"][0, 0] = 1.0
        >>> a == content_checksum(td)
        False
    """
    h = hashlib.sha256()
    keys = sorted(data.keys(include_nested=True, leaves_only=True), key=_key_str)
    for key in keys:
        t = data.get(key)
        t = t.detach().cpu().contiguous()
        h.update(_key_str(key).encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        # Hash in chunks so that memory-mapped data is read without a full copy.
        flat = t.reshape(-1)
        step = 1 << 24
        for start in range(0, flat.numel(), step):
            h.update(flat[start : start + step].numpy().tobytes())
    return h.hexdigest()


def validate_transitions(data: TensorDictBase, *, where: str = "the dataset") -> None:
    """Refuse transitions (section 4.1 datasets) that lack required keys, hold NaNs or infinities, or are all zeros.

    Args:
        data: a TensorDict of batch size ``[N]`` in the transition layout.

    Keyword Args:
        where: how to name the data in error messages.

    Raises:
        DatasetError: with what is wrong and what to do.

    Examples:
        >>> td = TensorDict({"observation": torch.ones(2, 3)}, [2])
        >>> validate_transitions(td)
        Traceback (most recent call last):
        ...
        torchrl_otc.data.datasets.storage.DatasetError: the dataset lacks required keys: action, next.observation, ...
    """
    present = set(data.keys(include_nested=True, leaves_only=True))
    missing = [_key_str(k) for k in REQUIRED_KEYS if k not in present]
    if missing:
        raise DatasetError(
            f"{where} lacks required keys: {', '.join(missing)}. A dataset needs "
            f"{', '.join(_key_str(k) for k in REQUIRED_KEYS)} (TorchRL's transition layout); rebuild it with "
            "`otc data build` or load foreign files with load_d4rl_hdf5 / load_minari."
        )
    if data.batch_dims != 1:
        raise DatasetError(
            f"{where} must have one batch dimension (rows); got batch size {tuple(data.batch_size)}."
        )
    if data.batch_size[0] == 0:
        raise DatasetError(f"{where} is empty (0 transitions).")
    for key in sorted(present, key=_key_str):
        t = data.get(key)
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise DatasetError(
                    f"{where} has {bad} NaN or infinite values in {_key_str(key)!r}. The data is corrupt or was "
                    "collected from a diverged simulation; rebuild it (or clean that column) before training."
                )
    zero = [_key_str(k) for k in _NONZERO_KEYS if not bool(data.get(k).ne(0).any())]
    if zero:
        raise DatasetError(
            f"{where} is all zeros in {', '.join(zero)}. This is what a broken loader writes (e.g. TorchRL 0.14.1's "
            "MinariExperienceReplay copies shapes, not values); rebuild the dataset or load the source files with "
            "torchrl_otc.data.datasets.load_minari / load_d4rl_hdf5."
        )


@dataclass
class OfflineDataset:
    """Joint transitions of a task and their metadata (one dataset ``B^0`` before decentralisation, section 4.1).

    Attributes:
        data: the transitions, batch size ``[N]`` (memory-mapped when loaded from disk).
        metadata: task, kind, behaviour policy, size, seed, package version, checksum, action partition, ...
        path: the folder it was loaded from or saved to, if any.

    Examples:
        >>> td = TensorDict(
        ...     {"observation": torch.randn(4, 3), "action": torch.randn(4, 2),
        ...      ("next", "observation"): torch.randn(4, 3), ("next", "reward"): torch.randn(4, 1),
        ...      ("next", "done"): torch.zeros(4, 1, dtype=torch.bool),
        ...      ("next", "terminated"): torch.zeros(4, 1, dtype=torch.bool),
        ...      ("next", "truncated"): torch.zeros(4, 1, dtype=torch.bool)}, [4])
        >>> ds = OfflineDataset(td, {"task": "demo", "action_partition": [[0], [1]]})
        >>> ds.n_agents, ds.agent_view(1)["action"].shape
        (2, torch.Size([4, 1]))
    """

    data: TensorDictBase
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.data.batch_size[0])

    @property
    def task(self) -> str | None:
        """The registered task name."""
        return self.metadata.get("task")

    @property
    def action_partition(self) -> list[list[int]]:
        """Joint action columns of each agent (one agent holding every column if unknown)."""
        part = self.metadata.get("action_partition")
        if part is None:
            return [list(range(self.data.get("action").shape[-1]))]
        return [list(p) for p in part]

    @property
    def n_agents(self) -> int:
        """Number of agents."""
        return len(self.action_partition)

    def agent_view(self, agent: int, *, local_obs: bool = False) -> TensorDictBase:
        """Agent ``agent``'s decentralised dataset ``B_i^0``: ``(s, a_i, r, s', done)`` (section 4.1).

        Args:
            agent: agent index.

        Keyword Args:
            local_obs: use the agent's local observations (needs ``local_observation`` in the data).

        Returns:
            A new TensorDict (in memory).

        Examples:
            >>> td = TensorDict({"observation": torch.ones(2, 3), "action": torch.arange(6.0).view(2, 3)}, [2])
            >>> OfflineDataset(td, {"action_partition": [[2, 1], [0]]}).agent_view(0)["action"]
            tensor([[2., 1.],
                    [5., 4.]])
        """
        return agent_transitions(self.data, self.action_partition, agent, local_obs=local_obs)

    def split_agents(self, *, local_obs: bool = False) -> list[TensorDictBase]:
        """The ``n_agents`` decentralised datasets (section 4.1); see :meth:`agent_view`.

        Examples:
            >>> td = TensorDict({"observation": torch.ones(2, 3), "action": torch.zeros(2, 3)}, [2])
            >>> [v["action"].shape[-1] for v in OfflineDataset(td, {"action_partition": [[0], [1, 2]]}).split_agents()]
            [1, 2]
        """
        return [self.agent_view(i, local_obs=local_obs) for i in range(self.n_agents)]

    def check_for_task(self, task: Any) -> None:
        """Refuse this dataset for ``task`` if the task, shapes or action partition differ (section 4.1).

        See :func:`check_dataset_for_task`.

        Args:
            task: a :class:`~torchrl_otc.envs.registry.TaskSpec` (or an object with ``name``, ``state_dim``,
                ``action_dim`` and ``action_partition``).

        Raises:
            DatasetError: one line naming the dataset and both values.

        Examples:
            >>> from types import SimpleNamespace
            >>> td = TensorDict({"observation": torch.ones(2, 3), "action": torch.zeros(2, 2)}, [2])
            >>> spec = SimpleNamespace(name="demo", state_dim=3, action_dim=2, action_partition=((0,), (1,)))
            >>> OfflineDataset(td, {"task": "demo", "action_partition": [[0], [1]]}).check_for_task(spec)
        """
        check_dataset_for_task(self, task)

    def replay_buffer(self, *, memmap: bool = False, batch_size: int | None = None, **kwargs: Any):
        """A ``TensorDictReplayBuffer`` holding the joint transitions.

        Args:
            memmap: use a ``LazyMemmapStorage`` (on disk) instead of a ``LazyTensorStorage`` (in memory).
            batch_size: the buffer's batch size.
            **kwargs: passed to ``TensorDictReplayBuffer`` (``sampler``, ``transform``, ...).

        Returns:
            The filled replay buffer (the joint data; cut it per agent with ``transform=AgentView(i, partition)``,
            section 4.1).

        Examples:
            >>> td = TensorDict({"observation": torch.ones(4, 3), "action": torch.zeros(4, 2)}, [4])
            >>> len(OfflineDataset(td).replay_buffer(batch_size=2))
            4
        """
        storage = (LazyMemmapStorage if memmap else LazyTensorStorage)(len(self))
        rb = TensorDictReplayBuffer(storage=storage, batch_size=batch_size, **kwargs)
        rb.extend(self.data.to_tensordict() if self.data.is_memmap() else self.data)
        return rb


# ---------------------------------------------------------------------------------------------- reading
def _rebuild_hint(path: Path, meta: dict[str, Any] | None) -> str:
    """What to run to replace a damaged dataset folder."""
    command = (meta or {}).get("command") if isinstance(meta, dict) else None
    if isinstance(command, str) and command.startswith("otc "):
        if "--overwrite" not in command:
            command += " --overwrite"
        return f"rebuild it with `{command}`"
    return f"rebuild it with `otc data build TASK ... --out {path} --overwrite` (or `otc data import ... --overwrite`)"


def _dtype_from_str(text: Any, *, where: str) -> torch.dtype:
    name = text.split(".", 1)[1] if isinstance(text, str) and text.startswith("torch.") else None
    dtype = getattr(torch, name, None) if name else None
    if not isinstance(dtype, torch.dtype):
        raise DatasetError(f"{where}: dtype {text!r} is not a torch dtype (e.g. 'torch.float32').")
    return dtype


def _shape_from(value: Any, *, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise DatasetError(f"{where}: shape {value!r} is not a list of non-negative integers.")
    return tuple(value)


def _read_json(file: Path, *, what: str) -> Any:
    try:
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{file} ({what}) cannot be read ({err}).") from err


def _memmap_name(key: str) -> str:
    return _encode_key_for_filesystem(key, robust=True)


@dataclass(frozen=True)
class _Leaf:
    key: tuple[str, ...]
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]  # rows first


def _stored_leaves(folder: Path, prefix: tuple[str, ...] = ()) -> list[_Leaf]:
    """The leaves listed by the memory-mapped TensorDict's ``meta.json`` files (nothing is opened but JSON)."""
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        raise DatasetError(f"{meta_file} is missing: the data folder is incomplete.")
    tree = _read_json(meta_file, what="the memory-mapped TensorDict's layout")
    if not isinstance(tree, dict):
        raise DatasetError(f"{meta_file} does not hold a JSON object.")
    leaves: list[_Leaf] = []
    for name, entry in tree.items():
        if not isinstance(entry, dict):
            continue  # batch shape, device, type: checked by the caller
        where = f"{meta_file} entry {name!r}"
        if entry.get("type") is not None:
            sub = folder / _memmap_name(name)
            if not sub.is_dir():
                raise DatasetError(f"{where} names the folder {sub}, which is missing.")
            leaves += _stored_leaves(sub, (*prefix, name))
            continue
        if entry.get("is_nested", False):
            raise DatasetError(f"{where} is a nested tensor; datasets hold dense columns only.")
        leaves.append(
            _Leaf(
                (*prefix, name),
                folder / f"{_memmap_name(name)}.memmap",
                _dtype_from_str(entry.get("dtype"), where=where),
                _shape_from(entry.get("shape"), where=where),
            )
        )
    return leaves


def _check_metadata(path: Path, meta: Any) -> None:
    """Refuse a ``metadata.json`` whose fields have the wrong types (the cheap checks, before any data)."""
    file = path / _METADATA_FILE
    if not isinstance(meta, dict):
        raise DatasetError(f"{file} does not hold a JSON object; {_rebuild_hint(path, None)}.")
    size = meta.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise DatasetError(
            f"{file}: size is {size!r}, expected a positive number of transitions; {_rebuild_hint(path, meta)}."
        )
    keys = meta.get("keys")
    if keys is not None and not (
        isinstance(keys, dict) and all(isinstance(v, dict) for v in keys.values())
    ):
        raise DatasetError(
            f"{file}: keys must map each column to {{shape, dtype}}; got {keys!r:.80}. "
            f"{_rebuild_hint(path, meta)}."
        )
    part = meta.get("action_partition")
    if part is not None and not (
        isinstance(part, list)
        and part
        and all(
            isinstance(p, list)
            and p
            and all(isinstance(c, int) and not isinstance(c, bool) for c in p)
            for p in part
        )
    ):
        raise DatasetError(
            f"{file}: action_partition is {part!r}, expected one non-empty list of action columns per agent."
        )


def _check_layout(path: Path, meta: dict[str, Any]) -> list[_Leaf]:
    """Compare the stored columns with ``metadata.json`` and every file's size with its dtype and shape.

    Reads only JSON files and file sizes: cheap, and done even without checksum verification.
    """
    data_dir = path / _DATA_DIR
    hint = _rebuild_hint(path, meta)
    leaves = _stored_leaves(data_dir)
    size = meta["size"]
    top = _read_json(data_dir / "meta.json", what="the memory-mapped TensorDict's layout")
    if top.get("shape") != [size]:
        raise DatasetError(
            f"{data_dir / 'meta.json'}: batch shape {top.get('shape')!r} but {_METADATA_FILE} says {size} "
            f"transitions; the folder was modified: {hint}."
        )
    by_key = {_key_str(leaf.key): leaf for leaf in leaves}
    described = meta.get("keys")
    if described is not None:
        missing = sorted(set(described) - set(by_key))
        extra = sorted(set(by_key) - set(described))
        if missing or extra:
            raise DatasetError(
                f"{path}: {_METADATA_FILE} lists the columns {sorted(described)} but {data_dir} holds "
                f"{sorted(by_key)} (missing: {missing or 'none'}; unexpected: {extra or 'none'}); {hint}."
            )
        for name, desc in described.items():
            leaf = by_key[name]
            where = f"{path / _METADATA_FILE} keys.{name}"
            dtype = _dtype_from_str(desc.get("dtype"), where=where)
            shape = _shape_from(desc.get("shape"), where=where)
            if dtype != leaf.dtype or (size, *shape) != leaf.shape:
                raise DatasetError(
                    f"{path}: column {name!r} is {leaf.dtype}, shape {list(leaf.shape)} in {leaf.file.parent / 'meta.json'} "
                    f"but {dtype}, shape {[size, *shape]} in {_METADATA_FILE}; one of them was edited: {hint}."
                )
    for leaf in leaves:
        name = _key_str(leaf.key)
        if not leaf.shape or leaf.shape[0] != size:
            raise DatasetError(
                f"{leaf.file.parent / 'meta.json'}: column {name!r} has shape {list(leaf.shape)} but the dataset "
                f"has {size} transitions; {hint}."
            )
        numel = math.prod(leaf.shape)
        expected = numel * torch.empty((), dtype=leaf.dtype).element_size()
        if numel == 0:
            continue  # tensordict writes no file for an empty column
        if not leaf.file.is_file():
            raise DatasetError(f"{leaf.file} is missing (column {name!r}); {hint}.")
        actual = leaf.file.stat().st_size
        if actual != expected:
            what = "truncated" if actual < expected else "longer than it should be"
            raise DatasetError(
                f"{leaf.file} is {actual} bytes but column {name!r} ({leaf.dtype}, shape {list(leaf.shape)}) "
                f"needs {expected}: the file is {what}; {hint}."
            )
    return leaves


def _open_readonly(leaves: list[_Leaf], size: int) -> TensorDict:
    """Map every column privately and read-only (``MAP_PRIVATE``): nothing is ever written back to the files."""
    data = TensorDict({}, batch_size=[size])
    for leaf in leaves:
        numel = math.prod(leaf.shape)
        if numel == 0:
            tensor = torch.empty(leaf.shape, dtype=leaf.dtype)
        else:
            try:
                tensor = torch.from_file(
                    str(leaf.file), shared=False, size=numel, dtype=leaf.dtype
                ).view(leaf.shape)
            except (OSError, RuntimeError) as err:
                raise DatasetError(f"{leaf.file} cannot be read ({err}).") from err
        data.set(leaf.key if len(leaf.key) > 1 else leaf.key[0], tensor)
    return data


def _key_digests(data: TensorDictBase) -> dict[str, str]:
    """SHA-256 of each column's bytes (names the damaged file when the dataset's checksum does not match)."""
    out = {}
    for key in sorted(data.keys(include_nested=True, leaves_only=True), key=_key_str):
        t = data.get(key).detach().cpu().contiguous()
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        h = hashlib.sha256()
        flat = t.reshape(-1)
        step = 1 << 24
        for start in range(0, flat.numel(), step):
            h.update(flat[start : start + step].numpy().tobytes())
        out[_key_str(key)] = h.hexdigest()
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a dataset folder (section 4.1 datasets) without loading or checking the data.

    Args:
        path: the dataset folder.

    Returns:
        The parsed ``metadata.json``.

    Raises:
        DatasetError: the folder is missing, is a partial build (written by an interrupted build), or its
            ``metadata.json`` is not valid JSON.

    Examples:
        >>> read_metadata("/nonexistent/folder")
        Traceback (most recent call last):
        ...
        torchrl_otc.data.datasets.storage.DatasetError: /nonexistent/folder is not a dataset folder: ...
    """
    path = Path(path)
    file = path / _METADATA_FILE
    if not file.is_file():
        if path.is_file():
            raise DatasetError(f"{path} is a file, not a dataset folder.")
        if path.is_dir() and _looks_partial(path):
            raise DatasetError(
                f"{path} is a partial dataset left by an interrupted build ({file.name} is written last and is "
                "missing); run the build again (`otc data build ... --out "
                f"{path}`): it replaces the partial folder."
            )
        leftover = _complete_leftover(path)
        if leftover is not None:
            raise DatasetError(
                f"{path} is missing, but {leftover} holds the complete dataset of an interrupted build or "
                f"--overwrite; run the build again to restore it, or rename {leftover.name} to {path.name}."
            )
        raise DatasetError(
            f"{path} is not a dataset folder: {file.name} is missing. Build one with `otc data build TASK --out DIR`."
        )
    try:
        return json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(
            f"{file} is not valid JSON ({err}); the folder is damaged: rebuild the dataset."
        ) from err


def load_dataset(path: str | Path, **kwargs: Any) -> OfflineDataset:
    """Deprecated name of :func:`load_offline_dataset` (it clashed with TorchRL's ``load_dataset``).

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     try:
        ...         load_dataset("/nonexistent/folder")
        ...     except DatasetError:
        ...         pass
        >>> caught[0].category.__name__
        'DeprecationWarning'
    """
    warnings.warn(
        "torchrl_otc.data.datasets.load_dataset is renamed load_offline_dataset (so that it is not taken for "
        "torchrl.data.datasets.load_dataset); use the new name.",
        DeprecationWarning,
        stacklevel=2,
    )
    return load_offline_dataset(path, **kwargs)


def load_offline_dataset(
    path: str | Path, *, verify: bool = True, required_keys: Sequence = REQUIRED_KEYS
) -> OfflineDataset:
    """Load a dataset folder written by :func:`save_dataset` (section 4.1 datasets), checking it; read-only.

    Named so that it is not taken for TorchRL's :func:`torchrl.data.datasets.load_dataset`, which resolves a
    prefixed dataset ID (``"minari:..."``, ``"d4rl:..."``) into a replay buffer; this one opens a folder of this
    package's format (``otc data import`` converts D4RL and Minari files into one). ``load_dataset``, its earlier
    name, still works and warns.

    Nothing in the folder is ever written: the columns are mapped privately (a damaged file is refused, never
    extended or rewritten). Every file's size is checked against the dtypes and shapes of the metadata, with or
    without ``verify``.

    Args:
        path: the dataset folder.

    Keyword Args:
        verify: recompute the content checksum and compare it with the metadata (reads every byte once).
        required_keys: keys the data must hold. Defaults to :data:`REQUIRED_KEYS`.

    Returns:
        The dataset; ``data`` is memory-mapped (read lazily from disk, copy-on-write in memory).

    Raises:
        DatasetError: missing, short or long files (named), dtype or shape edits, missing keys, checksum
            mismatch (naming the changed columns), NaNs, all-zero data, size mismatch.

    Examples:
        >>> load_offline_dataset("/nonexistent/folder")
        Traceback (most recent call last):
        ...
        torchrl_otc.data.datasets.storage.DatasetError: /nonexistent/folder is not a dataset folder: ...
    """
    path = Path(path)
    meta = read_metadata(path)
    _check_metadata(path, meta)
    if not (path / _DATA_DIR).is_dir():
        raise DatasetError(
            f"{path} has metadata but no {_DATA_DIR}/ folder; {_rebuild_hint(path, meta)}."
        )
    leaves = _check_layout(path, meta)
    data = _open_readonly(leaves, meta["size"])
    present = set(data.keys(True, True))
    missing = [_key_str(k) for k in required_keys if k not in present]
    if missing:
        raise DatasetError(
            f"{path} lacks required keys: {', '.join(missing)}. Rebuild it with `otc data build`, or, for foreign "
            "files, use load_d4rl_hdf5 / load_minari."
        )
    if verify:
        expected = meta.get("checksum")
        actual = content_checksum(data)
        if expected != actual:
            described = meta.get("keys") or {}
            stored = {k: v.get("sha256") for k, v in described.items() if v.get("sha256")}
            changed = []
            if stored:
                digests = _key_digests(data)
                by_key = {_key_str(leaf.key): leaf.file for leaf in leaves}
                changed = [str(by_key[k]) for k, v in stored.items() if digests.get(k) != v]
            which = f" changed files: {', '.join(changed)};" if changed else ""
            raise DatasetError(
                f"Checksum mismatch for the dataset {path} (metadata has {str(expected)[:12]}..., the data hashes "
                f"to {actual[:12]}...):{which} the data was changed after it was written or the copy is damaged; "
                f"{_rebuild_hint(path, meta)} (or, if you changed it on purpose, save it again with save_dataset)."
            )
    part = meta.get("action_partition")
    if part is not None:
        width = data.get("action").shape[-1] if data.get("action").dim() > 1 else 1
        cols = sorted(c for p in part for c in p)
        if cols != list(range(width)):
            raise DatasetError(
                f"{path / _METADATA_FILE}: action_partition {part} covers the columns {cols} but the actions "
                f"have {width} columns; every column must belong to exactly one agent: {_rebuild_hint(path, meta)}."
            )
    validate_transitions(data, where=str(path))
    return OfflineDataset(data, meta, path)


def check_dataset_for_task(dataset: OfflineDataset, task: Any) -> None:
    """Refuse a dataset whose task, shapes or agents' action partition differ from a task's (section 4.1).

    Args:
        dataset: the loaded dataset.
        task: a :class:`~torchrl_otc.envs.registry.TaskSpec` or any object with ``name``, ``state_dim``,
            ``action_dim`` and ``action_partition``.

    Raises:
        DatasetError: one line naming the dataset, both values and what to do.

    Examples:
        >>> from types import SimpleNamespace
        >>> td = TensorDict({"observation": torch.ones(2, 3), "action": torch.zeros(2, 2)}, [2])
        >>> ds = OfflineDataset(td, {"task": "demo", "action_partition": [[1], [0]]})
        >>> spec = SimpleNamespace(name="demo", state_dim=3, action_dim=2, action_partition=((0,), (1,)))
        >>> check_dataset_for_task(ds, spec)
        Traceback (most recent call last):
        ...
        torchrl_otc.data.datasets.storage.DatasetError: The dataset ... has the action partition [[1], [0]] but ...
    """
    where = dataset.path if dataset.path is not None else "(in memory)"
    name = getattr(task, "name", None)
    if dataset.task is not None and name is not None and dataset.task != name:
        raise DatasetError(f"The dataset {where} is for task {dataset.task!r}, not {name!r}.")
    obs = tuple(dataset.data.get("observation").shape[1:])
    act = tuple(dataset.data.get("action").shape[1:])
    expected_obs, expected_act = (int(task.state_dim),), (int(task.action_dim),)
    if obs != expected_obs or act != expected_act:
        raise DatasetError(
            f"The dataset {where} has observation shape {obs} and action shape {act} but task {name!r} has "
            f"{expected_obs} and {expected_act}; use a dataset of that task."
        )
    expected_part = [[int(c) for c in p] for p in task.action_partition]
    if dataset.metadata.get("action_partition") is not None and (
        dataset.action_partition != expected_part
    ):
        raise DatasetError(
            f"The dataset {where} has the action partition {dataset.action_partition} but task {name!r} has "
            f"{expected_part}; the agents would learn each other's action columns: rebuild or re-import the "
            "dataset for this task."
        )


# ---------------------------------------------------------------------------------------------- writing
def _partial_prefix(path: Path) -> str:
    return f".{path.name}.partial-"


def _old_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers are never being written now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _dead_partials(path: Path) -> list[Path]:
    """Temporary folders of builds of ``path`` whose process is gone, newest first."""
    if not path.parent.is_dir():
        return []
    out = []
    prefix = _partial_prefix(path)
    for cand in path.parent.iterdir():
        if not cand.name.startswith(prefix):
            continue
        try:
            pid = int(cand.name[len(prefix) :])
        except ValueError:
            continue
        if not _pid_alive(pid):
            out.append(cand)
    return sorted(out, key=lambda p: p.stat().st_mtime, reverse=True)


def _complete_leftover(path: Path) -> Path | None:
    """A complete dataset left next to ``path`` by an interrupted swap, if any (newest first)."""
    for cand in [*_dead_partials(path), _old_path(path)]:
        if (cand / _METADATA_FILE).is_file():
            return cand
    return None


def _looks_partial(path: Path) -> bool:
    """A folder with no ``metadata.json`` holding only what a build writes before it (``data/``, a temp file)."""
    if not path.is_dir() or (path / _METADATA_FILE).exists():
        return False
    names = {p.name for p in path.iterdir()}
    return bool(names) and names <= {_DATA_DIR, _METADATA_FILE + ".tmp"}


def _check_parents(path: Path) -> None:
    parent = file_in_the_way(path)
    if (
        parent is not None and parent != path
    ):  # a file at ``path`` itself is refused as "not a dataset folder"
        raise DatasetError(
            f"Cannot create the dataset folder {path}: {parent} is a file, not a folder; choose another "
            "output folder."
        )


def prepare_dataset_folder(path: str | Path, *, overwrite: bool = False) -> Path:
    """Check, before any expensive work, that a dataset can be written to ``path``; finish interrupted writes.

    A swap that :func:`save_dataset` did not finish (killed between its renames) is completed; temporary folders
    of killed builds are removed (logged). A folder at ``path`` that an interrupted build left behind (no
    ``metadata.json``) is accepted: the next save replaces it, with a logged warning.

    Args:
        path: the dataset folder to write.

    Keyword Args:
        overwrite: whether an existing complete dataset may be replaced.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DatasetError: ``path`` or a parent is a file, or ``path`` holds a dataset and ``overwrite`` is false, or
            ``path`` holds something else than a dataset.

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "a-file").write_text("x")
        1
        >>> prepare_dataset_folder(root / "a-file" / "ds")
        Traceback (most recent call last):
        ...
        torchrl_otc.data.datasets.storage.DatasetError: Cannot create the dataset folder ...: ... is a file, ...
    """
    path = Path(path)
    _check_parents(path)
    complete = (path / _METADATA_FILE).is_file()
    if not complete and (not path.exists() or _looks_partial(path)):
        leftover = _complete_leftover(path)
        if leftover is not None:
            if path.exists():
                shutil.rmtree(path)
            os.replace(leftover, path)
            logger.warning(
                "Restored the dataset %s from %s (a build or --overwrite was interrupted).",
                path,
                leftover,
            )
            complete = True
    for cand in _dead_partials(path):
        logger.warning("Removing %s, the partial output of an interrupted dataset build.", cand)
        shutil.rmtree(cand, ignore_errors=True)
    if complete and _old_path(path).exists():
        shutil.rmtree(_old_path(path), ignore_errors=True)
    if not path.exists():
        return path
    if path.is_file():
        raise DatasetError(f"{path} is a file; choose another output folder.")
    if complete:
        if not overwrite:
            raise DatasetError(
                f"{path} exists; pass overwrite=True (CLI: --overwrite) or choose another folder."
            )
    elif any(path.iterdir()) and not _looks_partial(path):
        raise DatasetError(f"{path} exists and is not a dataset folder; refusing to overwrite it.")
    return path


def save_dataset(
    data: TensorDictBase,
    path: str | Path,
    metadata: dict[str, Any],
    *,
    overwrite: bool = False,
) -> OfflineDataset:
    """Write joint transitions (``B^0`` before decentralisation, section 4.1) and their metadata, atomically.

    The folder is written next to ``path`` (``.<name>.partial-<pid>``), ``metadata.json`` last, and renamed into
    place only when complete; with ``overwrite`` the previous dataset is moved aside, the new one renamed in, and
    the old one removed, so a kill at any point leaves either the old or the new complete dataset (the next call
    finishes an interrupted swap, see :func:`prepare_dataset_folder`). A folder left by an interrupted build is
    replaced, with a logged warning.

    Args:
        data: transitions of batch size ``[N]`` with the :data:`REQUIRED_KEYS`.
        path: the dataset folder to create.
        metadata: at least ``task`` and ``kind``; ``size``, ``package_version``, ``checksum``, ``keys``,
            ``format_version`` and ``created`` are filled in.

    Keyword Args:
        overwrite: replace an existing folder.

    Returns:
        The saved dataset, memory-mapped from ``path``.

    Raises:
        DatasetError: the data fails :func:`validate_transitions`, the folder exists and ``overwrite`` is false,
            or ``path`` cannot be a folder.

    Examples:
        >>> import tempfile
        >>> td = TensorDict(
        ...     {"observation": torch.randn(4, 3), "action": torch.randn(4, 2),
        ...      ("next", "observation"): torch.randn(4, 3), ("next", "reward"): torch.randn(4, 1),
        ...      ("next", "done"): torch.zeros(4, 1, dtype=torch.bool),
        ...      ("next", "terminated"): torch.zeros(4, 1, dtype=torch.bool),
        ...      ("next", "truncated"): torch.zeros(4, 1, dtype=torch.bool)}, [4])
        >>> folder = tempfile.mkdtemp()
        >>> _ = save_dataset(td, folder + "/demo", {"task": "demo", "kind": "random", "seed": 0})
        >>> ds = load_offline_dataset(folder + "/demo")
        >>> len(ds), ds.metadata["kind"], torch.equal(ds.data["action"], td["action"])
        (4, 'random', True)
    """
    path = Path(path)
    if "task" not in metadata or "kind" not in metadata:
        raise DatasetError(f"metadata needs 'task' and 'kind'; got keys {sorted(metadata)}.")
    validate_transitions(data, where="the data to save")
    prepare_dataset_folder(path, overwrite=overwrite)
    data = data.detach().cpu()
    if data.is_memmap():
        data = data.to_tensordict()
    digests = _key_digests(data)
    meta = dict(metadata)
    meta.update(
        {
            "format_version": FORMAT_VERSION,
            "size": int(data.batch_size[0]),
            "package_version": __version__,
            "checksum": content_checksum(data),
            "keys": {
                _key_str(k): {
                    "shape": list(data.get(k).shape[1:]),
                    "dtype": str(data.get(k).dtype),
                    "sha256": digests[_key_str(k)],
                }
                for k in sorted(data.keys(True, True), key=_key_str)
            },
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    tmp = path.with_name(f"{_partial_prefix(path)}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_folder(data, tmp, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replaced = path.exists()
    if replaced:
        if not (path / _METADATA_FILE).exists() and any(path.iterdir()):
            logger.warning(
                "%s held a partial dataset left by an interrupted build; replacing it with the new build.",
                path,
            )
        old = _old_path(path)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    logger.info(
        "Saved %d transitions of %s (%s) to %s", meta["size"], meta["task"], meta["kind"], path
    )
    leaves = _check_layout(path, meta)
    return OfflineDataset(_open_readonly(leaves, meta["size"]), meta, path)


def _write_folder(data: TensorDictBase, folder: Path, meta: dict[str, Any]) -> None:
    """The data, then ``metadata.json`` (last: its presence marks a complete folder), each flushed to disk."""
    data.memmap(prefix=folder / _DATA_DIR)
    tmp = folder / (_METADATA_FILE + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(meta, indent=2, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(folder / _METADATA_FILE)
