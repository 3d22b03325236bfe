"""Multi-agent MuJoCo (gymnasium-robotics ``mamujoco_v1``) as a TorchRL env (paper section 4.1, appendix Fig. 9).

The paper splits the action space of three MuJoCo robots between agents: 2-agent HalfCheetah (``2x3``), 2-agent
Walker2d (``2x3``) and 3-agent Hopper (``3x1``). Each agent observes the robot's state and reward and controls its
own joints. Here:

* every agent observes the global state ``s`` (the single-agent gymnasium observation; gymnasium-robotics'
  ``env.state()``), as in the paper; the local observations of gymnasium-robotics (``agent_obsk``) are an option
  (``local_obs=True``), zero-padded to the longest agent's size (Hopper 3x1's agents have 8, 9 and 8 numbers);
* agent ``i``'s action vector is written into the robot's action at the partition's own action ids, in the
  partition's order: :data:`ACTION_PARTITIONS` (Walker2d's local order is reversed: ``[2, 1, 0]`` and
  ``[5, 4, 3]``), so a joint action assembled from the agents is exactly the single-agent action;
* all agents get the same reward; a timeout (1000 steps) is a truncation, a fall a termination.

Layouts: ``layout="agents"`` (default) is TorchRL's multi-agent layout: ``("agents", "observation")``
``[n_agents, state_dim]``, ``("agents", "action")`` ``[n_agents, act_dim]``, ``("agents", "reward")``
``[n_agents, 1]`` and root ``done``/``terminated``/``truncated``. ``layout="joint"`` is the robot's single-agent
view (``observation``, ``action`` in the robot's joint order, ``reward``): the layout of the datasets.

The module holds the TorchRL wrapper/env pair proposed to TorchRL (issue 19, part b): :class:`MaMuJoCoWrapper` (wraps
a built ``mamujoco_v1.parallel_env``) and its scenario-building subclass, between the two ``TorchRL section`` comments
below. ``upstream/make_patches.py`` copies that section into ``torchrl/envs/libs/mamujoco.py`` of the patch
``upstream/patches/mamujoco-env.patch`` (the env subclass, ``_MaMuJoCoEnv`` here, is TorchRL's ``MaMuJoCoEnv``), so the
section imports only torch, numpy, tensordict and torchrl. This package's :class:`MaMuJoCoEnv` is that class plus
the ``layout="joint"`` view, a CPU default device and this package's task tables.

``gymnasium_robotics`` and ``mujoco`` are imported only when an environment is built.
"""

from __future__ import annotations

# ---- TorchRL section begins: copied into torchrl/envs/libs/mamujoco.py by upstream/make_patches.py ----
import importlib.util
from collections.abc import Sequence

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data.tensor_specs import Bounded, Categorical, Composite, Unbounded
from torchrl.envs.common import _EnvWrapper
from torchrl.envs.utils import MarlGroupMapType, _classproperty, check_marl_grouping

_has_mamujoco = (
    importlib.util.find_spec("gymnasium_robotics") is not None
    and importlib.util.find_spec("mujoco") is not None
)

# The scenarios of gymnasium-robotics' MultiAgentMujocoEnv (version 1.4).
_SCENARIOS = (
    "Ant",
    "HalfCheetah",
    "Hopper",
    "HumanoidStandup",
    "Humanoid",
    "Reacher",
    "Swimmer",
    "Pusher",
    "Walker2d",
    "InvertedPendulum",
    "InvertedDoublePendulum",
    "ManySegmentSwimmer",
    "ManySegmentAnt",
    "CoupledHalfCheetah",
)


