r"""TD3+BC (Fujimoto and Gu 2021), one of the OTC paper's base algorithms (section 4, Table 3), and TD3's rules.

TD3 (Fujimoto, van Hoof and Meger 2018) adds three rules to DDPG, written once here as functions on tensors and
used by :class:`TD3BC`, :class:`~torchrl_otc.trainers.algorithms.BatchedTD3BC` and the behaviour-policy trainer
of the ``medium`` datasets (:mod:`torchrl_otc.trainers.behaviour`):

* *target policy smoothing*: :math:`\tilde a' = \operatorname{clip}(\pi'(s') + \operatorname{clip}(\sigma
  \epsilon, -c, c), a_\text{low}, a_\text{high})`, :math:`\epsilon \sim \mathcal{N}(0, 1)`
  (:func:`smoothing_noise`, :func:`smoothed_target_action`);
* *clipped double Q*: :math:`y = r + \gamma (1 - \text{terminated}) \min(Q'_1, Q'_2)(s', \tilde a')`
  (:func:`clipped_double_q_target`);
* *delayed policy updates*: the actor and the targets move every ``policy_delay``-th critic step
  (:func:`is_policy_step`).
"""

from __future__ import annotations

import logging

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.data import Bounded
from torchrl.modules import MLP, Actor
from torchrl.objectives import TD3BCLoss
from torchrl.objectives.utils import distance_loss
from torchrl.objectives.value import TD0Estimator

from torchrl_otc.configs.algorithms import TD3BCConfig
from torchrl_otc.objectives.utils import StackedMLP, call_net
from torchrl_otc.trainers.algorithms.base import Algorithm, Parts
from torchrl_otc.trainers.algorithms.networks import (
    ACTION_KEY,
    OBSERVATION_KEY,
    BoundedTanh,
    actor_critic_parts,
    make_critic,
)

__all__ = [
    "TD3BC",
    "clipped_double_q_target",
    "is_policy_step",
    "smoothed_target_action",
    "smoothing_noise",
]

logger = logging.getLogger(__name__)

_DETERMINISTIC = (
    "value_actions='sample' needs a stochastic policy; TD3+BC's actor is deterministic. Use "
    "value_actions='policy'."
)


# ------------------------------------------------------------------------------------------ TD3's rules
def smoothing_noise(standard_normal: Tensor, policy_noise: float, noise_clip: float) -> Tensor:
    """TD3's target-policy noise ``clip(policy_noise * eps, -noise_clip, noise_clip)`` from draws ``eps``.

    Args:
        standard_normal: ``eps``, standard normal draws shaped like the actions.
        policy_noise: the noise's standard deviation (in action units).
        noise_clip: its clip (in action units).

    Examples:
        >>> smoothing_noise(torch.tensor([-10.0, 0.1, 10.0]), 0.2, 0.5)
        tensor([-0.5000,  0.0200,  0.5000])
    """
    return (standard_normal * policy_noise).clamp(-noise_clip, noise_clip)


def smoothed_target_action(
    target_action: Tensor, noise: Tensor, low: Tensor | float, high: Tensor | float
) -> Tensor:
    """TD3's target action ``clip(pi'(s') + noise, low, high)``.

    Args:
        target_action: the target actor's action ``pi'(s')``.
        noise: from :func:`smoothing_noise`.
        low: lower action bounds (broadcast against the actions).
        high: upper action bounds.

    Examples:
        >>> smoothed_target_action(torch.tensor([0.9, 0.0]), torch.tensor([0.5, 0.1]), -1.0, 1.0)
        tensor([1.0000, 0.1000])
    """
    return (target_action + noise).clamp(low, high)


def clipped_double_q_target(
    reward: Tensor, not_terminated: Tensor, next_q1: Tensor, next_q2: Tensor, gamma: float
) -> Tensor:
    """TD3's critic target ``r + gamma * (1 - terminated) * min(Q'_1, Q'_2)``.

    Args:
        reward: ``r``.
        not_terminated: ``1 - terminated`` as floats (timeouts are not terminals).
        next_q1: the first target critic at ``(s', a')``.
        next_q2: the second target critic at ``(s', a')``.
        gamma: the discount.

    Examples:
        >>> clipped_double_q_target(torch.ones(2), torch.tensor([1.0, 0.0]), torch.ones(2), 2 * torch.ones(2), 0.5)
        tensor([1.5000, 1.0000])
    """
    return reward + gamma * not_terminated * torch.minimum(next_q1, next_q2)


def is_policy_step(num_updates: int, policy_delay: int) -> bool:
    """Whether critic step number ``num_updates`` (counted from 1) also moves the actor and the targets.

    Examples:
        >>> [is_policy_step(n, 2) for n in (1, 2, 3, 4)]
        [False, True, False, True]
    """
    return num_updates % policy_delay == 0


