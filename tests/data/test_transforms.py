"""Decentralisation (section 4.1): each agent keeps (s, a_i, r, s', done) and nothing of the other agents."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, RandomSampler, TensorDictReplayBuffer

from torchrl_otc.data.datasets import OfflineDataset
from torchrl_otc.data.transforms import AgentView, agent_transitions, split_agents

WALKER = [(2, 1, 0), (5, 4, 3)]
HOPPER = [(0,), (1,), (2,)]


def _joint(n: int = 10, partition=WALKER, local: bool = False) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    n_act = sum(len(p) for p in partition)
    td = TensorDict(
        {
            "observation": torch.randn(n, 17, generator=g),
            # action column c holds 100 * c + row, so every value tells where it came from
            "action": torch.arange(n_act).float().mul(100) + torch.arange(n).float()[:, None],
            "episode": torch.arange(n),
            ("next", "observation"): torch.randn(n, 17, generator=g),
            ("next", "reward"): torch.randn(n, 1, generator=g),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "truncated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        batch_size=[n],
    )
    if local:
        k = len(partition)
        td["local_observation"] = torch.arange(k).float().view(1, k, 1).expand(n, k, 4) + 0.5
        td["next", "local_observation"] = td["local_observation"] + 1000
    return td


@pytest.mark.parametrize("partition", [WALKER, HOPPER])
def test_agent_view_holds_exactly_its_action_columns(partition):
    joint = _joint(partition=partition)
    for i, cols in enumerate(partition):
        view = agent_transitions(joint, partition, i)
        assert view["action"].shape == (10, len(cols))
        assert torch.equal(view["action"], joint["action"][:, list(cols)])
        # no value of another agent's columns survives anywhere in the view
        others = [c for j, p in enumerate(partition) if j != i for c in p]
        other_values = joint["action"][:, others]
        for key in view.keys(True, True):
            v = view[key]
            if v.is_floating_point():
                assert not torch.isin(other_values, v).any(), key
        # the rest of the transition is unchanged
        for key in (
            "observation",
            ("next", "observation"),
            ("next", "reward"),
            ("next", "done"),
            "episode",
        ):
            assert torch.equal(view[key], joint[key])
    # the joint data is not modified
    assert joint["action"].shape == (10, sum(len(p) for p in partition))


def test_walker_agent_action_order_is_the_partitions():
    view = agent_transitions(_joint(), WALKER, 0)
    assert view["action"][0].tolist() == [200.0, 100.0, 0.0]  # columns 2, 1, 0


def test_local_observations():
    joint = _joint(partition=HOPPER, local=True)
    view = agent_transitions(joint, HOPPER, 2, local_obs=True)
    assert torch.equal(view["observation"], torch.full((10, 4), 2.5))
    assert torch.equal(view["next", "observation"], torch.full((10, 4), 1002.5))
    assert "local_observation" not in view.keys() and (
        "next",
        "local_observation",
    ) not in view.keys(True)
    # without local_obs, other agents' local observations are dropped too
    view = agent_transitions(joint, HOPPER, 2)
    assert torch.equal(view["observation"], joint["observation"])
    assert "local_observation" not in view.keys()
    with pytest.raises(KeyError, match="local_observation"):
        agent_transitions(_joint(partition=HOPPER), HOPPER, 0, local_obs=True)


def test_split_agents_uses_dataset_partition():
    ds = OfflineDataset(
        _joint(), {"task": "mamujoco/walker2d-2x3", "action_partition": [list(p) for p in WALKER]}
    )
    views = split_agents(ds)
    assert len(views) == 2
    assert torch.equal(views[1]["action"], ds.data["action"][:, [5, 4, 3]])
    with pytest.raises(ValueError, match="action_partition"):
        split_agents(_joint())
    with pytest.raises(IndexError, match="agent must be in 0..1"):
        agent_transitions(_joint(), WALKER, 2)


def test_replay_buffer_stores_only_the_agent_view():
    joint = _joint(partition=WALKER)
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(50), transform=AgentView(1, WALKER), batch_size=6
    )
    rb.extend(joint)
    stored = rb.storage[:]
    assert stored["action"].shape == (10, 3)
    assert torch.equal(stored["action"], joint["action"][:, [5, 4, 3]])
    batch = rb.sample()
    assert batch["action"].shape == (6, 3)
    rows = batch["episode"]
    assert torch.equal(batch["action"], joint["action"][rows][:, [5, 4, 3]])


def test_transform_on_sample_cuts_joint_storage():
    joint = _joint(partition=HOPPER)
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(50),
        sampler=RandomSampler(),
        batch_size=4,
        transform=AgentView(0, HOPPER, on_extend=False),
    )
    rb.extend(joint)
    assert rb.storage[:]["action"].shape == (10, 3)  # stored joint
    batch = rb.sample()
    assert batch["action"].shape == (4, 1)
    assert torch.equal(batch["action"][:, 0], joint["action"][batch["episode"], 0])


def test_transform_rejects_wrong_width():
    view = AgentView(0, WALKER)
    with pytest.raises(ValueError, match="expected the joint 6"):
        view(TensorDict({"action": torch.zeros(2, 4)}, [2]))
