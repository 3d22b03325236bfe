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


def _decomposition_runs(tmp_path, move=None, **extra):
    """uniform, OTC and a matched mix paired with OTC, seeds 0-3, on one cell; returns (runs folder, runs)."""
    root = tmp_path / "sweep"
    last = {
        "uniform": [1.0, 2.0, 3.0, 4.0],
        "otc": [3.0, 5.0, 4.0, 6.0],
        "mix": [3.0, 4.0, 4.0, 7.0],
    }
    for strategy, values in last.items():
        for seed, value in enumerate(values):
            cfg = TuneConfig(
                strategy=strategy, seed=seed, task="nav/nonstationary", **extra
            ).to_dict()
            if strategy == "mix":
                cfg.update(mix_fraction="matched", mix_pair=str(root / f"otc-{seed}"))
            run = RunFolder(root / f"{strategy}-{seed}")
            run.write_config(cfg)
            for k, r in enumerate([0.0, value / 2, value]):
                run.log(
                    {"eval/return_mean": r},
                    step=k,
                    phase="online" if k else "offline",
                    deployment=k,
                )
    if move is not None:  # the sweep's folder copied elsewhere: pairs are found beside the runs
        root.rename(move)
        root = move
    return root, [load_run(p) for p in sorted(root.iterdir())]


@pytest.mark.parametrize("moved", [False, True])
def test_decomposition_pairs_otc_its_matched_mix_and_uniform_by_seed(tmp_path, moved):
    from torchrl_otc.report import decomposition_table

    _, runs = _decomposition_runs(tmp_path, tmp_path / "copied" if moved else None)
    lines = decomposition_table(runs, "last").splitlines()
    assert lines[0].startswith("| dataset | task | comparison | n | difference [95 % CI] | W/T/L |")
    rows = {line.split(" | ")[2]: line.split(" | ")[3:6] for line in lines[2:]}
    # differences by seed: otc - uniform = 2, 3, 1, 2; mix - uniform = 2, 2, 1, 3; otc - mix = 0, 1, 0, -1
    otc, mix, base = "otc-feature + td3bc", "mix-matched-otc-feature + td3bc", "uniform + td3bc"
    from torchrl_otc.stats import bootstrap_ci, format_ci

    assert rows[f"{otc} − {base}"][:2] == ["4", format_ci(*bootstrap_ci([2.0, 3.0, 1.0, 2.0]))]
    assert rows[f"{otc} − {base}"][2] == "4/0/0"
    assert rows[f"{mix} − {base}"][2] == "4/0/0"
    assert rows[f"{otc} − {mix}"][1].startswith("+0.00 [") and rows[f"{otc} − {mix}"][2] == "1/2/1"
    # the mean over deployments 1..2 halves nothing here: (v/2 + v) / 2 = 0.75 v, so differences scale by 0.75
    mean_rows = decomposition_table(runs, "mean").splitlines()[2]
    assert "+1.50 [" in mean_rows


def test_decomposition_and_paired_tables_of_sequential_runs(tmp_path):
    """Sequential exploration (section 4.6) ends every label in -sequential, the baseline's too: the tables find
    it, and a matched mix names its pair without a second -sequential."""
    from torchrl_otc.report import decomposition_table, paired_table

    _, runs = _decomposition_runs(tmp_path, sequential_exploration=True)
    rows = [line.split(" | ")[2] for line in decomposition_table(runs, "last").splitlines()[2:]]
    otc, mix, base = (
        "otc-feature-sequential + td3bc",
        "mix-matched-otc-feature-sequential + td3bc",
        "uniform-sequential + td3bc",
    )
    assert rows == [f"{otc} − {base}", f"{mix} − {base}", f"{otc} − {mix}"]
    assert paired_table(runs)


def test_strategy_table_has_mean_iqm_and_the_gain_over_offline(tmp_path):
    from torchrl_otc.report import strategy_table, versus_table

    root, runs = _decomposition_runs(tmp_path)
    table = strategy_table(runs, "last")
    uniform = next(line for line in table.splitlines() if "| uniform + td3bc |" in line)
    cells = [c.strip() for c in uniform.strip("|").split("|")]
    assert cells[3] == "4"
    assert cells[4].startswith("2.50 [") and cells[5].startswith(
        "2.50 ["
    )  # IQM of 1..4 = mean of 2, 3
    assert cells[6].startswith("+2.50 [")  # every offline return is 0
    assert versus_table(runs, "last").count("− uniform + td3bc") == 2
    report = write_report([root], tmp_path / "out").read_text()
    assert report.index("## Decomposition") < report.index("## Per method")
    assert "* compute:" in report


