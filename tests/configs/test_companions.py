"""The config companions have one field per constructor argument, with the constructor's default, and build
what they name."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.modules import MLP, ValueOperator

from torchrl_otc.configs import companions
from torchrl_otc.configs.companions import instantiate

CONFIGS = [
    companions.OTCSamplerConfig,
    companions.MixSamplerConfig,
    companions.OnlineOnlySamplerConfig,
    companions.BalancedReplaySamplerConfig,
    companions.BCQLossConfig,
    companions.AWACLossConfig,
    companions.TransitionVAELossConfig,
]


def target_class(config_cls):
    defaults = config_cls()
    path = getattr(defaults, "_loss", defaults._target_)
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("config_cls", CONFIGS, ids=lambda c: c.__name__)
def test_fields_are_the_constructor_arguments_with_its_defaults(config_cls):
    signature = inspect.signature(target_class(config_cls).__init__)
    arguments = {n: p for n, p in signature.parameters.items() if n != "self"}
    fields = {f.name: f for f in dataclasses.fields(config_cls) if not f.name.startswith("_")}
    fields.pop("gamma", None)  # the loss configs' make_value_estimator(gamma=...), as TorchRL's
    assert set(fields) == set(arguments)
    config = config_cls()
    for name, parameter in arguments.items():
        if parameter.default is inspect.Parameter.empty:
            continue  # required objects (networks, buffers) default to None in the config
        default = parameter.default
        value = getattr(config, name)
        assert (tuple(value) if isinstance(value, tuple) else value) == (
            tuple(default) if isinstance(default, (tuple, list)) else default
        ), name


def test_samplers_are_built_with_their_fields():
    online = TensorDictReplayBuffer(storage=LazyTensorStorage(10))
    sampler = instantiate(
        companions.OTCSamplerConfig(alpha=3.0, online_fraction=0.25), online_buffer=online
    )
    assert (sampler.alpha, sampler.online_fraction) == (3.0, 0.25)
    mix = instantiate({"_target_": "torchrl_otc.MixSampler", "online_fraction": 0.4})
    assert mix.online_fraction == 0.4
    factory = instantiate({"_target_": "torchrl_otc.MixSampler", "_partial_": True})
    assert factory(online_fraction=0.1).online_fraction == 0.1


def test_loss_config_builds_the_loss_and_its_estimator():
    from torchrl_otc.modules.models.vae import ActionVAE
    from torchrl_otc.objectives.bcq import BCQPerturbation

    keys = ["observation", "action"]
    loss = instantiate(
        companions.BCQLossConfig(num_samples=4, gamma=0.9),
        actor_network=TensorDictModule(BCQPerturbation(3, 2), in_keys=keys, out_keys=["action"]),
        qvalue_network=ValueOperator(
            MLP(in_features=5, out_features=1, num_cells=[8]), in_keys=keys
        ),
        vae_network=TensorDictModule(
            ActionVAE(3, 2, hidden_sizes=(8,)), in_keys=keys, out_keys=["recon", "loc", "log_std"]
        ),
    )
    assert type(loss).__name__ == "BCQLoss" and loss.num_samples == 4
    assert float(loss.value_estimator.gamma) == pytest.approx(0.9)
    n = 8
    batch = TensorDict(
        {
            "observation": torch.randn(n, 3),
            "action": torch.rand(n, 2) * 2 - 1,
            ("next", "observation"): torch.randn(n, 3),
            ("next", "reward"): torch.randn(n, 1),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        [n],
    )
    assert torch.isfinite(loss(batch)["loss_qvalue"])


@pytest.mark.parametrize(
    "config,match",
    [
        ({"alpha": 1.0}, "no _target_"),
        ({"_target_": "nowhere.Nothing"}, "names nothing importable"),
        (3, "mapping"),
    ],
)
def test_bad_configs_are_refused_in_one_line(config, match):
    with pytest.raises(ValueError, match=match):
        instantiate(config)
