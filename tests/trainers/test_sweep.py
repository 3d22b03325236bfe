"""Sweeps: recipes expand to valid configs, a smoke sweep runs, finished runs are skipped, reports are written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from torchrl_otc.report import load_run
from torchrl_otc.trainers.sweep import Recipe, expand_recipe, load_recipe, run_sweep

RECIPES = sorted((Path(__file__).parents[2] / "examples" / "recipes").glob("*.yaml"))


def test_the_paper_has_a_recipe_per_experiment():
    papers = {load_recipe(p).paper for p in RECIPES}
    for experiment in ("Table 1", "Figure 4", "Figures 5 and 8", "Figure 6 (a-c)", "Figure 7"):
        assert experiment in papers, experiment
    assert any(p.startswith("Figure 6d") for p in papers)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_size_of_every_recipe_expands_to_valid_configs(path, tmp_path):
    recipe = load_recipe(path)
    assert set(recipe.sizes) == {"smoke", "cpu", "paper"}, recipe.sizes
    sizes = {}
    for size in recipe.sizes:
        configs = expand_recipe(recipe, size, runs_root=tmp_path)
        names = [c.run.run_name for c in configs]
        assert len(names) == len(set(names)), "two runs of one size share a folder"
        assert all(Path(c.run.runs_root) == tmp_path / f"{recipe.name}-{size}" for c in configs)
        sizes[size] = configs
    assert len(sizes["smoke"]) <= len(sizes["cpu"]) <= len(sizes["paper"])
    paper = sizes["paper"][0]
    assert paper.data.size == 1_000_000 and paper.run.deployments == 10  # section 4.1
    assert paper.run.steps_per_deployment is None and paper.run.updates_per_deployment is None
    assert paper.resolved_steps_per_deployment == 10_000
    assert all(c.resolved_updates_per_deployment in (2000, 4000) for c in sizes["paper"])  # Table 3


def test_smoke_sweep_runs_skips_finished_runs_and_reports(tmp_path, capsys):
    from torchrl_otc.cli import main

    recipe = RECIPES[[p.stem for p in RECIPES].index("figure6_mpe_and_nonstationary")]
    args = ["sweep", str(recipe), f"cache_dir={tmp_path / 'cache'}", "--size", "smoke"]
    args += ["--runs-root", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    assert "4 runs (4 run now, 0 already finished)" in capsys.readouterr().out
    folder = tmp_path / "figure6_mpe_and_nonstationary-smoke"
    runs = sorted(p.parent for p in folder.glob("*/DONE"))
    assert [p.name for p in runs] == [
        "nav_nonstationary-random-td3bc-base-seed0",
        "nav_nonstationary-random-td3bc-online-only-seed0",
        "nav_nonstationary-random-td3bc-otc-embedding-seed0",
        "nav_nonstationary-random-td3bc-otc-feature-seed0",
    ]
    assert {load_run(p).label for p in runs} == {
        "uniform + td3bc",
        "online-only + td3bc",
        "otc-embedding + td3bc",
        "otc-feature + td3bc",
    }
    report = (folder / "report" / "report.md").read_text()
    assert "share of online rows" in report and "with the current dynamics" in report
    online_only = load_run(folder / "nav_nonstationary-random-td3bc-online-only-seed0")
    assert online_only.online_mean("/online_share") == 1.0
    assert (
        "| random | nav/nonstationary | 1.000 ± 0.000 |" in report
    )  # online-only: the first column
    # A second call finds every run finished and runs nothing.
    assert main(args) == 0
    assert "4 runs (0 run now, 4 already finished)" in capsys.readouterr().out


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_runs_at_smoke_size_and_reports_finite_numbers(path, tmp_path):
    import math

    from torchrl_otc.report import write_report

    recipe = load_recipe(path)
    configs = expand_recipe(recipe, "smoke", runs_root=tmp_path, cache_dir=str(tmp_path / "cache"))
    results = run_sweep(configs, progress=False)
    assert [r["skipped"] for r in results] == [False] * len(configs)
    runs = [load_run(r["run_dir"]) for r in results]
    for run in runs:
        assert sorted(run.returns) == list(range(run.config["deployments"] + 1))
        assert all(math.isfinite(float(r["value"])) for r in run.rows), run.path
    report = write_report([tmp_path / f"{recipe.name}-smoke"], tmp_path / "report").read_text()
    section = report.split("## Team return")[1].split("##")[0]
    rows = [
        line for line in section.splitlines() if line.startswith("| ") and "dataset" not in line
    ]
    expected = {(run.config["dataset"], run.config["task"]) for run in runs}
    assert len(rows) == len(expected)
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")][2:]
        assert len(cells) == len({run.label for run in runs})
        assert all("→" in c and "nan" not in c for c in cells), line


def test_an_interrupted_sweep_resumes_its_run(tmp_path, monkeypatch):
    recipe = Recipe(
        "mini",
        base={"task": "nav/nonstationary", "cache_dir": str(tmp_path / "cache")},
        variants=[{"label": "otc", "strategy": "otc"}],
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
    (cfg,) = expand_recipe(recipe, "smoke", runs_root=tmp_path)
    from torchrl_otc.trainers.tuning import OnlineTuner

    original = OnlineTuner._online_phase

    def killed(self):
        raise KeyboardInterrupt("killed after offline training")

    monkeypatch.setattr(OnlineTuner, "_online_phase", killed)
    with pytest.raises(KeyboardInterrupt):
        run_sweep([cfg], progress=False)
    monkeypatch.setattr(OnlineTuner, "_online_phase", original)
    (result,) = run_sweep([cfg], progress=False)
    assert not result["skipped"] and sorted(result["returns"]) == [0, 1, 2]
    run = load_run(result["run_dir"])
    offline_rows = [r for r in run.rows if r["phase"] == "offline" and "loss" in r["name"]]
    steps = [int(r["step"]) for r in offline_rows if r["name"] == "agent0/loss_qvalue"]
    assert steps == sorted(set(steps))  # the offline phase was not run twice


def test_a_changed_recipe_does_not_resume_an_old_run(tmp_path):
    recipe = Recipe(
        "mini",
        base={"task": "nav/nonstationary", "cache_dir": str(tmp_path / "cache")},
        sizes={
            "smoke": {
                "dataset_size": 500,
                "offline_updates": 2,
                "deployments": 1,
                "steps_per_deployment": 20,
                "updates_per_deployment": 2,
                "eval_episodes": 1,
                "num_candidates": 16,
                "num_online": 10,
            }
        },
    )
    run_sweep(expand_recipe(recipe, "smoke", runs_root=tmp_path), progress=False)
    recipe.sizes["smoke"]["updates_per_deployment"] = 3
    with pytest.raises(
        ValueError, match=r"another configuration \(fields \['updates_per_deployment'\]"
    ):
        run_sweep(expand_recipe(recipe, "smoke", runs_root=tmp_path), progress=False)


def test_bad_recipes_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="unknown config fields \\['lr'\\] in base"):
        Recipe("r", base={"lr": 1.0})
    with pytest.raises(ValueError, match="every variant needs a label"):
        Recipe("r", variants=[{"strategy": "otc"}])
    with pytest.raises(ValueError, match="unknown sizes \\['huge'\\]"):
        Recipe("r", sizes={"huge": {}})
    with pytest.raises(ValueError, match="has no size 'cpu'"):
        expand_recipe(Recipe("r", sizes={"smoke": {}}), "cpu")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grids: {}\n")
    with pytest.raises(ValueError, match="unknown recipe keys \\['grids'\\]"):
        load_recipe(bad)
    with pytest.raises(FileNotFoundError, match="examples/recipes"):
        load_recipe(tmp_path / "missing.yaml")


def test_ray_backend_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ImportError, match="pip install 'ray"):
        run_sweep([], backend="ray")
    with pytest.raises(ValueError, match="Unknown backend"):
        run_sweep([], backend="slurm")


def _mini_recipe(tmp_path: Path, **base) -> Recipe:
    return Recipe(
        "mini",
        base={"task": "nav/nonstationary", "cache_dir": str(tmp_path / "cache"), **base},
        grid={"seed": [0, 1]},
        variants=[
            {"label": "uniform", "strategy": "uniform"},
            {"label": "otc", "strategy": "otc"},
            {"label": "online-only", "strategy": "online-only"},
        ],
        sizes={
            "smoke": {
                "dataset_size": 500,
                "offline_updates": 4,
                "deployments": 1,
                "steps_per_deployment": 20,
                "updates_per_deployment": 4,
                "eval_episodes": 1,
                "num_candidates": 16,
                "num_online": 10,
                "variants": ["uniform", "otc"],
            }
        },
    )


def test_a_size_may_keep_some_variants():
    configs = expand_recipe(_mini_recipe(Path("/tmp")), "smoke", runs_root="runs")
    assert [(c.run.seed, c.sampler.name) for c in configs] == [
        (0, "uniform"),
        (0, "otc"),
        (1, "uniform"),
        (1, "otc"),
    ]
    with pytest.raises(
        ValueError, match="names unknown variants \\['oct'\\]; the recipe's variants"
    ):
        Recipe("r", variants=[{"label": "otc"}], sizes={"cpu": {"variants": ["oct"]}})
    with pytest.raises(ValueError, match="give a non-empty list of variant labels"):
        Recipe("r", variants=[{"label": "otc"}], sizes={"cpu": {"variants": "otc"}})


def test_workers_run_the_grid_side_by_side_as_one_process_would(tmp_path):
    sequential = run_sweep(
        expand_recipe(_mini_recipe(tmp_path / "a"), "smoke", runs_root=tmp_path / "a"),
        progress=False,
    )
    configs = expand_recipe(_mini_recipe(tmp_path / "b"), "smoke", runs_root=tmp_path / "b")
    parallel = run_sweep(configs, progress=False, workers=2)
    # in the configs' order, every run done, with the returns of the sequential sweep (same seeds; the two
    # processes may differ only by floating-point summation order)
    assert [Path(r["run_dir"]).name for r in parallel] == [c.run.run_name for c in configs]
    assert [Path(r["run_dir"]).name for r in parallel] == [
        Path(r["run_dir"]).name for r in sequential
    ]
    for seq, par in zip(sequential, parallel):
        assert not par["skipped"] and sorted(par["returns"]) == [0, 1]
        assert par["returns"] == pytest.approx(seq["returns"], rel=1e-4, abs=1e-4)
    # one dataset and one set of offline agents per seed: the two variants of a seed shared them
    assert sorted(p.name for p in (tmp_path / "b" / "cache" / "datasets").iterdir()) == [
        "nav_nonstationary-random-500-seed0",
        "nav_nonstationary-random-500-seed1",
    ]
    assert len(list((tmp_path / "b" / "cache" / "offline").glob("*/COMPLETE"))) == 2
    assert all(r["skipped"] for r in run_sweep(configs, progress=False, workers=2))


def _good_and_bad(tmp_path: Path) -> tuple[list, list]:
    """Seed 0's two runs of the mini recipe, and the same two reading a dataset folder that does not exist."""
    good = expand_recipe(_mini_recipe(tmp_path), "smoke", runs_root=tmp_path)[:2]
    bad = expand_recipe(
        _mini_recipe(tmp_path, dataset_path=str(tmp_path / "no-such-dataset")),
        "smoke",
        runs_root=tmp_path / "bad",
    )[:2]
    return good, bad


