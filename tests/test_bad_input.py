"""Bad input at the command line, in ``config=`` files, in recipes and in run folders read by ``otc report``.

Every case of :data:`BAD_INPUTS` must be answered by ``otc`` with exit code 2 and exactly one log line that names
the file or field (no traceback unless ``otc -v``), before any expensive work: no dataset cache, no run folder and
no report folder is left behind. ``len(BAD_INPUTS)`` is the count of such inputs this file checks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from torchrl_otc.cli import _one_line, main

# A recipe small enough to expand in milliseconds (nothing runs: every case below is refused first).
RECIPE_OK = "sizes: {smoke: {dataset_size: 600, num_candidates: 64, deployments: 1}}\n"


def _file(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def _run(tmp: Path, config: str, metrics: str, meta: str | None = None) -> str:
    """A run folder holding the given ``config.yaml``, ``metrics.csv`` (and ``meta.json``)."""
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config)
    (run / "metrics.csv").write_text(metrics)
    if meta is not None:
        (run / "meta.json").write_text(meta)
    return str(run)


def _binary_metrics(run: str) -> str:
    (Path(run) / "metrics.csv").write_bytes(b"\xff\xfe\x00\x81garbage\n")
    return run


GOOD_CONFIG = "strategy: uniform\nalgo: td3bc\ndataset: random\ntask: mpe/navigation-3\nseed: 0\n"
GOOD_METRICS = "step,phase,deployment,name,value\n0,offline,0,eval/return_mean,1.0\n"


def _tune(*overrides: str) -> Callable[[Path], list[str]]:
    """``otc tune`` with its folders under the test's tmp folder (``{tmp}`` in an override is replaced)."""

    def argv(tmp: Path) -> list[str]:
        fixed = [o.replace("{tmp}", str(tmp)) for o in overrides]
        return [
            "tune",
            f"runs_root={tmp / 'runs'}",
            f"cache_dir={tmp / 'cache'}",
            *fixed,
            "--no-progress",
        ]

    return argv


def _recipe(text: str, *extra: str) -> Callable[[Path], list[str]]:
    def argv(tmp: Path) -> list[str]:
        recipe = _file(tmp, "mine.yaml", text)
        return [
            "sweep",
            recipe,
            "--size",
            "smoke",
            "--runs-root",
            str(tmp / "runs"),
            "--no-progress",
            *(e.replace("{tmp}", str(tmp)) for e in extra),
        ]

    return argv


def _afile(tmp: Path) -> Path:
    path = tmp / "afile"
    path.write_text("not a folder")
    return path


