"""Tests of the run configuration and its Hydra-style overrides."""

from __future__ import annotations

import pytest

from torchrl_otc.configs.tune import TuneConfig, field_names, parse_overrides


def test_overrides_are_typed():
    cfg = parse_overrides(
        [
            "algo=bcq",
            "alpha=1.5",
            "adaptive_alpha=false",
            "deployments=10",
            "updates_per_deployment=none",
            "task=mamujoco/halfcheetah-2x3",
        ]
    )
    assert (cfg.algo, cfg.alpha, cfg.adaptive_alpha, cfg.deployments) == ("bcq", 1.5, False, 10)
    assert cfg.updates_per_deployment is None
    assert cfg.resolved_updates_per_deployment == 4000  # Table 3: BCQ
    assert (
        parse_overrides(
            ["algo=td3bc", "updates_per_deployment=none"]
        ).resolved_updates_per_deployment
        == 2000
    )


def test_steps_per_deployment_default_is_one_percent():
    cfg = parse_overrides(["dataset_size=1000000", "steps_per_deployment=none"])
    assert cfg.resolved_steps_per_deployment == 10_000  # section 4.1: |D| = 1 % of |B^0|


@pytest.mark.parametrize(
    "override, message",
    [
        ("strategy=greedy", "valid values: otc, uniform, online-only, balanced-replay"),
        ("algo=sac", "valid values: bcq, awac, cql, td3bc"),
        ("distance=cosine", "valid values: feature, embedding, value"),
        ("nosuchfield=1", "Unknown config field 'nosuchfield'"),
        ("deployments=0", "deployments must be >= 1"),
        ("deployments=2.5", "expected int"),
        ("alpha=-1", "alpha must be >= 0"),
        ("seed", "key=value"),
    ],
)
def test_bad_overrides_say_what_is_valid(override, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides([override])


def test_yaml_config_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("algo: awac\nseed: 3\n")
    cfg = parse_overrides([f"config={f}", "seed=4"])
    assert cfg.algo == "awac" and cfg.seed == 4
    f.write_text("algo: awac\nbogus: 1\n")
    with pytest.raises(ValueError, match="bogus"):
        parse_overrides([f"config={f}"])


def test_offline_key_shared_across_strategies():
    a = parse_overrides(["strategy=otc"])
    b = parse_overrides(["strategy=uniform", "alpha=2"])
    c = parse_overrides(["strategy=otc", "seed=1"])
    assert a.offline_key() == b.offline_key() != c.offline_key()
    assert a.default_run_name() != b.default_run_name()


def test_every_field_round_trips_through_dict():
    cfg = TuneConfig()
    assert set(cfg.to_dict()) == set(field_names())
    assert parse_overrides([f"{k}={v}" for k, v in cfg.to_dict().items() if v is not None]) == cfg


def test_paper_preset_and_unknown_config_file():
    cfg = parse_overrides(["config=paper", "algo=awac", "deployments=3"])
    assert (cfg.dataset_size, cfg.num_candidates, cfg.num_online) == (1_000_000, 512, 2000)
    assert cfg.deployments == 3  # later overrides win
    assert cfg.resolved_steps_per_deployment == 10_000  # 1 % of the dataset (section 4.1)
    assert cfg.resolved_updates_per_deployment == 2000  # Table 3's L for AWAC
    with pytest.raises(FileNotFoundError, match="shipped: paper"):
        parse_overrides(["config=papr"])
