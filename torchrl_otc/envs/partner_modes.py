"""A multi-agent task with known ground truth for the paper's mismatch: a partner whose policy changed.

The paper's motivation (section 1) is that, from each agent's point of view, the other agents are part of the
environment: when one of them behaves differently at deployment than while the offline data was collected, the
transition dynamics each agent sees change (section 3.1), even though nothing in the simulator did. Section 4.5
isolates this with a single agent whose dynamics change (:mod:`~torchrl_otc.envs.nonstationary_nav`); this task
puts the change where the paper locates it, in another agent's behaviour, and labels every transition with it.

``n_agents`` learning agents (2 by default) push a box at position ``b`` towards a goal ``g`` in the plane. A
scripted **partner** holds the box's front and steers it: in behaviour mode ``m = +1`` (``"left"``) it turns the
team's push counter-clockwise by ``turn`` degrees (90 by default), in mode ``m = -1`` (``"right"``) clockwise.
With agent ``i``'s action ``a_i in [-1, 1]^2`` and ``R(phi)`` the rotation by ``phi``:

.. math::

    b_{t+1} = b_t + \\mathrm{speed}\\; R(m\\, \\mathrm{turn})\\; \\frac{1}{n} \\sum_i a_{i,t} .

The agents must coordinate: the box moves by their *mean* push, so pushes in different directions cancel. The
reward, shared by the team, is the progress towards the goal, ``progress_weight * (|g - b_t| - |g - b_{t+1}|)``,
plus ``reward_value`` (10) on the step that brings the box within ``reach_radius`` of the goal, which terminates
the episode; after ``max_steps`` steps the episode is truncated.

**The mode is the mismatch.** While the offline data is collected (``mode=None``) the partner draws its mode
uniformly from ``{+1, -1}`` for every episode; at deployment it acts in one known mode (:class:`PartnerDeployments`,
``+1`` at every deployment by default). The best push of an agent is the direction to the goal turned by
``-m * turn``, so it depends on the mode: with ``turn = 90`` the two modes' displacements of any joint action are
opposite, the offline data's expected displacement is zero for every action (as in section 4.5), and learning from
the other mode's rows pushes the box the wrong way. Each agent sees only the global state ``[b, g - b]`` and its
own action (decentralised, as the package's other tasks); neither sees the mode.

Every transition carries its episode's mode as a float ``+1.0``/``-1.0`` under :data:`MODE_KEY`
(``"partner_mode"``, at the root and under ``"next"``, in both layouts), which the random datasets keep
(:func:`~torchrl_otc.data.datasets.build_dataset`), as do each agent's rows cut from them; the deployment hook labels
rows whose mode is the deployment's as having the right dynamics, so the tuning loop logs
``agent{i}/offline_right_dynamics_share`` on this task.

Layouts: ``layout="agents"`` (default) is TorchRL's multi-agent layout (group ``"agents"``: per-agent
``observation`` = the global state, per-agent ``action``, the shared reward repeated per agent; root
``done``/``terminated``/``truncated`` and ``partner_mode``); ``layout="joint"`` is the single-agent view of the
datasets (``observation``, joint ``action`` with agent ``i``'s columns ``2i, 2i + 1``, ``reward``). Everything is
pure PyTorch and vectorised over ``num_envs`` environments (batch size ``[num_envs]``).
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
    "MODE_KEY",
    "PARTNER_MODES",
    "PartnerDeployments",
    "PartnerModesEnv",
]

#: The column holding each transition's partner mode (``+1.0`` or ``-1.0``).
MODE_KEY: str = "partner_mode"
#: The partner's behaviour modes: ``+1`` turns the team's push counter-clockwise (``"left"``), ``-1`` clockwise.
PARTNER_MODES: tuple[int, int] = (1, -1)
_MODE_NAMES = {"left": 1, "right": -1}


def _check_mode(mode: Any) -> int:
    if isinstance(mode, str) and mode in _MODE_NAMES:
        return _MODE_NAMES[mode]
    if isinstance(mode, bool) or mode not in PARTNER_MODES:
        raise ValueError(
            f"mode must be +1 ('left'), -1 ('right') or None (drawn per episode); got {mode!r}."
        )
    return int(mode)


@dataclass(frozen=True)
class PartnerDeployments:
    """The deployment hook of ``coord/partner-modes``: the partner's mode per deployment, rows labelled by theirs.

    Deployment ``k`` runs with the partner in mode ``schedule[(k - 1) % len(schedule)]``; deployment 0 (offline
    training and the evaluation after it) takes deployment 1's. The default schedule is ``(1,)``: the partner
    changed once, between collection and deployment, and keeps its new mode (the mismatch of sections 1 and 3.1;
    a drifting mismatch is what ``nav/nonstationary`` measures). A row has the deployment's dynamics when its
    :data:`MODE_KEY` column equals the deployment's mode; offline rows drew their mode per episode with
    probability 1/2, so uniform sampling gives about half of them.

    Follows :class:`~torchrl_otc.envs.registry.DeploymentHook`.

    Attributes:
        schedule: the partner's mode at deployments ``1, 2, ...`` (cycled), each ``+1`` or ``-1``. Defaults to
            ``(1,)``.
        key: the column holding each row's mode. Defaults to :data:`MODE_KEY`.

    Examples:
        >>> hook = PartnerDeployments()
        >>> hook.env_kwargs(0, 3), hook.env_kwargs(3, 3)
        ({'mode': 1}, {'mode': 1})
        >>> rows = TensorDict({"partner_mode": torch.tensor([[1.0], [-1.0], [1.0]])}, [3])
        >>> hook.right_dynamics(rows, 2, 3)
        tensor([ True, False,  True])
        >>> PartnerDeployments(schedule=(1, -1)).right_dynamics(rows, 2, 3)
        tensor([False,  True, False])
        >>> hook.right_dynamics(TensorDict({}, [3]), 2, 3) is None  # rows without labels
        True
    """

    schedule: tuple[int, ...] = (1,)
    key: str = MODE_KEY

    def __post_init__(self) -> None:
        if not self.schedule:
            raise ValueError("schedule must name at least one mode.")
        object.__setattr__(self, "schedule", tuple(_check_mode(m) for m in self.schedule))

    def mode(self, deployment: int, num_deployments: int) -> int:
        """The partner's mode at deployment ``deployment`` (0 takes deployment 1's).

        Args:
            deployment: ``k`` in ``0..num_deployments``.
            num_deployments: ``K``.

        Returns:
            ``+1`` or ``-1``.
        """
        if num_deployments < 1 or not 0 <= deployment <= num_deployments:
            raise ValueError(
                f"deployment must be in 0..num_deployments; got deployment={deployment}, "
                f"num_deployments={num_deployments}."
            )
        return self.schedule[(max(deployment, 1) - 1) % len(self.schedule)]

    def env_kwargs(self, deployment: int, num_deployments: int) -> dict[str, Any]:
        """``{"mode": ...}``, the keyword of :class:`PartnerModesEnv` for deployment ``deployment``.

        Args:
            deployment: ``k`` in ``0..num_deployments``.
            num_deployments: ``K``.

        Returns:
            The keyword arguments of the deployment's environment.
        """
        return {"mode": self.mode(deployment, num_deployments)}

    def right_dynamics(
        self, rows: TensorDictBase, deployment: int, num_deployments: int
    ) -> torch.Tensor | None:
        """Whether each row's partner mode is deployment ``deployment``'s.

        Args:
            rows: transitions with batch size ``[N]``.
            deployment: ``k`` in ``0..num_deployments``.
            num_deployments: ``K``.

        Returns:
            A boolean tensor of shape ``[N]``, or ``None`` when ``rows`` have no mode column.
        """
        if self.key not in rows.keys():
            return None
        return rows.get(self.key).reshape(-1) == float(self.mode(deployment, num_deployments))


class PartnerModesEnv(EnvBase):
    """Push a box to a goal with a scripted partner that steers it left or right (sections 1, 3.1, 4.5).

    Box and goal positions are drawn uniformly from ``[-arena, arena]^2`` (the goal at least ``2 * reach_radius``
    away); the plane has no walls. See the module's description for the dynamics and the reward.

    Args:
        num_envs: number of environments simulated at once (the batch size). Defaults to 1.

    Keyword Args:
        n_agents: number of learning agents. Defaults to 2.
        layout: ``"agents"`` (TorchRL's multi-agent layout, default) or ``"joint"`` (the datasets' view).
        mode: the partner's mode, ``+1``/``"left"`` or ``-1``/``"right"``, or ``None`` to draw it uniformly for
            every episode (the offline collection setting, the default). :class:`PartnerDeployments` gives each
            deployment's.
        turn: how far the partner turns the team's push, in degrees. Defaults to 90 (the modes' displacements
            are then opposite and their mixture's mean is zero).
        speed: the box's displacement per step for a unit mean push. Defaults to 0.15.
        max_steps: episode length before truncation. Defaults to 50.
        reach_radius: distance at which the goal counts as reached. Defaults to 0.1.
        reward_value: reward for reaching the goal. Defaults to 10 (as section 4.5's task).
        progress_weight: weight of the per-step progress reward. Defaults to 1.
        arena: half-width of the square from which box and goal positions are drawn. Defaults to 1.
        device: torch device. Defaults to CPU.
        seed: seed of the environment's own random generator. Defaults to ``None`` (random).

    Examples:
        >>> env = PartnerModesEnv(num_envs=8, seed=0)
        >>> td = env.rollout(5, break_when_any_done=False)  # random actions: an episode may end early
        >>> td["agents", "observation"].shape, td["agents", "action"].shape, td["next", "partner_mode"].shape
        (torch.Size([8, 5, 2, 4]), torch.Size([8, 5, 2, 2]), torch.Size([8, 5, 1]))
        >>> sorted(set(td["partner_mode"].flatten().tolist())) == [-1.0, 1.0]  # drawn per episode
        True
        >>> joint = PartnerModesEnv(num_envs=4, layout="joint", mode="left", seed=0)
        >>> joint.rollout(3)["action"].shape, float(joint.reset()["partner_mode"][0])
        (torch.Size([4, 3, 4]), 1.0)
    """

    def __init__(
        self,
        num_envs: int = 1,
        *,
        n_agents: int = 2,
        layout: str = "agents",
        mode: int | str | None = None,
        turn: float = 90.0,
        speed: float = 0.15,
        max_steps: int = 50,
        reach_radius: float = 0.1,
        reward_value: float = 10.0,
        progress_weight: float = 1.0,
        arena: float = 1.0,
        device: torch.device | str | None = None,
        seed: int | None = None,
    ) -> None:
        if num_envs < 1 or n_agents < 1:
            raise ValueError(f"num_envs and n_agents must be >= 1; got {num_envs}, {n_agents}.")
        if layout not in ("agents", "joint"):
            raise ValueError(f"layout must be 'agents' or 'joint'; got {layout!r}.")
        if max_steps < 1 or reach_radius <= 0 or arena <= 0 or speed <= 0:
            raise ValueError(
                "max_steps, reach_radius, arena and speed must be positive; got "
                f"max_steps={max_steps}, reach_radius={reach_radius}, arena={arena}, speed={speed}."
            )
        if not math.isfinite(float(turn)):
            raise ValueError(f"turn must be finite; got {turn!r}.")
        device = torch.device(device if device is not None else "cpu")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.num_envs = num_envs
        self.n_agents = int(n_agents)
        self.layout = layout
        self.turn = float(turn)
        self.speed = float(speed)
        self.max_steps = int(max_steps)
        self.reach_radius = float(reach_radius)
        self.reward_value = float(reward_value)
        self.progress_weight = float(progress_weight)
        self.arena = float(arena)
        self.set_mode(mode)
        self._rng = torch.Generator(device=device)
        self._set_seed(seed)
        shape, n = self.batch_size, self.n_agents
        if layout == "agents":
            group = (*shape, n)
            self.observation_spec = Composite(
                agents=Composite(
                    observation=Unbounded((*group, 4), device=device), shape=group, device=device
                ),
                **{MODE_KEY: Unbounded((*shape, 1), device=device)},
                shape=shape,
                device=device,
            )
            self.action_spec = Composite(
                agents=Composite(
                    action=Bounded(-1.0, 1.0, (*group, 2), device=device),
                    shape=group,
                    device=device,
                ),
                shape=shape,
                device=device,
            )
            self.reward_spec = Composite(
                agents=Composite(
                    reward=Unbounded((*group, 1), device=device), shape=group, device=device
                ),
                shape=shape,
                device=device,
            )
        else:
            self.observation_spec = Composite(
                observation=Unbounded((*shape, 4), device=device),
                **{MODE_KEY: Unbounded((*shape, 1), device=device)},
                shape=shape,
                device=device,
            )
            self.action_spec = Bounded(-1.0, 1.0, (*shape, 2 * n), device=device)
            self.reward_spec = Unbounded((*shape, 1), device=device)
        self.state_spec = Composite(shape=shape, device=device)
        self.done_spec = done_spec(shape, device)
        self._box = torch.zeros(num_envs, 2, device=device)
        self._goal = torch.zeros(num_envs, 2, device=device)
        self._mode = torch.ones(num_envs, 1, device=device)
        self._steps = torch.zeros(num_envs, dtype=torch.long, device=device)

    # ------------------------------------------------------------------ dynamics
    def set_mode(self, mode: int | str | None) -> None:
        """Set the partner's mode for the following episodes: ``+1``/``"left"``, ``-1``/``"right"`` or ``None``.

        Takes effect at the next reset of each environment (the mode is constant within an episode); ``None``
        draws it uniformly from :data:`PARTNER_MODES` for every episode.

        Args:
            mode: the mode, or ``None``.

        Examples:
            >>> env = PartnerModesEnv(num_envs=2, seed=0)
            >>> env.set_mode("right")
            >>> env.mode
            -1
        """
        self.mode: int | None = None if mode is None else _check_mode(mode)

    def rotation(self, mode: torch.Tensor) -> torch.Tensor:
        """The partner's turn ``R(mode * turn)`` for modes ``[..., 1]``, as matrices ``[..., 2, 2]``.

        Args:
            mode: the modes, ``+1.0`` or ``-1.0``.

        Returns:
            Rotation matrices acting on column vectors.

        Examples:
            >>> (PartnerModesEnv(turn=90.0).rotation(torch.tensor([[1.0]])).round() + 0.0).tolist()  # a quarter turn left
            [[[0.0, -1.0], [1.0, 0.0]]]
        """
        phi = mode[..., 0] * math.radians(self.turn)
        c, s = torch.cos(phi), torch.sin(phi)
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)

    def displacement(self, actions: torch.Tensor, mode: torch.Tensor) -> torch.Tensor:
        """The box's displacement ``speed * R(mode * turn) * mean_i a_i`` (the dynamics of the module's text).

        Args:
            actions: per-agent actions ``[..., n_agents, 2]`` (clipped to ``[-1, 1]``).
            mode: the partner's modes ``[..., 1]``.

        Returns:
            Displacements ``[..., 2]``.

        Examples:
            >>> env = PartnerModesEnv()
            >>> a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # both agents push east
            >>> [[round(x, 4) + 0.0 for x in env.displacement(a, torch.tensor([m])).tolist()] for m in (1.0, -1.0)]
            [[0.0, 0.15], [0.0, -0.15]]
        """
        push = actions.clamp(-1.0, 1.0).mean(-2)
        return (self.rotation(mode) @ push.unsqueeze(-1)).squeeze(-1) * self.speed

    def _draw_mode(self, n: int) -> torch.Tensor:
        if self.mode is None:
            heads = torch.rand(n, 1, generator=self._rng, device=self.device) < 0.5
            return torch.where(heads, 1.0, -1.0).to(torch.float32)
        return torch.full((n, 1), float(self.mode), device=self.device)

    def _uniform(self, n: int) -> torch.Tensor:
        return (torch.rand(n, 2, generator=self._rng, device=self.device) * 2 - 1) * self.arena

    def _state(self) -> torch.Tensor:
        return torch.cat([self._box, self._goal - self._box], dim=-1)

    def _out(self, reward: torch.Tensor | None, done: dict[str, torch.Tensor]) -> TensorDict:
        state = self._state()
        out: dict[str, Any] = {MODE_KEY: self._mode.clone(), **done}
        if self.layout == "agents":
            group: dict[str, torch.Tensor] = {
                "observation": state.unsqueeze(-2).expand(-1, self.n_agents, -1).clone()
            }
            if reward is not None:
                group["reward"] = reward.unsqueeze(-2).expand(-1, self.n_agents, -1).clone()
            out["agents"] = TensorDict(
                group, batch_size=(self.num_envs, self.n_agents), device=self.device
            )
        else:
            out["observation"] = state
            if reward is not None:
                out["reward"] = reward
        return TensorDict(out, batch_size=self.batch_size, device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        idx = reset_indices(tensordict, self.num_envs, self.device)
        n = idx.numel()
        if n:
            box, goal = start_and_target(self._uniform, n, 2 * self.reach_radius)
            self._box[idx] = box
            self._goal[idx] = goal
            self._mode[idx] = self._draw_mode(n)
            self._steps[idx] = 0
        false = torch.zeros(self.num_envs, 1, dtype=torch.bool, device=self.device)
        return self._out(
            None, {"done": false, "terminated": false.clone(), "truncated": false.clone()}
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.layout == "agents":
            actions = tensordict.get(("agents", "action"))
        else:
            actions = tensordict.get("action").reshape(self.num_envs, self.n_agents, 2)
        before = (self._goal - self._box).norm(dim=-1, keepdim=True)
        self._box = self._box + self.displacement(actions, self._mode)
        after = (self._goal - self._box).norm(dim=-1, keepdim=True)
        self._steps = self._steps + 1
        reached = after < self.reach_radius
        truncated = (self._steps >= self.max_steps).unsqueeze(-1) & ~reached
        reward = self.progress_weight * (before - after) + self.reward_value * reached.float()
        return self._out(
            reward, {"done": reached | truncated, "terminated": reached, "truncated": truncated}
        )

    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            self._rng.seed()
        else:
            self._rng.manual_seed(int(seed))

    # ------------------------------------------------------------------ helpers
    def expert_action(self, tensordict: TensorDictBase, mode: float | None = None) -> torch.Tensor:
        """The scripted team that knows the partner's mode: every agent pushes the goal direction turned back.

        Every agent pushes ``R(-m * turn) (g - b) / speed``, scaled into ``[-1, 1]^2``, so the box moves straight
        to the goal. Reads ``partner_mode`` (or takes ``mode``), which a learned policy does not see; with the
        wrong mode it shows what acting on the other mode's dynamics costs.

        Args:
            tensordict: a tensordict with ``"observation"`` (joint layout) or ``("agents", "observation")``, and
                ``"partner_mode"``.
            mode: the mode to assume instead of the tensordict's. Defaults to ``None`` (the tensordict's).

        Returns:
            The actions in the env's layout: joint ``[B, 2 * n_agents]`` or per agent ``[B, n_agents, 2]``.

        Examples:
            >>> env = PartnerModesEnv(num_envs=16, layout="joint", seed=0)
            >>> policy = lambda td: td.set("action", env.expert_action(td))
            >>> td = env.rollout(50, policy=policy, break_when_any_done=False)
            >>> bool(td["next", "terminated"].any(-2).all())  # every env reached its goal
            True
        """
        if self.layout == "agents":
            state = tensordict.get(("agents", "observation"))[..., 0, :]
        else:
            state = tensordict.get("observation")
        m = tensordict.get(MODE_KEY) if mode is None else torch.full_like(state[..., :1], mode)
        back = self.rotation(-m)
        push = (back @ state[..., 2:4].unsqueeze(-1)).squeeze(-1) / self.speed
        push = push / push.abs().amax(-1, keepdim=True).clamp_min(1.0)
        actions = push.unsqueeze(-2).expand(*push.shape[:-1], self.n_agents, 2)
        return actions.clone() if self.layout == "agents" else actions.reshape(*push.shape[:-1], -1)
