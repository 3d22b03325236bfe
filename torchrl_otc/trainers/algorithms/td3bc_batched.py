"""N TD3+BC agents updated in one batched call: stacked parameters, one batched matmul per layer.

Decentralised OTC trains one independent learner per agent (OTC paper section 3; base algorithms of section 4,
Table 3). For speed, :class:`BatchedTD3BC` updates N :class:`~torchrl_otc.trainers.algorithms.TD3BC` agents
(Fujimoto and Gu 2021) at once with the agents' parameters stacked along a leading agent dimension. Nothing
couples the agents: every agent's loss reads only its own batch and parameters, the TD3+BC weight
``lambda = alpha / mean|Q|`` is computed per agent (TorchRL's ``TD3BCLoss`` with stacked agents would average it),
Adam is elementwise, gradients are clipped per agent and per part. The numbers equal those of N separate
:meth:`TD3BC.update <torchrl_otc.trainers.algorithms.TD3BC.update>` calls up to float rounding (tested); TD3's
rules are those of :mod:`~torchrl_otc.trainers.algorithms.td3bc`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn
from torchrl.objectives.utils import distance_loss

from torchrl_otc.trainers.algorithms.batched_common import (
    StackedSequential,
    check_group,
    clip_per_learner,
    stacked_adam,
    standard_normal,
)
from torchrl_otc.trainers.algorithms.td3bc import (
    TD3BC,
    clipped_double_q_target,
    is_policy_step,
    smoothed_target_action,
    smoothing_noise,
)

__all__ = ["BatchedTD3BC"]


def _linear_keys(params: TensorDictBase, prefix: tuple[str, ...]) -> list[tuple[tuple, tuple]]:
    """``(weight_key, bias_key)`` of the Linear layers under ``prefix``, in order."""
    keys = sorted(
        {
            k[len(prefix)]
            for k in params.keys(True, True)
            if k[: len(prefix)] == prefix and k[-1] == "weight"
        },
        key=int,
    )
    return [((*prefix, k, "weight"), (*prefix, k, "bias")) for k in keys]


class BatchedTD3BC:
    r"""N TD3+BC agents with stacked parameters, updated by one batched call.

    The update is TorchRL's :class:`~torchrl.objectives.TD3BCLoss` as driven by
    :meth:`TD3BC.update <torchrl_otc.trainers.algorithms.TD3BC.update>`, per agent :math:`i`:

    .. math::

        y_i = r_i + \gamma (1 - \mathrm{terminated}_i) \min_{j=1,2} Q'_{ij}(s'_i,
              \operatorname{clip}(\pi'_i(s'_i) + \epsilon_i)),\quad
        \mathcal{L}^Q_i = \sum_j (Q_{ij}(s_i, a_i) - y_i)^2,

    and every ``policy_delay``-th step
    :math:`\mathcal{L}^\pi_i = -\lambda_i Q_{i1}(s_i, \pi_i(s_i)) + (\pi_i(s_i) - a_i)^2`,
    :math:`\lambda_i = \alpha / \overline{|Q_{i1}|}`, then the targets move by ``tau``. The networks are the MLPs
    of :class:`~torchrl_otc.trainers.algorithms.TD3BC`; each layer runs as one ``bmm`` over the
    agents (the critics as ``2N`` stacked MLPs).

    The stacked parameters are copies: :meth:`write_back` copies them (and the optimiser states) into the
    agents' :class:`~torchrl_otc.trainers.algorithms.TD3BC` objects, e.g. before deploying or checkpointing them.

    Args:
        algorithms: N :class:`~torchrl_otc.trainers.algorithms.TD3BC` algorithms with the same config and sizes
            (one per agent).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_otc.configs.algorithms import TD3BCConfig
        >>> cfg = TD3BCConfig(hidden_sizes=(32, 32))
        >>> algos = [TD3BC(Unbounded(shape=(4,)), Bounded(-1.0, 1.0, (2,)), cfg, seed=i) for i in range(3)]
        >>> batched = BatchedTD3BC(algos)
        >>> batches = TensorDict({
        ...     "observation": torch.randn(3, 64, 4), "action": torch.rand(3, 64, 2) * 2 - 1,
        ...     ("next", "observation"): torch.randn(3, 64, 4), ("next", "reward"): torch.randn(3, 64, 1),
        ...     ("next", "done"): torch.zeros(3, 64, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(3, 64, 1, dtype=torch.bool),
        ... }, [3, 64])
        >>> metrics = batched.update(batches)
        >>> metrics["loss_qvalue"].shape  # one value per agent
        torch.Size([3])
        >>> batched.write_back()
    """

    def __init__(self, algorithms: Sequence[TD3BC]) -> None:
        check_group(algorithms, TD3BC, "TD3+BC", "BatchedTD3BC")
        cfg = algorithms[0].config
        self.algorithms = list(algorithms)
        self.config = cfg
        self.num_agents = len(algorithms)
        loss0 = algorithms[0].loss
        self.device = algorithms[0].device
        self.gamma = float(loss0.value_estimator.gamma)
        self.policy_noise, self.noise_clip, self.alpha = (
            loss0.policy_noise,
            loss0.noise_clip,
            loss0.alpha,
        )
        self.loss_function = loss0.loss_function
        self.num_updates = algorithms[0].num_updates
        self._actor_layers = _linear_keys(loss0.actor_network_params, ("module", "0"))
        self._critic_layers = _linear_keys(loss0.qvalue_network_params, ("module",))
        self._head_keys = (("module", "1", "center"), ("module", "1", "half_range"))
        self._check_structure(loss0)
        # the layers of the MLPs with their own activations (one bmm per Linear, ReLU in place)
        self._actor_plan = StackedSequential.from_module(
            loss0.actor_network, loss0.actor_network.module[0], "TD3+BC actor"
        )
        self._critic_plan = StackedSequential.from_module(
            loss0.qvalue_network, loss0.qvalue_network.module, "critic"
        )

        def stack(name: str, keys: list, trainable: bool) -> list[Tensor]:
            out = []
            for key in keys:
                t = torch.stack(
                    [getattr(a.loss, name).get(key).detach() for a in algorithms]
                ).clone()
                out.append(nn.Parameter(t) if trainable else t)
            return out

        flat_actor = [k for pair in self._actor_layers for k in pair]
        flat_critic = [k for pair in self._critic_layers for k in pair]
        self.actor = stack("actor_network_params", flat_actor, True)
        self.critic = stack("qvalue_network_params", flat_critic, True)  # [N, 2, ...]
        self.target_actor = stack("target_actor_network_params", flat_actor, False)
        self.target_critic = stack("target_qvalue_network_params", flat_critic, False)
        self.head = stack(
            "actor_network_params", list(self._head_keys), False
        )  # [N, act] centre, half-range
        self.min_action = torch.stack([a.loss.min_action for a in algorithms])  # [N, act]
        self.max_action = torch.stack([a.loss.max_action for a in algorithms])
        self.optimizers = {
            "actor": stacked_adam(self.actor, lr=cfg.actor_lr),
            "critic": stacked_adam(self.critic, lr=cfg.critic_lr),
        }
        self._load_optimizer_states()

    def _check_structure(self, loss) -> None:
        expected = {k for pair in self._actor_layers for k in pair} | set(self._head_keys)
        if set(loss.actor_network_params.keys(True, True)) != expected or not self._critic_layers:
            raise ValueError(
                "BatchedTD3BC expects the networks of TD3BC: an MLP actor with a "
                "BoundedTanh head and MLP critics."
            )

    # ------------------------------------------------------------------------------------ optimisers
    def _part_params(self, algo: TD3BC, part: str) -> list[Tensor]:
        if part == "actor":
            keys, params = self._actor_layers, algo.loss.actor_network_params
        else:
            keys, params = self._critic_layers, algo.loss.qvalue_network_params
        return [params.get(k) for pair in keys for k in pair]

    def _load_optimizer_states(self) -> None:
        """Stacks the agents' Adam moments and step counts into the batched optimisers (if they have any)."""
        for part, opt in self.optimizers.items():
            states = []
            for algo in self.algorithms:
                agent_opt = algo.optimizers[part]
                states.append([agent_opt.state.get(p, {}) for p in self._part_params(algo, part)])
            if not states[0][0]:
                continue
            for j, p in enumerate(opt.param_groups[0]["params"]):
                opt.state[p] = {
                    "step": states[0][j]["step"].clone(),
                    "exp_avg": torch.stack([s[j]["exp_avg"] for s in states]).clone(),
                    "exp_avg_sq": torch.stack([s[j]["exp_avg_sq"] for s in states]).clone(),
                }

    # --------------------------------------------------------------------------------------- networks
    def _actor(self, layers: list[Tensor], obs: Tensor) -> Tensor:
        center, half_range = self.head
        return center.unsqueeze(1) + half_range.unsqueeze(1) * torch.tanh(
            self._actor_plan(layers, obs)
        )

    def _critics(
        self, layers: list[Tensor], obs: Tensor, action: Tensor, first_only: bool = False
    ) -> Tensor:
        """``[N, 2, B]`` values (``[N, B]`` of the first critic with ``first_only``)."""
        n, b = obs.shape[:2]
        x = torch.cat([obs, action], -1)
        if first_only:
            return self._critic_plan([t[:, 0] for t in layers], x).squeeze(-1)
        flat = [t.reshape(n * 2, *t.shape[2:]) for t in layers]
        x = x.unsqueeze(1).expand(n, 2, b, x.shape[-1]).reshape(n * 2, b, x.shape[-1])
        return self._critic_plan(flat, x).reshape(n, 2, b)

    def _step(self, part: str, loss: Tensor) -> None:
        """Backward of the agents' summed losses ``[N]`` into ``part``, clipped per agent, then Adam."""
        opt = self.optimizers[part]
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        clip_per_learner(opt.param_groups[0]["params"], self.config.max_grad_norm)
        opt.step()

    # ------------------------------------------------------------------------------------------ update
    def draw_noise(self, batch: TensorDictBase) -> dict[str, Tensor]:
        """One agent's draws for one update on ``batch`` (``[B]``): the target-policy noise ``[B, action_dim]``,
        standard normal, as :meth:`TD3BC.update <torchrl_otc.trainers.algorithms.TD3BC.update>` draws it. Call it
        in the agent's random stream to reproduce its separate update."""
        action = batch.get("action")
        return {"noise": standard_normal(action.shape, action)}

    def update(
        self, batches: TensorDictBase, noise: Tensor | Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """One TD3+BC step of every agent on its own batch.

        Args:
            batches: ``[N, B]`` transitions, row ``i`` agent ``i``'s batch.
            noise: ``[N, B, action_dim]`` standard normal draws of the target-policy noise, one slice per
                agent (draw each from that agent's random stream, :meth:`draw_noise`, to reproduce separate
                learners exactly), or the stacked :meth:`draw_noise` mapping; ``None`` draws them here.

        Returns:
            per-agent losses ``[N]``: ``loss_qvalue`` always, ``loss_actor`` and ``lmbd`` on actor steps.
        """
        obs, action = batches.get("observation"), batches.get("action")
        next_obs = batches.get(("next", "observation"))
        reward = batches.get(("next", "reward")).squeeze(-1)
        not_terminated = (~batches.get(("next", "terminated"))).squeeze(-1).to(reward.dtype)
        if isinstance(noise, Mapping):
            noise = noise["noise"]
        if noise is None:
            noise = torch.randn_like(action)
        with torch.no_grad():
            eps = smoothing_noise(noise, self.policy_noise, self.noise_clip)
            next_action = smoothed_target_action(
                self._actor(self.target_actor, next_obs),
                eps,
                self.min_action.unsqueeze(1),
                self.max_action.unsqueeze(1),
            )
            next_q = self._critics(self.target_critic, next_obs, next_action)  # [N, 2, B]
            target = clipped_double_q_target(
                reward, not_terminated, next_q[:, 0], next_q[:, 1], self.gamma
            )
        pred = self._critics(self.critic, obs, action)  # [N, 2, B]
        per_agent_q = distance_loss(
            pred, target.unsqueeze(1).expand_as(pred), loss_function=self.loss_function
        ).sum(1)
        loss_q = per_agent_q.mean(-1)  # [N]
        self._step("critic", loss_q)
        out = {"loss_qvalue": loss_q.detach()}
        self.num_updates += 1
        if is_policy_step(self.num_updates, self.config.policy_delay):
            pi = self._actor(self.actor, obs)
            q1 = self._critics(
                [p.detach() for p in self.critic], obs, pi, first_only=True
            )  # [N, B]
            lmbd = self.alpha / q1.abs().mean(-1).detach()  # per agent
            bc = (pi - action).pow(2).flatten(1).mean(-1)  # [N]
            loss_actor = (-lmbd.unsqueeze(-1) * q1).mean(-1) + bc
            self._step("actor", loss_actor)
            with torch.no_grad():
                tau = self.config.tau
                torch._foreach_lerp_(self.target_actor, [p.detach() for p in self.actor], tau)
                torch._foreach_lerp_(self.target_critic, [p.detach() for p in self.critic], tau)
            out.update(loss_actor=loss_actor.detach(), lmbd=lmbd)
        return out

    # ------------------------------------------------------------------------------------------- state
    @torch.no_grad()
    def write_back(self) -> None:
        """Copies the stacked parameters, targets and Adam states into the agents' algorithms."""
        flat_actor = [k for pair in self._actor_layers for k in pair]
        flat_critic = [k for pair in self._critic_layers for k in pair]
        for i, algo in enumerate(self.algorithms):
            loss = algo.loss
            for key, t in zip(flat_actor, self.actor):
                loss.actor_network_params.get(key).data.copy_(t[i])
            for key, t in zip(flat_critic, self.critic):
                loss.qvalue_network_params.get(key).data.copy_(t[i])
            for key, t in zip(flat_actor, self.target_actor):
                loss.target_actor_network_params.get(key).data.copy_(t[i])
            for key, t in zip(flat_critic, self.target_critic):
                loss.target_qvalue_network_params.get(key).data.copy_(t[i])
            for part, opt in self.optimizers.items():
                agent_opt = algo.optimizers[part]
                for p_batched, p_agent in zip(
                    opt.param_groups[0]["params"], self._part_params(algo, part)
                ):
                    state = opt.state.get(p_batched)
                    if state:
                        agent_opt.state[p_agent] = {
                            "step": state["step"].clone(),
                            "exp_avg": state["exp_avg"][i].clone(),
                            "exp_avg_sq": state["exp_avg_sq"][i].clone(),
                        }
            algo.num_updates = self.num_updates
