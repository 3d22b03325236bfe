"""The matched-mix control (strategy=mix) and pinned threads, end to end at tiny sizes."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from test_tuning import TINY, config

from torchrl_otc.cli import main
from torchrl_otc.report import load_run
from torchrl_otc.trainers.sweep import Recipe, expand_recipe, run_sweep
from torchrl_otc.trainers.tuning import OnlineTuner


@pytest.fixture(scope="module")
def otc_pair(tmp_path_factory):
    """A finished OTC run (feature distance) to pair matched mixes with."""
    root = tmp_path_factory.mktemp("pair")
    summary = OnlineTuner(config(root, "strategy=otc", "threads=1"), progress=False).run()
    return root, load_run(summary["run_dir"])


def _matched(root, pair, *extra):
    return config(
        root, "strategy=mix", "mix_fraction=matched", f"mix_pair={pair.path}", "threads=1", *extra
    )


def test_a_matched_mix_draws_its_pairs_online_share_per_deployment(otc_pair):
    root, pair = otc_pair
    run = load_run(OnlineTuner(_matched(root, pair), progress=False).run()["run_dir"])
    assert run.label == "mix-matched-otc-feature + td3bc"
    for k in (1, 2):
        rows = [
            float(r["value"])
            for r in pair.rows
            if r["name"] == "agent0/online_share"
            and r["phase"] == "online"
            and int(r["deployment"]) == k
        ]
        target = statistics.fmean(rows)
        assert run.series("agent0/mix_fraction")[k] == pytest.approx(target)
        # every batch holds round(f * 128) online rows, so the measured share is that, exactly
        assert run.series("agent0/online_share")[k] == pytest.approx(round(target * 128) / 128)
    # the same offline agents as the pair (the tuner's cache): the same offline return
    assert run.returns[0] == pair.returns[0]


def _pair_share(pair, agent, k):
    rows = [
        float(r["value"])
        for r in pair.rows
        if r["name"] == f"agent{agent}/online_share"
        and r["phase"] == "online"
        and int(r["deployment"]) == k
    ]
    return statistics.fmean(rows)


def test_matched_decomposed_otc_draws_its_pairs_online_share_per_deployment(otc_pair):
    root, pair = otc_pair
    cfg = config(
        root, "strategy=otc", "online_fraction=matched", f"mix_pair={pair.path}", "threads=1"
    )
    assert cfg.default_run_name().endswith("-otc-feature-ofmatched-seed0")
    run = load_run(OnlineTuner(cfg, progress=False).run()["run_dir"])
    assert run.label == "otc-feature-ofmatched + td3bc"
    n_agents = len(
        {r["name"].split("/")[0] for r in run.rows if r["name"].endswith("/online_share")}
    )
    for agent in range(n_agents):
        for k in (1, 2):
            target = _pair_share(pair, agent, k)
            # every batch holds round(F * 128) online rows, so the measured share is that, exactly
            assert run.series(f"agent{agent}/online_share")[k] == pytest.approx(
                round(target * 128) / 128
            )
    # the same offline agents as the pair (the tuner's cache): the same offline return
    assert run.returns[0] == pair.returns[0]


def test_matched_decomposed_otc_needs_a_coupled_otc_pair(otc_pair, tmp_path):
    root, pair = otc_pair
    fixed = config(root, "strategy=otc", "online_fraction=0.25", "threads=1")
    decomposed = OnlineTuner(fixed, progress=False).run()["run_dir"]
    cfg = config(
        tmp_path, "strategy=otc", "online_fraction=matched", f"mix_pair={decomposed}", "threads=1"
    )
    for strategy in (
        "otc",
        "mix",
    ):  # neither a matched mix nor matched decomposed OTC pairs with one
        if strategy == "mix":
            cfg = _matched(tmp_path, pair)
            cfg.sampler.mix_pair = decomposed
        with pytest.raises(ValueError, match="must be a coupled OTC run"):
            OnlineTuner(cfg, progress=False)
    cfg = config(
        tmp_path, "strategy=otc", "online_fraction=matched", f"mix_pair={pair.path}", "seed=3"
    )
    with pytest.raises(
        ValueError, match="online_fraction=matched: the paired OTC run .* differs in"
    ):
        OnlineTuner(cfg, progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_fixed_mix_and_the_latest_source(tmp_path):
    for source in ("all", "latest"):
        cfg = config(tmp_path, "strategy=mix", "mix_fraction=0.25", f"mix_source={source}")
        run = load_run(OnlineTuner(cfg, progress=False).run()["run_dir"])
        assert run.series("agent0/online_share")[2] == pytest.approx(32 / 128)
        assert run.series("agent0/mix_fraction") == {1: 0.25, 2: 0.25}


@pytest.mark.parametrize(
    "edit,match",
    [
        (
            lambda pair, cfg: setattr(cfg.sampler, "mix_pair", str(pair.path.parent / "none")),
            "does not exist",
        ),
        (lambda pair, cfg: setattr(cfg.run, "seed", 5), "differs in \\['seed'\\]"),
        (lambda pair, cfg: setattr(cfg.run, "threads", 2), "differs in \\['threads'\\]"),
    ],
)
def test_a_bad_pair_is_refused_before_a_run_folder_exists(otc_pair, tmp_path, edit, match):
    root, pair = otc_pair
    cfg = _matched(root, pair)
    cfg.run.runs_root = str(tmp_path / "runs")
    edit(pair, cfg)
    with pytest.raises(ValueError, match=match):
        OnlineTuner(cfg, progress=False)
    assert not (tmp_path / "runs").exists()


def test_an_unfinished_or_non_otc_pair_is_refused(otc_pair, tmp_path):
    root, pair = otc_pair
    uniform = OnlineTuner(config(tmp_path, "strategy=uniform", "threads=1"), progress=False).run()
    cfg = _matched(tmp_path, pair)
    cfg.sampler.mix_pair = uniform["run_dir"]
    with pytest.raises(ValueError, match="must be an OTC run"):
        OnlineTuner(cfg, progress=False)
    (load_run(uniform["run_dir"]).path / "DONE").unlink()
    with pytest.raises(ValueError, match="has not finished"):
        OnlineTuner(cfg, progress=False)


@pytest.mark.parametrize(
    "bad,message",
    [
        (["strategy=mix", "mix_fraction=1.5"], "strictly between 0 and 1"),
        (["strategy=mix", "mix_fraction=0"], "strictly between 0 and 1"),
        (["strategy=mix", "mix_fraction=matched"], "set mix_pair="),
        (["strategy=mix", "mix_fraction=half"], "a number in \\(0, 1\\) or 'matched'"),
        (["strategy=otc", "online_fraction=matched"], "online_fraction=matched .* set mix_pair="),
        (["strategy=mix", "online_fraction=matched", "mix_pair=x"], "strategy=mix has no offline"),
        (["strategy=mix", "mix_source=newest"], "valid values: all, latest"),
        (["threads=0"], "threads must be an integer >= 1"),
        (["threads=1.5"], "expected int"),
    ],
)
def test_bad_mix_and_thread_settings_exit_2_with_one_line_and_no_run_folder(
    tmp_path, caplog, bad, message
):
    overrides = [*TINY, f"runs_root={tmp_path / 'runs'}", f"cache_dir={tmp_path / 'cache'}", *bad]
    assert main(["tune", "--no-progress", *overrides]) == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "Traceback" not in caplog.text
    assert __import__("re").search(message, errors[0].getMessage())
    assert not (tmp_path / "runs").exists()


def test_threads_are_pinned_and_recorded(tmp_path):
    before = torch.get_num_threads()
    try:
        summary = OnlineTuner(
            config(tmp_path, "strategy=uniform", "threads=1"), progress=False
        ).run()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    meta = json.loads((load_run(summary["run_dir"]).path / "meta.json").read_text())
    assert meta["threads"] == 1
    for key in ("cpu", "blas", "cpu_capability", "torch", "torchrl", "tensordict", "git_revision"):
        assert key in meta, key
    # offline agents trained with another thread count are not shared
    assert (
        config(tmp_path, "threads=1").offline_key() != config(tmp_path, "threads=2").offline_key()
    )


def _recipe(**sizes) -> Recipe:
    smoke = {
        "dataset_size": 600,
        "offline_updates": 4,
        "deployments": 1,
        "steps_per_deployment": 40,
        "updates_per_deployment": 4,
        "eval_episodes": 1,
        "num_candidates": 64,
        "num_online": 50,
        **sizes,
    }
    return Recipe(
        "mix",
        base={"task": "nav/nonstationary"},
        grid={"seed": [0, 1]},
        # the matched mix comes first in the recipe: the sweep still runs its pair before it
        variants=[
            {"label": "matched", "strategy": "mix", "mix_fraction": "matched", "mix_pair": "otc"},
            {"label": "otc", "strategy": "otc"},
        ],
        sizes={"smoke": smoke},
    )


def test_a_sweep_runs_the_pair_first_and_pins_one_thread(tmp_path):
    configs = expand_recipe(_recipe(cache_dir=str(tmp_path / "cache")), "smoke", runs_root=tmp_path)
    assert [c.run.threads for c in configs] == [1] * 4
    assert configs[0].sampler.mix_pair == str(
        tmp_path / "mix-smoke" / "nav_nonstationary-random-td3bc-otc-seed0"
    )
    out = run_sweep(configs, progress=False)
    assert [r["run_dir"] for r in out] == [
        str(tmp_path / "mix-smoke" / c.run.run_name) for c in configs
    ]
    assert all(not r["skipped"] for r in out)


def test_a_matched_mix_without_its_pair_in_the_preset_is_a_clear_error():
    recipe = _recipe(variants=["matched"])
    with pytest.raises(ValueError, match="variant 'otc', which is not among the variants run"):
        expand_recipe(recipe, "smoke", runs_root="runs")
    with pytest.raises(ValueError, match="no variants \\['nope'\\] to run"):
        expand_recipe(_recipe(), "smoke", only=["matched", "nope"])
    # --variants: the same runs as in the whole preset, a matched mix right after its pair
    whole = expand_recipe(_recipe(), "smoke", runs_root="runs")
    part = expand_recipe(_recipe(), "smoke", runs_root="runs", only=["otc", "matched"])
    assert [c.run.run_name for c in part] == [c.run.run_name for c in whole]
    recipe.variants[0]["mix_pair"] = "matched"
    with pytest.raises(ValueError, match="pair of a matched mix is an OTC variant"):
        expand_recipe(recipe, "smoke", runs_root="runs")


def test_a_sweep_orders_matched_decomposed_otc_after_its_coupled_pair(tmp_path, monkeypatch):
    recipe = _recipe()
    recipe.variants.insert(
        0,
        {
            "label": "dec",
            "strategy": "otc",
            "distance": "value",
            "online_fraction": "matched",
            "mix_pair": "otc",
        },
    )
    configs = expand_recipe(recipe, "smoke", runs_root=tmp_path)
    dec = [c for c in configs if c.sampler.online_fraction == "matched"]
    assert [c.sampler.mix_pair for c in dec] == [
        str(tmp_path / "mix-smoke" / f"nav_nonstationary-random-td3bc-otc-seed{s}") for s in (0, 1)
    ]
    from torchrl_otc.trainers import sweep
    from torchrl_otc.trainers.sweep import _is_matched

    payloads = [c.to_dict() for c in configs]
    assert [_is_matched(p) for p in payloads] == [True, True, False] * 2
    ran = []

    def run_unit(payloads, progress, batched):
        ran.append([payload["run"]["run_name"].rsplit("-", 2)[1:] for payload in payloads])
        return [{} for _ in payloads]

    monkeypatch.setattr(sweep, "_run_unit", run_unit)
    run_sweep(configs, progress=False, batched=False)
    assert ran == [[[label, f"seed{s}"]] for s in (0, 1) for label in ("otc", "dec", "matched")]
    # batched: the runs that read their pair are grouped apart, after the pairs' group
    ran.clear()
    run_sweep(configs, progress=False)
    assert ran == [
        [["otc", "seed0"], ["otc", "seed1"]],
        [[label, f"seed{s}"] for s in (0, 1) for label in ("dec", "matched")],
    ]
    # a decomposed pair is refused: the pair must be the coupled procedure
    recipe.variants[2]["online_fraction"] = 0.3
    with pytest.raises(ValueError, match="a decomposed OTC .* variant; the pair of a matched mix"):
        expand_recipe(recipe, "smoke", runs_root=tmp_path)


def test_cells_give_each_sub_grid_its_own_sizes():
    recipe = Recipe(
        "cells",
        variants=[{"label": "u", "strategy": "uniform"}],
        sizes={
            "cpu": {
                "deployments": 2,
                "cells": [
                    {
                        "grid": {"task": ["nav/nonstationary"], "seed": [0, 1, 2]},
                        "dataset_size": 5000,
                    },
                    {"grid": {"task": ["mamujoco/hopper-3x1"], "algo": ["bcq"]}, "deployments": 4},
                ],
            }
        },
    )
    got = [
        (c.task.name, c.run.seed, c.algorithm.name, c.data.size, c.run.deployments)
        for c in expand_recipe(recipe, "cpu")
    ]
    assert got == [
        ("nav/nonstationary", 0, "td3bc", 5000, 2),
        ("nav/nonstationary", 1, "td3bc", 5000, 2),
        ("nav/nonstationary", 2, "td3bc", 5000, 2),
        ("mamujoco/hopper-3x1", 0, "bcq", 10_000, 4),
    ]
    with pytest.raises(
        ValueError, match="unknown config fields \\['bogus'\\] in size 'cpu', cell 0"
    ):
        Recipe("bad", sizes={"cpu": {"cells": [{"bogus": 1}]}})
    # a scalar axis is one value (as a single value in a Hydra multirun); a mapping is refused
    one = Recipe(
        "one", base={"task": "nav/nonstationary"}, sizes={"cpu": {"cells": [{"grid": {"seed": 3}}]}}
    )
    assert [c.run.seed for c in expand_recipe(one, "cpu")] == [3]
    with pytest.raises(ValueError, match="grid axis 'seed' is a mapping"):
        Recipe("bad", sizes={"cpu": {"cells": [{"grid": {"seed": {"a": 1}}}]}})


def test_ray_runs_matched_mixes_in_a_second_wave_and_returns_results_in_config_order(
    tmp_path, monkeypatch
):
    import types

    waves: list[list[str]] = []

    class _Remote:
        def __init__(self, fn):
            self.fn = fn

        def remote(self, payloads, progress, batched):
            # one remote call per unit of runs (a lockstep group with --batched, else one run)
            return ([p["run"]["run_name"] for p in payloads], self.fn(payloads, progress, batched))

    def _get(refs):
        waves.append([name for names, _ in refs for name in names])
        return [result for _, result in refs]

    fake = types.SimpleNamespace(
        is_initialized=lambda: True,
        remote=lambda **_: _Remote,
        get=_get,
    )
    monkeypatch.setitem(__import__("sys").modules, "ray", fake)
    configs = expand_recipe(_recipe(cache_dir=str(tmp_path / "cache")), "smoke", runs_root=tmp_path)
    out = run_sweep(configs, backend="ray", progress=False)
    assert [set(w) for w in waves] == [
        {c.run.run_name for c in configs if c.sampler.name == "otc"},
        {c.run.run_name for c in configs if c.sampler.name == "mix"},
    ]
    assert [r["run_dir"] for r in out] == [
        str(tmp_path / "mix-smoke" / c.run.run_name) for c in configs
    ]
