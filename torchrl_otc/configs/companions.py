"""Hydra-style config companions of the package's samplers and losses, as TorchRL has for its own.

TorchRL 0.14 pairs its samplers and losses with dataclasses such as ``RandomSamplerConfig`` and ``CQLLossConfig``
(:mod:`torchrl.trainers.algorithms.configs`): every constructor argument is a field, and ``_target_`` names what to
build, so that Hydra's ``instantiate`` (or :func:`instantiate` here, which needs no Hydra) turns a YAML file into
the object. These are the same for :class:`~torchrl_otc.OTCSampler` (the paper's eq. 1-4), its controls
(:class:`~torchrl_otc.MixSampler`, :class:`~torchrl_otc.OnlineOnlySampler`,
:class:`~torchrl_otc.BalancedReplaySampler`) and the losses :class:`~torchrl_otc.objectives.BCQLoss`,
:class:`~torchrl_otc.objectives.AWACLoss` and :class:`~torchrl_otc.objectives.TransitionVAELoss`. They are plain
dataclasses (TorchRL's ``ConfigBase`` needs OmegaConf, which the package does not install); a test keeps every
field's name and default equal to the constructor's.

The loss configs add ``gamma`` as TorchRL's do: when set, ``make_value_estimator(gamma=gamma)`` is called on the
built loss. Networks (and a sampler's ``online_buffer``) are objects, not YAML: pass them to :func:`instantiate`
as keyword arguments, or as nested configs with their own ``_target_``.

Examples:
    >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
    >>> online = TensorDictReplayBuffer(storage=LazyTensorStorage(100))
    >>> sampler = instantiate(OTCSamplerConfig(alpha=2.0, num_candidates=64), online_buffer=online)
    >>> type(sampler).__name__, sampler.alpha, sampler.num_candidates
    ('OTCSampler', 2.0, 64)
    >>> type(instantiate({"_target_": "torchrl_otc.MixSampler", "online_fraction": 0.3})).__name__
    'MixSampler'
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AWACLossConfig",
    "BCQLossConfig",
    "BalancedReplaySamplerConfig",
    "MixSamplerConfig",
    "OTCSamplerConfig",
    "OnlineOnlySamplerConfig",
    "TransitionVAELossConfig",
    "instantiate",
    "make_loss",
]


def _resolve(target: str) -> Any:
    """The object a dotted ``_target_`` names (``package.module.Name``)."""
    module, _, name = target.rpartition(".")
    if not module:
        raise ValueError(
            f"_target_ must be a dotted path such as 'torchrl_otc.OTCSampler'; got {target!r}."
        )
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"_target_ {target!r} names nothing importable ({err}).") from None


def instantiate(config: Any, **kwargs: Any) -> Any:
    """Builds what a config's ``_target_`` names, with its fields (and ``kwargs``) as arguments.

    The same contract as Hydra's ``instantiate`` for these configs: nested mappings or dataclasses with a
    ``_target_`` are built first; ``_partial_: true`` returns a :func:`functools.partial`; fields left ``None``
    that the target requires must be given in ``kwargs``.

    Args:
        config: a config dataclass of this module (or any dataclass / mapping with ``_target_``).
        **kwargs: arguments that override or complete the fields (objects such as networks or buffers).

    Returns:
        The built object.

    Raises:
        ValueError: no ``_target_``, or one that names nothing importable.

    Examples:
        >>> type(instantiate(OnlineOnlySamplerConfig())).__name__
        'OnlineOnlySampler'
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    elif isinstance(config, Mapping):
        fields = dict(config)
    else:
        raise ValueError(
            f"instantiate needs a config dataclass or a mapping with _target_; got {type(config).__name__}."
        )
    target = fields.pop("_target_", None)
    if not isinstance(target, str):
        raise ValueError("The config has no _target_ naming what to build.")
    partial = bool(fields.pop("_partial_", False))
    fields.update(kwargs)
    for name, value in fields.items():
        if (isinstance(value, Mapping) and "_target_" in value) or (
            dataclasses.is_dataclass(value)
            and not isinstance(value, type)
            and hasattr(value, "_target_")
        ):
            fields[name] = instantiate(value)
    built = _resolve(target)
    if partial:
        return functools.partial(built, **fields)
    return built(**fields)


def make_loss(_loss: str, gamma: float | None = None, **kwargs: Any) -> Any:
    """Builds the loss ``_loss`` names and, when ``gamma`` is given, its TD(0) value estimator (as TorchRL's
    ``_make_cql_loss`` does); the ``_target_`` of the loss configs.

    Args:
        _loss: dotted path of the loss class.
        gamma: discount of ``make_value_estimator``; ``None`` leaves the estimator to the caller.
        **kwargs: the loss's arguments.

    Returns:
        The loss.
    """
    loss = _resolve(_loss)(**kwargs)
    if gamma is not None:
        loss.make_value_estimator(gamma=gamma)
    return loss


