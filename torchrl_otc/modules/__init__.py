"""Modules: transition distances (paper section 3.3), the protocols of learned parts, and models."""

from torchrl_otc.modules.distances import (
    EmbeddingDistance,
    FeatureDistance,
    ValueDistance,
    ValueFunctions,
    feature_statistics,
)
from torchrl_otc.modules.likelihood import GaussianEnsemble, LikelihoodDistance
from torchrl_otc.modules.trainable import Fittable, TrainablePart
from torchrl_otc.modules.transition_distance import (
    Comparison,
    L1EmbeddingDistance,
    OnlineRows,
    RowsOnDemand,
    TransitionDistance,
    pairwise_l1,
)

__all__ = [
    "Comparison",
    "EmbeddingDistance",
    "FeatureDistance",
    "Fittable",
    "GaussianEnsemble",
    "L1EmbeddingDistance",
    "LikelihoodDistance",
    "OnlineRows",
    "RowsOnDemand",
    "TrainablePart",
    "TransitionDistance",
    "ValueDistance",
    "ValueFunctions",
    "feature_statistics",
    "pairwise_l1",
]
