"""Typed configuration of one online-tuning run (Algorithm 1): nested parts, Hydra-style ``key=value`` overrides.

A :class:`TuneConfig` has five parts, each a dataclass whose fields are the arguments of what it configures:
``task`` (:class:`~torchrl_otc.configs.parts.TaskConfig`), ``data`` (:class:`~torchrl_otc.configs.parts.DataConfig`),
``algorithm`` (one of :mod:`torchrl_otc.configs.algorithms`, chosen by its name, Table 3 defaults), ``sampler``
(:class:`~torchrl_otc.configs.parts.SamplerConfig`, with its ``distance``) and ``run``
(:class:`~torchrl_otc.configs.parts.RunConfig`). Every field is set by its dotted path
(``otc tune algo=bcq algorithm.actor_lr=0.0003 sampler.num_candidates=256``) or, for the fields of earlier flat
versions, by a shortcut (:data:`~torchrl_otc.configs.overrides.SHORTCUTS`: ``algo``, ``strategy``, ``seed``, ...).
The values of the paper (section 4.1, Table 3) are the defaults where they fit a CPU; the ``paper`` preset
(``config=paper``) restores the rest.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from torchrl_otc.configs.algorithms import ALGORITHM_CONFIGS, AlgorithmConfig, TD3BCConfig
from torchrl_otc.configs.overrides import (
    PARTS,
    SHORTCUTS,
    coerce_field,
    config_file,
    convert_value,
    field_owner,
    read_yaml,
    to_dotted,
)
from torchrl_otc.configs.parts import (
    ALGORITHMS,
    DATASET_KINDS,
    DISTANCES,
    STRATEGIES,
    ConfigError,
    DataConfig,
    RunConfig,
    SamplerConfig,
    TaskConfig,
)

__all__ = [
    "ALGORITHMS",
    "DATASET_KINDS",
    "DISTANCES",
    "STRATEGIES",
    "ConfigError",
    "TuneConfig",
    "coerce_field",
    "flat_config",
    "parse_overrides",
]


def _algorithm_class(name: Any) -> type[AlgorithmConfig]:
    key = str(name).lower().replace("+", "").replace("-", "").replace("_", "")
    if key not in ALGORITHM_CONFIGS:
        raise ConfigError(
            f"Unknown algorithm.name (algo) {name!r}; valid values: {', '.join(ALGORITHM_CONFIGS)}."
        )
    return ALGORITHM_CONFIGS[key]


def _replace(part: Any, owner: str, values: dict[str, Any]) -> Any:
    """``part`` with ``values`` (field -> value, text or typed) converted to its fields' types."""
    if not values:
        return part
    return dataclasses.replace(
        part,
        **{name: convert_value(f"{owner}.{name}", v, type(part)) for name, v in values.items()},
    )


def _plain(value: Any) -> Any:
    """Tuples as lists, for YAML."""
    return list(value) if isinstance(value, tuple) else value


