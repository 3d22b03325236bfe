"""Datasets are read read-only, written atomically, checked against their task; bad foreign files get one clear line.

Issue 16, part B: a damaged dataset folder is refused with a message naming the file, and a read never modifies it
(bytes and mtimes); a killed build or ``--overwrite`` never destroys the previous dataset, and what it leaves behind
is recognised and replaced; a dataset whose action partition differs from its task's is refused; every malformed
D4RL / Minari file is refused with one line naming the file, the field, the shape found and the one expected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from torchrl_otc.cli import main
from torchrl_otc.data.datasets import (
    DatasetError,
    check_dataset_for_task,
    load_d4rl_hdf5,
    load_minari,
    load_offline_dataset,
    prepare_dataset_folder,
    save_dataset,
    storage,
)
from torchrl_otc.envs.registry import get_task

TASK = "mamujoco/walker2d-2x3"  # 17-dimensional state, 6 action columns, two agents of three


def _transitions(n: int = 20, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    done = torch.zeros(n, 1, dtype=torch.bool)
    done[n // 2] = True
    return TensorDict(
        {
            "observation": torch.randn(n, 17, generator=g),
            "action": torch.rand(n, 6, generator=g) * 2 - 1,
            ("next", "observation"): torch.randn(n, 17, generator=g),
            ("next", "reward"): torch.randn(n, 1, generator=g),
            ("next", "done"): done,
            ("next", "terminated"): done.clone(),
            ("next", "truncated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        batch_size=[n],
    )


META = {
    "task": TASK,
    "kind": "random",
    "seed": 0,
    "behaviour": {"policy": "test"},
    "action_partition": [[2, 1, 0], [5, 4, 3]],  # the task's
    "command": f"otc data build {TASK} --kind random --size 20 --seed 0",
}


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file's SHA-256 and mtime (ns) under ``folder``, and its siblings' names."""
    files = {
        str(f.relative_to(folder)): (
            hashlib.sha256(f.read_bytes()).hexdigest(),
            f.stat().st_mtime_ns,
        )
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }
    files["<siblings>"] = (",".join(sorted(p.name for p in folder.parent.iterdir())), 0)
    return files


@pytest.fixture
def dataset(tmp_path) -> Path:
    save_dataset(_transitions(), tmp_path / "ds", META)
    return tmp_path / "ds"


