"""The non-stationary single-agent navigation task of the paper's section 4.5, as a batched TorchRL env.

An agent at position ``p`` in the plane must reach a landmark ``l``; reaching it (distance below
``reach_radius``) gives reward 10 and ends the episode. The agent's velocity is ``beta * a`` for its action
``a in [-1, 1]^2``:

.. math::

    p_{t+1} = p_t + \\beta a_t .

``beta`` is a random variable that sets the transition dynamics. While the offline data is collected it is drawn
uniformly from ``[-0.2, 0.2]`` for every episode, so the expected displacement of every action is zero (and the
Q-values learned offline are all equal); during online tuning it moves from 0.1 to 0.2 over the deployments
(:func:`beta_schedule`). The episode's ``beta`` is written into every step under the key ``"beta"`` (and
``("next", "beta")``) so that later code can measure, e.g., the share of sampled offline rows whose ``beta`` has the
online sign. Policies read ``"observation"`` only: ``[p, l - p]``.

:class:`BetaDeployments` is the task's deployment hook (:class:`~torchrl_otc.envs.registry.DeploymentHook`): it
gives each deployment's environment its ``beta`` and labels rows with the deployment's dynamics by the sign of
their ``beta``.

Everything is pure PyTorch and vectorised over ``num_envs`` environments (batch size ``[num_envs]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import EnvBase

from torchrl_otc.envs._common import done_spec, reset_indices, start_and_target

__all__ = [
    "BetaDeployments",
    "NonStationaryNavEnv",
    "beta_schedule",
    "OFFLINE_BETA_RANGE",
    "ONLINE_BETA_RANGE",
]

#: Range of ``beta`` during offline data collection (section 4.5).
OFFLINE_BETA_RANGE: tuple[float, float] = (-0.2, 0.2)
#: ``beta`` moves from the first to the second value over the online deployments (section 4.5).
ONLINE_BETA_RANGE: tuple[float, float] = (0.1, 0.2)


def beta_schedule(
    deployment: int,
    num_deployments: int,
    start: float = ONLINE_BETA_RANGE[0],
    end: float = ONLINE_BETA_RANGE[1],
) -> float:
    """``beta`` of online deployment ``deployment`` (1-based): linear from ``start`` to ``end`` (section 4.5).

    The paper says only that beta "gradually changes from 0.1 to 0.2" during online fine-tuning; a linear schedule
    over the K deployments is our reading. With a single deployment, ``start`` is returned.

    Args:
        deployment: the deployment index ``k`` in ``1..num_deployments``.
        num_deployments: ``K``, the number of deployments (section 4.1 uses 10).
        start: ``beta`` of the first deployment. Defaults to 0.1.
        end: ``beta`` of the last deployment. Defaults to 0.2.

    Returns:
        ``start + (end - start) * (k - 1) / (K - 1)``.

    Examples:
        >>> [round(beta_schedule(k, 3), 3) for k in (1, 2, 3)]
        [0.1, 0.15, 0.2]
    """
    if num_deployments < 1 or not 1 <= deployment <= num_deployments:
        raise ValueError(
            f"deployment must be in 1..num_deployments; got deployment={deployment}, "
            f"num_deployments={num_deployments}."
        )
    if num_deployments == 1:
        return float(start)
    return float(start + (end - start) * (deployment - 1) / (num_deployments - 1))


@dataclass(frozen=True)
class BetaDeployments:
    """The deployment hook of ``nav/nonstationary``: ``beta`` per deployment, rows labelled by the sign of theirs.

    Deployment ``k`` runs with ``beta = beta_schedule(k, K, start, end)`` (section 4.5); deployment 0 (offline
    training and the evaluation after it) takes deployment 1's. A row has the deployment's dynamics when the sign
    of its ``beta`` column is that of the deployment's ``beta``: offline rows drew ``beta`` from
    :data:`OFFLINE_BETA_RANGE`, so uniform sampling gives about half of them.

    Follows :class:`~torchrl_otc.envs.registry.DeploymentHook`.

    Attributes:
        start: ``beta`` of the first deployment. Defaults to 0.1.
        end: ``beta`` of the last deployment. Defaults to 0.2.
        key: the column holding each row's ``beta``. Defaults to ``"beta"``.

    Examples:
        >>> hook = BetaDeployments()
        >>> hook.env_kwargs(0, 3), hook.env_kwargs(3, 3)
        ({'beta': 0.1}, {'beta': 0.2})
        >>> rows = TensorDict({"beta": torch.tensor([[0.15], [-0.05], [0.0]])}, [3])
        >>> hook.right_dynamics(rows, 2, 3)
        tensor([ True, False, False])
        >>> hook.right_dynamics(TensorDict({}, [3]), 2, 3) is None  # rows without labels
        True
    """

    start: float = ONLINE_BETA_RANGE[0]
    end: float = ONLINE_BETA_RANGE[1]
    key: str = "beta"

    def beta(self, deployment: int, num_deployments: int) -> float:
        """``beta`` of deployment ``deployment`` (0 takes deployment 1's).

        Args:
            deployment: ``k`` in ``0..num_deployments``.
            num_deployments: ``K``.

        Returns:
            :func:`beta_schedule` of ``max(k, 1)``.
        """
        return beta_schedule(max(deployment, 1), num_deployments, self.start, self.end)

    def env_kwargs(self, deployment: int, num_deployments: int) -> dict[str, Any]:
        """``{"beta": ...}``, the keyword of :class:`NonStationaryNavEnv` for deployment ``deployment``.

        Args:
            deployment: ``k`` in ``0..num_deployments``.
            num_deployments: ``K``.

        Returns:
            The keyword arguments of the deployment's environment.
        """
        return {"beta": self.beta(deployment, num_deployments)}

    def right_dynamics(
        self, rows: TensorDictBase, deployment: int, num_deployments: int
    ) -> torch.Tensor | None:
        """Whether each row's ``beta`` has the sign of deployment ``deployment``'s.

        Args:
            rows: transitions with batch size ``[N]``.
            deployment: ``k`` in ``0..num_deployments``.
            num_deployments: ``K``.

        Returns:
            A boolean tensor of shape ``[N]``, or ``None`` when ``rows`` have no ``beta`` column.
        """
        if self.key not in rows.keys():
            return None
        sign = math.copysign(1, self.beta(deployment, num_deployments))
        return torch.sign(rows.get(self.key).reshape(-1)) == sign


class NonStationaryNavEnv(EnvBase):
    """Reach a landmark with velocity ``beta * a`` where ``beta`` changes between episodes (section 4.5).

    Start positions and landmarks are drawn uniformly from ``[-arena, arena]^2`` (the landmark at least
    ``2 * reach_radius`` away from the start); the plane has no walls. The reward is ``reward_value`` (10) on the step
    that brings the agent within ``reach_radius`` of the landmark, which terminates the episode, and 0 otherwise;
    after ``max_steps`` steps the episode is truncated (a timeout, not a terminal).

    Args:
        num_envs: number of environments simulated at once (the batch size). Defaults to 1.

    Keyword Args:
        beta: a fixed ``beta`` or a ``(low, high)`` range from which every episode draws its own ``beta``
            uniformly. Defaults to :data:`OFFLINE_BETA_RANGE`, ``(-0.2, 0.2)``, the offline collection setting;
            use :meth:`set_beta` with :func:`beta_schedule` for the online deployments.
        max_steps: episode length before truncation. Defaults to 50.
        reach_radius: distance at which the landmark counts as reached. Defaults to 0.1.
        reward_value: reward for reaching the landmark. Defaults to 10 (section 4.5).
        arena: half-width of the square from which start and landmark positions are drawn. Defaults to 1.
        device: torch device. Defaults to CPU.
        seed: seed of the environment's own random generator. Defaults to ``None`` (random).

    Examples:
        >>> env = NonStationaryNavEnv(num_envs=8, seed=0)
        >>> td = env.rollout(5)
        >>> td["observation"].shape, td["next", "beta"].shape
        (torch.Size([8, 5, 4]), torch.Size([8, 5, 1]))
        >>> bool((td["beta"].abs() <= 0.2).all())
        True
        >>> env.set_beta(0.15)
        >>> float(env.reset()["beta"][0])
        0.15000000596046448
    """

    def __init__(
        self,
        num_envs: int = 1,
        *,
        beta: float | tuple[float, float] = OFFLINE_BETA_RANGE,
        max_steps: int = 50,
        reach_radius: float = 0.1,
        reward_value: float = 10.0,
        arena: float = 1.0,
        device: torch.device | str | None = None,
        seed: int | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1; got {num_envs}.")
        if max_steps < 1 or reach_radius <= 0 or arena <= 0:
            raise ValueError(
                "max_steps, reach_radius and arena must be positive; got "
                f"max_steps={max_steps}, reach_radius={reach_radius}, arena={arena}."
            )
        device = torch.device(device if device is not None else "cpu")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.num_envs = num_envs
        self.max_steps = int(max_steps)
        self.reach_radius = float(reach_radius)
        self.reward_value = float(reward_value)
        self.arena = float(arena)
        self.n_agents = 1
        self.set_beta(beta)
        self._rng = torch.Generator(device=device)
        if seed is None:
            self._rng.seed()
        else:
            self._rng.manual_seed(int(seed))
        shape = self.batch_size
        self.observation_spec = Composite(
            observation=Unbounded((*shape, 4), device=device),
            beta=Unbounded((*shape, 1), device=device),
            shape=shape,
            device=device,
        )
        self.state_spec = Composite(shape=shape, device=device)
        self.action_spec = Bounded(-1.0, 1.0, (*shape, 2), device=device)
        self.reward_spec = Unbounded((*shape, 1), device=device)
        self.done_spec = done_spec(shape, device)
        self._pos = torch.zeros(num_envs, 2, device=device)
        self._landmark = torch.zeros(num_envs, 2, device=device)
        self._beta = torch.zeros(num_envs, 1, device=device)
        self._steps = torch.zeros(num_envs, dtype=torch.long, device=device)

    # ------------------------------------------------------------------ dynamics
    def set_beta(self, beta: float | tuple[float, float]) -> None:
        """Set the dynamics of the following episodes: a fixed ``beta`` or a ``(low, high)`` range (section 4.5).

        Takes effect at the next reset of each environment (``beta`` is constant within an episode).

        Args:
            beta: a number, or a ``(low, high)`` pair with ``low <= high``.

        Examples:
            >>> env = NonStationaryNavEnv(num_envs=2, seed=0)
            >>> env.set_beta(beta_schedule(1, 10))
            >>> env.beta
            0.1
        """
        if isinstance(beta, (tuple, list)):
            if len(beta) != 2 or not float(beta[0]) <= float(beta[1]):
                raise ValueError(f"beta range must be (low, high) with low <= high; got {beta!r}.")
            self.beta: float | tuple[float, float] = (float(beta[0]), float(beta[1]))
        else:
            if not math.isfinite(float(beta)):
                raise ValueError(f"beta must be finite; got {beta!r}.")
            self.beta = float(beta)

    def _draw_beta(self, n: int) -> torch.Tensor:
        if isinstance(self.beta, tuple):
            low, high = self.beta
            u = torch.rand(n, 1, generator=self._rng, device=self.device)
            return u * (high - low) + low
        return torch.full((n, 1), self.beta, device=self.device)

    def _uniform(self, n: int) -> torch.Tensor:
        return (torch.rand(n, 2, generator=self._rng, device=self.device) * 2 - 1) * self.arena

    def _observation(self) -> torch.Tensor:
        return torch.cat([self._pos, self._landmark - self._pos], dim=-1)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        idx = reset_indices(tensordict, self.num_envs, self.device)
        n = idx.numel()
        if n:
            pos, landmark = start_and_target(self._uniform, n, 2 * self.reach_radius)
            self._pos[idx] = pos
            self._landmark[idx] = landmark
            self._beta[idx] = self._draw_beta(n)
            self._steps[idx] = 0
        false = torch.zeros(self.num_envs, 1, dtype=torch.bool, device=self.device)
        return TensorDict(
            {
                "observation": self._observation(),
                "beta": self._beta.clone(),
                "done": false,
                "terminated": false.clone(),
                "truncated": false.clone(),
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action").clamp(-1.0, 1.0)
        self._pos = self._pos + self._beta * action
        self._steps = self._steps + 1
        reached = ((self._pos - self._landmark).norm(dim=-1) < self.reach_radius).unsqueeze(-1)
        truncated = (self._steps >= self.max_steps).unsqueeze(-1) & ~reached
        reward = reached.to(torch.float32) * self.reward_value
        return TensorDict(
            {
                "observation": self._observation(),
                "beta": self._beta.clone(),
                "reward": reward,
                "done": reached | truncated,
                "terminated": reached,
                "truncated": truncated,
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            self._rng.seed()
        else:
            self._rng.manual_seed(int(seed))

    # ------------------------------------------------------------------ helpers
    def expert_action(self, tensordict: TensorDictBase) -> torch.Tensor:
        """The scripted expert: the action that moves straight to the landmark, knowing ``beta``.

        Used as the expert of the return normalisation (``medium`` = about a third of the way from random to
        expert, as D4RL did). It reads ``beta`` from the tensordict, which a learned policy must not do.

        Args:
            tensordict: a tensordict with ``"observation"`` and ``"beta"``.

        Returns:
            The action, clipped to ``[-1, 1]^2``.

        Examples:
            >>> env = NonStationaryNavEnv(num_envs=16, beta=0.2, seed=0)
            >>> policy = lambda td: td.set("action", env.expert_action(td))
            >>> td = env.rollout(50, policy=policy, break_when_any_done=False)
            >>> bool(td["next", "reward"].sum(-2).ge(10).all())  # every env reached its landmark
            True
        """
        obs = tensordict.get("observation")
        beta = tensordict.get("beta")
        safe = torch.where(beta.abs() < 1e-6, torch.full_like(beta, 1e-6), beta)
        return (obs[..., 2:4] / safe).clamp(-1.0, 1.0)