# ------------------------------------------------------------------------------------------------ samplers
@dataclass
class OTCSamplerConfig:
    """Config of :class:`~torchrl_otc.OTCSampler` (OTC paper, section 3.4, eq. 1-4); fields as its arguments.

    ``online_buffer`` (required) and ``distance`` are objects: give them to :func:`instantiate`.
    """

    online_buffer: Any = None
    alpha: float = 1.0
    distance: Any = None
    num_candidates: int = 512
    num_online: int = 2000
    adaptive_alpha: bool = True
    alpha_range: tuple[float, float] = (0.1, 10.0)
    self_match: bool = True
    online_key: Any = "is_online"
    id_key: Any = "transition_id"
    with_replacement: bool = True
    importance_weights: bool = False
    beta: float = 0.4
    alpha_samples: int = 4096
    online_fraction: float | str | None = None
    online_fraction_range: tuple[float, float] = (0.05, 0.95)
    source: str = "all"
    deployment_key: Any = "deployment"
    score_every: int = 1
    _target_: str = "torchrl_otc.data.samplers.otc.OTCSampler"


@dataclass
class MixSamplerConfig:
    """Config of :class:`~torchrl_otc.MixSampler` (the matched-mix control: a fixed online share)."""

    online_fraction: float = 0.5
    online_key: Any = "is_online"
    source: str = "all"
    deployment_key: Any = "deployment"
    _target_: str = "torchrl_otc.data.samplers.mix.MixSampler"


@dataclass
class OnlineOnlySamplerConfig:
    """Config of :class:`~torchrl_otc.OnlineOnlySampler` (online rows only)."""

    online_key: Any = "is_online"
    _target_: str = "torchrl_otc.data.samplers.online_only.OnlineOnlySampler"


@dataclass
class BalancedReplaySamplerConfig:
    """Config of :class:`~torchrl_otc.BalancedReplaySampler` (Lee et al. 2021, the paper's baseline)."""

    online_key: Any = "is_online"
    state_key: Any = "observation"
    action_key: Any = "action"
    num_candidates: int = 512
    temperature: float = 5.0
    hidden_sizes: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    train_batch_size: int = 256
    seed: int = 0
    device: str | None = None
    output_activation: str = "relu"
    _target_: str = "torchrl_otc.data.samplers.balanced_replay.BalancedReplaySampler"


# ------------------------------------------------------------------------------------------------ losses
@dataclass
class BCQLossConfig:
    """Config of :class:`~torchrl_otc.objectives.BCQLoss` (Fujimoto et al. 2019; Table 3 defaults).

    The three networks are objects (or nested configs); ``gamma`` builds the value estimator.
    """

    actor_network: Any = None
    qvalue_network: Any = None
    vae_network: Any = None
    num_qvalue_nets: int = 2
    lmbda: float = 0.75
    num_samples: int = 10
    kl_weight: float = 0.5
    target_selection: str = "mixed"
    loss_function: str = "l2"
    reduction: str | None = None
    deactivate_vmap: bool = False
    use_prioritized_weights: str | bool = "auto"
    gamma: float | None = None
    _loss: str = "torchrl_otc.objectives.bcq.BCQLoss"
    _target_: str = "torchrl_otc.configs.companions.make_loss"


@dataclass
class AWACLossConfig:
    """Config of :class:`~torchrl_otc.objectives.AWACLoss` (Nair et al. 2020); ``gamma`` builds the estimator."""

    actor_network: Any = None
    qvalue_network: Any = None
    num_qvalue_nets: int = 2
    temperature: float = 1.0
    max_weight: float = 100.0
    num_value_samples: int = 1
    loss_function: str = "l2"
    reduction: str | None = None
    deactivate_vmap: bool = False
    use_prioritized_weights: str | bool = "auto"
    gamma: float | None = None
    _loss: str = "torchrl_otc.objectives.awac.AWACLoss"
    _target_: str = "torchrl_otc.configs.companions.make_loss"


@dataclass
class TransitionVAELossConfig:
    """Config of :class:`~torchrl_otc.objectives.TransitionVAELoss` (d_e's CVAE, OTC paper section 3.5)."""

    vae_network: Any = None
    kl_weight: float = 0.5
    reduction: str | None = None
    use_prioritized_weights: str | bool = "auto"
    gamma: float | None = None
    _loss: str = "torchrl_otc.objectives.transition_vae.TransitionVAELoss"
    _target_: str = "torchrl_otc.configs.companions.make_loss"