@dataclasses.dataclass(init=False)
class TuneConfig:
    """One run of offline training followed by K deployments of online tuning (Algorithm 1).

    Built from parts (``TuneConfig(algorithm=BCQConfig(actor_lr=3e-4))``), from dotted paths and shortcuts
    (:meth:`from_dict`, :func:`parse_overrides`; the constructor takes them as keywords too:
    ``TuneConfig(algo="bcq", seed=3)``), or from a run's ``config.yaml`` (:meth:`from_dict`, nested or flat). The
    shortcuts are attributes as well: ``cfg.seed`` reads and writes ``cfg.run.seed`` (``cfg.task`` is the part).

    Attributes:
        task: the task and its collection, a :class:`~torchrl_otc.configs.parts.TaskConfig`.
        data: the offline dataset ``B^0``, a :class:`~torchrl_otc.configs.parts.DataConfig`.
        algorithm: the base offline algorithm: a :class:`~torchrl_otc.configs.algorithms.BCQConfig`,
            :class:`~torchrl_otc.configs.algorithms.AWACConfig`, :class:`~torchrl_otc.configs.algorithms.CQLConfig`
            or :class:`~torchrl_otc.configs.algorithms.TD3BCConfig` (the default), each with Table 3's values.
        sampler: the sampling strategy of online tuning and its distance, a
            :class:`~torchrl_otc.configs.parts.SamplerConfig`.
        run: the loop's sizes, seed, compute and run folder, a :class:`~torchrl_otc.configs.parts.RunConfig`.

    Examples:
        >>> cfg = TuneConfig(algo="bcq", dataset_size=100_000, updates_per_deployment=None).validate()
        >>> cfg.resolved_steps_per_deployment, cfg.resolved_updates_per_deployment  # 1 % of B^0; Table 3's L
        (1000, 4000)
        >>> cfg = TuneConfig.from_dict({"algo": "bcq", "algorithm": {"actor_lr": 3e-4}, "seed": 2})
        >>> type(cfg.algorithm).__name__, cfg.algorithm.actor_lr, cfg.run.seed, cfg.seed
        ('BCQConfig', 0.0003, 2, 2)
    """

    task: TaskConfig
    data: DataConfig
    algorithm: AlgorithmConfig
    sampler: SamplerConfig
    run: RunConfig

    def __init__(
        self,
        task: TaskConfig | str | Mapping[str, Any] | None = None,
        data: DataConfig | Mapping[str, Any] | None = None,
        algorithm: AlgorithmConfig | str | Mapping[str, Any] | None = None,
        sampler: SamplerConfig | str | Mapping[str, Any] | None = None,
        run: RunConfig | Mapping[str, Any] | None = None,
        **shortcuts: Any,
    ) -> None:
        given = {"task": task, "data": data, "algorithm": algorithm, "sampler": sampler, "run": run}
        defaults = {
            "task": TaskConfig,
            "data": DataConfig,
            "algorithm": TD3BCConfig,
            "sampler": SamplerConfig,
            "run": RunConfig,
        }
        rest: dict[str, Any] = {}
        for name, value in given.items():
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                object.__setattr__(self, name, value)
            else:
                object.__setattr__(self, name, defaults[name]())
                if value is not None:
                    rest[name] = value
        self._apply(to_dotted({**rest, **shortcuts}))

    # ---------------------------------------------------------------------------------------- shortcuts
    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: the flat shortcuts (cfg.seed is cfg.run.seed)
        if name == "task" or name not in SHORTCUTS or "run" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self.get(SHORTCUTS[name])

    def __setattr__(self, name: str, value: Any) -> None:
        if name in PARTS and (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            object.__setattr__(self, name, value)
        elif name in SHORTCUTS or name in PARTS:
            self._apply(to_dotted({name: value}), convert=False)
        else:
            raise AttributeError(
                f"TuneConfig has no field {name!r}; its parts are {', '.join(p for p in PARTS if '.' not in p)} "
                f"and its shortcuts {', '.join(SHORTCUTS)}."
            )

    def get(self, path: str) -> Any:
        """The value at a dotted path or shortcut.

        Examples:
            >>> TuneConfig(algo="bcq").get("algorithm.hidden_sizes"), TuneConfig().get("strategy")
            ((64, 64), 'otc')
        """
        (dotted,) = to_dotted({path: None})
        value: Any = self
        for part in dotted.split("."):
            value = getattr(value, part)
        return value

    def _apply(self, dotted: Mapping[str, Any], *, convert: bool = True) -> None:
        """Sets dotted paths in place: the algorithm's name first (a new name: that algorithm's Table 3 config),
        then every field, converted to its type (``convert=False``: as given, for attribute writes)."""
        groups: dict[str, dict[str, Any]] = defaultdict(dict)
        for path, value in dotted.items():
            owner, _, name = path.rpartition(".")
            groups[owner][name] = value
        algorithm = self.algorithm
        if "name" in groups["algorithm"]:
            cls = _algorithm_class(groups["algorithm"].pop("name"))
            algorithm = algorithm if type(algorithm) is cls else cls()
        fields = {f.name for f in dataclasses.fields(algorithm)}
        unknown = sorted(set(groups["algorithm"]) - fields)
        if unknown:
            raise ConfigError(
                f"Unknown config field 'algorithm.{unknown[0]}' for algo={algorithm.name} "
                f"({type(algorithm).__name__}); valid fields: {', '.join(sorted(fields))}."
            )

        def update(part: Any, owner: str) -> Any:
            values = groups.get(owner, {})
            if not values:
                return part
            if convert:
                return _replace(part, owner, values)
            return dataclasses.replace(part, **values)

        distance = update(self.sampler.distance, "sampler.distance")
        sampler = update(self.sampler, "sampler")
        if distance is not sampler.distance:
            sampler = dataclasses.replace(sampler, distance=distance)
        object.__setattr__(self, "sampler", sampler)
        object.__setattr__(self, "algorithm", update(algorithm, "algorithm"))
        for owner in ("task", "data", "run"):
            object.__setattr__(self, owner, update(getattr(self, owner), owner))

    # ---------------------------------------------------------------------------------------- dicts
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, validate: bool = True) -> TuneConfig:
        """Builds a config from a mapping: nested (``config.yaml`` of this version), flat (``config.yaml`` of
        earlier versions, recipes) or dotted keys, mixed as one likes; missing fields keep their defaults.

        Args:
            values: the mapping; text values are converted as on the command line.

        Keyword Args:
            validate: run :meth:`validate` (readers of old run folders may skip it).

        Examples:
            >>> old = {"task": "nav/nonstationary", "algo": "bcq", "strategy": "mix", "mix_fraction": 0.25, "seed": 1}
            >>> cfg = TuneConfig.from_dict(old)
            >>> cfg.task.name, cfg.algorithm.name, cfg.sampler.mix_fraction, cfg.run.seed
            ('nav/nonstationary', 'bcq', 0.25, 1)
            >>> TuneConfig.from_dict(cfg.to_dict()) == cfg
            True
        """
        config = cls(**to_dotted(values))
        return config.validate() if validate else config

    def merge(self, values: Mapping[str, Any]) -> TuneConfig:
        """A copy with ``values`` (nested, flat or dotted keys) applied; a changed algorithm name starts from that
        algorithm's Table 3 config, and ``algorithm.*`` values apply after it.

        Examples:
            >>> base = TuneConfig(algo="bcq", **{"algorithm.vae_lr": 1e-3})
            >>> base.merge({"algo": "awac"}).algorithm.actor_lr, base.merge({"seed": 4}).algorithm.vae_lr
            (0.0001, 0.001)
        """
        dotted = to_dotted(values)
        new_name = dotted.get("algorithm.name")
        out = copy.deepcopy(self)
        if new_name is not None and _algorithm_class(new_name) is not type(self.algorithm):
            out = dataclasses.replace(out, algorithm=_algorithm_class(new_name)())
        out._apply(dotted)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The nested config, every field (what ``config.yaml`` holds; tuples as lists).

        Examples:
            >>> d = TuneConfig(algo="bcq").to_dict()
            >>> list(d), d["algorithm"]["name"], d["algorithm"]["hidden_sizes"], d["sampler"]["distance"]["name"]
            (['task', 'data', 'algorithm', 'sampler', 'run'], 'bcq', [64, 64], 'feature')
        """
        out: dict[str, Any] = {}
        for part in ("task", "data", "algorithm", "sampler", "run"):
            values = {k: _plain(v) for k, v in dataclasses.asdict(getattr(self, part)).items()}
            out[part] = {"name": self.algorithm.name, **values} if part == "algorithm" else values
        return out

    def to_flat(self) -> dict[str, Any]:
        """The flat view: every shortcut (the fields of earlier flat versions) and ``algorithm.<field>`` for the
        algorithm's hyperparameters. :meth:`from_dict` reads it back.

        Examples:
            >>> flat = TuneConfig(algo="bcq", strategy="uniform").to_flat()
            >>> flat["algo"], flat["strategy"], flat["algorithm.hidden_sizes"]
            ('bcq', 'uniform', [64, 64])
        """
        out = {name: _plain(self.get(path)) for name, path in SHORTCUTS.items()}
        for f in dataclasses.fields(self.algorithm):
            out[f"algorithm.{f.name}"] = _plain(getattr(self.algorithm, f.name))
        return out

    # ---------------------------------------------------------------------------------------- checks
    def validate(self) -> TuneConfig:
        """Checks every part and choice, and the sizes that only have a meaning together.

        Beyond each part's own checks: every number is finite (no NaN or infinity); a dataset built by the run
        (``data.path`` unset) holds at least one batch (``algorithm.batch_size``) and, for the samplers that draw
        ``|B|`` candidates from it (``strategy=otc``, ``balanced-replay``), at least ``sampler.num_candidates``
        rows. A loaded dataset (``data.path``) is not checked here: its size is known only once it is read.

        Raises:
            ConfigError: (a :class:`ValueError`) naming the field, its value and what to do.

        Examples:
            >>> TuneConfig(dataset_size=3).validate()
            Traceback (most recent call last):
            ...
            torchrl_otc.configs.parts.ConfigError: data.size (dataset_size) is 3, fewer rows than one batch (algorithm.batch_size=128); use dataset_size >= 128 or a smaller algorithm.batch_size.
        """
        self.task.validate()
        self.data.validate()
        self.algorithm.validate()
        self.sampler.validate()
        self.run.validate()
        if self.sampler.distance.value_actions == "sample" and self.algorithm.name == "td3bc":
            raise ConfigError(
                "value_actions=sample needs a stochastic policy; TD3+BC's actor is deterministic. Use "
                "value_actions=policy with algo=td3bc."
            )
        if self.sampler.distance.name == "value" and self.algorithm.name == "bremen":
            raise ConfigError(
                "distance=value (d_q) reads Q(s, a) of the agent's critic and algo=bremen has none (its value "
                "network is V(s), a GAE baseline); use distance=feature, embedding or likelihood with algo=bremen."
            )
        self._validate_numbers()
        self._validate_sizes()
        return self

    def _validate_numbers(self) -> None:
        """Every float field of every part is finite (``nan`` and ``inf`` pass the ``<`` checks unnoticed)."""
        parts = {
            "task": self.task,
            "data": self.data,
            "algorithm": self.algorithm,
            "sampler": self.sampler,
            "sampler.distance": self.sampler.distance,
            "run": self.run,
        }
        for owner, part in parts.items():
            for f in dataclasses.fields(part):
                value = getattr(part, f.name)
                if isinstance(value, float) and not math.isfinite(value):
                    raise ConfigError(f"{owner}.{f.name} must be a finite number; got {value}.")

    def _validate_sizes(self) -> None:
        """The dataset the run builds holds one batch and, for OTC and balanced replay, ``|B|`` candidates."""
        if self.data.path is not None:  # a loaded dataset: its size is its own, not data.size
            return
        size, batch = self.data.size, self.algorithm.batch_size
        if size < batch:
            raise ConfigError(
                f"data.size (dataset_size) is {size}, fewer rows than one batch (algorithm.batch_size={batch}); "
                f"use dataset_size >= {batch} or a smaller algorithm.batch_size."
            )
        candidates = self.sampler.num_candidates
        if self.sampler.name in ("otc", "balanced-replay") and size < candidates:
            raise ConfigError(
                f"data.size (dataset_size) is {size}, fewer rows than the {candidates} candidates |B| that "
                f"strategy={self.sampler.name} draws from it (sampler.num_candidates); use dataset_size >= "
                f"{candidates} or num_candidates <= {size}."
            )

    # ---------------------------------------------------------------------------------------- derived
    @property
    def resolved_steps_per_deployment(self) -> int:
        """M, the configured value or 1 % of the offline dataset (section 4.1)."""
        return self.run.steps_per_deployment or max(1, self.data.size // 100)

    @property
    def resolved_updates_per_deployment(self) -> int:
        """L, the configured value or the algorithm's ``finetune_updates`` (Table 3: 4000 BCQ, 2000 otherwise)."""
        if self.run.updates_per_deployment is not None:
            return self.run.updates_per_deployment
        return self.algorithm.finetune_updates

    @property
    def dataset_seed(self) -> int | None:
        """Seed the dataset ``B^0`` is built with: the run's, or ``None`` for ``medium-replay``, whose rows are the
        recorded behaviour-training run's replay, the same for every seed.

        Examples:
            >>> TuneConfig(dataset="random", seed=3).dataset_seed, TuneConfig(dataset="medium-replay").dataset_seed
            (3, None)
        """
        return None if self.data.kind == "medium-replay" else self.run.seed

    def dataset_key(self) -> str | None:
        """Name of the cached dataset ``B^0`` under ``cache_dir/datasets`` (``None`` with ``data.path``).

        Kinds without a :attr:`dataset_seed` (``medium-replay``) have no seed in the key: the seeds of a sweep
        build such a dataset once.

        Examples:
            >>> TuneConfig(task="mamujoco/hopper-3x1", dataset="random", dataset_size=1000, seed=2).dataset_key()
            'mamujoco_hopper-3x1-random-1000-seed2'
            >>> TuneConfig(task="mamujoco/hopper-3x1", dataset="medium-replay", dataset_size=1000).dataset_key()
            'mamujoco_hopper-3x1-medium-replay-1000'
        """
        if self.data.path is not None:
            return None
        name = f"{self.task.name.replace('/', '_')}-{self.data.kind}-{self.data.size}"
        return name if self.dataset_seed is None else f"{name}-seed{self.dataset_seed}"

    def offline_key(self) -> str:
        """Identifies the offline phase: runs that share it reuse the same offline-trained agents.

        An algorithm config other than Table 3's (``finetune_updates`` aside, which offline training does not
        read) adds a digest of its differing fields, so that the default key is the one of earlier versions.

        Examples:
            >>> TuneConfig(algo="bcq", seed=3, threads=1).offline_key()
            'mpe_navigation-3-random-10000-None-bcq-3-1000-threads1'
            >>> TuneConfig(algo="bcq", **{"algorithm.actor_lr": 3e-4}).offline_key()
            'mpe_navigation-3-random-10000-None-bcq-0-1000-algo1d37e71def'
        """
        fields: tuple[Any, ...] = (
            self.task.name,
            self.data.kind,
            self.data.size,
            self.data.path,
            self.algorithm.name,
            self.run.seed,
            self.run.offline_updates,
        )
        if (
            self.run.threads is not None
        ):  # offline agents trained with another thread count differ in bits
            fields += (f"threads{self.run.threads}",)
        table3 = dataclasses.asdict(type(self.algorithm)())
        changed = {
            k: _plain(v)
            for k, v in dataclasses.asdict(self.algorithm).items()
            if k != "finetune_updates" and v != table3[k]
        }
        if changed:
            text = json.dumps(changed, sort_keys=True, default=str)
            fields += (f"algo{hashlib.sha1(text.encode()).hexdigest()[:10]}",)
        return "-".join(str(f).replace("/", "_") for f in fields)

    def default_run_name(self) -> str:
        """The run folder's name when ``run.run_name`` is not set.

        Examples:
            >>> TuneConfig(strategy="mix", mix_fraction=0.25, seed=2).default_run_name()
            'mpe_navigation-3-random-td3bc-mix-0.25-seed2'
            >>> TuneConfig(online_fraction=0.3, seed=2).default_run_name()  # decomposed OTC
            'mpe_navigation-3-random-td3bc-otc-feature-of0.3-seed2'
        """
        sampler = self.sampler
        distance = f"-{sampler.distance.name}" if sampler.name == "otc" else ""
        if sampler.name == "otc" and sampler.online_fraction is not None:  # decomposed OTC
            distance += f"-of{sampler.online_fraction}" + (
                "" if sampler.mix_source == "all" else "-latest"
            )
        if sampler.name == "mix":
            distance = f"-{sampler.mix_fraction}" + (
                "" if sampler.mix_source == "all" else "-latest"
            )
        return (
            f"{self.task.name.replace('/', '_')}-{self.data.kind}-{self.algorithm.name}-{sampler.name}"
            f"{distance}-seed{self.run.seed}"
        )


