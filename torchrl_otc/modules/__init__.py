"""Modules: transition distances (paper section 3.3) and models."""

from torchrl_otc.modules.distances import (
    EmbeddingDistance,
    FeatureDistance,
    L1EmbeddingDistance,
    TransitionDistance,
    ValueDistance,
    feature_statistics,
    pairwise_l1,
)

__all__ = [
    "EmbeddingDistance",
    "FeatureDistance",
    "L1EmbeddingDistance",
    "TransitionDistance",
    "ValueDistance",
    "feature_statistics",
    "pairwise_l1",
]
