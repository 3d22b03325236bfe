"""torchrl-otc: Online Transition Correction for offline decentralized multi-agent RL, on TorchRL.

The pieces users reach for first are exported here; everything else lives at the TorchRL-like paths
(``torchrl_otc.data``, ``.modules``, ``.objectives``, ``.envs``, ``.trainers``). Simulators are imported only when
an environment is built.
"""

from torchrl_otc._version import __version__
from torchrl_otc.configs.tune import TuneConfig, parse_overrides
from torchrl_otc.data.samplers import (
    BalancedReplaySampler,
    MixSampler,
    OnlineOnlySampler,
    OTCSampler,
)
from torchrl_otc.data.transforms import AgentView
from torchrl_otc.envs.registry import make_env
from torchrl_otc.modules.distances import (
    EmbeddingDistance,
    FeatureDistance,
    L1EmbeddingDistance,
    TransitionDistance,
    ValueDistance,
)
from torchrl_otc.objectives import AWACLoss, BCQLoss
from torchrl_otc.trainers import AgentLearner, OnlineTuner
from torchrl_otc.trainers.algorithms import make_algorithm

__all__ = [
    "__version__",
    "AWACLoss",
    "AgentLearner",
    "AgentView",
    "BCQLoss",
    "BalancedReplaySampler",
    "EmbeddingDistance",
    "FeatureDistance",
    "L1EmbeddingDistance",
    "MixSampler",
    "OTCSampler",
    "OnlineOnlySampler",
    "OnlineTuner",
    "TransitionDistance",
    "TuneConfig",
    "ValueDistance",
    "make_algorithm",
    "make_env",
    "parse_overrides",
]
