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
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, RandomSampler, TensorDictReplayBuffer, Unbounded
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.record.loggers import get_logger
from tqdm.auto import tqdm

from torchrl_otc.configs.tune import TuneConfig
from torchrl_otc.data.datasets.storage import load_dataset
from torchrl_otc.data.samplers import (
    BalancedReplaySampler,
    MixSampler,
    OnlineOnlySampler,
    OTCSampler,
)
from torchrl_otc.data.transforms import agent_transitions
from torchrl_otc.envs.nonstationary_nav import beta_schedule
from torchrl_otc.envs.registry import get_task, make_env
from torchrl_otc.modules.distances import (
    EmbeddingDistance,
    FeatureDistance,
    TransitionDistance,
    ValueDistance,
)
from torchrl_otc.trainers.behaviour import build_dataset
from torchrl_otc.trainers.learner import AgentLearner
from torchrl_otc.trainers.run import RunFolder, atomic_checkpoint

__all__ = ["OnlineTuner", "DivergenceError", "resolve_device"]

logger = logging.getLogger(__name__)

ONLINE_KEY = "is_online"
ID_KEY = "transition_id"
DEPLOYMENT_KEY = "deployment"  # 0 for offline rows, k for the rows of deployment k
#: Fields (flat names) a ``mix_fraction=matched`` run must share with its paired OTC run, besides every
#: ``algorithm.<field>``.
_PAIRED_FIELDS = (
    "task",
    "dataset",
    "dataset_size",
    "dataset_path",
    "algo",
    "seed",
    "offline_updates",
    "deployments",
    "steps_per_deployment",
    "updates_per_deployment",
    "sequential_exploration",
    "eval_episodes",
    "threads",
)


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


class _RecordingLearner(AgentLearner):
    """An :class:`AgentLearner` that keeps its last batch and sampling time, for the tuner's metrics."""

    last_batch: TensorDictBase | None = None
    last_sample_ms: float = 0.0

    def sample(self) -> TensorDictBase:
        t0 = time.perf_counter()
        self.last_batch = super().sample()
        self.last_sample_ms = (time.perf_counter() - t0) * 1e3
        return self.last_batch