def _edit_json(file: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads(file.read_text())
    edit(meta)
    file.write_text(json.dumps(meta))


def _truncate(folder: Path) -> str:
    f = folder / "data" / "observation.memmap"
    f.write_bytes(f.read_bytes()[: 17 * 4 * 10])
    return (
        r"data/observation.memmap is 680 bytes but column 'observation' \(torch.float32, shape \[20, 17\]\) "
        "needs 1360: the file is truncated"
    )


def _extend(folder: Path) -> str:
    f = folder / "data" / "next" / "reward.memmap"
    f.write_bytes(f.read_bytes() + bytes(8))
    return "next/reward.memmap is 88 bytes .* needs 80: the file is longer"


def _retype_metadata(folder: Path) -> str:
    _edit_json(
        folder / "metadata.json",
        lambda m: m["keys"]["observation"].update(dtype="torch.float64"),
    )
    return "column 'observation' is torch.float32.* but torch.float64, shape \\[20, 17\\] in metadata.json"


def _retype_layout(folder: Path) -> str:
    _edit_json(folder / "data" / "meta.json", lambda m: m["action"].update(dtype="torch.float64"))
    return (
        r"column 'action' is torch.float64, shape \[20, 6\] in .*data/meta.json but torch.float32"
    )


def _reshape_layout(folder: Path) -> str:
    _edit_json(folder / "data" / "meta.json", lambda m: m["action"].update(shape=[20, 3, 2]))
    return r"column 'action' is torch.float32, shape \[20, 3, 2\] in .*data/meta.json"


def _resize_metadata(folder: Path) -> str:
    _edit_json(folder / "metadata.json", lambda m: m.update(size=40))
    return r"batch shape \[20\] but metadata.json says 40 transitions"


def _remove_file(folder: Path) -> str:
    (folder / "data" / "next" / "done.memmap").unlink()
    return r"next/done.memmap is missing \(column 'next.done'\)"


DAMAGE = {
    "truncated": _truncate,
    "extended": _extend,
    "dtype in metadata.json": _retype_metadata,
    "dtype in data/meta.json": _retype_layout,
    "shape in data/meta.json": _reshape_layout,
    "size in metadata.json": _resize_metadata,
    "missing file": _remove_file,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_folder_refused_and_never_modified(dataset, damage, caplog):
    """``otc data info`` (with and without --no-verify) and load_offline_dataset refuse it, naming the file; no byte moves."""
    pattern = DAMAGE[damage](dataset)
    before = _snapshot(dataset)
    for verify in (True, False):
        with pytest.raises(DatasetError, match=pattern) as err:
            load_offline_dataset(dataset, verify=verify)
        assert "\n" not in str(err.value) and "--overwrite" in str(err.value)
    with caplog.at_level(logging.ERROR):
        assert main(["data", "info", str(dataset)]) == 2
        assert main(["data", "info", "--no-verify", str(dataset)]) == 2
    assert caplog.text.count("--overwrite") >= 2
    assert _snapshot(dataset) == before


def test_checksum_error_names_folder_files_and_fix(dataset):
    f = dataset / "data" / "next" / "reward.memmap"
    raw = bytearray(f.read_bytes())
    raw[0] ^= 1
    f.write_bytes(bytes(raw))
    before = _snapshot(dataset)
    with pytest.raises(DatasetError) as err:
        load_offline_dataset(dataset)
    msg = str(err.value)
    assert f"dataset {dataset}" in msg and "changed files: " + str(f) in msg
    assert META["command"] + " --overwrite" in msg
    assert (
        len(load_offline_dataset(dataset, verify=False)) == 20
    )  # sizes are right: loads on request
    assert _snapshot(dataset) == before


def test_loaded_data_is_private(dataset):
    """Writing into a loaded dataset never reaches its files."""
    before = _snapshot(dataset)
    ds = load_offline_dataset(dataset)
    ds.data["observation"][0] = 1e6
    del ds
    assert _snapshot(dataset) == before
    load_offline_dataset(dataset)


# ------------------------------------------------------------------------------------------- atomic writes
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _killed_writer(monkeypatch) -> None:
    """Make the next save stop midway, after the columns and before the metadata (as a kill would)."""

    def write(data, folder, meta):
        data.memmap(prefix=folder / "data")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(storage, "_write_folder", write)


def test_killed_overwrite_keeps_old_dataset(dataset, monkeypatch):
    before = _snapshot(dataset)
    _killed_writer(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_dataset(_transitions(seed=1), dataset, META, overwrite=True)
    assert _snapshot(dataset) == before
    assert torch.equal(
        load_offline_dataset(dataset).data["observation"], _transitions()["observation"]
    )


def test_partial_build_left_by_kill_is_replaced(dataset, caplog):
    # what a SIGKILL leaves: the temporary sibling of a process that is gone, without metadata.json
    partial = dataset.with_name(f".{dataset.name}.partial-{_dead_pid()}")
    _transitions(seed=2).memmap(prefix=partial / "data")
    with caplog.at_level(logging.WARNING):
        save_dataset(_transitions(seed=1), dataset, META, overwrite=True)
    assert (
        "partial output of an interrupted dataset build" in caplog.text
        and str(partial) in caplog.text
    )
    assert not partial.exists()
    assert torch.equal(
        load_offline_dataset(dataset).data["observation"], _transitions(seed=1)["observation"]
    )


def test_partial_folder_at_destination_is_recognised_and_replaced(dataset, caplog):
    # what older versions left when killed: the folder itself, without its metadata (written last)
    (dataset / "metadata.json").unlink()
    with pytest.raises(DatasetError, match="partial dataset left by an interrupted build"):
        load_offline_dataset(dataset)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        save_dataset(_transitions(seed=1), dataset, META)  # no --overwrite needed
    assert "partial dataset left by an interrupted build; replacing it" in caplog.text
    assert torch.equal(load_offline_dataset(dataset).data["action"], _transitions(seed=1)["action"])


@pytest.mark.parametrize("left", ["new", "old"])
def test_interrupted_swap_is_completed(dataset, tmp_path, left, caplog):
    """A kill between the two renames of --overwrite: the read refuses (naming the leftover) without touching it;
    the next build restores the newest complete dataset."""
    old = dataset.with_name(f".{dataset.name}.old")
    dataset.rename(old)
    expected = _transitions()
    if left == "new":
        save_dataset(_transitions(seed=3), tmp_path / "other", META)
        (tmp_path / "other").rename(dataset.with_name(f".{dataset.name}.partial-{_dead_pid()}"))
        expected = _transitions(seed=3)
    before = _snapshot(tmp_path)
    with pytest.raises(DatasetError, match="holds the complete dataset of an interrupted build"):
        load_offline_dataset(dataset)
    assert _snapshot(tmp_path) == before
    with caplog.at_level(logging.WARNING):
        prepare_dataset_folder(dataset, overwrite=True)
    assert "Restored the dataset" in caplog.text
    assert torch.equal(load_offline_dataset(dataset).data["observation"], expected["observation"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_refusals_before_any_work(dataset, tmp_path):
    file = tmp_path / "a-file"
    file.write_text("x")
    with pytest.raises(DatasetError, match=f"{file} is a file, not a folder"):
        save_dataset(_transitions(), file / "ds", META)
    with pytest.raises(DatasetError, match="is a file; choose another output folder"):
        save_dataset(_transitions(), file, META)
    with pytest.raises(DatasetError, match="exists; pass overwrite=True"):
        save_dataset(_transitions(), dataset, META)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DatasetError, match="is not a dataset folder; refusing"):
        save_dataset(_transitions(), tmp_path / "mine", META, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_cli_build_refuses_out_under_a_file(tmp_path, caplog):
    file = tmp_path / "a-file"
    file.write_text("x")
    with caplog.at_level(logging.ERROR):
        rc = main(["data", "build", "nav/nonstationary", "--size", "10", "--out", str(file / "ds")])
    assert rc == 2 and f"{file} is a file, not a folder" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_cli_build_overwrite_killed_keeps_old(tmp_path, monkeypatch, caplog):
    out = tmp_path / "nav"
    args = [
        "data",
        "build",
        "nav/nonstationary",
        "--size",
        "64",
        "--num-envs",
        "8",
        "--out",
        str(out),
    ]
    assert main([*args, "--no-progress"]) == 0
    before = _snapshot(out)
    _killed_writer(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--no-progress", "--seed", "1", "--overwrite"])
    assert _snapshot(out) == before
    monkeypatch.undo()
    assert main(["data", "info", str(out)]) == 0


# ------------------------------------------------------------------------------------------- task checks
def test_swapped_action_partition_is_refused(dataset):
    _edit_json(
        dataset / "metadata.json", lambda m: m.update(action_partition=[[5, 4, 3], [2, 1, 0]])
    )
    ds = load_offline_dataset(dataset)  # the checksum covers the data, not the metadata
    with pytest.raises(DatasetError) as err:
        check_dataset_for_task(ds, get_task(TASK))
    msg = str(err.value)
    assert (
        "[[5, 4, 3], [2, 1, 0]]" in msg and "[[2, 1, 0], [5, 4, 3]]" in msg and str(dataset) in msg
    )
    with pytest.raises(
        DatasetError, match=r"action partition \[\[5, 4, 3\], \[2, 1, 0\]\] but task"
    ):
        ds.check_for_task(get_task(TASK))  # the one-line call of OnlineTuner._load_dataset
    with pytest.raises(DatasetError, match="is for task 'mamujoco/walker2d-2x3', not"):
        check_dataset_for_task(ds, get_task("mamujoco/hopper-3x1"))


def test_task_check_accepts_a_matching_dataset(dataset):
    check_dataset_for_task(load_offline_dataset(dataset), get_task(TASK))


def test_partition_not_covering_the_actions_is_refused(dataset):
    _edit_json(dataset / "metadata.json", lambda m: m.update(action_partition=[[0, 1, 2], [3, 4]]))
    with pytest.raises(
        DatasetError, match=r"action_partition .* covers the columns \[0, 1, 2, 3, 4\] but"
    ):
        load_offline_dataset(dataset)


# ------------------------------------------------------------------------------------------- foreign files
HOPPER = "mamujoco/hopper-3x1"  # 11-dimensional state, 3 action columns
N = 6


def _d4rl_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "observations": rng.normal(size=(N, 11)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (N, 3)).astype(np.float32),
        "rewards": np.ones(N, dtype=np.float32),
        "terminals": np.zeros(N, dtype=bool),
        "timeouts": np.array([0, 0, 1, 0, 0, 1], dtype=bool),
    }


def _h5(path: Path, arrays: dict) -> Path:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            if isinstance(value, dict):
                group = f.create_group(key)
                for k, v in value.items():
                    if isinstance(v, dict):
                        sub = group.create_group(k)
                        for kk, vv in v.items():
                            sub[kk] = vv
                    else:
                        group[k] = v
            else:
                f[key] = value
    return path


def _episode(t: int = 3, **changes) -> dict:
    rng = np.random.default_rng(t)
    ep = {
        "observations": rng.normal(size=(t + 1, 11)),
        "actions": rng.uniform(-1, 1, (t, 3)),
        "rewards": np.ones(t),
        "terminations": np.array([0] * (t - 1) + [1]),
        "truncations": np.zeros(t),
    }
    ep.update(changes)
    return {k: v for k, v in ep.items() if v is not None}


def _d4rl(**changes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        arrays = {**_d4rl_arrays(), **changes}
        return _h5(folder / "d4rl.hdf5", {k: v for k, v in arrays.items() if v is not None})

    return make


def _minari(*episodes: dict) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        return _h5(folder / "main_data.hdf5", {f"episode_{i}": ep for i, ep in enumerate(episodes)})

    return make


def _text_file(folder: Path) -> Path:
    (folder / "notes.hdf5").write_text("not hdf5 at all")
    return folder / "notes.hdf5"


def _truncated(folder: Path) -> Path:
    good = _d4rl()(folder)
    raw = good.read_bytes()
    (folder / "cut.hdf5").write_bytes(raw[: len(raw) // 2])
    return folder / "cut.hdf5"


def _folder(folder: Path) -> Path:
    (folder / "adir").mkdir()
    return folder / "adir"


rng = np.random.default_rng(1)
#: One malformed file per case of the issue: (format, maker, what the message must contain).
MALFORMED: dict[str, tuple[str, Callable[[Path], Path], str]] = {
    "not HDF5": ("d4rl", _text_file, "is not an HDF5 file"),
    "a folder": ("d4rl", _folder, "is a folder; expected a D4RL .hdf5 file"),
    "truncated": ("d4rl", _truncated, "is truncated or damaged"),
    "0 rows": (
        "d4rl",
        _d4rl(**{k: v[:0] for k, v in _d4rl_arrays().items()}),
        r"observations has 0 rows \(shape \(0, 11\)\)",
    ),
    "1-D observations": (
        "d4rl",
        _d4rl(observations=np.ones(N)),
        r"observations has shape \(6,\); expected \[N, obs_dim\]",
    ),
    "1-D actions": (
        "d4rl",
        _d4rl(actions=np.ones(N)),
        r"actions has shape \(6,\); expected \[N, action_dim\]",
    ),
    "string actions": (
        "d4rl",
        _d4rl(actions=np.array([b"up"] * N)),
        r"actions holds \|S2 values \(shape \(6,\)\); expected numbers",
    ),
    "observations [N, 11, 1]": (
        "d4rl",
        _d4rl(observations=rng.normal(size=(N, 11, 1))),
        r"observations has shape \(6, 11, 1\); expected \[N, obs_dim\]",
    ),
    "next_observations 5 wide": (
        "d4rl",
        _d4rl(next_observations=rng.normal(size=(N, 5))),
        "next_observations are 5 wide .* but observations are 11 wide",
    ),
    "rewards one short": (
        "d4rl",
        _d4rl(rewards=np.ones(N - 1)),
        "observations has 6 rows but rewards has 5",
    ),
    "rewards [N, 2]": (
        "d4rl",
        _d4rl(rewards=np.ones((N, 2))),
        r"rewards has shape \(6, 2\); expected \[N\] or \[N, 1\]",
    ),
    "observations a group": (
        "d4rl",
        _d4rl(observations={"x": np.ones((N, 11))}),
        r"observations is an HDF5 group, not an array",
    ),
    "missing terminals": ("d4rl", _d4rl(terminals=None), "lacks terminals"),
    "wrong width for the task": (
        "d4rl",
        _d4rl(observations=rng.normal(size=(N, 7))),
        "7-dimensional observations but mamujoco/hopper-3x1 has 11",
    ),
    "2 action columns": (
        "d4rl",
        _d4rl(actions=rng.normal(size=(N, 2))),
        "2 action columns but mamujoco/hopper-3x1 has 3",
    ),
    "every row ends an episode": (
        "d4rl",
        _d4rl(terminals=np.ones(N, dtype=bool)),
        "no transition remains",
    ),
    "minari rewards one short": (
        "minari",
        _minari(_episode(rewards=np.ones(2))),
        r"episode_0/rewards has 2 rows for 3 actions; expected one per step \(shape \[3\]\)",
    ),
    "minari observations one short": (
        "minari",
        _minari(_episode(observations=rng.normal(size=(3, 11)))),
        "has 3 observations for 3 actions",
    ),
    "minari 1-D actions": (
        "minari",
        _minari(_episode(actions=np.ones(3))),
        r"episode_0/actions has shape \(3,\); expected \[T, action_dim\]",
    ),
    "minari string actions": (
        "minari",
        _minari(_episode(actions=np.array([b"a", b"b", b"c"]))),
        r"episode_0/actions holds \|S1 values",
    ),
    "minari 0 steps": (
        "minari",
        _minari(_episode(t=1, observations=np.ones((1, 11)), actions=np.ones((0, 3)))),
        r"actions has shape \(0, 3\)",
    ),
    "minari episodes of different widths": (
        "minari",
        _minari(_episode(), _episode(observations=rng.normal(size=(4, 12)))),
        "episode_1 has observations 12 wide",
    ),
    "minari no episodes": (
        "minari",
        lambda folder: _h5(folder / "m.hdf5", {"x": np.ones(3)}),
        "no episode_",
    ),
    "minari not HDF5": ("minari", _text_file, "is not an HDF5 file"),
    "minari missing folder": (
        "minari",
        lambda folder: folder / "nowhere",
        "No Minari HDF5 data at",
    ),
}

RAW_NUMPY = ("cannot reshape", "could not be broadcast", "index ", "Traceback")


def test_every_malformed_file_is_refused_clearly(tmp_path, caplog):
    """The fixed list: each refused by the loader and by `otc data import` with one line naming the file."""
    refused = []
    for i, (case, (fmt, make, expected)) in enumerate(sorted(MALFORMED.items())):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        source = make(folder)
        loader = load_d4rl_hdf5 if fmt == "d4rl" else load_minari
        with pytest.raises(DatasetError) as err:
            loader(source, task=HOPPER)
        msg = str(err.value)
        assert msg and "\n" not in msg, case
        assert str(source) in msg, (case, msg)
        assert not any(raw in msg for raw in RAW_NUMPY), (case, msg)
        assert re.search(expected, msg), (case, msg)
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            rc = main(
                ["data", "import", fmt, str(source), "--task", HOPPER, "--out", str(folder / "out")]
            )
        assert rc == 2 and str(source) in caplog.text, case
        assert not (folder / "out").exists() and not list(folder.glob(".out.*")), case
        refused.append(case)
    assert len(refused) == len(MALFORMED) == 25


def test_import_out_under_a_file_is_refused_before_reading(tmp_path, caplog):
    file = tmp_path / "a-file"
    file.write_text("x")
    with caplog.at_level(logging.ERROR):
        rc = main(
            [
                "data",
                "import",
                "d4rl",
                str(tmp_path / "missing.hdf5"),
                "--task",
                HOPPER,
                "--out",
                str(file / "o"),
            ]
        )
    assert rc == 2 and "is a file, not a folder" in caplog.text


def test_valid_files_still_import(tmp_path):
    ds = load_d4rl_hdf5(_d4rl(rewards=np.ones((N, 1)))(tmp_path), task=HOPPER)
    assert ds.data["observation"].shape == (4, 11) and ds.data["action"].shape == (4, 3)
    ds = load_minari(_minari(_episode(), _episode(t=2))(tmp_path), task=HOPPER)
    assert len(ds) == 5 and ds.data["next", "observation"].shape == (5, 11)
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    saved = save_dataset(ds.data, tmp_path / "out", {**ds.metadata})
    assert len(load_offline_dataset(saved.path)) == 5


def test_unknown_env_kwarg_is_one_line(tmp_path, caplog):
    out = tmp_path / "ds"
    args = ["data", "build", "nav/nonstationary", "--size", "10", "--out", str(out)]
    with caplog.at_level(logging.ERROR):
        assert main([*args, "--env-kwarg", "bogus=1", "--no-progress"]) == 2
    assert "does not take the argument(s) bogus (--env-kwarg" in caplog.text
    assert not out.exists() and list(tmp_path.iterdir()) == []
