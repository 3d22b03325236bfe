"""Tests of the run report: the Table-1 numbers come from metrics.csv, and the figures are written."""

from __future__ import annotations

import math

import pytest

from torchrl_otc.configs.tune import TuneConfig
from torchrl_otc.report import improvement, load_run, write_report
from torchrl_otc.trainers.run import RunFolder


def fake_run(root, strategy, seed, returns, alphas=None):
    cfg = TuneConfig(strategy=strategy, seed=seed).to_dict()
    run = RunFolder(root / f"{strategy}-{seed}")
    run.write_config(cfg)
    for k, r in enumerate(returns):
        run.log(
            {"eval/return_mean": r, "eval/return_std": 1.0},
            step=100 * k,
            phase="online" if k else "offline",
            deployment=k,
        )
        if alphas and k:
            run.log(
                {"agent0/alpha": alphas[k - 1], "agent1/alpha": 2 * alphas[k - 1]},
                step=100 * k,
                phase="online",
                deployment=k,
            )
    return run.path


def test_improvement_formula():
    assert improvement({0: 10.0, 1: 12.0, 2: 15.0}) == 50.0
    assert improvement({0: -20.0, 3: -10.0}) == 50.0
    assert math.isnan(improvement({0: 10.0}))


def test_report_table_matches_metrics(tmp_path):
    fake_run(tmp_path, "otc", 0, [-100.0, -80.0, -50.0], alphas=[1.0, 1.5])
    fake_run(tmp_path, "otc", 1, [-100.0, -90.0, -70.0], alphas=[1.0, 0.8])
    fake_run(tmp_path, "uniform", 0, [-100.0, -100.0, -95.0])
    report = write_report([tmp_path], tmp_path / "out")
    text = report.read_text()
    # otc: improvements 50 and 30 -> mean 40.0, sample std 14.1; uniform: 5.0 (one seed).
    assert "40.0 ± 14.1 (n=2)" in text
    assert "5.0 ± 0.0 (n=1)" in text
    assert "| random | mpe/navigation-3 |" in text
    assert (tmp_path / "out" / "returns.png").stat().st_size > 1000
    assert (tmp_path / "out" / "alpha.png").stat().st_size > 1000
    run = load_run(tmp_path / "otc-0")
    assert run.returns == {0: -100.0, 1: -80.0, 2: -50.0}


def test_report_refuses_folders_without_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="No run folders"):
        write_report([tmp_path], tmp_path / "out")


def test_paired_table_differences_runs_of_one_seed_only(tmp_path):
    from torchrl_otc.report import paired_table

    # last returns: otc -50, -70, -90 (seed 2 has no uniform run: left out); uniform -95, -60
    fake_run(tmp_path, "otc", 0, [-100.0, -80.0, -50.0])
    fake_run(tmp_path, "otc", 1, [-100.0, -90.0, -70.0])
    fake_run(tmp_path, "otc", 2, [-100.0, -95.0, -90.0])
    fake_run(tmp_path, "uniform", 0, [-100.0, -100.0, -95.0])
    fake_run(tmp_path, "uniform", 1, [-100.0, -70.0, -60.0])
    runs = [load_run(p) for p in sorted(tmp_path.iterdir())]
    table = paired_table(runs).splitlines()
    # differences 45 and -10: mean 17.5, standard error stdev([45, -10]) / sqrt(2) = 27.5 (both start at -100)
    assert table[0] == "| dataset | task | otc-feature + td3bc − uniform + td3bc |"
    assert table[2] == "| random | mpe/navigation-3 | +17.50 ± 27.50 (ahead on 1/2 seeds) |"
    assert table[3] == "| rows with a positive mean | | 1/1 |"
    assert paired_table([r for r in runs if r.config["strategy"] == "otc"]) == ""
    text = write_report([tmp_path], tmp_path / "out").read_text()
    assert "## Paired by seed" in text and "+17.50 ± 27.50" in text


def test_paired_table_compares_gains_when_offline_returns_differ(tmp_path):
    from torchrl_otc.report import paired_table

    fake_run(tmp_path, "otc", 0, [-100.0, -50.0])  # gain 50
    fake_run(
        tmp_path, "uniform", 0, [-80.0, -60.0]
    )  # gain 20: the last returns differ by 10, the gains by 30
    runs = [load_run(p) for p in sorted(tmp_path.iterdir())]
    assert "| +30.00 ± 0.00 (ahead on 1/1 seeds) |" in paired_table(runs)
