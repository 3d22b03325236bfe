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

``gymnasium_robotics`` and ``mujoco`` are imported only when an environment is built.
"""

from __future__ import annotations

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

__all__ = ["MaMuJoCoEnv", "ACTION_PARTITIONS", "STATE_DIMS", "MAMUJOCO_TASKS"]

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


class MaMuJoCoEnv(EnvBase):
    """A gymnasium-robotics MaMuJoCo task with global-state observations and a shared reward (section 4.1).

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
        **gym_kwargs: passed to the gymnasium MuJoCo environment (e.g. ``max_episode_steps``).

    Attributes:
        action_partition: global action ids per agent, in each agent's order.
        n_agents: number of agents.
        gym_env: the underlying single-agent gymnasium environment (the one MaMuJoCo steps).

    Examples:
        >>> env = MaMuJoCoEnv("Walker2d", "2x3", seed=0)  # doctest: +SKIP
        >>> env.action_partition  # doctest: +SKIP
        ((2, 1, 0), (5, 4, 3))
        >>> env.rollout(3)["next", "agents", "observation"].shape  # doctest: +SKIP
        torch.Size([3, 2, 17])
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
        try:  # optional dependency: gymnasium_robotics (and mujoco; the envs extra)
            from gymnasium_robotics import mamujoco_v1
        except ImportError as err:  # pragma: no cover - depends on the installation
            raise ImportError(
                "MaMuJoCo needs gymnasium-robotics and mujoco: pip install 'torchrl-otc[envs]'."
            ) from err
        device = torch.device(device if device is not None else "cpu")
        super().__init__(device=device, batch_size=torch.Size([]))
        self.scenario = scenario
        self.agent_conf = agent_conf
        self.layout = layout
        self.local_obs = bool(local_obs)
        self._ma = mamujoco_v1.parallel_env(
            scenario, agent_conf, agent_obsk=agent_obsk, **gym_kwargs
        )
        self.gym_env = self._ma.single_agent_env
        self.action_partition: tuple[tuple[int, ...], ...] = tuple(
            tuple(int(node.act_ids) for node in part) for part in self._ma.agent_action_partitions
        )
        self.n_agents = len(self.action_partition)
        sizes = {len(p) for p in self.action_partition}
        if len(sizes) != 1 and layout == "agents":
            raise NotImplementedError(
                f"{scenario} {agent_conf}: agents control different numbers of joints {sorted(sizes)}; "
                "use layout='joint'."
            )
        self._flat_ids = np.asarray(
            [i for part in self.action_partition for i in part], dtype=np.int64
        )
        space = self.gym_env.action_space
        self._n_act = int(space.shape[0])
        if sorted(self._flat_ids.tolist()) != list(range(self._n_act)):
            raise RuntimeError(
                f"The partition {self.action_partition} does not cover the {self._n_act} actions exactly once."
            )
        self.state_dim = int(self.gym_env.observation_space.shape[0])
        self.local_obs_dims = tuple(
            int(self._ma.observation_space(a).shape[0]) for a in self._ma.possible_agents
        )
        low = torch.as_tensor(space.low, dtype=torch.float32)
        high = torch.as_tensor(space.high, dtype=torch.float32)
        if layout == "agents":
            act = len(self.action_partition[0])
            ids = torch.as_tensor(self._flat_ids).view(self.n_agents, act)
            group_obs = {"observation": Unbounded((self.n_agents, self.state_dim), device=device)}
            if self.local_obs:
                group_obs["local_observation"] = Unbounded(
                    (self.n_agents, max(self.local_obs_dims)), device=device
                )
            self.observation_spec = Composite(
                agents=Composite(group_obs, shape=(self.n_agents,), device=device), device=device
            )
            self.action_spec = Composite(
                agents=Composite(
                    action=Bounded(low[ids], high[ids], (self.n_agents, act), device=device),
                    shape=(self.n_agents,),
                    device=device,
                ),
                device=device,
            )
            self.reward_spec = Composite(
                agents=Composite(
                    reward=Unbounded((self.n_agents, 1), device=device),
                    shape=(self.n_agents,),
                    device=device,
                ),
                device=device,
            )
        else:
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
        self._next_seed = seed

    # ------------------------------------------------------------------ mapping
    def local_to_global_action(self, actions: np.ndarray) -> np.ndarray:
        """Assemble the robot's action from per-agent actions ``[n_agents, act_dim]`` (section 4.1).

        Agent ``i``'s ``k``-th action goes to global action id ``action_partition[i][k]``.

        Args:
            actions: per-agent actions, shape ``[n_agents, act_dim]`` (or the flat concatenation).

        Returns:
            The single-agent action, shape ``[action_dim]``.

        Examples:
            >>> env = MaMuJoCoEnv("Walker2d", "2x3")  # doctest: +SKIP
            >>> env.local_to_global_action(np.arange(6.0).reshape(2, 3))  # doctest: +SKIP
            array([2., 1., 0., 5., 4., 3.])
        """
        out = np.empty(self._n_act, dtype=np.float64)
        out[self._flat_ids] = np.asarray(actions, dtype=np.float64).reshape(-1)
        return out

    def _observation_td(self, obs: np.ndarray) -> TensorDict:
        state = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if self.layout == "joint":
            return TensorDict({"observation": state}, batch_size=[], device=self.device)
        group = TensorDict(
            {"observation": state.expand(self.n_agents, self.state_dim).clone()},
            batch_size=[self.n_agents],
            device=self.device,
        )
        if self.local_obs:
            width = max(self.local_obs_dims)
            local = torch.zeros(self.n_agents, width, device=self.device)
            for i in range(self.n_agents):
                o = self._ma._get_obs_agent(i)
                local[i, : len(o)] = torch.as_tensor(o, dtype=torch.float32)
            group["local_observation"] = local
        return TensorDict({"agents": group}, batch_size=[], device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        seed, self._next_seed = self._next_seed, None
        obs, _ = self.gym_env.reset(seed=seed)
        out = self._observation_td(obs)
        false = torch.zeros(1, dtype=torch.bool, device=self.device)
        out["done"] = false
        out["terminated"] = false.clone()
        out["truncated"] = false.clone()
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.layout == "agents":
            action = self.local_to_global_action(tensordict.get(("agents", "action")).cpu().numpy())
        else:
            action = tensordict.get("action").cpu().numpy().astype(np.float64)
        obs, reward, terminated, truncated, _ = self.gym_env.step(action)
        terminated, truncated = bool(terminated), bool(truncated)
        out = self._observation_td(obs)
        r = torch.tensor([float(reward)], dtype=torch.float32, device=self.device)
        if self.layout == "agents":
            out["agents", "reward"] = r.expand(self.n_agents, 1).clone()
        else:
            out["reward"] = r
        out["terminated"] = torch.tensor([terminated], device=self.device)
        out["truncated"] = torch.tensor([truncated and not terminated], device=self.device)
        out["done"] = torch.tensor([terminated or truncated], device=self.device)
        return out

    def _set_seed(self, seed: int | None) -> None:
        self._next_seed = seed
        if seed is not None:
            self.gym_env.action_space.seed(seed)

    def close(self, *, raise_if_closed: bool = True) -> None:
        """Close the underlying MuJoCo environment."""
        try:
            self._ma.close()
        finally:
            super().close(raise_if_closed=raise_if_closed)
