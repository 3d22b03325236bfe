"""Run folders under bad conditions (issue 16): unreadable checkpoints, edited configs, repeated and concurrent
runs, refused commands leaving nothing behind, sweep workers dying with their parent."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_tuning import TINY  # the tiny runs of test_tuning.py (same folder)

from torchrl_otc.configs.tune import parse_overrides
from torchrl_otc.report import load_run
from torchrl_otc.trainers.checkpointing import read_checkpoint
from torchrl_otc.trainers.run import (
    CheckpointError,
    RunExistsError,
    RunFolder,
    RunFolderError,
    RunLockedError,
)
from torchrl_otc.trainers.tuning import OnlineTuner

ROOT = Path(__file__).resolve().parents[2]


def config(tmp_path, *overrides):
    cfg = parse_overrides([*TINY, *overrides])
    cfg.run.runs_root, cfg.data.cache_dir = str(tmp_path / "runs"), str(tmp_path / "cache")
    return cfg


def _killed_at_the_last_evaluation(tmp_path, monkeypatch) -> OnlineTuner:
    """A run killed before deployment 2's evaluation: its checkpoints are deployment 2's updates 16 (newest) and 8
    (previous)."""
    tuner = OnlineTuner(config(tmp_path), progress=False)
    original = tuner._evaluate_and_log

    def evaluate(deployment, phase):
        if deployment == 2:
            raise KeyboardInterrupt("killed before the last evaluation")
        return original(deployment, phase)

    monkeypatch.setattr(tuner, "_evaluate_and_log", evaluate)
    with pytest.raises(KeyboardInterrupt):
        tuner.run()
    monkeypatch.undo()
    return tuner


def _truncate(file: Path) -> None:
    os.truncate(file, file.stat().st_size // 2)


def test_a_truncated_state_falls_back_to_the_previous_checkpoint_and_resumes_identically(
    tmp_path, monkeypatch, caplog
):
    reference = load_run(OnlineTuner(config(tmp_path / "a"), progress=False).run()["run_dir"])
    tuner = _killed_at_the_last_evaluation(tmp_path / "b", monkeypatch)
    checkpoint = tuner.folder.checkpoint_dir
    assert read_checkpoint(checkpoint)["stage"] == {
        "stage": "update",
        "deployment": 2,
        "update": 16,
    }
    assert read_checkpoint(checkpoint.with_name("checkpoint.prev"))["stage"]["update"] == 8
    _truncate(checkpoint / "state.pt")  # marked COMPLETE, unreadable
    with caplog.at_level(logging.WARNING, logger="torchrl_otc"):
        resumed = OnlineTuner.resume(tuner.folder.path, progress=False).run()
    assert "is unreadable" in caplog.text and "resuming from the previous one" in caplog.text
    run = load_run(resumed["run_dir"])

    def rows(run):  # every row, every value but the timings
        return [
            (r["step"], r["phase"], r["name"], r["name"].endswith("_ms") or r["value"])
            for r in run.rows
        ]

    assert rows(run) == rows(reference)
    assert (run.path / "DONE").exists()


def test_a_short_row_file_is_unreadable_and_is_not_extended_by_the_check(tmp_path):
    from tensordict import TensorDict

    folder = tmp_path / "ckpt"
    folder.mkdir()
    TensorDict({"a": torch.randn(10, 3)}, [10]).memmap(folder / "agent0" / "online")
    torch.save(
        {"format": 2, "agents": [{"rows": {"merged": 0, "online": 10}}]}, folder / "state.pt"
    )
    read_checkpoint(folder)
    data = folder / "agent0" / "online" / "a.memmap"
    os.truncate(data, 50)
    with pytest.raises(ValueError, match="a.memmap is 50 bytes; its metadata says 120 bytes"):
        read_checkpoint(folder)
    assert data.stat().st_size == 50  # reading never writes


def test_no_readable_checkpoint_is_one_clear_error(tmp_path, monkeypatch):
    tuner = _killed_at_the_last_evaluation(tmp_path, monkeypatch)
    checkpoint = tuner.folder.checkpoint_dir
    _truncate(checkpoint / "state.pt")
    _truncate(checkpoint.with_name("checkpoint.prev") / "state.pt")
    with pytest.raises(CheckpointError) as err:
        OnlineTuner.resume(tuner.folder.path, progress=False).run()
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, ValueError)
    assert message.startswith(f"No readable checkpoint in {tuner.folder.path}: ")
    assert "so is the previous one" in message
    assert "another run_name, or delete" in message


@pytest.mark.parametrize(
    "field,value,message",
    [
        (
            "task",
            "mpe/navigation-3",
            "task is 'nav/nonstationary' in the checkpoint but 'mpe/navigation-3'",
        ),
        ("algorithm", "bcq", "algo is 'td3bc' in the checkpoint but 'bcq' in config.yaml"),
        (
            "deployments",
            5,
            "asks for deployments=5 but the run was started with deployments=2 (1 done)",
        ),
        (
            "deployments",
            1,
            "asks for deployments=1 but the run was started with deployments=2 (1 done)",
        ),
    ],
)
def test_a_config_edited_since_the_checkpoint_is_refused(
    tmp_path, monkeypatch, field, value, message
):
    tuner = _killed_at_the_last_evaluation(tmp_path, monkeypatch)
    file = tuner.folder.path / "config.yaml"
    raw = yaml.safe_load(file.read_text())
    if field == "task":
        raw["task"]["name"] = value
    elif field == "algorithm":
        raw["algorithm"] = {"name": value}
    else:
        raw["run"]["deployments"] = value
    file.write_text(yaml.safe_dump(raw, sort_keys=False))
    built = []
    monkeypatch.setattr(OnlineTuner, "_build_agents", lambda self: built.append(1))
    with pytest.raises(RunFolderError) as err:
        OnlineTuner.resume(tuner.folder.path, progress=False).run()
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not built  # refused before any dataset was built
    assert not (tuner.folder.path / "LOCK").exists()  # the lock went with the refusal


def test_more_deployments_for_a_finished_run_are_refused_with_one_line(tmp_path):
    summary = OnlineTuner(config(tmp_path), progress=False).run()
    file = Path(summary["run_dir"]) / "config.yaml"
    raw = yaml.safe_load(file.read_text())
    raw["run"]["deployments"] = 4
    file.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(RunFolderError, match=r"deployments=4 but .* deployments=2 \(2 done\)"):
        OnlineTuner.resume(summary["run_dir"], progress=False).run()
    raw["run"]["device"] = "cpu"  # where it runs may change: resuming the finished run is fine
    raw["run"]["deployments"] = 2
    file.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert OnlineTuner.resume(summary["run_dir"], progress=False).run()["returns"] == pytest.approx(
        summary["returns"]
    )


def test_the_same_tune_twice_is_one_line_at_the_command_line(tmp_path, caplog):
    from torchrl_otc.cli import main

    overrides = [
        *TINY,
        "deployments=1",
        f"runs_root={tmp_path / 'runs'}",
        f"cache_dir={tmp_path / 'cache'}",
        "run_name=twice",
    ]
    assert main(["tune", "--no-progress", *overrides]) == 0
    caplog.clear()
    assert main(["tune", "--no-progress", *overrides]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "already holds a run. Resume it with" in errors[0]
    assert "Traceback" not in caplog.text
    assert issubclass(RunExistsError, ValueError) and issubclass(RunExistsError, FileExistsError)


def test_refused_commands_leave_nothing_behind(tmp_path, monkeypatch):
    # refused in the constructor: nothing is created
    with pytest.raises(ValueError):
        OnlineTuner(config(tmp_path, "deployments=0"), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device=cuda: no CUDA GPU is available"):
            OnlineTuner(config(tmp_path, "device=cuda"), progress=False)
    file = tmp_path / "a-file"
    file.write_text("")
    cfg = config(tmp_path)
    cfg.run.runs_root = str(file / "runs")
    with pytest.raises(
        RunFolderError, match="a-file is a file, not a folder; choose another runs_root"
    ):
        OnlineTuner(cfg, progress=False)
    # refused when the run starts, before it wrote anything: the folder it created is removed again

    def refuse(self):
        raise ValueError("refused while loading the dataset")

    monkeypatch.setattr(OnlineTuner, "_load_dataset", refuse)
    with pytest.raises(ValueError, match="refused while loading"):
        OnlineTuner(config(tmp_path), progress=False).run()
    assert not (tmp_path / "runs").exists()


def test_resume_of_a_missing_folder_creates_nothing(tmp_path):
    missing = tmp_path / "runs" / "nothing"
    with pytest.raises(FileNotFoundError, match=f"No run folder at {missing}"):
        OnlineTuner.resume(missing, progress=False)
    assert not (tmp_path / "runs").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        OnlineTuner.resume(tmp_path / "empty", progress=False)
    (tmp_path / "empty" / "config.yaml").write_text("run: [unclosed\n")
    with pytest.raises(RunFolderError, match="config.yaml is not valid YAML"):
        OnlineTuner.resume(tmp_path / "empty", progress=False)


_HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from torchrl_otc.trainers.run import RunFolder
    with RunFolder(sys.argv[1]).lock():
        print("locked", flush=True)
        time.sleep(120)
    """
)


