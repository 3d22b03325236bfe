"""BCQ (Fujimoto, Meger and Precup 2019), one of the OTC paper's base algorithms (section 4, Table 3)."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor
from torchrl.data import Bounded

from torchrl_otc.configs.algorithms import BCQConfig
from torchrl_otc.modules.models.vae import ActionVAE
from torchrl_otc.objectives.bcq import BCQActor, BCQLoss, BCQPerturbation
from torchrl_otc.objectives.utils import critic_values
from torchrl_otc.trainers.algorithms.base import Algorithm, Parts
from torchrl_otc.trainers.algorithms.networks import (
    ACTION_KEY,
    OBSERVATION_KEY,
    actor_critic_parts,
    make_critic,
    trainable,
)

__all__ = ["BCQ"]


class BCQ(Algorithm):
    r"""BCQ for one agent: action VAE, perturbation actor and twin critics (OTC paper section 4, Table 3).

    Networks (Table 3: MLPs of ``hidden_sizes``, the VAE's too unless ``vae_hidden_sizes``): the perturbation
    model :class:`~torchrl_otc.objectives.BCQPerturbation`, the action VAE
    :class:`~torchrl_otc.modules.models.vae.ActionVAE` and two critics, trained by
    :class:`~torchrl_otc.objectives.BCQLoss`. The deployment policy is
    :class:`~torchrl_otc.objectives.BCQActor` (the best of ``deploy_num_samples`` perturbed VAE actions under
    :math:`Q_1`). Update: the order of BCQ's ``train()``: VAE, critics, actor, then the targets.

    For the value distance ``d_q``: ``V(s)`` from ``actions="policy"`` is :math:`Q` of the greedy action among
    ``num_samples`` perturbed VAE actions (BCQ's own target); from ``"sample"`` the mean of :math:`Q` over
    ``num_samples`` perturbed VAE actions.

    Args:
        observation_spec: the agent's observation spec, shape ``[obs_dim]``.
        action_spec: the agent's :class:`~torchrl.data.Bounded` action spec, shape ``[act_dim]``.
        config: a :class:`~torchrl_otc.configs.algorithms.BCQConfig`; Table 3's defaults when omitted.
        device: where to build the parameters. Defaults to the CPU.

    Keyword Args:
        seed: seed of the parameter initialisation (the global random state is left untouched).

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Unbounded
        >>> algo = BCQ(Unbounded(shape=(4,)), Bounded(-1.0, 1.0, shape=(2,)), seed=0)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(32, 4), "action": torch.rand(32, 2) * 2 - 1,
        ...     ("next", "observation"): torch.randn(32, 4), ("next", "reward"): torch.randn(32, 1),
        ...     ("next", "done"): torch.zeros(32, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(32, 1, dtype=torch.bool),
        ... }, [32])
        >>> metrics = algo.update(batch)
        >>> [k for k in metrics if k.startswith("loss_")]
        ['loss_vae', 'loss_qvalue', 'loss_actor']
        >>> algo.state_value(torch.randn(5, 4), actions="sample", num_samples=3).shape
        torch.Size([5])
    """

    name = "bcq"
    loss: BCQLoss

    def _build(
        self,
        cfg: BCQConfig,
        obs_dim: int,
        act_dim: int,
        action_spec: Bounded,
        low: Tensor,
        high: Tensor,
        device: torch.device,
    ) -> tuple[BCQLoss, TensorDictModule, Parts]:
        act = cfg.activation_class
        actor = TensorDictModule(
            BCQPerturbation(
                obs_dim,
                act_dim,
                low=low,
                high=high,
                max_perturbation=cfg.max_perturbation,
                hidden_sizes=cfg.hidden_sizes,
                activation=act,
            ),
            in_keys=[OBSERVATION_KEY, ACTION_KEY],
            out_keys=[ACTION_KEY],
        ).to(device)
        vae = TensorDictModule(
            ActionVAE(
                obs_dim,
                act_dim,
                cfg.latent_dim,
                low=low,
                high=high,
                hidden_sizes=cfg.vae_hidden_sizes or cfg.hidden_sizes,
                activation=act,
            ),
            in_keys=[OBSERVATION_KEY, ACTION_KEY],
            out_keys=["vae_reconstruction", "vae_loc", "vae_log_std"],
        ).to(device)
        loss = BCQLoss(
            actor,
            make_critic(cfg, obs_dim, act_dim).to(device),
            vae,
            lmbda=cfg.lmbda,
            num_samples=cfg.num_samples,
            kl_weight=cfg.kl_weight,
            target_selection=cfg.target_selection,
            loss_function=cfg.loss_function,
        )
        policy = TensorDictModule(
            BCQActor(loss, num_samples=cfg.deploy_num_samples),
            in_keys=loss.observation_keys,
            out_keys=[ACTION_KEY],
        )
        parts = {
            "vae": (trainable(loss.vae_network_params), cfg.vae_lr),
            **actor_critic_parts(loss, cfg),
        }
        return loss, policy, parts

    def _update(self, batch: TensorDictBase) -> dict[str, Tensor]:
        # order of BCQ's train(): VAE, critic, actor, then the targets.
        loss = self.loss
        loss_vae, meta_vae = loss.vae_loss(batch)
        self._step("vae", loss_vae)
        loss_q, meta_q = loss.qvalue_loss(batch)
        self._step("critic", loss_q)
        loss_actor, meta_actor = loss.actor_loss(batch)
        self._step("actor", loss_actor)
        self.target_updater.step()
        meta_q.pop("td_error")
        return {
            "loss_vae": loss_vae,
            "loss_qvalue": loss_q,
            "loss_actor": loss_actor,
            **meta_vae,
            **meta_q,
            **meta_actor,
        }

    def _critic_values(self, observation: Tensor, action: Tensor) -> Tensor:
        inputs = {OBSERVATION_KEY: observation, ACTION_KEY: action}
        return critic_values(self.loss, inputs, self.loss.qvalue_network_params)

    def _policy_actions(self, observation: Tensor, num_samples: int) -> Tensor:
        return self._greedy(num_samples)(observation)

    def _greedy(self, num_samples: int) -> BCQActor:
        """BCQ's greedy actor with ``num_samples`` candidates (built once per ``num_samples``)."""
        cache = self.__dict__.setdefault("_greedy_actors", {})
        if num_samples not in cache:
            cache[num_samples] = BCQActor(self.loss, num_samples=num_samples)
        return cache[num_samples]

    def _sampled_actions(self, observation: Tensor, num_samples: int) -> Tensor:
        return self.loss.perturbed_vae_actions(
            {OBSERVATION_KEY: observation}, num_samples, self.loss.actor_network_params
        )