#: (case, argv builder, what the one line must contain). The builders get the test's tmp folder.
BAD_INPUTS: list[tuple[str, Callable[[Path], list[str]], str]] = [
    # ---------------------------------------------------------------- otc tune: config= files
    (
        "config= YAML syntax error",
        lambda t: _tune(f"config={_file(t, 'c.yaml', 'seed: [1')}")(t),
        "c.yaml is not valid YAML (line 1, column 9",
    ),
    (
        "config= deployments: abc",
        lambda t: _tune(f"config={_file(t, 'c.yaml', 'deployments: abc')}")(t),
        "c.yaml: run.deployments='abc': expected int",
    ),
    (
        "config= nested run.deployments: abc",
        lambda t: _tune(f"config={_file(t, 'c.yaml', 'run: {deployments: abc}')}")(t),
        "c.yaml: run.deployments='abc': expected int",
    ),
    (
        "config= algo: sac",
        lambda t: _tune(f"config={_file(t, 'c.yaml', 'algo: sac')}")(t),
        "c.yaml: Unknown algorithm.name (algo) 'sac'",
    ),
    ("config= a folder", lambda t: _tune(f"config={t}")(t), "is a folder; give a YAML file"),
    (
        "config= a list",
        lambda t: _tune(f"config={_file(t, 'c.yaml', '- a')}")(t),
        "expected a mapping of fields",
    ),
    ("config= missing file", _tune("config={tmp}/none.yaml"), "no such file"),
    # ---------------------------------------------------------------- otc tune: fields and sizes
    ("runs_root= under a file", lambda t: _tune(f"runs_root={_afile(t)}/runs")(t), "is a file"),
    ("cache_dir= under a file", lambda t: _tune(f"cache_dir={_afile(t)}/cache")(t), "is a file"),
    ("dataset_size < batch", _tune("dataset_size=3"), "fewer rows than one batch"),
    (
        "a continuous algorithm on a discrete task",
        _tune("task=mpe/navigation-3-discrete", "algo=awac"),
        "mpe/navigation-3-discrete has discrete (one-hot) actions and algo=awac is a continuous-action",
    ),
    (
        "algo=bremen on a discrete task",
        _tune("task=mpe/navigation-3-discrete", "algo=bremen"),
        "mpe/navigation-3-discrete has discrete (one-hot) actions and algo=bremen is a continuous-action",
    ),
    (
        "algo=bremen with an ensemble below 1",
        _tune("algo=bremen", "algorithm.ensemble_size=0"),
        "ensemble_size must be an int >= 1 (dynamics models per agent); got 0",
    ),
    (
        "algo=bremen with a KL bound of 0",
        _tune("algo=bremen", "algorithm.max_kl=0"),
        "max_kl must be > 0 (the KL bound of each TRPO step); got 0",
    ),
    (
        "algo=bremen with distance=value",
        _tune("algo=bremen", "distance=value"),
        "algo=bremen has none",
    ),
    (
        "epsilon above 1 on a discrete task",
        _tune("task=smaclike/3m", "algo=cql", "exploration_noise=1.5"),
        "exploration_noise is the exploring agent's epsilon (epsilon-greedy), a probability; got 1.5",
    ),
    (
        "TD3+BC on the SMAC-shaped task",
        _tune("task=smaclike/3m", "algo=td3bc"),
        "on discrete tasks use algo=bcq (discrete BCQ) or algo=cql",
    ),
    ("dataset_size < |B|", _tune("dataset_size=200"), "fewer rows than the 512 candidates |B|"),
    ("deployments=abc", _tune("deployments=abc"), "run.deployments='abc': expected int"),
    ("dataset_size=0", _tune("dataset_size=0"), "data.size must be >= 1; got 0"),
    ("num_candidates=0", _tune("num_candidates=0"), "sampler.num_candidates must be >= 1"),
    ("alpha=nan", _tune("alpha=nan"), "sampler.alpha must be a finite number; got nan"),
    ("algorithm.alpha=inf", _tune("algorithm.alpha=inf"), "algorithm.alpha must be a finite"),
    ("exploration_noise<0", _tune("exploration_noise=-0.1"), "task.exploration_noise must be >= 0"),
    ("mix_fraction=1.5", _tune("strategy=mix", "mix_fraction=1.5"), "mix_fraction must lie"),
    ("device=cuda:x", _tune("device=cuda:x"), "run.device='cuda:x'"),
    ("seed=-1", _tune("seed=-1"), "run.seed must be >= 0; got -1"),
    ("run_name with a slash", _tune("run_name=a/b"), "run.run_name must be a folder name"),
    ("hidden_sizes YAML error", _tune("algorithm.hidden_sizes=[64,"), "expected a list"),
    ("unknown field", _tune("nosuchfield=1"), "Unknown config field 'nosuchfield'"),
    ("resume= with others", _tune("resume=x"), "resume=RUN_DIR takes no other overrides"),
    # ---------------------------------------------------------------- otc sweep: recipes
    ("recipe YAML syntax error", _recipe("grid: {seed: [0\n"), "mine.yaml is not valid YAML"),
    ("recipe a list", _recipe("- 1\n"), "recipe "),
    ("recipe grid axis []", _recipe("grid: {seed: []}\n" + RECIPE_OK), "axis 'seed' is an empty"),
    ("recipe grid axis mapping", _recipe("grid: {seed: {a: 1}}\n" + RECIPE_OK), "is a mapping"),
    ("recipe grid a list", _recipe("grid: [1, 2]\n" + RECIPE_OK), "grid must map config fields"),
    ("recipe variants a string", _recipe("variants: abc\n" + RECIPE_OK), "variants must be a list"),
    ("recipe base a string", _recipe("base: abc\n" + RECIPE_OK), "base must be a mapping"),
    ("recipe size a number", _recipe("sizes: {smoke: 3}\n"), "size 'smoke' must be a mapping"),
    ("recipe unknown key", _recipe("grdi: {seed: [0]}\n" + RECIPE_OK), "unknown recipe keys"),
    (
        "recipe deployments: abc",
        _recipe("sizes: {smoke: {deployments: abc}}\n"),
        "Recipe 'mine', size 'smoke', variant 'default': run.deployments='abc'",
    ),
    (
        "recipe dataset_size < batch",
        _recipe("sizes: {smoke: {dataset_size: 3}}\n"),
        "fewer rows than one batch",
    ),
    ("recipe no such size", _recipe("sizes: {cpu: {}}\n"), "has no size 'smoke'"),
    ("recipe a folder", lambda t: ["sweep", str(t), "--size", "smoke"], "is a folder"),
    ("sweep --workers 0", _recipe(RECIPE_OK, "--workers", "0"), "--workers must be >= 1"),
    (
        "sweep --lockstep-seeds 0",
        _recipe(RECIPE_OK, "--batched", "--lockstep-seeds", "0"),
        "--lockstep-seeds must be a positive integer; got 0",
    ),
    (
        "sweep --report a file",
        lambda t: _recipe(RECIPE_OK, "--report", str(_afile(t)))(t),
        "report folder",
    ),
    (
        "sweep --runs-root under a file",
        lambda t: [*_recipe(RECIPE_OK)(t), "--runs-root", str(_afile(t) / "runs")],
        "--runs-root",
    ),
    (
        "sweep override not key=value",
        lambda t: [*_recipe(RECIPE_OK)(t)[:2], "seed", "--size", "smoke"],
        "key=value; got 'seed'",
    ),
    # ---------------------------------------------------------------- otc report: run folders
    (
        "report: config.yaml YAML syntax error",
        lambda t: ["report", _run(t, "strategy: [\n", GOOD_METRICS), "--out", str(t / "rep")],
        "config.yaml is not valid YAML (line 2",
    ),
    (
        "report: config.yaml a list",
        lambda t: ["report", _run(t, "- 1\n", GOOD_METRICS), "--out", str(t / "rep")],
        "config.yaml must be a mapping",
    ),
    (
        "report: config.yaml unknown field",
        lambda t: ["report", _run(t, "run: {sed: 1}\n", GOOD_METRICS), "--out", str(t / "rep")],
        "config.yaml: Unknown config field 'run.sed'",
    ),
    (
        "report: garbage metrics.csv",
        lambda t: ["report", _run(t, GOOD_CONFIG, "garbage\n1,2,3\n"), "--out", str(t / "rep")],
        "metrics.csv lacks the columns",
    ),
    (
        "report: malformed metrics.csv row",
        lambda t: [
            "report",
            _run(t, GOOD_CONFIG, GOOD_METRICS + "1,online,one,eval/return_mean,x\n"),
            "--out",
            str(t / "rep"),
        ],
        "metrics.csv, line 3: malformed row",
    ),
    (
        "report: empty metrics.csv",
        lambda t: ["report", _run(t, GOOD_CONFIG, ""), "--out", str(t / "rep")],
        "metrics.csv lacks the columns",
    ),
    (
        "report: binary metrics.csv",
        lambda t: ["report", _binary_metrics(_run(t, GOOD_CONFIG, "")), "--out", str(t / "rep")],
        "metrics.csv is not a text CSV file",
    ),
    (
        "report: garbage meta.json",
        lambda t: ["report", _run(t, GOOD_CONFIG, GOOD_METRICS, "{"), "--out", str(t / "rep")],
        "meta.json is not valid JSON",
    ),
    (
        "report --out a file",
        lambda t: ["report", _run(t, GOOD_CONFIG, GOOD_METRICS), "--out", str(_afile(t))],
        "is a file, not a folder; choose another output folder",
    ),
    (
        "report --out under a file",
        lambda t: ["report", _run(t, GOOD_CONFIG, GOOD_METRICS), "--out", str(_afile(t) / "r")],
        "cannot be created",
    ),
    ("report: no run folder", lambda t: ["report", str(t / "none")], "No run folders"),
    # ---------------------------------------------------------------- otc data (tests/data/test_dataset_safety.py
    # has the damaged datasets and malformed files; these are the command-line arguments)
    (
        "data build --noise-std < 0",
        lambda t: [*_build(t), "--noise-std", "-0.5"],
        "noise_std (--noise-std) must be a finite number >= 0",
    ),
    (
        "data build --env-kwarg unknown",
        lambda t: [*_build(t), "--env-kwarg", "bogus=1"],
        "does not take the argument(s) bogus",
    ),
    (
        "data build --out under a file",
        lambda t: [*_build(t)[:-1], str(_afile(t) / "ds")],
        "is a file, not a folder",
    ),
    (
        "data build --size 0",
        lambda t: [*_build(t)[:6], "0", *_build(t)[7:]],
        "size must be >= 1; got 0",
    ),
    (
        "data import a non-HDF5 file",
        lambda t: [
            "data",
            "import",
            "d4rl",
            _file(t, "x.hdf5", "hello"),
            "--task",
            "nav/nonstationary",
            "--out",
            str(t / "ds"),
        ],
        "is not an HDF5 file",
    ),
    (
        "otc data train-behaviour on a discrete task",
        lambda t: ["data", "train-behaviour", "mpe/navigation-3-discrete", "--out", str(t / "rep")],
        "mpe/navigation-3-discrete has discrete (one-hot) actions; behaviour policies are trained with TD3",
    ),
    (
        "data info of no dataset",
        lambda t: ["data", "info", str(t / "none")],
        "is not a dataset folder",
    ),
]


