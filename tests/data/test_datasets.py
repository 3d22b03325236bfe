"""Dataset format, checks, builders and foreign-format loaders (section 4.1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from torchrl_otc.data.datasets import (
    DatasetError,
    build_dataset,
    content_checksum,
    load_d4rl_hdf5,
    load_minari,
    load_offline_dataset,
    read_metadata,
    save_dataset,
)
from torchrl_otc.data.datasets.behaviour import behaviour_checkpoint_path


def _transitions(n: int = 20, obs: int = 5, act: int = 6, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    done = torch.zeros(n, 1, dtype=torch.bool)
    done[n // 2] = True
    return TensorDict(
        {
            "observation": torch.randn(n, obs, generator=g),
            "action": torch.rand(n, act, generator=g) * 2 - 1,
            ("next", "observation"): torch.randn(n, obs, generator=g),
            ("next", "reward"): torch.randn(n, 1, generator=g),
            ("next", "done"): done,
            ("next", "terminated"): done.clone(),
            ("next", "truncated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        batch_size=[n],
    )


META = {
    "task": "mamujoco/walker2d-2x3",
    "kind": "random",
    "seed": 3,
    "behaviour": {"policy": "test"},
    "action_partition": [[2, 1, 0], [5, 4, 3]],
}


def test_roundtrip(tmp_path):
    td = _transitions()
    saved = save_dataset(td, tmp_path / "ds", META)
    ds = load_offline_dataset(tmp_path / "ds")
    for key in td.keys(True, True):
        assert torch.equal(ds.data[key], td[key]), key
    meta = ds.metadata
    for field in ("task", "kind", "behaviour", "size", "seed", "package_version", "checksum"):
        assert field in meta, field
    assert meta["size"] == 20 and meta["seed"] == 3 and meta["checksum"] == content_checksum(td)
    assert saved.metadata["checksum"] == meta["checksum"]
    assert ds.action_partition == [[2, 1, 0], [5, 4, 3]] and ds.n_agents == 2
    assert (tmp_path / "ds" / "metadata.json").exists()
    rb = ds.replay_buffer(batch_size=4)
    assert len(rb) == 20 and rb.sample()["action"].shape == (4, 6)


def test_refuses_to_overwrite(tmp_path):
    save_dataset(_transitions(), tmp_path / "ds", META)
    with pytest.raises(DatasetError, match="overwrite=True"):
        save_dataset(_transitions(seed=1), tmp_path / "ds", META)
    save_dataset(_transitions(seed=1), tmp_path / "ds", META, overwrite=True)
    assert torch.equal(
        load_offline_dataset(tmp_path / "ds").data["observation"],
        _transitions(seed=1)["observation"],
    )


def _memmap_file(path: Path, key: str) -> Path:
    *folders, leaf = key.split(".")
    return path.joinpath("data", *folders, f"{leaf}.memmap")


def _poke(path: Path, key: str, value: float, index: int = 0) -> None:
    """Change one float32 number of a stored column in place (as a damaged copy would)."""
    f = _memmap_file(path, key)
    raw = bytearray(f.read_bytes())
    raw[4 * index : 4 * index + 4] = np.float32(value).tobytes()
    f.write_bytes(bytes(raw))


def test_checksum_mismatch_is_refused(tmp_path):
    save_dataset(_transitions(), tmp_path / "ds", META)
    _poke(tmp_path / "ds", "next.reward", 123.0)
    with pytest.raises(DatasetError, match="Checksum mismatch"):
        load_offline_dataset(tmp_path / "ds")
    ds = load_offline_dataset(tmp_path / "ds", verify=False)  # on request, loads
    assert float(ds.data["next", "reward"][0]) == 123.0


def _rewrite_checksum(path: Path) -> None:
    meta = read_metadata(path)
    meta["checksum"] = content_checksum(TensorDict.load_memmap(path / "data"))
    (path / "metadata.json").write_text(json.dumps(meta))


def test_nan_is_refused_with_key(tmp_path):
    td = _transitions()
    td["next", "observation"][3, 1] = float("nan")
    with pytest.raises(DatasetError, match=r"1 NaN or infinite values in 'next.observation'"):
        save_dataset(td, tmp_path / "bad", META)
    # written by someone else, with a matching checksum: still refused on load
    save_dataset(_transitions(), tmp_path / "ds", META)
    _poke(tmp_path / "ds", "observation", float("nan"), index=7)
    _rewrite_checksum(tmp_path / "ds")
    with pytest.raises(DatasetError, match="NaN or infinite values in 'observation'"):
        load_offline_dataset(tmp_path / "ds")


def test_all_zero_data_is_refused(tmp_path):
    td = _transitions()
    td.apply_(torch.zeros_like)
    with pytest.raises(DatasetError, match="all zeros in observation, action, next.observation"):
        save_dataset(td, tmp_path / "zero", META)
    # a folder whose observations were zeroed (what a broken loader writes), checksum made to match
    save_dataset(_transitions(), tmp_path / "ds", META)
    f = _memmap_file(tmp_path / "ds", "observation")
    f.write_bytes(bytes(len(f.read_bytes())))
    _rewrite_checksum(tmp_path / "ds")
    with pytest.raises(DatasetError, match="all zeros in observation"):
        load_offline_dataset(tmp_path / "ds")
    # all-zero rewards are legitimate (sparse tasks)
    ok = _transitions()
    ok["next", "reward"].zero_()
    save_dataset(ok, tmp_path / "ok", META)
    load_offline_dataset(tmp_path / "ok")


def test_missing_keys_are_named(tmp_path):
    td = _transitions().exclude(("next", "truncated"), "action")
    with pytest.raises(DatasetError, match=r"lacks required keys: action, next\.truncated"):
        save_dataset(td, tmp_path / "bad", META)
    # a folder written without them
    folder = tmp_path / "foreign"
    td.memmap(prefix=folder / "data")
    (folder / "metadata.json").write_text(
        json.dumps({**META, "size": 20, "checksum": content_checksum(td)})
    )
    with pytest.raises(DatasetError, match=r"lacks required keys: action, next\.truncated"):
        load_offline_dataset(folder)


def test_not_a_dataset_folder(tmp_path):
    with pytest.raises(DatasetError, match="metadata.json is missing"):
        load_offline_dataset(tmp_path)


# ---------------------------------------------------------------------------------------------- D4RL HDF5
def _write_d4rl(path: Path, with_next: bool) -> dict[str, np.ndarray]:
    h5py = pytest.importorskip("h5py")
    n = 8
    obs = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 11), dtype=np.float32) + 1.0
    arrays = {
        "observations": obs,
        "actions": np.random.default_rng(0).uniform(-1, 1, (n, 3)).astype(np.float32),
        "rewards": np.arange(n, dtype=np.float32) / 10,
        # episodes: rows 0-2 (ends by a fall at 2), rows 3-5 (time limit at 5), rows 6-7 (unfinished)
        "terminals": np.array([0, 0, 1, 0, 0, 0, 0, 0], dtype=bool),
        "timeouts": np.array([0, 0, 0, 0, 0, 1, 0, 0], dtype=bool),
    }
    if with_next:
        arrays["next_observations"] = obs + 100.0  # distinct from the following rows
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v
    return arrays


def test_d4rl_with_next_observations(tmp_path):
    a = _write_d4rl(tmp_path / "hopper.hdf5", with_next=True)
    ds = load_d4rl_hdf5(tmp_path / "hopper.hdf5", task="mamujoco/hopper-3x1")
    d = ds.data
    assert len(ds) == 8
    torch.testing.assert_close(d["next", "observation"], torch.as_tensor(a["next_observations"]))
    assert d["next", "terminated"].view(-1).tolist() == [
        False,
        False,
        True,
        False,
        False,
        False,
        False,
        False,
    ]
    assert d["next", "truncated"].view(-1).tolist() == [
        False,
        False,
        False,
        False,
        False,
        True,
        False,
        False,
    ]
    assert d["next", "done"].view(-1).tolist() == [
        False,
        False,
        True,
        False,
        False,
        True,
        False,
        False,
    ]
    assert d["episode"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert ds.action_partition == [[0], [1], [2]]
    # the terminal next state is the real one, not zeros
    assert bool(d["next", "observation"][2].ne(0).all())


def test_d4rl_without_next_observations(tmp_path):
    a = _write_d4rl(tmp_path / "hopper.hdf5", with_next=False)
    ds = load_d4rl_hdf5(tmp_path / "hopper.hdf5", task="mamujoco/hopper-3x1")
    d = ds.data
    # last row of each episode dropped (2: terminal, 5: timeout, 7: end of file)
    kept = [0, 1, 3, 4, 6]
    torch.testing.assert_close(d["observation"], torch.as_tensor(a["observations"][kept]))
    torch.testing.assert_close(
        d["next", "observation"], torch.as_tensor(a["observations"][[1, 2, 4, 5, 7]])
    )
    torch.testing.assert_close(d["next", "reward"].view(-1), torch.as_tensor(a["rewards"][kept]))
    assert (
        not d["next", "done"].any()
        and not d["next", "terminated"].any()
        and not d["next", "truncated"].any()
    )
    assert d["episode"].tolist() == [0, 0, 1, 1, 2]
    agent_views = ds.split_agents()
    assert [v["action"].shape[-1] for v in agent_views] == [1, 1, 1]
    torch.testing.assert_close(
        agent_views[2]["action"].view(-1), torch.as_tensor(a["actions"][kept, 2])
    )


def test_d4rl_errors(tmp_path):
    h5py = pytest.importorskip("h5py")
    _write_d4rl(tmp_path / "x.hdf5", with_next=False)
    with pytest.raises(
        DatasetError, match="11-dimensional observations but mamujoco/halfcheetah-2x3 has 17"
    ):
        load_d4rl_hdf5(tmp_path / "x.hdf5", task="mamujoco/halfcheetah-2x3")
    with pytest.raises(ValueError, match="pass task="):
        load_d4rl_hdf5(tmp_path / "x.hdf5")
    with h5py.File(tmp_path / "y.hdf5", "w") as f:
        f["observations"] = np.ones((3, 11))
        f["actions"] = np.ones((3, 3))
    with pytest.raises(DatasetError, match="lacks rewards, terminals"):
        load_d4rl_hdf5(tmp_path / "y.hdf5", task="mamujoco/hopper-3x1")
    with h5py.File(tmp_path / "z.hdf5", "w") as f:
        f["observations"] = np.zeros((3, 11))
        f["actions"] = np.ones((3, 3))
        f["rewards"] = np.ones(3)
        f["terminals"] = np.zeros(3)
        f["next_observations"] = np.zeros((3, 11))
    with pytest.raises(DatasetError, match="all zeros"):
        load_d4rl_hdf5(tmp_path / "z.hdf5", task="mamujoco/hopper-3x1")


# ---------------------------------------------------------------------------------------------- Minari
def test_minari_folder(tmp_path):
    h5py = pytest.importorskip("h5py")
    (tmp_path / "hopper-medium-v0" / "data").mkdir(parents=True)
    with h5py.File(tmp_path / "hopper-medium-v0" / "data" / "main_data.hdf5", "w") as f:
        for e, (t, term) in enumerate([(3, True), (2, False)]):
            ep = f.create_group(f"episode_{e}")
            ep["observations"] = (
                np.arange(t + 1, dtype=np.float64)[:, None] * np.ones((1, 11)) + 10 * e + 1
            )
            ep["actions"] = np.full((t, 3), 0.5 * (e + 1))
            ep["rewards"] = np.ones(t)
            ep["terminations"] = np.array([False] * (t - 1) + [term])
            ep["truncations"] = np.array([False] * (t - 1) + [not term])
            ep.create_group("infos")
    ds = load_minari(tmp_path / "hopper-medium-v0", task="mamujoco/hopper-3x1")
    d = ds.data
    assert len(ds) == 5
    assert d["observation"][:, 0].tolist() == [1.0, 2.0, 3.0, 11.0, 12.0]
    assert d["next", "observation"][:, 0].tolist() == [
        2.0,
        3.0,
        4.0,
        12.0,
        13.0,
    ]  # final observation kept
    assert d["next", "terminated"].view(-1).tolist() == [False, False, True, False, False]
    assert d["next", "truncated"].view(-1).tolist() == [False, False, False, False, True]
    assert d["episode"].tolist() == [0, 0, 0, 1, 1]
    assert ds.metadata["kind"] == "minari"


def test_minari_refuses_zeros_and_missing_fields(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "main_data.hdf5", "w") as f:
        ep = f.create_group("episode_0")
        ep["observations"] = np.zeros((3, 11))
        ep["actions"] = np.zeros((2, 3))
        ep["rewards"] = np.zeros(2)
        ep["terminations"] = np.zeros(2)
        ep["truncations"] = np.zeros(2)
    with pytest.raises(DatasetError, match="all zeros"):
        load_minari(tmp_path, task="mamujoco/hopper-3x1")
    with h5py.File(tmp_path / "main_data.hdf5", "a") as f:
        del f["episode_0"]["rewards"]
    with pytest.raises(DatasetError, match="lacks rewards"):
        load_minari(tmp_path / "main_data.hdf5", task="mamujoco/hopper-3x1")


# ---------------------------------------------------------------------------------------------- builders
def test_build_random_nav(tmp_path):
    ds = build_dataset(
        "nav/nonstationary",
        "random",
        3000,
        seed=1,
        out=tmp_path / "nav",
        num_envs=64,
        progress=False,
    )
    loaded = load_offline_dataset(tmp_path / "nav")
    d = loaded.data
    assert len(loaded) == 3000 and loaded.metadata["kind"] == "random"
    assert loaded.metadata["behaviour"] == {"policy": "uniform random"}
    assert bool(d["action"].abs().le(1).all())
    beta = d["beta"]
    assert bool((beta.abs() <= 0.2).all()) and torch.equal(d["next", "beta"], beta)
    # every row's next state is its state moved by beta * action
    torch.testing.assert_close(
        d["next", "observation"][:, :2] - d["observation"][:, :2], beta * d["action"]
    )
    # within an episode, consecutive rows chain: s'_t = s_{t+1}
    same = (d["episode"][1:] == d["episode"][:-1]) & ~d["next", "done"][:-1].view(-1)
    assert int(same.sum()) > 1000
    assert torch.equal(d["next", "observation"][:-1][same], d["observation"][1:][same])
    # a new episode starts after every done row of the same env
    assert bool(
        (
            d["episode"][1:][d["next", "done"][:-1].view(-1)]
            != d["episode"][:-1][d["next", "done"][:-1].view(-1)]
        ).all()
    )
    assert ds.metadata["checksum"] == loaded.metadata["checksum"]


def test_build_is_deterministic():
    a = build_dataset("nav/nonstationary", "random", 500, seed=4, num_envs=8, progress=False)
    b = build_dataset("nav/nonstationary", "random", 500, seed=4, num_envs=8, progress=False)
    c = build_dataset("nav/nonstationary", "random", 500, seed=5, num_envs=8, progress=False)
    assert content_checksum(a.data) == content_checksum(b.data) != content_checksum(c.data)


def test_build_random_mpe(tmp_path):
    pytest.importorskip("vmas")
    build_dataset(
        "mpe/predator-prey",
        "random",
        2000,
        seed=0,
        out=tmp_path / "pp",
        progress=False,
        num_envs=16,
        local_obs=True,
    )
    ds = load_offline_dataset(tmp_path / "pp")
    d = ds.data
    assert d["observation"].shape == (2000, 8) and d["action"].shape == (2000, 6)
    assert d["local_observation"].shape == (2000, 3, 8)
    assert bool(d["action"].abs().le(0.1).all())
    assert int(d["next", "truncated"].sum()) == 2000 // 25 and not d["next", "terminated"].any()
    assert ds.action_partition == [[0, 1], [2, 3], [4, 5]]


@pytest.mark.parametrize("task", ["nav/nonstationary", "mpe/navigation-3"])
def test_build_medium_uses_shipped_policy(task):
    if not behaviour_checkpoint_path(task).exists():
        pytest.skip(f"no shipped behaviour policy for {task}")
    if task.startswith("mpe"):
        pytest.importorskip("vmas")
    ds = build_dataset(task, "medium", 2000, seed=0, progress=False)
    beh = ds.metadata["behaviour"]
    assert beh["checkpoint"] == behaviour_checkpoint_path(task).name and beh["noise_std"] == 0.1
    random = build_dataset(task, "random", 2000, seed=0, progress=False)
    # the behaviour policy earns more than uniform random actions (per-row mean reward)
    assert float(ds.data["next", "reward"].mean()) > float(random.data["next", "reward"].mean())
    if task == "nav/nonstationary":
        assert bool(ds.data["beta"].abs().le(0.2).all()) and bool(ds.data["beta"].lt(0).any())


def test_medium_replay_refused_for_nav():
    with pytest.raises(ValueError, match="no medium-replay"):
        build_dataset("nav/nonstationary", "medium-replay", 100, progress=False)


def test_build_argument_errors():
    with pytest.raises(ValueError, match="valid kinds"):
        build_dataset("nav/nonstationary", "expert", 100, progress=False)
    with pytest.raises(KeyError, match="Valid tasks"):
        build_dataset("nav/stationary", "random", 100, progress=False)
