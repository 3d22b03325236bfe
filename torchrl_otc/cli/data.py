"""``otc data``: build, inspect, import and check offline datasets (paper section 4.1).

``otc data build TASK --kind {random,medium,medium-replay} --size N --seed S --out DIR`` builds a joint offline
dataset; ``otc data info PATH`` checks one and prints its summary; ``otc data import {d4rl,minari} SOURCE --task TASK
--out DIR`` converts data users already have; ``otc data train-behaviour TASK`` retrains the behaviour policy of the
``medium`` datasets; ``otc data tasks`` lists the registered tasks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from torchrl_otc.configs.tune import coerce_field
from torchrl_otc.data.datasets import (
    KINDS,
    load_d4rl_hdf5,
    load_minari,
    load_offline_dataset,
    prepare_dataset_folder,
    save_dataset,
)
from torchrl_otc.data.datasets.behaviour import BehaviourConfig, save_behaviour_policy
from torchrl_otc.envs.registry import TASKS
from torchrl_otc.trainers.behaviour import build_dataset, train_behaviour_policy

__all__ = ["add_data_command"]

logger = logging.getLogger("torchrl_otc.cli")

#: The exit code of a command that succeeded.
EXIT_OK = 0


def _parse_kv(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--env-kwarg expects KEY=VALUE; got {item!r}.")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def _run_data_build(args: argparse.Namespace) -> int:
    if args.out is None:
        args.out = (
            Path("data") / f"{args.task.replace('/', '_')}-{args.kind}-{args.size}-seed{args.seed}"
        )

    ds = build_dataset(
        args.task,
        args.kind,
        args.size,
        seed=args.seed,
        out=args.out,
        num_envs=args.num_envs,
        device=args.device,
        local_obs=args.local_obs,
        checkpoint=args.checkpoint,
        noise_std=args.noise_std,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        env_kwargs=_parse_kv(args.env_kwarg),
    )
    logger.info("Wrote %d transitions to %s", len(ds), args.out)
    sys.stdout.write(f"{args.out}\n")
    return EXIT_OK


def _summary(ds: Any, verified: bool) -> dict[str, Any]:
    data = ds.data
    meta = ds.metadata
    reward = data.get(("next", "reward")).float()
    flags = {k: int(data.get(("next", k)).sum()) for k in ("done", "terminated", "truncated")}
    return {
        "path": str(ds.path),
        "task": meta.get("task"),
        "kind": meta.get("kind"),
        "behaviour": meta.get("behaviour"),
        "size": len(ds),
        "seed": meta.get("seed"),
        "package_version": meta.get("package_version"),
        "created": meta.get("created"),
        "checksum": meta.get("checksum"),
        "checksum_verified": verified,
        "n_agents": ds.n_agents,
        "action_partition": ds.action_partition,
        "keys": meta.get("keys"),
        "reward": {
            "mean": float(reward.mean()),
            "std": float(reward.std()) if len(ds) > 1 else 0.0,
            "min": float(reward.min()),
            "max": float(reward.max()),
        },
        "flags": flags,
        "episodes_completed": meta.get("stats", {}).get("episodes"),
        "episode_return_mean": meta.get("stats", {}).get("return_mean"),
        "observation_range": [
            float(data.get("observation").min()),
            float(data.get("observation").max()),
        ],
        "action_range": [float(data.get("action").min()), float(data.get("action").max())],
        "command": meta.get("command"),
        "torch": torch.__version__,
    }


def _run_data_info(args: argparse.Namespace) -> int:
    ds = load_offline_dataset(args.path, verify=not args.no_verify)
    info = _summary(ds, verified=not args.no_verify)
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2, sort_keys=True) + "\n")
        return EXIT_OK
    lines = [
        f"dataset      {info['path']}",
        f"task         {info['task']}  ({info['n_agents']} agents, action partition {info['action_partition']})",
        f"kind         {info['kind']}  behaviour: {json.dumps(info['behaviour'])}",
        f"size         {info['size']} transitions  seed {info['seed']}",
        f"checksum     {info['checksum']}  ({'verified' if info['checksum_verified'] else 'not verified; file sizes checked'})",
        f"written by   torchrl-otc {info['package_version']} on {info['created']}",
        f"reward       mean {info['reward']['mean']:.4g}  std {info['reward']['std']:.4g}  "
        f"min {info['reward']['min']:.4g}  max {info['reward']['max']:.4g}",
        f"next flags   done {info['flags']['done']}  terminated {info['flags']['terminated']}  "
        f"truncated {info['flags']['truncated']}",
    ]
    if info["episodes_completed"] is not None:
        lines.append(
            f"episodes     {info['episodes_completed']} completed, mean return {info['episode_return_mean']}"
        )
    lines.append("keys")
    for key, desc in (info["keys"] or {}).items():
        lines.append(f"  {key:<28} {desc['dtype']:<14} {tuple(desc['shape'])}")
    if info["command"]:
        lines.append(f"rebuild      {info['command']}")
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


def _run_data_import(args: argparse.Namespace) -> int:
    prepare_dataset_folder(
        args.out, overwrite=args.overwrite
    )  # a refused --out before reading the source
    loader = load_d4rl_hdf5 if args.format == "d4rl" else load_minari
    ds = loader(args.source, task=args.task)
    meta = dict(ds.metadata)
    meta["command"] = "otc " + " ".join(shlex.quote(a) for a in args.argv)
    save_dataset(ds.data, args.out, meta, overwrite=args.overwrite)
    logger.info("Imported %d transitions from %s", len(ds), args.source)
    sys.stdout.write(f"{args.out}\n")
    return EXIT_OK


def _behaviour_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` settings of :class:`BehaviourConfig`, converted to the fields' types."""
    names = {f.name for f in dataclasses.fields(BehaviourConfig)} - {"seed"}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in names:
            raise ValueError(
                f"--set takes KEY=VALUE with a field of BehaviourConfig; got {item!r}. Fields: "
                f"{', '.join(sorted(names))} (--seed has its own option)."
            )
        out[key] = coerce_field(key, text, BehaviourConfig)
    return out


