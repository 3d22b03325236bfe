"""CQL (Kumar et al. 2020), one of the OTC paper's base algorithms (section 4, Table 3), on TorchRL's CQLLoss."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor
from torchrl.data import Bounded

from torchrl_otc.configs.algorithms import CQLConfig
from torchrl_otc.objectives.cql import BoundedCQLLoss
from torchrl_otc.trainers.algorithms.base import Algorithm, Parts
from torchrl_otc.trainers.algorithms.networks import (
    actor_critic_parts,
    deterministic_policy,
    make_critic,
    make_gaussian_actor,
)

__all__ = ["CQL"]


class CQL(Algorithm):
    r"""CQL for one agent: TorchRL's ``CQLLoss`` with its uniform actions drawn in the bounds (section 4, Table 3).

    Networks (Table 3: MLPs of ``hidden_sizes``): a TanhNormal actor squashed into the action bounds and two
    critics, trained by :class:`~torchrl_otc.objectives.BoundedCQLLoss` (TorchRL's
    :class:`~torchrl.objectives.CQLLoss` with the uniform actions of its conservative term drawn in the action
    bounds, not ``[-1, 1]``); the policy deploys the squashed mean. Parts: ``"actor"``, ``"critic"``,
    ``"alpha"`` (unless ``fixed_alpha``) and ``"alpha_prime"`` (with Lagrange). Update: every part from the
    pre-update parameters (as TorchRL's and CORL's CQL scripts do), then the targets.

    For the value distance ``d_q``: ``V(s)`` from ``actions="policy"`` is :math:`Q` of the squashed mean; from
    ``"sample"`` the mean of :math:`Q` over ``num_samples`` policy samples.

    Args:
        observation_spec: the agent's observation spec, shape ``[obs_dim]``.
        action_spec: the agent's :class:`~torchrl.data.Bounded` action spec, shape ``[act_dim]``.
        config: a :class:`~torchrl_otc.configs.algorithms.CQLConfig`; Table 3's defaults when omitted.
        device: where to build the parameters. Defaults to the CPU.

    Keyword Args:
        seed: seed of the parameter initialisation (the global random state is left untouched).

    Examples:
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_otc.configs.algorithms import CQLConfig
        >>> algo = CQL(Unbounded(shape=(4,)), Bounded(-0.1, 0.1, (2,)), CQLConfig(with_lagrange=True), seed=0)
        >>> sorted(algo.optimizers)
        ['actor', 'alpha', 'alpha_prime', 'critic']
        >>> algo.q_value(torch.zeros(3, 4), torch.zeros(3, 2), reduction="min").shape
        torch.Size([3])
    """

    name = "cql"
    loss: BoundedCQLLoss

    def _build(
        self,
        cfg: CQLConfig,
        obs_dim: int,
        act_dim: int,
        action_spec: Bounded,
        low: Tensor,
        high: Tensor,
        device: torch.device,
    ) -> tuple[BoundedCQLLoss, TensorDictModule, Parts]:
        actor = make_gaussian_actor(cfg, obs_dim, act_dim, action_spec, low, high).to(device)
        loss = BoundedCQLLoss(
            actor,
            make_critic(cfg, obs_dim, act_dim).to(device),
            loss_function=cfg.loss_function,
            alpha_init=cfg.alpha_init,
            fixed_alpha=cfg.fixed_alpha,
            action_spec=action_spec,
            temperature=cfg.cql_temperature,
            min_q_weight=cfg.min_q_weight,
            max_q_backup=cfg.max_q_backup,
            deterministic_backup=cfg.deterministic_backup,
            num_random=cfg.num_random,
            with_lagrange=cfg.with_lagrange,
            lagrange_thresh=cfg.lagrange_thresh,
        )
        policy = deterministic_policy(actor)
        parts = actor_critic_parts(loss, cfg)
        if not cfg.fixed_alpha:
            parts["alpha"] = ([loss.log_alpha], cfg.alpha_lr)
        if cfg.with_lagrange:
            parts["alpha_prime"] = ([loss.log_alpha_prime], cfg.alpha_lr)
        return loss, policy, parts

    def _update(self, batch: TensorDictBase) -> dict[str, Tensor]:
        # CQLLoss's parts all read the pre-update parameters (as TorchRL's and CORL's CQL scripts do). The critic,
        # actor and alpha losses share no parameter, so one backward of their sum gives each part its own
        # gradient. The Lagrange loss -alpha' (gap - thresh) also depends on the critic through the CQL gap: its
        # gradient must reach log_alpha' only (in the CQL authors' code and TorchRL's script the critic's
        # gradients are zeroed after the alpha' step), so it is taken separately with autograd.grad.
        loss = self.loss
        td = batch.copy()  # q_loss writes pred_q1/pred_q2 into its input
        loss_q, meta_q = loss.q_loss(td)
        loss_cql, _ = loss.cql_loss(td)
        out = {"loss_qvalue": loss_q, "loss_cql": loss_cql}
        total = loss_q + loss_cql
        alpha_prime_grad = None
        if loss.with_lagrange:
            loss_alpha_prime, _ = loss.alpha_prime_loss(td)
            out["loss_alpha_prime"] = loss_alpha_prime
            (alpha_prime_grad,) = torch.autograd.grad(
                loss_alpha_prime, [loss.log_alpha_prime], retain_graph=True
            )
        loss_actor, meta_actor = loss.actor_loss(td)
        loss_alpha, _ = loss.alpha_loss(meta_actor, mask_tensordict=td)
        total = total + loss_actor + loss_alpha
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        total.backward()
        if alpha_prime_grad is not None:
            loss.log_alpha_prime.grad = alpha_prime_grad
        for part in self.optimizers:
            self._clip_and_step(part)
        self.target_updater.step()
        out.update(loss_actor=loss_actor, loss_alpha=loss_alpha, alpha=loss._alpha)
        out["entropy"] = -meta_actor[loss.tensor_keys.log_prob].mean()
        return out
