"""Run folders: metrics rows, crash-safe checkpoints."""

from __future__ import annotations

import json
import os

import pytest

from torchrl_otc.trainers.run import (
    CheckpointError,
    RunFolder,
    RunLockedError,
    atomic_checkpoint,
    load_checkpoint,
)


def test_checkpoint_survives_a_failed_write(tmp_path):
    target = tmp_path / "ckpt"
    atomic_checkpoint(target, lambda p: (p / "state.json").write_text(json.dumps({"step": 1})))

    def failing(p):
        (p / "state.json").write_text(json.dumps({"step": 2}))
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_checkpoint(target, failing)
    assert json.loads((target / "state.json").read_text()) == {"step": 1}
    assert (target / "COMPLETE").exists()
    assert not (tmp_path / "ckpt.tmp").exists()
    atomic_checkpoint(target, lambda p: (p / "state.json").write_text(json.dumps({"step": 3})))
    assert json.loads((target / "state.json").read_text()) == {"step": 3}


def test_metrics_rows_and_truncation(tmp_path):
    run = RunFolder(tmp_path)
    run.log({"a": 1.0, "b": 2.0}, step=0, phase="offline", deployment=0)
    run.log({"a": 3.0}, step=10, phase="online", deployment=1)
    rows = run.read_metrics()
    assert [(r["step"], r["name"], float(r["value"])) for r in rows] == [
        ("0", "a", 1.0),
        ("0", "b", 2.0),
        ("10", "a", 3.0),
    ]
    run.truncate_metrics(lambda r: int(r["step"]) <= 5)
    assert len(run.read_metrics()) == 2


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        RunFolder(tmp_path).read_config()


def test_a_crash_between_the_two_renames_is_recovered(tmp_path, monkeypatch):
    """The swap renames target -> target.old, then target.tmp -> target: a crash in between loses nothing."""
    target = tmp_path / "ckpt"
    atomic_checkpoint(target, lambda p: (p / "state.json").write_text(json.dumps({"step": 1})))
    real_replace = os.replace
    calls = {"n": 0}

    def crash_on_second(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed between the renames")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        atomic_checkpoint(target, lambda p: (p / "state.json").write_text(json.dumps({"step": 2})))
    monkeypatch.setattr(os, "replace", real_replace)
    assert not target.exists()  # what the crash left: ckpt.old (step 1) and ckpt.tmp (step 2)
    run = RunFolder(tmp_path)
    run.checkpoint_dir = target
    assert run.has_checkpoint()
    assert json.loads((target / "state.json").read_text()) == {"step": 2}  # the newer one


def _step(folder):
    return json.loads((folder / "state.json").read_text())["step"]


def _write(step):
    return lambda p: (p / "state.json").write_text(json.dumps({"step": step}))


def test_the_previous_checkpoint_is_kept_and_a_failed_verification_changes_nothing(tmp_path):
    target = tmp_path / "ckpt"
    atomic_checkpoint(target, _write(1))
    assert not (tmp_path / "ckpt.prev").exists()
    atomic_checkpoint(target, _write(2), verify=_step)
    assert _step(target) == 2 and _step(tmp_path / "ckpt.prev") == 1

    def broken(path):
        raise ValueError(f"{path / 'state.json'} is short")

    with pytest.raises(ValueError, match="is short"):
        atomic_checkpoint(target, _write(3), verify=broken)
    assert _step(target) == 2 and _step(tmp_path / "ckpt.prev") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "ckpt.prev"]


@pytest.mark.parametrize("crash_at", range(1, 8))
def test_a_crash_at_any_step_of_the_swap_leaves_a_readable_checkpoint(
    tmp_path, monkeypatch, crash_at
):
    """Every rename of the swap (and of the removals, done by renames too) may be the last one: the newest or the
    previous checkpoint is read back, never nothing."""
    target = tmp_path / "ckpt"
    atomic_checkpoint(target, _write(1))
    atomic_checkpoint(target, _write(2))
    real_replace = os.replace
    calls = {"n": 0}

    def crash(src, dst):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    try:
        atomic_checkpoint(target, _write(3))
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(os, "replace", real_replace)
    assert load_checkpoint(target, _step) in (2, 3)
    assert _step(tmp_path / "ckpt.prev") in (1, 2)
    atomic_checkpoint(target, _write(4))  # and the next checkpoint is written as usual
    assert _step(target) == 4 and _step(tmp_path / "ckpt.prev") in (2, 3)


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    target = tmp_path / "ckpt"
    assert load_checkpoint(target, _step) is None  # nothing yet
    atomic_checkpoint(target, _write(1))
    atomic_checkpoint(target, _write(2))
    (target / "state.json").write_text("{trunc")
    assert load_checkpoint(target, _step) == 1
    assert "is unreadable (JSONDecodeError" in caplog.text and "previous one" in caplog.text
    assert _step(target) == 1 and not (tmp_path / "ckpt.prev").exists()
    (target / "state.json").write_text("{trunc")
    with pytest.raises(
        CheckpointError, match=r"there is no previous checkpoint\). Start the run again"
    ):
        load_checkpoint(target, _step)


def test_the_folder_is_created_by_the_first_write_and_locked_while_written(tmp_path):
    run = RunFolder(tmp_path / "runs" / "a")
    assert not run.path.exists() and run.read_metrics() == []
    with run.lock():
        assert (run.path / "LOCK").read_text().startswith(f"PID {os.getpid()} on host ")
        with pytest.raises(RunLockedError, match=f"{run.path} is being written by another process"):
            with RunFolder(run.path).lock():
                pass
        run.log({"a": 1.0}, step=0, phase="offline", deployment=0)
    assert sorted(p.name for p in run.path.iterdir()) == ["metrics.csv"]  # LOCK is gone
    with RunFolder(tmp_path / "runs" / "b").lock():
        pass
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a"]  # b wrote nothing
