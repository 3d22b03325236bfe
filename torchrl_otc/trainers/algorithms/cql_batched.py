r"""N CQL learners updated in one batched call: stacked parameters, one batched matmul per layer.

The numbers equal those of N separate :meth:`CQL.update <torchrl_otc.trainers.algorithms.CQL.update>` calls (TorchRL's
``CQLLoss`` with :class:`~torchrl_otc.objectives.BoundedCQLLoss`'s uniform actions) up to float rounding when each
learner's uniform and policy actions come from its own random stream (:meth:`BatchedCQL.draw_noise`; tested), and
no learner's batch or parameters reach another's gradient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.objectives.utils import distance_loss

from torchrl_otc.trainers.algorithms.awac_batched import GaussianActorStack
from torchrl_otc.trainers.algorithms.batched_common import (
    BatchedAlgorithm,
    StackedSequential,
    standard_normal,
    tanh_normal_draw,
)
from torchrl_otc.trainers.algorithms.cql import CQL

__all__ = ["BatchedCQL"]

_ACTOR, _CRITIC, _TARGET_CRITIC = (
    "actor_network_params",
    "qvalue_network_params",
    "target_qvalue_network_params",
)


class BatchedCQL(BatchedAlgorithm):
    r"""N CQL learners with stacked parameters, updated by one batched call.

    Per learner :math:`i`, the update of :meth:`CQL.update <torchrl_otc.trainers.algorithms.CQL.update>`, every
    part from the pre-update parameters (TorchRL's ``CQLLoss``; :math:`\alpha_i = e^{\log\alpha_i}`):

    .. math::

        y_i = r + \gamma (1 - \mathrm{terminated}) \min_j Q'_{ij}(s', a'),\quad a' \sim \pi_i(\cdot|s')

    (minus :math:`\alpha_i \log\pi_i(a'|s')` without ``deterministic_backup``; the max over ``num_random`` policy
    actions with ``max_q_backup``), :math:`\mathcal{L}^Q_i = \sum_j (Q_{ij}(s, a) - y_i)^2`; the conservative term
    :math:`\mathcal{L}^{CQL}_i = \sum_j \big[\overline{T \log(e^{(Q_{ij}(s, u) - \log\mu)/T}
    + e^{(Q_{ij}(s', a'') - \log\pi_i(a''|s'))/T} + e^{(Q_{ij}(s, a') - \log\pi_i(a'|s))/T})} w
    - w\,\overline{Q_{ij}(s, a)}\big]` over ``num_random`` uniform actions :math:`u` in the bounds and policy
    actions :math:`a', a''` (:class:`~torchrl_otc.objectives.BoundedCQLLoss`; :math:`w` = ``min_q_weight``); the
    actor :math:`\mathcal{L}^\pi_i = \alpha_i \log\pi_i(\tilde a|s) - \min_j Q_{ij}(s, \tilde a)`; the temperature
    :math:`\mathcal{L}^\alpha_i = -\log\alpha_i (\log\pi_i(\tilde a|s) + \bar{\mathcal{H}})`; with Lagrange,
    :math:`\mathcal{L}^{\alpha'}_i` (its gradient to :math:`\log\alpha'_i` only). One backward of the sum, each part
    clipped per learner, one Adam step per part, then the target critics move by ``tau``. The critics' values of
    the batch, of the uniform and of the policy actions come from one ``bmm`` per layer over ``2N`` critics.

    Args:
        algorithms: N :class:`~torchrl_otc.trainers.algorithms.CQL` algorithms with the same config and sizes.

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_otc.configs.algorithms import CQLConfig
        >>> cfg = CQLConfig(hidden_sizes=(16, 16), with_lagrange=True)
        >>> algos = [CQL(Unbounded(shape=(4,)), Bounded(-1.0, 1.0, (2,)), cfg, seed=i) for i in range(3)]
        >>> batched = BatchedCQL(algos)
        >>> batches = TensorDict({
        ...     "observation": torch.randn(3, 32, 4), "action": torch.rand(3, 32, 2) * 1.8 - 0.9,
        ...     ("next", "observation"): torch.randn(3, 32, 4), ("next", "reward"): torch.randn(3, 32, 1),
        ...     ("next", "done"): torch.zeros(3, 32, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(3, 32, 1, dtype=torch.bool),
        ... }, [3, 32])
        >>> out = batched.update(batches)
        >>> sorted(k for k in out if k.startswith("loss"))
        ['loss_actor', 'loss_alpha', 'loss_alpha_prime', 'loss_cql', 'loss_qvalue']
        >>> batched.write_back()
    """

    algorithm_class = CQL
    label = "CQL"
    param_sets = (_ACTOR, _CRITIC, _TARGET_CRITIC)
    scalar_params = ("log_alpha", "log_alpha_prime")

    def __init__(self, algorithms: Sequence[CQL]) -> None:
        super().__init__(algorithms)
        loss = self.algorithms[0].loss
        if (
            list(loss.qvalue_network.in_keys) != ["observation", "action"]
            or loss.min_log_alpha is not None
            or loss.max_log_alpha is not None
            or loss.reduction != "mean"
        ):
            raise ValueError(
                "BatchedCQL expects CQL's networks (critics reading 'observation' and 'action'), no alpha bounds "
                "and the mean reduction."
            )
        self._policy = GaussianActorStack(self.algorithms)
        self._critic = StackedSequential.from_module(
            loss.qvalue_network, loss.qvalue_network.module, "critic"
        )
        self.gamma = float(loss.value_estimator.gamma)
        self.loss_function = loss.loss_function
        self.num_random, self.temperature = loss.num_random, loss.temperature
        self.min_q_weight = loss.min_q_weight
        self.max_q_backup, self.deterministic_backup = loss.max_q_backup, loss.deterministic_backup
        self.with_lagrange = loss.with_lagrange
        self.target_action_gap = getattr(loss, "target_action_gap", 0.0)

        def stacked(name: str) -> Tensor:
            return torch.stack([getattr(a.loss, name).detach() for a in self.algorithms]).to(
                self.device
            )

        self._random_center = stacked("random_action_center").unsqueeze(1)
        self._random_half = stacked("random_action_half_range").unsqueeze(1)
        self._random_low = stacked("random_action_low").unsqueeze(1)
        self._random_high = stacked("random_action_high").unsqueeze(1)
        self._random_density = torch.tensor(
            [a.loss.random_log_density for a in self.algorithms], device=self.device
        ).unsqueeze(1)
        self._target_entropy = stacked("target_entropy").reshape(-1, 1)

    def draw_noise(self, batch: TensorDictBase) -> dict[str, Tensor]:
        """One learner's draws, in :meth:`CQL.update`'s order: the next-state policy sample ``[B, act]`` (and the
        ``num_random`` samples per next state of ``max_q_backup``), the uniform actions in ``[-1, 1]``
        ``[B * num_random, act]``, the policy samples at the states and next states ``[B * num_random, act]``,
        and the actor's sample ``[B, act]``."""
        action = batch.get("action")
        b, act = action.shape[-2:]
        k = b * self.num_random
        out = {"next": standard_normal((b, act), action)}
        if self.max_q_backup:
            out["backup"] = standard_normal((k, act), action)
        out["random"] = torch.empty((k, act), dtype=action.dtype, device=action.device).uniform_(
            -1, 1
        )
        out["curr"] = standard_normal((k, act), action)
        out["new"] = standard_normal((k, act), action)
        out["actor"] = standard_normal((b, act), action)
        return out

    def _policy_draw(
        self, loc: Tensor, scale: Tensor, noise: Tensor, repeat: int = 1
    ) -> tuple[Tensor, Tensor]:
        """Actions and log-probabilities of the learners' policies (``loc``, ``scale`` ``[N, B, act]``), each
        state repeated ``repeat`` times in a row (TorchRL's ``repeat_interleave``), from draws ``[N, B * repeat,
        act]``."""
        if repeat > 1:
            loc, scale = loc.repeat_interleave(repeat, 1), scale.repeat_interleave(repeat, 1)
        return tanh_normal_draw(self._policy.distribution(loc, scale), noise)

    def _step_all(self, total: Tensor, alpha_prime_grad: Tensor | None) -> None:
        """One backward of the learners' summed losses ``total`` ``[N]`` into every part (``log_alpha'`` takes
        ``alpha_prime_grad``), each part clipped per learner, then one Adam step per part."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        total.sum().backward()
        if alpha_prime_grad is not None:
            self.params["loss"][("log_alpha_prime",)].grad = alpha_prime_grad
        for part in self.optimizers:
            self._clip_and_step(part)

    def _update(self, batches: TensorDictBase, noise: Mapping[str, Tensor]) -> dict[str, Tensor]:
        obs, action = batches.get("observation"), batches.get("action")
        next_obs = batches.get(("next", "observation"))
        reward = batches.get(("next", "reward")).squeeze(-1)
        not_terminated = (~batches.get(("next", "terminated"))).squeeze(-1).to(reward.dtype)
        n, b = obs.shape[:2]
        r = self.num_random
        policy, actor = self._policy, self._tensors(_ACTOR, self._policy.plan)
        alpha = self.params["loss"][("log_alpha",)].detach().exp().unsqueeze(-1)  # [N, 1]
        # TD target and the policy actions of the conservative term: no gradient to the actor
        with torch.no_grad():
            data_actor = [t.detach() for t in actor]
            loc, scale = policy.loc_scale(data_actor, torch.cat([obs, next_obs], 1))
            loc_s, loc_n = loc.split(b, 1)
            scale_s, scale_n = scale.split(b, 1)
            next_action, next_log_prob = self._policy_draw(loc_n, scale_n, noise["next"])
            if not self.max_q_backup:
                next_value = (
                    self._critics(self._critic, _TARGET_CRITIC, next_obs, next_action).min(1).values
                )
                if not self.deterministic_backup:
                    next_value = next_value - alpha * next_log_prob
            else:
                backup, _ = self._policy_draw(loc_n, scale_n, noise["backup"], r)
                rep_next = next_obs.repeat_interleave(r, 1)
                q = self._critics(self._critic, _TARGET_CRITIC, rep_next, backup).reshape(
                    n, -1, b, r
                )
                next_value = q.max(-1).values.min(1).values
            target = reward + self.gamma * not_terminated * next_value
            unit = noise["random"]
            random_actions = (self._random_center + self._random_half * unit).clamp(
                self._random_low, self._random_high
            )
            curr_actions, curr_log_pi = self._policy_draw(loc_s, scale_s, noise["curr"], r)
            new_actions, new_log_pi = self._policy_draw(loc_n, scale_n, noise["new"], r)
        rep_obs, rep_next = obs.repeat_interleave(r, 1), next_obs.repeat_interleave(r, 1)
        # one forward of the critics: the batch, the uniform, the current-state and the next-state policy actions
        q_all = self._critics(
            self._critic,
            _CRITIC,
            torch.cat([obs, rep_obs, rep_obs, rep_next], 1),
            torch.cat([action, random_actions, curr_actions, new_actions], 1),
        )  # [N, 2, B + 3 B r]
        pred, q_random, q_curr, q_new = q_all.split([b, b * r, b * r, b * r], -1)
        loss_q = (
            distance_loss(
                pred, target.unsqueeze(1).expand_as(pred), loss_function=self.loss_function
            )
            .sum(1)
            .mean(-1)
        )
        cat_q = torch.stack(
            [
                q_random - self._random_density.unsqueeze(1),
                q_new - new_log_pi.unsqueeze(1),
                q_curr - curr_log_pi.unsqueeze(1),
            ],
            -1,
        )  # [N, 2, B r, 3]
        lse = torch.logsumexp(cat_q / self.temperature, -1) * self.min_q_weight * self.temperature
        # TorchRL's cql_q{1,2}_loss broadcast [B r] against [B, 1]; their means are the means' difference
        cql_q = lse.mean(-1) - (pred * self.min_q_weight).mean(-1)  # [N, 2]
        loss_cql = cql_q.sum(1)
        out = {"loss_qvalue": loss_q, "loss_cql": loss_cql}
        total = loss_q + loss_cql
        alpha_prime_grad = None
        if self.with_lagrange:
            log_alpha_prime = self.params["loss"][("log_alpha_prime",)]
            alpha_prime = torch.clamp_max(log_alpha_prime.exp(), max=1000000.0)
            gap = cql_q - self.target_action_gap
            loss_alpha_prime = (-alpha_prime * gap[:, 0] - alpha_prime * gap[:, 1]) * 0.5
            out["loss_alpha_prime"] = loss_alpha_prime
            (alpha_prime_grad,) = torch.autograd.grad(
                loss_alpha_prime.sum(), [log_alpha_prime], retain_graph=True
            )
        # the actor and the temperature
        loc, scale = policy.loc_scale(actor, obs)
        pi_action, log_prob = tanh_normal_draw(policy.distribution(loc, scale), noise["actor"])
        min_q = self._critics(self._critic, _CRITIC, obs, pi_action, detach=True).min(1).values
        loss_actor = (alpha * log_prob - min_q).mean(-1)
        log_alpha = self.params["loss"][("log_alpha",)].unsqueeze(-1)
        loss_alpha = (-log_alpha * (log_prob.detach() + self._target_entropy)).mean(-1)
        self._step_all(total + loss_actor + loss_alpha, alpha_prime_grad)
        self._update_targets()
        out.update(loss_actor=loss_actor, loss_alpha=loss_alpha, alpha=alpha.squeeze(-1))
        out["entropy"] = -log_prob.detach().mean(-1)
        return {k: v.detach() for k, v in out.items()}
