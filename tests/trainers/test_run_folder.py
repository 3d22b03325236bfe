"""Run folders: metrics rows, crash-safe checkpoints."""

from __future__ import annotations

import json

import pytest

from torchrl_otc.trainers.run import RunFolder, atomic_checkpoint


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
    import os

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
