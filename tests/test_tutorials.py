"""The tutorials in ``examples/tutorials/`` run at tiny sizes and show what their text says they show.

Each script is imported from its file and its ``main`` called with ``--tiny``; the tests check the numbers it
returns (the mechanism the tutorial teaches), not only that it ran.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

TUTORIALS = Path(__file__).resolve().parents[1] / "examples" / "tutorials"


def load_tutorial(name: str):
    spec = importlib.util.spec_from_file_location(f"tutorial_{name}", TUTORIALS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_threads():
    """The tutorials set torch's intra-op threads to one; give the rest of the session its own setting back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_otc_sampler_in_your_buffer(capsys):
    tutorial = load_tutorial("otc_sampler_in_your_buffer")
    results = tutorial.main(["--tiny"])
    out = capsys.readouterr().out
    assert "otc_uniform=True" in out  # before any deployment the sampler is uniform and says so
    # Uniform sampling draws offline rows of either sign of beta about equally; OTC prefers the online dynamics.
    assert 0.35 < results["uniform"] < 0.65
    assert results["otc"] > results["uniform"] + 0.1
    assert results["otc_online_share"] > results["uniform_online_share"]
    # eq. 4: alpha unchanged at the first deployment, then alpha_2 = alpha_1 * D_2 / D_1 (clamped to (0.1, 10)).
    first, second = results["alpha_history"]
    assert first["alpha"] == 1.0
    expected = min(max(first["alpha"] * second["D"] / first["D"], 0.1), 10.0)
    assert second["alpha"] == pytest.approx(expected, rel=1e-6)


def test_offline_to_online_navigation(tmp_path, capsys):
    pytest.importorskip("vmas")
    from torchrl_otc.report import load_run

    tutorial = load_tutorial("offline_to_online_navigation")
    results = tutorial.main(["--tiny", "--runs-root", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| otc |" in out and "| uniform |" in out
    deployments = tutorial.TINY["deployments"]
    for strategy in ("otc", "uniform"):
        returns = results[strategy]["returns"]
        assert sorted(returns) == list(
            range(deployments + 1)
        )  # offline evaluation + one per deployment
        assert all(math.isfinite(r) for r in returns.values())
        run_dir = Path(results[strategy]["run_dir"])
        assert run_dir.is_relative_to(tmp_path)
        for name in ("config.yaml", "meta.json", "metrics.csv", "checkpoint"):
            assert (run_dir / name).exists(), name
    # Both strategies tune the same offline-trained agents (cached), so their deployment-0 returns are equal.
    assert results["otc"]["returns"][0] == results["uniform"]["returns"][0]
    # Only OTC logs alpha; it follows eq. 4 from the second deployment on.
    assert results["uniform"]["alpha"] == {}
    run = load_run(results["otc"]["run_dir"])
    alpha, d = run.series("agent0/alpha"), run.series("agent0/D")
    assert alpha[0] == alpha[1] == 1.0
    assert alpha[2] == pytest.approx(min(max(alpha[1] * d[2] / d[1], 0.1), 10.0), rel=1e-6)
    # Online rows are drawn during tuning (self-matches rank them first), none offline.
    share = results["otc"]["online_share"]
    assert share[0] == 0.0 and share[1] > 0.0


def test_bring_your_own_dataset(tmp_path):
    pytest.importorskip("h5py")
    from torchrl_otc.data.datasets import content_checksum, load_offline_dataset

    tutorial = load_tutorial("bring_your_own_dataset")
    results = tutorial.main(["--tiny", "--out", str(tmp_path)])
    # Without next_observations in the file, each episode's last row has no next state and is dropped.
    assert results["dropped_rows"] == results["episodes"] > 0
    assert results["hdf5_transitions"] == results["hdf5_rows"] - results["episodes"]
    from_file, dataset = results["from_file"], results["dataset"]
    # The HDF5 route and the own-arrays route give the same transitions.
    for key in (
        "observation",
        "action",
        ("next", "observation"),
        ("next", "reward"),
        ("next", "done"),
    ):
        assert torch.equal(from_file.data[key], dataset.data[key]), key
    # Next states are the real next rows (never zeroed): row j's next state starts row j + 1 of its episode.
    same_episode = from_file.data["episode"][1:] == from_file.data["episode"][:-1]
    nxt, obs = from_file.data["next", "observation"][:-1], from_file.data["observation"][1:]
    assert torch.equal(nxt[same_episode], obs[same_episode])
    assert bool(from_file.data["next", "observation"].abs().sum(-1).gt(0).all())
    # The saved folder reloads with its checksum verified.
    reloaded = load_offline_dataset(tmp_path / "robot-from-arrays")
    assert reloaded.metadata["checksum"] == content_checksum(dataset.data)
    assert reloaded.action_partition == tutorial.ACTION_PARTITION
    assert (tmp_path / "robot-from-hdf5" / "metadata.json").exists()
    # Each agent's view holds exactly its own action columns of the joint action.
    for i, view in enumerate(results["views"]):
        joint = dataset.data["action"][:, tutorial.ACTION_PARTITION[i]]
        assert torch.equal(view["action"], joint)
        assert torch.equal(view["observation"], dataset.data["observation"])
    assert results["agent1_stored_action_width"] == len(tutorial.ACTION_PARTITION[1])
    assert len(results["losses"]) == 10 and all(math.isfinite(x) for x in results["losses"])
