"""Deployments of Algorithm 1: the agents act together, collect transitions, are evaluated; each keeps its own rows.

:class:`Deployer` runs the agents' joint policy (each agent's deterministic policy on its own action columns,
optionally one agent exploring with Gaussian noise, section 4.6) in the task's environment as its
:class:`~torchrl_otc.envs.registry.DeploymentHook` sets it up for deployment ``k``; :meth:`Deployer.collect` returns
the joint transitions of a deployment and :meth:`Deployer.evaluate` the team return. :func:`agent_rows` cuts one
agent's transitions ``D_i^k`` out of the joint ones, in the columns of that agent's merged storage.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import TensorDictReplayBuffer
from torchrl.envs import EnvBase
from tqdm.auto import tqdm

from torchrl_otc.data.transforms import MASK_KEY, agent_transitions
from torchrl_otc.envs.registry import TaskSpec, make_env
from torchrl_otc.trainers.learner import AgentLearner
from torchrl_otc.trainers.strategies import DEPLOYMENT_KEY, ID_KEY, ONLINE_KEY

__all__ = ["Deployer", "agent_rows"]

#: Environments run at once while collecting (fewer when the deployment is shorter or the task bounds them).
MAX_COLLECT_ENVS = 32

Policy = Callable[[TensorDictBase], TensorDictBase]


class Deployer:
    """Runs the agents of a task together: collection for deployment ``k`` and evaluation.

    Args:
        task: the task (its action partition, bounds, episode length and deployment hook).
        learners: one :class:`~torchrl_otc.trainers.AgentLearner` per agent, in the partition's order.

    Keyword Args:
        num_deployments: ``K`` (the hook's schedule runs over it).
        device: where environments run.
        exploration_noise: standard deviation of the exploring agent's Gaussian noise, as a share of half the
            action range (section 4.6); on a discrete task, the exploring agent's epsilon (epsilon-greedy).
        progress: show tqdm bars.

    Examples:
        >>> from torchrl.data import Bounded, RandomSampler, Unbounded
        >>> from torchrl_otc.configs.algorithms import TD3BCConfig
        >>> from torchrl_otc.envs.registry import get_task
        >>> task = get_task("nav/nonstationary")
        >>> learner = AgentLearner(TD3BCConfig(hidden_sizes=(8,)), Unbounded(shape=(4,)), Bounded(-1.0, 1.0, (2,)),
        ...                        merged_capacity=100, sampler_factory=lambda online: RandomSampler())
        >>> deployer = Deployer(task, [learner], num_deployments=2)
        >>> deployer.collect(1, 30, seed=0).shape
        torch.Size([30])
        >>> mean, std = deployer.evaluate(1, 2, seed=1)
    """

    def __init__(
        self,
        task: TaskSpec,
        learners: Sequence[AgentLearner],
        *,
        num_deployments: int,
        device: torch.device | str = "cpu",
        exploration_noise: float = 0.0,
        progress: bool = False,
    ) -> None:
        self.task = task
        self.learners = list(learners)
        self.num_deployments = num_deployments
        self.device = torch.device(device)
        self.exploration_noise = exploration_noise
        self.progress = progress

    def env(self, deployment: int, num_envs: int, seed: int) -> EnvBase:
        """The task's joint-layout environment for deployment ``deployment`` (0: the offline evaluation).

        Args:
            deployment: ``k``.
            num_envs: environments wanted at once (the task may bound them: :meth:`TaskSpec.num_envs
                <torchrl_otc.envs.TaskSpec.num_envs>`).
            seed: the environment's seed.
        """
        return make_env(
            self.task.name,
            layout="joint",
            num_envs=self.task.num_envs(num_envs),
            seed=seed,
            device=self.device,
            **self.task.deployment_env_kwargs(deployment, self.num_deployments),
        )

    def policy(
        self,
        explore_agent: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
    ) -> Policy:
        """The joint policy: every agent's deterministic action on its columns; ``explore_agent`` adds noise.

        On a discrete task (one-hot actions) each agent reads its columns of the joint ``action_mask`` when the
        environment gives one (an unavailable action is never taken), and the exploring agent is epsilon-greedy
        among its available actions with ``epsilon = exploration_noise`` (:meth:`AgentLearner.explore
        <torchrl_otc.trainers.AgentLearner.explore>`; issue 17, section 4.6's sequential collection).

        Args:
            explore_agent: the index of the agent that explores, or ``None``.
            generator: the exploration noise's generator.
            dtype: the joint action's dtype (the environment's action spec's; discrete tasks take integer or
                boolean one-hot actions). Defaults to float.
        """
        partition = [list(cols) for cols in self.task.action_partition]
        explore = self._explorer(generator)

        def policy(td: TensorDictBase) -> TensorDictBase:
            obs = td.get("observation")
            mask = td.get(MASK_KEY, None)
            joint = torch.zeros(*obs.shape[:-1], self.task.action_dim, device=obs.device)
            for index, (learner, cols) in enumerate(zip(self.learners, partition)):
                agent_td = TensorDict({"observation": obs}, batch_size=obs.shape[:-1])
                if mask is not None:
                    agent_td.set(MASK_KEY, mask[..., cols])
                if index == explore_agent:
                    action = explore(learner, agent_td)
                else:
                    action = learner.act(agent_td).get("action")
                joint[..., cols] = action.to(joint)
            td.set("action", joint if dtype is None else joint.to(dtype))
            return td

        return policy

    def _explorer(
        self, generator: torch.Generator | None
    ) -> Callable[[AgentLearner, TensorDictBase], torch.Tensor]:
        """The exploring agent's action (section 4.6): epsilon-greedy among the available actions on a discrete
        task, else the deterministic action plus Gaussian noise of ``exploration_noise`` half-ranges, clamped."""
        if self.task.discrete:

            def epsilon_greedy(learner: AgentLearner, td: TensorDictBase) -> torch.Tensor:
                return learner.explore(td, self.exploration_noise, generator).get("action")

            return epsilon_greedy
        low, high = self.task.action_low, self.task.action_high
        noise = self.exploration_noise * (high - low) / 2

        def gaussian(learner: AgentLearner, td: TensorDictBase) -> torch.Tensor:
            action = learner.act(td).get("action")
            action = action + noise * torch.randn(
                action.shape, generator=generator, device=action.device
            )
            return action.clamp(low, high)

        return gaussian

    @torch.no_grad()
    def collect(
        self, deployment: int, steps: int, *, seed: int, explore_agent: int | None = None
    ) -> TensorDictBase:
        """``steps`` joint transitions of deployment ``deployment`` (time-major, environments interleaved).

        Args:
            deployment: ``k``.
            steps: ``M``, environment steps.

        Keyword Args:
            seed: seeds the environment and the exploration noise.
            explore_agent: the agent that explores (section 4.6's sequential collection), or ``None``.

        Returns:
            A flat tensordict of ``steps`` transitions.
        """
        env = self.env(deployment, max(1, min(steps, MAX_COLLECT_ENVS)), seed)
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
                policy=self.policy(explore_agent, generator, env.action_spec.dtype),
                break_when_any_done=False,
                callback=lambda *_: bar.update(num_envs),
            )
        env.close()
        if data.batch_dims == 2:
            data = data.transpose(0, 1)
        return data.reshape(-1)[:steps].to_tensordict()

    @torch.no_grad()
    def evaluate(self, deployment: int, episodes: int, *, seed: int) -> tuple[float, float]:
        """Mean and (population) standard deviation of the team return over ``episodes`` episodes.

        The agents act with their deterministic policies; each environment's first episode counts.

        Args:
            deployment: ``k`` (sets the environment's dynamics through the task's hook).
            episodes: how many episodes.

        Keyword Args:
            seed: the environment's seed.
        """
        env = self.env(deployment, episodes, seed)
        returns: list[float] = []
        while len(returns) < episodes:
            data = env.rollout(
                self.task.max_steps,
                policy=self.policy(dtype=env.action_spec.dtype),
                break_when_any_done=False,
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


def agent_rows(
    joint: TensorDictBase,
    partition: Sequence[Sequence[int]],
    agent: int,
    deployment: int,
    merged: TensorDictReplayBuffer,
) -> TensorDictBase:
    """Agent ``agent``'s transitions ``D_i^k`` of a deployment, ready to write to its merged storage.

    Only the agent's own action columns are kept (:func:`~torchrl_otc.data.transforms.agent_transitions`); the
    tuning loop's columns are added (:data:`~torchrl_otc.trainers.strategies.ID_KEY`: indices following the rows
    already stored, :data:`~torchrl_otc.trainers.strategies.ONLINE_KEY`,
    :data:`~torchrl_otc.trainers.strategies.DEPLOYMENT_KEY`); keys the storage does not hold are dropped and keys
    it holds that the environment does not produce are zero-filled.

    Args:
        joint: the deployment's joint transitions (flat).
        partition: the task's action partition.
        agent: the agent's index.
        deployment: ``k``.
        merged: the agent's merged buffer, holding at least its offline rows.

    Returns:
        The rows, on the merged storage's device.
    """
    rows = agent_transitions(joint, partition, agent)
    n, start = len(rows), len(merged)
    rows.set(ID_KEY, torch.arange(start, start + n, device=rows.device))
    rows.set(ONLINE_KEY, torch.ones(n, dtype=torch.bool, device=rows.device))
    rows.set(DEPLOYMENT_KEY, torch.full((n,), deployment, dtype=torch.long, device=rows.device))
    stored = merged.storage[
        : min(n, len(merged))
    ]  # rows already stored: their columns, dtypes and shapes
    keys = [k for k in stored.keys(True, True) if k in rows.keys(True, True)]
    rows = rows.select(*keys).to(merged.storage.device)
    if n <= len(merged):
        template = stored.clone().zero_()
        template.update(rows)
        rows = template
    return rows