def _run_data_train_behaviour(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {**_behaviour_overrides(args.set), "seed": args.seed}
    if args.max_transitions is not None:
        overrides["max_transitions"] = args.max_transitions
    if args.target_fraction is not None:
        overrides["target_fraction"] = args.target_fraction
    cfg = BehaviourConfig.for_task(args.task, **overrides)
    result = train_behaviour_policy(args.task, cfg, progress=not args.no_progress)
    command = "otc " + " ".join(shlex.quote(a) for a in args.argv)
    path = save_behaviour_policy(args.task, result, args.out, command=command)
    final = result.final
    if not result.reached:
        logger.warning(
            "%s: the target normalised score %.3f was not reached in %d transitions (last %.3f).",
            args.task,
            cfg.target_fraction,
            cfg.max_transitions,
            final["normalised_score"],
        )
    sys.stdout.write(
        f"{path}\nreturn {final['return_mean']:.4g} +- {final['return_std']:.3g} "
        f"(normalised {final['normalised_score']:.3f}; random {result.reference['random']:.4g}, "
        f"expert {result.reference['expert']:.4g}) after {final['transitions']} transitions, "
        f"{result.seconds:.0f} s\n"
    )
    return EXIT_OK


def add_data_command(sub: Any) -> None:
    """Registers ``otc data {build,info,import,train-behaviour,tasks}`` (the offline datasets of section 4.1).

    Args:
        sub: the subparsers of the ``otc`` parser (``parser.add_subparsers(...)``).

    Examples:
        >>> import argparse
        >>> sub = argparse.ArgumentParser(prog="otc").add_subparsers(dest="command")
        >>> add_data_command(sub)
        >>> sorted(sub.choices)
        ['data']
    """
    data = sub.add_parser("data", help="build, inspect and check offline datasets (section 4.1)")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    build = data_sub.add_parser(
        "build",
        help="build a joint offline dataset of a task",
        description="Build a joint offline dataset (random / medium / medium-replay) and write it to --out.",
    )
    build.add_argument(
        "task", metavar="TASK", help="registered task, e.g. mpe/navigation-3 (see `otc data tasks`)"
    )
    build.add_argument(
        "--kind", choices=KINDS, default="random", help="dataset kind (default: random)"
    )
    build.add_argument(
        "--size", type=int, default=100_000, help="number of joint transitions (default: 100000)"
    )
    build.add_argument(
        "--seed", type=int, default=0, help="seed of environments and policy noise (default: 0)"
    )
    build.add_argument(
        "--out",
        type=Path,
        default=None,
        help="dataset folder to create (default: data/<task>-<kind>-<size>-seed<seed>)",
    )
    build.add_argument(
        "--num-envs", type=int, default=None, help="environments in parallel (default: per task)"
    )
    build.add_argument(
        "--device", default="cpu", help="simulation device for VMAS / navigation (default: cpu)"
    )
    build.add_argument(
        "--local-obs", action="store_true", help="also store the agents' local observations"
    )
    build.add_argument(
        "--checkpoint", type=Path, default=None, help="behaviour policy (default: the shipped one)"
    )
    build.add_argument(
        "--noise-std", type=float, default=0.1, help="medium: action noise in half-ranges (0.1)"
    )
    build.add_argument(
        "--env-kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment argument (repeatable)",
    )
    build.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out folder (kept until the new one is complete)",
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    build.set_defaults(func=_run_data_build)

    info = data_sub.add_parser(
        "info",
        help="check a dataset folder and print its summary",
        description="Verify and summarise a dataset.",
    )
    info.add_argument("path", type=Path, metavar="PATH", help="dataset folder")
    info.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the checksum verification (file sizes, dtypes and shapes are still checked)",
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=_run_data_info)

    imp = data_sub.add_parser(
        "import",
        help="convert a D4RL HDF5 file or a local Minari dataset into the package's format",
        description="Read a D4RL HDF5 file or a Minari dataset folder (h5py only), split the robot's actions by the "
        "task's partition, check the data and write a dataset folder.",
    )
    imp.add_argument("format", choices=("d4rl", "minari"), help="source format")
    imp.add_argument(
        "source", type=Path, help="the .hdf5 file (d4rl) or the dataset folder (minari)"
    )
    imp.add_argument("--task", required=True, help="registered task, e.g. mamujoco/hopper-3x1")
    imp.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    imp.set_defaults(func=_run_data_import)

    train = data_sub.add_parser(
        "train-behaviour",
        help="retrain the behaviour policy of a task's medium datasets",
        description="Train a TD3 behaviour policy on the task's joint view until it reaches about a third of the "
        "expert's normalised return; saves the checkpoint (default: the package's assets folder).",
    )
    train.add_argument("task", metavar="TASK", help="registered task")
    train.add_argument("--seed", type=int, default=0, help="seed of the run (default: 0)")
    train.add_argument(
        "--max-transitions", type=int, default=None, help="give up after this many transitions"
    )
    train.add_argument(
        "--target-fraction", type=float, default=None, help="normalised score to stop at (1/3)"
    )
    train.add_argument(
        "--out", type=Path, default=None, help="checkpoint file (default: shipped location)"
    )
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another BehaviourConfig setting, e.g. --set updates_per_transition=0.5 --set 'hidden=[256, 256]' "
        "(recorded in the checkpoint, so medium-replay re-runs it)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(func=_run_data_train_behaviour)

    tasks = data_sub.add_parser("tasks", help="list the registered tasks")
    tasks.set_defaults(func=_run_data_tasks)


def _run_data_tasks(args: argparse.Namespace) -> int:
    for name in sorted(TASKS):
        t = TASKS[name]
        mark = "" if t.available() else "  [not installed: " + ", ".join(t.requires) + "]"
        sys.stdout.write(f"{name:<26} {t.n_agents} agents  {t.description}{mark}\n")
    return EXIT_OK