def test_a_second_writer_is_refused_and_a_killed_writer_leaves_no_stale_lock(tmp_path):
    cfg = config(tmp_path)
    tuner = OnlineTuner(cfg, progress=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tuner.folder.path)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError) as err:
            tuner.run()
        assert (
            f"{tuner.folder.path} is being written by another process (PID {holder.pid} on host"
            in str(err.value)
        )
        assert "\n" not in str(err.value)
        holder.kill()  # SIGKILL: the kernel releases the lock
        holder.wait(timeout=30)
        with RunFolder(tuner.folder.path).lock():
            pass
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait(timeout=30)


# ------------------------------------------------------------------------------------------------ sweep orphans
_RECIPE = """
name: orphans
base: {{task: nav/nonstationary, cache_dir: {cache}}}
grid: {{seed: [0, 1]}}
variants: [{{label: uniform, strategy: uniform}}]
sizes:
  smoke: {{dataset_size: 2000, offline_updates: 5000, deployments: 1, steps_per_deployment: 20,
          updates_per_deployment: 2, eval_episodes: 1, num_candidates: 16, num_online: 10}}
"""


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sweep_workers_and_the_resource_tracker_die_with_a_killed_sweep(tmp_path):
    recipe = tmp_path / "orphans.yaml"
    recipe.write_text(_RECIPE.format(cache=tmp_path / "cache"))
    sweep = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torchrl_otc.cli",
            "sweep",
            str(recipe),
            "--size",
            "smoke",
            "--workers",
            "2",
            "--runs-root",
            str(tmp_path / "runs"),
            "--no-progress",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        children: list[int] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the resource tracker and two workers
            children = _children(sweep.pid)
            if len(children) >= 3:
                break
            assert sweep.poll() is None, "the sweep ended before its workers started"
            time.sleep(0.2)
        assert len(children) >= 3, children
        runs = tmp_path / "runs" / "orphans-smoke"
        while (
            time.monotonic() < deadline
        ):  # both workers run (their initialisers ran): each locked a run folder
            if runs.exists() and len(list(runs.iterdir())) >= 2:
                break
            time.sleep(0.2)
        children = _children(sweep.pid)
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.2)
        assert not [pid for pid in children if _alive(pid)]
    finally:
        try:
            os.killpg(sweep.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        sweep.wait(timeout=30)
