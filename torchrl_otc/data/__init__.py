"""Replay-buffer components: OTC and baseline samplers, decentralised views, datasets, synthetic data."""

from torchrl_otc.data.samplers import (
    BalancedReplaySampler,
    MixSampler,
    OnlineOnlySampler,
    OTCSampler,
)
from torchrl_otc.data.transforms import AgentView, agent_transitions, split_agents

__all__ = [
    "AgentView",
    "BalancedReplaySampler",
    "MixSampler",
    "OTCSampler",
    "OnlineOnlySampler",
    "agent_transitions",
    "split_agents",
]
