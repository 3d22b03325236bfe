"""MPE tasks of the paper (sections 4.4, 4.7 and the appendix): Cooperative Navigation and Predator-Prey.

The paper's definitions (appendix, "Experiment Settings"), which VMAS's and mpe2's built-in ``simple_spread`` /
``simple_tag`` do not follow (they use forces, collision penalties, obstacles and a learning prey), so both
backends here run our own scenarios:

* Actions are velocities in ``[-0.1, 0.1]^2``: an agent at ``p`` moves to ``p + a`` (no inertia, no collisions).
* **Cooperative Navigation**: N agents, N landmarks (N from 3 to 6). Shared reward
  ``-sum_j min_i ||landmark_j - agent_i||``, computed on the positions after the move.
* **Predator-Prey**: 3 predators chase a faster rule-based prey. A predator's action box ``[-0.1, 0.1]^2`` gives it
  a top speed of ``0.1 * sqrt(2)`` (diagonally); the prey's speed is 1.3 times that (MPE's prey/predator top-speed
  ratio), :data:`PREY_SPEED` = 0.184 per step, so it is faster in every direction. The prey moves at full speed
  straight away from its nearest predator. Shared reward: +1 for each predator within 0.1 of the prey after the
  move. Predators and prey stay in the arena ``[-1, 1]^2`` (positions are clipped), otherwise a faster prey could
  never be caught.
* Start positions are uniform in ``[-1, 1]^2``; episodes last 25 steps and end by truncation (MPE's horizon), never
  by termination.
* **Discrete actions** (``discrete=True``; tasks ``mpe/navigation-N-discrete``, ``mpe/predator-prey-discrete``): the
  5 actions of MPE's native discrete space, in mpe2's order: no-op, left, right, down, up, i.e. the velocities
  :data:`DISCRETE_VELOCITIES` (``0`` or ``±0.1`` along one axis). Actions are one-hot (TorchRL ``OneHot``, shape
  ``[..., n_agents, 5]``); rewards and observations are those of the continuous tasks. The PettingZoo backend uses
  mpe2's ``Discrete(5)`` space; the VMAS backend VMAS's discrete mode (one action dimension of 5 values, decoded to
  the same velocities by :func:`vmas_discrete_index`). The joint view (:class:`OneHotJointEnv`) concatenates the
  agents' one-hot blocks: agent ``i``'s are the columns ``5i .. 5i + 4``.

Every agent observes the global state (as the paper's agents do): navigation ``[agent positions, landmark
positions]`` (``4N`` numbers), predator-prey ``[predator positions, prey position]`` (8 numbers). With
``local_obs=True`` each agent also gets an agent-centred observation under ``("agents", "local_observation")``:
``[own position, landmarks (or prey) relative to it, other agents relative to it]`` (same size as the state).

Two backends share the same arithmetic (:func:`navigation_reward`, :func:`predator_prey_reward`,
:func:`prey_velocity`):

* :func:`make_vmas_env`: VMAS, vectorised over ``num_envs`` environments on CPU or GPU (TorchRL's ``VmasEnv``,
  with a ``StepCounter`` for the truncation).
* :func:`make_pettingzoo_env`: a PettingZoo (mpe2) ``ParallelEnv`` wrapped by TorchRL's ``PettingZooWrapper``,
  for users of that API; one environment per instance.

Both give TorchRL's multi-agent layout: ``("agents", "observation")``, ``("agents", "action")``,
``("agents", "reward")`` (the shared reward, repeated per agent) and root ``done``/``terminated``/``truncated``.
``vmas`` and ``mpe2`` are imported only when an environment is built.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torchrl.data import MultiOneHot, OneHot, TensorSpec
from torchrl.envs import (
    Compose,
    PettingZooWrapper,
    RenameTransform,
    StepCounter,
    TransformedEnv,
    VmasEnv,
)

from torchrl_otc.envs.joint import JointEnv

__all__ = [
    "MPE_TASKS",
    "navigation_reward",
    "predator_prey_reward",
    "prey_velocity",
    "make_vmas_env",
    "make_pettingzoo_env",
    "ACTION_BOUND",
    "PREY_SPEED",
    "N_DISCRETE_ACTIONS",
    "DISCRETE_VELOCITIES",
    "discrete_velocity",
    "vmas_discrete_index",
    "OneHotJointEnv",
]

#: Bound of the velocity actions (appendix, "the action space of agents is [-0.1, 0.1]").
ACTION_BOUND = 0.1
#: Speed of the rule-based prey per step, 1.3 times the predators' top speed ``0.1 * sqrt(2)`` (MPE's ratio).
PREY_SPEED = 1.3 * ACTION_BOUND * 2**0.5
#: The two MPE scenarios implemented here.
MPE_TASKS = ("navigation", "predator_prey")
#: Number of discrete actions: no-op, left, right, down, up (MPE's native discrete space, mpe2's order).
N_DISCRETE_ACTIONS = 5
#: The velocity of each discrete action, ``[5, 2]``: no-op, left (-x), right (+x), down (-y), up (+y), of size
#: :data:`ACTION_BOUND` (mpe2 maps the same indices to the same unit directions).
DISCRETE_VELOCITIES = ACTION_BOUND * torch.tensor(
    [[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]]
)
_ARENA = 1.0
_CATCH_RADIUS = 0.1
_N_PREDATORS = 3


# ---------------------------------------------------------------------------------------------------- shared math
def navigation_reward(agent_pos: torch.Tensor, landmark_pos: torch.Tensor) -> torch.Tensor:
    """Cooperative Navigation reward: ``-sum_j min_i ||landmark_j - agent_i||`` (paper appendix, section 6).

    Args:
        agent_pos: agent positions, shape ``[..., N, 2]``.
        landmark_pos: landmark positions, shape ``[..., M, 2]``.

    Returns:
        The shared reward, shape ``[...]``.

    Examples:
        >>> agents = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
        >>> landmarks = torch.tensor([[0.0, 0.5], [3.0, 0.0]])   # closest agents: 0 (0.5) and 1 (2.0)
        >>> navigation_reward(agents, landmarks)
        tensor(-2.5000)
    """
    dist = (landmark_pos.unsqueeze(-2) - agent_pos.unsqueeze(-3)).norm(dim=-1)  # [..., M, N]
    return -dist.amin(dim=-1).sum(dim=-1)


def predator_prey_reward(
    predator_pos: torch.Tensor, prey_pos: torch.Tensor, catch_radius: float = _CATCH_RADIUS
) -> torch.Tensor:
    """Predator-Prey reward: +1 for each predator within ``catch_radius`` (0.1) of the prey (appendix, section 6).

    Args:
        predator_pos: predator positions, shape ``[..., P, 2]``.
        prey_pos: prey position, shape ``[..., 2]``.
        catch_radius: distance below which a predator touches the prey. Defaults to 0.1.

    Returns:
        The shared reward (a count, as float), shape ``[...]``.

    Examples:
        >>> predators = torch.tensor([[0.05, 0.0], [0.0, 0.099], [0.5, 0.5]])
        >>> predator_prey_reward(predators, torch.zeros(2))
        tensor(2.)
    """
    dist = (predator_pos - prey_pos.unsqueeze(-2)).norm(dim=-1)
    return (dist < catch_radius).sum(dim=-1).to(torch.float32)


def prey_velocity(predator_pos: torch.Tensor, prey_pos: torch.Tensor, speed: float) -> torch.Tensor:
    """The rule-based prey of Predator-Prey (appendix, section 6): full speed straight away from its nearest predator.

    Args:
        predator_pos: predator positions, shape ``[..., P, 2]``.
        prey_pos: prey position, shape ``[..., 2]``.
        speed: the prey's speed per step.

    Returns:
        The prey's velocity (its displacement this step), shape ``[..., 2]``; zero if a predator sits exactly
        on the prey.

    Examples:
        >>> prey_velocity(torch.tensor([[0.0, -1.0], [3.0, 3.0]]), torch.zeros(2), 0.13)
        tensor([0.0000, 0.1300])
    """
    away = prey_pos.unsqueeze(-2) - predator_pos  # [..., P, 2]
    dist = away.norm(dim=-1, keepdim=True)
    nearest = dist.argmin(dim=-2, keepdim=True)  # [..., 1, 1]
    direction = away.gather(-2, nearest.expand(*nearest.shape[:-1], 2)).squeeze(-2)
    norm = direction.norm(dim=-1, keepdim=True)
    unit = torch.where(norm > 1e-8, direction / norm.clamp_min(1e-8), torch.zeros_like(direction))
    return unit * speed


def discrete_velocity(action: torch.Tensor) -> torch.Tensor:
    """The velocity of discrete MPE actions (section 4.4 tasks with MPE's native 5 actions).

    Args:
        action: action indices in ``0..4`` (no-op, left, right, down, up), any shape ``[...]``.

    Returns:
        Velocities, shape ``[..., 2]``, in :data:`DISCRETE_VELOCITIES`.

    Examples:
        >>> discrete_velocity(torch.tensor([0, 1, 2, 3, 4]))
        tensor([[ 0.0000,  0.0000],
                [-0.1000,  0.0000],
                [ 0.1000,  0.0000],
                [ 0.0000, -0.1000],
                [ 0.0000,  0.1000]])
    """
    return DISCRETE_VELOCITIES.to(action.device)[action.long()]


# VMAS maps action k of one 5-valued dimension to u = (p / 4) * 2 * u_range - u_range with p = (2, 0, 1, 3, 4)[k]
# (it puts k = 0 in the middle, at u = 0): u / u_range * 2 + 2 = p, and k = (1, 2, 0, 3, 4)[p].
_VMAS_P_TO_INDEX = torch.tensor([1, 2, 0, 3, 4])


def vmas_discrete_index(u: torch.Tensor, u_range: float = ACTION_BOUND) -> torch.Tensor:
    """Recover the discrete action index (0..4) from the value VMAS's discrete mode puts in ``agent.action.u``.

    VMAS turns the index ``k`` of a 5-valued action dimension into ``u`` in ``{0, -r, -r/2, r/2, r}`` for
    ``k = 0..4`` (``r = u_range``); this inverts that map (section 4.4 tasks, discrete actions).

    Args:
        u: VMAS's processed actions, shape ``[...]`` or ``[..., 1]`` (the trailing 1 is dropped).
        u_range: the agent's ``u_range``. Defaults to :data:`ACTION_BOUND`.

    Returns:
        Action indices (``torch.long``), shape ``[...]``.

    Examples:
        >>> vmas_discrete_index(torch.tensor([[0.0], [-0.1], [-0.05], [0.05], [0.1]]))
        tensor([0, 1, 2, 3, 4])
    """
    if u.dim() and u.shape[-1] == 1:
        u = u.squeeze(-1)
    p = torch.round(u / u_range * 2 + 2).long().clamp(0, 4)
    return _VMAS_P_TO_INDEX.to(u.device)[p]


def _global_state(agent_pos: torch.Tensor, target_pos: torch.Tensor) -> torch.Tensor:
    """``[agent positions, targets]`` flattened: ``[B, N, 2] + [B, M, 2] -> [B, 2N + 2M]``."""
    return torch.cat([agent_pos.flatten(-2), target_pos.flatten(-2)], dim=-1)


def _local_observation(agent_pos: torch.Tensor, target_pos: torch.Tensor, i: int) -> torch.Tensor:
    """Agent ``i``'s centred view: ``[own pos, targets - own, other agents - own]``."""
    own = agent_pos[..., i, :]
    others = torch.cat([agent_pos[..., :i, :], agent_pos[..., i + 1 :, :]], dim=-2)
    return torch.cat(
        [
            own,
            (target_pos - own.unsqueeze(-2)).flatten(-2),
            (others - own.unsqueeze(-2)).flatten(-2),
        ],
        dim=-1,
    )


def _check_task(task: str, n_agents: int) -> int:
    if task not in MPE_TASKS:
        raise ValueError(f"Unknown MPE task {task!r}; valid tasks: {', '.join(MPE_TASKS)}.")
    if task == "predator_prey":
        if n_agents not in (None, _N_PREDATORS):
            raise ValueError(
                f"predator_prey has {_N_PREDATORS} predators; got n_agents={n_agents}."
            )
        return _N_PREDATORS
    if not 1 <= n_agents <= 16:
        raise ValueError(
            f"navigation needs 1 <= n_agents <= 16 (the paper uses 3 to 6); got {n_agents}."
        )
    return n_agents


# ---------------------------------------------------------------------------------------------------- VMAS
@functools.cache
def _vmas_scenarios() -> dict[str, type]:
    """Define the VMAS scenario classes (needs ``vmas``; defined on first use so the import stays optional)."""
    # optional dependency: vmas (the envs extra)
    from vmas.simulator.core import Agent, Landmark, Sphere, World
    from vmas.simulator.dynamics.static import Static
    from vmas.simulator.scenario import BaseScenario
    from vmas.simulator.utils import Color, ScenarioUtils

    class _KinematicScenario(BaseScenario):
        """Agents move by their velocity action; nothing collides; positions are set in ``pre_step``."""

        targets_name = "landmark"

        def _make(
            self, batch_dim: int, device: torch.device, n_agents: int, n_targets: int, **kwargs
        ) -> World:
            self.local_obs = bool(kwargs.pop("local_obs", False))
            self.prey_speed = float(kwargs.pop("prey_speed", PREY_SPEED))
            self.discrete = bool(kwargs.pop("discrete", False))
            ScenarioUtils.check_kwargs_consumed(kwargs)
            world = World(batch_dim, device, dim_c=0)
            # Discrete: one action dimension of 5 values, decoded to MPE's 5 velocities in ``_velocity``.
            action = (
                {"action_size": 1, "discrete_action_nvec": [N_DISCRETE_ACTIONS]}
                if self.discrete
                else {"action_size": 2}
            )
            for i in range(n_agents):
                world.add_agent(
                    Agent(
                        name=f"agent_{i}",
                        shape=Sphere(radius=0.05),
                        movable=False,
                        rotatable=False,
                        collide=False,
                        dynamics=Static(),
                        u_range=ACTION_BOUND,
                        color=Color.BLUE,
                        **action,
                    )
                )
            for j in range(n_targets):
                world.add_landmark(
                    Landmark(
                        name=f"{self.targets_name}_{j}",
                        shape=Sphere(radius=0.05),
                        movable=False,
                        collide=False,
                        color=Color.RED if self.targets_name == "prey" else Color.BLACK,
                    )
                )
            self._reward_cache: torch.Tensor | None = None
            return world

        def reset_world_at(self, env_index: int | None = None) -> None:
            n = self.world.batch_dim if env_index is None else 1
            for entity in self.world.agents + self.world.landmarks:
                pos = torch.empty(n, 2, device=self.world.device).uniform_(-_ARENA, _ARENA)
                entity.set_pos(pos if env_index is None else pos[0], batch_index=env_index)

        def _velocity(self, agent: Agent) -> torch.Tensor:
            if self.discrete:
                return discrete_velocity(vmas_discrete_index(agent.action.u, ACTION_BOUND))
            return agent.action.u

        def _agent_pos(self) -> torch.Tensor:
            return torch.stack([a.state.pos for a in self.world.agents], dim=1)

        def _target_pos(self) -> torch.Tensor:
            return torch.stack([lm.state.pos for lm in self.world.landmarks], dim=1)

        def observation(self, agent: Agent) -> torch.Tensor:
            return _global_state(self._agent_pos(), self._target_pos())

        def info(self, agent: Agent) -> dict[str, torch.Tensor]:
            if not self.local_obs:
                return {}
            i = self.world.agents.index(agent)
            return {
                "local_observation": _local_observation(self._agent_pos(), self._target_pos(), i)
            }

        def reward(self, agent: Agent) -> torch.Tensor:
            if agent is self.world.agents[0] or self._reward_cache is None:
                self._reward_cache = self._shared_reward()
            return self._reward_cache

    class NavigationScenario(_KinematicScenario):
        """Cooperative Navigation with velocity actions (see the module docstring)."""

        def make_world(self, batch_dim: int, device: torch.device, **kwargs) -> World:
            n = int(kwargs.pop("n_agents", 3))
            return self._make(batch_dim, device, n, n, **kwargs)

        def pre_step(self) -> None:
            for agent in self.world.agents:
                agent.state.pos = agent.state.pos + self._velocity(agent)

        def _shared_reward(self) -> torch.Tensor:
            return navigation_reward(self._agent_pos(), self._target_pos())

    class PredatorPreyScenario(_KinematicScenario):
        """Predator-Prey with velocity actions and a rule-based prey (see the module docstring)."""

        targets_name = "prey"

        def make_world(self, batch_dim: int, device: torch.device, **kwargs) -> World:
            kwargs.pop("n_agents", None)
            return self._make(batch_dim, device, _N_PREDATORS, 1, **kwargs)

        def pre_step(self) -> None:
            predators = self._agent_pos()
            prey = self.world.landmarks[0]
            velocity = prey_velocity(predators, prey.state.pos, self.prey_speed)
            for agent in self.world.agents:
                agent.state.pos = (agent.state.pos + self._velocity(agent)).clamp(-_ARENA, _ARENA)
            prey.state.pos = (prey.state.pos + velocity).clamp(-_ARENA, _ARENA)

        def _shared_reward(self) -> torch.Tensor:
            return predator_prey_reward(self._agent_pos(), self.world.landmarks[0].state.pos)

    return {"navigation": NavigationScenario, "predator_prey": PredatorPreyScenario}


def make_vmas_env(
    task: str = "navigation",
    n_agents: int = 3,
    *,
    num_envs: int = 1,
    device: torch.device | str = "cpu",
    max_steps: int = 25,
    local_obs: bool = False,
    prey_speed: float = PREY_SPEED,
    discrete: bool = False,
    seed: int | None = None,
):
    """An MPE task of the paper on VMAS, vectorised over ``num_envs`` environments (sections 4.4, 4.7; appendix).

    Args:
        task: ``"navigation"`` (Cooperative Navigation) or ``"predator_prey"``.
        n_agents: number of agents (and landmarks) for navigation; predator-prey always has 3.

    Keyword Args:
        num_envs: environments simulated at once. Defaults to 1.
        device: torch device of the simulation. Defaults to CPU.
        max_steps: episode length; episodes end by truncation. Defaults to 25 (MPE).
        local_obs: also write agent-centred observations under ``("agents", "local_observation")``.
        prey_speed: speed of the prey per step (predator-prey). Defaults to :data:`PREY_SPEED` (0.184).
        discrete: MPE's 5 discrete actions (no-op, left, right, down, up; one-hot ``("agents", "action")`` of
            shape ``[num_envs, n_agents, 5]``) through VMAS's discrete mode, instead of velocities.
        seed: seed of the simulator.

    Returns:
        A TorchRL ``TransformedEnv`` around ``VmasEnv`` with batch size ``[num_envs]``.

    Examples:
        >>> env = make_vmas_env("navigation", 3, num_envs=4, seed=0)  # doctest: +SKIP
        >>> env.rollout(25)["next", "agents", "reward"].shape  # doctest: +SKIP
        torch.Size([4, 25, 3, 1])
    """
    n_agents = _check_task(task, n_agents)
    scenario = _vmas_scenarios()[task]()
    kwargs: dict[str, Any] = {"local_obs": local_obs, "discrete": discrete}
    if task == "navigation":
        kwargs["n_agents"] = n_agents
    else:
        kwargs["prey_speed"] = prey_speed
    base = VmasEnv(
        scenario=scenario,
        num_envs=num_envs,
        device=device,
        continuous_actions=not discrete,
        categorical_actions=False,
        max_steps=None,
        seed=seed,
        clamp_actions=True,
        **kwargs,
    )
    transforms: list = [StepCounter(max_steps=max_steps)]
    if local_obs:
        transforms.append(
            RenameTransform(
                in_keys=[("agents", "info", "local_observation")],
                out_keys=[("agents", "local_observation")],
            )
        )
    env = TransformedEnv(base, Compose(*transforms))
    return env


# ---------------------------------------------------------------------------------------------------- PettingZoo
@functools.cache
def _pettingzoo_classes() -> dict[str, type]:
    """Define the mpe2-based PettingZoo classes (needs ``mpe2``; defined on first use)."""
    # optional dependencies: gymnasium and mpe2 (the envs extra)
    from gymnasium import spaces
    from mpe2._mpe_utils.core import Agent, Landmark, World
    from mpe2._mpe_utils.scenario import BaseScenario
    from mpe2._mpe_utils.simple_env import SimpleEnv

    def _t(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32)

    class _KinematicWorld(World):
        """mpe2 world whose step moves entities by their velocity actions (and the prey by its rule)."""

        predator_prey = False
        prey_speed = PREY_SPEED

        def step(self) -> None:
            agent_pos = np.stack([a.state.p_pos for a in self.agents])
            actions = np.stack(
                [np.clip(a.action.u, -ACTION_BOUND, ACTION_BOUND) for a in self.agents]
            )
            new_pos = agent_pos + actions
            if self.predator_prey:
                prey = self.landmarks[0]
                v = prey_velocity(_t(agent_pos), _t(prey.state.p_pos), self.prey_speed).numpy()
                new_pos = np.clip(new_pos, -_ARENA, _ARENA)
                prey.state.p_pos = np.clip(prey.state.p_pos + v.astype(np.float64), -_ARENA, _ARENA)
            for agent, pos in zip(self.agents, new_pos):
                agent.state.p_pos = pos
                agent.state.p_vel = np.zeros(self.dim_p)

    class _Scenario(BaseScenario):
        def __init__(self, task: str, n_agents: int, local_obs: bool, prey_speed: float) -> None:
            self.task = task
            self.n_agents = n_agents
            self.local_obs = local_obs
            self.prey_speed = prey_speed

        def make_world(self) -> World:
            world = _KinematicWorld()
            world.dim_c = 0
            world.predator_prey = self.task == "predator_prey"
            world.prey_speed = self.prey_speed
            for i in range(self.n_agents):
                agent = Agent()
                agent.name = f"agent_{i}"
                agent.collide = False
                agent.silent = True
                agent.size = 0.05
                agent.color = np.array([0.35, 0.35, 0.85])
                world.agents.append(agent)
            n_targets = 1 if world.predator_prey else self.n_agents
            for j in range(n_targets):
                landmark = Landmark()
                landmark.name = f"prey_{j}" if world.predator_prey else f"landmark_{j}"
                landmark.collide = False
                landmark.movable = False
                landmark.size = 0.05
                landmark.color = np.array([0.85, 0.35, 0.35])
                world.landmarks.append(landmark)
            return world

        def reset_world(self, world: World, np_random: Any) -> None:
            for entity in world.agents + world.landmarks:
                entity.state.p_pos = np_random.uniform(-_ARENA, _ARENA, world.dim_p)
                entity.state.p_vel = np.zeros(world.dim_p)
            for agent in world.agents:
                agent.state.c = np.zeros(world.dim_c)

        def _positions(self, world: World) -> tuple[torch.Tensor, torch.Tensor]:
            agents = _t(np.stack([a.state.p_pos for a in world.agents]))
            targets = _t(np.stack([lm.state.p_pos for lm in world.landmarks]))
            return agents, targets

        def reward(self, agent: Agent, world: World) -> float:
            agents, targets = self._positions(world)
            if world.predator_prey:
                return float(predator_prey_reward(agents, targets[0]))
            return float(navigation_reward(agents, targets))

        def observation(self, agent: Agent, world: World) -> np.ndarray:
            agents, targets = self._positions(world)
            return _global_state(agents, targets).numpy()

        def local_observation(self, agent: Agent, world: World) -> np.ndarray:
            agents, targets = self._positions(world)
            i = world.agents.index(agent)
            return _local_observation(agents, targets, i).numpy().astype(np.float32)

    class KinematicMPEEnv(SimpleEnv):
        """An AEC mpe2 environment running the paper's MPE task (velocity actions, see :mod:`.mpe`)."""

        def __init__(
            self,
            task: str = "navigation",
            n_agents: int = 3,
            max_cycles: int = 25,
            local_obs: bool = False,
            prey_speed: float = PREY_SPEED,
            discrete: bool = False,
            render_mode: str | None = None,
        ) -> None:
            scenario = _Scenario(task, n_agents, local_obs, prey_speed)
            world = scenario.make_world()
            super().__init__(
                scenario=scenario,
                world=world,
                render_mode=render_mode,
                max_cycles=max_cycles,
                continuous_actions=not discrete,
                local_ratio=None,
            )
            self.metadata["name"] = f"otc_{task}" + ("_discrete" if discrete else "")
            # Discrete: mpe2's own Discrete(5) space (no-op, left, right, down, up) is kept.
            if not discrete:
                for agent in self.world.agents:
                    self.action_spaces[agent.name] = spaces.Box(
                        low=-ACTION_BOUND, high=ACTION_BOUND, shape=(2,), dtype=np.float32
                    )
            agents, targets = scenario._positions(world)
            self.state_space = spaces.Box(
                low=-np.inf,
                high=np.inf,
                shape=(int(_global_state(agents, targets).numel()),),
                dtype=np.float32,
            )

        def _populate_benchmark_data(self) -> None:
            # The local observations travel in the infos (TorchRL: ("agents", "info", "local_observation")).
            if self.scenario.local_obs:
                for agent in self.world.agents:
                    self.infos[agent.name] = {
                        "local_observation": self.scenario.local_observation(agent, self.world)
                    }

        def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
            super().reset(seed=seed, options=options)
            self._populate_benchmark_data()

        def _set_action(
            self, action: Any, agent: Agent, action_space: Any, time: Any = None
        ) -> None:
            if self.continuous_actions:
                agent.action.u = np.asarray(action[0], dtype=np.float64)[:2]
            else:  # mpe2's discrete index, to the velocity of the same direction
                index = torch.as_tensor(int(np.asarray(action[0]).reshape(-1)[0]))
                agent.action.u = discrete_velocity(index).double().numpy()
            agent.action.c = np.zeros(self.world.dim_c)

        def state(self) -> np.ndarray:
            agents, targets = self.scenario._positions(self.world)
            return _global_state(agents, targets).numpy().astype(np.float32)

    return {"KinematicMPEEnv": KinematicMPEEnv}


def make_pettingzoo_env(
    task: str = "navigation",
    n_agents: int = 3,
    *,
    max_steps: int = 25,
    local_obs: bool = False,
    prey_speed: float = PREY_SPEED,
    discrete: bool = False,
    seed: int | None = None,
    return_parallel_env: bool = False,
):
    """The same MPE task (sections 4.4, 4.7, appendix) through PettingZoo (mpe2), wrapped by TorchRL's ``PettingZooWrapper``.

    The arithmetic is shared with :func:`make_vmas_env`, so the two backends give the same rewards and
    observations for the same positions and actions. ``("agents", "observation")`` holds the global state;
    ``local_obs=True`` adds ``("agents", "local_observation")``.

    Args:
        task: ``"navigation"`` or ``"predator_prey"``.
        n_agents: number of agents (and landmarks) for navigation; predator-prey always has 3.

    Keyword Args:
        max_steps: episode length (mpe2's ``max_cycles``); episodes end by truncation. Defaults to 25.
        local_obs: also write agent-centred observations under ``("agents", "local_observation")``.
        prey_speed: speed of the prey per step (predator-prey). Defaults to :data:`PREY_SPEED` (0.184).
        discrete: mpe2's native ``Discrete(5)`` actions (no-op, left, right, down, up), one-hot in TorchRL
            (``("agents", "action")`` of shape ``[n_agents, 5]``), instead of velocities.
        seed: seed of the first reset.
        return_parallel_env: return the raw PettingZoo ``ParallelEnv`` instead of the TorchRL wrapper.

    Returns:
        A TorchRL ``PettingZooWrapper`` (batch size ``[]``), or the PettingZoo parallel env.

    Examples:
        >>> env = make_pettingzoo_env("predator_prey", seed=0)  # doctest: +SKIP
        >>> env.rollout(25)["next", "agents", "reward"].shape  # doctest: +SKIP
        torch.Size([25, 3, 1])
    """
    n_agents = _check_task(task, n_agents)
    # optional dependency: pettingzoo (the envs extra)
    from pettingzoo.utils.conversions import aec_to_parallel
    from pettingzoo.utils.wrappers import (
        AssertOutOfBoundsWrapper,
        ClipOutOfBoundsWrapper,
        OrderEnforcingWrapper,
    )

    cls = _pettingzoo_classes()["KinematicMPEEnv"]
    bounds = AssertOutOfBoundsWrapper if discrete else ClipOutOfBoundsWrapper
    aec = OrderEnforcingWrapper(
        bounds(
            cls(
                task=task,
                n_agents=n_agents,
                max_cycles=max_steps,
                local_obs=local_obs,
                prey_speed=prey_speed,
                discrete=discrete,
            )
        )
    )
    parallel = aec_to_parallel(aec)
    if return_parallel_env:
        return parallel
    env = PettingZooWrapper(
        parallel,
        group_map={"agents": list(parallel.possible_agents)},
        categorical_actions=False,
        seed=seed,
    )
    if local_obs:
        env = TransformedEnv(
            env,
            RenameTransform(
                in_keys=[("agents", "info", "local_observation")],
                out_keys=[("agents", "local_observation")],
            ),
        )
    return env


# ---------------------------------------------------------------------------------------------------- joint view
class OneHotJointEnv(JointEnv):
    """The joint view (:class:`~torchrl_otc.envs.JointEnv`) of a multi-agent env with one-hot per-agent actions.

    Used by the discrete MPE tasks (section 4.4 with MPE's 5 discrete actions). As in :class:`JointEnv`,
    ``observation`` is the global state and ``reward`` the shared reward; the joint ``action`` concatenates the
    agents' one-hot blocks (TorchRL ``MultiOneHot``), agent ``i``'s block at the columns ``action_partition[i]``,
    which must be ``n`` consecutive columns starting at a multiple of ``n`` (``n`` actions per agent), in order, the
    blocks together covering every column once.
    Everything else (stepping, resets, local observations) is :class:`JointEnv`'s.

    Args:
        env: a multi-agent TorchRL env with a group ``"agents"`` whose members all observe the global state, and
            a ``OneHot`` ``(group, "action")`` spec of shape ``[..., n_agents, n]``.
        action_partition: the joint action columns of each agent, e.g. ``((0, .., 4), (5, .., 9), ...)``.

    Keyword Args:
        group: name of the agents' group. Defaults to ``"agents"``.

    Examples:
        >>> env = OneHotJointEnv(make_vmas_env("navigation", 3, num_envs=2, seed=0, discrete=True),
        ...                      [range(0, 5), range(5, 10), range(10, 15)])  # doctest: +SKIP
        >>> td = env.rollout(3)  # doctest: +SKIP
        >>> td["action"].shape, td["action"].sum(-1).unique().tolist()  # doctest: +SKIP
        (torch.Size([2, 3, 15]), [3])
    """

    def _joint_action_spec(self, act_spec: TensorSpec, shape: torch.Size) -> TensorSpec:
        """The agents' one-hot blocks side by side (``MultiOneHot``), after checking the partition's blocks."""
        if not isinstance(act_spec, OneHot):
            raise TypeError(
                f"OneHotJointEnv needs a OneHot action spec at {(self.group, 'action')}; got "
                f"{type(act_spec).__name__}. Use JointEnv for bounded (continuous) actions."
            )
        n = int(act_spec.space.n)
        columns = sorted(c for p in self.action_partition for c in p)
        for p in self.action_partition:
            if (
                len(p) != n
                or p[0] % n
                or p != tuple(range(p[0], p[0] + n))
                or columns != list(range(n * self.n_agents))
            ):
                raise ValueError(
                    f"Each agent's one-hot block must be {n} consecutive columns starting at a multiple of {n}, "
                    f"and the blocks must cover the {n * self.n_agents} joint columns once; got "
                    f"{self.action_partition}."
                )
        return MultiOneHot(
            [n] * self.n_agents,
            shape=(*shape, n * self.n_agents),
            device=self.device,
            dtype=act_spec.dtype,
        )
