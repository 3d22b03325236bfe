"""Typed configs that map onto constructors: :class:`~torchrl_otc.configs.tune.TuneConfig` and its parts.

A run's config has five parts (``task``, ``data``, ``algorithm``, ``sampler`` with its ``distance``, ``run``), each a
dataclass whose fields are the arguments of what it configures; ``key=value`` overrides name a field by its dotted
path (``algorithm.actor_lr=0.0003``) or a flat shortcut (``algo=bcq``).
"""

from torchrl_otc.configs.algorithms import (
    AlgorithmConfig,
    AWACConfig,
    BCQConfig,
    CQLConfig,
    TD3BCConfig,
    make_config,
)
from torchrl_otc.configs.overrides import SHORTCUTS
from torchrl_otc.configs.parts import (
    DataConfig,
    DistanceConfig,
    RunConfig,
    SamplerConfig,
    TaskConfig,
)
from torchrl_otc.configs.tune import TuneConfig, flat_config, parse_overrides

__all__ = [
    "SHORTCUTS",
    "AWACConfig",
    "AlgorithmConfig",
    "BCQConfig",
    "CQLConfig",
    "DataConfig",
    "DistanceConfig",
    "RunConfig",
    "SamplerConfig",
    "TD3BCConfig",
    "TaskConfig",
    "TuneConfig",
    "flat_config",
    "make_config",
    "parse_overrides",
]
