"""Run folders read back: :class:`RunRecord`, :func:`load_run` and the measures the tables compare.

The columns of ``metrics.csv`` and the name of the return metric are the writer's
(:data:`~torchrl_otc.trainers.run.METRIC_COLUMNS`, :data:`~torchrl_otc.trainers.run.RETURN_METRIC`). A folder
whose files cannot be read back (a YAML syntax error in ``config.yaml``, a ``metrics.csv`` without those columns or
with a malformed row, a damaged ``meta.json``) is refused by :func:`load_run` with one
:class:`~torchrl_otc.configs.parts.ConfigError` line naming the file; :func:`~torchrl_otc.report.write_report`
skips such folders with a warning.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchrl_otc.configs.overrides import read_yaml
from torchrl_otc.configs.tune import ConfigError, flat_config
from torchrl_otc.trainers.run import METRIC_COLUMNS, RETURN_METRIC

__all__ = ["MEASURES", "RunRecord", "example_run", "load_run"]

#: What the statistical tables compare, per run: the last deployment's return, and the mean over deployments 1..K
#: (less noisy; it also credits a method that improves early).
MEASURES = {
    "last": "return at the last deployment",
    "mean": "mean return over deployments 1..K",
}


def _flat(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run's config in the flat form the tables read (``config["strategy"]``): a nested ``config.yaml`` (parts
    ``task``, ``data``, ``algorithm``, ``sampler``, ``run``) through :func:`~torchrl_otc.configs.tune.flat_config`;
    a flat one (earlier versions, hand-made records) as it is."""
    if any(isinstance(value, Mapping) for value in config.values()):
        return flat_config(config)
    return dict(config)


