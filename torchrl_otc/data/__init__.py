"""Replay-buffer components: OTC and baseline samplers, decentralised views, datasets, synthetic data."""

from torchrl_otc.data.balanced_replay import BalancedReplaySampler
from torchrl_otc.data.samplers import MixSampler, OnlineOnlySampler, OTCSampler
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
