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

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
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
        raise DatasetError(
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
        if spec.action_dim > 0 and spec.action_dim != action_dim:
            raise DatasetError(
                f"{src} has {action_dim} action columns but {task} has {spec.action_dim}; is it the right task?"
            )
    try:
        part = [[int(c) for c in p] for p in action_partition]
    except (TypeError, ValueError) as err:
        raise DatasetError(
            f"{src}: action_partition {action_partition!r} is not a list of column lists ({err})."
        ) from err
    cols = sorted(c for p in part for c in p)
    if cols != list(range(action_dim)):
        raise DatasetError(
            f"{src} has {action_dim} action columns but the partition {part} covers {cols}; they must match exactly."
        )
    return part, len(part)


def _open_hdf5(path: Path, expected: str) -> Any:
    """Open an HDF5 file read-only, or raise a :class:`DatasetError` naming it and what was expected."""
    h5py = _h5py()
    if not path.exists():
        raise DatasetError(f"{path} does not exist; expected {expected}.")
    if path.is_dir():
        raise DatasetError(f"{path} is a folder; expected {expected}.")
    try:
        signed = h5py.is_hdf5(str(path))
    except (OSError, ValueError):  # pragma: no cover - unreadable file
        signed = False
    if not signed:
        raise DatasetError(
            f"{path} is not an HDF5 file ({path.stat().st_size} bytes without the HDF5 signature); expected "
            f"{expected}."
        )
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise DatasetError(
            f"{path} cannot be opened as HDF5 ({err}); the file is truncated or damaged: download or export it "
            "again."
        ) from err


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn h5py's low-level failures (a file truncated past its header, damaged metadata) into one clear line."""
    try:
        yield
    except DatasetError:
        raise
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(
            f"{path} cannot be read ({err}); the file is truncated or damaged: download or export it again."
        ) from err


def _read_array(node: Any, where: str, *, ndim: tuple[int, ...], expected: str) -> np.ndarray:
    """A numeric HDF5 dataset read in full; refuses groups, strings, scalars and other numbers of dimensions.

    Args:
        node: the HDF5 object.
        where: ``file:field`` for messages.
        ndim: the accepted numbers of dimensions.
        expected: the expected shape, in words (``"[N, obs_dim]"``).
    """
    h5py = _h5py()
    if not isinstance(node, h5py.Dataset):
        raise DatasetError(
            f"{where} is an HDF5 group, not an array; expected an array of shape {expected}."
        )
    dtype = node.dtype
    if dtype.kind not in "biuf":
        raise DatasetError(
            f"{where} holds {dtype} values (shape {tuple(node.shape)}); expected numbers of shape {expected}."
        )
    if len(node.shape) not in ndim:
        raise DatasetError(f"{where} has shape {tuple(node.shape)}; expected {expected}.")
    try:
        arr = np.asarray(node[()])
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as err:
        raise DatasetError(
            f"{where} cannot be read ({err}); the file is truncated or damaged: download or export it again."
        ) from err
    return arr


def _column(arr: np.ndarray, where: str) -> np.ndarray:
    """A ``[N]`` or ``[N, 1]`` array as ``[N]``."""
    if arr.ndim == 2 and arr.shape[1] != 1:
        raise DatasetError(f"{where} has shape {arr.shape}; expected [N] or [N, 1].")
    return arr.reshape(-1)


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
        DatasetError: a missing, non-HDF5, truncated or damaged file; missing fields (named); fields of the wrong
            type or shape (named, with the shape found and the one expected: observations and actions must be
            ``[N, d]``, rewards and flags ``[N]`` or ``[N, 1]``); inconsistent lengths or widths; NaNs, all-zero
            data.

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
    path = Path(path)
    expected = "a D4RL .hdf5 file (observations, actions, rewards, terminals)"
    with _reading(path), _open_hdf5(path, expected) as f:
        required = ("observations", "actions", "rewards", "terminals")
        missing = [k for k in required if k not in f]
        if missing:
            raise DatasetError(
                f"{path} lacks {', '.join(missing)} (a D4RL file holds {', '.join(required)}, and optionally "
                f"timeouts and next_observations); found {', '.join(sorted(f.keys())) or 'nothing'}."
            )
        matrix = (2,)
        obs = _read_array(
            f["observations"], f"{path}:observations", ndim=matrix, expected="[N, obs_dim]"
        )
        act = _read_array(f["actions"], f"{path}:actions", ndim=matrix, expected="[N, action_dim]")
        col = (1, 2)
        rew = _column(
            _read_array(f["rewards"], f"{path}:rewards", ndim=col, expected="[N]"),
            f"{path}:rewards",
        )
        term = _column(
            _read_array(f["terminals"], f"{path}:terminals", ndim=col, expected="[N]"),
            f"{path}:terminals",
        ).astype(bool)
        if "timeouts" in f:
            tout = _column(
                _read_array(f["timeouts"], f"{path}:timeouts", ndim=col, expected="[N]"),
                f"{path}:timeouts",
            ).astype(bool)
        else:
            logger.warning(
                "%s has no 'timeouts': episode ends are known only from terminals, so time-limit ends are not "
                "detected (old D4RL v0 files).",
                path,
            )
            tout = np.zeros_like(term)
        next_obs = (
            _read_array(
                f["next_observations"],
                f"{path}:next_observations",
                ndim=matrix,
                expected="[N, obs_dim]",
            )
            if "next_observations" in f
            else None
        )
    obs = obs.astype(np.float32, copy=False)
    act = act.astype(np.float32, copy=False)
    rew = rew.astype(np.float32, copy=False)
    n = obs.shape[0]
    if n == 0:
        raise DatasetError(
            f"{path}:observations has 0 rows (shape {obs.shape}); the file holds no transitions."
        )
    for name, arr in (("observations", obs), ("actions", act)):
        if arr.shape[1] == 0:
            raise DatasetError(
                f"{path}:{name} has shape {arr.shape}: 0 columns; expected at least one."
            )
    lengths = {
        "actions": act.shape[0],
        "rewards": rew.shape[0],
        "terminals": term.shape[0],
        "timeouts": tout.shape[0],
    }
    if next_obs is not None:
        next_obs = next_obs.astype(np.float32, copy=False)
        lengths["next_observations"] = next_obs.shape[0]
    bad = {k: v for k, v in lengths.items() if v != n}
    if bad:
        raise DatasetError(
            f"{path}: observations has {n} rows but "
            + ", ".join(f"{k} has {v}" for k, v in bad.items())
            + "; every field needs one row per transition: the file is inconsistent."
        )
    if next_obs is not None and next_obs.shape[1] != obs.shape[1]:
        raise DatasetError(
            f"{path}: next_observations are {next_obs.shape[1]} wide (shape {next_obs.shape}) but observations "
            f"are {obs.shape[1]} wide (shape {obs.shape}); both must hold the same state."
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
    if len(idx) == 0:
        raise DatasetError(
            f"{path} has no next_observations and every one of its {n} rows ends an episode (or is the last "
            "row), so no transition remains; expected episodes of at least two rows."
        )
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
    raise DatasetError(
        f"No Minari HDF5 data at {path} (looked for {', '.join(str(c) for c in candidates[1:])}); expected a "
        "Minari dataset folder, its data folder or its main_data.hdf5."
    )


def _read_obs(node: Any, where: str) -> tuple[np.ndarray, list[str]]:
    """An episode's observations as a 2-d array; dict observations are flattened in sorted key order."""
    h5py = _h5py()
    if isinstance(node, h5py.Dataset):
        arr = _read_array(node, where, ndim=(2,), expected="[T + 1, obs_dim]")
        return arr.astype(np.float32, copy=False), []
    if not len(node):
        raise DatasetError(
            f"{where} is an empty group; expected an array of shape [T + 1, obs_dim]."
        )
    parts, names = [], []
    for key in sorted(node.keys()):
        arr, sub = _read_obs(node[key], f"{where}/{key}")
        if parts and arr.shape[0] != parts[0].shape[0]:
            raise DatasetError(
                f"{where}/{key} has {arr.shape[0]} rows but {where}/{names[0]} has {parts[0].shape[0]}; every "
                "observation key needs one row per step."
            )
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
        DatasetError: a missing, non-HDF5, truncated or damaged file; missing fields (named); fields of the wrong
            type or shape or length (named, with the shape found and the one expected); episodes of different
            widths; NaNs, all-zero data, arrow backend.

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
    path = Path(path)
    file = _minari_file(path)
    rows: dict[str, list[np.ndarray]] = {
        k: [] for k in ("obs", "next", "act", "rew", "term", "trunc", "ep")
    }
    obs_names: list[str] = []
    source_meta: dict[str, Any] = {}
    with _reading(file), _open_hdf5(file, "a Minari main_data.hdf5 (HDF5 backend)") as f:
        source_meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        episodes = sorted(
            (k for k in f.keys() if re.fullmatch(r"episode_\d+", k)), key=lambda k: int(k[8:])
        )
        if not episodes:
            raise DatasetError(
                f"{file} holds no episode_<id> groups (found {', '.join(sorted(f.keys())) or 'nothing'}); is it "
                "a Minari dataset?"
            )
        for name in episodes:
            ep = f[name]
            where = f"{file}:{name}"
            if not isinstance(ep, _h5py().Group):
                raise DatasetError(f"{where} is an array; expected an episode group.")
            missing = [
                k
                for k in ("observations", "actions", "rewards", "terminations", "truncations")
                if k not in ep
            ]
            if missing:
                raise DatasetError(f"{where} lacks {', '.join(missing)}.")
            obs, obs_names = _read_obs(ep["observations"], f"{where}/observations")
            act = _read_array(
                ep["actions"], f"{where}/actions", ndim=(2,), expected="[T, action_dim]"
            ).astype(np.float32, copy=False)
            t = act.shape[0]
            if t == 0 or act.shape[1] == 0:
                raise DatasetError(
                    f"{where}/actions has shape {act.shape}; expected [T, action_dim] with T >= 1 steps and at "
                    "least one column."
                )
            if obs.shape[0] != t + 1:
                raise DatasetError(
                    f"{where} has {obs.shape[0]} observations for {t} actions; Minari stores one more "
                    "observation than steps."
                )
            cols = {}
            for field in ("rewards", "terminations", "truncations"):
                arr = _column(
                    _read_array(ep[field], f"{where}/{field}", ndim=(1, 2), expected=f"[{t}]"),
                    f"{where}/{field}",
                )
                if arr.shape[0] != t:
                    raise DatasetError(
                        f"{where}/{field} has {arr.shape[0]} rows for {t} actions; expected one per step "
                        f"(shape [{t}])."
                    )
                cols[field] = arr
            if rows["obs"]:
                width, act_width = rows["obs"][0].shape[1], rows["act"][0].shape[1]
                if obs.shape[1] != width or act.shape[1] != act_width:
                    raise DatasetError(
                        f"{where} has observations {obs.shape[1]} wide and actions {act.shape[1]} wide but "
                        f"{episodes[0]} has {width} and {act_width}; every episode must have the same widths."
                    )
            rows["obs"].append(obs[:-1])
            rows["next"].append(obs[1:])
            rows["act"].append(act)
            rows["rew"].append(cols["rewards"].astype(np.float32))
            rows["term"].append(cols["terminations"].astype(bool))
            rows["trunc"].append(cols["truncations"].astype(bool))
            rows["ep"].append(np.full(t, int(name[8:]), dtype=np.int64))
    meta_file = file.parent / "metadata.json"
    if not meta_file.exists():
        meta_file = file.parent.parent / "metadata.json"
    if meta_file.exists():
        try:
            source_meta.update(json.loads(meta_file.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError):
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