def test_a_failing_run_stops_its_group_only_and_is_named(tmp_path):
    good, bad = _good_and_bad(tmp_path)
    with pytest.raises(
        RuntimeError, match="1 run\\(s\\) failed: .*bad/mini-smoke/.*uniform-seed0"
    ) as err:
        run_sweep([*bad, *good], progress=False, workers=2, batched=False)
    assert "1 later run(s) sharing their data were not started" in str(err.value)
    assert "metadata.json is missing" in str(err.value) and "run the sweep again" in str(err.value)
    # the other group finished; the failed group's second run was not started
    assert all((Path(c.run.runs_root) / c.run.run_name / "DONE").exists() for c in good)
    assert not (Path(bad[1].run.runs_root) / bad[1].run.run_name).exists()


def test_a_failing_lockstep_group_in_a_worker_is_named_and_the_other_groups_finish(tmp_path):
    """Batched (the default), each seed's runs are one group in a worker process: the failed group's runs are
    named (the worker sends the group's error back whole), the other group finishes."""
    good, bad = _good_and_bad(tmp_path)
    with pytest.raises(RuntimeError, match="2 run\\(s\\) failed: .*bad/mini-smoke/") as err:
        run_sweep([*bad, *good], progress=False, workers=2)
    assert "metadata.json is missing" in str(err.value)
    assert "0 later run(s) sharing their data were not started" in str(err.value)
    assert all((Path(c.run.runs_root) / c.run.run_name / "DONE").exists() for c in good)


def test_bad_worker_counts_are_refused():
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        run_sweep([], workers=0)
    with pytest.raises(ValueError, match="workers is for backend='local'"):
        run_sweep([], backend="ray", workers=2)
