"""torchrl-otc: Online Transition Correction for offline decentralized multi-agent RL, on TorchRL."""

from torchrl_otc._version import __version__
from torchrl_otc.data.samplers import OnlineOnlySampler, OTCSampler
from torchrl_otc.modules.distances import FeatureDistance, L1EmbeddingDistance, TransitionDistance

__all__ = [
    "__version__",
    "OTCSampler",
    "OnlineOnlySampler",
    "FeatureDistance",
    "L1EmbeddingDistance",
    "TransitionDistance",
]
