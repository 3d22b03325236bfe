r"""N BCQ learners updated in one batched call: stacked parameters, one batched matmul per layer.

The numbers equal those of N separate :meth:`BCQ.update <torchrl_otc.trainers.algorithms.BCQ.update>` calls up to
float rounding when each learner's VAE draws come from its own random stream (:meth:`BatchedBCQ.draw_noise`;
tested), and no learner's batch or parameters reach another's gradient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.objectives.utils import distance_loss

from torchrl_otc.modules.models.vae import LOG_STD_MAX, LOG_STD_MIN, ActionVAE, gaussian_kl
from torchrl_otc.objectives.bcq import BCQPerturbation
from torchrl_otc.trainers.algorithms.batched_common import (
    BatchedAlgorithm,
    StackedSequential,
    standard_normal,
)
from torchrl_otc.trainers.algorithms.bcq import BCQ

__all__ = ["BatchedBCQ"]

_ACTOR, _CRITIC, _VAE = "actor_network_params", "qvalue_network_params", "vae_network_params"
_TARGET_ACTOR, _TARGET_CRITIC = "target_actor_network_params", "target_qvalue_network_params"


class BatchedBCQ(BatchedAlgorithm):
    r"""N BCQ learners with stacked parameters, updated by one batched call per part.

    Per learner :math:`i`, the update of :meth:`BCQ.update <torchrl_otc.trainers.algorithms.BCQ.update>`
    (:class:`~torchrl_otc.objectives.BCQLoss`, in the order of BCQ's ``train()``):

    .. math::

        \mathcal{L}^G_i = \frac{1}{|a|}\lVert a - \tilde a \rVert^2 + \beta\,\mathrm{KL}(\mathcal{N}(\mu, \sigma)
            \Vert \mathcal{N}(0, I)),\qquad \tilde a = D_i(s, \mu + \sigma \epsilon_i),

    then, with :math:`a_k = \xi'_i(s', D_i(s', z_{ik}))`, :math:`k = 1..n`,

    .. math::

        y_i = r + \gamma (1 - \mathrm{terminated}) \max_k \big[\lambda \min_j Q'_{ij}(s', a_k)
              + (1 - \lambda) \max_j Q'_{ij}(s', a_k)\big],\qquad
        \mathcal{L}^Q_i = \sum_j (Q_{ij}(s, a) - y_i)^2,

    then :math:`\mathcal{L}^\xi_i = -Q_{i1}(s, \xi_i(s, D_i(s, z_i)))`, then the targets move by ``tau``. The
    VAE, perturbation model and critics run as one ``bmm`` per layer over the learners (the critics over
    ``2N``). :math:`\epsilon_i, z_{ik}, z_i` are learner :math:`i`'s draws (:meth:`draw_noise`).

    Args:
        algorithms: N :class:`~torchrl_otc.trainers.algorithms.BCQ` algorithms with the same config and sizes.

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_otc.configs.algorithms import BCQConfig
        >>> cfg = BCQConfig(hidden_sizes=(16, 16))
        >>> algos = [BCQ(Unbounded(shape=(4,)), Bounded(-1.0, 1.0, (2,)), cfg, seed=i) for i in range(3)]
        >>> batched = BatchedBCQ(algos)
        >>> batches = TensorDict({
        ...     "observation": torch.randn(3, 32, 4), "action": torch.rand(3, 32, 2) * 2 - 1,
        ...     ("next", "observation"): torch.randn(3, 32, 4), ("next", "reward"): torch.randn(3, 32, 1),
        ...     ("next", "done"): torch.zeros(3, 32, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(3, 32, 1, dtype=torch.bool),
        ... }, [3, 32])
        >>> out = batched.update(batches)
        >>> out["loss_vae"].shape, sorted(k for k in out if k.startswith("loss"))
        (torch.Size([3]), ['loss_actor', 'loss_qvalue', 'loss_vae'])
        >>> batched.write_back()
    """

    algorithm_class = BCQ
    label = "BCQ"
    param_sets = (_ACTOR, _CRITIC, _VAE, _TARGET_ACTOR, _TARGET_CRITIC)

    def __init__(self, algorithms: Sequence[BCQ]) -> None:
        super().__init__(algorithms)
        loss = self.algorithms[0].loss
        actor, vae = loss.actor_network.module, loss.vae_network.module
        if (
            type(actor) is not BCQPerturbation
            or not isinstance(vae, ActionVAE)
            or loss.observation_keys != ["observation"]
            or list(loss.qvalue_network.in_keys) != ["observation", "action"]
        ):
            raise ValueError(
                "BatchedBCQ expects the networks of BCQ: a BCQPerturbation actor, an ActionVAE and MLP critics "
                "reading 'observation' and 'action'."
            )
        self._actor = StackedSequential.from_module(loss.actor_network, actor.net, "BCQ actor")
        self._encoder = StackedSequential.from_module(
            loss.vae_network, vae.encoder, "BCQ VAE encoder"
        )
        self._decoder = StackedSequential.from_module(
            loss.vae_network, vae.decoder, "BCQ VAE decoder"
        )
        self._critic = StackedSequential.from_module(
            loss.qvalue_network, loss.qvalue_network.module, "critic"
        )
        self.latent_dim, self.latent_clip = vae.latent_dim, vae.latent_clip
        self.num_samples, self.lmbda, self.kl_weight = loss.num_samples, loss.lmbda, loss.kl_weight
        self.target_selection, self.loss_function = loss.target_selection, loss.loss_function
        self.gamma = float(loss.value_estimator.gamma)

    def draw_noise(self, batch: TensorDictBase) -> dict[str, Tensor]:
        """One learner's draws, in :meth:`BCQ.update`'s order: the VAE's reparameterisation noise ``[B, L]``, the
        latents of the ``n`` target actions per next state ``[n, B, L]`` and of the actor's action ``[1, B, L]``
        (unclipped; :class:`~torchrl_otc.modules.models.vae.ActionVAE` clips them)."""
        like = batch.get("observation")
        b, latent = batch.batch_size[-1], self.latent_dim
        return {
            "vae": standard_normal((b, latent), like),
            "target": standard_normal((self.num_samples, b, latent), like),
            "actor": standard_normal((1, b, latent), like),
        }

    # --------------------------------------------------------------------------------------- networks
    def _decode(self, obs: Tensor, z: Tensor) -> Tensor:
        """``D(s, z)`` squashed into the bounds; ``obs``, ``z`` ``[N, R, *]``."""
        raw = self._decoder(self._tensors(_VAE, self._decoder), torch.cat([obs, z], -1))
        center = self._stack_buffer(_VAE, ("module", "action_center"))
        half = self._stack_buffer(_VAE, ("module", "action_half_range"))
        return center + half * torch.tanh(raw)

    def _perturb(self, name: str, obs: Tensor, action: Tensor) -> Tensor:
        """``clip(a + scale * tanh(f(s, a)), low, high)`` with the actor parameters ``name``."""
        delta = torch.tanh(
            self._actor(self._tensors(name, self._actor), torch.cat([obs, action], -1))
        )
        scale = self._stack_buffer(_ACTOR, ("module", "scale"))
        low = self._stack_buffer(_ACTOR, ("module", "low"))
        high = self._stack_buffer(_ACTOR, ("module", "high"))
        return torch.clamp(action + scale * delta, low, high)

    def _vae_actions(self, obs: Tensor, latent: Tensor) -> Tensor:
        """VAE actions (no gradient) for ``obs`` ``[N, R, o]`` and unclipped latents ``[N, R, L]``."""
        with torch.no_grad():
            return self._decode(obs, latent.clamp(-self.latent_clip, self.latent_clip))

    # ------------------------------------------------------------------------------------------- update
    def _update(self, batches: TensorDictBase, noise: Mapping[str, Tensor]) -> dict[str, Tensor]:
        obs, action = batches.get("observation"), batches.get("action")
        next_obs = batches.get(("next", "observation"))
        reward = batches.get(("next", "reward")).squeeze(-1)
        not_terminated = (~batches.get(("next", "terminated"))).squeeze(-1).to(reward.dtype)
        n, b = obs.shape[:2]
        # 1. the action VAE
        enc = self._encoder(self._tensors(_VAE, self._encoder), torch.cat([obs, action], -1))
        loc, log_std = enc.chunk(2, -1)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        recon = self._decode(obs, loc + log_std.exp() * noise["vae"])
        recon_loss = (recon - action).pow(2).mean(-1)
        kl = gaussian_kl(loc, log_std)
        loss_vae = (recon_loss + self.kl_weight * kl).mean(-1)
        self._step("vae", loss_vae)
        # 2. the critics, on the target of n perturbed VAE actions per next state
        k = self.num_samples
        with torch.no_grad():
            rep = next_obs.unsqueeze(1).expand(n, k, b, next_obs.shape[-1]).reshape(n, k * b, -1)
            sampled = self._vae_actions(rep, noise["target"].reshape(n, k * b, -1))
            next_actions = self._perturb(_TARGET_ACTOR, rep, sampled)
            next_q = self._critics(self._critic, _TARGET_CRITIC, rep, next_actions).reshape(
                n, -1, k, b
            )
            mixed = (
                self.lmbda * next_q.min(1).values + (1 - self.lmbda) * next_q.max(1).values
            )  # [N, k, B]
            if self.target_selection == "mixed":
                next_value = mixed.max(1).values
            else:
                index = next_q[:, 0].argmax(1, keepdim=True)
                next_value = mixed.gather(1, index).squeeze(1)
            target = reward + self.gamma * not_terminated * next_value
        pred = self._critics(self._critic, _CRITIC, obs, action)
        loss_q = (
            distance_loss(
                pred, target.unsqueeze(1).expand_as(pred), loss_function=self.loss_function
            )
            .sum(1)
            .mean(-1)
        )
        self._step("critic", loss_q)
        # 3. the perturbation model
        vae_actions = self._vae_actions(obs, noise["actor"].reshape(n, b, -1))
        actions = self._perturb(_ACTOR, obs, vae_actions)
        q1 = self._critics(self._critic, _CRITIC, obs, actions, index=0, detach=True)
        loss_actor = (-q1).mean(-1)
        self._step("actor", loss_actor)
        self._update_targets()
        return {
            "loss_vae": loss_vae.detach(),
            "loss_qvalue": loss_q.detach(),
            "loss_actor": loss_actor.detach(),
            "vae_reconstruction": recon_loss.detach().mean(-1),
            "vae_kl": kl.detach().mean(-1),
        }
