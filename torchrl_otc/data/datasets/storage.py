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

:func:`load_dataset` verifies the checksum and refuses data that is all zeros, that has NaNs or infinities, or that
lacks required keys, with a message that says what is wrong and what to do.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, TensorDictReplayBuffer

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
    "read_metadata",
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
        ...     load_dataset(tempfile.mkdtemp())
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


def save_dataset(
    data: TensorDictBase,
    path: str | Path,
    metadata: dict[str, Any],
    *,
    overwrite: bool = False,
) -> OfflineDataset:
    """Write joint transitions (``B^0`` before decentralisation, section 4.1) and their metadata, checksum included.

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
        DatasetError: the data fails :func:`validate_transitions`, or the folder exists and ``overwrite`` is false.

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
        >>> ds = load_dataset(folder + "/demo")
        >>> len(ds), ds.metadata["kind"], torch.equal(ds.data["action"], td["action"])
        (4, 'random', True)
    """
    path = Path(path)
    if "task" not in metadata or "kind" not in metadata:
        raise DatasetError(f"metadata needs 'task' and 'kind'; got keys {sorted(metadata)}.")
    validate_transitions(data, where="the data to save")
    if path.exists():
        if not overwrite:
            raise DatasetError(
                f"{path} exists; pass overwrite=True (CLI: --overwrite) or choose another folder."
            )
        if not (path / _METADATA_FILE).exists() and any(path.iterdir()):
            raise DatasetError(
                f"{path} exists and is not a dataset folder; refusing to overwrite it."
            )
        shutil.rmtree(path)
    path.mkdir(parents=True)
    data = data.detach().cpu()
    if data.is_memmap():
        data = data.to_tensordict()
    meta = dict(metadata)
    meta.update(
        {
            "format_version": FORMAT_VERSION,
            "size": int(data.batch_size[0]),
            "package_version": __version__,
            "checksum": content_checksum(data),
            "keys": {
                _key_str(k): {"shape": list(data.get(k).shape[1:]), "dtype": str(data.get(k).dtype)}
                for k in sorted(data.keys(True, True), key=_key_str)
            },
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    data.memmap(prefix=path / _DATA_DIR)
    tmp = path / (_METADATA_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(path / _METADATA_FILE)
    logger.info(
        "Saved %d transitions of %s (%s) to %s", meta["size"], meta["task"], meta["kind"], path
    )
    return OfflineDataset(TensorDict.load_memmap(path / _DATA_DIR), meta, path)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a dataset folder (section 4.1 datasets) without loading or checking the data.

    Args:
        path: the dataset folder.

    Returns:
        The parsed ``metadata.json``.

    Examples:
        >>> read_metadata("/nonexistent/folder")
        Traceback (most recent call last):
        ...
        torchrl_otc.data.datasets.storage.DatasetError: /nonexistent/folder is not a dataset folder: ...
    """
    path = Path(path)
    file = path / _METADATA_FILE
    if not file.exists():
        raise DatasetError(
            f"{path} is not a dataset folder: {file.name} is missing. Build one with `otc data build TASK --out DIR`."
        )
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{file} is not valid JSON ({err}); the folder is damaged: rebuild the dataset."
        ) from err


def load_dataset(
    path: str | Path, *, verify: bool = True, required_keys: Sequence = REQUIRED_KEYS
) -> OfflineDataset:
    """Load a dataset folder written by :func:`save_dataset` (section 4.1 datasets), checking it.

    Args:
        path: the dataset folder.

    Keyword Args:
        verify: recompute the content checksum and compare it with the metadata (reads every byte once).
        required_keys: keys the data must hold. Defaults to :data:`REQUIRED_KEYS`.

    Returns:
        The dataset; ``data`` is memory-mapped (read lazily from disk).

    Raises:
        DatasetError: missing files or keys (named), checksum mismatch, NaNs, all-zero data, size mismatch.

    Examples:
        >>> load_dataset("/nonexistent/folder")
        Traceback (most recent call last):
        ...
        torchrl_otc.data.datasets.storage.DatasetError: /nonexistent/folder is not a dataset folder: ...
    """
    path = Path(path)
    meta = read_metadata(path)
    if not (path / _DATA_DIR).exists():
        raise DatasetError(f"{path} has metadata but no {_DATA_DIR}/ folder; rebuild the dataset.")
    try:
        data = TensorDict.load_memmap(path / _DATA_DIR)
    except Exception as err:  # noqa: BLE001 - any failure here means a damaged folder
        raise DatasetError(
            f"Could not read {path / _DATA_DIR} ({err}); rebuild the dataset."
        ) from err
    present = set(data.keys(True, True))
    missing = [_key_str(k) for k in required_keys if k not in present]
    if missing:
        raise DatasetError(
            f"{path} lacks required keys: {', '.join(missing)}. Rebuild it with `otc data build`, or, for foreign "
            "files, use load_d4rl_hdf5 / load_minari."
        )
    if int(meta.get("size", -1)) != int(data.batch_size[0]):
        raise DatasetError(
            f"{path}: metadata says {meta.get('size')} transitions but the data holds {data.batch_size[0]}; "
            "the folder was modified or truncated: rebuild it."
        )
    if verify:
        expected = meta.get("checksum")
        actual = content_checksum(data)
        if expected != actual:
            raise DatasetError(
                f"Checksum mismatch for {path}: metadata has {expected}, the data hashes to {actual}. The data was "
                "changed after it was written (or the copy is damaged); rebuild it with `otc data build` or, if "
                "you changed it on purpose, save it again with save_dataset."
            )
    validate_transitions(data, where=str(path))
    return OfflineDataset(data, meta, path)
