"""Behaviour policies of the medium datasets: experts, references, determinism, checkpoints, medium-replay."""

from __future__ import annotations

import json

import pytest
import torch
from tensordict import TensorDict

from torchrl_otc.cli import main
from torchrl_otc.data.datasets import build_dataset as data_build_dataset
from torchrl_otc.data.datasets.behaviour import (
    ASSETS_DIR,
    BehaviourConfig,
    load_behaviour_policy,
    reference_returns,
    save_behaviour_policy,
    scripted_expert,
)
from torchrl_otc.envs.registry import get_task
from torchrl_otc.trainers.behaviour import build_dataset, train_behaviour_policy


def _tiny(seed: int = 0) -> BehaviourConfig:
    return BehaviourConfig.for_task(
        "nav/nonstationary",
        seed=seed,
        max_transitions=1_536,
        start_transitions=512,
        eval_every=512,
        eval_episodes=16,
        target_fraction=10.0,  # never reached: run to max_transitions
    )


def test_training_is_deterministic_and_independent_of_given_references():
    ref = reference_returns("nav/nonstationary", episodes=32)
    a = train_behaviour_policy("nav/nonstationary", _tiny(), progress=False)
    b = train_behaviour_policy("nav/nonstationary", _tiny(), progress=False, reference=a.reference)
    c = train_behaviour_policy("nav/nonstationary", _tiny(seed=1), progress=False, reference=ref)
    for pa, pb in zip(a.actor.parameters(), b.actor.parameters()):
        assert torch.equal(pa, pb)
    assert torch.equal(a.replay["observation"], b.replay["observation"])
    assert not torch.equal(a.replay["observation"], c.replay["observation"])
    assert len(a.replay) == 1_536 and not a.reached
    assert [h["transitions"] for h in a.history] == [512, 1024, 1536]
    # the replay is the training run's data in order: within an env's episode, s' of one step is s of the next
    # one (16 envs step together, so rows 16 apart belong to the same env)
    r = a.replay
    same = r["episode"][16:] == r["episode"][:-16]
    assert torch.equal(r["next", "observation"][:-16][same], r["observation"][16:][same])


def test_checkpoint_roundtrip(tmp_path):
    res = train_behaviour_policy("nav/nonstationary", _tiny(), progress=False)
    path = save_behaviour_policy("nav/nonstationary", res, tmp_path / "b.pt", command="otc test")
    actor, record = load_behaviour_policy("nav/nonstationary", path)
    obs = torch.randn(5, 4)
    assert torch.equal(actor(obs), res.actor(obs))
    assert record["command"] == "otc test" and record["final"] == res.final
    index = json.loads((tmp_path / "behaviour_policies.json").read_text())
    assert index["nav/nonstationary"]["file"] == "b.pt"
    assert "| nav/nonstationary |" in (tmp_path / "README.md").read_text()
    with pytest.raises(ValueError, match="not 'mpe/navigation-3'"):
        load_behaviour_policy("mpe/navigation-3", path)
    with pytest.raises(FileNotFoundError, match="otc data train-behaviour mpe/navigation-3"):
        load_behaviour_policy("mpe/navigation-3", tmp_path / "missing.pt")


def test_navigation_expert_takes_the_best_assignment():
    pytest.importorskip("vmas")
    agents = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    landmarks = [
        [0.0, 1.05],
        [0.5, 0.0],
        [1.0, -0.05],
    ]  # best: agent 0 -> 1, agent 1 -> 2, agent 2 -> 0
    s = torch.tensor([sum(agents + landmarks, [])])
    a = scripted_expert("mpe/navigation-3")(TensorDict({"observation": s}, [1]))["action"].view(
        3, 2
    )
    torch.testing.assert_close(a, torch.tensor([[0.1, 0.0], [0.0, -0.05], [0.0, 0.05]]))


def test_references_order_random_below_expert():
    pytest.importorskip("vmas")
    for task in ("mpe/navigation-3", "mpe/predator-prey", "nav/nonstationary"):
        ref = reference_returns(task, episodes=64)
        assert ref["expert"] > ref["random"] + 1.0, (task, ref)
    assert reference_returns("mamujoco/hopper-3x1")["expert"] == pytest.approx(3234.3)


def test_shipped_checkpoints_reach_about_a_third():
    index = json.loads((ASSETS_DIR / "behaviour_policies.json").read_text())
    assert {"nav/nonstationary", "mpe/navigation-3", "mpe/predator-prey"} <= set(index)
    for task, entry in index.items():
        actor, record = load_behaviour_policy(task)
        assert record["reached_target"], task
        assert 0.3 <= record["final"]["normalised_score"] <= 0.5, task
        assert (ASSETS_DIR / entry["file"]).stat().st_size < 400_000, task
        spec = get_task(task)
        assert (actor.obs_dim, actor.action_dim) == (spec.state_dim, spec.action_dim), task
        assert record["command"].startswith("otc") and "train-behaviour" in record["command"], task


