"""The ``key=value`` grammar of :class:`~torchrl_otc.configs.tune.TuneConfig`: dotted paths, flat shortcuts, types.

A setting is named by its dotted path, ``<part>.<field>`` (``algorithm.actor_lr``, ``sampler.distance.name``), or by
a flat *shortcut* (:data:`SHORTCUTS`: ``algo``, ``strategy``, ``seed``, ...), the names of the flat config of
earlier versions; both work on the command line, in ``config=`` YAML files, in recipes and in ``config.yaml``.
:func:`to_dotted` turns any mix of flat, nested and dotted keys into dotted paths, refusing unknown ones with the
valid fields of their part; :func:`coerce_field` converts the text of a command-line value to the field's type and
:func:`convert_value` checks a value that YAML has already typed. :func:`read_yaml` reads the YAML files a user
writes (``config=`` files, recipes, a run's ``config.yaml``), turning a syntax error into one :class:`ConfigError`
line that names the file, the line and the problem.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from torchrl_otc.configs.algorithms import ALGORITHM_CONFIGS, AlgorithmConfig
from torchrl_otc.configs.parts import (
    ConfigError,
    DataConfig,
    DistanceConfig,
    RunConfig,
    SamplerConfig,
    TaskConfig,
)

__all__ = [
    "PARTS",
    "SHORTCUTS",
    "ConfigError",
    "coerce_field",
    "config_file",
    "convert_value",
    "field_owner",
    "read_yaml",
    "to_dotted",
    "unknown_keys",
    "yaml_problem",
]

#: The parts of a TuneConfig (and the sub-part ``sampler.distance``) with their dataclass; ``algorithm``'s class
#: is chosen by ``algorithm.name``.
PARTS: dict[str, type] = {
    "task": TaskConfig,
    "data": DataConfig,
    "algorithm": AlgorithmConfig,
    "sampler": SamplerConfig,
    "sampler.distance": DistanceConfig,
    "run": RunConfig,
}
_NAMED = (
    "task",
    "algorithm",
    "sampler",
    "sampler.distance",
)  # parts a bare string names: algorithm=bcq

#: Flat name (the fields of the flat config of earlier versions) -> dotted path, in the order of that config.
SHORTCUTS: dict[str, str] = {
    "task": "task.name",
    "dataset": "data.kind",
    "dataset_size": "data.size",
    "dataset_path": "data.path",
    "algo": "algorithm.name",
    "strategy": "sampler.name",
    "mix_fraction": "sampler.mix_fraction",
    "mix_source": "sampler.mix_source",
    "mix_pair": "sampler.mix_pair",
    "online_fraction": "sampler.online_fraction",
    "distance": "sampler.distance.name",
    "alpha": "sampler.alpha",
    "adaptive_alpha": "sampler.adaptive_alpha",
    "num_candidates": "sampler.num_candidates",
    "score_every": "sampler.score_every",
    "num_online": "sampler.num_online",
    "next_state": "sampler.distance.next_state",
    "embedding_reconstruct": "sampler.distance.reconstruct",
    "embedding_update_every": "sampler.distance.update_every",
    "value_actions": "sampler.distance.value_actions",
    "value_refresh_every": "sampler.distance.refresh_every",
    "self_match": "sampler.self_match",
    "offline_updates": "run.offline_updates",
    "deployments": "run.deployments",
    "steps_per_deployment": "run.steps_per_deployment",
    "updates_per_deployment": "run.updates_per_deployment",
    "eval_episodes": "run.eval_episodes",
    "sequential_exploration": "task.sequential_exploration",
    "exploration_noise": "task.exploration_noise",
    "seed": "run.seed",
    "threads": "run.threads",
    "device": "run.device",
    "runs_root": "run.runs_root",
    "run_name": "run.run_name",
    "cache_dir": "data.cache_dir",
    "logger": "run.logger",
    "checkpoint_every": "run.checkpoint_every",
    "compile": "sampler.distance.compile",
}


def _field_names(owner: str) -> list[str]:
    """The fields a dotted path may name under part ``owner`` (every algorithm's for ``algorithm``)."""
    if owner == "algorithm":
        names = dict.fromkeys(["name"])
        for cls in ALGORITHM_CONFIGS.values():
            names.update(dict.fromkeys(f.name for f in dataclasses.fields(cls)))
        return list(names)
    fields = [f.name for f in dataclasses.fields(PARTS[owner])]
    return [f"{f}.<field>" if f"{owner}.{f}" in PARTS else f for f in fields]


def to_dotted(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Turns flat, nested or dotted keys into dotted paths; refuses unknown keys with the valid fields of their part.

    A part given a string sets its name (``algorithm: bcq``, ``sampler.distance=value``); ``algorithm.algo`` (as
    :meth:`~torchrl_otc.configs.algorithms.AlgorithmConfig.to_dict` writes it) is ``algorithm.name``. A leading
    ``+`` (Hydra's "add") is ignored. Values are kept as given: :func:`convert_value` types them.

    Args:
        values: the keys and values.
        prefix: the dotted path ``values`` lies under.

    Examples:
        >>> to_dotted({"algo": "bcq", "algorithm": {"actor_lr": 3e-4}, "sampler.num_candidates": "256"})
        {'algorithm.name': 'bcq', 'algorithm.actor_lr': 0.0003, 'sampler.num_candidates': '256'}
        >>> to_dotted({"task": "nav/nonstationary", "distance": "value"})
        {'task.name': 'nav/nonstationary', 'sampler.distance.name': 'value'}
        >>> to_dotted({"sampler.num_candidate": 1})
        Traceback (most recent call last):
        ...
        torchrl_otc.configs.parts.ConfigError: Unknown config field 'sampler.num_candidate'; valid fields of sampler: name, alpha, adaptive_alpha, num_candidates, num_online, self_match, score_every, mix_fraction, mix_source, mix_pair, online_fraction, distance.<field>.
    """
    out: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).strip().lstrip("+")
        path = f"{prefix}.{key}" if prefix else key
        if path in SHORTCUTS and not (path in PARTS and isinstance(value, Mapping)):
            path = SHORTCUTS[path]
        if path in PARTS:
            if isinstance(value, Mapping):
                out.update(to_dotted(value, path))
                continue
            if path in _NAMED and isinstance(value, str):
                out[f"{path}.name"] = value
                continue
            raise ConfigError(
                f"{path} takes a mapping of its fields ({', '.join(_field_names(path))}) or dotted keys such as "
                f"{path}.<field>=...; got {value!r}."
            )
        owner, _, name = path.rpartition(".")
        if owner == "algorithm" and name == "algo":
            path, name = "algorithm.name", "name"
        if owner not in PARTS:
            raise ConfigError(
                f"Unknown config field {path!r}; valid: the parts {', '.join(p for p in PARTS if '.' not in p)} "
                f"as dotted paths (e.g. sampler.num_candidates=256) or the shortcuts {', '.join(SHORTCUTS)}."
            )
        valid = _field_names(owner)
        if name not in valid:
            raise ConfigError(
                f"Unknown config field {path!r}; valid fields of {owner}: {', '.join(valid)}."
            )
        out[path] = value
    return out


def unknown_keys(values: Mapping[str, Any]) -> list[str]:
    """The keys of ``values`` that :func:`to_dotted` refuses, as written.

    Examples:
        >>> unknown_keys({"seed": 1, "lr": 3e-4, "algorithm.actor_lr": 1e-4, "run": {"sed": 2}})
        ['lr', 'run']
    """
    bad = []
    for key, value in values.items():
        try:
            to_dotted({key: value})
        except ValueError:
            bad.append(str(key))
    return bad


def field_owner(path: str) -> tuple[type, str]:
    """The dataclass holding the field a shortcut or dotted path names, and the field's name.

    For ``algorithm.<field>``, the first algorithm config that has the field (types agree across them).

    Examples:
        >>> field_owner("deployments"), field_owner("sampler.distance.reconstruct")
        ((<class 'torchrl_otc.configs.parts.RunConfig'>, 'deployments'), (<class 'torchrl_otc.configs.parts.DistanceConfig'>, 'reconstruct'))
    """
    (dotted,) = to_dotted({path: None})
    owner, _, name = dotted.rpartition(".")
    if owner != "algorithm":
        return PARTS[owner], name
    cls = next(
        c for c in ALGORITHM_CONFIGS.values() if name in {f.name for f in dataclasses.fields(c)}
    )
    return cls, name


def _unwrap(tp: Any) -> tuple[bool, tuple[Any, ...]]:
    """(whether ``None`` is allowed, the other types) of a field annotation."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        return type(None) in args, tuple(a for a in args if a is not type(None))
    return False, (tp,)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _scalar(label: str, value: Any, tp: Any) -> Any:
    """Checks a YAML-typed scalar against ``tp`` (``int`` into ``float``, integral ``float`` into ``int``)."""
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, (int, float)) and not isinstance(value, bool):
        if float(value).is_integer():
            return int(value)
    elif tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif tp is str and isinstance(value, (int, float, bool)):
        return str(value)
    elif tp not in (bool, int, float, str):
        return value
    raise ConfigError(f"{label}={value!r}: expected {_type_name(tp)}.")


def _hint(cls: type, name: str) -> Any:
    hints = typing.get_type_hints(cls)
    if name not in hints:
        raise ConfigError(f"{cls.__name__} has no field {name!r}.")
    return hints[name]


def _coerce(label: str, raw: str, tp: Any) -> Any:
    optional, options = _unwrap(tp)
    text = raw.strip()
    if optional and text.lower() in ("none", "null", ""):
        return None
    base = options[0]
    origin = typing.get_origin(base) or base
    if origin in (tuple, list):
        if text.startswith("(") and text.endswith(")"):
            text = f"[{text[1:-1]}]"
        try:
            value = yaml.safe_load(text if text.startswith("[") else f"[{text}]")
        except yaml.YAMLError:
            value = None
        if not isinstance(value, list):
            raise ConfigError(
                f"{label}={raw!r}: expected a list like {label}=[1, 2] or {label}=1,2."
            )
        return convert_value(label, value, tp)
    if origin is dict:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = None
        if not isinstance(value, dict):
            raise ConfigError(f"{label}={raw!r}: expected YAML like {label}={{a: 1}}.")
        return value
    try:
        if base is bool:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError(raw)
        if base is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError(raw)
            return int(number)
        if base is float:
            return float(text)
    except ValueError:
        if str in options:  # a number or a word (mix_fraction=0.3 or mix_fraction=matched)
            return raw
        raise ConfigError(f"{label}={raw!r}: expected {_type_name(base)}.") from None
    return raw


def coerce_field(name: str, raw: str, cls: type | None = None) -> Any:
    """Converts the text of a ``key=value`` override to the type of field ``name`` of dataclass ``cls``.

    ``none`` for optional fields; ``true``/``false`` for booleans; integers and floats checked; tuples and lists as
    YAML lists or comma-separated (``[64, 64]``, ``(64, 64)``, ``64,64``); mappings as YAML (``{beta: 0.1}``);
    other fields keep the text.

    Args:
        name: the field; with ``cls=None``, a shortcut or dotted path of
            :class:`~torchrl_otc.configs.tune.TuneConfig` (``deployments``, ``algorithm.hidden_sizes``).
        raw: the override's text.
        cls: the dataclass. Defaults to the part of ``TuneConfig`` that ``name`` names.

    Examples:
        >>> coerce_field("deployments", "10"), coerce_field("dataset_path", "none")
        (10, None)
        >>> coerce_field("algorithm.hidden_sizes", "64,64"), coerce_field("hidden_sizes", "[256, 256]", AlgorithmConfig)
        ((64, 64), (256, 256))
    """
    if cls is None:
        cls, field = field_owner(name)
    else:
        field = name
    return _coerce(name, raw, _hint(cls, field))


def convert_value(name: str, value: Any, cls: type | Any) -> Any:
    """``value`` as field ``name`` of dataclass ``cls`` holds it: text through :func:`coerce_field`, YAML-typed
    values checked (an integer for a float field becomes a float, a list for a tuple field a tuple).

    Args:
        name: the field (also how error messages name it; a dotted path is reduced to its last part).
        value: the value, text or already typed.
        cls: the dataclass, or the field's annotation itself.

    Examples:
        >>> convert_value("actor_lr", 1, AlgorithmConfig), convert_value("hidden_sizes", [64, 64], AlgorithmConfig)
        (1.0, (64, 64))
        >>> convert_value("run.threads", 1.5, RunConfig)
        Traceback (most recent call last):
        ...
        torchrl_otc.configs.parts.ConfigError: run.threads=1.5: expected int.
    """
    field = name.rpartition(".")[2]
    tp = _hint(cls, field) if dataclasses.is_dataclass(cls) else cls
    if isinstance(value, str):
        return _coerce(name, value, tp)
    optional, options = _unwrap(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}=None: expected {_type_name(options[0])}.")
    base = options[0]
    origin = typing.get_origin(base) or base
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r}: expected a list like {name}=[1, 2].")
        args = [a for a in typing.get_args(base) if a is not Ellipsis]
        items = [_scalar(name, v, args[0]) if args else v for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}={value!r}: expected a mapping.")
        return value
    for option in options:  # float | str: the first type that takes the value
        try:
            return _scalar(name, value, option)
        except ValueError:
            continue
    raise ConfigError(f"{name}={value!r}: expected {_type_name(base)}.")


PRESETS_DIR = Path(__file__).resolve().parent


def config_file(name: str) -> Path:
    """``config=NAME``: a YAML file, or a preset shipped with the package (``paper``).

    Examples:
        >>> config_file("paper").name
        'paper.yaml'
    """
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


def yaml_problem(err: yaml.YAMLError) -> str:
    """One line saying where and what a YAML syntax error is (PyYAML's own message spans several lines).

    Examples:
        >>> try:
        ...     yaml.safe_load("seed: [1")
        ... except yaml.YAMLError as err:
        ...     print(yaml_problem(err))
        line 1, column 9: expected ',' or ']', but got '<stream end>'
    """
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{problem}".split())


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    r"""Reads a YAML file a user wrote; every way it can be unreadable is one :class:`ConfigError` line.

    Args:
        path: the file.
        what: what the file is, for the messages (``"config file"``, ``"recipe"``, ``"run config"``).

    Returns:
        The parsed YAML (``None`` for an empty file).

    Raises:
        ConfigError: the file is missing, a folder, not text, or not valid YAML (naming the line and the problem).

    Examples:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "mine.yaml"
        >>> _ = path.write_text("seed: [1")
        >>> try:
        ...     read_yaml(path, "config file")
        ... except ConfigError as err:
        ...     print(str(err).replace(str(path), "mine.yaml"))
        config file mine.yaml is not valid YAML (line 1, column 9: expected ',' or ']', but got '<stream end>'); fix its syntax.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a YAML file.")
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist; check the path.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not a text (YAML) file; give a YAML file.") from None
    except PermissionError:
        raise ConfigError(f"{what} {path} cannot be read (permission denied).") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"{what} {path} is not valid YAML ({yaml_problem(err)}); fix its syntax."
        ) from err
