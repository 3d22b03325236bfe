"""The joint (single-agent) view of a multi-agent task: global state, joint action, shared reward (section 4.1).

The datasets of this package are stored in this layout, D4RL's: one row per joint transition with the global
state ``observation``, the joint ``action`` (agent ``i``'s actions at the columns ``action_partition[i]``), the
shared ``reward`` and the done flags. Each agent's decentralised dataset is cut from it by
:class:`~torchrl_otc.data.transforms.AgentView` (the other agents' actions removed). Behaviour policies for the
``medium`` datasets are trained on this view (a single policy controlling all agents, as D4RL's behaviour policies
controlled the whole robot).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, TensorSpec, Unbounded
from torchrl.envs import EnvBase

__all__ = ["JointEnv", "joint_to_agent_actions", "agent_to_joint_actions"]


def joint_to_agent_actions(
    joint: torch.Tensor, action_partition: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Split joint actions ``[..., A]`` into per-agent actions ``[..., n_agents, a]`` by the partition (section 4.1).

    Args:
        joint: joint actions, shape ``[..., A]``.
        action_partition: agent ``i`` holds the columns ``action_partition[i]`` (in its own order); every agent
            must hold the same number of columns.

    Returns:
        Per-agent actions, shape ``[..., n_agents, a]``.

    Examples:
        >>> joint_to_agent_actions(torch.arange(6.0), [(2, 1, 0), (5, 4, 3)])
        tensor([[2., 1., 0.],
                [5., 4., 3.]])
    """
    sizes = {len(p) for p in action_partition}
    if len(sizes) != 1:
        raise ValueError(
            f"Agents must control equally many action columns; got {list(action_partition)}."
        )
    ids = torch.as_tensor([list(p) for p in action_partition], device=joint.device)
    return joint[..., ids]


