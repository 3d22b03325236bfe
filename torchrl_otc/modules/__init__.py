"""Modules: transition distances (paper section 3.3) and models."""

from torchrl_otc.modules.distances import (
    FeatureDistance,
    L1EmbeddingDistance,
    TransitionDistance,
    pairwise_l1,
)

__all__ = ["FeatureDistance", "L1EmbeddingDistance", "TransitionDistance", "pairwise_l1"]
