"""AWAC (Nair et al. 2020), one of the OTC paper's base algorithms (section 4, Table 3)."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor
from torchrl.data import Bounded

from torchrl_otc.configs.algorithms import AWACConfig
from torchrl_otc.objectives.awac import AWACLoss
from torchrl_otc.objectives.utils import critic_values
from torchrl_otc.trainers.algorithms.base import Algorithm, Parts
from torchrl_otc.trainers.algorithms.networks import (
    ACTION_KEY,
    OBSERVATION_KEY,
    actor_critic_parts,
    deterministic_policy,
    make_critic,
    make_gaussian_actor,
)

__all__ = ["AWAC"]


class AWAC(Algorithm):
    r"""AWAC for one agent: a TanhNormal policy and twin critics (OTC paper section 4, Table 3).

    Networks (Table 3: MLPs of ``hidden_sizes``): a TanhNormal actor squashed into the action bounds and two
    critics, trained by :class:`~torchrl_otc.objectives.AWACLoss`; the policy deploys the squashed mean
    (:class:`~torchrl_otc.trainers.algorithms.networks.DeterministicPolicy`). Update: CORL's AWAC order:
    critics, actor, then the targets.

    For the value distance ``d_q``: ``V(s)`` from ``actions="policy"`` is :math:`Q` of the squashed mean; from
    ``"sample"`` the mean of :math:`Q` over ``num_samples`` policy samples.

    Args:
        observation_spec: the agent's observation spec, shape ``[obs_dim]``.
        action_spec: the agent's :class:`~torchrl.data.Bounded` action spec, shape ``[act_dim]``.
        config: an :class:`~torchrl_otc.configs.algorithms.AWACConfig`; Table 3's defaults when omitted.
        device: where to build the parameters. Defaults to the CPU.

    Keyword Args:
        seed: seed of the parameter initialisation (the global random state is left untouched).

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_otc.configs.algorithms import AWACConfig
        >>> algo = AWAC(Unbounded(shape=(4,)), Bounded(-1.0, 1.0, (2,)), AWACConfig(hidden_sizes=(32,)), seed=0)
        >>> obs = torch.randn(6, 4)
        >>> algo.state_value(obs).shape, algo.state_value(obs, actions="sample", num_samples=8).shape
        (torch.Size([6]), torch.Size([6]))
    """

    name = "awac"
    loss: AWACLoss

    def _build(
        self,
        cfg: AWACConfig,
        obs_dim: int,
        act_dim: int,
        action_spec: Bounded,
        low: Tensor,
        high: Tensor,
        device: torch.device,
    ) -> tuple[AWACLoss, TensorDictModule, Parts]:
        actor = make_gaussian_actor(cfg, obs_dim, act_dim, action_spec, low, high).to(device)
        loss = AWACLoss(
            actor,
            make_critic(cfg, obs_dim, act_dim).to(device),
            temperature=cfg.temperature,
            max_weight=cfg.max_weight,
            num_value_samples=cfg.num_value_samples,
            loss_function=cfg.loss_function,
        )
        policy = deterministic_policy(actor)
        parts = actor_critic_parts(loss, cfg)
        return loss, policy, parts

    def _update(self, batch: TensorDictBase) -> dict[str, Tensor]:
        # CORL's AWAC order: critic, actor, then the targets.
        loss = self.loss
        loss_q, meta_q = loss.qvalue_loss(batch)
        self._step("critic", loss_q)
        loss_actor, meta_actor = loss.actor_loss(batch)
        self._step("actor", loss_actor)
        self.target_updater.step()
        meta_q.pop("td_error")
        return {"loss_qvalue": loss_q, "loss_actor": loss_actor, **meta_q, **meta_actor}

    def _critic_values(self, observation: Tensor, action: Tensor) -> Tensor:
        inputs = {OBSERVATION_KEY: observation, ACTION_KEY: action}
        return critic_values(self.loss, inputs, self.loss.qvalue_network_params)