def _build(tmp: Path) -> list[str]:
    return [
        "data",
        "build",
        "nav/nonstationary",
        "--kind",
        "random",
        "--size",
        "100",
        "--out",
        str(tmp / "ds"),
    ]


def _problems(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "make_argv, expected", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_one_clear_line(make_argv, expected, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.chdir(tmp_path)  # anything a refusal wrongly wrote would land here
    argv = make_argv(tmp_path)
    assert main(argv) == 2
    problems = _problems(caplog)
    assert len(problems) == 1, [r.getMessage() for r in problems]
    (record,) = problems
    message = record.getMessage()
    assert "\n" not in message
    assert expected in message, message
    assert not record.exc_info  # no traceback without -v
    out, err = capsys.readouterr()
    assert "Traceback" not in caplog.text + out + err
    # refused before any expensive work: no dataset cache, no run folder, no report
    for leftover in ("cache", "runs", "rep", "report", ".otc_cache"):
        assert not (tmp_path / leftover).exists(), leftover


def test_bad_input_count():
    """The inputs of this file answered with one clear line (the figure of issue 16, part A)."""
    assert len(BAD_INPUTS) == len({c[0] for c in BAD_INPUTS}) >= 45


def test_verbose_logs_the_traceback(tmp_path, caplog):
    bad = _file(tmp_path, "c.yaml", "seed: [1")
    assert main(["-v", "tune", f"config={bad}", f"cache_dir={tmp_path / 'cache'}"]) == 2
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None and "not valid YAML" in record.getMessage()


def test_recipe_scalar_axis_is_one_value(tmp_path, capsys):
    """``seed: 0`` in a grid is the one-value axis ``seed: [0]`` (as a single value of a Hydra multirun)."""
    recipe = _file(tmp_path, "mine.yaml", "grid: {seed: 3, task: [mpe/navigation-3]}\n" + RECIPE_OK)
    args = ["sweep", recipe, "--size", "smoke", "--runs-root", str(tmp_path / "r"), "--dry-run"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip().endswith("mpe_navigation-3-random-td3bc-default-seed3")
    preset = _file(tmp_path, "p.yaml", "sizes: {smoke: {dataset_size: 600, grid: {seed: 5}}}\n")
    assert main(["sweep", preset, "--size", "smoke", "--dry-run"]) == 0
    assert capsys.readouterr().out.strip().endswith("seed5")


def test_report_skips_damaged_runs_with_a_warning(tmp_path, caplog, capsys):
    good = tmp_path / "good"
    good.mkdir()
    (good / "config.yaml").write_text(GOOD_CONFIG)
    (good / "metrics.csv").write_text(GOOD_METRICS + "5,online,1,eval/return_mean,2.0\n7,onl")
    for name, config, metrics in (
        ("bad-yaml", "strategy: [\n", GOOD_METRICS),
        ("bad-csv", GOOD_CONFIG, "garbage\n1,2,3\n"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(config)
        (tmp_path / name / "metrics.csv").write_text(metrics)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings
    assert "bad-yaml/config.yaml is not valid YAML" in warnings[1] + warnings[0]
    assert "bad-csv/metrics.csv lacks the columns" in warnings[0] + warnings[1]
    assert "2 of 3 run folders skipped" in warnings[2]
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "2 of 3 run folders skipped" in report and "bad-csv" in report
    # the unterminated last line (a run writing it now) is left out, the rest is read
    assert "1.0 → 2.0" in report or "2.0" in report
    capsys.readouterr()


def test_one_line_of_os_errors():
    err = FileExistsError(17, "File exists", "/x/y")
    assert _one_line(err) == "/x/y: it already exists (File exists); check the path."
    assert _one_line(ValueError("two\nlines")) == "two lines"
    missing = FileNotFoundError(2, "No such file or directory", "/x/z")
    assert _one_line(missing) == "/x/z: No such file or directory; check the path."
