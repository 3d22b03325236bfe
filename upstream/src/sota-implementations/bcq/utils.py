# Copyright (c) Meta Platforms, Inc. and affiliates.
#
# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Builders used by ``bcq.py``: evaluation env, D4RL data, BCQ networks, loss, optimisers, logging."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict.nn import TensorDictModule
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
from torchrl.modules import ActionVAE, MLP, ValueOperator
from torchrl.objectives import BCQActor, BCQLoss, BCQPerturbation
from torchrl.objectives.utils import ValueEstimators
from torchrl.record.loggers import generate_exp_name, get_logger

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}
# keys the three BCQ networks read
NET_IN_KEYS = ["observation", "action"]


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
    """The env(s) the policy is scored on; BCQ never trains on their data."""
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
    """BCQ's perturbation model ``xi``, a critic (copied by the loss) and the action VAE."""
    spec = env.action_spec_unbatched.to(device)
    n_act = spec.shape[-1]
    n_obs = env.observation_spec_unbatched["observation"].shape[-1]
    net_cfg = cfg.networks
    act = ACTIVATIONS[net_cfg.activation]

    xi = BCQPerturbation(
        n_obs,
        n_act,
        action_spec=spec,
        max_perturbation=net_cfg.max_perturbation,
        hidden_sizes=tuple(net_cfg.actor_hidden),
        activation=act,
    )
    q = MLP(
        in_features=n_obs + n_act,
        out_features=1,
        num_cells=tuple(net_cfg.critic_hidden),
        activation_class=act,
    )
    generator = ActionVAE(
        n_obs,
        n_act,
        action_spec=spec,
        hidden_sizes=tuple(net_cfg.vae_hidden),
        activation=act,
    )
    vae_out = ["vae_reconstruction", "vae_loc", "vae_log_std"]
    nets = {
        "actor": TensorDictModule(xi, in_keys=NET_IN_KEYS, out_keys=["action"]),
        "qvalue": ValueOperator(q, in_keys=NET_IN_KEYS),
        "vae": TensorDictModule(generator, in_keys=NET_IN_KEYS, out_keys=vae_out),
    }
    return {name: net.to(device) for name, net in nets.items()}


def greedy_policy(loss: BCQLoss, num_candidates: int) -> TensorDictModule:
    """The deployed BCQ action: best of ``num_candidates`` perturbed VAE actions under ``Q_1``."""
    return TensorDictModule(
        BCQActor(loss, num_samples=num_candidates),
        in_keys=loss.observation_keys,
        out_keys=[loss.tensor_keys.action],
    )


# --------------------------------------------------------------------------- loss


def build_loss(cfg: DictConfig, nets: dict[str, TensorDictModule]) -> BCQLoss:
    loss_cfg = cfg.loss
    loss = BCQLoss(
        nets["actor"],
        nets["qvalue"],
        nets["vae"],
        num_qvalue_nets=loss_cfg.num_qvalue_nets,
        lmbda=loss_cfg.double_q_lmbda,
        num_samples=loss_cfg.num_samples,
        kl_weight=loss_cfg.kl_weight,
        loss_function=loss_cfg.loss_function,
    )
    estimator = ValueEstimators[loss_cfg.value_estimator]
    hyperparams = {"gamma": loss_cfg.gamma}
    if estimator is ValueEstimators.TDLambda:
        hyperparams["lmbda"] = loss_cfg.lmbda
    return loss.make_value_estimator(estimator, **hyperparams)


def build_optimisers(
    optim_cfg: DictConfig, loss: BCQLoss
) -> dict[str, torch.optim.Optimizer]:
    """One Adam per BCQ component, keyed like the loss's ``<name>_loss`` methods."""
    groups = {
        "vae": loss.vae_network_params,
        "qvalue": loss.qvalue_network_params,
        "actor": loss.actor_network_params,
    }
    return {
        name: torch.optim.Adam(
            [p for p in params.values(True, True) if p.requires_grad],
            lr=optim_cfg.lr,
            weight_decay=optim_cfg.weight_decay,
        )
        for name, params in groups.items()
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
