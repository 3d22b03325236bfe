"""Loaders for offline data users already have: D4RL HDF5 files and Minari dataset folders (section 4.1).

Both produce the package's joint transition layout (:mod:`.storage`) with the robot's action partition in the
metadata, ready to be split into the agents' datasets (the paper's decentralised D4RL tasks). Neither needs the
``d4rl`` or ``minari`` packages (only ``h5py``): ``d4rl`` pins gym < 0.25 and mujoco-py, and TorchRL 0.14.1's
``MinariExperienceReplay`` returns all-zero data.

Conventions (``DESIGN.md``):

* next observations are never zeroed at episode ends;
* timeouts are truncations, not terminals;
* without ``next_observations`` in a D4RL file, the next observation of a row is the following row of the same
  episode, and the last row of each episode (terminal or timeout), whose next observation the file does not hold,
  is dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from torchrl_otc.data.datasets.storage import DatasetError, OfflineDataset, validate_transitions
from torchrl_otc.envs.registry import get_task

__all__ = ["load_d4rl_hdf5", "load_minari"]

logger = logging.getLogger(__name__)


def _h5py():
    try:  # optional dependency: h5py (the data extra)
        import h5py
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError(
            "Reading HDF5 files needs h5py: pip install 'torchrl-otc[data]'."
        ) from err
    return h5py


def _partition(
    task: str | None,
    action_partition: Sequence[Sequence[int]] | None,
    state_dim: int,
    action_dim: int,
    src: str,
) -> tuple[list[list[int]], int]:
    if action_partition is None and task is None:
        raise ValueError(
            f"{src}: pass task= (e.g. 'mamujoco/halfcheetah-2x3') or action_partition= to split the robot's actions "
            "between agents."
        )
    if task is not None:
        spec = get_task(task)
        if action_partition is None:
            action_partition = spec.action_partition
        if spec.state_dim > 0 and spec.state_dim != state_dim:
            raise DatasetError(
                f"{src} has {state_dim}-dimensional observations but {task} has {spec.state_dim}; is it the "
                "right task?"
            )
    part = [[int(c) for c in p] for p in action_partition]
    cols = sorted(c for p in part for c in p)
    if cols != list(range(action_dim)):
        raise DatasetError(
            f"{src} has {action_dim} action columns but the partition {part} covers {cols}; they must match exactly."
        )
    return part, len(part)


def _bool(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x).astype(bool)).reshape(-1, 1)


def _float(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


def load_d4rl_hdf5(
    path: str | Path,
    *,
    task: str | None = None,
    action_partition: Sequence[Sequence[int]] | None = None,
) -> OfflineDataset:
    """Load a D4RL HDF5 file into the joint layout, with the robot's action partition (section 4.1).

    Reads ``observations``, ``actions``, ``rewards``, ``terminals`` and, when present, ``timeouts`` and
    ``next_observations``. ``terminated = terminals``, ``truncated = timeouts and not terminals``,
    ``done = terminated or truncated``. Without ``next_observations``, each row's next observation is the next row
    of its episode and the last row of every episode is dropped.

    Args:
        path: the ``.hdf5`` file.

    Keyword Args:
        task: registered task whose partition splits the actions (e.g. ``"mamujoco/hopper-3x1"``).
        action_partition: explicit partition (overrides the task's).

    Returns:
        An in-memory :class:`OfflineDataset` (``kind="d4rl"``); save it with :func:`save_dataset`.

    Raises:
        DatasetError: missing datasets in the file (named), inconsistent lengths, NaNs, all-zero data.

    Examples:
        >>> import h5py, tempfile, numpy as np
        >>> f = tempfile.mktemp(suffix=".hdf5")
        >>> with h5py.File(f, "w") as h:
        ...     h["observations"] = np.arange(5.0)[:, None].repeat(11, 1)
        ...     h["actions"] = np.ones((5, 3)); h["rewards"] = np.ones(5)
        ...     h["terminals"] = np.array([0, 0, 1, 0, 0]); h["timeouts"] = np.zeros(5)
        >>> ds = load_d4rl_hdf5(f, task="mamujoco/hopper-3x1")
        >>> ds.data["observation"][:, 0].tolist(), ds.data["next", "observation"][:, 0].tolist()
        ([0.0, 1.0, 3.0], [1.0, 2.0, 4.0])
    """
    h5py = _h5py()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No D4RL file at {path}.")
    with h5py.File(path, "r") as f:
        required = ("observations", "actions", "rewards", "terminals")
        missing = [k for k in required if k not in f]
        if missing:
            raise DatasetError(
                f"{path} lacks {', '.join(missing)} (a D4RL file holds {', '.join(required)}, and optionally "
                f"timeouts and next_observations); found {', '.join(sorted(f.keys()))}."
            )
        obs = np.asarray(f["observations"], dtype=np.float32)
        act = np.asarray(f["actions"], dtype=np.float32)
        rew = np.asarray(f["rewards"], dtype=np.float32).reshape(-1)
        term = np.asarray(f["terminals"]).astype(bool).reshape(-1)
        if "timeouts" in f:
            tout = np.asarray(f["timeouts"]).astype(bool).reshape(-1)
        else:
            logger.warning(
                "%s has no 'timeouts': episode ends are known only from terminals, so time-limit ends are not "
                "detected (old D4RL v0 files).",
                path,
            )
            tout = np.zeros_like(term)
        next_obs = (
            np.asarray(f["next_observations"], dtype=np.float32)
            if "next_observations" in f
            else None
        )
    n = obs.shape[0]
    lengths = {
        "actions": act.shape[0],
        "rewards": rew.shape[0],
        "terminals": term.shape[0],
        "timeouts": tout.shape[0],
    }
    if next_obs is not None:
        lengths["next_observations"] = next_obs.shape[0]
    bad = {k: v for k, v in lengths.items() if v != n}
    if bad:
        raise DatasetError(
            f"{path}: observations has {n} rows but {bad}; the file is inconsistent."
        )
    part, n_agents = _partition(task, action_partition, obs.shape[1], act.shape[1], str(path))
    end = term | tout
    episode = np.concatenate([[0], np.cumsum(end[:-1])]).astype(np.int64)
    if next_obs is not None:
        keep = np.ones(n, dtype=bool)
        nxt = next_obs
        terminated, truncated = term, tout & ~term
    else:
        keep = ~end
        keep[-1] = False  # the file holds no next observation for its last row
        nxt = np.empty_like(obs)
        nxt[:-1] = obs[1:]
        nxt[-1] = obs[-1]
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        logger.info(
            "%s: no next_observations; dropped the last row of each episode (%d rows)",
            path,
            int((~keep).sum()),
        )
    idx = np.flatnonzero(keep)
    data = TensorDict(
        {
            "observation": _float(obs[idx]),
            "action": _float(act[idx]),
            "episode": torch.as_tensor(episode[idx]),
            ("next", "observation"): _float(nxt[idx]),
            ("next", "reward"): _float(rew[idx]).reshape(-1, 1),
            ("next", "terminated"): _bool(terminated[idx]),
            ("next", "truncated"): _bool(truncated[idx]),
            ("next", "done"): _bool((terminated | truncated)[idx]),
        },
        batch_size=[len(idx)],
    )
    validate_transitions(data, where=str(path))
    meta: dict[str, Any] = {
        "task": task,
        "kind": "d4rl",
        "source": str(path),
        "behaviour": {"policy": "from the D4RL file"},
        "n_agents": n_agents,
        "action_partition": part,
        "size": len(idx),
        "stats": {
            "rows_in_file": int(n),
            "dropped_rows": int(n - len(idx)),
            "has_next_observations": next_obs is not None,
        },
    }
    return OfflineDataset(data, meta, None)


def _minari_file(path: Path) -> Path:
    candidates = [path, path / "main_data.hdf5", path / "data" / "main_data.hdf5"]
    for c in candidates:
        if c.is_file():
            return c
    if (
        (path / "data").is_dir()
        and any((path / "data").glob("*.parquet"))
        or any(path.glob("**/*.arrow"))
    ):
        raise DatasetError(
            f"{path} is a Minari dataset stored with the arrow backend; only the HDF5 backend is supported. "
            "Convert it with minari (data_format='hdf5') where minari is installed."
        )
    raise FileNotFoundError(
        f"No Minari HDF5 data under {path} (looked for {', '.join(str(c) for c in candidates[1:])})."
    )


def _read_obs(node: Any) -> tuple[np.ndarray, list[str]]:
    """An episode's observations as a 2-d array; dict observations are flattened in sorted key order."""
    h5py = _h5py()
    if isinstance(node, h5py.Dataset):
        arr = np.asarray(node, dtype=np.float32)
        return arr.reshape(arr.shape[0], -1), []
    parts, names = [], []
    for key in sorted(node.keys()):
        arr, sub = _read_obs(node[key])
        parts.append(arr)
        names += [f"{key}/{s}" for s in sub] if sub else [key]
    return np.concatenate(parts, axis=1), names


def load_minari(
    path: str | Path,
    *,
    task: str | None = None,
    action_partition: Sequence[Sequence[int]] | None = None,
) -> OfflineDataset:
    """Load a local Minari dataset (HDF5 backend) into the joint layout (our own reader; section 4.1).

    Each episode group ``episode_<id>`` holds ``observations`` (one more row than steps: the final observation is
    kept as the last next observation), ``actions``, ``rewards``, ``terminations`` and ``truncations``. Dictionary
    observations are flattened in sorted key order (recorded in the metadata).

    Args:
        path: the dataset folder (``<root>/<dataset_id>``), its ``data`` folder, or ``main_data.hdf5``.

    Keyword Args:
        task: registered task whose partition splits the actions.
        action_partition: explicit partition (overrides the task's).

    Returns:
        An in-memory :class:`OfflineDataset` (``kind="minari"``).

    Raises:
        DatasetError: missing fields (named), inconsistent lengths, NaNs, all-zero data, arrow backend.

    Examples:
        >>> import h5py, tempfile, numpy as np
        >>> folder = Path(tempfile.mkdtemp()); (folder / "data").mkdir()
        >>> with h5py.File(folder / "data" / "main_data.hdf5", "w") as h:
        ...     ep = h.create_group("episode_0")
        ...     ep["observations"] = np.arange(4.0)[:, None].repeat(2, 1); ep["actions"] = np.ones((3, 2))
        ...     ep["rewards"] = np.ones(3); ep["terminations"] = [0, 0, 1]; ep["truncations"] = [0, 0, 0]
        >>> ds = load_minari(folder, action_partition=[[0], [1]])
        >>> ds.data["next", "observation"][:, 0].tolist(), ds.data["next", "terminated"].view(-1).tolist()
        ([1.0, 2.0, 3.0], [False, False, True])
    """
    h5py = _h5py()
    path = Path(path)
    file = _minari_file(path)
    rows: dict[str, list[np.ndarray]] = {
        k: [] for k in ("obs", "next", "act", "rew", "term", "trunc", "ep")
    }
    obs_names: list[str] = []
    source_meta: dict[str, Any] = {}
    with h5py.File(file, "r") as f:
        source_meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        episodes = sorted(
            (k for k in f.keys() if k.startswith("episode_")), key=lambda k: int(k.split("_")[1])
        )
        if not episodes:
            raise DatasetError(f"{file} holds no episode_<id> groups; is it a Minari dataset?")
        for name in episodes:
            ep = f[name]
            missing = [
                k
                for k in ("observations", "actions", "rewards", "terminations", "truncations")
                if k not in ep
            ]
            if missing:
                raise DatasetError(f"{file}:{name} lacks {', '.join(missing)}.")
            obs, obs_names = _read_obs(ep["observations"])
            act = np.asarray(ep["actions"], dtype=np.float32).reshape(len(ep["actions"]), -1)
            t = act.shape[0]
            if obs.shape[0] != t + 1:
                raise DatasetError(
                    f"{file}:{name} has {obs.shape[0]} observations for {t} actions; Minari stores one more "
                    "observation than steps."
                )
            rows["obs"].append(obs[:-1])
            rows["next"].append(obs[1:])
            rows["act"].append(act)
            rows["rew"].append(np.asarray(ep["rewards"], dtype=np.float32).reshape(-1))
            rows["term"].append(np.asarray(ep["terminations"]).astype(bool).reshape(-1))
            rows["trunc"].append(np.asarray(ep["truncations"]).astype(bool).reshape(-1))
            rows["ep"].append(np.full(t, int(name.split("_")[1]), dtype=np.int64))
    meta_file = file.parent / "metadata.json"
    if not meta_file.exists():
        meta_file = file.parent.parent / "metadata.json"
    if meta_file.exists():
        try:
            source_meta.update(json.loads(meta_file.read_text()))
        except json.JSONDecodeError:
            logger.warning("Could not parse %s; ignoring it.", meta_file)
    cat = {k: np.concatenate(v) for k, v in rows.items()}
    part, n_agents = _partition(
        task, action_partition, cat["obs"].shape[1], cat["act"].shape[1], str(file)
    )
    term = cat["term"]
    trunc = cat["trunc"] & ~term
    data = TensorDict(
        {
            "observation": _float(cat["obs"]),
            "action": _float(cat["act"]),
            "episode": torch.as_tensor(cat["ep"]),
            ("next", "observation"): _float(cat["next"]),
            ("next", "reward"): _float(cat["rew"]).reshape(-1, 1),
            ("next", "terminated"): _bool(term),
            ("next", "truncated"): _bool(trunc),
            ("next", "done"): _bool(term | trunc),
        },
        batch_size=[len(cat["obs"])],
    )
    validate_transitions(data, where=str(file))
    meta = {
        "task": task,
        "kind": "minari",
        "source": str(file),
        "behaviour": {"policy": "from the Minari dataset"},
        "n_agents": n_agents,
        "action_partition": part,
        "size": len(cat["obs"]),
        "stats": {"episodes": len(rows["ep"]), "observation_keys": obs_names},
        "minari": {
            k: v for k, v in source_meta.items() if isinstance(v, (str, int, float, bool, list))
        },
    }
    return OfflineDataset(data, meta, None)