@dataclass
class RunRecord:
    """One run folder, read back: its config, its metric rows and its provenance (``meta.json``).

    ``config`` and ``pair`` are kept in the flat form (``config["strategy"]``, ``config["algo"]``): a nested config
    (``config.yaml`` as :class:`~torchrl_otc.configs.tune.TuneConfig` writes it) is flattened on construction.

    Examples:
        >>> from pathlib import Path
        >>> rows = [{"step": str(10 * k), "phase": "online", "deployment": str(k), "name": name, "value": str(v)}
        ...         for k, (r, share) in enumerate([(-10.0, 0.0), (-8.0, 0.3), (-5.0, 0.5)])
        ...         for name, v in (("eval/return_mean", r), ("agent0/online_share", share))]
        >>> run = RunRecord(Path("runs/r"), {"strategy": "otc", "distance": "feature", "algo": "td3bc",
        ...                 "dataset": "random", "task": "mpe/navigation-3", "seed": 0}, rows)
        >>> run.label, run.returns
        ('otc-feature + td3bc', {0: -10.0, 1: -8.0, 2: -5.0})
        >>> round(run.online_mean("/online_share"), 3)
        0.267
    """

    path: Path
    config: dict
    rows: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    #: a matched mix or matched decomposed OTC: its paired coupled-OTC run's config
    pair: dict | None = None

    def __post_init__(self) -> None:
        self.config = _flat(self.config)
        if self.pair is not None:
            self.pair = _flat(self.pair)

    def measure(self, which: str) -> float:
        """A scalar of the run's returns: ``"last"`` (the last deployment's), ``"mean"`` (the mean over deployments
        ``1..K``) or ``"offline"`` (deployment 0's); NaN when the run has no online evaluation yet."""
        returns = self.returns
        online = [v for k, v in sorted(returns.items()) if k >= 1]
        if which not in MEASURES and which != "offline":
            raise ValueError(f"Unknown measure {which!r}; use one of {', '.join(MEASURES)}.")
        if which == "offline":
            return returns.get(0, math.nan)
        if not online:
            return math.nan
        return online[-1] if which == "last" else statistics.fmean(online)

    def series(self, name: str) -> dict[int, float]:
        """The last value of metric ``name`` per deployment."""
        out: dict[int, float] = {}
        for row in self.rows:
            if row["name"] == name:
                out[int(row["deployment"])] = float(row["value"])
        return out

    @property
    def returns(self) -> dict[int, float]:
        """Mean evaluation return per deployment (0 = after offline training)."""
        return self.series(RETURN_METRIC)

    @property
    def label(self) -> str:
        """The column of the run in Table 1, the strategy (with OTC's options that differ from the defaults)
        and the algorithm, e.g. ``otc-feature-next_state + td3bc``."""
        cfg = self.config
        strategy = cfg["strategy"]
        if strategy == "otc":
            parts = [f"otc-{cfg['distance']}"]
            if not cfg.get("adaptive_alpha", True):
                parts.append(f"fixed{float(cfg.get('alpha', 1.0)):g}")
            elif float(cfg.get("alpha", 1.0)) != 1.0:
                parts.append(f"alpha0={float(cfg['alpha']):g}")
            if (
                cfg["distance"] == "feature"
                and cfg.get("next_state", "displacement") != "displacement"
            ):
                parts.append(cfg["next_state"])
            if (
                cfg["distance"] == "embedding"
                and cfg.get("embedding_reconstruct", "action") != "action"
            ):
                parts.append(f"decode-{cfg['embedding_reconstruct']}")
            if not cfg.get("self_match", True):
                parts.append("no-self-match")
            if cfg.get("online_fraction") is not None:  # decomposed OTC (issue 15)
                fraction = cfg["online_fraction"]
                parts.append(
                    f"of{fraction if fraction in ('adaptive', 'matched') else format(float(fraction), 'g')}"
                )
                if cfg.get("mix_source", "all") != "all":
                    parts.append(cfg["mix_source"])
            strategy = "-".join(parts)
        if strategy == "mix":
            if cfg.get("mix_fraction") == "matched":
                strategy = "mix-matched"
                if self.pair is not None:
                    pair = RunRecord(self.path, self.pair).label.split(" + ")[0]
                    if cfg.get("sequential_exploration"):  # said once, at the end of this label
                        pair = pair.removesuffix("-sequential")
                    strategy += f"-{pair}"
            else:
                strategy = f"mix-{float(cfg.get('mix_fraction', 0.5)):g}"
            if cfg.get("mix_source", "all") != "all":
                strategy += f"-{cfg['mix_source']}"
        if cfg.get("sequential_exploration"):
            strategy += "-sequential"
        return f"{strategy} + {cfg['algo']}"

    def online_mean(self, suffix: str) -> float:
        """Mean over the online phase's rows and the agents of the metrics ``agent{i}/<suffix>``."""
        values = [
            float(r["value"])
            for r in self.rows
            if r["phase"] == "online"
            and r["name"].startswith("agent")
            and r["name"].endswith(suffix)
        ]
        return statistics.mean(values) if values else math.nan

    @property
    def row_key(self) -> tuple[str, str]:
        return (self.config["dataset"], self.config["task"])


def example_run() -> RunRecord:
    """A small in-memory run (OTC with the feature distance, TD3+BC, three evaluations) for examples and tests.

    Examples:
        >>> example_run().returns
        {0: -10.0, 1: -8.0, 2: -5.0}
    """
    rows = [
        {
            "step": str(10 * k),
            "phase": "online",
            "deployment": str(k),
            "name": name,
            "value": str(v),
        }
        for k, (ret, share) in enumerate([(-10.0, 0.0), (-8.0, 0.3), (-5.0, 0.5)])
        for name, v in ((RETURN_METRIC, ret), ("agent0/online_share", share))
    ]
    config = {
        "strategy": "otc",
        "distance": "feature",
        "algo": "td3bc",
        "dataset": "random",
        "task": "mpe/navigation-3",
        "seed": 0,
    }
    return RunRecord(Path("runs/r"), config, rows)


def _read_config(file: Path) -> dict[str, Any]:
    """A run's ``config.yaml`` in the flat form; one :class:`ConfigError` line naming the file when unreadable."""
    raw = read_yaml(file, "run config")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"run config {file} must be a mapping of config fields; got {raw!r}.")
    try:
        config = _flat(raw)
    except ValueError as err:
        raise ConfigError(f"run config {file}: {err}") from None
    missing = [k for k in ("task", "dataset", "algo", "strategy") if k not in config]
    if missing:
        raise ConfigError(
            f"run config {file} lacks the fields {missing}, which the report needs; it was not written by otc."
        )
    return config


