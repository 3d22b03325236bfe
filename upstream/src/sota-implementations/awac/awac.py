# Copyright (c) Meta Platforms, Inc. and affiliates.
#
# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""Offline AWAC on a D4RL dataset.

Advantage-Weighted Actor-Critic (Nair, Dalal, Gupta and Levine 2020,
https://arxiv.org/abs/2006.09359) with :class:`~torchrl.objectives.AWACLoss`.
Each gradient step fits the twin critics to their TD target, then the policy
by advantage-weighted likelihood of the dataset actions (Algorithm 1), then
moves the target critics. Every ``eval.interval`` steps the policy's mode plays
one episode of the environment. Builders live in ``utils.py``; settings in
``config.yaml``.
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
    load_dataset,
    resolve_device,
    seed_everything,
    start_logger,
)

from torchrl.objectives import AWACLoss, SoftUpdate

# the order in which AWAC updates its parts; each name is a ``<name>_loss`` method
AWAC_PARTS = ("qvalue", "actor")


def awac_update(
    batch,
    loss: AWACLoss,
    optimisers: dict[str, torch.optim.Optimizer],
    target_updater: SoftUpdate,
) -> dict[str, float]:
    """One AWAC gradient step on ``batch``; returns scalars to log."""
    stats = {}
    for part in AWAC_PARTS:
        value, info = getattr(loss, f"{part}_loss")(batch)
        optimisers[part].zero_grad(set_to_none=True)
        value.backward()
        optimisers[part].step()
        stats[f"loss_{part}"] = value.item()
        stats.update(
            {n: x.float().mean().item() for n, x in info.items() if n != "td_error"}
        )
    target_updater.step()
    return stats


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg: DictConfig) -> None:
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    logger = start_logger(cfg, "AWAC")

    env = build_eval_env(cfg)
    dataset = load_dataset(cfg.data)
    nets = build_networks(cfg, env, device)
    loss = build_loss(cfg, nets)
    target_updater = SoftUpdate(loss, tau=cfg.loss.tau)
    optimisers = build_optimisers(cfg.optim, loss)

    total = cfg.optim.gradient_steps
    progress = tqdm.trange(total, desc="AWAC")
    for step in progress:
        stats = awac_update(
            dataset.sample().to(device), loss, optimisers, target_updater
        )
        if step % cfg.eval.interval == 0 or step == total - 1:
            # ExplorationType.DETERMINISTIC in evaluate(): the policy's mode
            stats["eval_return"] = evaluate(env, nets["actor"], cfg.eval.max_steps)
            progress.set_postfix(eval_return=f"{stats['eval_return']:.1f}")
        evaluated = "eval_return" in stats
        if logger is not None and (evaluated or step % cfg.logger.log_interval == 0):
            for name, value in stats.items():
                logger.log_scalar(name, value, step=step)
    env.close()


if __name__ == "__main__":
    main()