class MaMuJoCoWrapper(_EnvWrapper):
    """Multi-agent MuJoCo (gymnasium-robotics ``mamujoco_v1``) environment wrapper.

    GitHub: https://github.com/Farama-Foundation/Gymnasium-Robotics

    Paper: https://arxiv.org/abs/2003.06709

    MaMuJoCo splits the joints of a MuJoCo robot (HalfCheetah, Walker2d, Hopper, Ant, ...) between agents: agent
    ``i`` controls the joints of its partition (``env.agent_action_partitions``). This wrapper steps the underlying
    single-agent gymnasium environment (``env.single_agent_env``) with the robot's action assembled from the agents'
    actions: agent ``i``'s ``k``-th action goes to the robot's action id ``action_partition[i][k]`` (the partition's
    own order, which is not always increasing: Walker2d ``2x3`` has ``(2, 1, 0)`` and ``(5, 4, 3)``).

    Every agent observes the global state (the single-agent gymnasium observation, ``env.state()``) under
    ``(group, "observation")``; with ``local_obs=True`` gymnasium-robotics' local observations (``agent_obsk``)
    are written under ``(group, "local_observation")`` too, zero-padded to the longest one of the group (their true
    sizes are :attr:`local_obs_dims`). All agents get the robot's reward under ``(group, "reward")``; the
    ``"done"``, ``"terminated"`` and ``"truncated"`` entries are shared and sit at the root (a fall is a
    termination, the gymnasium time limit a truncation).

    Args:
        env (gymnasium_robotics.envs.multiagent_mujoco.mujoco_multi.MultiAgentMujocoEnv): the environment to wrap,
            as returned by ``gymnasium_robotics.mamujoco_v1.parallel_env``.

    Keyword Args:
        group_map (MarlGroupMapType or Dict[str, List[str]], optional): how to group agents in tensordicts for
            input/output. By default, they are all put in one group named ``"agents"``. The agents of a group must
            control the same number of joints. See :class:`~torchrl.envs.utils.MarlGroupMapType` for more info.
        local_obs (bool, optional): whether to write the agents' local observations under
            ``(group, "local_observation")``. Defaults to ``False``.
        seed (int, optional): the seed of the first reset. Defaults to ``None``.
        device (torch.device, optional): the device of the output tensors. Defaults to ``None``.

    Attributes:
        group_map (Dict[str, List[str]]): how to group agents in tensordicts for input/output.
        agent_names (list of str): the names of the agents (``"agent_0"``, ...).
        agent_names_to_indices_map (Dict[str, int]): the index of each agent in the environment.
        action_partition (tuple of tuples of int): the robot's action ids controlled by each agent, in the agent's
            action order.
        n_agents (int): the number of agents.
        state_dim (int): the size of the global state.
        local_obs_dims (tuple of int): the size of each agent's local observation.
        available_envs (List[str]): the scenarios gymnasium-robotics can build.

    Examples:
        >>> from gymnasium_robotics import mamujoco_v1
        >>> from torchrl_otc.envs.mamujoco import MaMuJoCoWrapper
        >>> env = MaMuJoCoWrapper(mamujoco_v1.parallel_env("Walker2d", "2x3"), seed=0)
        >>> env.action_partition
        ((2, 1, 0), (5, 4, 3))
        >>> td = env.rollout(3)
        >>> td["next", "agents", "observation"].shape, td["next", "agents", "reward"].shape
        (torch.Size([3, 2, 17]), torch.Size([3, 2, 1]))
        >>> bool((td["next", "agents", "observation"][-1, 0] == td["next", "agents", "observation"][-1, 1]).all())
        True
    """

    git_url = "https://github.com/Farama-Foundation/Gymnasium-Robotics"
    libname = "gymnasium_robotics"

    @property
    def lib(self):
        import gymnasium_robotics

        return gymnasium_robotics

    @_classproperty
    def available_envs(cls):
        if not _has_mamujoco:
            return []
        return list(_SCENARIOS)

    def __init__(
        self,
        env=None,
        *,
        group_map: MarlGroupMapType | dict[str, list[str]] = MarlGroupMapType.ALL_IN_ONE_GROUP,
        local_obs: bool = False,
        seed: int | None = None,
        **kwargs,
    ):
        if env is not None:
            kwargs["env"] = env
        batch_size = kwargs.get("batch_size")
        if batch_size is not None and torch.Size(batch_size) != torch.Size([]):
            raise ValueError(
                f"{type(self).__name__} runs one environment: batch_size must be empty, got {batch_size}."
            )
        self.group_map = group_map
        self.local_obs = bool(local_obs)
        self._next_seed = seed
        super().__init__(**kwargs)

    def _check_kwargs(self, kwargs: dict):
        if "env" not in kwargs:
            raise TypeError("Could not find environment key 'env' in kwargs.")
        from gymnasium_robotics.envs.multiagent_mujoco.mujoco_multi import MultiAgentMujocoEnv

        if not isinstance(kwargs["env"], MultiAgentMujocoEnv):
            raise TypeError(
                "env is not a gymnasium-robotics MultiAgentMujocoEnv (mamujoco_v1.parallel_env)."
            )

    def _build_env(self, env):
        return env

    def _make_partition(self, env) -> None:
        """Reads the agents and their action ids from ``env`` and checks that they cover the robot's actions."""
        self.agent_names = list(env.possible_agents)
        self.agent_names_to_indices_map = {name: i for i, name in enumerate(self.agent_names)}
        self.action_partition = tuple(
            tuple(int(node.act_ids) for node in part) for part in env.agent_action_partitions
        )
        self.n_agents = len(self.action_partition)
        self._flat_ids = np.asarray(
            [i for part in self.action_partition for i in part], dtype=np.int64
        )
        self._n_act = int(env.single_agent_env.action_space.shape[0])
        if sorted(self._flat_ids.tolist()) != list(range(self._n_act)):
            raise RuntimeError(
                f"The partition {self.action_partition} does not cover the {self._n_act} actions exactly once."
            )
        self.state_dim = int(env.single_agent_env.observation_space.shape[0])
        self.local_obs_dims = tuple(
            int(env.observation_space(agent).shape[0]) for agent in self.agent_names
        )

    def _make_group_map(self) -> None:
        if isinstance(self.group_map, MarlGroupMapType):
            self.group_map = self.group_map.get_group_map(self.agent_names)
        check_marl_grouping(self.group_map, self.agent_names)
        self._group_indices = {
            group: [self.agent_names_to_indices_map[agent] for agent in agents]
            for group, agents in self.group_map.items()
        }

    def _robot_action_bounds(self, env) -> tuple[torch.Tensor, torch.Tensor]:
        """Makes the partition and the groups; returns the robot's action bounds (its single-agent action space)."""
        self._make_partition(env)
        self._make_group_map()
        space = env.single_agent_env.action_space
        return (
            torch.as_tensor(space.low, dtype=torch.float32),
            torch.as_tensor(space.high, dtype=torch.float32),
        )

    def _make_specs(self, env) -> None:
        low, high = self._robot_action_bounds(env)
        device = self.device
        observation_spec = Composite(device=device)
        action_spec = Composite(device=device)
        reward_spec = Composite(device=device)
        self._group_action_ids = {}
        for group, indices in self._group_indices.items():
            parts = [self.action_partition[i] for i in indices]
            sizes = sorted({len(part) for part in parts})
            if len(sizes) != 1:
                raise NotImplementedError(
                    f"The agents of group {group!r} control different numbers of joints {sizes}; put them in "
                    "separate groups (e.g. group_map=MarlGroupMapType.ONE_GROUP_PER_AGENT)."
                )
            n, act = len(indices), sizes[0]
            ids = torch.as_tensor(parts, dtype=torch.int64)
            self._group_action_ids[group] = ids.numpy()
            group_obs = {"observation": Unbounded((n, self.state_dim), device=device)}
            if self.local_obs:
                width = max(self.local_obs_dims[i] for i in indices)
                group_obs["local_observation"] = Unbounded((n, width), device=device)
            observation_spec[group] = Composite(group_obs, shape=(n,), device=device)
            action_spec[group] = Composite(
                action=Bounded(low[ids], high[ids], (n, act), device=device),
                shape=(n,),
                device=device,
            )
            reward_spec[group] = Composite(
                reward=Unbounded((n, 1), device=device), shape=(n,), device=device
            )
        self.observation_spec = observation_spec
        self.action_spec = action_spec
        self.reward_spec = reward_spec
        self.done_spec = Composite(
            done=Categorical(2, (1,), dtype=torch.bool, device=device),
            terminated=Categorical(2, (1,), dtype=torch.bool, device=device),
            truncated=Categorical(2, (1,), dtype=torch.bool, device=device),
            device=device,
        )

    def _init_env(self) -> int | None:
        return None

    def local_to_global_action(self, actions: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        """Assembles the robot's action from the agents' actions.

        Agent ``i``'s ``k``-th action goes to the robot's action id ``action_partition[i][k]``.

        Args:
            actions: the agents' actions, shape ``[n_agents, act_dim]`` (or their concatenation in agent order).

        Returns:
            The single-agent action, shape ``[action_dim]``, ``float64``.

        Examples:
            >>> import numpy as np
            >>> env = MaMuJoCoEnv("Walker2d", "2x3")
            >>> env.local_to_global_action(np.arange(6.0).reshape(2, 3))
            array([2., 1., 0., 5., 4., 3.])
        """
        out = np.empty(self._n_act, dtype=np.float64)
        out[self._flat_ids] = np.asarray(actions, dtype=np.float64).reshape(-1)
        return out

    def _observation_td(self, obs: np.ndarray) -> TensorDictBase:
        state = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        out = TensorDict({}, batch_size=[], device=self.device)
        for group, indices in self._group_indices.items():
            n = len(indices)
            group_td = TensorDict(
                {"observation": state.expand(n, self.state_dim).clone()},
                batch_size=[n],
                device=self.device,
            )
            if self.local_obs:
                width = max(self.local_obs_dims[i] for i in indices)
                local = torch.zeros(n, width, device=self.device)
                for j, i in enumerate(indices):
                    o = self._env._get_obs_agent(i)
                    local[j, : len(o)] = torch.as_tensor(o, dtype=torch.float32)
                group_td["local_observation"] = local
            out[group] = group_td
        return out

    def _set_seed(self, seed: int | None) -> None:
        self._next_seed = seed
        if seed is not None:
            self._env.single_agent_env.action_space.seed(seed)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        seed, self._next_seed = self._next_seed, None
        obs, _ = self._env.single_agent_env.reset(seed=seed)
        out = self._observation_td(obs)
        false = torch.zeros(1, dtype=torch.bool, device=self.device)
        out["done"] = false
        out["terminated"] = false.clone()
        out["truncated"] = false.clone()
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = np.empty(self._n_act, dtype=np.float64)
        for group, ids in self._group_action_ids.items():
            action[ids] = tensordict.get((group, "action")).cpu().numpy()
        obs, reward, terminated, truncated, _ = self._env.single_agent_env.step(action)
        terminated, truncated = bool(terminated), bool(truncated)
        out = self._observation_td(obs)
        r = torch.tensor([float(reward)], dtype=torch.float32, device=self.device)
        for group, indices in self._group_indices.items():
            out[group, "reward"] = r.expand(len(indices), 1).clone()
        out["terminated"] = torch.tensor([terminated], device=self.device)
        out["truncated"] = torch.tensor([truncated and not terminated], device=self.device)
        out["done"] = torch.tensor([terminated or truncated], device=self.device)
        return out


class _MaMuJoCoEnv(MaMuJoCoWrapper):
    """Multi-agent MuJoCo (gymnasium-robotics ``mamujoco_v1``) environment.

    Builds ``gymnasium_robotics.mamujoco_v1.parallel_env(scenario, agent_conf, agent_obsk=agent_obsk, **kwargs)``
    and wraps it with :class:`MaMuJoCoWrapper` (see there for the layout of the data: every agent
    observes the global state, the agents' actions are written at their partition's action ids, the reward is
    shared).

    Args:
        scenario (str): the robot, e.g. ``"HalfCheetah"``, ``"Walker2d"``, ``"Hopper"`` or ``"Ant"`` (see
            :attr:`available_envs`).
        agent_conf (str): the partition of the robot's joints between agents, e.g. ``"2x3"`` or ``"3x1"``.

    Keyword Args:
        agent_obsk (int, optional): the neighbourhood depth of the local observations (gymnasium-robotics'
            ``agent_obsk``). Defaults to ``1``.
        group_map (MarlGroupMapType or Dict[str, List[str]], optional): how to group agents in tensordicts for
            input/output. Defaults to all agents in one group named ``"agents"``.
        local_obs (bool, optional): whether to write the agents' local observations under
            ``(group, "local_observation")``. Defaults to ``False``.
        seed (int, optional): the seed of the first reset. Defaults to ``None``.
        device (torch.device, optional): the device of the output tensors. Defaults to ``None``.
        **kwargs: passed to ``mamujoco_v1.parallel_env`` and from there to the gymnasium MuJoCo environment
            (e.g. ``max_episode_steps``).

    Examples:
        >>> from torchrl_otc.envs.mamujoco import MaMuJoCoEnv
        >>> env = MaMuJoCoEnv("Hopper", "3x1", seed=0)
        >>> env.action_partition, env.local_obs_dims
        (((0,), (1,), (2,)), (8, 9, 8))
        >>> env.full_action_spec["agents", "action"].shape
        torch.Size([3, 1])
        >>> env.rollout(5)["next", "agents", "observation"].shape
        torch.Size([5, 3, 11])
    """

    def __init__(
        self,
        scenario: str,
        agent_conf: str,
        *,
        agent_obsk: int | None = 1,
        group_map: MarlGroupMapType | dict[str, list[str]] = MarlGroupMapType.ALL_IN_ONE_GROUP,
        local_obs: bool = False,
        seed: int | None = None,
        **kwargs,
    ):
        if not _has_mamujoco:
            raise ImportError(
                "gymnasium-robotics and mujoco were not found. Please install these dependencies. "
                f"More info: {self.git_url}."
            )
        kwargs["scenario"] = scenario
        kwargs["agent_conf"] = agent_conf
        kwargs["agent_obsk"] = agent_obsk
        super().__init__(group_map=group_map, local_obs=local_obs, seed=seed, **kwargs)

    def _check_kwargs(self, kwargs: dict):
        if "scenario" not in kwargs:
            raise TypeError("Could not find environment key 'scenario' in kwargs.")
        if "agent_conf" not in kwargs:
            raise TypeError("Could not find environment key 'agent_conf' in kwargs.")

    def _build_env(self, scenario: str, agent_conf: str, agent_obsk: int | None = 1, **kwargs):
        from gymnasium_robotics import mamujoco_v1

        self.scenario = scenario
        self.agent_conf = agent_conf
        env = mamujoco_v1.parallel_env(scenario, agent_conf, agent_obsk=agent_obsk, **kwargs)
        return super()._build_env(env)


# ---- TorchRL section ends ----

__all__ = ["MaMuJoCoEnv", "MaMuJoCoWrapper", "ACTION_PARTITIONS", "STATE_DIMS", "MAMUJOCO_TASKS"]

#: Global action ids controlled by each agent, in the agent's own action order (gymnasium-robotics 1.4
#: ``get_parts_and_edges``; checked against it in the tests).
ACTION_PARTITIONS: dict[tuple[str, str], tuple[tuple[int, ...], ...]] = {
    ("HalfCheetah", "2x3"): ((0, 1, 2), (3, 4, 5)),
    ("Walker2d", "2x3"): ((2, 1, 0), (5, 4, 3)),
    ("Hopper", "3x1"): ((0,), (1,), (2,)),
}
#: Size of the global state (the gymnasium ``-v5`` observation) per robot.
STATE_DIMS: dict[str, int] = {"HalfCheetah": 17, "Walker2d": 17, "Hopper": 11}
#: Registry suffix -> (scenario, agent_conf).
MAMUJOCO_TASKS: dict[str, tuple[str, str]] = {
    "halfcheetah-2x3": ("HalfCheetah", "2x3"),
    "walker2d-2x3": ("Walker2d", "2x3"),
    "hopper-3x1": ("Hopper", "3x1"),
}


class MaMuJoCoEnv(_MaMuJoCoEnv):
    """A gymnasium-robotics MaMuJoCo task with global-state observations and a shared reward (section 4.1).

    TorchRL's ``MaMuJoCoEnv`` (the class of the TorchRL section above, proposed upstream) with this package's
    ``layout="joint"`` view and a CPU default device.

    Args:
        scenario: the robot: ``"HalfCheetah"``, ``"Walker2d"`` or ``"Hopper"`` (any MaMuJoCo scenario works when
            its agents have equal action sizes).
        agent_conf: the partition, e.g. ``"2x3"`` or ``"3x1"``.

    Keyword Args:
        layout: ``"agents"`` (TorchRL multi-agent layout, default) or ``"joint"`` (the robot's single-agent view).
        local_obs: also write gymnasium-robotics' local observations under ``("agents", "local_observation")``
            (zero-padded; true sizes in :attr:`local_obs_dims`). Only with ``layout="agents"``.
        agent_obsk: neighbourhood depth of the local observations (gymnasium-robotics' ``agent_obsk``).
            Defaults to 1.
        device: torch device of the returned tensors. Defaults to CPU.
        seed: seed of the first reset.
        **gym_kwargs: passed to the gymnasium MuJoCo environment (e.g. ``max_episode_steps``); TorchRL's
            ``group_map`` is accepted too (``layout="agents"``).

    Attributes:
        action_partition: global action ids per agent, in each agent's order.
        n_agents: number of agents.

    ``local_to_global_action(actions)`` assembles the robot's action from the agents' actions ``[n_agents, act_dim]``
    (agent ``i``'s ``k``-th action at id ``action_partition[i][k]``); :attr:`gym_env` is the single-agent
    gymnasium environment that MaMuJoCo steps.

    Examples:
        >>> env = MaMuJoCoEnv("Walker2d", "2x3", seed=0)
        >>> env.action_partition
        ((2, 1, 0), (5, 4, 3))
        >>> env.rollout(3)["next", "agents", "observation"].shape
        torch.Size([3, 2, 17])
        >>> joint = MaMuJoCoEnv("Walker2d", "2x3", seed=0, layout="joint")
        >>> joint.rollout(3)["next", "observation"].shape, joint.full_action_spec["action"].shape
        (torch.Size([3, 17]), torch.Size([6]))
    """

    def __init__(
        self,
        scenario: str,
        agent_conf: str,
        *,
        layout: str = "agents",
        local_obs: bool = False,
        agent_obsk: int = 1,
        device: torch.device | str | None = None,
        seed: int | None = None,
        **gym_kwargs,
    ) -> None:
        if layout not in ("agents", "joint"):
            raise ValueError(f"layout must be 'agents' or 'joint'; got {layout!r}.")
        if local_obs and layout != "agents":
            raise ValueError(
                "local_obs=True needs layout='agents' (the joint view has one observation)."
            )
        if not _has_mamujoco:  # pragma: no cover - depends on the installation
            raise ImportError(
                "MaMuJoCo needs gymnasium-robotics and mujoco: pip install 'torchrl-otc[envs]'."
            )
        self.layout = layout
        super().__init__(
            scenario,
            agent_conf,
            agent_obsk=agent_obsk,
            local_obs=local_obs,
            seed=seed,
            device=torch.device(device if device is not None else "cpu"),
            **gym_kwargs,
        )

    @property
    def gym_env(self):
        """The single-agent gymnasium environment that MaMuJoCo steps."""
        return self._env.single_agent_env

    def _make_specs(self, env) -> None:
        if self.layout == "agents":
            return super()._make_specs(env)
        low, high = self._robot_action_bounds(env)
        device = self.device
        self.observation_spec = Composite(
            observation=Unbounded((self.state_dim,), device=device), device=device
        )
        self.action_spec = Bounded(low, high, (self._n_act,), device=device)
        self.reward_spec = Unbounded((1,), device=device)
        self.done_spec = Composite(
            done=Categorical(2, (1,), dtype=torch.bool, device=device),
            terminated=Categorical(2, (1,), dtype=torch.bool, device=device),
            truncated=Categorical(2, (1,), dtype=torch.bool, device=device),
            device=device,
        )

    def _observation_td(self, obs: np.ndarray) -> TensorDictBase:
        if self.layout == "agents":
            return super()._observation_td(obs)
        state = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        return TensorDict({"observation": state}, batch_size=[], device=self.device)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.layout == "agents":
            return super()._step(tensordict)
        action = tensordict.get("action").cpu().numpy().astype(np.float64)
        obs, reward, terminated, truncated, _ = self.gym_env.step(action)
        terminated, truncated = bool(terminated), bool(truncated)
        out = self._observation_td(obs)
        out["reward"] = torch.tensor([float(reward)], dtype=torch.float32, device=self.device)
        out["terminated"] = torch.tensor([terminated], device=self.device)
        out["truncated"] = torch.tensor([truncated and not terminated], device=self.device)
        out["done"] = torch.tensor([terminated or truncated], device=self.device)
        return out
