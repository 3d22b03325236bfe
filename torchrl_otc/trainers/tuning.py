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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.data import Bounded, Unbounded
from torchrl.record.loggers import get_logger
from tqdm.auto import tqdm

from torchrl_otc.configs.tune import TuneConfig
from torchrl_otc.data.datasets.storage import load_dataset
from torchrl_otc.envs.registry import get_task
from torchrl_otc.trainers.behaviour import build_dataset
from torchrl_otc.trainers.checkpointing import read_state, restore_checkpoint, write_checkpoint
from torchrl_otc.trainers.deployment import Deployer, agent_rows
from torchrl_otc.trainers.learner import AgentLearner
from torchrl_otc.trainers.matched_mix import check_pair, matched_fraction, matched_option
from torchrl_otc.trainers.run import RunFolder, atomic_checkpoint
from torchrl_otc.trainers.strategies import DEPLOYMENT_KEY, ID_KEY, ONLINE_KEY, make_sampler

__all__ = ["OnlineTuner", "DivergenceError", "resolve_device"]

logger = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """An agent's loss became NaN or infinite; the message names the agent, the update and the last checkpoint.

    Examples:
        >>> issubclass(DivergenceError, RuntimeError)
        True
    """


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; any other name is passed to :class:`torch.device`.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("auto").type in ("cpu", "cuda")
        True
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
        self.device = resolve_device(config.run.device)
        self.task = get_task(config.task.name)
        if matched_option(config.sampler) is not None:  # a matched mix or matched decomposed OTC
            check_pair(config)  # before the run folder exists: a bad pair leaves nothing behind
        self.K = config.run.deployments
        self.M = config.resolved_steps_per_deployment
        self.L = config.resolved_updates_per_deployment
        self.step = 0
        self._stage: dict[str, Any] = {"stage": "offline", "deployment": 0, "update": 0}
        name = config.run.run_name or config.default_run_name()
        self.folder = RunFolder(run_dir or Path(config.run.runs_root) / name)
        self.dataset = None
        self.agents: list[_Agent] = []
        self.deployer: Deployer | None = None
        self.returns: dict[int, float] = {}

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
            dataset = load_dataset(cfg.data.path)
        else:
            path = Path(cfg.data.cache_dir) / "datasets" / str(cfg.dataset_key())
            if (path / "COMPLETE").exists():
                dataset = load_dataset(path / "data")
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
                dataset = load_dataset(path / "data")
        if dataset.task is not None and dataset.task != cfg.task.name:
            raise ValueError(
                f"The dataset at {dataset.path} is for task {dataset.task!r}, not {cfg.task.name!r}."
            )
        obs = tuple(dataset.data.get("observation").shape[1:])
        act = tuple(dataset.data.get("action").shape[1:])
        expected_obs, expected_act = (self.task.state_dim,), (self.task.action_dim,)
        if obs != expected_obs or act != expected_act:
            raise ValueError(
                f"The dataset's shapes (observation {obs}, action {act}) do not match task {cfg.task.name!r} "
                f"(observation {expected_obs}, action {expected_act})."
            )
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
                Bounded(self.task.action_low, self.task.action_high, shape=(action_dim,)),
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
    def _train(self, steps: int, *, phase: str, deployment: int, start: int = 0) -> None:
        """``steps`` updates of every agent (round-robin), from update ``start`` (when resuming).

        Each agent's :meth:`~torchrl_otc.trainers.AgentLearner.update` returns its metrics, labelled by the task's
        hook for this deployment; they are checked, averaged over ``checkpoint_every`` updates and logged.
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
            for agent in self.agents:
                metrics = agent.learner.update(
                    train_sampler=phase != "offline", right_dynamics=labels, timings=True
                )
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
        }
        learners = [agent.learner for agent in self.agents]
        self.folder.save_checkpoint(lambda path: write_checkpoint(path, state, learners))

    def _offline_cache(self) -> Path:
        return Path(self.config.data.cache_dir) / "offline" / self.config.offline_key()

    def _restore(self, state: dict[str, Any]) -> None:
        restore_checkpoint(
            self.folder.checkpoint_dir, state, [a.learner for a in self.agents], self.device
        )
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
        """Runs (or resumes) the whole loop; returns ``{"returns": {deployment: mean return}, "run_dir": ...}``."""
        cfg = self.config
        resuming = getattr(self, "_resume", False)
        if cfg.run.threads is not None:
            torch.set_num_threads(cfg.run.threads)
        torch.manual_seed(cfg.run.seed)
        self._attach_logger()
        self._build_agents()
        if resuming and self.folder.has_checkpoint():
            state = read_state(self.folder.checkpoint_dir)
            self._restore(state)
            kept = iter(range(state["metrics_rows"]))
            self.folder.truncate_metrics(lambda r: next(kept, None) is not None)
            logger.info("Resuming %s from %s", self.folder.path, self._stage)
            if self._stage["stage"] == "offline":
                self._offline_phase(start=self._stage["update"])
        else:
            if resuming and self.folder.metrics_file.exists():
                # Interrupted before its first checkpoint: nothing to continue from, start over cleanly.
                logger.warning("%s has no checkpoint yet: restarting the run.", self.folder.path)
                self.folder.truncate_metrics(lambda row: False)
            if self.folder.metrics_file.exists() and not resuming:
                raise FileExistsError(
                    f"{self.folder.path} already holds a run. Resume it with `otc tune resume={self.folder.path}` or "
                    f"choose another run_name."
                )
            self.folder.write_config(cfg.to_dict())
            self.folder.write_meta(
                dataset_checksum=self.dataset.metadata.get("checksum"),
                dataset_path=str(self.dataset.path) if self.dataset.path else None,
                device=str(self.device),
            )
            self._offline_phase()
        self._online_phase()
        self._stage = {"stage": "done", "deployment": self.K, "update": 0}
        self._checkpoint()
        summary = {"returns": dict(self.returns), "run_dir": str(self.folder.path)}
        # the marker sweeps look for to skip finished runs
        (self.folder.path / "DONE").write_text(json.dumps(summary["returns"]))
        return summary

    def _offline_phase(self, start: int = 0) -> None:
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
            self._train(cfg.run.offline_updates, phase="offline", deployment=0, start=start)
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

    def _online_phase(self) -> None:
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
                self._train(self.L, phase="online", deployment=k, start=self._stage["update"])
                self._evaluate_and_log(k, "online")
                self._stage = {"stage": "collect", "deployment": k + 1, "update": 0}
                self._checkpoint()
