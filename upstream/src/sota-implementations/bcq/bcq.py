# Copyright (c) Meta Platforms, Inc. and affiliates.
#
# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Offline BCQ on a D4RL dataset.

Batch-Constrained deep Q-learning (Fujimoto, Meger and Precup 2019,
https://arxiv.org/abs/1812.02900) with :class:`~torchrl.objectives.BCQLoss`.
Each gradient step updates, in the order of the paper's Algorithm 1, the action
VAE, the twin critics and the perturbation model, then moves the target
networks. Every ``eval.interval`` steps the greedy BCQ policy plays one episode
of the environment. Builders live in ``utils.py``; settings in ``config.yaml``.
"""

from __future__ import annotations

import hydra
import torch
import tqdm
from omegaconf import DictConfig
from utils import (
    build_eval_env,
    build_loss,
    build_networks,
    build_optimisers,
    evaluate,
    greedy_policy,
    load_dataset,
    resolve_device,
    seed_everything,
    start_logger,
)

from torchrl.objectives import BCQLoss, SoftUpdate

# the order in which BCQ updates its parts; each name is a ``<name>_loss`` method
BCQ_PARTS = ("vae", "qvalue", "actor")


def bcq_update(
    batch,
    loss: BCQLoss,
    optimisers: dict[str, torch.optim.Optimizer],
    target_updater: SoftUpdate,
) -> dict[str, float]:
    """One BCQ gradient step on ``batch``; returns scalars to log."""
    stats = {}
    for part in BCQ_PARTS:
        value, info = getattr(loss, f"{part}_loss")(batch)
        optimisers[part].zero_grad(set_to_none=True)
        value.backward()
        optimisers[part].step()
        stats[f"loss_{part}"] = value.item()
        stats.update(
            {
                name: x.float().mean().item()
                for name, x in info.items()
                if name != "td_error"
            }
        )
    target_updater.step()
    return stats


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg: DictConfig) -> None:
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    logger = start_logger(cfg, "BCQ")

    env = build_eval_env(cfg)
    dataset = load_dataset(cfg.data)
    loss = build_loss(cfg, build_networks(cfg, env, device))
    target_updater = SoftUpdate(loss, tau=cfg.loss.tau)
    optimisers = build_optimisers(cfg.optim, loss)
    policy = greedy_policy(loss, cfg.eval.num_candidates)

    total = cfg.optim.gradient_steps
    progress = tqdm.trange(total, desc="BCQ")
    for step in progress:
        stats = bcq_update(
            dataset.sample().to(device), loss, optimisers, target_updater
        )
        if step % cfg.eval.interval == 0 or step == total - 1:
            stats["eval_return"] = evaluate(env, policy, cfg.eval.max_steps)
            progress.set_postfix(eval_return=f"{stats['eval_return']:.1f}")
        evaluated = "eval_return" in stats
        if logger is not None and (evaluated or step % cfg.logger.log_interval == 0):
            for name, value in stats.items():
                logger.log_scalar(name, value, step=step)
    env.close()


if __name__ == "__main__":
    main()