def test_intervals_do_not_depend_on_the_order_the_runs_were_read(tmp_path):
    from torchrl_otc.report import decomposition_table, strategy_table

    _, runs = _decomposition_runs(tmp_path)
    for table in (decomposition_table, strategy_table):
        assert table(runs, "mean") == table(list(reversed(runs)), "mean")


def test_decomposed_otc_runs_get_their_own_label(tmp_path):
    """Decomposed OTC (``online_fraction``) must not be pooled with the paper's coupled OTC of the same distance."""
    labels = {}
    for name, overrides in {
        "coupled": {},
        "fixed": {"online_fraction": 0.3},
        "adaptive": {"online_fraction": "adaptive", "mix_source": "latest"},
    }.items():
        run = RunFolder(tmp_path / name)
        run.write_config(TuneConfig(strategy="otc", **overrides).to_dict())
        run.log({"eval/return_mean": 0.0}, step=0, phase="offline", deployment=0)
        labels[name] = load_run(run.path).label
    assert labels == {
        "coupled": "otc-feature + td3bc",
        "fixed": "otc-feature-of0.3 + td3bc",
        "adaptive": "otc-feature-ofadaptive-latest + td3bc",
    }


def _selector_runs(tmp_path):
    """uniform, coupled OTC, its matched mix and two decomposed selectors at the matched share, seeds 0-3, on one
    cell (``dec-value`` also has seed 4, without partners); returns (runs folder, runs)."""
    root = tmp_path / "selectors"
    last = {
        "uniform": ({"strategy": "uniform"}, [1.0, 2.0, 3.0, 4.0]),
        "otc": ({"strategy": "otc"}, [3.0, 5.0, 4.0, 6.0]),
        "mix": ({"strategy": "mix", "mix_fraction": "matched"}, [3.0, 4.0, 4.0, 7.0]),
        "dec-feature": (
            {"strategy": "otc", "online_fraction": "matched"},
            [4.0, 5.0, 6.0, 7.0],
        ),
        "dec-value": (
            {"strategy": "otc", "distance": "value", "online_fraction": "matched"},
            [3.0, 4.0, 3.0, 7.0, 9.0],
        ),
    }
    for name, (overrides, values) in last.items():
        for seed, value in enumerate(values):
            cfg = TuneConfig(seed=seed, task="nav/nonstationary", **overrides).to_dict()
            if name in ("mix", "dec-feature", "dec-value"):
                cfg["sampler"]["mix_pair"] = str(root / f"otc-{seed}")
            run = RunFolder(root / f"{name}-{seed}")
            run.write_config(cfg)
            for k, r in enumerate([0.0, value / 2, value]):
                phase = "online" if k else "offline"
                run.log({"eval/return_mean": r}, step=k, phase=phase, deployment=k)
                if (
                    k and name == "dec-feature"
                ):  # online share 0.3; right-dynamics share 0.5 + 0.1 seed
                    shares = {"agent0/online_share": 0.2, "agent1/online_share": 0.4}
                    shares["agent0/offline_right_dynamics_share"] = 0.5 + 0.1 * seed
                    run.log(shares, step=k, phase=phase, deployment=k)
    return root, [load_run(p) for p in sorted(root.iterdir())]


def _rows(table):
    return {
        line.split(" | ")[2]: [c.strip(" |") for c in line.split(" | ")[3:]]
        for line in table.splitlines()[2:]
        if line.startswith("|")
    }


