"""Decentralisation of joint transitions: agent ``i``'s individual transitions ``(s, a_i, r, s', done)``.

Section 4.1 of the paper builds each agent's offline dataset ``B_i^0`` from a joint dataset by deleting the other
agents' actions: "For each agent i, we delete the actions of other agents from the original dataset". Nothing else
of the other agents crosses over: agent ``i`` keeps the global state ``s`` (or, optionally, its own local
observation), its own action columns, the shared reward, the next state and the done flags.

* :func:`agent_transitions` cuts one agent's view from a joint TensorDict;
* :func:`split_agents` cuts all of them (``N`` per-agent datasets);
* :class:`AgentView` does it as a TorchRL ``Transform`` in a replay buffer: on ``extend`` (``inv``) the buffer
  stores the agent's view only, so a sampler attached to the buffer (OTC's distances included) never sees another
  agent's actions; on ``sample`` (``forward``) joint rows already in a storage are cut the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch  # noqa: F401 (the doctests use it)
from tensordict import TensorDictBase
from torchrl.envs.transforms import Transform

__all__ = ["AgentView", "agent_transitions", "split_agents"]

_LOCAL = "local_observation"
#: A discrete task's boolean action mask, one column per (one-hot) action column: cut per agent like the action.
MASK_KEY = "action_mask"


def _columns(action_partition: Sequence[Sequence[int]], agent: int) -> list[int]:
    n = len(action_partition)
    if not 0 <= agent < n:
        raise IndexError(f"agent must be in 0..{n - 1} for a partition of {n} agents; got {agent}.")
    return [int(c) for c in action_partition[agent]]


def agent_transitions(
    data: TensorDictBase,
    action_partition: Sequence[Sequence[int]],
    agent: int,
    *,
    local_obs: bool = False,
    action_key: str = "action",
) -> TensorDictBase:
    """Agent ``agent``'s individual transitions from joint ones (section 4.1).

    The joint ``action`` is replaced by the agent's columns ``action_partition[agent]`` (in the agent's order), and
    so is a discrete task's joint ``action_mask`` (and ``("next", "action_mask")``), one column per action column;
    ``local_observation`` entries (every agent's) are removed, after replacing ``observation`` and
    ``("next", "observation")`` by the agent's own rows when ``local_obs`` is true. Every other key (reward, done
    flags, the global state, bookkeeping such as ``index`` or ``episode``) is kept.

    Args:
        data: joint transitions, batch size ``[..]``, with ``action`` of size ``A`` in the last dimension.
        action_partition: the joint action columns of each agent.
        agent: the agent's index.

    Keyword Args:
        local_obs: use the agent's local observation (``local_observation[..., agent, :]``) as its observation.
        action_key: the key of the joint action. Defaults to ``"action"``.

    Returns:
        A new TensorDict (the input is not modified).

    Examples:
        >>> from tensordict import TensorDict
        >>> joint = TensorDict({"observation": torch.zeros(2, 4), "action": torch.arange(12.0).view(2, 6)}, [2])
        >>> agent_transitions(joint, [(2, 1, 0), (5, 4, 3)], 0)["action"]
        tensor([[2., 1., 0.],
                [8., 7., 6.]])
    """
    cols = _columns(action_partition, agent)
    out = data.clone(False)
    action = out.get(action_key)
    expected = sum(len(p) for p in action_partition)
    if action.shape[-1] != expected:
        raise ValueError(
            f"The joint {action_key!r} has {action.shape[-1]} columns but the partition covers {expected}; "
            "is this data already one agent's view?"
        )
    out.set(action_key, action[..., cols].clone())
    for key in (
        MASK_KEY,
        ("next", MASK_KEY),
    ):  # a discrete task's joint action mask: the agent's columns too
        mask = out.get(key, None)
        if mask is not None:
            if mask.shape[-1] != expected:
                raise ValueError(
                    f"The joint {key!r} has {mask.shape[-1]} columns, the joint action {expected}: an action mask "
                    "has one column per action column."
                )
            out.set(key, mask[..., cols].clone())
    if local_obs:
        for prefix in ((), ("next",)):
            local = out.get((*prefix, _LOCAL), None)
            if local is None:
                raise KeyError(
                    f"local_obs=True needs {'.'.join((*prefix, _LOCAL))!r} in the data; build the dataset with "
                    "local observations (otc data build ... --local-obs)."
                )
            out.set((*prefix, "observation"), local[..., agent, :].clone())
    for prefix in ((), ("next",)):
        key = (*prefix, _LOCAL)
        if key in out.keys(True):
            out.del_(key)
    return out


def split_agents(
    data: Any,
    action_partition: Sequence[Sequence[int]] | None = None,
    *,
    local_obs: bool = False,
) -> list[TensorDictBase]:
    """Split a joint dataset into the ``N`` per-agent datasets ``B_1^0, ..., B_N^0`` (section 4.1).

    Args:
        data: joint transitions (a TensorDict) or an :class:`~torchrl_otc.data.datasets.OfflineDataset`.
        action_partition: the agents' action columns; taken from the dataset's metadata when omitted.

    Keyword Args:
        local_obs: give each agent its local observation instead of the global state.

    Returns:
        One TensorDict per agent (see :func:`agent_transitions`).

    Examples:
        >>> from tensordict import TensorDict
        >>> joint = TensorDict({"observation": torch.zeros(3, 4), "action": torch.randn(3, 4)}, [3])
        >>> [d["action"].shape[-1] for d in split_agents(joint, [(0, 1), (2, 3)])]
        [2, 2]
    """
    td = getattr(data, "data", data)
    if action_partition is None:
        action_partition = getattr(data, "action_partition", None)
        if action_partition is None:
            raise ValueError("split_agents needs action_partition for a plain TensorDict.")
    return [
        agent_transitions(td, action_partition, i, local_obs=local_obs)
        for i in range(len(action_partition))
    ]


class AgentView(Transform):
    """Replay-buffer transform giving agent ``i``'s individual transitions ``(s, a_i, r, s', done)`` (section 4.1).

    Applied on ``extend`` (TorchRL calls ``inv``), it makes the buffer store the agent's view only; applied on
    ``sample`` (``forward``), it cuts joint rows already in a storage. Either way the other agents' actions and
    local observations are dropped, and nothing else of theirs is added.

    Args:
        agent: the agent's index.
        action_partition: the joint action columns of each agent.

    Keyword Args:
        local_obs: use the agent's local observation as its observation.
        on_extend: cut on ``extend`` (store the agent's view). Defaults to ``True``.
        on_sample: cut on ``sample``. Defaults to ``True``; rows stored already cut pass unchanged.

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
        >>> rb = TensorDictReplayBuffer(storage=LazyTensorStorage(10), transform=AgentView(1, [(0, 1), (2, 3)]))
        >>> _ = rb.extend(TensorDict({"observation": torch.zeros(4, 3), "action": torch.arange(16.0).view(4, 4)}, [4]))
        >>> rb.storage[0]["action"]          # stored: agent 1's columns only
        tensor([2., 3.])
        >>> rb.sample(2)["action"].shape
        torch.Size([2, 2])
    """

    def __init__(
        self,
        agent: int,
        action_partition: Sequence[Sequence[int]],
        *,
        local_obs: bool = False,
        on_extend: bool = True,
        on_sample: bool = True,
    ) -> None:
        super().__init__(in_keys=[], out_keys=[])
        _columns(action_partition, agent)
        self.agent = int(agent)
        self.action_partition = tuple(tuple(int(c) for c in p) for p in action_partition)
        self.local_obs = bool(local_obs)
        self.on_extend = bool(on_extend)
        self.on_sample = bool(on_sample)
        self._joint_dim = sum(len(p) for p in self.action_partition)

    def _cut(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action", None)
        if action is None or action.shape[-1] != self._joint_dim:
            # Already an agent's view (stored cut): nothing of other agents is left to remove.
            if action is not None and action.shape[-1] != len(self.action_partition[self.agent]):
                raise ValueError(
                    f"AgentView({self.agent}) got actions with {action.shape[-1]} columns; expected the joint "
                    f"{self._joint_dim} or agent {self.agent}'s {len(self.action_partition[self.agent])}."
                )
            return tensordict
        return agent_transitions(
            tensordict, self.action_partition, self.agent, local_obs=self.local_obs
        )

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Cut sampled rows (``ReplayBuffer.sample``)."""
        return self._cut(tensordict) if self.on_sample else tensordict

    def _inv_call(self, tensordict: TensorDictBase) -> TensorDictBase:
        return self._cut(tensordict) if self.on_extend else tensordict

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        raise RuntimeError(
            "AgentView is a replay-buffer transform; for environments use make_env(..., layout='agents')."
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(agent={self.agent}, action_partition={self.action_partition}, "
            f"local_obs={self.local_obs})"
        )