def flat_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """The flat view (:meth:`TuneConfig.to_flat`) of a run's ``config.yaml``, nested or flat, for readers that
    look fields up by their flat names (``config["strategy"]``, ``config.get("seed")``). Not validated.

    Examples:
        >>> nested = TuneConfig(algo="bcq", strategy="uniform").to_dict()
        >>> flat = flat_config(nested)
        >>> flat["algo"], flat["strategy"], flat["task"], flat["algorithm.actor_lr"]
        ('bcq', 'uniform', 'mpe/navigation-3', 0.0001)
        >>> flat_config({"strategy": "uniform", "seed": 3})["seed"]  # the flat form of earlier versions
        3
    """
    return TuneConfig.from_dict(values, validate=False).to_flat()


def parse_overrides(overrides: Iterable[str], base: TuneConfig | None = None) -> TuneConfig:
    """Builds a :class:`TuneConfig` from Hydra-style ``key=value`` strings.

    Keys are dotted paths (``algorithm.actor_lr=0.0003``) or shortcuts (``algo=bcq``); ``config=PATH.yaml`` loads
    a YAML file (nested, flat or dotted keys) first, ``config=paper`` the shipped preset of the paper's sizes
    (``torchrl_otc/configs/paper.yaml``), ``config=recommended`` the recommended sampler (decomposed OTC with the
    dynamics-likelihood selector at an online share of 0.5, ``torchrl_otc/configs/recommended.yaml``); later
    overrides win. The algorithm's name picks its config class with
    Table 3's defaults wherever it appears; ``algorithm.*`` values apply after it.

    Args:
        overrides: the ``key=value`` strings.
        base: the config the overrides apply to. Defaults to :class:`TuneConfig`'s defaults.

    Examples:
        >>> cfg = parse_overrides(["algorithm.actor_lr=0.0003", "algo=bcq", "deployments=10", "steps_per_deployment=none"])
        >>> cfg.algorithm.name, cfg.algorithm.actor_lr, cfg.run.deployments, cfg.run.steps_per_deployment
        ('bcq', 0.0003, 10, None)
        >>> paper = parse_overrides(["config=paper", "algo=bcq"])
        >>> paper.data.size, paper.resolved_steps_per_deployment, paper.resolved_updates_per_deployment
        (1000000, 10000, 4000)
    """
    values: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"Overrides look like key=value; got {item!r}. Keys: a dotted path such as "
                f"sampler.num_candidates, or a shortcut ({', '.join(SHORTCUTS)})."
            )
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("+")
        if key == "config":
            loaded = read_yaml(config_file(raw), "config file") or {}
            if not isinstance(loaded, Mapping):
                raise ConfigError(
                    f"config={raw}: expected a mapping of fields (key: value lines); got {loaded!r}."
                )
            try:  # the file's values are checked here, so that a bad one is reported with the file's name
                dotted = to_dotted(loaded)
                for path, value in dotted.items():
                    if path == "algorithm.name":
                        _algorithm_class(value)
                    else:
                        convert_value(path, value, field_owner(path)[0])
            except ValueError as err:
                raise ConfigError(f"config={raw}: {err}") from None
            values.update(dotted)
            continue
        values.update(to_dotted({key: raw}))
    return (base if base is not None else TuneConfig()).merge(values).validate()
