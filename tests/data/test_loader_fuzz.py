"""Fuzz the foreign-format loaders and the dataset reader (issue 16): a clear error or a valid dataset, nothing else.

Hypothesis draws malformed D4RL files (subsets of the fields, rows of 0 or mismatched lengths, missing or extra
dimensions, other widths, integer / boolean / string dtypes, truncated bytes), malformed Minari files (the same per
episode) and damaged dataset folders (memmap files cut or extended, metadata fields edited, layout files edited or
garbled). Each must give either a :class:`DatasetError` with a one-line message naming the file or the field, or
a dataset whose shapes are the canonical ones (and, for folders, those of its metadata); a read never modifies the
folder. The runs are derandomized, so CI sees the same examples every time.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

from torchrl_otc.data.datasets import (
    DatasetError,
    load_d4rl_hdf5,
    load_minari,
    load_offline_dataset,
    save_dataset,
)

h5py = pytest.importorskip("h5py")

TASK = "mamujoco/hopper-3x1"  # 11-dimensional state, 3 action columns
OBS, ACT = 11, 3
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DTYPES = ["float32", "float64", "int32", "bool", "string"]


@st.composite
def field_specs(draw, canonical: tuple[str, ...]) -> dict[str, Any]:
    """How one array deviates from its canonical shape ``("N", "W")`` / ``("N",)``: rows, dims and dtype."""
    return {
        "rows": draw(
            st.sampled_from([0, 0, 0, 0, 0, 0, -1, 1, "zero"])
        ),  # mostly the right number of rows
        "dims": draw(st.sampled_from(["ok"] * 6 + ["drop", "extra1", "extra2", "width"])),
        "dtype": draw(st.sampled_from(["float32"] * 4 + DTYPES)),
        "canonical": canonical,
    }


def _array(spec: dict[str, Any], n: int, width: int | None, rng: np.random.Generator) -> np.ndarray:
    rows = 0 if spec["rows"] == "zero" else max(n + spec["rows"], 0)
    if width is None:
        shape: tuple[int, ...] = (rows,)
    else:
        shape = (rows, width)
    if spec["dims"] == "drop":
        shape = shape[:1] if width is not None else ()
    elif spec["dims"] == "extra1":
        shape = (*shape, 1)
    elif spec["dims"] == "extra2":
        shape = (*shape, 2)
    elif spec["dims"] == "width":
        shape = (rows, (width or 1) + 2)
    values = rng.normal(size=shape) + 2.0  # never all zero
    if spec["dtype"] == "string":
        return np.full(shape, b"x")
    if spec["dtype"] == "bool":
        return values > 2.0
    return values.astype(spec["dtype"])


def _is_canonical(spec: dict[str, Any] | None, *, column: bool) -> bool:
    """Whether the loader may accept the field: the right rows, a numeric dtype and [N, W] (or [N] / [N, 1])."""
    if spec is None:
        return True
    if spec["rows"] != 0 or spec["dtype"] == "string":
        return False
    return spec["dims"] == "ok" or (column and spec["dims"] == "extra1")


def _one_line(err: DatasetError, *names: str) -> None:
    msg = str(err)
    event("refused")
    assert msg and "\n" not in msg
    assert any(name in msg for name in names), msg
    assert "cannot reshape" not in msg and "could not be broadcast" not in msg, msg


def _check_accepted(ds: Any) -> None:
    event("accepted")
    d = ds.data
    m = len(ds)
    assert m >= 1
    assert d["observation"].shape == (m, OBS) and d["next", "observation"].shape == (m, OBS)
    assert d["action"].shape == (m, ACT)
    for key in ("reward", "done", "terminated", "truncated"):
        assert d["next", key].shape == (m, 1), key
    assert d["observation"].dtype == torch.float32 and d["action"].dtype == torch.float32


D4RL_FIELDS = {
    "observations": OBS,
    "actions": ACT,
    "rewards": None,
    "terminals": None,
    "timeouts": None,
    "next_observations": OBS,
}


@FUZZ
@given(
    present=st.fixed_dictionaries(
        {
            k: st.booleans() if k in ("timeouts", "next_observations") else st.just(True)
            for k in D4RL_FIELDS
        }
    ),
    drop_required=st.sampled_from([None, None, None, "observations", "rewards", "terminals"]),
    specs=st.fixed_dictionaries({k: st.none() | field_specs(("N",)) for k in D4RL_FIELDS}),
    n=st.integers(1, 6),
    cut=st.none() | st.floats(0.0, 0.99),
    seed=st.integers(0, 2**16),
)
def test_d4rl_fuzz(present, drop_required, specs, n, cut, seed):
    rng = np.random.default_rng(seed)
    flags = {"terminals", "timeouts"}
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "fuzz.hdf5"
        with h5py.File(file, "w") as f:
            for key, width in D4RL_FIELDS.items():
                if not present[key] or key == drop_required:
                    continue
                spec = specs[key] or {"rows": 0, "dims": "ok", "dtype": "float32", "canonical": ()}
                arr = _array(spec, n, width, rng)
                if key in flags and spec["dtype"] != "string":
                    arr = (rng.random(arr.shape) < 0.2) if arr.size else arr.astype(bool)
                f[key] = arr
        if cut is not None:
            raw = file.read_bytes()
            file.write_bytes(raw[: int(len(raw) * cut)])
        try:
            ds = load_d4rl_hdf5(file, task=TASK)
        except DatasetError as err:
            _one_line(err, str(file), *D4RL_FIELDS)
            return
        # accepted: the file must have been well formed, and the dataset must have the canonical shapes
        assert cut is None and drop_required is None
        for key, width in D4RL_FIELDS.items():
            if present[key]:
                assert _is_canonical(specs[key], column=width is None), (key, specs[key])
        _check_accepted(ds)


MINARI_FIELDS = {
    "observations": OBS,
    "actions": ACT,
    "rewards": None,
    "terminations": None,
    "truncations": None,
}


@FUZZ
@given(
    episodes=st.lists(
        st.fixed_dictionaries(
            {
                "t": st.integers(1, 4),
                "specs": st.fixed_dictionaries(
                    {k: st.none() | st.none() | field_specs(("T",)) for k in MINARI_FIELDS}
                ),
                "drop": st.sampled_from([None] * 5 + list(MINARI_FIELDS)),
            }
        ),
        min_size=1,
        max_size=2,
    ),
    cut=st.none() | st.none() | st.floats(0.0, 0.99),
    seed=st.integers(0, 2**16),
)
def test_minari_fuzz(episodes, cut, seed):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "main_data.hdf5"
        with h5py.File(file, "w") as f:
            for i, ep in enumerate(episodes):
                group = f.create_group(f"episode_{i}")
                for key, width in MINARI_FIELDS.items():
                    if key == ep["drop"]:
                        continue
                    spec = ep["specs"][key] or {"rows": 0, "dims": "ok", "dtype": "float32"}
                    rows = ep["t"] + 1 if key == "observations" else ep["t"]
                    group[key] = _array(spec, rows, width, rng)
        if cut is not None:
            raw = file.read_bytes()
            file.write_bytes(raw[: int(len(raw) * cut)])
        try:
            ds = load_minari(file, task=TASK)
        except DatasetError as err:
            _one_line(err, str(file), *MINARI_FIELDS)
            return
        assert cut is None
        for ep in episodes:
            assert ep["drop"] is None
            for key, width in MINARI_FIELDS.items():
                assert _is_canonical(ep["specs"][key], column=width is None), (
                    key,
                    ep["specs"][key],
                )
        _check_accepted(ds)
        assert len(ds) == sum(ep["t"] for ep in episodes)


# ------------------------------------------------------------------------------------------- dataset folders
def _base_dataset(root: Path) -> Path:
    n = 12
    g = torch.Generator().manual_seed(0)
    done = torch.zeros(n, 1, dtype=torch.bool)
    done[5] = True
    td = TensorDict(
        {
            "observation": torch.randn(n, OBS, generator=g),
            "action": torch.rand(n, ACT, generator=g),
            "episode": torch.arange(n),
            ("next", "observation"): torch.randn(n, OBS, generator=g),
            ("next", "reward"): torch.randn(n, 1, generator=g),
            ("next", "done"): done,
            ("next", "terminated"): done.clone(),
            ("next", "truncated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        batch_size=[n],
    )
    meta = {"task": TASK, "kind": "random", "seed": 0, "action_partition": [[0], [1], [2]]}
    save_dataset(td, root / "base", meta)
    return root / "base"


_ROOT = Path(tempfile.mkdtemp(prefix="otc-fuzz-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
BASE = _base_dataset(_ROOT)
FILES = sorted(str(p.relative_to(BASE)) for p in BASE.rglob("*.memmap"))
BASE_KEYS = json.loads((BASE / "metadata.json").read_text())["keys"]
KEYS = sorted(BASE_KEYS)
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 30),
    st.text(max_size=6),
    st.lists(st.integers(-1, 14), max_size=3),
    st.lists(st.lists(st.integers(-1, 4), max_size=3), max_size=4),
    st.sampled_from(
        ["torch.float64", "torch.int32", "torch.bool", "torch.float16", "float32", "torch.nope"]
    ),
)

mutations = st.one_of(
    st.tuples(st.just("cut"), st.sampled_from(FILES), st.integers(1, 64)),
    st.tuples(st.just("extend"), st.sampled_from(FILES), st.integers(1, 64)),
    st.tuples(st.just("delete"), st.sampled_from(FILES), st.just(0)),
    st.tuples(
        st.just("meta"),
        st.sampled_from(["size", "checksum", "action_partition", "keys", "task"]),
        JUNK,
    ),
    st.tuples(
        st.just("meta-key"),
        st.tuples(st.sampled_from(KEYS), st.sampled_from(["dtype", "shape", "sha256"])),
        JUNK,
    ),
    st.tuples(
        st.just("layout"),
        st.tuples(
            st.sampled_from(["meta.json", "next/meta.json"]), st.sampled_from(["shape", "dtype"])
        ),
        JUNK,
    ),
    st.tuples(
        st.just("garble"),
        st.sampled_from(["metadata.json", "data/meta.json"]),
        st.binary(max_size=20),
    ),
)


def _apply(folder: Path, mutation: tuple) -> None:
    kind, target, value = mutation
    if kind in ("cut", "extend", "delete"):
        f = folder / target
        raw = f.read_bytes()
        if kind == "delete":
            f.unlink()
        else:
            f.write_bytes(raw[: max(len(raw) - value, 0)] if kind == "cut" else raw + bytes(value))
    elif kind == "garble":
        (folder / target).write_bytes(value)
    else:
        file = folder / ("metadata.json" if kind.startswith("meta") else f"data/{target[0]}")
        meta = json.loads(file.read_text())
        if kind == "meta":
            meta[target] = value
        elif kind == "meta-key":
            meta["keys"][target[0]][target[1]] = value
        else:
            leaf = (
                "observation"
                if target[1] == "dtype"
                else "reward"
                if "next" in target[0]
                else "action"
            )
            if target[1] == "shape":
                meta[leaf]["shape"] = value
            else:
                meta[leaf]["dtype"] = value
        file.write_text(json.dumps(meta))


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@FUZZ
@given(mutation=mutations, verify=st.booleans())
def test_dataset_folder_fuzz(mutation, verify):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ds"
        shutil.copytree(BASE, folder)
        _apply(folder, mutation)
        before = _snapshot(folder)
        try:
            ds = load_offline_dataset(folder, verify=verify)
        except DatasetError as err:
            msg = str(err)
            assert msg and "\n" not in msg and str(folder) in msg, msg
            assert _snapshot(folder) == before, "a refused read modified the folder"
            event("refused")
            return
        event("accepted")
        assert _snapshot(folder) == before, "a read modified the folder"
        meta = ds.metadata
        assert len(ds) == meta["size"]
        # without a "keys" field the layout files are the description: the base dataset's
        for key, desc in (meta.get("keys") or BASE_KEYS).items():
            t = ds.data.get(tuple(key.split(".")))
            assert tuple(t.shape) == (meta["size"], *desc["shape"]), key
            assert str(t.dtype) == desc["dtype"], key
        part = ds.action_partition
        assert sorted(c for p in part for c in p) == list(range(ds.data["action"].shape[-1]))
