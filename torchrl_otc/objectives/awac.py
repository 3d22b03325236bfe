"""Advantage-Weighted Actor-Critic (AWAC), as a TorchRL loss module.

Nair, Dalal, Gupta and Levine (2020), "Accelerating Online Reinforcement Learning with Offline Datasets"
(arXiv:2006.09359), Algorithm 1 and eq. (7)-(8). One of the two base algorithms of the OTC paper (section 4,
Table 3). TorchRL has no AWAC loss; its :class:`~torchrl.objectives.IQLLoss` actor loss does the same
exponentiated-advantage weighting with a learned ``V``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule, dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor
from torchrl.objectives.utils import (
    ValueEstimators,
    distance_loss,
)

from torchrl_otc.objectives.utils import (
    LossFunction,
    Reduction,
    TwinCriticLoss,
    critic_values,
    policy_distribution,
)

__all__ = ["AWACLoss"]


class AWACLoss(TwinCriticLoss):
    r"""AWAC loss (Nair et al. 2020), continuous actions.

    Two parts, one public method each, each returning ``(loss, metadata)``:

    1. :meth:`qvalue_loss`: twin critics regressed on a TD(0) target (by default) built with the target critics and an
       action drawn from the current policy (Algorithm 1, eq. (7)):

       .. math::

           y = r + \gamma (1 - \mathrm{terminated}) \min_{j=1,2} Q_{\theta'_j}(s', a'),\quad a' \sim \pi(\cdot|s'),
           \qquad \mathcal{L}_Q = \sum_j (Q_{\theta_j}(s, a) - y)^2 .

    2. :meth:`actor_loss`: weighted maximum likelihood of the batch actions (eq. (8)):

       .. math::

           \mathcal{L}_\pi = -\log\pi(a|s)\, \min\left(\exp\left(\frac{A(s, a)}{\lambda}\right), w_{\max}\right),
           \qquad A(s, a) = Q(s, a) - V(s),\quad V(s) = \frac{1}{m}\sum_{k=1}^{m} Q(s, a_k),\ a_k \sim \pi(\cdot|s),

       with :math:`Q = \min_j Q_{\theta_j}` (current critics, detached). ``temperature`` is :math:`\lambda`
       (the Lagrange multiplier of AWAC's KL constraint): smaller values imitate only the best actions, larger
       ones approach behaviour cloning. Its default 1.0 is the AWAC paper's value for the MuJoCo tasks (also
       CORL's default). The weights are clipped at :math:`w_{\max}` = ``max_weight`` = 100 (CORL's
       ``exp_adv_max``; TorchRL's IQL clips the same way) so that a single large advantage cannot dominate a
       batch or overflow.

    No entropy term is used (AWAC's offline setting; CORL does the same). Each part's gradient reaches only its
    own parameters. The critics' target parameters follow :class:`~torchrl.objectives.SoftUpdate`
    (``SoftUpdate(loss, tau=0.005)``); the actor has none (AWAC samples ``a'`` from the current policy).
    ``("next", "terminated")`` stops bootstrapping; ``done`` alone (a timeout) does not.

    As in TorchRL's losses, a ``priority_weight`` entry in the batch, if present and
    ``use_prioritized_weights`` allows it, weights both parts' reductions.

    Args:
        actor_network: a stochastic actor (e.g. a :class:`~torchrl.modules.ProbabilisticActor` with a
            :class:`~torchrl.modules.TanhNormal`) whose ``get_dist`` gives :math:`\pi(\cdot|s)`.
        qvalue_network: one critic ``Q(s, a)`` writing ``"state_action_value"``; copied ``num_qvalue_nets``
            times with independent parameters.

    Keyword Args:
        num_qvalue_nets: number of critics. Defaults to ``2``.
        temperature: :math:`\lambda`. Defaults to ``1.0``.
        max_weight: :math:`w_{\max}`. Defaults to ``100.0``.
        num_value_samples: :math:`m`, policy actions averaged in :math:`V(s)`. Defaults to ``1``.
        loss_function: critic regression loss (``"l2"``, ``"l1"``, ``"smooth_l1"``). Defaults to ``"l2"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``. Defaults to ``"mean"``.
        deactivate_vmap: evaluate the critics one by one (TorchRL's pseudo-vmap) instead of by batched matmul
            or :func:`torch.vmap`. Defaults to ``False``.
        use_prioritized_weights: ``"auto"``, ``True`` or ``False``. Defaults to ``"auto"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import NormalParamExtractor, TensorDictModule
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
        >>> from torchrl.objectives import SoftUpdate
        >>> _ = torch.manual_seed(0)
        >>> n_obs, n_act, batch = 3, 2, 8
        >>> spec = Bounded(-1.0, 1.0, (n_act,))
        >>> net = torch.nn.Sequential(MLP(in_features=n_obs, out_features=2 * n_act, num_cells=[32]),
        ...                           NormalParamExtractor())
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"], spec=spec, distribution_class=TanhNormal,
        ... )
        >>> qvalue = ValueOperator(
        ...     MLP(in_features=n_obs + n_act, out_features=1, num_cells=[32]), in_keys=["observation", "action"]
        ... )
        >>> loss = AWACLoss(actor, qvalue, temperature=1.0)
        >>> loss = loss.make_value_estimator(gamma=0.99)  # returns the loss, as in TorchRL
        >>> updater = SoftUpdate(loss, tau=0.005)
        >>> data = TensorDict({
        ...     "observation": torch.randn(batch, n_obs),
        ...     "action": torch.rand(batch, n_act) * 1.8 - 0.9,
        ...     ("next", "observation"): torch.randn(batch, n_obs),
        ...     ("next", "reward"): torch.randn(batch, 1),
        ...     ("next", "done"): torch.zeros(batch, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(batch, 1, dtype=torch.bool),
        ... }, [batch])
        >>> out = loss(data)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_qvalue']
        >>> (out["loss_actor"] + out["loss_qvalue"]).backward()
        >>> updater.step()
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys (``set_keys(name=key)``).

        Attributes:
            action (NestedKey): the action. Defaults to ``"action"``.
            state_action_value (NestedKey): the critics' output. Defaults to ``"state_action_value"``.
            priority (NestedKey): where :meth:`forward` writes the TD error. Defaults to ``"td_error"``.
            reward (NestedKey): the reward, read under ``"next"``. Defaults to ``"reward"``.
            done (NestedKey): the done flag, read under ``"next"``. Defaults to ``"done"``.
            terminated (NestedKey): the termination flag, read under ``"next"``. Defaults to ``"terminated"``.
            priority_weight (NestedKey): importance weights, read only when present.
                Defaults to ``"priority_weight"``.
        """

        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"
        priority: NestedKey = "td_error"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        priority_weight: NestedKey = "priority_weight"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    out_keys = [
        "loss_actor",
        "loss_qvalue",
        "advantage",
        "awac_weight",
        "log_prob",
        "pred_value",
        "target_value",
        "next_state_value",
    ]

    actor_network: ProbabilisticTensorDictSequential
    qvalue_network: TensorDictModule
    actor_network_params: TensorDictParams
    qvalue_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule,
        *,
        num_qvalue_nets: int = 2,
        temperature: float = 1.0,
        max_weight: float = 100.0,
        num_value_samples: int = 1,
        loss_function: LossFunction = "l2",
        reduction: Reduction | None = None,
        deactivate_vmap: bool = False,
        use_prioritized_weights: str | bool = "auto",
    ) -> None:
        if reduction is None:
            reduction = "mean"
        super().__init__()
        if temperature <= 0 or max_weight <= 0:
            raise ValueError(
                f"temperature and max_weight must be > 0; got {temperature}, {max_weight}."
            )
        if num_value_samples < 1 or num_qvalue_nets < 1:
            raise ValueError(
                f"num_value_samples and num_qvalue_nets must be >= 1; got {num_value_samples}, {num_qvalue_nets}."
            )
        if not hasattr(actor_network, "get_dist"):
            raise TypeError(
                "AWACLoss needs a stochastic actor with get_dist (e.g. ProbabilisticActor with TanhNormal); "
                f"got {type(actor_network).__name__}."
            )
        self._in_keys = None
        self.use_prioritized_weights = use_prioritized_weights
        self.deactivate_vmap = deactivate_vmap
        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)
        self.convert_to_functional(
            qvalue_network, "qvalue_network", num_qvalue_nets, create_target_params=True
        )
        self.num_qvalue_nets = num_qvalue_nets
        self.temperature = temperature
        self.max_weight = max_weight
        self.num_value_samples = num_value_samples
        self.loss_function = loss_function
        self.reduction = reduction
        self._make_vmap()

    # ----------------------------------------------------------------------------------------------- keys
    @property
    def observation_keys(self) -> list[NestedKey]:
        """The keys the actor and critics read, other than the action."""
        keys: list[NestedKey] = []
        for net in (self.actor_network, self.qvalue_network):
            for key in net.in_keys:
                if key != self.tensor_keys.action and key not in keys:
                    keys.append(key)
        return keys

    def _min_q(self, inputs: dict[NestedKey, Tensor], params: TensorDictBase) -> Tensor:
        return critic_values(self, inputs, params).min(0).values

    def _observations(
        self, tensordict: TensorDictBase, next: bool = False
    ) -> dict[NestedKey, Tensor]:
        if next:
            return {k: tensordict.get(unravel_key(("next", k))) for k in self.observation_keys}
        return {k: tensordict.get(k) for k in self.observation_keys}

    def _policy(self, observations: dict[NestedKey, Tensor]) -> torch.distributions.Distribution:
        """pi(.|s) from the current actor parameters."""
        return policy_distribution(self, "actor_network", self.actor_network_params, observations)

    # ---------------------------------------------------------------------------------------------- parts
    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """Part 1: twin-critic regression on the target critics' TD target (gradient to the critics only).

        The target is TD(0) by default; ``make_value_estimator`` can make it TD(1) or TD(lambda) on trajectories.

        Args:
            tensordict: a batch with the observation, action and ``next`` keys.

        Returns:
            the reduced loss and ``{"td_error", "pred_value", "target_value", "next_state_value"}`` (detached).
        """
        weights = self._maybe_get_priority_weight(tensordict)
        action_key = self.tensor_keys.action
        with torch.no_grad():
            next_inputs = self._observations(tensordict, next=True)
            next_inputs[action_key] = self._policy(next_inputs).sample()
            next_value = self._min_q(next_inputs, self.target_qvalue_network_params)
            target_value = self.value_estimator.value_estimate(
                tensordict, next_value=next_value.unsqueeze(-1)
            ).squeeze(-1)
        inputs = self._observations(tensordict)
        inputs[action_key] = tensordict.get(action_key)
        pred = critic_values(self, inputs, self.qvalue_network_params)
        loss = distance_loss(
            pred, target_value.expand_as(pred), loss_function=self.loss_function
        ).sum(0)
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=weights)
        metadata = {
            "td_error": (pred.detach() - target_value).pow(2),
            "pred_value": pred.detach(),
            "target_value": target_value,
            "next_state_value": next_value,
        }
        return loss, metadata

    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """Part 2: advantage-weighted log-likelihood of the batch actions (gradient to the actor only).

        Args:
            tensordict: a batch with the observation and action keys.

        Returns:
            the reduced loss and ``{"advantage", "awac_weight", "log_prob"}`` (detached batch means).
        """
        weights = self._maybe_get_priority_weight(tensordict)
        action_key = self.tensor_keys.action
        obs = self._observations(tensordict)
        dist = self._policy(obs)
        action = tensordict.get(action_key)
        log_prob = dist.log_prob(action)
        with torch.no_grad():
            q_params = self._cached_detach_qvalue_network_params
            q = self._min_q({**obs, action_key: action}, q_params)
            m = self.num_value_samples
            v_inputs = {k: v.expand(m, *v.shape) for k, v in obs.items()}
            v_inputs[action_key] = dist.sample((m,))  # [m, *B, act]
            value = self._min_q(v_inputs, q_params).mean(0)
            advantage = q - value
            awac_weight = torch.exp(advantage / self.temperature).clamp_max(self.max_weight)
        if log_prob.shape != awac_weight.shape:
            raise RuntimeError(
                f"log_prob has shape {tuple(log_prob.shape)} but the weights {tuple(awac_weight.shape)}: the "
                "actor's distribution must have the action as its event (e.g. TanhNormal with event_dims=1)."
            )
        loss = self._reduce_loss(-awac_weight * log_prob, tensordict=tensordict, weights=weights)
        metadata = {
            "advantage": advantage.mean(),
            "awac_weight": awac_weight.mean(),
            "log_prob": log_prob.detach().mean(),
        }
        return loss, metadata

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes :meth:`qvalue_loss` and :meth:`actor_loss` and gathers them.

        Writes the per-sample TD error (max over critics) under ``tensor_keys.priority`` in ``tensordict``.
        """
        loss_qvalue, meta_q = self.qvalue_loss(tensordict)
        loss_actor, meta_actor = self.actor_loss(tensordict)
        tensordict.set(self.tensor_keys.priority, meta_q.pop("td_error").max(0).values)
        return TensorDict(
            {"loss_actor": loss_actor, "loss_qvalue": loss_qvalue, **meta_actor, **meta_q}
        )
