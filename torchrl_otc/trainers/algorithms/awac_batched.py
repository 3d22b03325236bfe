r"""N AWAC learners updated in one batched call: stacked parameters, one batched matmul per layer.

The numbers equal those of N separate :meth:`AWAC.update <torchrl_otc.trainers.algorithms.AWAC.update>` calls up
to float rounding when each learner's policy samples come from its own random stream
(:meth:`BatchedAWAC.draw_noise`; tested), and no learner's batch or parameters reach another's gradient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor
from torchrl.modules import TanhNormal
from torchrl.objectives.utils import distance_loss

from torchrl_otc.trainers.algorithms.awac import AWAC
from torchrl_otc.trainers.algorithms.base import Algorithm
from torchrl_otc.trainers.algorithms.batched_common import (
    BatchedAlgorithm,
    StackedSequential,
    standard_normal,
)

__all__ = ["BatchedAWAC", "GaussianActorStack"]

_ACTOR, _CRITIC, _TARGET_CRITIC = (
    "actor_network_params",
    "qvalue_network_params",
    "target_qvalue_network_params",
)


class GaussianActorStack:
    """The TanhNormal actor of AWAC and CQL (:func:`~torchrl_otc.trainers.algorithms.networks.make_gaussian_actor`)
    on stacked parameters: MLP, ``NormalParamExtractor``, TanhNormal in each learner's action bounds.

    Args:
        algorithms: the learners' algorithms (their actors give the structure and the bounds).

    Raises:
        ValueError: the actor is not an MLP followed by a ``NormalParamExtractor`` and a TanhNormal head.

    Examples:
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_otc.configs.algorithms import AWACConfig
        >>> algos = [AWAC(Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (2,)), AWACConfig(hidden_sizes=(8,)), seed=i)
        ...          for i in range(2)]
        >>> actor = GaussianActorStack(algos)
        >>> params = {k: torch.stack([a.loss.actor_network_params.get(k) for a in algos]) for k in actor.plan.keys}
        >>> loc, scale = actor.loc_scale([params[k] for k in actor.plan.keys], torch.randn(2, 5, 3))
        >>> actor.distribution(loc, scale).batch_shape
        torch.Size([2, 5])
    """

    def __init__(self, algorithms: Sequence[Algorithm]) -> None:
        actor = algorithms[0].loss.actor_network
        mods = list(getattr(actor, "module", ()))
        body = mods[0] if mods else None
        head = mods[1] if len(mods) > 1 else None
        seq = getattr(body, "module", None)
        if (
            len(mods) != 2
            or type(body) is not TensorDictModule
            or list(body.in_keys) != ["observation"]
            or not isinstance(seq, torch.nn.Sequential)
            or len(seq) != 2
            or getattr(head, "distribution_class", None) is not TanhNormal
        ):
            raise ValueError(
                "The batched learners expect the TanhNormal actor of AWAC and CQL (an MLP reading 'observation', a "
                "NormalParamExtractor, a TanhNormal)."
            )
        self.plan = StackedSequential.from_module(actor, seq[0], "actor")
        self.extractor = seq[1]
        kwargs: dict[str, Any] = dict(head.distribution_kwargs)
        for bound in ("low", "high"):
            if bound in kwargs:
                values = [
                    torch.as_tensor(a.loss.actor_network.module[1].distribution_kwargs[bound])
                    for a in algorithms
                ]
                kwargs[bound] = (
                    torch.stack(values).to(algorithms[0].device).unsqueeze(1)
                )  # [N, 1, act]
        self.kwargs = kwargs

    def loc_scale(self, tensors: Sequence[Tensor], obs: Tensor) -> tuple[Tensor, Tensor]:
        """``(loc, scale)`` ``[N, R, act]`` of observations ``[N, R, obs]``."""
        return self.extractor(self.plan(tensors, obs))

    def distribution(self, loc: Tensor, scale: Tensor) -> TanhNormal:
        """The TanhNormal of each learner (its bounds), batch ``[N, R]``."""
        return TanhNormal(loc, scale, **self.kwargs)


class BatchedAWAC(BatchedAlgorithm):
    r"""N AWAC learners with stacked parameters, updated by one batched call per part.

    Per learner :math:`i`, the update of :meth:`AWAC.update <torchrl_otc.trainers.algorithms.AWAC.update>`
    (:class:`~torchrl_otc.objectives.AWACLoss`, CORL's order): the critics on

    .. math::

        y_i = r + \gamma (1 - \mathrm{terminated}) \min_j Q'_{ij}(s', a'),\quad a' \sim \pi_i(\cdot|s'),\qquad
        \mathcal{L}^Q_i = \sum_j (Q_{ij}(s, a) - y_i)^2,

    then the actor on
    :math:`\mathcal{L}^\pi_i = -\log\pi_i(a|s) \min(\exp(A_i(s, a) / \lambda), w_{\max})` with
    :math:`A_i = \min_j Q_{ij}(s, a) - \frac{1}{m}\sum_k \min_j Q_{ij}(s, a_k)`, :math:`a_k \sim \pi_i(\cdot|s)`
    (critics after their step), then the target critics move by ``tau``. The actor and critics run as one
    ``bmm`` per layer over the learners; the policy samples are learner :math:`i`'s draws
    (:meth:`draw_noise`).

    Args:
        algorithms: N :class:`~torchrl_otc.trainers.algorithms.AWAC` algorithms with the same config and sizes.

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_otc.configs.algorithms import AWACConfig
        >>> cfg = AWACConfig(hidden_sizes=(16, 16))
        >>> algos = [AWAC(Unbounded(shape=(4,)), Bounded(-1.0, 1.0, (2,)), cfg, seed=i) for i in range(3)]
        >>> batched = BatchedAWAC(algos)
        >>> batches = TensorDict({
        ...     "observation": torch.randn(3, 32, 4), "action": torch.rand(3, 32, 2) * 1.8 - 0.9,
        ...     ("next", "observation"): torch.randn(3, 32, 4), ("next", "reward"): torch.randn(3, 32, 1),
        ...     ("next", "done"): torch.zeros(3, 32, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(3, 32, 1, dtype=torch.bool),
        ... }, [3, 32])
        >>> out = batched.update(batches)
        >>> out["loss_actor"].shape
        torch.Size([3])
        >>> batched.write_back()
    """

    algorithm_class = AWAC
    label = "AWAC"
    param_sets = (_ACTOR, _CRITIC, _TARGET_CRITIC)

    def __init__(self, algorithms: Sequence[AWAC]) -> None:
        super().__init__(algorithms)
        loss = self.algorithms[0].loss
        if loss.observation_keys != ["observation"] or list(loss.qvalue_network.in_keys) != [
            "observation",
            "action",
        ]:
            raise ValueError("BatchedAWAC expects networks reading 'observation' (and 'action').")
        self._policy = GaussianActorStack(self.algorithms)
        self._critic = StackedSequential.from_module(
            loss.qvalue_network, loss.qvalue_network.module, "critic"
        )
        self.gamma = float(loss.value_estimator.gamma)
        self.temperature, self.max_weight = loss.temperature, loss.max_weight
        self.num_value_samples, self.loss_function = loss.num_value_samples, loss.loss_function

    def draw_noise(self, batch: TensorDictBase) -> dict[str, Tensor]:
        """One learner's draws, in :meth:`AWAC.update`'s order: the next-state policy sample ``[B, act]`` and the
        ``m`` policy samples of ``V(s)`` ``[m, B, act]`` (standard normal, before ``loc + scale *``)."""
        action = batch.get("action")
        b, act = action.shape[-2:]
        return {
            "next": standard_normal((b, act), action),
            "value": standard_normal((self.num_value_samples, b, act), action),
        }

    def _update(self, batches: TensorDictBase, noise: Mapping[str, Tensor]) -> dict[str, Tensor]:
        obs, action = batches.get("observation"), batches.get("action")
        next_obs = batches.get(("next", "observation"))
        reward = batches.get(("next", "reward")).squeeze(-1)
        not_terminated = (~batches.get(("next", "terminated"))).squeeze(-1).to(reward.dtype)
        n, b = obs.shape[:2]
        policy = self._policy
        # 1. the critics
        with torch.no_grad():
            loc, scale = policy.loc_scale(self._tensors(_ACTOR, policy.plan), next_obs)
            dist = policy.distribution(loc, scale)
            next_action = dist.transforms[0](noise["next"] * scale + loc)
            next_value = (
                self._critics(self._critic, _TARGET_CRITIC, next_obs, next_action).min(1).values
            )
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
        # 2. the actor, advantage-weighted
        loc, scale = policy.loc_scale(self._tensors(_ACTOR, policy.plan), obs)
        dist = policy.distribution(loc, scale)
        log_prob = dist.log_prob(action)
        m = self.num_value_samples
        with torch.no_grad():
            q = self._critics(self._critic, _CRITIC, obs, action, detach=True).min(1).values
            pre = (noise["value"] * scale.unsqueeze(1) + loc.unsqueeze(1)).reshape(n, m * b, -1)
            sampled = dist.transforms[0](pre)
            rep = obs.unsqueeze(1).expand(n, m, b, obs.shape[-1]).reshape(n, m * b, -1)
            value = self._critics(self._critic, _CRITIC, rep, sampled, detach=True).min(1).values
            value = value.reshape(n, m, b).mean(1)
            advantage = q - value
            weight = torch.exp(advantage / self.temperature).clamp_max(self.max_weight)
        loss_actor = (-weight * log_prob).mean(-1)
        self._step("actor", loss_actor)
        self._update_targets()
        return {
            "loss_qvalue": loss_q.detach(),
            "loss_actor": loss_actor.detach(),
            "advantage": advantage.mean(-1),
            "awac_weight": weight.mean(-1),
            "log_prob": log_prob.detach().mean(-1),
        }
