"""Typed configuration of one online-tuning run (Algorithm 1), with Hydra-style ``key=value`` overrides.

Every field is read by :class:`~torchrl_otc.trainers.tuning.OnlineTuner`; the values of the paper (section 4.1,
Table 3) are the defaults where they fit a CPU, and the ``paper`` preset (``config=paper``) restores the rest.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "TuneConfig",
    "STRATEGIES",
    "DISTANCES",
    "ALGORITHMS",
    "DATASET_KINDS",
    "parse_overrides",
    "coerce_field",
]

STRATEGIES = ("otc", "uniform", "online-only", "balanced-replay", "mix")
MIX_SOURCES = ("all", "latest")
DISTANCES = ("feature", "embedding", "value")
ALGORITHMS = ("bcq", "awac", "cql", "td3bc")
DATASET_KINDS = ("random", "medium", "medium-replay")
LOGGERS = ("csv", "tensorboard", "wandb")


@dataclass
class TuneConfig:
    """One run of offline training followed by K deployments of online tuning (Algorithm 1).

    Attributes:
        task: registered task name (``torchrl_otc.envs.registry``), e.g. ``"mpe/navigation-3"``.
        dataset: dataset kind: ``"random"``, ``"medium"`` or ``"medium-replay"`` (section 4.1).
        dataset_size: joint transitions in the offline dataset ``B^0``.
        dataset_path: a dataset folder to load instead of building one (``otc data build`` writes them).
        algo: base offline algorithm: ``"bcq"``, ``"awac"``, ``"cql"`` or ``"td3bc"``.
        strategy: how online tuning samples: ``"otc"``, ``"uniform"`` (merged data), ``"online-only"``,
            ``"balanced-replay"`` (Lee et al. 2021), ``"mix"`` (a fixed share of online rows, :class:`~torchrl_otc.MixSampler`).
        mix_fraction: ``strategy=mix``: the share of online rows per batch, in (0, 1), or ``"matched"``: per agent and
            deployment, the online share that the paired OTC run (``mix_pair``) measured.
        mix_source: ``strategy=mix``: online rows from ``"all"`` deployments so far or the ``"latest"`` one only.
        mix_pair: ``mix_fraction=matched``: the run folder of the paired OTC run (same task, dataset, algorithm, seed
            and sizes; finished). In a recipe, the *label* of the OTC variant (the sweep fills in its folder).
        distance: OTC's transition distance: ``"feature"`` (standardised L1), ``"embedding"`` (d_e),
            ``"value"`` (d_q) (section 3.3).
        alpha: initial exponent alpha^0 of eq. (3) (section 4.3 uses 1.0).
        adaptive_alpha: adapt alpha per deployment by eq. (4).
        num_candidates: ``|B|`` (Table 3: 512).
        num_online: ``|D|`` (Table 3: 2000).
        next_state: what ``d(s', s'*)`` compares for the feature distance: ``"displacement"`` or ``"next_state"``.
        embedding_reconstruct: what d_e's CVAE decodes: ``"action"`` (the paper's ``D(a_i | s, s', z)``) or
            ``"next_state"`` (``D(s' | s, a_i, z)``).
        embedding_update_every: d_e's CVAE makes one gradient step every this many agent updates.
        value_actions: how d_q computes ``V(s') = E_a Q(s', a)``: ``"policy"`` (the policy's action) or
            ``"sample"`` (mean over sampled actions; not for TD3+BC).
        self_match: whether online candidates may match their own copies (the paper's procedure).
        offline_updates: gradient steps of offline training on ``B_i^0``.
        deployments: K (section 4.1: 10).
        steps_per_deployment: M, environment steps per deployment; ``None`` means 1 % of ``dataset_size``
            (section 4.1).
        updates_per_deployment: L; ``None`` means Table 3's value for the algorithm (4000 BCQ, 2000 others).
        eval_episodes: episodes per evaluation (after offline training and after every deployment).
        sequential_exploration: collect agent by agent with an exploration policy for the collecting agent
            (section 4.6).
        exploration_noise: std of the Gaussian noise of the exploration policy (sequential exploration).
        seed: random seed of the run.
        threads: intra-op threads of the run (:func:`torch.set_num_threads`); ``None`` keeps torch's default. Returns
            at small sizes change with the thread count (floating-point sums in another order), so runs that are
            compared or regenerated pin it; sweeps default to 1.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        runs_root: folder under which run folders are created.
        run_name: name of the run folder; ``None`` derives one from the config.
        cache_dir: folder for datasets and offline-trained agents shared by runs.
        logger: ``"csv"``, ``"tensorboard"`` or ``"wandb"`` (TorchRL loggers).
        checkpoint_every: gradient steps between checkpoints inside an update phase.
        compile: compile OTC's distance step (:func:`torch.compile`).

    Examples:
        >>> cfg = TuneConfig(algo="bcq", dataset_size=100_000, updates_per_deployment=None).validate()
        >>> cfg.resolved_steps_per_deployment, cfg.resolved_updates_per_deployment  # 1 % of B^0; Table 3's L
        (1000, 4000)
    """

    task: str = "mpe/navigation-3"
    dataset: str = "random"
    dataset_size: int = 10_000
    dataset_path: str | None = None
    algo: str = "td3bc"
    strategy: str = "otc"
    mix_fraction: float | str = 0.5
    mix_source: str = "all"
    mix_pair: str | None = None
    distance: str = "feature"
    alpha: float = 1.0
    adaptive_alpha: bool = True
    num_candidates: int = 512
    num_online: int = 2000
    next_state: str = "displacement"
    embedding_reconstruct: str = "action"
    embedding_update_every: int = 1
    value_actions: str = "policy"
    self_match: bool = True
    offline_updates: int = 1000
    deployments: int = 3
    steps_per_deployment: int | None = None
    updates_per_deployment: int | None = 300
    eval_episodes: int = 5
    sequential_exploration: bool = False
    exploration_noise: float = 0.1
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    runs_root: str = "runs"
    run_name: str | None = None
    cache_dir: str = ".otc_cache"
    logger: str = "csv"
    checkpoint_every: int = 500
    compile: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TuneConfig:
        """Checks every choice and number; raises :class:`ValueError` naming the valid values."""
        choices = {
            "strategy": STRATEGIES,
            "distance": DISTANCES,
            "algo": ALGORITHMS,
            "dataset": DATASET_KINDS,
            "logger": LOGGERS,
            "next_state": ("displacement", "next_state"),
            "embedding_reconstruct": ("action", "next_state"),
            "value_actions": ("policy", "sample"),
            "device": ("auto", "cpu", "cuda"),
            "mix_source": MIX_SOURCES,
        }
        for name, valid in choices.items():
            value = getattr(self, name)
            if value not in valid and not (name == "device" and str(value).startswith("cuda:")):
                raise ValueError(f"Unknown {name} {value!r}; valid values: {', '.join(valid)}.")
        positive = (
            "dataset_size",
            "num_candidates",
            "num_online",
            "deployments",
            "eval_episodes",
            "checkpoint_every",
            "embedding_update_every",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}.")
        for name in ("offline_updates",):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}.")
        for name in ("steps_per_deployment", "updates_per_deployment"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None; got {value}.")
        if self.value_actions == "sample" and self.algo == "td3bc":
            raise ValueError(
                "value_actions=sample needs a stochastic policy; TD3+BC's actor is deterministic. Use "
                "value_actions=policy with algo=td3bc."
            )
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"threads must be an integer >= 1 (or none); got {self.threads!r}.")
        if self.mix_fraction != "matched":
            try:
                fraction = float(self.mix_fraction)
            except (TypeError, ValueError):
                raise ValueError(
                    f"mix_fraction must be a number in (0, 1) or 'matched'; got {self.mix_fraction!r}."
                ) from None
            if not 0.0 < fraction < 1.0:
                raise ValueError(
                    f"mix_fraction must lie strictly between 0 and 1 (or be 'matched'); got {fraction}. Use "
                    f"strategy=online-only for 1 and strategy=uniform for the merged data as it comes."
                )
            self.mix_fraction = fraction
        elif self.strategy == "mix" and not self.mix_pair:
            raise ValueError(
                "mix_fraction=matched takes its online share from a paired OTC run: set mix_pair=<that run's "
                "folder> (in a recipe: mix_pair=<label of the OTC variant>)."
            )
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0; got {self.alpha}.")
        if self.extra:
            raise ValueError(
                f"Unknown config fields: {sorted(self.extra)}; valid fields: {field_names()}."
            )
        return self

    @property
    def resolved_steps_per_deployment(self) -> int:
        """M, the configured value or 1 % of the offline dataset (section 4.1)."""
        return self.steps_per_deployment or max(1, self.dataset_size // 100)

    @property
    def resolved_updates_per_deployment(self) -> int:
        """L, the configured value or Table 3's (4000 for BCQ, 2000 otherwise)."""
        if self.updates_per_deployment is not None:
            return self.updates_per_deployment
        from torchrl_otc.configs.algorithms import make_config

        return make_config(self.algo).finetune_updates

    @property
    def dataset_seed(self) -> int | None:
        """Seed the dataset ``B^0`` is built with: the run's, or ``None`` for ``medium-replay``, whose rows are the
        recorded behaviour-training run's replay, the same for every seed.

        Examples:
            >>> TuneConfig(dataset="random", seed=3).dataset_seed, TuneConfig(dataset="medium-replay").dataset_seed
            (3, None)
        """
        return None if self.dataset == "medium-replay" else self.seed

    def dataset_key(self) -> str | None:
        """Name of the cached dataset ``B^0`` under ``cache_dir/datasets`` (``None`` with ``dataset_path``).

        Kinds without a :attr:`dataset_seed` (``medium-replay``) have no seed in the key: the seeds of a sweep
        build such a dataset once.

        Examples:
            >>> TuneConfig(task="mamujoco/hopper-3x1", dataset="random", dataset_size=1000, seed=2).dataset_key()
            'mamujoco_hopper-3x1-random-1000-seed2'
            >>> TuneConfig(task="mamujoco/hopper-3x1", dataset="medium-replay", dataset_size=1000).dataset_key()
            'mamujoco_hopper-3x1-medium-replay-1000'
        """
        if self.dataset_path is not None:
            return None
        name = f"{self.task.replace('/', '_')}-{self.dataset}-{self.dataset_size}"
        return name if self.dataset_seed is None else f"{name}-seed{self.dataset_seed}"

    def offline_key(self) -> str:
        """Identifies the offline phase: runs that share it reuse the same offline-trained agents."""
        fields: tuple[Any, ...] = (
            self.task,
            self.dataset,
            self.dataset_size,
            self.dataset_path,
            self.algo,
            self.seed,
            self.offline_updates,
        )
        if (
            self.threads is not None
        ):  # offline agents trained with another thread count differ in their bits
            fields += (f"threads{self.threads}",)
        return "-".join(str(f).replace("/", "_") for f in fields)

    def default_run_name(self) -> str:
        distance = f"-{self.distance}" if self.strategy == "otc" else ""
        if self.strategy == "mix":
            distance = f"-{self.mix_fraction}" + ("" if self.mix_source == "all" else "-latest")
        return (
            f"{self.task.replace('/', '_')}-{self.dataset}-{self.algo}-{self.strategy}{distance}"
            f"-seed{self.seed}"
        )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("extra")
        return out


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TuneConfig) if f.name != "extra"]


def coerce_field(name: str, raw: str, cls: type | None = None) -> Any:
    """Converts the text of a ``key=value`` override to the type of field ``name`` of dataclass ``cls``.

    ``none`` for optional fields; ``true``/``false`` for booleans; integers and floats checked; tuples, lists and
    mappings read as YAML (``[256, 256]``, ``{beta: 0.1}``); other fields keep the text.

    Args:
        name: the field.
        raw: the override's text.
        cls: the dataclass. Defaults to :class:`TuneConfig`.

    Examples:
        >>> coerce_field("deployments", "10"), coerce_field("dataset_path", "none")
        (10, None)
        >>> from torchrl_otc.data.datasets.behaviour import BehaviourConfig
        >>> coerce_field("hidden", "[256, 256]", BehaviourConfig)
        (256, 256)
    """
    tp = typing.get_type_hints(TuneConfig if cls is None else cls)[name]
    origin = typing.get_origin(tp)
    if origin in (tuple, list, dict):
        value = yaml.safe_load(raw)
        if not isinstance(value, dict if origin is dict else (list, tuple)):
            example = "{a: 1}" if origin is dict else "[1, 2]"
            raise ValueError(f"{name}={raw!r}: expected YAML like {name}={example}.")
        return tuple(value) if origin is tuple else value
    args = typing.get_args(tp)
    if type(None) in args and raw.lower() in ("none", "null", ""):
        return None
    base = next(a for a in args if a is not type(None)) if args else tp
    try:
        if base is bool:
            if raw.lower() in ("true", "1", "yes"):
                return True
            if raw.lower() in ("false", "0", "no"):
                return False
            raise ValueError(raw)
        if base is int:
            value = float(raw)
            if not value.is_integer():
                raise ValueError(raw)
            return int(value)
        if base is float:
            return float(raw)
    except ValueError:
        if str in args:  # a number or a word (mix_fraction=0.3 or mix_fraction=matched)
            return raw
        raise ValueError(f"{name}={raw!r}: expected {getattr(base, '__name__', base)}.") from None
    return raw


PRESETS_DIR = Path(__file__).resolve().parent


def _config_file(name: str) -> Path:
    """``config=NAME``: a YAML file, or a preset shipped with the package (``paper``)."""
    path = Path(name)
    if path.exists():
        return path
    preset = PRESETS_DIR / f"{name}.yaml"
    if path.suffix == "" and preset.exists():
        return preset
    shipped = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    raise FileNotFoundError(
        f"config={name}: no such file, and no shipped preset of that name (shipped: {', '.join(shipped)})."
    )


def parse_overrides(overrides: Iterable[str], base: TuneConfig | None = None) -> TuneConfig:
    """Builds a :class:`TuneConfig` from Hydra-style ``key=value`` strings.

    ``config=PATH.yaml`` loads a YAML file of fields first; later overrides win. ``config=paper`` loads the
    shipped preset of the paper's sizes (``torchrl_otc/configs/paper.yaml``).

    Examples:
        >>> cfg = parse_overrides(["algo=bcq", "deployments=10", "steps_per_deployment=none"])
        >>> cfg.algo, cfg.deployments, cfg.steps_per_deployment
        ('bcq', 10, None)
        >>> paper = parse_overrides(["config=paper", "algo=bcq"])
        >>> paper.dataset_size, paper.resolved_steps_per_deployment, paper.resolved_updates_per_deployment
        (1000000, 10000, 4000)
    """
    values: dict[str, Any] = dataclasses.asdict(base) if base is not None else {}
    values.pop("extra", None)
    names = field_names()
    for item in overrides:
        if "=" not in item:
            raise ValueError(
                f"Overrides look like key=value; got {item!r}. Valid keys: {', '.join(names)}."
            )
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("+")
        if key == "config":
            loaded = yaml.safe_load(_config_file(raw).read_text()) or {}
            unknown = sorted(set(loaded) - set(names))
            if unknown:
                raise ValueError(
                    f"{raw}: unknown config fields {unknown}; valid fields: {', '.join(names)}."
                )
            values.update(loaded)
            continue
        if key not in names:
            raise ValueError(f"Unknown config field {key!r}; valid fields: {', '.join(names)}.")
        values[key] = coerce_field(key, raw)
    return TuneConfig(**values).validate()