def test_selector_table_pairs_each_selector_with_the_matched_mix_and_uniform(tmp_path):
    from torchrl_otc.report import selector_table
    from torchrl_otc.stats import bootstrap_ci, format_ci

    _, runs = _selector_runs(tmp_path)
    table = selector_table(runs, "last")
    assert table.splitlines()[0].startswith("| dataset | task | method | n | mean [95 % CI] |")
    rows = _rows(table)
    coupled, feature, value = (
        "otc-feature + td3bc",
        "otc-feature-ofmatched + td3bc",
        "otc-value-ofmatched + td3bc",
    )
    assert list(rows) == [coupled, feature, value]  # the coupled OTC first, then the selectors
    # dec-feature - mix = 1, 1, 2, 0; dec-feature - uniform = 3, 3, 3, 3
    assert rows[feature][:5] == [
        "4",
        format_ci(*bootstrap_ci([4.0, 5.0, 6.0, 7.0]), signed=False),
        format_ci(*bootstrap_ci([1.0, 1.0, 2.0, 0.0])),
        "3/1/0",
        "+3.00 [+3.00, +3.00]",
    ]
    assert rows[feature][4:] == ["+3.00 [+3.00, +3.00]", "4/0/0", "0.300", "0.650"]
    assert rows[feature][2].startswith("+1.00 [")
    # dec-value (seed 4 has no partner: left out) - mix = 0, 0, -1, 0; - uniform = 2, 2, 0, 3
    assert rows[value][0] == "4"
    assert rows[value][2:6] == [
        format_ci(*bootstrap_ci([0.0, 0.0, -1.0, 0.0])),
        "0/3/1",
        format_ci(*bootstrap_ci([2.0, 2.0, 0.0, 3.0])),
        "3/1/0",
    ]
    assert rows[value][6:] == ["-", "-"]  # shares not logged
    # coupled otc - its matched mix = 0, 1, 0, -1
    assert rows[coupled][2].startswith("+0.00 [") and rows[coupled][3] == "1/2/1"
    note = table.splitlines()[-1]
    assert note.startswith("Left out (no matched-mix or uniform run of the same seed): 1 run(s):")
    assert f"{value} seed 4" in note
    # without uniform's seed 3, every method's seed 3 is left out too
    fewer = [r for r in runs if not (r.config["strategy"] == "uniform" and r.config["seed"] == 3)]
    table = selector_table(fewer, "last")
    assert all(row[0] == "3" for row in _rows(table).values())
    assert ": 4 run(s):" in table.splitlines()[-1]
    assert table == selector_table(list(reversed(fewer)), "last")


def test_report_has_the_selector_section_only_with_decomposed_runs(tmp_path):
    root, _ = _selector_runs(tmp_path)
    text = write_report([root], tmp_path / "out").read_text()
    assert (
        "## Selectors: decomposed OTC against its matched mix (mean return over deployments 1..K)"
        in text
    )
    assert (
        "## Selectors: decomposed OTC against its matched mix (return at the last deployment)"
        in text
    )
    assert "| otc-value-ofmatched + td3bc |" in text
    root, _ = _decomposition_runs(tmp_path)
    assert "## Selectors" not in write_report([root], tmp_path / "out2").read_text()


def test_selector_table_pairs_a_fixed_share_with_the_mix_at_that_share(tmp_path):
    # decomposed OTC at online_fraction=0.5 is compared with strategy=mix mix_fraction=0.5 (not the matched mix)
    from torchrl_otc.report import selector_table
    from torchrl_otc.stats import bootstrap_ci, format_ci

    root = tmp_path / "fixed"
    last = {
        "uniform": ({"strategy": "uniform"}, [1.0, 1.0, 1.0]),
        "mix-0.5": ({"strategy": "mix", "mix_fraction": 0.5}, [2.0, 3.0, 2.0]),
        "mix-0.3": ({"strategy": "mix", "mix_fraction": 0.3}, [9.0, 9.0, 9.0]),
        "dec-0.5": (
            {"strategy": "otc", "distance": "likelihood", "online_fraction": 0.5},
            [4.0, 4.0, 5.0],
        ),
    }
    for name, (overrides, values) in last.items():
        for seed, value in enumerate(values):
            run = RunFolder(root / f"{name}-{seed}")
            run.write_config(TuneConfig(seed=seed, task="nav/nonstationary", **overrides).to_dict())
            for k, r in enumerate([0.0, value]):
                run.log(
                    {"eval/return_mean": r},
                    step=k,
                    phase="online" if k else "offline",
                    deployment=k,
                )
    rows = _rows(selector_table([load_run(p) for p in sorted(root.iterdir())], "last"))
    assert list(rows) == ["otc-likelihood-of0.5 + td3bc"]
    # dec - mix-0.5 = 2, 1, 3 (the mix at 0.3 is not its control); dec - uniform = 3, 3, 4
    assert rows["otc-likelihood-of0.5 + td3bc"][2:6] == [
        format_ci(*bootstrap_ci([2.0, 1.0, 3.0])),
        "3/0/0",
        format_ci(*bootstrap_ci([3.0, 3.0, 4.0])),
        "3/0/0",
    ]
