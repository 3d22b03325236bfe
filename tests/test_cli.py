"""The ``otc`` command: ``otc data build``, ``otc data info``, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from torchrl_otc.cli import COMMANDS, build_parser, main


def test_build_then_info(tmp_path, capsys):
    out = tmp_path / "nav"
    code = main(
        [
            "data",
            "build",
            "nav/nonstationary",
            "--kind",
            "random",
            "--size",
            "700",
            "--seed",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert (out / "metadata.json").exists()
    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "nav/nonstationary" in text and "700 transitions" in text and "verified" in text
    assert "otc data build nav/nonstationary --kind random --size 700 --seed 2" in text
    assert main(["data", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size"] == 700 and info["kind"] == "random" and info["checksum_verified"] is True
    assert info["action_partition"] == [[0, 1]]
    assert info["flags"]["done"] == info["flags"]["terminated"] + info["flags"]["truncated"]


def test_info_refuses_damaged_data(tmp_path, capsys, caplog):
    out = tmp_path / "nav"
    assert (
        main(
            [
                "data",
                "build",
                "nav/nonstationary",
                "--size",
                "300",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    f = out / "data" / "action.memmap"
    raw = bytearray(f.read_bytes())
    raw[0] ^= 0xFF
    f.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 2
    assert "Checksum mismatch" in caplog.text
    assert main(["data", "info", str(out), "--no-verify"]) == 0


def test_errors_exit_2_with_message(tmp_path, caplog):
    assert (
        main(["data", "build", "nav/stationary", "--size", "10", "--out", str(tmp_path / "x")]) == 2
    )
    assert "Valid tasks" in caplog.text and "mpe/navigation-3" in caplog.text
    assert (
        main(
            [
                "data",
                "build",
                "nav/nonstationary",
                "--kind",
                "medium-replay",
                "--size",
                "10",
                "--out",
                str(tmp_path / "y"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "no medium-replay" in caplog.text
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "not a dataset folder" in caplog.text
    with pytest.raises(SystemExit):
        main(
            ["data", "build", "nav/nonstationary", "--kind", "expert", "--out", str(tmp_path / "z")]
        )


def test_existing_folder_needs_overwrite(tmp_path):
    args = [
        "data",
        "build",
        "nav/nonstationary",
        "--size",
        "100",
        "--out",
        str(tmp_path / "d"),
        "--no-progress",
    ]
    assert main(args) == 0
    assert main(args) == 2
    assert main([*args, "--overwrite", "--seed", "1"]) == 0


def test_env_kwarg_reaches_the_environment(tmp_path, capsys):
    out = tmp_path / "fixed"
    assert (
        main(
            [
                "data",
                "build",
                "nav/nonstationary",
                "--size",
                "200",
                "--out",
                str(out),
                "--no-progress",
                "--env-kwarg",
                "beta=0.15",
            ]
        )
        == 0
    )
    from torchrl_otc.data.datasets import load_offline_dataset

    assert bool((load_offline_dataset(out).data["beta"] == 0.15).all())


def test_parser_structure():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "data" in sub.choices
    assert len(COMMANDS) >= 1
    args = parser.parse_args(
        [
            "data",
            "build",
            "mpe/navigation-3",
            "--kind",
            "medium",
            "--size",
            "5",
            "--seed",
            "1",
            "--out",
            "d",
        ]
    )
    assert (args.task, args.kind, args.size, args.seed) == ("mpe/navigation-3", "medium", 5, 1)


def test_tasks_and_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "torchrl_otc.cli", "data", "tasks"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mamujoco/walker2d-2x3" in out.stdout and "nav/nonstationary" in out.stdout


def test_import_d4rl_file(tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    import numpy as np

    with h5py.File(tmp_path / "hopper.hdf5", "w") as f:
        f["observations"] = np.arange(12.0)[:, None] * np.ones((1, 11)) + 1
        f["actions"] = np.full((12, 3), 0.25)
        f["rewards"] = np.ones(12)
        f["terminals"] = np.zeros(12)
        f["timeouts"] = np.array([0] * 5 + [1] + [0] * 6)
    out = tmp_path / "imported"
    assert (
        main(
            [
                "data",
                "import",
                "d4rl",
                str(tmp_path / "hopper.hdf5"),
                "--task",
                "mamujoco/hopper-3x1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["data", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["kind"] == "d4rl"
        and info["size"] == 10
        and info["action_partition"] == [[0], [1], [2]]
    )


def test_data_build_without_out_writes_under_data(tmp_path, monkeypatch, capsys):
    from torchrl_otc.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["data", "build", "nav/nonstationary", "--size", "50", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(Path("data") / "nav_nonstationary-random-50-seed0")
    assert (tmp_path / out / "metadata.json").exists()