# ------------------------------------------------------------------------------------------- TD3+BC
class TD3BC(Algorithm):
    r"""TD3+BC for one agent: TorchRL's ``TD3BCLoss`` with a deterministic tanh actor (section 4, Table 3).

    Networks (Table 3: MLPs of ``hidden_sizes``): an actor ``c + h * tanh(MLP(s))`` into the action bounds
    (:class:`~torchrl_otc.trainers.algorithms.networks.BoundedTanh`) and two critics, trained by
    :class:`~torchrl.objectives.TD3BCLoss`; ``policy_noise`` and ``noise_clip`` are fractions of the action
    half-range. The policy is the actor. Update: TD3's schedule, critics every step, the actor
    :math:`-\lambda Q_1(s, \pi(s)) + (\pi(s) - a)^2` (:math:`\lambda = \alpha / \overline{|Q_1|}`) and the
    targets every ``policy_delay``-th step. With TorchRL's default keys, an MLP critic and no importance
    weights in the batch, the update runs TorchRL's ``qvalue_loss`` / ``actor_loss`` on tensors (the critics as
    one batched matmul per layer; same numbers and random draws, ``benchmarks/bench_update.py``).

    For the value distance ``d_q``: ``V(s)`` is :math:`Q` of the actor's action; ``actions="sample"`` is
    refused (the actor is deterministic).

    Args:
        observation_spec: the agent's observation spec, shape ``[obs_dim]``.
        action_spec: the agent's :class:`~torchrl.data.Bounded` action spec, shape ``[act_dim]``.
        config: a :class:`~torchrl_otc.configs.algorithms.TD3BCConfig`; Table 3's defaults when omitted.
        device: where to build the parameters. Defaults to the CPU.

    Keyword Args:
        seed: seed of the parameter initialisation (the global random state is left untouched).

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Unbounded
        >>> algo = TD3BC(Unbounded(shape=(5,)), Bounded(-1.0, 1.0, shape=(2,)), seed=0)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(128, 5), "action": torch.rand(128, 2) * 2 - 1,
        ...     ("next", "observation"): torch.randn(128, 5), ("next", "reward"): torch.randn(128, 1),
        ...     ("next", "done"): torch.zeros(128, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(128, 1, dtype=torch.bool),
        ... }, [128])
        >>> sorted(algo.update(batch))  # TD3: the actor and targets move every second step
        ['loss_qvalue', 'next_state_value', 'pred_value', 'target_value']
        >>> algo.state_value(torch.randn(3, 5), actions="sample")
        Traceback (most recent call last):
        ...
        ValueError: value_actions='sample' needs a stochastic policy; TD3+BC's actor is deterministic. Use value_actions='policy'.
    """

    name = "td3bc"
    loss: TD3BCLoss

    def _build(
        self,
        cfg: TD3BCConfig,
        obs_dim: int,
        act_dim: int,
        action_spec: Bounded,
        low: Tensor,
        high: Tensor,
        device: torch.device,
    ) -> tuple[TD3BCLoss, TensorDictModule, Parts]:
        half_range = (high - low) / 2
        if not bool(torch.allclose(half_range, half_range.mean())):
            logger.warning(
                "TD3BCLoss takes one policy-noise scale for all action dimensions; the half-ranges differ "
                "(%s): using their mean.",
                half_range.tolist(),
            )
        scale = float(half_range.mean())
        net = nn.Sequential(
            MLP(
                in_features=obs_dim,
                out_features=act_dim,
                num_cells=list(cfg.hidden_sizes),
                activation_class=cfg.activation_class,
            ),
            BoundedTanh(low, high),
        )
        actor = Actor(net, in_keys=[OBSERVATION_KEY], out_keys=[ACTION_KEY], spec=action_spec).to(
            device
        )
        loss = TD3BCLoss(
            actor,
            make_critic(cfg, obs_dim, act_dim).to(device),
            action_spec=action_spec,
            policy_noise=cfg.policy_noise * scale,
            noise_clip=cfg.noise_clip * scale,
            alpha=cfg.alpha,
            loss_function=cfg.loss_function,
        )
        return loss, actor, actor_critic_parts(loss, cfg)

    # ------------------------------------------------------------------------------------------ update
    def fast_critics(self, batch: TensorDictBase) -> StackedMLP | None:
        """The stacked-critic fast path of the update, or ``None`` where it would not give TorchRL's numbers.

        It applies with TorchRL's default keys, an MLP critic reading ``[observation, action]``, an actor
        reading ``observation``, no importance weights in the batch and the TD(0) estimator. The answer for the
        loss is cached in the loss's ``_cache`` under ``"td3bc_fast"`` (cleared when the loss is moved or
        cast; set it to ``None`` to force TorchRL's methods).

        Args:
            batch: the batch about to be used.
        """
        loss = self.loss
        keys = loss.tensor_keys
        cache = loss.__dict__.setdefault("_cache", {})
        if "td3bc_fast" not in cache:
            fast = None
            if (
                keys == type(keys)()
                and list(loss.qvalue_network.in_keys) == [OBSERVATION_KEY, ACTION_KEY]
                and list(loss.actor_network.in_keys) == [OBSERVATION_KEY]
                and not loss.deactivate_vmap
                and isinstance(loss.value_estimator, TD0Estimator)
                and loss.reduction == "mean"
            ):
                fast = StackedMLP.from_module(loss.qvalue_network)
            cache["td3bc_fast"] = fast
        if keys.priority_weight in batch.keys() and loss.use_prioritized_weights in (True, "auto"):
            return None
        return cache["td3bc_fast"]

    def _update(self, batch: TensorDictBase) -> dict[str, Tensor]:
        # TD3's schedule: the critic every step; the actor and the targets every policy_delay-th step.
        fast = self.fast_critics(batch)
        if fast is not None:
            return self._update_stacked(fast, batch)
        loss = self.loss
        loss_q, meta_q = loss.qvalue_loss(batch)
        self._step("critic", loss_q)
        meta_q.pop("td_error")
        out = {"loss_qvalue": loss_q, **meta_q}
        if is_policy_step(self.num_updates + 1, self.config.policy_delay):
            loss_actor, meta_actor = loss.actor_loss(batch)
            self._step("actor", loss_actor)
            self.target_updater.step()
            out.update(loss_actor=loss_actor, **meta_actor)
        return out

    def _update_stacked(self, fast: StackedMLP, batch: TensorDictBase) -> dict[str, Tensor]:
        """TorchRL's ``TD3BCLoss.qvalue_loss`` / ``actor_loss`` on tensors: the same numbers and random draws.

        The critics run as one batched matmul per layer on the loss's own (stacked, target, detached)
        parameters instead of ``vmap`` over the TensorDictModule, and the actor as a plain module call;
        TorchRL's methods spend most of a TD3+BC update in that machinery (``benchmarks/bench_update.py``).
        ``test_td3bc_fast_path_equals_torchrl`` checks the equality.
        """
        loss = self.loss
        obs, act = batch.get(OBSERVATION_KEY), batch.get(ACTION_KEY)
        next_obs = batch.get(("next", OBSERVATION_KEY))
        reward = batch.get(("next", loss.tensor_keys.reward)).squeeze(-1)
        terminated = batch.get(("next", loss.tensor_keys.terminated)).squeeze(-1)
        noise = smoothing_noise(torch.randn_like(act), loss.policy_noise, loss.noise_clip)
        with torch.no_grad():
            next_action = call_net(
                loss, "actor_network", loss.target_actor_network_params, [next_obs]
            )
            next_action = smoothed_target_action(
                next_action, noise, loss.min_action, loss.max_action
            )
            next_q = fast(
                loss.target_qvalue_network_params, torch.cat([next_obs, next_action], -1)
            ).squeeze(-1)
            next_value = next_q.min(0)[0]
            target = clipped_double_q_target(
                reward,
                (~terminated).to(reward.dtype),
                next_q[0],
                next_q[1],
                loss.value_estimator.gamma,
            )
        current = fast(loss.qvalue_network_params, torch.cat([obs, act], -1)).squeeze(-1)
        loss_q = distance_loss(
            current, target.expand_as(current), loss_function=loss.loss_function
        ).sum(0)
        loss_q = loss_q.mean()
        self._step("critic", loss_q)
        out = {
            "loss_qvalue": loss_q,
            "next_state_value": next_value,
            "pred_value": current.detach(),
            "target_value": target,
        }
        if is_policy_step(self.num_updates + 1, self.config.policy_delay):
            action = call_net(loss, "actor_network", loss.actor_network_params, [obs])
            q1 = fast(
                loss._cached_detach_qvalue_network_params, torch.cat([obs, action], -1), index=0
            ).squeeze(-1)
            bc_loss = torch.nn.functional.mse_loss(action, act)
            lmbd = loss.alpha / q1.abs().mean().detach()
            loss_actor = (-lmbd * q1 + bc_loss).mean()
            self._step("actor", loss_actor)
            self.target_updater.step()
            out.update(
                loss_actor=loss_actor,
                state_action_value_actor=q1.detach(),
                bc_loss=bc_loss.detach(),
                lmbd=lmbd,
            )
        return out

    # ------------------------------------------------------------------------------------ values (d_q)
    def check_state_value(self, actions: str) -> None:
        """Refuses ``actions="sample"``: the actor is deterministic (see :meth:`Algorithm.check_state_value`)."""
        super().check_state_value(actions)
        if actions == "sample":
            raise ValueError(_DETERMINISTIC)

    def _sampled_actions(self, observation: Tensor, num_samples: int) -> Tensor:
        raise ValueError(_DETERMINISTIC)
