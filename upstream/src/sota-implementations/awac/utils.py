# Copyright (c) Meta Platforms, Inc. and affiliates.
#
# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Builders used by ``awac.py``: evaluation env, D4RL data, AWAC networks, loss, optimisers, logging."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn

from torchrl.data.datasets.d4rl import D4RLExperienceReplay
from torchrl.data.replay_buffers import SamplerWithoutReplacement
from torchrl.envs import (
    DoubleToFloat,
    EnvCreator,
    ParallelEnv,
    StepCounter,
    TransformedEnv,
)
from torchrl.envs.libs.gym import GymEnv, set_gym_backend
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import AWACLoss
from torchrl.objectives.utils import ValueEstimators
from torchrl.record.loggers import generate_exp_name, get_logger

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


def resolve_device(requested: str | None) -> torch.device:
    """``requested``, or the first CUDA device when there is one, else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


# --------------------------------------------------------------------------- data


def load_dataset(data_cfg: DictConfig) -> D4RLExperienceReplay:
    """The D4RL transitions, sampled in shuffled epochs of ``data_cfg.batch_size``."""
    dataset = D4RLExperienceReplay(
        data_cfg.dataset,
        direct_download=True,
        batch_size=data_cfg.batch_size,
        sampler=SamplerWithoutReplacement(drop_last=True),
        prefetch=data_cfg.prefetch,
    )
    dataset.append_transform(DoubleToFloat())
    return dataset


# --------------------------------------------------------------------------- env


def _gym(name: str, library: str) -> GymEnv:
    with set_gym_backend(library):
        return GymEnv(name)


def build_eval_env(cfg: DictConfig) -> TransformedEnv:
    """The env(s) the policy is scored on; offline AWAC never trains on their data."""
    factory = partial(_gym, cfg.env.name, cfg.env.library)
    if cfg.eval.num_envs > 1:
        base = ParallelEnv(cfg.eval.num_envs, EnvCreator(factory))
    else:
        base = factory()
    env = TransformedEnv(base)
    env.append_transform(DoubleToFloat())
    env.append_transform(StepCounter(max_steps=cfg.env.max_episode_steps))
    env.set_seed(cfg.seed)
    return env


@torch.no_grad()
def evaluate(env: TransformedEnv, policy: TensorDictModule, max_steps: int) -> float:
    """Mean undiscounted return of one episode (per env) of ``policy``."""
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        episode = env.rollout(max_steps, policy, auto_cast_to_device=True)
    # rewards are [*envs, time, 1]: sum over time, average over envs
    return episode.get(("next", "reward")).sum(-2).mean().item()


# --------------------------------------------------------------------------- networks


def build_networks(
    cfg: DictConfig, env: TransformedEnv, device: torch.device
) -> dict[str, TensorDictModule]:
    """A tanh-Gaussian policy ``pi(a|s)`` and a critic ``Q(s, a)`` (copied by the loss)."""
    spec = env.action_spec_unbatched.to(device)
    n_act = spec.shape[-1]
    n_obs = env.observation_spec_unbatched["observation"].shape[-1]
    net_cfg = cfg.networks
    act = ACTIVATIONS[net_cfg.activation]

    # the trunk outputs the Gaussian's location and (positive) scale before the tanh
    gaussian_head = nn.Sequential(
        MLP(
            in_features=n_obs,
            out_features=2 * n_act,
            num_cells=tuple(net_cfg.actor_hidden),
            activation_class=act,
        ),
        NormalParamExtractor(
            scale_mapping=f"biased_softplus_{net_cfg.init_scale}",
            scale_lb=net_cfg.min_scale,
        ),
    )
    bounds = {"low": spec.space.low, "high": spec.space.high, "tanh_loc": False}
    policy = ProbabilisticActor(
        TensorDictModule(gaussian_head, ["observation"], ["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs=bounds,
        default_interaction_type=ExplorationType.RANDOM,
    )
    q = MLP(
        in_features=n_obs + n_act,
        out_features=1,
        num_cells=tuple(net_cfg.critic_hidden),
        activation_class=act,
    )
    critic = ValueOperator(q, in_keys=["observation", "action"])
    return {"actor": policy.to(device), "qvalue": critic.to(device)}


# --------------------------------------------------------------------------- loss


def build_loss(cfg: DictConfig, nets: dict[str, TensorDictModule]) -> AWACLoss:
    loss_cfg = cfg.loss
    loss = AWACLoss(
        nets["actor"],
        nets["qvalue"],
        num_qvalue_nets=loss_cfg.num_qvalue_nets,
        temperature=loss_cfg.temperature,
        max_weight=loss_cfg.max_weight,
        num_value_samples=loss_cfg.num_value_samples,
        loss_function=loss_cfg.loss_function,
    )
    estimator = ValueEstimators[loss_cfg.value_estimator]
    hyperparams = {"gamma": loss_cfg.gamma}
    if estimator is ValueEstimators.TDLambda:
        hyperparams["lmbda"] = loss_cfg.lmbda
    return loss.make_value_estimator(estimator, **hyperparams)


def build_optimisers(
    optim_cfg: DictConfig, loss: AWACLoss
) -> dict[str, torch.optim.Optimizer]:
    """One Adam for the critics and one for the policy, keyed like the loss's ``<name>_loss`` methods."""
    groups = {
        "qvalue": (loss.qvalue_network_params, optim_cfg.critic_lr),
        "actor": (loss.actor_network_params, optim_cfg.actor_lr),
    }
    return {
        name: torch.optim.Adam(
            [p for p in params.values(True, True) if p.requires_grad],
            lr=lr,
            weight_decay=optim_cfg.weight_decay,
        )
        for name, (params, lr) in groups.items()
    }


# --------------------------------------------------------------------------- logging


def start_logger(cfg: DictConfig, algo: str):
    """A TorchRL logger for ``cfg.logger.backend`` (csv, tensorboard, wandb), or None if it is empty."""
    log_cfg = cfg.logger
    if not log_cfg.backend:
        return None
    options = {}
    if log_cfg.backend == "wandb":
        options["wandb_kwargs"] = {
            "project": log_cfg.project,
            "group": log_cfg.group,
            "mode": log_cfg.mode,
            "config": OmegaConf.to_container(cfg, resolve=True),
        }
    return get_logger(
        log_cfg.backend,
        logger_name=f"{algo.lower()}_logs",
        experiment_name=generate_exp_name(algo, log_cfg.exp_name),
        **options,
    )
