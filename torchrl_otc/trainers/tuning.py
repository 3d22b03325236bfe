"""The online-tuning loop of Algorithm 1: offline training, K deployments, per-agent tuning; logs and checkpoints.

:class:`OnlineTuner` runs, for every agent ``i`` of a task, independently (paper section 3.1, Algorithm 1):

1. offline training on the agent's own dataset ``B_i^0`` (the joint dataset with the other agents' actions removed,
   section 4.1), for ``offline_updates`` gradient steps;
2. ``K`` deployments: all agents act together with their deterministic policies for ``M`` environment steps (or,
   with sequential exploration, one agent after the other with an exploration policy, section 4.6); each agent keeps
   only its own transitions as ``D_i^k``; the online buffer is emptied and refilled with ``D_i^k``; ``D_i^k`` is
   merged into ``B_i^k``; alpha adapts (eq. 4); each agent makes ``L`` updates with its sampling strategy;
3. an evaluation after offline training (the reference for "improvement %") and after every deployment.

Nothing of one agent reaches another: each has its own buffers, sampler (and distance statistics), algorithm,
optimisers and random generator. The offline-trained agents are cached per (task, dataset, algorithm, seed, offline
updates), so strategies compared on the same seed share the same starting point.

The loop orders the work and logs; the pieces live beside it: each agent's
:class:`~torchrl_otc.trainers.AgentLearner` updates and returns its metrics (the loop averages them, prefixes them
``agent{i}/`` and writes them, see ``docs/metrics.rst``), :func:`~torchrl_otc.trainers.strategies.make_sampler`
builds the samplers, :class:`~torchrl_otc.trainers.deployment.Deployer` collects and evaluates, the task's
:class:`~torchrl_otc.envs.registry.DeploymentHook` says what changes between deployments,
:mod:`~torchrl_otc.trainers.matched_mix` pairs a matched mix (or matched decomposed OTC) with its OTC run, and
:mod:`~torchrl_otc.trainers.checkpointing` writes and restores checkpoints.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
from collections import defaultdict
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.data import Bounded, OneHot, Unbounded
from torchrl.record.loggers import get_logger
from tqdm.auto import tqdm

from torchrl_otc.configs.parts import ConfigError
from torchrl_otc.configs.tune import TuneConfig
from torchrl_otc.data.datasets.storage import load_offline_dataset
from torchrl_otc.envs.registry import get_task
from torchrl_otc.trainers.algorithms.registry import DISCRETE_ALGORITHMS
from torchrl_otc.trainers.behaviour import build_dataset
from torchrl_otc.trainers.checkpointing import read_checkpoint, restore_checkpoint, write_checkpoint
from torchrl_otc.trainers.deployment import Deployer, agent_rows
from torchrl_otc.trainers.learner import AgentLearner, RowLabels
from torchrl_otc.trainers.matched_mix import check_pair, matched_fraction, matched_option
from torchrl_otc.trainers.run import (
    RunExistsError,
    RunFolder,
    RunFolderError,
    atomic_checkpoint,
    check_folder_path,
)
from torchrl_otc.trainers.strategies import DEPLOYMENT_KEY, ID_KEY, ONLINE_KEY, make_sampler

__all__ = ["OnlineTuner", "DivergenceError", "UpdateRequest", "resolve_device"]

logger = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """An agent's loss became NaN or infinite; the message names the agent, the update and the last checkpoint.

    Examples:
        >>> issubclass(DivergenceError, RuntimeError)
        True
    """


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; any other name is passed to :class:`torch.device`.

    Raises:
        ValueError: ``name`` is not a device, or names a GPU this machine does not have (one line saying what to
            use instead).

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("auto").type in ("cpu", "cuda")
        True
        >>> resolve_device("gpu")
        Traceback (most recent call last):
        ...
        ValueError: device='gpu' is not a device; use auto, cpu, cuda or cuda:N.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N."
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={name}: no CUDA GPU is available on this machine (torch.cuda.is_available() is "
                f"False); use device=cpu or device=auto."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={name}: this machine has {torch.cuda.device_count()} CUDA GPU(s) (cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1}); use one of them or device=auto."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={name}: MPS is not available on this machine; use device=cpu.")
    return device


#: Config fields a resumed run may change (where it runs and what it logs, not what it computes).
_MAY_CHANGE_ON_RESUME = frozenset(
    {
        "device",
        "threads",
        "logger",
        "runs_root",
        "run_name",
        "cache_dir",
        "compile",
        "checkpoint_every",
    }
)


def _plain(value: Any) -> Any:
    """``value`` as YAML or JSON gives it back (tuples as lists), so that configs compare as written."""
    return json.loads(json.dumps(value, default=str))


class _Means:
    """Running means of the scalars added since the last :meth:`pop` (one row of ``metrics.csv`` per name)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, prefix: str, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self.sums[prefix + name] += value
            self.counts[prefix + name] += 1

    def pop(self) -> dict[str, float]:
        means = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums.clear()
        self.counts.clear()
        return means


