"""Run folders read back: :class:`RunRecord`, :func:`load_run` and the measures the tables compare.

The columns of ``metrics.csv`` and the name of the return metric are the writer's
(:data:`~torchrl_otc.trainers.run.METRIC_COLUMNS`, :data:`~torchrl_otc.trainers.run.RETURN_METRIC`).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from torchrl_otc.configs.tune import flat_config
from torchrl_otc.trainers.run import RETURN_METRIC

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
                    strategy += f"-{RunRecord(self.path, self.pair).label.split(' + ')[0]}"
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


def load_run(path: str | Path) -> RunRecord:
    """Reads a run folder; raises :class:`FileNotFoundError` naming what is missing.

    Examples:
        >>> import tempfile
        >>> from torchrl_otc.trainers.run import RunFolder
        >>> folder = RunFolder(tempfile.mkdtemp())
        >>> folder.write_config({"strategy": "uniform", "algo": "td3bc", "dataset": "random", "task": "nav/nonstationary"})
        >>> folder.log({"eval/return_mean": 1.0}, step=0, phase="offline", deployment=0)
        >>> folder.log({"eval/return_mean": 4.0}, step=50, phase="online", deployment=1)
        >>> load_run(folder.path).returns
        {0: 1.0, 1: 4.0}
    """
    path = Path(path)
    config_file, metrics_file = path / "config.yaml", path / "metrics.csv"
    for f in (config_file, metrics_file):
        if not f.exists():
            raise FileNotFoundError(f"{path} is not a run folder: {f.name} is missing.")
    config = _flat(yaml.safe_load(config_file.read_text()))
    with metrics_file.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    meta_file = path / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    pair = None
    if config.get("mix_pair"):  # a matched mix, or decomposed OTC at its pair's online share
        # where the sweep wrote it, else beside this run (a copied or moved sweep folder)
        for where in (Path(config["mix_pair"]), path.parent / Path(config["mix_pair"]).name):
            if (where / "config.yaml").exists():
                pair = yaml.safe_load((where / "config.yaml").read_text())
                break
    return RunRecord(path, config, rows, meta, pair)
