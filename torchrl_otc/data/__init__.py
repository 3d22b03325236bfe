"""Replay-buffer components: OTC and baseline samplers, datasets, transforms."""

from torchrl_otc.data.samplers import OnlineOnlySampler, OTCSampler

__all__ = ["OTCSampler", "OnlineOnlySampler"]
