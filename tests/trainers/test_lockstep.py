"""Lockstep runs: the seeds of a grid cell in one process, their updates batched, each run its own folder.

Batched numbers equal separate ones to float tolerance, not bit for bit: a batched update computes each learner's
losses with stacked ``bmm`` calls instead of one matmul per learner, which sums in another order (about 1e-7
relative on one update; training carries such differences along, as any change of rounding does). Sampling with
the feature or embedding distance does not depend on the networks, so the runs stay within about 1e-5 at these
sizes; d_q's matching reads the critic, so rounding may flip a match and the runs drift apart (not tested here).
A learner's numbers do not depend on the other learners of its batch (bit for bit), so a group killed during its
updates and a group whose runs resume from different stages (killed while one run collects or evaluates: the runs
behind catch up in a smaller batch) both resume to the uninterrupted lockstep run's numbers exactly.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from test_tuning import TINY  # the tiny runs of test_tuning.py (same folder)

from torchrl_otc.configs.tune import TuneConfig, parse_overrides
from torchrl_otc.report import load_run
from torchrl_otc.trainers import lockstep as lockstep_module
from torchrl_otc.trainers.batched import BATCHED_ALGORITHMS
from torchrl_otc.trainers.checkpointing import read_checkpoint
from torchrl_otc.trainers.lockstep import (
    LockstepError,
    LockstepTuners,
    batchable,
    lockstep_mode,
    started_batched,
)
from torchrl_otc.trainers.sweep import Recipe, _queues, expand_recipe, lockstep_units, run_sweep
from torchrl_otc.trainers.tuning import DivergenceError, OnlineTuner

SEEDS = (0, 1, 2)
TIMINGS = ("/sample_ms", "/update_ms")


def config(root: Path, *overrides: str):
    cfg = parse_overrides([*TINY, *overrides])
    cfg.run.runs_root, cfg.data.cache_dir = str(root / "runs"), str(root / "cache")
    return cfg


def configs(root: Path, *overrides: str):
    return [config(root, f"seed={seed}", *overrides) for seed in SEEDS]


def lockstep(root: Path, *overrides: str) -> list[dict]:
    return LockstepTuners([OnlineTuner(c, progress=False) for c in configs(root, *overrides)]).run()


def rows(run_dir) -> list[tuple[str, str, str, str, str]]:
    return [
        (r["step"], r["phase"], r["deployment"], r["name"], r["value"])
        for r in load_run(run_dir).rows
        if not r["name"].endswith(TIMINGS)
    ]


@pytest.mark.parametrize(
    "overrides",
    [("algo=td3bc",), ("algo=bcq", "task=coord/partner-modes"), ("distance=embedding",)],
    ids=["td3bc-nav", "bcq-coord", "td3bc-embedding"],
)
def test_lockstep_runs_equal_separate_runs_to_float_tolerance(tmp_path, overrides):
    separate = [OnlineTuner(c, progress=False).run() for c in configs(tmp_path / "a", *overrides)]
    batched = lockstep(tmp_path / "b", *overrides)
    for a, b in zip(separate, batched):
        a_dir, b_dir = Path(a["run_dir"]), Path(b["run_dir"])
        assert a_dir.name == b_dir.name
        assert sorted(p.name for p in a_dir.iterdir()) == sorted(p.name for p in b_dir.iterdir())
        done_a, done_b = (json.loads((d / "DONE").read_text()) for d in (a_dir, b_dir))
        assert done_b == pytest.approx(done_a, rel=1e-4, abs=1e-6)
        config_a = (a_dir / "config.yaml").read_text().replace(str(tmp_path / "a"), "ROOT")
        assert config_a == (b_dir / "config.yaml").read_text().replace(str(tmp_path / "b"), "ROOT")
        meta = json.loads((b_dir / "meta.json").read_text())
        assert meta["batched"] == {"runs": [f"{a_dir.name[:-1]}{s}" for s in SEEDS]}
        assert "batched" not in json.loads((a_dir / "meta.json").read_text())
        want, got = rows(a_dir), rows(b_dir)
        assert [r[:4] for r in got] == [r[:4] for r in want]  # the same rows, in the same order
        for w, g in zip(want, got):
            assert math.isclose(float(g[4]), float(w[4]), rel_tol=1e-4, abs_tol=1e-6), (w, g)
        assert b["returns"] == pytest.approx(a["returns"], rel=1e-4, abs=1e-6)
    # batched offline agents are cached apart from separate ones
    cache = tmp_path / "b" / "cache" / "offline"
    assert sorted(p.name.endswith("-batched") for p in cache.iterdir()) == [True] * len(SEEDS)


@pytest.mark.parametrize("algo", ["td3bc", "bcq"])
def test_a_run_batched_alone_equals_the_same_run_in_a_group(tmp_path, algo):
    """Seed 1 in a group of three and seed 1 batched alone (``otc tune --batched``): the same metrics, as text."""
    grouped = lockstep(tmp_path / "a", f"algo={algo}")
    alone = LockstepTuners(
        [OnlineTuner(config(tmp_path / "b", "seed=1", f"algo={algo}"), progress=False)]
    ).run()
    a, b = grouped[1]["run_dir"], alone[0]["run_dir"]
    assert rows(a) == rows(b)
    assert (Path(a) / "DONE").read_text() == (Path(b) / "DONE").read_text()


def _killed_then_resumed(tmp_path, monkeypatch, where: str, *overrides: str):
    """Lockstep runs killed at ``where`` and resumed in lockstep; returns (uninterrupted, resumed) run folders.

    ``"update"``: update 13 of deployment 2's tuning (every run's checkpoint at update 8); ``"collection"``: the
    second run's collection of deployment 2 (the first run has collected it, the third is still at deployment 1's
    last checkpoint, so the group resumes at three stages).
    """
    reference = lockstep(tmp_path / "a", *overrides)
    tuners = [OnlineTuner(c, progress=False) for c in configs(tmp_path / "b", *overrides)]
    if where == "update":
        original = lockstep_module._Group.step

        def step(self, **kwargs):
            if all(t._stage["deployment"] == 2 and t._stage["update"] >= 13 for t in tuners):
                raise KeyboardInterrupt("killed in an update")
            return original(self, **kwargs)

        monkeypatch.setattr(lockstep_module._Group, "step", step)
    else:
        victim = tuners[1]
        original = victim._collect

        def collect(deployment, steps, explore_agent=None):
            if deployment == 2:
                raise KeyboardInterrupt("killed while collecting")
            return original(deployment, steps, explore_agent)

        monkeypatch.setattr(victim, "_collect", collect)
    with pytest.raises(KeyboardInterrupt):
        LockstepTuners(tuners).run()
    monkeypatch.undo()
    stages = [read_checkpoint(t.folder.checkpoint_dir)["stage"] for t in tuners]
    resumed = LockstepTuners(
        [OnlineTuner.resume(t.folder.path, progress=False) for t in tuners]
    ).run()
    return [r["run_dir"] for r in reference], [r["run_dir"] for r in resumed], stages


@pytest.mark.parametrize(
    "where,algo", [("update", "td3bc"), ("update", "bcq"), ("collection", "td3bc")]
)
def test_resume_in_lockstep_equals_the_uninterrupted_lockstep_run(
    tmp_path, monkeypatch, where, algo
):
    reference, resumed, stages = _killed_then_resumed(tmp_path, monkeypatch, where, f"algo={algo}")
    if where == "update":
        assert stages == [{"stage": "update", "deployment": 2, "update": 8}] * 3
    else:  # three stages: collected, collecting, still tuning for deployment 1
        assert stages == [
            {"stage": "update", "deployment": 2, "update": 0},
            {"stage": "collect", "deployment": 2, "update": 0},
            {"stage": "update", "deployment": 1, "update": 16},
        ]
    # every run resumes to the uninterrupted run's numbers, as text: also the third, which catches up batched
    # alone (a learner's numbers do not depend on the other learners of its batch)
    for a, b in zip(reference, resumed):
        assert rows(a) == rows(b)
        assert (Path(b) / "DONE").read_text() == (Path(a) / "DONE").read_text()


def test_a_failing_run_leaves_the_group_and_the_others_finish(tmp_path, monkeypatch):
    tuners = [OnlineTuner(c, progress=False) for c in configs(tmp_path)]
    original = lockstep_module._Group.step
    victim = tuners[1]

    def step(self, **kwargs):
        metrics = original(self, **kwargs)
        if victim._stage["stage"] == "update":
            for learner, m in zip(self.learners, metrics):
                if learner is victim.agents[0].learner:
                    m["loss_qvalue"] = float("nan")
        return metrics

    monkeypatch.setattr(lockstep_module._Group, "step", step)
    with pytest.raises(
        LockstepError, match=r"1 run\(s\) of a lockstep group failed: .*seed1"
    ) as err:
        LockstepTuners(tuners).run()
    ((name, error),) = err.value.errors
    assert isinstance(error, DivergenceError) and "Agent 0 diverged" in str(error)
    assert [r is None for r in err.value.results] == [False, True, False]
    assert [(t.folder.path / "DONE").exists() for t in tuners] == [True, False, True]


def test_bad_groups_are_refused_in_one_line(tmp_path):
    assert batchable("sac") is not None and batchable("cql") is None
    bcq, td3bc = config(tmp_path, "algo=bcq"), config(tmp_path, "algo=td3bc", "seed=1")
    with pytest.raises(ValueError, match="share one algorithm; got bcq, td3bc"):
        LockstepTuners([OnlineTuner(bcq, progress=False), OnlineTuner(td3bc, progress=False)])
    with pytest.raises(ValueError, match="would write one run folder"):
        LockstepTuners([OnlineTuner(bcq, progress=False), OnlineTuner(bcq, progress=False)])
    with pytest.raises(ValueError, match="at least one tuner"):
        LockstepTuners([])


def _recipe(tmp_path) -> Recipe:
    return Recipe(
        "mini",
        base={"task": "nav/nonstationary", "cache_dir": str(tmp_path / "cache")},
        grid={"seed": [0, 1]},
        variants=[{"label": "otc", "strategy": "otc"}, {"label": "uniform", "strategy": "uniform"}],
        sizes={
            "smoke": {
                "dataset_size": 600,
                "offline_updates": 8,
                "deployments": 2,
                "steps_per_deployment": 40,
                "updates_per_deployment": 8,
                "eval_episodes": 1,
                "num_candidates": 64,
                "num_online": 50,
                "checkpoint_every": 4,
            }
        },
    )


def test_a_batched_sweep_groups_the_seeds_and_strategies_of_a_cell_and_skips_finished_runs(
    tmp_path, monkeypatch
):
    cfgs = expand_recipe(_recipe(tmp_path), "smoke", runs_root=tmp_path)
    payloads = [c.to_dict() for c in cfgs]
    # seeds 0 and 1 of both variants in one group
    assert lockstep_units(payloads) == [[0, 1, 2, 3]]
    answered = []
    original = LockstepTuners._update

    def update(self, slots, members):
        answered.append((members[0].request.phase, len(members)))
        return original(self, slots, members)

    monkeypatch.setattr(LockstepTuners, "_update", update)
    results = run_sweep(cfgs, progress=False, batched=True)
    monkeypatch.undo()
    # each seed's offline agents trained once (by its first strategy's run), then all four runs tuned together
    assert {(phase, n) for phase, n in answered} == {("offline", 2), ("online", 4)}
    assert [r["skipped"] for r in results] == [False] * 4
    for c in cfgs:
        meta = json.loads((Path(c.run.runs_root) / c.run.run_name / "meta.json").read_text())
        assert len(meta["batched"]["runs"]) == 4 and c.run.run_name in meta["batched"]["runs"]
    # the uniform runs loaded the OTC runs' batched offline agents: the same offline rows
    a, b = (load_run(r["run_dir"]) for r in results[:2])
    offline = lambda run: [  # noqa: E731
        (r["step"], r["name"], r["value"])
        for r in run.rows
        if r["phase"] == "offline" and "loss" in r["name"]
    ]
    assert offline(a) and offline(a) == offline(b)
    assert all(r["skipped"] for r in run_sweep(cfgs, progress=False, batched=True))
    # worker processes run the same groups (both seeds' datasets: one queue) with the same numbers
    again = expand_recipe(_recipe(tmp_path), "smoke", runs_root=tmp_path / "workers")
    for x, y in zip(results, run_sweep(again, progress=False, batched=True, workers=2)):
        assert rows(x["run_dir"]) == rows(y["run_dir"])


def test_lockstep_groups_are_cuts_of_consecutive_seeds_with_a_queue_each():
    cfgs = [
        TuneConfig(seed=s, strategy=x).to_dict()
        for s in (3, 0, 2, 1, 4)
        for x in ("otc", "uniform")
    ]
    units = lockstep_units(cfgs, seeds_per_group=2)
    seeds = [sorted({cfgs[i]["run"]["seed"] for i in unit}) for unit in units]
    strategies = [{cfgs[i]["sampler"]["name"] for i in unit} for unit in units]
    assert sorted(map(tuple, seeds)) == [(0, 1), (2, 3), (4,)]
    assert all(s == {"otc", "uniform"} for s in strategies)  # every strategy of its seeds
    assert sorted(i for unit in units for i in unit) == list(range(len(cfgs)))
    # the runs of a seed share a dataset: the groups of one cut of seeds share one worker's queue, so with
    # three cuts three workers are busy
    assert len(_queues(cfgs, units)) == 3
    with pytest.raises(ValueError, match="seeds_per_group must be a positive integer; got 0"):
        lockstep_units(cfgs, seeds_per_group=0)


def test_matched_mixes_are_grouped_apart_from_the_strategies_they_read():
    pairs = [TuneConfig(seed=s, strategy="otc", run_name=f"otc-{s}").to_dict() for s in (0, 1)]
    mixes = [
        TuneConfig(
            seed=s, strategy="mix", mix_fraction="matched", mix_pair=f"otc-{s}", run_name=f"m-{s}"
        ).to_dict()
        for s in (0, 1)
    ]
    uniform = [TuneConfig(seed=s, strategy="uniform").to_dict() for s in (0, 1)]
    assert lockstep_units(pairs + mixes + uniform) == [[0, 1, 4, 5], [2, 3]]


def test_strategies_in_one_group_equal_one_group_per_strategy(tmp_path):
    """A group of two seeds x two strategies (one training each seed's offline agents, the other loading them)
    against a group per strategy: the same metrics, as text."""
    strategies = ("strategy=otc", "strategy=uniform")
    together = LockstepTuners(
        [
            OnlineTuner(
                config(tmp_path / "a", f"seed={seed}", x, f"run_name={x[9:]}{seed}"), progress=False
            )
            for x in strategies
            for seed in (0, 1)
        ]
    ).run()
    apart = []
    for x in strategies:
        apart += LockstepTuners(
            [
                OnlineTuner(
                    config(tmp_path / "b", f"seed={seed}", x, f"run_name={x[9:]}{seed}"),
                    progress=False,
                )
                for seed in (0, 1)
            ]
        ).run()
    for a, b in zip(together, apart):
        assert rows(a["run_dir"]) == rows(b["run_dir"])
        assert (Path(a["run_dir"]) / "DONE").read_text() == (
            Path(b["run_dir"]) / "DONE"
        ).read_text()


def test_runs_that_cannot_batch_run_on_their_own_with_an_info_line(monkeypatch, caplog):
    cfgs = expand_recipe(_recipe(Path("/tmp/unused")), "smoke", runs_root="/tmp/unused")
    monkeypatch.delitem(BATCHED_ALGORITHMS, "td3bc")
    caplog.set_level(logging.INFO, logger="torchrl_otc.trainers.sweep")
    assert lockstep_units([c.to_dict() for c in cfgs]) == [[0], [1], [2], [3]]
    assert "runs on its own, not batched: algorithm 'td3bc' has no batched class" in caplog.text


def test_otc_sweep_and_tune_batch_by_default_and_take_separate(tmp_path, capsys):
    from torchrl_otc.cli import main

    recipe = tmp_path / "mini.yaml"
    spec = _recipe(tmp_path)
    recipe.write_text(
        json.dumps(
            {
                "base": spec.base,
                "grid": spec.grid,
                "variants": spec.variants[:1],
                "sizes": spec.sizes,
            }
        )
    )
    args = ["sweep", str(recipe), "--size", "smoke", "--no-progress"]
    assert main([*args, "--runs-root", str(tmp_path)]) == 0  # batched: the default
    assert "2 runs (2 run now, 0 already finished)" in capsys.readouterr().out
    assert main([*args, "--runs-root", str(tmp_path), "--batched"]) == 0
    assert "2 runs (0 run now, 2 already finished)" in capsys.readouterr().out
    folders = sorted((tmp_path / "mini-smoke").glob("*-seed*"))
    assert all("batched" in json.loads((f / "meta.json").read_text()) for f in folders)
    assert main([*args, "--runs-root", str(tmp_path / "apart"), "--separate"]) == 0
    apart = sorted((tmp_path / "apart" / "mini-smoke").glob("*-seed*"))
    assert len(apart) == 2
    assert not any("batched" in json.loads((f / "meta.json").read_text()) for f in apart)
    with pytest.raises(SystemExit):  # one mode at a time
        main([*args, "--batched", "--separate"])
    tune = ["tune", "--no-progress", "task=nav/nonstationary", "dataset_size=600"]
    tune += [
        "offline_updates=4",
        "deployments=1",
        "steps_per_deployment=40",
        "updates_per_deployment=4",
    ]
    tune += [
        "eval_episodes=1",
        "num_candidates=64",
        "num_online=50",
        f"runs_root={tmp_path / 'tune'}",
    ]
    tune += [f"cache_dir={tmp_path / 'cache'}"]
    assert main([*tune, "run_name=cli"]) == 0  # batched: the default
    meta = json.loads((tmp_path / "tune" / "cli" / "meta.json").read_text())
    assert meta["batched"] == {"runs": ["cli"]}
    assert main([*tune, "run_name=apart", "--separate"]) == 0
    assert "batched" not in json.loads((tmp_path / "tune" / "apart" / "meta.json").read_text())
    assert main(["tune", "--batched", "algo=sac"]) == 2


def test_a_resumed_run_keeps_the_mode_it_started_in(tmp_path, caplog):
    fresh = OnlineTuner(config(tmp_path, "run_name=fresh"), progress=False)
    assert started_batched(fresh.folder) is None
    assert lockstep_mode(fresh) is True and lockstep_mode(fresh, False) is False
    assert lockstep_mode(OnlineTuner(config(tmp_path, "algo=bremen"), progress=False)) is False
    for name, meta, mode in (("apart", {}, False), ("together", {"batched": {"runs": []}}, True)):
        tuner = OnlineTuner(config(tmp_path, f"run_name={name}"), progress=False)
        tuner.folder.path.mkdir(parents=True)
        (tuner.folder.path / "config.yaml").write_text("{}")
        (tuner.folder.path / "meta.json").write_text(json.dumps(meta))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="torchrl_otc.trainers.lockstep"):
            assert [lockstep_mode(tuner, asked) for asked in (None, True, False)] == [mode] * 3
        assert "the mode it started in" in caplog.text