@dataclass(frozen=True)
class UpdateRequest:
    """One update of every agent of a run, as the loop asks for it (the loop's steps are a generator).

    :meth:`OnlineTuner.run` answers each request with its agents' :meth:`AgentLearner.update
    <torchrl_otc.trainers.AgentLearner.update>` metrics, one agent after the other;
    :class:`~torchrl_otc.trainers.lockstep.LockstepTuners` answers the requests of several runs at once with one
    batched update.

    Attributes:
        phase: ``"offline"`` or ``"online"``.
        deployment: 0 offline, else the deployment ``k`` being tuned for.
        update: the update's index ``t`` in the phase (from 0).
        labels: the task's row labels for this deployment (``right_dynamics``).
        sync: the loop reads the learners' own algorithms after this update (a checkpoint, the end of the phase):
            a batched answer writes its parameters back first.

    Examples:
        >>> UpdateRequest("online", 2, 7, lambda batch: None, sync=False).key
        (2, 7)
    """

    phase: str
    deployment: int
    update: int
    labels: RowLabels
    sync: bool

    @property
    def train_sampler(self) -> bool:
        """The sampler's learned parts train too (not during offline training)."""
        return self.phase != "offline"

    @property
    def key(self) -> tuple[int, int]:
        """``(deployment, update)``: runs at the same key may be updated together; a smaller key comes first."""
        return (self.deployment, self.update)


#: The loop's steps: it yields an :class:`UpdateRequest` per update, is sent each agent's metrics, and returns the
#: run's summary.
Steps = Generator[UpdateRequest, "list[dict[str, float]]", dict[str, Any]]


@dataclass
class _Agent:
    """Agent ``index``'s :class:`~torchrl_otc.trainers.learner.AgentLearner`."""

    index: int
    learner: AgentLearner