def agent_to_joint_actions(
    agents: torch.Tensor, action_partition: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Assemble joint actions ``[..., A]`` from per-agent actions ``[..., n_agents, a]`` (section 4.1; inverse split).

    Args:
        agents: per-agent actions, shape ``[..., n_agents, a]``.
        action_partition: agent ``i``'s ``k``-th action goes to column ``action_partition[i][k]``.

    Returns:
        Joint actions, shape ``[..., A]``.

    Examples:
        >>> agent_to_joint_actions(torch.tensor([[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]), [(2, 1, 0), (5, 4, 3)])
        tensor([0., 1., 2., 3., 4., 5.])
    """
    flat_ids = torch.as_tensor([i for p in action_partition for i in p], device=agents.device)
    out = torch.empty(*agents.shape[:-2], len(flat_ids), dtype=agents.dtype, device=agents.device)
    out[..., flat_ids] = agents.flatten(-2)
    return out


class JointEnv(EnvBase):
    """The joint view of a multi-agent env whose agents all observe the global state (section 4.1).

    ``observation`` is the global state (agent 0's ``("agents", "observation")``, equal for every agent),
    ``action`` the joint action (agent ``i``'s at ``action_partition[i]``), ``reward`` the shared reward and the
    root done flags are passed through; ``("agents", "local_observation")`` becomes ``local_observation`` and
    root keys such as ``beta`` are passed through.

    The wrapped env keeps its own state (e.g. a ``StepCounter``'s count) in a cached tensordict, so a
    :class:`JointEnv` must be stepped sequentially (as ``rollout`` and collectors do).

    Args:
        env: a multi-agent TorchRL env with a group ``"agents"`` whose members all observe the global state.
        action_partition: the joint action columns of each agent.

    Keyword Args:
        group: name of the agents' group. Defaults to ``"agents"``.

    Examples:
        >>> from torchrl_otc.envs.registry import make_env
        >>> env = make_env("mpe/navigation-3", layout="joint", num_envs=2, seed=0)  # doctest: +SKIP
        >>> env.rollout(3)["action"].shape  # doctest: +SKIP
        torch.Size([2, 3, 6])
    """

    def __init__(
        self, env: EnvBase, action_partition: Sequence[Sequence[int]], *, group: str = "agents"
    ) -> None:
        super().__init__(device=env.device, batch_size=env.batch_size)
        self._env = env
        self.group = group
        self.action_partition = tuple(tuple(int(i) for i in p) for p in action_partition)
        self.n_agents = len(self.action_partition)
        shape = env.batch_size
        obs_spec = env.full_observation_spec[group, "observation"]
        state_dim = obs_spec.shape[-1]
        act_spec = env.full_action_spec[group, "action"]
        if act_spec.shape[-2] != self.n_agents:
            raise ValueError(
                f"The env has {act_spec.shape[-2]} agents but the partition has {self.n_agents}."
            )
        obs = {"observation": Unbounded((*shape, state_dim), device=self.device)}
        self._has_local = (group, "local_observation") in env.full_observation_spec.keys(True)
        if self._has_local:
            local = env.full_observation_spec[group, "local_observation"]
            obs["local_observation"] = Unbounded(local.shape, device=self.device)
        self.observation_spec = Composite(obs, shape=shape, device=self.device)
        self.action_spec = self._joint_action_spec(act_spec, shape)
        self.reward_spec = Unbounded((*shape, 1), device=self.device)
        self.done_spec = Composite(
            {
                k: Categorical(2, (*shape, 1), dtype=torch.bool, device=self.device)
                for k in ("done", "terminated", "truncated")
            },
            shape=shape,
            device=self.device,
        )
        self._inner: TensorDictBase | None = None

    def _joint_action_spec(self, act_spec: TensorSpec, shape: torch.Size) -> TensorSpec:
        """The joint action's spec from the agents' ``act_spec`` ``[..., n_agents, k]``: bounds of each agent's
        columns at its partition's columns (a subclass with other actions overrides it)."""
        n_act = sum(len(p) for p in self.action_partition)
        low = agent_to_joint_actions(
            act_spec.space.low.expand(act_spec.shape), self.action_partition
        )
        high = agent_to_joint_actions(
            act_spec.space.high.expand(act_spec.shape), self.action_partition
        )
        return Bounded(low, high, (*shape, n_act), device=self.device)

    @property
    def base_env(self) -> EnvBase:
        """The wrapped multi-agent env."""
        return self._env

    def _flat(self, td: TensorDictBase, with_reward: bool) -> TensorDictBase:
        g = self.group
        out = TensorDict(
            {"observation": td.get((g, "observation"))[..., 0, :]},
            batch_size=self.batch_size,
            device=self.device,
        )
        if self._has_local:
            out["local_observation"] = td.get((g, "local_observation"))
        if with_reward:
            out["reward"] = td.get((g, "reward"))[..., 0, :]
        for k in ("done", "terminated", "truncated"):
            v = td.get(k, None)
            if v is None:
                v = torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device)
            out[k] = v
        return out

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        if tensordict is not None and "_reset" in tensordict.keys() and self._inner is not None:
            inner_in = self._inner.clone(False)
            inner_in.set("_reset", tensordict.get("_reset"))
            out = self._env.reset(inner_in)
        else:
            out = self._env.reset()
        self._inner = out.exclude("_reset")
        return self._flat(out, with_reward=False)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self._inner is None:
            raise RuntimeError("JointEnv.step called before reset().")
        inner_in = self._inner.clone(False)
        inner_in.set(
            (self.group, "action"),
            joint_to_agent_actions(tensordict.get("action"), self.action_partition),
        )
        nxt = self._env.step(inner_in).get("next")
        self._inner = nxt.exclude((self.group, "reward"))
        return self._flat(nxt, with_reward=True)

    def _set_seed(self, seed: int | None) -> None:
        self._env.set_seed(seed)

    def close(self, *, raise_if_closed: bool = True) -> None:
        """Close the wrapped env."""
        try:
            self._env.close()
        finally:
            super().close(raise_if_closed=raise_if_closed)
