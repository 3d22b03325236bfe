"""Tests of the run configuration: nested parts, dotted paths, flat shortcuts, config.yaml forms, cache keys."""

from __future__ import annotations

import pytest
import yaml

from torchrl_otc.configs.algorithms import BCQConfig, TD3BCConfig
from torchrl_otc.configs.overrides import SHORTCUTS
from torchrl_otc.configs.tune import TuneConfig, flat_config, parse_overrides


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
    assert (
        cfg.algorithm.name,
        cfg.sampler.alpha,
        cfg.sampler.adaptive_alpha,
        cfg.run.deployments,
    ) == (
        "bcq",
        1.5,
        False,
        10,
    )
    assert cfg.task.name == "mamujoco/halfcheetah-2x3"
    assert cfg.run.updates_per_deployment is None
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
        ("algorithm.actor_lr=0", "actor_lr must be > 0"),
        ("sampler.distance.name=cosine", "valid values: feature, embedding, value"),
    ],
)
def test_bad_overrides_say_what_is_valid(override, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides([override])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["online_fraction=1.5"],
            r"online_fraction must be a number in \[0, 1\) or 'adaptive'; got 1.5",
        ),
        (["online_fraction=1"], r"online_fraction must be a number in \[0, 1\)"),
        (["online_fraction=-0.1"], r"online_fraction must be a number in \[0, 1\)"),
        (
            ["online_fraction=lots"],
            r"online_fraction must be a number in \[0, 1\) or 'adaptive'; got 'lots'",
        ),
        (
            ["strategy=mix", "online_fraction=0.3"],
            "strategy=mix has no offline selection. Use strategy=otc",
        ),
        (
            ["strategy=uniform", "online_fraction=adaptive"],
            "strategy=uniform has no offline selection",
        ),
    ],
)
def test_bad_online_fraction_is_one_line_saying_what_to_do(overrides, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_overrides(overrides)
    assert "\n" not in str(err.value)


def test_online_fraction_values_and_run_names():
    assert parse_overrides([]).sampler.online_fraction is None  # the paper's coupled sampler
    cfg = parse_overrides(["online_fraction=0.3", "mix_source=latest", "seed=2"])
    assert cfg.sampler.online_fraction == 0.3 and cfg.online_fraction == 0.3
    assert cfg.default_run_name().endswith("-otc-feature-of0.3-latest-seed2")
    assert parse_overrides(["online_fraction=adaptive"]).sampler.online_fraction == "adaptive"
    assert parse_overrides(["online_fraction=0"]).sampler.online_fraction == 0.0
    assert parse_overrides(["online_fraction=none"]).sampler.online_fraction is None
    assert "-of" not in parse_overrides([]).default_run_name()
    assert TuneConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["algorithm.actr_lr=1e-4"],
            "Unknown config field 'algorithm.actr_lr'; valid fields of algorithm: name, discount, batch_size",
        ),
        (
            ["sampler.num_candidate=256"],
            "Unknown config field 'sampler.num_candidate'; valid fields of sampler: name, alpha, adaptive_alpha, "
            "num_candidates",
        ),
        (
            ["sampler.distance.nme=value"],
            "Unknown config field 'sampler.distance.nme'; valid fields of sampler.distance: name, next_state",
        ),
        (
            ["model.depth=2"],
            "Unknown config field 'model.depth'; valid: the parts task, data, algorithm",
        ),
        (
            ["algo=td3bc", "algorithm.vae_lr=1e-3"],
            r"Unknown config field 'algorithm.vae_lr' for algo=td3bc \(TD3BCConfig\); valid fields: activation",
        ),
        (["run=3"], "run takes a mapping of its fields"),
    ],
)
def test_unknown_dotted_paths_name_the_valid_fields_of_their_part(overrides, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_overrides(overrides)
    assert "\n" not in str(err.value)  # one line


def test_dotted_paths_reach_every_algorithm_hyperparameter():
    cfg = parse_overrides(
        [
            "algo=bcq",
            "algorithm.actor_lr=0.0003",
            "algorithm.hidden_sizes=32,32",
            "algorithm.vae_hidden_sizes=[16, 16]",
            "algorithm.max_grad_norm=none",
            "algorithm.kl_weight=1",
            "sampler.num_candidates=256",
            "sampler.distance=value",
        ]
    )
    assert isinstance(cfg.algorithm, BCQConfig)
    assert cfg.algorithm == BCQConfig(
        actor_lr=3e-4, hidden_sizes=(32, 32), vae_hidden_sizes=(16, 16), kl_weight=1.0
    )
    assert isinstance(cfg.algorithm.kl_weight, float)
    assert (cfg.sampler.num_candidates, cfg.sampler.distance.name) == (256, "value")
    for text in ("64,64", "[64, 64]", "(64, 64)"):
        assert parse_overrides([f"algorithm.hidden_sizes={text}"]).algorithm.hidden_sizes == (
            64,
            64,
        )


def test_the_algorithm_name_applies_before_its_fields_in_any_order():
    """algo= picks the config class with Table 3's defaults; algorithm.* applies after it, wherever it stands."""
    a = parse_overrides(["algorithm.actor_lr=0.0003", "algo=bcq"])
    b = parse_overrides(["algo=bcq", "algorithm.actor_lr=0.0003"])
    assert a == b and a.algorithm == BCQConfig(actor_lr=3e-4)
    assert parse_overrides(["algo=awac"]).algorithm.critic_lr == 5e-4  # AWAC's Table 3 rate
    assert parse_overrides(["algorithm=cql"]) == parse_overrides(["algo=cql"])
    # a base config with another algorithm: the new one starts from its own defaults
    base = parse_overrides(["algo=bcq", "algorithm.vae_lr=0.001"])
    assert parse_overrides(["algo=td3bc"], base=base).algorithm == TD3BCConfig()
    assert parse_overrides(["seed=3"], base=base).algorithm.vae_lr == 0.001


#: A value other than the default for every shortcut.
SAMPLES = {
    "task": "nav/nonstationary",
    "dataset": "medium",
    "dataset_size": "2000",
    "dataset_path": "/tmp/data",
    "algo": "awac",
    "strategy": "mix",
    "mix_fraction": "0.25",
    "mix_source": "latest",
    "mix_pair": "runs/otc",
    "online_fraction": "0.3",
    "distance": "embedding",
    "alpha": "2",
    "adaptive_alpha": "false",
    "num_candidates": "256",
    "score_every": "4",
    "num_online": "100",
    "next_state": "next_state",
    "embedding_reconstruct": "next_state",
    "embedding_update_every": "4",
    "value_actions": "sample",
    "value_refresh_every": "3",
    "self_match": "false",
    "offline_updates": "20",
    "deployments": "5",
    "steps_per_deployment": "50",
    "updates_per_deployment": "none",
    "eval_episodes": "2",
    "sequential_exploration": "true",
    "exploration_noise": "0.3",
    "seed": "7",
    "threads": "1",
    "device": "cpu",
    "runs_root": "/tmp/runs",
    "run_name": "mine",
    "cache_dir": "/tmp/cache",
    "logger": "tensorboard",
    "checkpoint_every": "10",
    "compile": "true",
}


@pytest.mark.parametrize("flat", list(SHORTCUTS))
def test_every_flat_shortcut_equals_its_dotted_path(flat):
    dotted = SHORTCUTS[flat]
    value = SAMPLES[flat]
    bases = {  # sample: not TD3+BC; stale d_q values need d_q and scoring ahead
        "value_actions": ["algo=bcq"],
        "value_refresh_every": ["distance=value", "score_every=3"],
    }
    base = parse_overrides(bases[flat]) if flat in bases else TuneConfig()
    by_flat = parse_overrides([f"{flat}={value}"], base=base)
    assert by_flat == parse_overrides([f"{dotted}={value}"], base=base)
    assert by_flat != base
    # the same in a YAML mapping, nested
    nested: dict = {}
    *parts, leaf = dotted.split(".")
    node = nested
    for part in parts:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(value)
    assert base.merge(nested) == by_flat
    assert base.merge({flat: yaml.safe_load(value)}) == by_flat
    # and as a Python attribute (but `task`, the part)
    if flat != "task":
        assert getattr(by_flat, flat) == by_flat.get(dotted)
    assert SAMPLES.keys() == SHORTCUTS.keys()


def test_yaml_config_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("algo: awac\nseed: 3\n")
    cfg = parse_overrides([f"config={f}", "seed=4"])
    assert cfg.algorithm.name == "awac" and cfg.run.seed == 4
    f.write_text("algo: awac\nbogus: 1\n")
    with pytest.raises(ValueError, match="bogus"):
        parse_overrides([f"config={f}"])
    f.write_text(
        "algorithm: {name: bcq, actor_lr: 3.0e-4}\nsampler.num_candidates: 64\nrun: {seed: 2}\n"
    )
    cfg = parse_overrides([f"config={f}"])
    assert (
        cfg.algorithm.name,
        cfg.algorithm.actor_lr,
        cfg.sampler.num_candidates,
        cfg.run.seed,
    ) == (
        "bcq",
        3e-4,
        64,
        2,
    )


def test_offline_key_shared_across_strategies():
    a = parse_overrides(["strategy=otc"])
    b = parse_overrides(["strategy=uniform", "alpha=2"])
    c = parse_overrides(["strategy=otc", "seed=1"])
    assert a.offline_key() == b.offline_key() != c.offline_key()
    assert a.default_run_name() != b.default_run_name()


@pytest.mark.parametrize(
    "overrides, dataset_key, offline_key, run_name",
    [  # computed on the flat TuneConfig before the nested one: existing caches and run folders stay valid
        (
            [],
            "mpe_navigation-3-random-10000-seed0",
            "mpe_navigation-3-random-10000-None-td3bc-0-1000",
            "mpe_navigation-3-random-td3bc-otc-feature-seed0",
        ),
        (
            [
                "algo=bcq",
                "dataset=medium-replay",
                "threads=1",
                "task=mamujoco/hopper-3x1",
                "seed=3",
            ],
            "mamujoco_hopper-3x1-medium-replay-10000",
            "mamujoco_hopper-3x1-medium-replay-10000-None-bcq-3-1000-threads1",
            "mamujoco_hopper-3x1-medium-replay-bcq-otc-feature-seed3",
        ),
        (
            ["dataset_path=/tmp/x", "algo=awac", "offline_updates=20"],
            None,
            "mpe_navigation-3-random-10000-_tmp_x-awac-0-20",
            "mpe_navigation-3-random-awac-otc-feature-seed0",
        ),
        (
            [
                "strategy=mix",
                "mix_fraction=0.25",
                "mix_source=latest",
                "seed=2",
                "dataset_size=2000",
                "threads=2",
            ],
            "mpe_navigation-3-random-2000-seed2",
            "mpe_navigation-3-random-2000-None-td3bc-2-1000-threads2",
            "mpe_navigation-3-random-td3bc-mix-0.25-latest-seed2",
        ),
        (
            ["strategy=uniform", "algo=cql"],
            "mpe_navigation-3-random-10000-seed0",
            "mpe_navigation-3-random-10000-None-cql-0-1000",
            "mpe_navigation-3-random-cql-uniform-seed0",
        ),
        (
            ["distance=embedding", "algorithm.finetune_updates=10"],  # L is not read offline
            "mpe_navigation-3-random-10000-seed0",
            "mpe_navigation-3-random-10000-None-td3bc-0-1000",
            "mpe_navigation-3-random-td3bc-otc-embedding-seed0",
        ),
    ],
)
def test_cache_keys_and_run_names_are_those_of_the_flat_config(
    overrides, dataset_key, offline_key, run_name
):
    cfg = parse_overrides(overrides)
    assert (cfg.dataset_key(), cfg.offline_key(), cfg.default_run_name()) == (
        dataset_key,
        offline_key,
        run_name,
    )


def test_an_algorithm_config_off_table3_has_its_own_offline_agents():
    default = parse_overrides(["algo=bcq"]).offline_key()
    lr = parse_overrides(["algo=bcq", "algorithm.actor_lr=0.0003"]).offline_key()
    width = parse_overrides(["algo=bcq", "algorithm.hidden_sizes=32,32"]).offline_key()
    assert lr.startswith(default + "-algo") and width.startswith(default + "-algo") and lr != width
    assert parse_overrides(["algo=bcq", "algorithm.actor_lr=0.0001"]).offline_key() == default


#: config.yaml as the flat TuneConfig of earlier versions wrote it.
OLD_FLAT = {
    "task": "nav/nonstationary",
    "dataset": "random",
    "dataset_size": 1500,
    "dataset_path": None,
    "algo": "bcq",
    "strategy": "mix",
    "mix_fraction": "matched",
    "mix_source": "all",
    "mix_pair": "runs/x/nav_nonstationary-random-bcq-otc-feature-seed3",
    "distance": "feature",
    "alpha": 1.0,
    "adaptive_alpha": True,
    "num_candidates": 64,
    "num_online": 50,
    "next_state": "displacement",
    "embedding_reconstruct": "action",
    "embedding_update_every": 1,
    "value_actions": "policy",
    "self_match": True,
    "offline_updates": 20,
    "deployments": 2,
    "steps_per_deployment": 100,
    "updates_per_deployment": 20,
    "eval_episodes": 2,
    "sequential_exploration": False,
    "exploration_noise": 0.1,
    "seed": 3,
    "threads": 1,
    "device": "auto",
    "runs_root": "runs/x",
    "run_name": "nav_nonstationary-random-bcq-mix-matched-seed3",
    "cache_dir": ".otc_cache",
    "logger": "csv",
    "checkpoint_every": 8,
    "compile": False,
}


def test_an_old_flat_config_yaml_round_trips_through_from_dict():
    loaded = yaml.safe_load(yaml.safe_dump(OLD_FLAT, sort_keys=False))
    cfg = TuneConfig.from_dict(loaded)
    assert (
        cfg.task.name,
        cfg.algorithm,
        cfg.sampler.mix_fraction,
        cfg.run.seed,
        cfg.data.size,
    ) == (
        "nav/nonstationary",
        BCQConfig(),
        "matched",
        3,
        1500,
    )
    flat = cfg.to_flat()
    assert {k: flat[k] for k in OLD_FLAT} == OLD_FLAT
    assert flat_config(OLD_FLAT) == flat == flat_config(cfg.to_dict())
    assert (
        TuneConfig.from_dict(flat) == cfg
    )  # the flat view (with algorithm.<field>) reads back too


@pytest.mark.parametrize("algo", ["bcq", "awac", "cql", "td3bc"])
def test_a_nested_config_yaml_round_trips_through_from_dict(algo):
    cfg = parse_overrides(
        [
            f"algo={algo}",
            "algorithm.actor_lr=0.0003",
            "algorithm.hidden_sizes=32,32",
            "strategy=mix",
        ]
    )
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    assert "actor_lr: 0.0003" in text and "hidden_sizes:\n  - 32\n  - 32" in text
    back = TuneConfig.from_dict(yaml.safe_load(text))
    assert back == cfg and type(back.algorithm) is type(cfg.algorithm)
    assert parse_overrides([f"{k}={v}" for k, v in cfg.to_flat().items() if v is not None]) == cfg


def test_every_field_round_trips_through_dict():
    cfg = TuneConfig()
    assert set(SHORTCUTS) <= set(cfg.to_flat())
    assert list(cfg.to_dict()) == ["task", "data", "algorithm", "sampler", "run"]
    assert TuneConfig.from_dict(cfg.to_dict()) == cfg
    assert parse_overrides([f"{k}={v}" for k, v in cfg.to_flat().items() if v is not None]) == cfg


def test_shortcut_attributes_read_and_write_their_dotted_paths():
    cfg = TuneConfig(algo="bcq", seed=2, task="nav/nonstationary")
    assert (cfg.algo, cfg.seed, cfg.task.name) == ("bcq", 2, "nav/nonstationary")
    cfg.runs_root, cfg.seed = "/tmp/r", 5
    assert (cfg.run.runs_root, cfg.run.seed) == ("/tmp/r", 5)
    cfg.algo = "awac"
    assert cfg.algorithm == parse_overrides(["algo=awac"]).algorithm
    with pytest.raises(AttributeError, match="no field 'sed'"):
        cfg.sed = 3
    with pytest.raises(AttributeError):
        cfg.sed  # noqa: B018


def test_paper_preset_and_unknown_config_file():
    cfg = parse_overrides(["config=paper", "algo=awac", "deployments=3"])
    assert (cfg.data.size, cfg.sampler.num_candidates, cfg.sampler.num_online) == (
        1_000_000,
        512,
        2000,
    )
    assert cfg.run.deployments == 3  # later overrides win
    assert cfg.resolved_steps_per_deployment == 10_000  # 1 % of the dataset (section 4.1)
    assert cfg.resolved_updates_per_deployment == 2000  # Table 3's L for AWAC
    with pytest.raises(FileNotFoundError, match="shipped: paper, recommended"):
        parse_overrides(["config=papr"])


def test_recommended_preset_is_decomposed_otc_with_the_likelihood_selector_at_half():
    # the configuration docs/theory.rst recommends (issue 15, item 5); other overrides still apply
    cfg = parse_overrides(["config=recommended", "task=coord/partner-modes"])
    assert (cfg.sampler.name, cfg.sampler.distance.name, cfg.sampler.online_fraction) == (
        "otc",
        "likelihood",
        0.5,
    )
    assert cfg.task.name == "coord/partner-modes"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dataset_size=3"], r"data.size \(dataset_size\) is 3, fewer rows than one batch"),
        (["dataset_size=100", "algorithm.batch_size=128"], "use dataset_size >= 128"),
        (["dataset_size=200"], r"fewer rows than the 512 candidates \|B\| that strategy=otc"),
        (["dataset_size=200", "strategy=balanced-replay"], "strategy=balanced-replay"),
        (["alpha=nan"], "sampler.alpha must be a finite number"),
        (["exploration_noise=inf"], "task.exploration_noise must be a finite number"),
        (["algorithm.alpha=inf"], "algorithm.alpha must be a finite number"),
        (["algorithm.max_grad_norm=nan"], "max_grad_norm"),
        (["device=cuda:one"], "a GPU is named cuda:N"),
        (["run_name=../elsewhere"], "run.run_name must be a folder name"),
        (["runs_root="], "run.runs_root must name a folder"),
        (["cache_dir= "], "data.cache_dir must name a folder"),
    ],
)
def test_sizes_and_numbers_without_meaning_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides(overrides)


def test_sizes_that_fit_are_accepted():
    # no |B| for the samplers that draw no candidates; a loaded dataset has its own size
    assert parse_overrides(["dataset_size=200", "strategy=uniform"]).data.size == 200
    assert parse_overrides(["dataset_size=600", "num_candidates=64"]).data.size == 600
    assert (
        parse_overrides(["dataset_size=3", "dataset_path=some/folder"]).data.path == "some/folder"
    )
    assert parse_overrides(["device=cuda:1"]).run.device == "cuda:1"


def test_config_file_values_are_checked_with_the_file_name(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("run:\n  deployments: abc\n")
    with pytest.raises(
        ValueError, match=r"config=.*mine.yaml: run.deployments='abc': expected int"
    ):
        parse_overrides([f"config={bad}"])
    bad.write_text("seed: [1\n")
    with pytest.raises(ValueError, match=r"mine.yaml is not valid YAML \(line 2, column 1"):
        parse_overrides([f"config={bad}"])
    # algorithm fields of the file apply to the algorithm the command line picks
    ok = tmp_path / "ok.yaml"
    ok.write_text("algorithm.vae_lr: 0.001\n")
    assert parse_overrides([f"config={ok}", "algo=bcq"]).algorithm.vae_lr == 0.001