@dataclass
class _Agent:
    """An agent's :class:`~torchrl_otc.trainers.learner.AgentLearner` and the online rows it has received."""

    index: int
    learner: _RecordingLearner
    online_rows: list[TensorDictBase] = field(default_factory=list)

    @property
    def sampler(self) -> Sampler:
        return self.learner.sampler

    @property
    def merged(self) -> TensorDictReplayBuffer:
        return self.learner.merged_buffer


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
        if config.sampler.name == "mix" and config.sampler.mix_fraction == "matched":
            self._check_pair()  # before the run folder exists: a bad pair leaves nothing behind
        self.K = config.run.deployments
        self.M = config.resolved_steps_per_deployment
        self.L = config.resolved_updates_per_deployment
        self.step = 0
        self._stage: dict[str, Any] = {"stage": "offline", "deployment": 0, "update": 0}
        name = config.run.run_name or config.default_run_name()
        self.folder = RunFolder(run_dir or Path(config.run.runs_root) / name)
        self.dataset = None
        self.agents: list[_Agent] = []
        self.returns: dict[int, float] = {}

    # ------------------------------------------------------------------------------------------------ setup
    def _check_pair(self) -> None:
        """``mix_fraction=matched``: the paired OTC run exists, finished, and has this run's settings."""
        cfg = self.config
        pair = Path(str(cfg.sampler.mix_pair))
        if not (pair / "config.yaml").exists():
            raise ValueError(
                f"mix_fraction=matched: the paired OTC run {pair} does not exist (no config.yaml there). Run the OTC "
                f"run first (a sweep orders it before the matched mix), or point mix_pair= at its folder."
            )
        if not (pair / "DONE").exists():
            raise ValueError(
                f"mix_fraction=matched: the paired OTC run {pair} has not finished (no DONE marker). Finish it "
                f"first: otc tune resume={pair}."
            )
        # flat views (shortcut names, algorithm.<field>), whichever form the pair's config.yaml has
        held = TuneConfig.from_dict(RunFolder(pair).read_config(), validate=False).to_flat()
        if held["strategy"] != "otc":
            raise ValueError(
                f"mix_fraction=matched: {pair} is a strategy={held['strategy']} run; the pair must be an OTC run."
            )
        mine = cfg.to_flat()
        paired = [*_PAIRED_FIELDS, *(k for k in mine if k.startswith("algorithm."))]
        differ = [k for k in paired if held.get(k) != mine[k]]
        if differ:
            raise ValueError(
                f"mix_fraction=matched: the paired OTC run {pair} differs in {differ} (e.g. {differ[0]}="
                f"{held.get(differ[0])!r} there, {mine[differ[0]]!r} here): a matched mix must share its pair's "
                f"task, data, seed and sizes."
            )

    def _matched_fraction(self, rows: list[dict[str, str]], agent: int, deployment: int) -> float:
        """The online share agent ``agent``'s batches had in deployment ``deployment`` of the paired OTC run.

        The mean of the run's ``agent{i}/online_share`` rows (``rows``: its metrics.csv) of that deployment (one
        row per ``checkpoint_every`` updates, each a mean over its updates), kept inside ``[1/512, 1 - 1/512]`` so
        that a mix stays a mix.
        """
        shares = [
            float(r["value"])
            for r in rows
            if r["name"] == f"agent{agent}/online_share"
            and r["phase"] == "online"
            and int(r["deployment"]) == deployment
        ]
        if not shares:
            raise ValueError(
                f"mix_fraction=matched: the paired OTC run {self.config.sampler.mix_pair} has no agent{agent}/online_share "
                f"for deployment {deployment} in its metrics.csv; re-run it."
            )
        eps = 1.0 / 512
        return min(max(statistics.fmean(shares), eps), 1.0 - eps)

    def _set_mix_fractions(self, deployment: int) -> None:
        if self.config.sampler.name != "mix" or self.config.sampler.mix_fraction != "matched":
            return
        # read once for every agent
        rows = RunFolder(str(self.config.sampler.mix_pair)).read_metrics()
        for agent in self.agents:
            agent.sampler.online_fraction = self._matched_fraction(rows, agent.index, deployment)

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

    def _make_sampler(self, online: TensorDictReplayBuffer, agent: int, action_dim: int) -> Sampler:
        """Agent ``agent``'s sampler for ``strategy`` (and its distance for ``strategy=otc``)."""
        cfg = self.config
        seed = (
            self._agent_seed(agent) + 5
        )  # the sampler's own parts: away from the learner's seed + 0..2
        if cfg.sampler.name == "uniform":
            return RandomSampler()
        if cfg.sampler.name == "online-only":
            return OnlineOnlySampler(online_key=ONLINE_KEY)
        if cfg.sampler.name == "mix":
            # matched: set per deployment from the paired OTC run (_set_mix_fractions); offline it is uniform
            share = cfg.sampler.mix_fraction
            fraction = 0.5 if share == "matched" else float(share)
            return MixSampler(
                fraction,
                online_key=ONLINE_KEY,
                source=cfg.sampler.mix_source,
                deployment_key=DEPLOYMENT_KEY,
            )
        if cfg.sampler.name == "balanced-replay":
            return BalancedReplaySampler(
                online_key=ONLINE_KEY,
                num_candidates=cfg.sampler.num_candidates,
                seed=seed,
                device=self.device,
            )
        distance: TransitionDistance
        if cfg.sampler.distance.name == "feature":
            # fitted by add_offline
            distance = FeatureDistance(
                next_state=cfg.sampler.distance.next_state, compile=cfg.sampler.distance.compile
            )
        elif cfg.sampler.distance.name == "embedding":
            # d_e (sections 3.3, 3.5); pretrained after offline training
            distance = EmbeddingDistance(
                self.task.state_dim,
                action_dim,
                reconstruct=cfg.sampler.distance.reconstruct,
                update_every=cfg.sampler.distance.update_every,
                seed=seed,
                device=self.device,
                compile=cfg.sampler.distance.compile,
            )
        else:  # d_q (section 3.3): bound to the agent's own critic by AgentLearner
            distance = ValueDistance(
                value_actions=cfg.sampler.distance.value_actions,
                compile=cfg.sampler.distance.compile,
            )
        return OTCSampler(
            online,
            alpha=cfg.sampler.alpha,
            distance=distance,
            num_candidates=cfg.sampler.num_candidates,
            num_online=cfg.sampler.num_online,
            adaptive_alpha=cfg.sampler.adaptive_alpha,
            self_match=cfg.sampler.self_match,
            online_key=ONLINE_KEY,
            id_key=ID_KEY,
        )

    def _build_agents(self) -> None:
        cfg = self.config
        self.dataset = self._load_dataset()
        collections = self.task.n_agents if cfg.task.sequential_exploration else 1
        self.agents = []
        for i, view in enumerate(self.dataset.split_agents()):
            view = view.to_tensordict() if hasattr(view, "to_tensordict") else view
            view.set(ID_KEY, torch.arange(len(view)))
            view.set(DEPLOYMENT_KEY, torch.zeros(len(view), dtype=torch.long))
            learner = _RecordingLearner(
                cfg.algorithm,  # the config itself: every algorithm.* setting reaches make_algorithm
                Unbounded(shape=(view.get("observation").shape[-1],)),
                Bounded(
                    self.task.action_low,
                    self.task.action_high,
                    shape=(view.get("action").shape[-1],),
                ),
                seed=self._agent_seed(i),
                device=self.device,
                storage_device=self.device,
                merged_capacity=len(view) + self.K * self.M * collections,
                online_capacity=self.M,
                sampler_factory=functools.partial(
                    self._make_sampler, agent=i, action_dim=view.get("action").shape[-1]
                ),
                online_key=ONLINE_KEY,
            )
            learner.add_offline(view.to(self.device))
            self.agents.append(_Agent(i, learner))

    # ------------------------------------------------------------------------------------------------ acting
    def _joint_policy(
        self, explore_agent: int | None = None, generator: torch.Generator | None = None
    ):
        partition = self.task.action_partition
        low, high = self.task.action_low, self.task.action_high
        noise = self.config.task.exploration_noise * (high - low) / 2

        def policy(td: TensorDictBase) -> TensorDictBase:
            obs = td.get("observation")
            joint = torch.empty(*obs.shape[:-1], self.task.action_dim, device=obs.device)
            for agent, cols in zip(self.agents, partition):
                action = agent.learner.act(
                    TensorDict({"observation": obs}, batch_size=obs.shape[:-1])
                )["action"]
                if agent.index == explore_agent:
                    action = action + noise * torch.randn(
                        action.shape, generator=generator, device=action.device
                    )
                    action = action.clamp(low, high)
                joint[..., list(cols)] = action
            td.set("action", joint)
            return td

        return policy

    def _env(self, num_envs: int, seed: int, deployment: int):
        kwargs: dict[str, Any] = {}
        if self.task.family == "nav":
            kwargs["beta"] = beta_schedule(max(deployment, 1), self.K)
        if self.task.family == "mamujoco":
            num_envs = 1
        return make_env(
            self.config.task.name,
            layout="joint",
            num_envs=num_envs,
            seed=seed,
            device=self.device,
            **kwargs,
        )

    def _online_beta(self, deployment: int) -> float | None:
        if self.task.family != "nav":
            return None
        return beta_schedule(max(deployment, 1), self.K)

    @torch.no_grad()
    def _collect(
        self, deployment: int, steps: int, explore_agent: int | None = None
    ) -> TensorDictBase:
        """``steps`` joint transitions with the agents' current policies (time-major, envs interleaved)."""
        seed = self.config.run.seed * 100_003 + deployment * 101 + (explore_agent or 0) + 7
        num_envs = max(1, min(steps, 32))
        env = self._env(num_envs, seed, deployment)
        num_envs = env.batch_size[0] if env.batch_size else 1
        horizon = math.ceil(steps / num_envs)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        who = "all agents" if explore_agent is None else f"agent {explore_agent} exploring"
        with tqdm(
            total=horizon * num_envs,
            desc=f"collection (deployment {deployment}, {who})",
            disable=not self.progress,
            leave=False,
            unit="step",
        ) as bar:
            data = env.rollout(
                horizon,
                policy=self._joint_policy(explore_agent, generator),
                break_when_any_done=False,
                callback=lambda *_: bar.update(num_envs),
            )
        env.close()
        if data.batch_dims == 2:
            data = data.transpose(0, 1)
        return data.reshape(-1)[:steps].to_tensordict()

    @torch.no_grad()
    def evaluate(self, deployment: int) -> tuple[float, float]:
        """Mean and std of the team return over ``eval_episodes`` episodes (deterministic policies)."""
        episodes = self.config.run.eval_episodes
        seed = self.config.run.seed * 100_003 + deployment * 101 + 50_000
        env = self._env(episodes, seed, deployment)
        returns: list[float] = []
        while len(returns) < episodes:
            data = env.rollout(
                self.task.max_steps, policy=self._joint_policy(), break_when_any_done=False
            )
            if data.batch_dims == 1:
                data = data.unsqueeze(0)
            reward = data.get(("next", "reward")).reshape(*data.shape[:2], -1)[..., 0]
            done = data.get(("next", "done")).reshape(*data.shape[:2], -1)[..., 0]
            # Count each environment's first episode only (auto-reset starts another one after it).
            before_first_done = torch.cumsum(done.long(), 1) - done.long() == 0
            returns += (reward * before_first_done).sum(1).tolist()
        env.close()
        returns = returns[:episodes]
        return statistics.mean(returns), statistics.pstdev(returns)

    # ------------------------------------------------------------------------------------------------ data
    def _add_online(
        self, deployment: int, joint: TensorDictBase, agents: list[_Agent] | None = None
    ) -> None:
        for agent in agents or self.agents:
            rows = agent_transitions(joint, self.task.action_partition, agent.index)
            n = len(rows)
            start = len(agent.merged)
            rows.set(ID_KEY, torch.arange(start, start + n, device=rows.device))
            rows.set(ONLINE_KEY, torch.ones(n, dtype=torch.bool, device=rows.device))
            rows.set(
                DEPLOYMENT_KEY, torch.full((n,), deployment, dtype=torch.long, device=rows.device)
            )
            # Same columns as the merged storage: keys the environment does not produce are zero-filled.
            stored = agent.merged.storage._storage
            keys = [k for k in stored.keys(True, True) if k in rows.keys(True, True)]
            rows = rows.select(*keys).to(self.device)
            if n <= len(agent.merged):
                template = stored[:n].clone().zero_()
                template.update(rows)
                rows = template
            agent.learner.add_deployment(rows, adapt_alpha=False)
            agent.online_rows.append(rows.cpu())

    # ------------------------------------------------------------------------------------------------ training
    def _train(self, steps: int, *, phase: str, deployment: int, start: int = 0) -> None:
        """``steps`` updates of every agent (round-robin), from update ``start`` (when resuming)."""
        cfg = self.config
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        beta = self._online_beta(deployment)
        bar = tqdm(
            range(start, steps),
            desc=f"{phase} updates (deployment {deployment})",
            disable=not self.progress,
            leave=False,
        )
        for t in bar:
            for agent in self.agents:
                t0 = time.perf_counter()
                metrics = agent.learner.update(train_sampler=phase != "offline")
                update_ms = (time.perf_counter() - t0) * 1e3
                batch = agent.learner.last_batch
                prefix = f"agent{agent.index}"
                for name, value in metrics.items():
                    value = float(value)
                    if not math.isfinite(value):
                        raise DivergenceError(
                            f"Agent {agent.index} diverged: {name} = {value} at update {t} of the {phase} "
                            f"phase (deployment {deployment}). The last good checkpoint is "
                            f"{self.folder.checkpoint_dir} (stage {self._stage}); metrics up to it are in "
                            f"{self.folder.metrics_file}."
                        )
                    if (
                        name.startswith(("loss", "distance/", "sampler/"))
                        or name == "otc_online_share"
                    ):
                        key = f"{prefix}/{'online_share' if name == 'otc_online_share' else name}"
                        sums[key] += value
                        counts[key] += 1
                for key, value in (
                    ("sample_ms", agent.learner.last_sample_ms),
                    ("update_ms", update_ms),
                ):
                    sums[f"{prefix}/{key}"] += value
                    counts[f"{prefix}/{key}"] += 1
                if "otc_online_share" not in metrics and ONLINE_KEY in batch.keys():
                    sums[f"{prefix}/online_share"] += float(batch.get(ONLINE_KEY).float().mean())
                    counts[f"{prefix}/online_share"] += 1
                if beta is not None and "beta" in batch.keys():
                    offline = ~batch.get(ONLINE_KEY).reshape(-1)
                    if offline.any():
                        right = torch.sign(batch.get("beta").reshape(-1)[offline]) == math.copysign(
                            1, beta
                        )
                        sums[f"{prefix}/offline_right_dynamics_share"] += float(
                            right.float().mean()
                        )
                        counts[f"{prefix}/offline_right_dynamics_share"] += 1
            self.step += 1
            self._stage["update"] = t + 1
            if (t + 1) % cfg.run.checkpoint_every == 0 and t + 1 < steps:
                self._log({k: sums[k] / counts[k] for k in sums}, phase, deployment)
                sums.clear()
                counts.clear()
                self._checkpoint()
        if sums:
            self._log({k: sums[k] / counts[k] for k in sums}, phase, deployment)

    def _log(self, scalars: dict[str, float], phase: str, deployment: int) -> None:
        self.folder.log(scalars, step=self.step, phase=phase, deployment=deployment)

    def _evaluate_and_log(self, deployment: int, phase: str) -> None:
        mean, std = self.evaluate(deployment)
        self.returns[deployment] = mean
        scalars = {"eval/return_mean": mean, "eval/return_std": std}
        for agent in self.agents:
            if isinstance(agent.sampler, OTCSampler):
                scalars[f"agent{agent.index}/alpha"] = agent.sampler.alpha
                if agent.sampler.alpha_history:
                    scalars[f"agent{agent.index}/D"] = agent.sampler.alpha_history[-1]["D"]
            if isinstance(agent.sampler, MixSampler) and deployment > 0:
                scalars[f"agent{agent.index}/mix_fraction"] = agent.sampler.online_fraction
        self._log(scalars, phase, deployment)
        logger.info("deployment %d: return %.3f ± %.3f", deployment, mean, std)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "stage": dict(self._stage),
            "step": self.step,
            "returns": dict(self.returns),
            "metrics_rows": len(self.folder.read_metrics()),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "agents": [
                {
                    "learner": agent.learner.state_dict(),
                    "online_rows": list(agent.online_rows),
                    "current_online": agent.learner.online_buffer[:].cpu()
                    if len(agent.learner.online_buffer)
                    else None,
                }
                for agent in self.agents
            ],
        }

    def _checkpoint(self) -> None:
        state = self._state()
        self.folder.save_checkpoint(lambda path: torch.save(state, path / "state.pt"))

    def _offline_cache(self) -> Path:
        return Path(self.config.data.cache_dir) / "offline" / self.config.offline_key()

    def _restore(self, state: dict[str, Any]) -> None:
        self._stage = dict(state["stage"])
        self.step = int(state["step"])
        self.returns = {int(k): float(v) for k, v in state["returns"].items()}
        for agent, saved in zip(self.agents, state["agents"]):
            learner = agent.learner
            for rows in saved["online_rows"]:
                learner.merged_buffer.extend(rows.to(self.device))
            agent.online_rows = list(saved["online_rows"])
            learner.online_buffer.empty()
            if saved["current_online"] is not None:
                learner.online_buffer.extend(saved["current_online"].to(self.device))
            learner.load_state_dict(
                saved["learner"]
            )  # last: writes above must not move its streams
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

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
            state = torch.load(self.folder.checkpoint_dir / "state.pt", weights_only=False)
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
                    for (
                        agent
                    ) in self.agents:  # section 4.6: one agent explores while the others exploit
                        joint = self._collect(k, self.M, explore_agent=agent.index)
                        self._add_online(k, joint, [agent])
                else:
                    joint = self._collect(k, self.M)
                    self._add_online(k, joint)
                for agent in self.agents:
                    if isinstance(agent.sampler, OTCSampler):
                        with agent.learner.random_stream():
                            agent.sampler.adapt_alpha(agent.merged)  # eq. 4; records D_1 at k = 1
                self._stage = {"stage": "update", "deployment": k, "update": 0}
                self._checkpoint()
            if self._stage["stage"] == "update":
                self._set_mix_fractions(k)
                self._train(self.L, phase="online", deployment=k, start=self._stage["update"])
                self._evaluate_and_log(k, "online")
                self._stage = {"stage": "collect", "deployment": k + 1, "update": 0}
                self._checkpoint()
