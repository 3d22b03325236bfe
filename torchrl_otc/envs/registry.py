"""Task names used by configs and the command line (``mamujoco/halfcheetah-2x3``, ``mpe/navigation-4``, ...).

==============================  ========  ===============================================================
name                            agents    what (paper section)
==============================  ========  ===============================================================
``mamujoco/halfcheetah-2x3``    2         HalfCheetah split in back/front legs (4.1, D4RL tasks)
``mamujoco/walker2d-2x3``       2         Walker2d split in right/left legs (4.1)
``mamujoco/hopper-3x1``         3         Hopper, one joint per agent (4.1)
``mpe/navigation-3`` .. ``-6``  3..6      Cooperative Navigation, N agents / N landmarks (4.4, 4.7)
``mpe/predator-prey``           3         3 predators, a faster rule-based prey (4.4)
``mpe/navigation-N-discrete``   3..6      Cooperative Navigation, MPE's 5 discrete actions, one-hot (4.4)
``mpe/predator-prey-discrete``  3         Predator-Prey with MPE's 5 discrete actions, one-hot (4.4)
``nav/nonstationary``           1         non-stationary single-agent navigation (4.5)
``coord/partner-modes``         2         a box pushed with a scripted partner of two modes, labelled (1, 3.1)
``smac/5m_vs_6m``               5         StarCraft II via TorchRL's SMACv2 wrapper; needs the game (4.6)
``smaclike/3m``                 3         SMAC-shaped pure-torch test task: 3 units vs 3 scripted enemies,
                                          action masks, deaths, shared reward (4.6; no game needed)
==============================  ========  ===============================================================

Discrete tasks (``TaskSpec.action_kind == "discrete"``) take one-hot actions: per agent a TorchRL ``OneHot`` of
``TaskSpec.num_actions`` columns in the multi-agent layout, and in the joint layout the agents' one-hot blocks side
by side (agent ``i``'s at ``action_partition[i]``, ``num_actions`` consecutive columns). ``smac/*`` and
``smaclike/*`` share SMACv2Env's layout (``("agents", "observation")`` local observations,
``("agents", "action_mask")``, ``"state"``, ``"info"``, a shared root ``"reward"`` and root done flags).

:func:`make_env` builds any of them; :func:`get_task` describes one (number of agents, action partition, state
size, episode length). Simulators are imported only when an environment is built.

What the online-tuning loop (Algorithm 1) must know about a task's deployments sits behind a hook, so that the loop
never names a task: each :class:`TaskSpec` has a :class:`DeploymentHook` (the environment's keyword arguments for
deployment ``k``, and which rows have deployment ``k``'s dynamics where the task labels them) and a ``max_envs``
bound. A new task with known ground truth (e.g. rows labelled with the behaviour mode that produced them)
implements the hook's two methods, and names its label columns in ``TaskSpec.label_keys`` so that datasets keep
them; ``nav/nonstationary`` (``beta``) and ``coord/partner-modes`` (``partner_mode``) do.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase, SerialEnv, SMACv2Env

from torchrl_otc.envs import mpe
from torchrl_otc.envs.joint import JointEnv
from torchrl_otc.envs.mamujoco import ACTION_PARTITIONS, MAMUJOCO_TASKS, STATE_DIMS, MaMuJoCoEnv
from torchrl_otc.envs.nonstationary_nav import BetaDeployments, NonStationaryNavEnv
from torchrl_otc.envs.partner_modes import MODE_KEY, PartnerDeployments, PartnerModesEnv
from torchrl_otc.envs.smac_like import SMAC_LIKE_MAPS, SmacLikeEnv

__all__ = [
    "DeploymentHook",
    "StationaryDeployments",
    "TaskSpec",
    "TASKS",
    "get_task",
    "list_tasks",
    "make_env",
    "UnknownTaskError",
]


class UnknownTaskError(KeyError, ValueError):
    """Raised for a task name that is not registered; the message lists the valid names.

    Examples:
        >>> try:
        ...     get_task("mpe/navigation-9")
        ... except UnknownTaskError as err:
        ...     "Valid tasks" in str(err)
        True
    """

    def __str__(self) -> str:  # KeyError quotes its message; show it as written
        return str(self.args[0]) if self.args else ""


@runtime_checkable
class DeploymentHook(Protocol):
    """What a task tells the online-tuning loop about its deployments ``k = 1..K`` (deployment 0: offline phase).

    ``env_kwargs`` sets the dynamics of the deployment's environment (e.g. ``nav/nonstationary``'s ``beta``);
    ``right_dynamics`` labels transitions with whether they have the deployment's dynamics, for tasks whose data
    carries the ground truth row by row; the loop logs the share of such rows among the offline rows of each
    training batch as ``agent{i}/offline_right_dynamics_share``. Implementations: :class:`StationaryDeployments`
    (no change, no labels), :class:`~torchrl_otc.envs.nonstationary_nav.BetaDeployments` and
    :class:`~torchrl_otc.envs.partner_modes.PartnerDeployments`.

    Examples:
        >>> isinstance(StationaryDeployments(), DeploymentHook)
        True
    """

    def env_kwargs(self, deployment: int, num_deployments: int) -> dict[str, Any]:
        """Keyword arguments of :func:`make_env` for deployment ``deployment`` of ``num_deployments``."""
        ...

    def right_dynamics(
        self, rows: TensorDictBase, deployment: int, num_deployments: int
    ) -> torch.Tensor | None:
        """A boolean ``[N]`` mask of the rows (batch size ``[N]``) that have deployment ``deployment``'s dynamics,
        or ``None`` where the rows carry no label."""
        ...


@dataclass(frozen=True)
class StationaryDeployments:
    """The hook of a task whose deployments all run the environment as built, and whose rows carry no label.

    Examples:
        >>> from tensordict import TensorDict
        >>> hook = StationaryDeployments()
        >>> hook.env_kwargs(1, 10), hook.right_dynamics(TensorDict({}, [4]), 1, 10)
        ({}, None)
    """

    def env_kwargs(self, deployment: int, num_deployments: int) -> dict[str, Any]:
        """No keyword arguments."""
        return {}

    def right_dynamics(
        self, rows: TensorDictBase, deployment: int, num_deployments: int
    ) -> torch.Tensor | None:
        """``None``: no labels."""
        return None


@dataclass(frozen=True)
class TaskSpec:
    """What configs, datasets and the command line need to know about a registered task.

    Attributes:
        name: registered name, e.g. ``"mpe/navigation-4"``.
        family: ``"mamujoco"``, ``"mpe"``, ``"nav"``, ``"coord"``, ``"smac"`` or ``"smaclike"``.
        n_agents: number of agents.
        action_partition: the joint action's columns held by each agent, in the agent's own order (discrete
            tasks: the agent's ``num_actions`` one-hot columns, consecutive).
        state_dim: size of the global state (every agent's observation; ``smac``/``smaclike``: the root
            ``"state"``, the joint layout's ``observation``).
        action_low: lower bound of every action column (discrete tasks: 0).
        action_high: upper bound of every action column (discrete tasks: 1).
        max_steps: episode length (a timeout is a truncation).
        description: one line, with the paper section.
        requires: Python packages needed to build the environment.
        d4rl_reference: ``(random, expert)`` returns of D4RL's score normalisation, where D4RL has the robot.
        options: task-specific arguments passed to the builder.
        deployments: the task's :class:`DeploymentHook` (see :meth:`deployment_env_kwargs`,
            :meth:`right_dynamics`).
        max_envs: the most environments the tuning loop runs at once (``None``: no bound); see :meth:`num_envs`.
        label_keys: columns of ground truth the environment writes into every transition (at the root and under
            ``"next"``), which datasets keep and :attr:`deployments` reads, e.g. ``("beta",)``.
        action_kind: ``"continuous"`` (bounded real actions, the default) or ``"discrete"`` (one-hot actions, a
            TorchRL ``OneHot`` per agent of ``num_actions`` columns; the joint action is the agents' blocks side by
            side, a ``MultiOneHot``).
        num_actions: the number of discrete actions of each agent (``None`` for continuous tasks).

    Examples:
        >>> task = get_task("mpe/navigation-4")
        >>> task.n_agents, task.state_dim, task.action_dim, task.max_steps, task.action_kind
        (4, 16, 8, 25, 'continuous')
        >>> task = get_task("mpe/navigation-4-discrete")
        >>> task.action_kind, task.num_actions, task.action_dim, task.action_partition[1]
        ('discrete', 5, 20, (5, 6, 7, 8, 9))
    """

    name: str
    family: str
    n_agents: int
    action_partition: tuple[tuple[int, ...], ...]
    state_dim: int
    action_low: float
    action_high: float
    max_steps: int
    description: str
    requires: tuple[str, ...] = ()
    d4rl_reference: tuple[float, float] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    deployments: DeploymentHook = field(default_factory=StationaryDeployments)
    max_envs: int | None = None
    label_keys: tuple[str, ...] = ()
    action_kind: Literal["continuous", "discrete"] = "continuous"
    num_actions: int | None = None

    def __post_init__(self) -> None:
        if self.action_kind not in ("continuous", "discrete"):
            raise ValueError(
                f"TaskSpec {self.name!r}: action_kind must be 'continuous' or 'discrete'; got {self.action_kind!r}."
            )
        if (self.action_kind == "discrete") != (self.num_actions is not None):
            raise ValueError(
                f"TaskSpec {self.name!r}: num_actions is the number of discrete actions per agent; give it for "
                f"action_kind='discrete' only (got action_kind={self.action_kind!r}, num_actions={self.num_actions})."
            )
        if self.num_actions is not None and any(
            len(p) != self.num_actions for p in self.action_partition
        ):
            raise ValueError(
                f"TaskSpec {self.name!r}: each agent of a discrete task holds num_actions={self.num_actions} "
                f"one-hot columns; got the partition {self.action_partition}."
            )

    @property
    def discrete(self) -> bool:
        """Whether the task's actions are one-hot (``action_kind == "discrete"``).

        Examples:
            >>> get_task("mpe/predator-prey-discrete").discrete, get_task("mpe/predator-prey").discrete
            (True, False)
        """
        return self.action_kind == "discrete"

    @property
    def action_dim(self) -> int:
        """Size of the joint action."""
        return sum(len(p) for p in self.action_partition)

    def deployment_env_kwargs(self, deployment: int, num_deployments: int) -> dict[str, Any]:
        """Keyword arguments of :func:`make_env` for deployment ``deployment`` (0: the offline phase's evaluation).

        Args:
            deployment: ``k`` in ``0..num_deployments``.
            num_deployments: ``K``.

        Returns:
            What the task's :class:`DeploymentHook` says (``{}`` for a stationary task).

        Examples:
            >>> get_task("nav/nonstationary").deployment_env_kwargs(1, 5)
            {'beta': 0.1}
            >>> get_task("mpe/navigation-3").deployment_env_kwargs(1, 5)
            {}
            >>> get_task("coord/partner-modes").deployment_env_kwargs(1, 5)
            {'mode': 1}
        """
        return self.deployments.env_kwargs(deployment, num_deployments)

    def right_dynamics(
        self, rows: TensorDictBase, deployment: int, num_deployments: int
    ) -> torch.Tensor | None:
        """Which of ``rows`` have deployment ``deployment``'s dynamics, where the task labels its rows.

        Args:
            rows: transitions with batch size ``[N]``.
            deployment: ``k`` in ``0..num_deployments`` (0: the offline phase, which takes deployment 1's).
            num_deployments: ``K``.

        Returns:
            A boolean tensor of shape ``[N]``, or ``None`` when the task (or these rows) has no labels.

        Examples:
            >>> from tensordict import TensorDict
            >>> rows = TensorDict({"beta": torch.tensor([[0.1], [-0.1]])}, [2])
            >>> get_task("nav/nonstationary").right_dynamics(rows, 1, 5)
            tensor([ True, False])
            >>> get_task("mpe/navigation-3").right_dynamics(rows, 1, 5) is None
            True
            >>> rows = TensorDict({"partner_mode": torch.tensor([[1.0], [-1.0]])}, [2])
            >>> get_task("coord/partner-modes").right_dynamics(rows, 1, 5)
            tensor([ True, False])
        """
        return self.deployments.right_dynamics(rows, deployment, num_deployments)

    def num_envs(self, wanted: int) -> int:
        """How many environments to run at once when ``wanted`` are asked for: ``wanted``, bounded by ``max_envs``.

        Examples:
            >>> get_task("mamujoco/hopper-3x1").num_envs(32), get_task("mpe/navigation-3").num_envs(32)
            (1, 32)
        """
        return wanted if self.max_envs is None else min(wanted, self.max_envs)

    def available(self) -> bool:
        """Whether the Python packages this task needs are installed.

        Examples:
            >>> get_task("nav/nonstationary").available()
            True
        """
        return all(importlib.util.find_spec(m) is not None for m in self.requires)


# D4RL's reference returns (d4rl/infos.py, REF_MIN_SCORE / REF_MAX_SCORE): random and expert policies.
_D4RL_REFERENCE = {
    "HalfCheetah": (-280.178953, 12135.0),
    "Walker2d": (1.629008, 4592.3),
    "Hopper": (-20.272305, 3234.3),
}


def _build_registry() -> dict[str, TaskSpec]:
    tasks: dict[str, TaskSpec] = {}
    for suffix, (scenario, conf) in MAMUJOCO_TASKS.items():
        name = f"mamujoco/{suffix}"
        tasks[name] = TaskSpec(
            name=name,
            family="mamujoco",
            n_agents=len(ACTION_PARTITIONS[(scenario, conf)]),
            action_partition=ACTION_PARTITIONS[(scenario, conf)],
            state_dim=STATE_DIMS[scenario],
            action_low=-1.0,
            action_high=1.0,
            max_steps=1000,
            description=f"multi-agent MuJoCo {scenario} {conf} (section 4.1)",
            requires=("gymnasium_robotics", "mujoco"),
            d4rl_reference=_D4RL_REFERENCE[scenario],
            options={"scenario": scenario, "agent_conf": conf},
            max_envs=1,  # several would be a SerialEnv, stepping its copies one after the other anyway
        )
    for n in range(3, 7):
        name = f"mpe/navigation-{n}"
        tasks[name] = TaskSpec(
            name=name,
            family="mpe",
            n_agents=n,
            action_partition=tuple((2 * i, 2 * i + 1) for i in range(n)),
            state_dim=4 * n,
            action_low=-0.1,
            action_high=0.1,
            max_steps=25,
            description=f"Cooperative Navigation, {n} agents and {n} landmarks (sections 4.4, 4.7)",
            requires=("vmas",),
            options={"task": "navigation", "n_agents": n},
        )
    tasks["mpe/predator-prey"] = TaskSpec(
        name="mpe/predator-prey",
        family="mpe",
        n_agents=3,
        action_partition=((0, 1), (2, 3), (4, 5)),
        state_dim=8,
        action_low=-0.1,
        action_high=0.1,
        max_steps=25,
        description="Predator-Prey: 3 predators chase a faster rule-based prey (section 4.4)",
        requires=("vmas",),
        options={"task": "predator_prey", "n_agents": 3},
    )
    # The same MPE tasks with MPE's 5 discrete actions (no-op, left, right, down, up), one-hot per agent.
    n_act = mpe.N_DISCRETE_ACTIONS
    for n in range(3, 7):
        name = f"mpe/navigation-{n}-discrete"
        tasks[name] = TaskSpec(
            name=name,
            family="mpe",
            n_agents=n,
            action_partition=_one_hot_partition(n, n_act),
            state_dim=4 * n,
            action_low=0.0,
            action_high=1.0,
            max_steps=25,
            description=f"Cooperative Navigation, {n} agents and {n} landmarks, 5 discrete actions (section 4.4)",
            requires=("vmas",),
            options={"task": "navigation", "n_agents": n, "discrete": True},
            action_kind="discrete",
            num_actions=n_act,
        )
    tasks["mpe/predator-prey-discrete"] = TaskSpec(
        name="mpe/predator-prey-discrete",
        family="mpe",
        n_agents=3,
        action_partition=_one_hot_partition(3, n_act),
        state_dim=8,
        action_low=0.0,
        action_high=1.0,
        max_steps=25,
        description="Predator-Prey: 3 predators chase a faster rule-based prey, 5 discrete actions (section 4.4)",
        requires=("vmas",),
        options={"task": "predator_prey", "n_agents": 3, "discrete": True},
        action_kind="discrete",
        num_actions=n_act,
    )
    tasks["nav/nonstationary"] = TaskSpec(
        name="nav/nonstationary",
        family="nav",
        n_agents=1,
        action_partition=((0, 1),),
        state_dim=4,
        action_low=-1.0,
        action_high=1.0,
        max_steps=50,
        description="non-stationary single-agent navigation, velocity beta * a (section 4.5)",
        deployments=BetaDeployments(),
        label_keys=("beta",),
    )
    tasks["coord/partner-modes"] = TaskSpec(
        name="coord/partner-modes",
        family="coord",
        n_agents=2,
        action_partition=((0, 1), (2, 3)),
        state_dim=4,
        action_low=-1.0,
        action_high=1.0,
        max_steps=50,
        description="2 agents push a box that a scripted partner steers left or right per episode; the "
        "deployed partner keeps one mode (sections 1, 3.1)",
        deployments=PartnerDeployments(),
        label_keys=(MODE_KEY,),
    )
    tasks["smac/5m_vs_6m"] = TaskSpec(
        name="smac/5m_vs_6m",
        family="smac",
        n_agents=5,
        # one-hot actions (SMACv2Env(categorical_actions=False)): no-op, stop, 4 moves, attack one of 6 enemies
        action_partition=_one_hot_partition(5, 12),
        state_dim=-1,
        action_low=0.0,
        action_high=1.0,
        max_steps=70,
        description="SMAC 5m_vs_6m through TorchRL's SMACv2 wrapper; needs StarCraft II (section 4.6)",
        requires=("smacv2",),
        options={"map_name": "5m_vs_6m"},
        max_envs=1,  # one environment per instance (make_env refuses more)
        action_kind="discrete",
        num_actions=12,
    )
    for map_name, (n_allies, n_enemies) in SMAC_LIKE_MAPS.items():
        name = f"smaclike/{map_name}"
        sizes = SmacLikeEnv.sizes(n_allies, n_enemies)
        tasks[name] = TaskSpec(
            name=name,
            family="smaclike",
            n_agents=n_allies,
            action_partition=_one_hot_partition(n_allies, sizes["num_actions"]),
            state_dim=sizes["state_dim"],
            action_low=0.0,
            action_high=1.0,
            max_steps=SmacLikeEnv.DEFAULT_MAX_STEPS,
            description=f"SMAC-shaped test task: {n_allies} units vs {n_enemies} scripted enemies on a grid, "
            "action masks, deaths, shared reward; pure torch, no game (section 4.6)",
            options={"n_allies": n_allies, "n_enemies": n_enemies},
            action_kind="discrete",
            num_actions=sizes["num_actions"],
        )
    return tasks


def _one_hot_partition(n_agents: int, num_actions: int) -> tuple[tuple[int, ...], ...]:
    """Agent ``i`` holds the one-hot columns ``num_actions * i .. num_actions * (i + 1) - 1``."""
    return tuple(tuple(range(num_actions * i, num_actions * (i + 1))) for i in range(n_agents))


#: Every registered task, by name.
TASKS: dict[str, TaskSpec] = _build_registry()


def list_tasks(family: str | None = None) -> list[str]:
    """Registered task names (the paper's tasks, sections 4.1, 4.4-4.7), optionally of one family.

    Args:
        family: ``"mamujoco"``, ``"mpe"``, ``"nav"``, ``"coord"``, ``"smac"`` or ``"smaclike"``; ``None`` for all.

    Returns:
        The names, sorted.

    Examples:
        >>> [t for t in list_tasks("mpe") if not get_task(t).discrete]
        ['mpe/navigation-3', 'mpe/navigation-4', 'mpe/navigation-5', 'mpe/navigation-6', 'mpe/predator-prey']
        >>> list_tasks("smaclike")
        ['smaclike/3m']
    """
    return sorted(n for n, t in TASKS.items() if family is None or t.family == family)


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of a registered task (sections 4.1, 4.4-4.7).

    Args:
        name: a registered name (see :func:`list_tasks`).

    Returns:
        The task's description.

    Raises:
        UnknownTaskError: the name is not registered; the message lists the valid names.

    Examples:
        >>> get_task("mamujoco/walker2d-2x3").action_partition
        ((2, 1, 0), (5, 4, 3))
    """
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(
            f"Unknown task {name!r}. Valid tasks: {', '.join(list_tasks())}."
        ) from None


def _require(task: TaskSpec) -> None:
    missing = [m for m in task.requires if importlib.util.find_spec(m) is None]
    if missing:
        hint = {
            "smacv2": "SMACv2 and the StarCraft II game (see https://github.com/oxwhirl/smacv2); "
            "it cannot be installed with pip alone",
        }
        what = "; ".join(hint.get(m, f"the Python package {m!r}") for m in missing)
        raise ImportError(
            f"Task {task.name!r} needs {what}. For the simulators of this package: pip install 'torchrl-otc[envs]'."
        )


def make_env(
    name: str,
    *,
    layout: str = "agents",
    backend: str = "vmas",
    num_envs: int = 1,
    device: torch.device | str = "cpu",
    seed: int | None = None,
    local_obs: bool = False,
    **kwargs: Any,
) -> EnvBase:
    """Build a registered task of the paper (sections 4.1, 4.4-4.7) as a TorchRL environment.

    Multi-agent tasks use TorchRL's multi-agent layout (group ``"agents"``: per-agent ``observation`` = the
    global state, per-agent ``action``, the shared ``reward`` repeated per agent; root ``done``/``terminated``/
    ``truncated``). ``layout="joint"`` gives the single-agent view the datasets use (:class:`JointEnv`;
    for the discrete MPE tasks :class:`~torchrl_otc.envs.mpe.OneHotJointEnv`, one-hot blocks side by side).
    ``nav/nonstationary`` is single-agent and always flat; ``coord/partner-modes`` and ``smaclike/*`` build either
    layout themselves (:class:`~torchrl_otc.envs.partner_modes.PartnerModesEnv`,
    :class:`~torchrl_otc.envs.smac_like.SmacLikeEnv`). ``smac/*`` and ``smaclike/*`` use SMACv2Env's layout
    (local ``("agents", "observation")``, ``("agents", "action_mask")``, root ``"state"`` and shared ``"reward"``),
    with one-hot actions.

    Args:
        name: registered task name (see :func:`list_tasks`).

    Keyword Args:
        layout: ``"agents"`` (default) or ``"joint"``.
        backend: for ``mpe/*``: ``"vmas"`` (vectorised; default) or ``"pettingzoo"`` (mpe2, one env).
        num_envs: environments at once: vectorised for VMAS, ``nav/*``, ``coord/*`` and ``smaclike/*``, a TorchRL
            ``SerialEnv`` for MaMuJoCo, unsupported for PettingZoo and SMAC.
        device: torch device (VMAS, ``nav/*``, ``coord/*`` and ``smaclike/*`` simulate on it).
        seed: seed of the environment.
        local_obs: also provide local observations (``("agents", "local_observation")``; ``smaclike/*``: the joint
            layout's ``local_observation``, its agents' own observations).
        **kwargs: passed to the task's builder (e.g. ``beta=0.15`` for ``nav/nonstationary``, ``mode=1`` for
            ``coord/partner-modes``,
            ``prey_speed`` for predator-prey, ``max_steps``).

    Returns:
        A TorchRL ``EnvBase``.

    Raises:
        UnknownTaskError: unknown task name (the message lists the valid names).
        ImportError: the simulator is not installed (the message says what to install).

    Examples:
        >>> env = make_env("nav/nonstationary", num_envs=4, seed=0, beta=0.15)
        >>> env.rollout(2)["observation"].shape
        torch.Size([4, 2, 4])
        >>> env = make_env("smaclike/3m", num_envs=4, seed=0)
        >>> td = env.rollout(2)
        >>> td["agents", "action"].shape, td["agents", "action_mask"].shape, td["next", "reward"].shape
        (torch.Size([4, 2, 3, 9]), torch.Size([4, 2, 3, 9]), torch.Size([4, 2, 1]))
        >>> make_env("mpe/navigation-9")
        Traceback (most recent call last):
        ...
        torchrl_otc.envs.registry.UnknownTaskError: Unknown task 'mpe/navigation-9'. Valid tasks: ...
    """
    task = get_task(name)
    if layout not in ("agents", "joint"):
        raise ValueError(f"layout must be 'agents' or 'joint'; got {layout!r}.")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1; got {num_envs}.")
    _require(task)
    if task.family == "nav":
        if local_obs:
            raise ValueError("nav/nonstationary is single-agent: it has no local observations.")
        return NonStationaryNavEnv(num_envs, device=device, seed=seed, **kwargs)
    if task.family == "coord":
        if local_obs:
            raise ValueError(
                f"{task.name} has no local observations: every agent sees the global state."
            )
        return PartnerModesEnv(
            num_envs, n_agents=task.n_agents, layout=layout, device=device, seed=seed, **kwargs
        )
    if task.family == "smaclike":
        return SmacLikeEnv(
            num_envs,
            n_allies=task.options["n_allies"],
            n_enemies=task.options["n_enemies"],
            layout=layout,
            local_obs=local_obs,
            device=device,
            seed=seed,
            **kwargs,
        )
    if task.family == "mpe":
        opts = dict(task.options)
        if opts.get("discrete", False):
            kwargs = {"discrete": True, **kwargs}
        if backend == "vmas":
            env = mpe.make_vmas_env(
                opts["task"],
                opts["n_agents"],
                num_envs=num_envs,
                device=device,
                seed=seed,
                local_obs=local_obs,
                **kwargs,
            )
        elif backend == "pettingzoo":
            if num_envs != 1:
                raise ValueError(
                    "The PettingZoo backend runs one environment; use backend='vmas' for num_envs > 1."
                )
            env = mpe.make_pettingzoo_env(
                opts["task"], opts["n_agents"], seed=seed, local_obs=local_obs, **kwargs
            )
        else:
            raise ValueError(f"backend must be 'vmas' or 'pettingzoo'; got {backend!r}.")
    elif task.family == "mamujoco":
        opts = dict(task.options)
        direct_layout = "joint" if layout == "joint" else "agents"

        def _one(i: int = 0) -> EnvBase:
            return MaMuJoCoEnv(
                opts["scenario"],
                opts["agent_conf"],
                layout=direct_layout,
                local_obs=local_obs,
                device=device,
                seed=None if seed is None else seed + i,
                **kwargs,
            )

        if num_envs == 1:
            return _one()
        return SerialEnv(num_envs, [lambda i=i: _one(i) for i in range(num_envs)])
    elif task.family == "smac":
        if num_envs != 1:
            raise ValueError("SMAC runs one environment per instance.")
        kwargs.setdefault("categorical_actions", False)  # one-hot, as TaskSpec's partition says
        return SMACv2Env(map_name=task.options["map_name"], seed=seed, **kwargs)
    else:  # pragma: no cover - registry and builders are written together
        raise RuntimeError(f"No builder for family {task.family!r}.")
    if layout == "joint":
        if task.discrete:
            return mpe.OneHotJointEnv(env, task.action_partition)
        return JointEnv(env, task.action_partition)
    return env
