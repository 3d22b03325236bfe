"""Sweeps: a grid of (task, dataset, algorithm, strategy, seed) runs from a recipe, locally or on Ray.

A *recipe* (YAML; the paper's experiments are in ``examples/recipes/``) names one experiment of the paper and
holds:

* ``base``: overrides shared by every run (``key: value`` of :class:`~torchrl_otc.configs.tune.TuneConfig`: flat
  shortcuts such as ``algo: bcq``, dotted paths such as ``algorithm.actor_lr: 3.0e-4``, or nested parts such as
  ``algorithm: {actor_lr: 3.0e-4}``; every place below takes the same keys);
* ``grid``: axes whose cartesian product gives the runs, e.g. ``{task: [...], dataset: [...], seed: [0, 1, 2]}``;
  a single value is a one-value axis (``seed: 0`` is ``seed: [0]``, as a single value in a Hydra multirun), an
  empty list or a mapping is refused;
* ``variants``: the compared methods, each a mapping of overrides with a ``label`` (e.g.
  ``{label: otc-embedding, strategy: otc, distance: embedding}``);
* ``sizes``: named presets of overrides: ``smoke`` (seconds, run by the tests), ``cpu`` (a reduced grid for a
  2-core CPU within about an hour) and ``paper`` (the paper's sizes, for a GPU or a cluster). A preset may also
  replace grid axes (``grid: {seed: [0]}``), keep only some variants (``variants: [base, otc-embedding]``) and
  split into ``cells``: a list of sub-grids, each with its own axes and overrides (e.g. 16 seeds of a small task
  and 8 of a robot with another algorithm and sizes); the runs are the union of the cells' grids.
* Every run pins its intra-op threads: ``threads: 1`` unless the recipe or the command line sets another value
  (returns at small sizes change with the thread count).

:func:`run_sweep` runs every configuration of a preset on this machine (``backend="local"``, the default: one run
after the other, or ``workers`` processes side by side) or hands them to Ray (``backend="ray"``, ``pip install
ray``), and skips runs whose folder is finished (a ``DONE`` marker written by
:class:`~torchrl_otc.trainers.tuning.OnlineTuner`), so an interrupted sweep resumes where it stopped; a run
interrupted midway is resumed from its checkpoint. Runs that share a cached dataset (and so its offline-trained
agents) always run in the same worker, one after the other, so that the cache is built once.

By default (``batched=True``) the runs whose configs differ only in the seed and the sampling strategy (the seeds
and strategies of a grid cell) train in one process in lockstep (:class:`~torchrl_otc.trainers.lockstep.
LockstepTuners`): each seed's offline agents trained once, then one batched update of all their agents per step,
each run still writing its own folder, metrics and checkpoints and resuming on its own. ``batched=False``
(``otc sweep --separate``) runs each run on its own, its agents one after the other: numbers equal to float
tolerance, not bit for bit.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from torchrl_otc.configs.overrides import ConfigError, read_yaml, to_dotted, unknown_keys
from torchrl_otc.configs.tune import TuneConfig
from torchrl_otc.modules.transition_distance import check_positive_int
from torchrl_otc.trainers.lockstep import (
    LockstepError,
    LockstepTuners,
    batchable,
    lockstep_mode,
)
from torchrl_otc.trainers.matched_mix import matched_option
from torchrl_otc.trainers.run import RunFolder
from torchrl_otc.trainers.tuning import OnlineTuner

__all__ = ["Recipe", "load_recipe", "expand_recipe", "run_sweep", "SWEEP_SIZES"]

logger = logging.getLogger(__name__)

#: The size presets a recipe may define: seconds (tests), a 2-core CPU within about an hour, the paper's sizes.
SWEEP_SIZES = ("smoke", "cpu", "paper")
_RECIPE_KEYS = {"name", "description", "paper", "base", "grid", "variants", "sizes"}


def _axes(recipe: str, where: str, grid: Any) -> dict[str, list[Any]]:
    """A grid as axes of value lists: a single value is a one-value axis (``seed: 0`` is ``seed: [0]``, as a single
    value in a Hydra multirun); a mapping, an empty list or a grid that is not a mapping is refused.

    Examples:
        >>> _axes("demo", "grid", {"seed": 0, "task": ["mpe/navigation-3"]})
        {'seed': [0], 'task': ['mpe/navigation-3']}
    """
    if grid is None:
        return {}
    if not isinstance(grid, Mapping):
        raise ConfigError(
            f"Recipe {recipe!r}: {where} must map config fields to lists of values (e.g. {{seed: [0, 1, 2]}}); "
            f"got {grid!r}."
        )
    out: dict[str, list[Any]] = {}
    for axis, values in grid.items():
        if isinstance(values, Mapping):
            raise ConfigError(
                f"Recipe {recipe!r}: {where} axis {axis!r} is a mapping ({values!r}); give a list of values "
                f"(e.g. {axis}: [a, b]) or one value."
            )
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise ConfigError(
                f"Recipe {recipe!r}: {where} axis {axis!r} is an empty list, so the grid has no runs; give it "
                f"at least one value or remove the axis."
            )
        out[str(axis)] = values
    return out


@dataclass
class Recipe:
    """One experiment: shared overrides, grid axes, compared variants and size presets.

    Attributes:
        name: short name (used for the runs' folder).
        description: what the experiment measures.
        paper: the table or figure of the paper it corresponds to.
        base: overrides shared by every run.
        grid: axes of the cartesian product (config field -> list of values; a single value is a one-value axis).
        variants: compared methods: override mappings with a ``label``.
        sizes: presets ``smoke`` / ``cpu`` / ``paper``: overrides, and optionally ``grid`` axes to replace and
            ``variants``, the labels of the variants the preset runs (all of them when omitted).

    Examples:
        >>> recipe = Recipe("demo", grid={"seed": [0, 1]}, variants=[{"label": "uniform", "strategy": "uniform"}],
        ...                 sizes={"smoke": {"deployments": 1}})
        >>> [(c.run.seed, c.run.deployments, c.sampler.name) for c in expand_recipe(recipe, "smoke", runs_root="runs")]
        [(0, 1, 'uniform'), (1, 1, 'uniform')]
    """

    name: str
    description: str = ""
    paper: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    variants: list[dict[str, Any]] = field(default_factory=lambda: [{"label": "default"}])
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def _cells(self, size: str, preset: Mapping[str, Any]) -> list[dict[str, Any]]:
        cells = preset.get("cells", [{}])
        if not isinstance(cells, list) or not cells or not all(isinstance(c, dict) for c in cells):
            raise ConfigError(
                f"Recipe {self.name!r}: size {size!r} has cells={cells!r}; give a non-empty list of mappings, "
                f"each with its own grid axes and overrides (e.g. [{{grid: {{task: [nav/nonstationary]}}, "
                f"dataset_size: 50000}}])."
            )
        for i, cell in enumerate(cells):
            grid = cell.get("grid", {})
            if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
                raise ConfigError(
                    f"Recipe {self.name!r}: size {size!r}, cell {i}: grid must map fields to lists of values; "
                    f"got {grid!r}."
                )
        return cells

    def _check_shapes(self) -> None:
        """Refuses sections of the wrong shape (a string for ``variants``, a number for a size, ...) and turns
        every grid's single values into one-value axes, before the keys are checked."""
        self.name = str(self.name)
        for where in ("base", "sizes"):
            value = getattr(self, where)
            if value is None:
                setattr(self, where, {})
            elif not isinstance(value, Mapping):
                raise ConfigError(
                    f"Recipe {self.name!r}: {where} must be a mapping "
                    f"({'of config fields' if where == 'base' else 'of size presets smoke, cpu, paper'}); "
                    f"got {value!r}."
                )
        if not isinstance(self.variants, list) or not all(
            isinstance(v, Mapping) for v in self.variants
        ):
            raise ConfigError(
                f"Recipe {self.name!r}: variants must be a list of mappings, each a label and its overrides "
                f"(e.g. [{{label: otc, strategy: otc}}]); got {self.variants!r}."
            )
        self.variants = [dict(v) for v in self.variants]
        self.grid = _axes(self.name, "grid", self.grid)
        sizes: dict[str, dict[str, Any]] = {}
        for size, preset in self.sizes.items():
            if preset is None:
                preset = {}
            if not isinstance(preset, Mapping):
                raise ConfigError(
                    f"Recipe {self.name!r}: size {size!r} must be a mapping of overrides (and optionally grid, "
                    f"variants, cells); got {preset!r}."
                )
            preset = dict(preset)
            if "grid" in preset:
                preset["grid"] = _axes(self.name, f"size {size!r}: grid", preset["grid"])
            cells = preset.get("cells")
            if isinstance(cells, list):
                preset["cells"] = [
                    {**c, "grid": _axes(self.name, f"size {size!r}, cell {i}: grid", c["grid"])}
                    if isinstance(c, Mapping) and "grid" in c
                    else c
                    for i, c in enumerate(cells)
                ]
            sizes[str(size)] = preset
        self.sizes = sizes

    def __post_init__(self) -> None:
        self._check_shapes()

        def axes(grid: Mapping[str, Any]) -> dict[str, Any]:
            return {
                k: "" for k in grid
            }  # the keys only (a part named by a string, e.g. `algorithm`, is fine)

        for where, values in (
            ("base", self.base),
            ("grid", axes(self.grid)),
            *(
                (f"variant {v.get('label')!r}", {k: x for k, x in v.items() if k != "label"})
                for v in self.variants
            ),
            *(
                (
                    f"size {s!r}",
                    {k: x for k, x in o.items() if k not in ("grid", "variants", "cells")}
                    | axes(o.get("grid", {})),
                )
                for s, o in self.sizes.items()
            ),
            *(
                (
                    f"size {s!r}, cell {i}",
                    {k: x for k, x in c.items() if k != "grid"} | axes(c.get("grid", {})),
                )
                for s, o in self.sizes.items()
                for i, c in enumerate(self._cells(s, o))
            ),
        ):
            unknown = sorted(unknown_keys(values))
            if unknown:
                try:
                    to_dotted({unknown[0]: values[unknown[0]]})
                    reason = ""
                except ValueError as err:
                    reason = f" ({err})"
                raise ConfigError(
                    f"Recipe {self.name!r}: unknown config fields {unknown} in {where}{reason}"
                )
        labels = [v.get("label") for v in self.variants]
        if any(not isinstance(label, str) or not label for label in labels):
            raise ConfigError(f"Recipe {self.name!r}: every variant needs a label; got {labels}.")
        if len(set(labels)) != len(labels):
            raise ConfigError(f"Recipe {self.name!r}: variant labels must be unique; got {labels}.")
        unknown_sizes = sorted(set(self.sizes) - set(SWEEP_SIZES))
        if unknown_sizes:
            raise ConfigError(
                f"Recipe {self.name!r}: unknown sizes {unknown_sizes}; use {', '.join(SWEEP_SIZES)}."
            )
        for size, preset in self.sizes.items():
            chosen = preset.get("variants")
            if chosen is None:
                continue
            if not isinstance(chosen, list) or not chosen:
                raise ConfigError(
                    f"Recipe {self.name!r}: size {size!r} has variants={chosen!r}; give a non-empty list of "
                    f"variant labels ({', '.join(labels)})."
                )
            unknown_labels = [label for label in chosen if label not in labels]
            if unknown_labels:
                raise ConfigError(
                    f"Recipe {self.name!r}: size {size!r} names unknown variants {unknown_labels}; the recipe's "
                    f"variants are {', '.join(labels)}."
                )


def load_recipe(path: str | Path) -> Recipe:
    r"""Reads a recipe YAML file; refuses unknown keys and unknown config fields with the valid ones.

    Examples:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "mine.yaml"
        >>> _ = path.write_text("grid: {seed: [0, 1]}\nsizes: {smoke: {deployments: 1}}\n")
        >>> recipe = load_recipe(path)
        >>> recipe.name, len(expand_recipe(recipe, "smoke"))
        ('mine', 2)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"No recipe at {path}. The paper's experiments are in examples/recipes/*.yaml."
        )
    raw = read_yaml(path, "recipe") or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"recipe {path} must be a mapping of the keys {', '.join(sorted(_RECIPE_KEYS))}; got {raw!r}."
        )
    unknown = sorted(map(str, set(raw) - _RECIPE_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown recipe keys {unknown}; valid keys: {', '.join(sorted(_RECIPE_KEYS))}."
        )
    raw = dict(raw)
    raw.setdefault("name", path.stem)
    try:
        return Recipe(**raw)
    except ValueError as err:  # name the file: the recipe's name may differ from it
        raise ConfigError(f"{path}: {err}") from None


def expand_recipe(
    recipe: Recipe,
    size: str,
    *,
    runs_root: str | Path | None = None,
    only: Iterable[str] | None = None,
    **overrides: Any,
) -> list[TuneConfig]:
    """The validated configs of one size preset: ``base`` + preset + grid point + variant (+ ``overrides``).

    Run folders are ``runs_root / <recipe>-<size> / <task>-<dataset>-<algo>-<variant>-seed<seed>``.

    Args:
        recipe: the recipe.
        size: ``"smoke"``, ``"cpu"`` or ``"paper"``.

    Keyword Args:
        runs_root: root of the run folders (defaults to the configs' ``runs_root``).
        only: the labels of the variants to run now (of those the preset runs); the runs are the same as in the
            whole preset, so a sweep can run the cheap variants of every grid point first and the rest later.
        overrides: further config fields applied to every run, shortcuts or dotted paths (e.g.
            ``device="cuda"``, ``**{"algorithm.actor_lr": 3e-4}``); text is converted as on the command line.

    Examples:
        >>> recipe = Recipe("demo", grid={"task": ["mpe/navigation-3", "mpe/navigation-4"]},
        ...                 variants=[{"label": "otc", "strategy": "otc"}], sizes={"cpu": {"deployments": 4}})
        >>> [c.run.run_name for c in expand_recipe(recipe, "cpu", runs_root="runs", seed=3)]
        ['mpe_navigation-3-random-td3bc-otc-seed3', 'mpe_navigation-4-random-td3bc-otc-seed3']
    """
    if size not in recipe.sizes:
        raise ConfigError(
            f"Recipe {recipe.name!r} has no size {size!r}; it has {', '.join(recipe.sizes) or 'none'}."
        )
    preset = dict(recipe.sizes[size])
    cells = recipe._cells(size, preset)
    preset.pop("cells", None)
    preset_grid = preset.pop("grid", {})
    chosen = preset.pop("variants", None)
    variants = [v for v in recipe.variants if chosen is None or v["label"] in chosen]
    if only is not None:
        only = list(only)
        unknown = [label for label in only if label not in {v["label"] for v in variants}]
        if unknown:
            raise ConfigError(
                f"Recipe {recipe.name!r}, size {size!r}: no variants {unknown} to run; this preset runs "
                f"{', '.join(v['label'] for v in variants)}."
            )
        variants = [v for v in variants if v["label"] in only]
    points: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (grid point, the cell's overrides)
    for cell in cells:
        cell = dict(cell)
        grid = {**recipe.grid, **preset_grid, **cell.pop("grid", {})}
        axes = list(grid)
        points += [
            (dict(zip(axes, point)), cell) for point in itertools.product(*(grid[a] for a in axes))
        ]
    configs: list[TuneConfig] = []
    for point, cell in points:
        by_label: dict[str, TuneConfig] = {}
        for variant in variants:
            values: dict[str, Any] = {}  # dotted paths: a later layer wins field by field
            for layer in (
                {"threads": 1},
                recipe.base,
                preset,
                cell,
                point,
                {k: v for k, v in variant.items() if k != "label"},
                overrides,
            ):
                values.update(to_dotted(layer))
            try:
                cfg = TuneConfig.from_dict(values)
            except ValueError as err:  # name where in the recipe the bad value ends up
                raise ConfigError(
                    f"Recipe {recipe.name!r}, size {size!r}, variant {variant['label']!r}"
                    f"{''.join(f', {k}={v}' for k, v in point.items())}: {err}"
                ) from None
            run = cfg.run
            root = Path(runs_root if runs_root is not None else run.runs_root)
            run.runs_root = str(root / f"{recipe.name}-{size}")
            run.run_name = (
                f"{cfg.task.name.replace('/', '_')}-{cfg.data.kind}-{cfg.algorithm.name}-{variant['label']}"
                f"-seed{run.seed}"
            )
            by_label[variant["label"]] = cfg
        for label, cfg in by_label.items():
            sampler = cfg.sampler
            # a matched mix or matched decomposed OTC: mix_pair names the label of its coupled-OTC variant
            if matched_option(sampler) is not None:
                pair = by_label.get(str(sampler.mix_pair))
                if pair is None:
                    raise ConfigError(
                        f"Recipe {recipe.name!r}, size {size!r}: variant {label!r} matches the online share of "
                        f"variant {sampler.mix_pair!r}, which is not among the variants run (the preset's, or "
                        f"--variants): run it too (runs: {', '.join(by_label)})."
                    )
                if pair.sampler.name != "otc" or pair.sampler.online_fraction is not None:
                    kind = (
                        f"strategy={pair.sampler.name}"
                        if pair.sampler.name != "otc"
                        else f"decomposed OTC (online_fraction={pair.sampler.online_fraction})"
                    )
                    raise ConfigError(
                        f"Recipe {recipe.name!r}: variant {label!r} has mix_pair={sampler.mix_pair!r}, a {kind} "
                        f"variant; the pair of a matched mix is an OTC variant (coupled: online_fraction unset)."
                    )
                sampler.mix_pair = str(Path(pair.run.runs_root) / str(pair.run.run_name))
            configs.append(cfg.validate())
    return configs


def _is_matched(config: Mapping[str, Any]) -> bool:
    """Whether a payload (a nested config dict) is a matched mix or matched decomposed OTC (it reads its pair)."""
    return matched_option(config["sampler"]) is not None


def _run_dir(config: Mapping[str, Any]) -> Path:
    return Path(config["run"]["runs_root"]) / str(config["run"]["run_name"])


def _prepare(config: dict[str, Any], progress: bool) -> OnlineTuner | dict[str, Any]:
    """The run's tuner (new, or resuming an interrupted run), or the summary of a finished run (skipped).

    Raises:
        ValueError: the run folder holds a run of another configuration.
    """
    cfg = TuneConfig.from_dict(config)
    run_dir = _run_dir(config)
    if (run_dir / "config.yaml").exists():
        # flat views (shortcut names, algorithm.<field>): the held file may be nested or of the flat form of
        # earlier versions
        raw = RunFolder(run_dir).read_config()  # a file that is not a config: one clear line
        held, mine = TuneConfig.from_dict(raw, validate=False).to_flat(), cfg.to_flat()
        differ = sorted(k for k, v in mine.items() if held.get(k) != v)
        if differ:
            raise ValueError(
                f"{run_dir} holds a run of another configuration (fields {differ} differ, e.g. "
                f"{differ[0]}={held.get(differ[0])!r} there, {mine[differ[0]]!r} now): the recipe changed "
                f"since it ran. Remove the folder or use another --runs-root."
            )
    if (run_dir / "DONE").exists():
        logger.info("sweep: %s (skipped)", run_dir)
        return {"run_dir": str(run_dir), "skipped": True}
    # interrupted: resume it (from its checkpoint, or from the start)
    if RunFolder(run_dir).holds_run():
        return OnlineTuner.resume(run_dir, progress=progress)
    return OnlineTuner(cfg, progress=progress)


def _run_unit(configs: list[dict[str, Any]], progress: bool, batched: bool) -> list[dict[str, Any]]:
    """Runs one unit of a sweep: a single run, or (``batched``) a lockstep group; their summaries, in order.

    A run resumed from its folder keeps the mode it started in
    (:func:`~torchrl_otc.trainers.lockstep.lockstep_mode`), so that its numbers come from one mode: started
    separately, it resumes separately; started batched, it resumes batched, alone if its unit is not batched (the
    same numbers: a learner's numbers do not depend on the other learners of its group). A run whose algorithm has
    no batched class runs separately.

    Raises:
        LockstepError: some runs of the group failed (the others finished; the error names the failed ones).
    """
    prepared = [_prepare(config, progress) for config in configs]
    together, alone = [], []
    for item in prepared:
        if not isinstance(item, dict):
            (together if lockstep_mode(item, None if batched else False) else alone).append(item)
    summaries = {id(tuner): tuner.run() for tuner in alone}
    if together:
        summaries.update(zip(map(id, together), LockstepTuners(together).run()))
    out = []
    for item in prepared:
        if isinstance(item, dict):
            out.append(item)
            continue
        out.append({**summaries[id(item)], "skipped": False})
        if item in together:
            logger.info("sweep: %s (ran, batched with %d runs)", item.folder.path, len(together))
        else:
            logger.info("sweep: %s (ran)", item.folder.path)
    return out


def _lockstep_key(config: Mapping[str, Any]) -> str:
    """Runs that may train in lockstep share a key: the same config but the seed, the run folder and the sampling
    strategy (the ``sampler`` part: the strategies of a seed share their offline-trained agents, which the group
    trains once). The runs that read their OTC pair's metrics (matched mixes, matched decomposed OTC) have keys of
    their own, so that they run after their pairs' group, in a group of matched runs."""
    rest = json.loads(json.dumps(config, default=str))
    for section, name in (("run", "seed"), ("run", "run_name")):
        rest[section].pop(name, None)
    rest.pop("sampler")
    rest["reads its pair"] = _is_matched(config)
    return json.dumps(rest, sort_keys=True)


#: The most seeds of a lockstep group when ``otc sweep --lockstep-seeds`` is not given (the groups of a grid cell
#: are then cut to keep every worker busy: :func:`lockstep_units`).
LOCKSTEP_SEEDS = 4


def lockstep_units(
    payloads: list[dict[str, Any]], seeds_per_group: int | None = None, workers: int = 1
) -> list[list[int]]:
    """The sweep's lockstep groups: indices of the runs (nested config dicts) whose configs differ only in the seed
    and the sampling strategy (:func:`_lockstep_key`; matched mixes are grouped apart, after their pairs), at most
    ``seeds_per_group`` consecutive seeds each (the seeds sorted, every strategy of those seeds in the group),
    ordered by their first run; a run whose algorithm has no batched class is a group of its own (logged).

    A group trains each seed's offline agents once, for all its strategies
    (:class:`~torchrl_otc.trainers.lockstep.LockstepTuners`), then tunes every strategy of every seed in one
    batched update. The runs of one seed share a dataset, so they run in one worker's queue: the cut gives a sweep
    with several workers a queue per group of seeds, where one group per grid cell would be one queue. Without
    ``seeds_per_group``, a cell of ``n`` seeds is cut into groups of ``min(LOCKSTEP_SEEDS, ceil(n / workers))``
    seeds, so that the cell alone keeps every worker busy. The numbers depend on neither the cut nor the number of
    workers: a learner's numbers do not depend on the other learners of its group
    (:mod:`~torchrl_otc.trainers.lockstep`).

    Args:
        payloads: the sweep's runs, as nested config dicts.
        seeds_per_group: the most seeds of a group; ``None`` cuts by ``workers`` as above.
        workers: the processes that will run the groups side by side.

    Examples:
        >>> configs = [TuneConfig(seed=s, strategy=x).to_dict() for x in ("otc", "uniform") for s in (0, 1, 2, 3)]
        >>> lockstep_units(configs)
        [[0, 1, 2, 3, 4, 5, 6, 7]]
        >>> lockstep_units(configs, workers=2)
        [[0, 1, 4, 5], [2, 3, 6, 7]]
        >>> lockstep_units(configs, seeds_per_group=1)
        [[0, 4], [1, 5], [2, 6], [3, 7]]
    """
    if seeds_per_group is not None:
        check_positive_int("seeds_per_group", seeds_per_group)
    check_positive_int("workers", workers)
    units: dict[str, list[int]] = {}
    for i, payload in enumerate(payloads):
        why = batchable(str(payload["algorithm"]["name"]))
        if why is not None:
            logger.info("sweep: %s runs on its own, not batched: %s.", _run_dir(payload), why)
            key = f"alone {i}"
        else:
            key = _lockstep_key(payload)
        units.setdefault(key, []).append(i)
    cut = [
        chunk
        for unit in units.values()
        for chunk in _seed_groups(payloads, unit, seeds_per_group, workers)
    ]
    return sorted(cut, key=lambda unit: unit[0])


def _seed_groups(
    payloads: list[dict[str, Any]], unit: list[int], size: int | None, workers: int
) -> list[list[int]]:
    """``unit`` cut into groups of ``size`` consecutive seeds (sorted), each in its order in ``unit``; ``None``:
    ``min(LOCKSTEP_SEEDS, ceil(seeds / workers))``."""
    seeds = sorted({int(payloads[i]["run"]["seed"]) for i in unit})
    if size is None:
        size = min(LOCKSTEP_SEEDS, -(-len(seeds) // workers))
    group_of = {seed: k // size for k, seed in enumerate(seeds)}
    groups: dict[int, list[int]] = {}
    for i in unit:
        groups.setdefault(group_of[int(payloads[i]["run"]["seed"])], []).append(i)
    return [groups[k] for k in sorted(groups)]


def _group_key(config: Mapping[str, Any]) -> str:
    """Runs that share a cached dataset (and its offline-trained agents) share a key: one worker runs them."""
    cfg = TuneConfig.from_dict(config, validate=False)
    return f"{cfg.data.cache_dir}|{cfg.data.path or cfg.dataset_key()}"


#: Linux's ``prctl`` option that sends a signal to a process when its parent dies (``<linux/prctl.h>``).
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Ends this process when the process ``parent`` ends, however it ends (a SIGKILL included).

    On Linux the kernel sends SIGKILL at the parent's death (``prctl(PR_SET_PDEATHSIG)``); everywhere a daemon
    thread checks every second that the parent is still this process's parent. If the parent is already gone, the
    process ends now.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover
            pass  # no prctl: the thread below still watches
    if os.getppid() != parent:  # died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="otc-parent-watch", daemon=True).start()


def _init_worker(threads: int, level: int, parent: int | None = None) -> None:
    """Sets up a sweep worker: dies with the sweep's process ``parent``, ``threads`` intra-op threads, logging."""
    if parent is not None:
        _die_with_parent(parent)
    torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _queues(payloads: list[dict[str, Any]], units: list[list[int]]) -> list[list[list[int]]]:
    """The units (lists of payload indices run together), queued so that units sharing a cached dataset are in one
    queue, in order; the longest queues first, so that the last to finish are short ones."""
    parent = list(range(len(units)))

    def root(u: int) -> int:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    first_with: dict[str, int] = {}
    for u, unit in enumerate(units):
        for i in unit:
            key = _group_key(payloads[i])
            if key in first_with:
                parent[root(u)] = root(first_with[key])
            else:
                first_with[key] = u
    queues: dict[int, list[list[int]]] = {}
    for u, unit in enumerate(units):
        queues.setdefault(root(u), []).append(unit)
    return sorted(queues.values(), key=lambda q: sum(map(len, q)), reverse=True)


def _run_local_parallel(
    payloads: list[dict[str, Any]],
    workers: int,
    progress: bool,
    units: list[list[int]] | None = None,
    batched: bool = False,
) -> list[dict[str, Any]]:
    """Runs ``payloads`` in ``workers`` processes; the units (single runs, or ``batched`` lockstep groups) of one
    queue (:func:`_queues`) one after the other, in order."""
    queues = _queues(payloads, units if units is not None else [[i] for i in range(len(payloads))])
    threads = max(1, (os.cpu_count() or 1) // workers)
    out: list[dict[str, Any] | None] = [None] * len(payloads)
    errors: list[tuple[str, BaseException]] = []
    not_started = 0
    bar = tqdm(total=len(payloads), desc="sweep", disable=not progress, unit="run")

    def submit(pool: ProcessPoolExecutor, unit: list[int]) -> Any:
        return pool.submit(_run_unit, [payloads[i] for i in unit], False, batched)

    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        # workers end with the sweep, even when it is killed (the resource tracker follows: its pipe closes);
        # this thread spawns them (submit) and outlives them, as prctl's parent-death signal requires
        initargs=(threads, logging.getLogger().getEffectiveLevel(), os.getpid()),
    ) as pool:
        # one queue per worker at a time, each unit to its end before the next starts: queues finish in order (a
        # sweep stopped early holds whole units, every matched mix with its pair)
        waiting = iter(queues)
        pending = {}
        for q in itertools.islice(waiting, workers):
            pending[submit(pool, q[0])] = (q, 0)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                queue, k = pending.pop(future)
                unit = queue[k]
                nxt: tuple[list[list[int]], int] | None = None
                try:
                    for i, result in zip(unit, future.result()):
                        out[i] = result
                    bar.update(len(unit))
                    if k + 1 < len(queue):
                        nxt = (queue, k + 1)
                except Exception as err:
                    # the queue's later units would reuse what failed (its dataset, its agents): skip them
                    failed = (
                        [(name, e) for name, e in err.errors]
                        if isinstance(err, LockstepError)
                        else [(", ".join(str(_run_dir(payloads[i])) for i in unit), err)]
                    )
                    if isinstance(err, LockstepError):
                        for i, result in zip(unit, err.results):
                            if result is not None:
                                out[i] = {**result, "skipped": False}
                    errors += failed
                    for name, e in failed:
                        logger.error("sweep: %s failed: %s", name, e)
                    later = sum(len(u) for u in queue[k + 1 :])
                    bar.update(len(unit) + later)
                    not_started += later
                if nxt is None and (following := next(waiting, None)) is not None:
                    nxt = (following, 0)  # this worker takes the next queue
                if nxt is not None:
                    pending[submit(pool, nxt[0][nxt[1]])] = nxt
    bar.close()
    if errors:
        names = ", ".join(name for name, _ in errors)
        raise RuntimeError(
            f"{len(errors)} run(s) failed: {names} (the first error: {errors[0][1]!r}); {not_started} later "
            f"run(s) sharing their data were not started. Runs that finished "
            f"are kept: fix the cause and run the sweep again, it skips them."
        ) from errors[0][1]
    return [r for r in out if r is not None]


def run_sweep(
    configs: Iterable[TuneConfig],
    *,
    backend: str = "local",
    workers: int = 1,
    progress: bool = True,
    ray_address: str | None = None,
    ray_num_cpus: float = 1.0,
    ray_num_gpus: float = 0.0,
    batched: bool = True,
    lockstep_seeds: int | None = None,
) -> list[dict[str, Any]]:
    """Runs every config (skipping finished runs, resuming interrupted ones); returns their summaries.

    Args:
        configs: from :func:`expand_recipe`.

    Keyword Args:
        backend: ``"local"`` (this machine) or ``"ray"`` (one Ray task per run; ``pip install ray``; connects to
            ``ray_address`` or starts a local Ray).
        workers: local backend: processes running side by side (each with ``cpu_count // workers`` intra-op
            threads). Runs that share a cached dataset go to one worker, in order, so each cache is built once.
            ``1`` (the default) runs everything in this process.
        progress: tqdm bars (local backend; with ``workers > 1`` one bar of finished runs).
        ray_address: address of a running Ray cluster (``None``: ``ray.init()`` decides).
        ray_num_cpus: CPUs reserved per run on Ray.
        ray_num_gpus: GPUs reserved per run on Ray (use with ``device=cuda``).
        batched: (the default) train the runs whose configs differ only in the seed and the sampling strategy
            (:func:`lockstep_units`) in one process, in lockstep (each seed's offline agents trained once), with one
            batched update of all their agents per step
            (:class:`~torchrl_otc.trainers.lockstep.LockstepTuners`); each run keeps its folder, metrics,
            checkpoints and resume, and its numbers are those of ``otc tune`` of its config (bit for bit, on one
            device, at one intra-op thread). ``False`` runs every run on its own, its agents updated one after the other (``otc sweep
            --separate``, :meth:`OnlineTuner.run <torchrl_otc.trainers.tuning.OnlineTuner.run>`): numbers equal
            the batched ones to float tolerance, not bit for bit, so the two modes cache their offline agents
            apart, ``meta.json`` records ``"batched"`` (with the runs of the group) for batched runs, and a resumed
            run keeps the mode it started in. Runs whose algorithm has no batched class run on their own. With
            Ray, one task per group (``ray_num_cpus``/``ray_num_gpus`` per group).
        lockstep_seeds: with ``batched``, the most seeds one group trains (:func:`lockstep_units`: consecutive
            seeds; the groups of different seeds run in parallel workers; the numbers do not depend on the cut).
            ``None`` (the default) cuts each grid cell's seeds so that it keeps all ``workers`` busy, at most
            :data:`LOCKSTEP_SEEDS` seeds per group.

    Returns:
        One ``{"run_dir", "skipped", "returns"?}`` per config, in order.

    Examples:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> recipe = Recipe("demo", base={"task": "nav/nonstationary", "cache_dir": root + "/cache"},
        ...     sizes={"smoke": {"dataset_size": 500, "offline_updates": 2, "deployments": 1,
        ...                      "steps_per_deployment": 20, "updates_per_deployment": 2, "eval_episodes": 1,
        ...                      "num_candidates": 16, "num_online": 10}})
        >>> configs = expand_recipe(recipe, "smoke", runs_root=root)
        >>> [r["skipped"] for r in run_sweep(configs, progress=False)]  # ran
        [False]
        >>> [r["skipped"] for r in run_sweep(configs, progress=False)]  # finished: skipped
        [True]
    """
    configs = list(configs)
    if backend not in ("local", "ray"):
        raise ValueError(f"Unknown backend {backend!r}; use 'local' or 'ray'.")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer; got {workers!r}.")
    if workers > 1 and backend != "local":
        raise ValueError(
            "workers is for backend='local'; Ray places its tasks itself (ray_num_cpus)."
        )
    payloads = [
        c.to_dict() for c in configs
    ]  # nested dicts: plain data for worker processes and Ray
    # a matched mix (or matched decomposed OTC) reads its OTC pair's metrics: it runs right after its pair (a
    # stable order otherwise, and the pair shares its dataset, so both are in one group of the parallel runner)
    where = {_run_dir(p): i for i, p in enumerate(payloads)}

    def _position(i: int) -> tuple[int, int]:
        if _is_matched(payloads[i]):
            return (where.get(Path(str(payloads[i]["sampler"]["mix_pair"])), len(payloads)), 1)
        return (i, 0)

    order = sorted(range(len(payloads)), key=_position)
    payloads = [payloads[i] for i in order]
    # a unit runs in one process: a single run, or a lockstep group (a group starts at its first run's place,
    # so a matched mix's group follows its pairs' group)
    units = (
        lockstep_units(payloads, lockstep_seeds, workers)
        if batched
        else [[i] for i in range(len(payloads))]
    )
    if backend == "local" and workers > 1:
        return _in_order(order, _run_local_parallel(payloads, workers, progress, units, batched))
    if backend == "local":
        done: list[dict[str, Any]] = [{}] * len(payloads)
        bar = tqdm(total=len(payloads), desc="sweep", disable=not progress, unit="run")
        for unit in units:
            for i, result in zip(unit, _run_unit([payloads[i] for i in unit], progress, batched)):
                done[i] = result
            bar.update(len(unit))
        bar.close()
        return _in_order(order, done)
    try:
        import ray  # optional dependency: backend="ray" only
    except ImportError as err:
        raise ImportError(
            "backend=ray needs Ray: pip install 'ray[default]' (or run with backend=local)."
        ) from err
    if not ray.is_initialized():
        ray.init(address=ray_address)
    remote = ray.remote(num_cpus=ray_num_cpus, num_gpus=ray_num_gpus)(_run_unit)
    # two waves: every matched mix starts after all OTC runs it may pair with have finished
    out: list[dict[str, Any]] = [{}] * len(payloads)
    for matched in (False, True):
        wave = [u for u in units if _is_matched(payloads[u[0]]) == matched]
        calls = [remote.remote([payloads[i] for i in u], False, batched) for u in wave]
        for unit, results in zip(wave, ray.get(calls)):
            for i, result in zip(unit, results):
                out[i] = result
    return _in_order(order, out)


def _in_order(order: list[int], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``results`` of the reordered payloads, put back in the order of the configs given."""
    out: list[dict[str, Any]] = [{}] * len(order)
    for position, original in enumerate(order):
        out[original] = results[position]
    return out