def test_rerun_repeats_the_shipped_run_number_for_number():
    """The trainer (TD3's rules shared with TD3+BC) repeats the shipped nav policy's recorded run: its first
    evaluations after training starts give the recorded returns (same arithmetic, same draws; one CPU kind)."""
    task = "nav/nonstationary"
    _, record = load_behaviour_policy(task)
    trained = [h for h in record["history"] if h["updates"] > 0][:4]
    cfg = {**record["config"], "hidden": tuple(record["config"]["hidden"])}
    cfg.update(max_transitions=trained[-1]["transitions"], target_fraction=float("inf"))
    result = train_behaviour_policy(
        task, BehaviourConfig(**cfg), progress=False, reference=record["reference"]
    )
    assert result.history[-len(trained) :] == trained


@pytest.mark.slow
def test_medium_replay_reruns_the_recorded_training():
    """Re-running the recorded training (what medium-replay does) stops where the shipped policy's run stopped."""
    pytest.importorskip("vmas")
    task = "mpe/navigation-3"
    _, record = load_behaviour_policy(task)
    ds = build_dataset(task, "medium-replay", 10**7, seed=0, progress=False)
    assert len(ds) == record["transitions"]
    stats = ds.metadata["stats"]
    assert stats["rerun_final"]["transitions"] == record["final"]["transitions"]
    assert stats["recorded_final"] == record["final"]  # both runs' ends are kept with the data


def test_medium_replay_is_the_replay_of_the_recorded_run(tmp_path):
    """A tiny recorded run: medium-replay re-runs it to the recorded stop and holds that run's replay, row for row."""
    pytest.importorskip("vmas")
    task = "mpe/navigation-3"
    cfg = BehaviourConfig.for_task(
        task,
        max_transitions=1024,
        start_transitions=256,
        eval_every=256,
        eval_episodes=2,
        target_fraction=-10.0,  # reached at the first evaluation after the random start
    )
    reference = {"random": -50.0, "expert": -8.0, "source": "test"}
    result = train_behaviour_policy(task, cfg, progress=False, reference=reference)
    assert result.reached and len(result.replay) < 1024
    path = save_behaviour_policy(
        task, result, tmp_path / "policy.pt", command="otc data train-behaviour"
    )
    ds = build_dataset(task, "medium-replay", 10**6, seed=0, checkpoint=path, progress=False)
    assert len(ds) == len(result.replay)
    for key in ("observation", "action", ("next", "observation"), ("next", "reward")):
        assert torch.equal(ds.data.get(key), result.replay.get(key)), key
    # the data layer's builder needs the trainer for medium-replay (data does not import trainers)
    with pytest.raises(ValueError, match="torchrl_otc.trainers.behaviour.build_dataset"):
        data_build_dataset(task, "medium-replay", 10, checkpoint=path, progress=False)
    ds = data_build_dataset(
        task,
        "medium-replay",
        10**6,
        checkpoint=path,
        progress=False,
        train_behaviour=train_behaviour_policy,
    )
    assert torch.equal(ds.data.get("observation"), result.replay.get("observation"))


def test_train_behaviour_command_takes_and_records_other_settings(tmp_path, capsys, caplog):
    out = tmp_path / "policy.pt"
    args = ["data", "train-behaviour", "nav/nonstationary", "--max-transitions", "1536"]
    args += [
        "--set",
        "start_transitions=512",
        "--set",
        "eval_every=512",
        "--set",
        "eval_episodes=16",
    ]
    args += ["--set", "target_fraction=10.0", "--set", "hidden=[32, 32]", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    assert str(out) in capsys.readouterr().out
    _, record = load_behaviour_policy("nav/nonstationary", out)
    cfg = record["config"]
    assert list(cfg["hidden"]) == [32, 32] and cfg["start_transitions"] == 512
    assert cfg["eval_every"] == 512 and record["transitions"] == 1536
    # the recorded command reproduces the run, settings included (medium-replay re-runs the record's config)
    assert "--set 'hidden=[32, 32]'" in record["command"]
    bad = ["data", "train-behaviour", "nav/nonstationary", "--set", "hiden=[32]", "--out", str(out)]
    assert main(bad) != 0
    assert "--set takes KEY=VALUE with a field of BehaviourConfig; got 'hiden=[32]'" in caplog.text