class OnlineTuner:
    """Runs Algorithm 1 for every agent of a task and writes a run folder.

    Args:
        config: the run's :class:`~torchrl_otc.configs.tune.TuneConfig`.

    Keyword Args:
        run_dir: the run folder; defaults to ``runs_root / run_name`` (or a name derived from the config).
        progress: show tqdm bars.

    Examples:
        >>> from torchrl_otc.configs.tune import parse_overrides
        >>> cfg = parse_overrides(["task=nav/nonstationary", "dataset_size=2000", "offline_updates=20",
        ...     "deployments=2", "steps_per_deployment=100", "updates_per_deployment=20", "eval_episodes=2",
        ...     "num_candidates=64", "num_online=50"])
        >>> import tempfile; root = tempfile.mkdtemp()
        >>> cfg.run.runs_root, cfg.data.cache_dir = root, root + "/cache"
        >>> summary = OnlineTuner(cfg, progress=False).run()
        >>> sorted(summary["returns"])
        [0, 1, 2]
    """

    def __init__(
        self, config: TuneConfig, *, run_dir: str | Path | None = None, progress: bool = True
    ) -> None:
        self.config = config.validate()
        self.progress = progress
        # first: a GPU asked for and missing ends it here, before any other work
        self.device = resolve_device(config.run.device)
        self.task = get_task(config.task.name)
        if self.task.discrete and config.algorithm.name not in DISCRETE_ALGORITHMS:
            raise ConfigError(
                f"{self.task.name} has discrete (one-hot) actions and algo={config.algorithm.name} is a "
                f"continuous-action algorithm; on discrete tasks use algo=bcq (discrete BCQ) or algo=cql "
                f"(discrete CQL)."
            )
        if self.task.discrete and config.task.exploration_noise > 1:
            raise ConfigError(
                f"On a discrete task exploration_noise is the exploring agent's epsilon (epsilon-greedy), a "
                f"probability; got {config.task.exploration_noise}. Use a value in [0, 1]."
            )
        if matched_option(config.sampler) is not None:  # a matched mix or matched decomposed OTC
            check_pair(config)  # before the run folder exists: a bad pair leaves nothing behind
        self.K = config.run.deployments
        self.M = config.resolved_steps_per_deployment
        self.L = config.resolved_updates_per_deployment
        self.step = 0
        self._stage: dict[str, Any] = {"stage": "offline", "deployment": 0, "update": 0}
        name = config.run.run_name or config.default_run_name()
        # nothing is created until the run starts (run() locks the folder, which creates it)
        self.folder = RunFolder(run_dir or Path(config.run.runs_root) / name)
        check_folder_path(self.folder.path, "runs_root" if run_dir is None else "the run folder")
        if config.data.path is None:
            check_folder_path(config.data.cache_dir, "cache_dir")
        self.dataset = None
        self.agents: list[_Agent] = []
        self.deployer: Deployer | None = None
        self.returns: dict[int, float] = {}
        #: appended to the offline cache's key: runs trained another way (batched) keep their own cache
        self.offline_cache_tag = ""
        #: further fields of ``meta.json`` (how the run is computed, e.g. batched with other runs)
        self.meta_extra: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------ setup
    def _set_matched_fractions(self, deployment: int) -> None:
        """``mix_fraction=matched`` / ``online_fraction=matched``: each agent's sampler (a mix, or decomposed OTC)
        takes its pair's online share of deployment ``deployment``."""
        option = matched_option(self.config.sampler)
        if option is None:
            return
        pair = str(self.config.sampler.mix_pair)
        rows = RunFolder(pair).read_metrics()  # read once for every agent
        for agent in self.agents:
            agent.learner.sampler.online_fraction = matched_fraction(
                rows, agent.index, deployment, pair, option
            )

    def _load_dataset(self):
        """The joint dataset ``B^0``: ``dataset_path``, else the cache, else built once and cached."""
        cfg = self.config
        if cfg.data.path is not None:
            dataset = load_offline_dataset(cfg.data.path)
        else:
            path = Path(cfg.data.cache_dir) / "datasets" / str(cfg.dataset_key())
            if (path / "COMPLETE").exists():
                dataset = load_offline_dataset(path / "data")
            else:
                atomic_checkpoint(
                    path,
                    lambda tmp: build_dataset(
                        cfg.task.name,
                        cfg.data.kind,
                        cfg.data.size,
                        seed=cfg.dataset_seed or 0,  # None: the kind ignores the seed
                        out=tmp / "data",
                        progress=self.progress,
                    ),
                )
                dataset = load_offline_dataset(path / "data")
        # the task, the shapes and the agents' action partition (one line naming both values when they differ)
        dataset.check_for_task(self.task)
        return dataset

    def _agent_seed(self, agent: int) -> int:
        """Agent ``agent``'s seed: its learner uses it (and the next two), its sampler's learned parts ``+ 5``."""
        return self.config.run.seed * 1000 + 10 * agent

    def _build_agents(self) -> None:
        cfg = self.config
        self.dataset = self._load_dataset()
        collections = self.task.n_agents if cfg.task.sequential_exploration else 1
        self.agents = []
        for i, view in enumerate(self.dataset.split_agents()):
            view = view.to_tensordict() if hasattr(view, "to_tensordict") else view
            view.set(ID_KEY, torch.arange(len(view)))
            view.set(DEPLOYMENT_KEY, torch.zeros(len(view), dtype=torch.long))
            action_dim = view.get("action").shape[-1]
            part_seed = (
                self._agent_seed(i) + 5
            )  # the sampler's own parts: away from the learner's + 0..2
            learner = AgentLearner(
                cfg.algorithm,  # the config itself: every algorithm.* setting reaches make_algorithm
                Unbounded(shape=(view.get("observation").shape[-1],)),
                OneHot(action_dim)
                if self.task.discrete
                else Bounded(self.task.action_low, self.task.action_high, shape=(action_dim,)),
                seed=self._agent_seed(i),
                device=self.device,
                storage_device=self.device,
                merged_capacity=len(view) + self.K * self.M * collections,
                online_capacity=self.M,
                sampler_factory=functools.partial(
                    make_sampler,
                    cfg.sampler,
                    state_dim=self.task.state_dim,
                    action_dim=action_dim,
                    seed=part_seed,
                    device=self.device,
                ),
                online_key=ONLINE_KEY,
            )
            learner.add_offline(view.to(self.device))
            self.agents.append(_Agent(i, learner))
        self.deployer = Deployer(
            self.task,
            [agent.learner for agent in self.agents],
            num_deployments=self.K,
            device=self.device,
            exploration_noise=cfg.task.exploration_noise,
            progress=self.progress,
        )

    # ------------------------------------------------------------------------------------------------ acting
    def _collect(
        self, deployment: int, steps: int, explore_agent: int | None = None
    ) -> TensorDictBase:
        """``steps`` joint transitions with the agents' current policies (time-major, envs interleaved)."""
        seed = self.config.run.seed * 100_003 + deployment * 101 + (explore_agent or 0) + 7
        return self.deployer.collect(deployment, steps, seed=seed, explore_agent=explore_agent)

    def evaluate(self, deployment: int) -> tuple[float, float]:
        """Mean and std of the team return over ``eval_episodes`` episodes (deterministic policies)."""
        seed = self.config.run.seed * 100_003 + deployment * 101 + 50_000
        return self.deployer.evaluate(deployment, self.config.run.eval_episodes, seed=seed)

    def _add_online(
        self, deployment: int, joint: TensorDictBase, agents: list[_Agent] | None = None
    ) -> None:
        """Each agent's rows of ``joint`` become its ``D_i^k`` (alpha adapts later, once every agent has its own)."""
        for agent in agents or self.agents:
            merged = agent.learner.merged_buffer
            rows = agent_rows(joint, self.task.action_partition, agent.index, deployment, merged)
            agent.learner.add_deployment(rows, adapt_alpha=False)

    # ------------------------------------------------------------------------------------------------ training
    def _update_agents(self, request: UpdateRequest) -> list[dict[str, float]]:
        """Answers ``request``: one :meth:`~torchrl_otc.trainers.AgentLearner.update` of every agent, in order."""
        return [
            agent.learner.update(
                train_sampler=request.train_sampler, right_dynamics=request.labels, timings=True
            )
            for agent in self.agents
        ]

    def _drive(self, steps: Steps) -> dict[str, Any]:
        """Runs the loop's ``steps`` alone: every update request answered by :meth:`_update_agents`."""
        answer: list[dict[str, float]] | None = None
        while True:
            try:
                request = steps.send(answer)  # type: ignore[arg-type]
            except StopIteration as stop:
                return stop.value
            answer = self._update_agents(request)

    def _train(self, steps: int, *, phase: str, deployment: int, start: int = 0) -> Steps:
        """``steps`` updates of every agent, from update ``start`` (when resuming).

        Yields an :class:`UpdateRequest` per update and is sent each agent's metrics (by :meth:`_update_agents`,
        or batched); they are checked, averaged over ``checkpoint_every`` updates and logged.
        """
        cfg = self.config
        means = _Means()
        labels = functools.partial(
            self.task.right_dynamics, deployment=deployment, num_deployments=self.K
        )
        bar = tqdm(
            range(start, steps),
            desc=f"{phase} updates (deployment {deployment})",
            disable=not self.progress,
            leave=False,
        )
        for t in bar:
            sync = (t + 1) % cfg.run.checkpoint_every == 0 or t + 1 == steps
            answers = yield UpdateRequest(phase, deployment, t, labels, sync)
            for agent, metrics in zip(self.agents, answers):
                for name, value in metrics.items():
                    if not math.isfinite(value):
                        raise DivergenceError(
                            f"Agent {agent.index} diverged: {name} = {value} at update {t} of the {phase} "
                            f"phase (deployment {deployment}). The last good checkpoint is "
                            f"{self.folder.checkpoint_dir} (stage {self._stage}); metrics up to it are in "
                            f"{self.folder.metrics_file}."
                        )
                means.add(f"agent{agent.index}/", metrics)
            self.step += 1
            self._stage["update"] = t + 1
            if (t + 1) % cfg.run.checkpoint_every == 0 and t + 1 < steps:
                self._log(means.pop(), phase, deployment)
                self._checkpoint()
        if means.sums:
            self._log(means.pop(), phase, deployment)

    def _log(self, scalars: dict[str, float], phase: str, deployment: int) -> None:
        self.folder.log(scalars, step=self.step, phase=phase, deployment=deployment)

    def _evaluate_and_log(self, deployment: int, phase: str) -> None:
        mean, std = self.evaluate(deployment)
        self.returns[deployment] = mean
        scalars = {"eval/return_mean": mean, "eval/return_std": std}
        for agent in self.agents:
            for name, value in agent.learner.sampler_metrics().items():
                scalars[f"agent{agent.index}/{name}"] = value
        self._log(scalars, phase, deployment)
        logger.info("deployment %d: return %.3f ± %.3f", deployment, mean, std)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> None:
        state = {
            "stage": dict(self._stage),
            "step": self.step,
            "returns": dict(self.returns),
            "metrics_rows": len(self.folder.read_metrics()),
            # what a resume checks config.yaml against (_check_resumable)
            "config": _plain(self.config.to_flat()),
            "shapes": self._shapes(),
        }
        learners = [agent.learner for agent in self.agents]
        self.folder.save_checkpoint(
            lambda path: write_checkpoint(path, state, learners), verify=read_checkpoint
        )

    def _shapes(self) -> dict[str, Any]:
        """The task's shapes, as checkpoints record them."""
        return _plain(
            {
                "agents": self.task.n_agents,
                "observation size": self.task.state_dim,
                "action columns per agent": self.task.action_partition,
            }
        )

    def _check_resumable(self, state: dict[str, Any]) -> None:
        """Refuses to resume when ``config.yaml`` no longer matches the checkpoint (checkpoints of earlier versions
        record no config: not checked).

        Raises:
            RunFolderError: one line naming the field, the checkpoint's value and config.yaml's.
        """
        where = self.folder.path / "config.yaml"
        saved = state.get("config")
        if saved is not None:
            mine = _plain(self.config.to_flat())
            keys = ["task", "algo", "deployments", *saved, *mine]
            differ = [
                k
                for k in dict.fromkeys(keys)
                if k not in _MAY_CHANGE_ON_RESUME and saved.get(k, mine.get(k)) != mine.get(k)
            ]
            if differ:
                key = differ[0]
                also = f" (also changed: {', '.join(differ[1:])})" if differ[1:] else ""
                if key == "deployments":
                    stage = state["stage"]
                    done = int(stage["deployment"]) - (stage["stage"] in ("collect", "update"))
                    raise RunFolderError(
                        f"{where} asks for deployments={mine[key]} but the run was started with deployments="
                        f"{saved[key]} ({done} done){also}: a task's deployment schedule depends on the number "
                        f"of deployments, so it cannot change midway. Put back deployments: {saved[key]}, or "
                        f"start a new run with deployments={mine[key]} and another run_name."
                    )
                raise RunFolderError(
                    f"{where} no longer matches the run's checkpoint: {key} is {saved.get(key)!r} in the "
                    f"checkpoint but {mine.get(key)!r} in config.yaml{also}. Put back {key}: "
                    f"{saved.get(key)!r}, or start a new run with another run_name."
                )
        saved_shapes = state.get("shapes") or {}
        for key, now in self._shapes().items():
            if key in saved_shapes and saved_shapes[key] != now:
                raise RunFolderError(
                    f"{where} no longer matches the run's checkpoint: {key} is {saved_shapes[key]} in the "
                    f"checkpoint but {now} for task {self.config.task.name!r} now. Put back the run's "
                    f"config.yaml, or start a new run with another run_name."
                )

    def _offline_cache(self) -> Path:
        key = self.config.offline_key() + self.offline_cache_tag
        return Path(self.config.data.cache_dir) / "offline" / key

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            restore_checkpoint(
                self.folder.checkpoint_dir, state, [a.learner for a in self.agents], self.device
            )
        # a checkpoint of earlier versions records no config: _check_resumable could not check it
        except (RuntimeError, KeyError, ValueError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RunFolderError(
                f"The checkpoint {self.folder.checkpoint_dir} does not fit the run's config.yaml ({reason}): put "
                f"back the config it was written with, or start a new run with another run_name."
            ) from err
        self._stage = dict(state["stage"])
        self.step = int(state["step"])
        self.returns = {int(k): float(v) for k, v in state["returns"].items()}

    def _attach_logger(self) -> None:
        """``metrics.csv`` is always written; ``logger=tensorboard|wandb`` mirrors it to a TorchRL logger."""
        kind = self.config.run.logger
        if kind == "csv":
            return
        try:
            torchrl_logger = get_logger(
                kind,
                logger_name=str(self.folder.path / kind),
                experiment_name=self.folder.path.name,
            )
        except ImportError as err:
            package = {"tensorboard": "tensorboard", "wandb": "wandb"}[kind]
            raise ImportError(
                f"logger={kind} needs the {package} package: pip install {package}."
            ) from err
        self.folder.add_logger(torchrl_logger)

    # ------------------------------------------------------------------------------------------------ main
    @classmethod
    def resume(cls, run_dir: str | Path, *, progress: bool = True) -> OnlineTuner:
        """Re-opens a run folder and continues from its last checkpoint (its ``config.yaml``, nested or of the
        flat form of earlier versions, read by :meth:`~torchrl_otc.configs.tune.TuneConfig.from_dict`)."""
        config = TuneConfig.from_dict(RunFolder(run_dir).read_config())
        tuner = cls(config, run_dir=run_dir, progress=progress)
        tuner._resume = True
        return tuner

    def run(self) -> dict[str, Any]:
        """Runs (or resumes) the whole loop; returns ``{"returns": {deployment: mean return}, "run_dir": ...}``.

        The run folder is locked (:meth:`~torchrl_otc.trainers.run.RunFolder.lock`) while the loop runs; a folder
        that already holds a run is refused (unless resuming), and so is a resume whose ``config.yaml`` no longer
        matches the checkpoint, both before any dataset is built.

        Raises:
            RunExistsError: a new run in a folder that holds one.
            RunLockedError: another process is writing the folder.
            CheckpointError: the folder's checkpoint and the previous one are both unreadable.
            RunFolderError: config.yaml no longer matches the checkpoint.
        """
        with self.folder.lock():
            return self._drive(self._steps())

    def _steps(self) -> Steps:
        """The whole loop as a generator of update requests (:data:`Steps`); returns the run's summary."""
        cfg = self.config
        resuming = getattr(self, "_resume", False)
        state = None
        if resuming:
            # the newest readable checkpoint (the previous one, with a warning, when the newest is unreadable)
            state = self.folder.load_checkpoint(read_checkpoint)
            if state is not None:
                self._check_resumable(state)
        elif self.folder.holds_run():
            raise RunExistsError(
                f"{self.folder.path} already holds a run. Resume it with `otc tune resume={self.folder.path}` or "
                f"choose another run_name."
            )
        if cfg.run.threads is not None:
            torch.set_num_threads(cfg.run.threads)
        torch.manual_seed(cfg.run.seed)
        self._build_agents()
        self._attach_logger()
        if state is not None:
            self._restore(state)
            kept = iter(range(state["metrics_rows"]))
            self.folder.truncate_metrics(lambda r: next(kept, None) is not None)
            logger.info("Resuming %s from %s", self.folder.path, self._stage)
            if self._stage["stage"] == "offline":
                yield from self._offline_phase(start=self._stage["update"])
        else:
            if resuming and self.folder.metrics_file.exists():
                # Interrupted before its first checkpoint: nothing to continue from, start over cleanly.
                logger.warning("%s has no checkpoint yet: restarting the run.", self.folder.path)
                self.folder.truncate_metrics(lambda row: False)
            self.folder.write_config(cfg.to_dict())
            self.folder.write_meta(
                dataset_checksum=self.dataset.metadata.get("checksum"),
                dataset_path=str(self.dataset.path) if self.dataset.path else None,
                device=str(self.device),
                **self.meta_extra,
            )
            yield from self._offline_phase()
        yield from self._online_phase()
        self._stage = {"stage": "done", "deployment": self.K, "update": 0}
        self._checkpoint()
        summary = {"returns": dict(self.returns), "run_dir": str(self.folder.path)}
        # the marker sweeps look for to skip finished runs
        (self.folder.path / "DONE").write_text(json.dumps(summary["returns"]))
        return summary

    def _offline_phase(self, start: int = 0) -> Steps:
        cfg = self.config
        cache = self._offline_cache()
        if start == 0 and (cache / "COMPLETE").exists():
            saved = torch.load(cache / "agents.pt", weights_only=False)
            for agent, learner_state in zip(self.agents, saved["learners"]):
                agent.learner.load_state_dict(learner_state)
            self.step = cfg.run.offline_updates
            # the offline phase's rows, so that both phases share one step axis in this run's metrics.csv
            rows = saved.get("metrics", [])
            for (step, phase, deployment), group in itertools.groupby(
                rows, key=lambda r: (r["step"], r["phase"], r["deployment"])
            ):
                self.folder.log(
                    {r["name"]: float(r["value"]) for r in group},
                    step=int(step),
                    phase=phase,
                    deployment=int(deployment),
                )
            logger.info("Loaded offline-trained agents from %s", cache)
        else:
            yield from self._train(
                cfg.run.offline_updates, phase="offline", deployment=0, start=start
            )
            # Without the sampler's state: strategies differ there, and nothing of it is learned offline (the
            # distance statistics are fitted on the agent's own offline data when the learner is built).
            learners = [
                {
                    k: v
                    for k, v in agent.learner.state_dict().items()
                    if k not in ("sampler", "parts")
                }
                for agent in self.agents
            ]
            rows = [r for r in self.folder.read_metrics() if r["phase"] == "offline"]
            atomic_checkpoint(
                cache,
                lambda path: torch.save(
                    {"learners": learners, "metrics": rows}, path / "agents.pt"
                ),
            )
        self._pretrain_samplers()
        self._evaluate_and_log(0, "offline")
        self._stage = {"stage": "collect", "deployment": 1, "update": 0}
        self._checkpoint()

    def _pretrain_samplers(self) -> None:
        """Trains the samplers' learned parts (d_e's CVAE) on each agent's offline data, after offline training.

        Kept out of the offline updates (``train_sampler=False`` there) so that the offline-trained agents, cached
        and shared by every strategy, do not depend on the strategy; each part has its own random stream.
        """
        for agent in self.agents:
            metrics = agent.learner.pretrain_sampler(
                self.config.run.offline_updates, progress=self.progress
            )
            if metrics:
                self._log(
                    {f"agent{agent.index}/{k}": v for k, v in metrics.items()},
                    "offline",
                    0,
                )

    def _online_phase(self) -> Steps:
        cfg = self.config
        while self._stage["stage"] != "done" and self._stage["deployment"] <= self.K:
            k = self._stage["deployment"]
            if self._stage["stage"] == "collect":
                if cfg.task.sequential_exploration:
                    # section 4.6: one agent explores while the others exploit
                    for agent in self.agents:
                        joint = self._collect(k, self.M, explore_agent=agent.index)
                        self._add_online(k, joint, [agent])
                else:
                    joint = self._collect(k, self.M)
                    self._add_online(k, joint)
                self._set_matched_fractions(k)  # before eq. 4, which records decomposed OTC's share
                for agent in self.agents:
                    agent.learner.adapt_alpha()  # eq. 4 (OTC only); records D_1 at k = 1
                self._stage = {"stage": "update", "deployment": k, "update": 0}
                self._checkpoint()
            if self._stage["stage"] == "update":
                self._set_matched_fractions(k)
                yield from self._train(
                    self.L, phase="online", deployment=k, start=self._stage["update"]
                )
                self._evaluate_and_log(k, "online")
                self._stage = {"stage": "collect", "deployment": k + 1, "update": 0}
                self._checkpoint()