def _read_metrics(file: Path) -> list[dict[str, str]]:
    """The rows of ``metrics.csv``, each checked; a line that is not terminated yet (a run writing it now) is left
    out; one :class:`ConfigError` line naming the file and line of the first malformed row."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{file} is not a text CSV file; the run folder is damaged: re-run it or leave it out of the report."
        ) from None
    if not text.endswith("\n"):  # csv rows end with a newline: the last line is still being written
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in METRIC_COLUMNS if c not in header]
    if missing:
        raise ConfigError(
            f"{file} lacks the columns {missing} (its header: {header or 'none'}); a run's metrics.csv has "
            f"the columns {', '.join(METRIC_COLUMNS)}. The run folder is damaged or not written by otc: re-run it or leave it out of the report."
        )
    rows = []
    for row in reader:
        line = reader.line_num
        try:
            if any(row.get(c) is None for c in METRIC_COLUMNS):
                raise ValueError("too few fields")
            int(row["deployment"])
            float(row["value"])
        except ValueError as err:
            raise ConfigError(
                f"{file}, line {line}: malformed row {list(row.values())} ({err}); the run folder is damaged: re-run it or leave it out of the report."
            ) from None
        rows.append(row)
    return rows


def _read_meta(file: Path) -> dict[str, Any]:
    if not file.exists():
        return {}
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"{file} is not valid JSON ({err}); the run folder is damaged: re-run it or leave it out of the report."
        ) from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{file} must hold a JSON object; got {meta!r}.")
    return meta


def load_run(path: str | Path) -> RunRecord:
    """Reads a run folder.

    Raises:
        FileNotFoundError: ``config.yaml`` or ``metrics.csv`` is missing (the message names it).
        ConfigError: a file cannot be read back (a :class:`ValueError`; one line naming the file and what is
            wrong): ``config.yaml`` is not valid YAML or holds unknown fields, ``metrics.csv`` lacks its columns or
            has a malformed row (an unterminated last line, one a running run is writing, is left out), or
            ``meta.json`` is not a JSON object.

    Examples:
        >>> import tempfile
        >>> from torchrl_otc.trainers.run import RunFolder
        >>> folder = RunFolder(tempfile.mkdtemp())
        >>> folder.write_config({"strategy": "uniform", "algo": "td3bc", "dataset": "random", "task": "nav/nonstationary"})
        >>> folder.log({"eval/return_mean": 1.0}, step=0, phase="offline", deployment=0)
        >>> folder.log({"eval/return_mean": 4.0}, step=50, phase="online", deployment=1)
        >>> load_run(folder.path).returns
        {0: 1.0, 1: 4.0}
        >>> _ = (folder.path / "metrics.csv").write_text("garbage\\n1,2\\n")
        >>> try:
        ...     load_run(folder.path)
        ... except ValueError as err:
        ...     print(str(err).split(" lacks")[1][:40])
         the columns ['step', 'phase', 'deployme
    """
    path = Path(path)
    config_file, metrics_file = path / "config.yaml", path / "metrics.csv"
    for f in (config_file, metrics_file):
        if not f.exists():
            raise FileNotFoundError(f"{path} is not a run folder: {f.name} is missing.")
    config = _read_config(config_file)
    rows = _read_metrics(metrics_file)
    meta = _read_meta(path / "meta.json")
    pair = None
    if config.get("mix_pair"):  # a matched mix, or decomposed OTC at its pair's online share
        # where the sweep wrote it, else beside this run (a copied or moved sweep folder)
        for where in (Path(config["mix_pair"]), path.parent / Path(config["mix_pair"]).name):
            if (where / "config.yaml").exists():
                pair = _read_config(where / "config.yaml")
                break
    return RunRecord(path, config, rows, meta, pair)
