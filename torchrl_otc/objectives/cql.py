"""Continuous CQL whose conservative term draws its uniform actions in the task's action box.

Kumar, Zhou, Tucker and Levine (2020), "Conservative Q-Learning for Offline Reinforcement Learning"
(arXiv:2006.04779), the CQL(H) objective (eq. (4)) with the importance-sampled log-sum-exp of Appendix F.
TorchRL 0.14.1's :class:`~torchrl.objectives.CQLLoss` draws the uniform actions of that estimate in
:math:`[-1, 1]^d` whatever the action spec says; :class:`BoundedCQLLoss` draws them in the spec's bounds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule
from tensordict.utils import unravel_key
from torch import Tensor
from torchrl.data import Bounded, Composite, TensorSpec
from torchrl.objectives import CQLLoss

__all__ = ["BoundedCQLLoss"]


class BoundedCQLLoss(CQLLoss):
    r"""TorchRL's continuous CQL loss with the uniform proposal of its conservative term on the action bounds.

    CQL(H) (Kumar et al. 2020, eq. (4)) adds to the critic's TD loss the conservative term

    .. math::

        \alpha' \, \mathbb{E}_{s \sim \mathcal{D}} \Big[ \log \sum_a \exp Q(s, a)
        - \mathbb{E}_{a \sim \hat\pi_\beta(\cdot|s)} Q(s, a) \Big],

    whose log-sum-exp over the action box :math:`\mathcal{A} = \prod_{k=1}^{d} [l_k, h_k]` is estimated by
    importance sampling (Appendix F) with :math:`N` = ``num_random`` uniform actions
    :math:`a_i \sim \mu = \mathcal{U}(\mathcal{A})` and as many policy actions :math:`a'_i \sim \pi(\cdot|s)`,
    :math:`a''_i \sim \pi(\cdot|s')`, each value corrected by its proposal's log-density. TorchRL's
    ``cql_loss``, kept here as it is, computes with temperature :math:`T` = ``temperature``

    .. math::

        \frac{1}{N} \sum_{i=1}^{N} T \log \Big( e^{(Q(s, a_i) - \log \mu(a_i))/T}
        + e^{(Q(s, a'_i) - \log \pi(a'_i|s))/T} + e^{(Q(s', a''_i) - \log \pi(a''_i|s'))/T} \Big)

    (the CQL authors' code takes one log-sum-exp over all :math:`3N` terms of a state and evaluates
    :math:`Q(s, a''_i)`; both differences are TorchRL's and left alone),
    with the uniform log-density :math:`\log \mu(a) = -\sum_{k=1}^{d} \log (h_k - l_k)`. TorchRL 0.14.1's
    :meth:`CQLLoss.cql_loss <torchrl.objectives.CQLLoss.cql_loss>` draws :math:`a_i` with
    ``pred_q1.new_empty(...).uniform_(-1, 1)`` and subtracts ``np.log(0.5 ** d)``: right for
    :math:`\mathcal{A} = [-1, 1]^d` only. With MPE's :math:`[-0.1, 0.1]^d`, all but a fraction :math:`0.1^d` of
    those actions lie outside the box, up to ten times as far out as its edge (actions that the policy, a
    TanhNormal on the bounds, never takes): the conservative term then pushes down Q-values where they do not
    matter and hardly any inside the box.

    This class overrides only :meth:`cql_loss`, as TorchRL's, with that draw and that density replaced:
    :math:`a_i = c + r\,v_i` with :math:`v_i` TorchRL's own draw in :math:`[-1, 1]^d`, :math:`c` and :math:`r`
    the centre and half-range of the bounds (clamped to the bounds against rounding), and
    :math:`\log \mu = \log(0.5^d) - \sum_k \log r_k`. On :math:`[-1, 1]^d` (:math:`c = 0`, :math:`r = 1`) both
    are TorchRL's numbers bit for bit, from the same random stream. Everything else (keys, the other parts,
    :meth:`make_value_estimator`, the Lagrange variant, target parameters) is TorchRL's.

    Args:
        actor_network: a stochastic actor, as for :class:`~torchrl.objectives.CQLLoss`.
        qvalue_network: ``Q(s, a)``, as for :class:`~torchrl.objectives.CQLLoss`.

    Keyword Args:
        action_spec: the :class:`~torchrl.data.Bounded` action spec, or a :class:`~torchrl.data.Composite` with
            one at the loss's action key (read at construction). ``None``: the actor's ``spec``. The bounds must
            be finite with :math:`h_k > l_k` and the same for every leading (batch or agent) index of the spec.
        **kwargs: :class:`~torchrl.objectives.CQLLoss`'s other keyword arguments, passed on unchanged.

    Attributes:
        random_log_density (float): :math:`\log \mu(a) = -\sum_k \log(h_k - l_k)`, subtracted from the critics'
            values at the uniform actions.

    Raises:
        TypeError: the action spec is not (or does not hold) a Bounded spec.
        ValueError: no action spec, or bounds that are not finite, empty, or differ across leading indices.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import NormalParamExtractor, TensorDictModule
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
        >>> from torchrl.objectives import SoftUpdate
        >>> _ = torch.manual_seed(0)
        >>> n_obs, n_act, batch = 3, 2, 8
        >>> spec = Bounded(-0.1, 0.1, (n_act,))
        >>> net = torch.nn.Sequential(MLP(in_features=n_obs, out_features=2 * n_act, num_cells=[32]),
        ...                           NormalParamExtractor())
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"], spec=spec, distribution_class=TanhNormal,
        ...     distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
        ... )
        >>> qvalue = ValueOperator(
        ...     MLP(in_features=n_obs + n_act, out_features=1, num_cells=[32]), in_keys=["observation", "action"]
        ... )
        >>> loss = BoundedCQLLoss(actor, qvalue, action_spec=spec, num_random=4)
        >>> loss.make_value_estimator(gamma=0.99)
        >>> updater = SoftUpdate(loss, tau=0.005)
        >>> round(loss.random_log_density, 4)  # -2 log(0.2), where TorchRL uses log(0.5 ** 2) = -1.3863
        3.2189
        >>> data = TensorDict({
        ...     "observation": torch.randn(batch, n_obs),
        ...     "action": torch.rand(batch, n_act) * 0.2 - 0.1,
        ...     ("next", "observation"): torch.randn(batch, n_obs),
        ...     ("next", "reward"): torch.randn(batch, 1),
        ...     ("next", "done"): torch.zeros(batch, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(batch, 1, dtype=torch.bool),
        ... }, [batch])
        >>> out = loss(data)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_actor_bc', 'loss_alpha', 'loss_cql', 'loss_qvalue']
        >>> (out["loss_actor"] + out["loss_qvalue"] + out["loss_cql"] + out["loss_alpha"]).backward()
        >>> updater.step()
        >>> loss.random_action_low, loss.random_action_high  # the box of the uniform actions
        (tensor([-0.1000, -0.1000]), tensor([0.1000, 0.1000]))
    """

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        *,
        action_spec: TensorSpec | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(actor_network, qvalue_network, action_spec=action_spec, **kwargs)
        low, high = self._action_bounds(
            action_spec if action_spec is not None else getattr(actor_network, "spec", None)
        )
        try:
            device = next(self.parameters()).device
        except StopIteration:
            device = low.device
        dtype = low.dtype if low.is_floating_point() else torch.get_default_dtype()
        low64, high64 = low.double(), high.double()
        # Not in the state dict: they come from the spec, and checkpoints of CQLLoss stay loadable.
        for name, value in (
            ("random_action_low", low64),
            ("random_action_high", high64),
            ("random_action_center", (high64 + low64) / 2),
            ("random_action_half_range", (high64 - low64) / 2),
        ):
            self.register_buffer(name, value.to(device=device, dtype=dtype), persistent=False)
        # log(0.5^d) - sum_k log r_k = -sum_k log(h_k - l_k); written so that [-1, 1]^d gives TorchRL's float.
        self.random_log_density = float(
            np.log(0.5 ** low.numel()) - torch.log((high64 - low64) / 2).sum().item()
        )

    def _action_bounds(self, spec: TensorSpec | None) -> tuple[Tensor, Tensor]:
        if spec is None:
            raise ValueError(
                "BoundedCQLLoss needs the action bounds: pass action_spec (a Bounded spec) or give the actor one."
            )
        if isinstance(spec, Composite):
            key = unravel_key(self.tensor_keys.action)
            if key not in spec.keys(True, True):
                raise TypeError(
                    f"The action Composite spec has no {key!r} entry; its keys are {list(spec.keys(True))}."
                )
            spec = spec[key]
        if not isinstance(spec, Bounded):
            raise TypeError(
                f"BoundedCQLLoss needs a Bounded action spec; got {type(spec).__name__}."
            )
        low, high = spec.space.low, spec.space.high
        if low.ndim == 0:
            raise ValueError(
                "BoundedCQLLoss needs an action spec with a feature dimension, shape [..., d]."
            )
        low, high = low.reshape(-1, low.shape[-1]), high.reshape(-1, high.shape[-1])
        if not (bool((low == low[:1]).all()) and bool((high == high[:1]).all())):
            raise ValueError(
                "BoundedCQLLoss draws the uniform actions of one action space: the action bounds must be the "
                "same for every leading index of the spec."
            )
        low, high = low[0], high[0]
        if not bool(torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ValueError("The action bounds must be finite.")
        if not bool((high > low).all()):
            raise ValueError(
                f"The action bounds must satisfy high > low; got {low.tolist()}, {high.tolist()}."
            )
        return low, high

    def _random_actions(self, tensordict: TensorDictBase, like: Tensor) -> Tensor:
        """``num_random`` uniform actions per sample in the bounds, ``[*batch[:-1], batch[-1] * N, d]``.

        TorchRL's draw (``like.new_empty(...).uniform_(-1, 1)``, the same random numbers) mapped onto the box.
        """
        act_dim = tensordict[self.tensor_keys.action].shape[-1]
        if act_dim != self.random_action_center.shape[-1]:
            raise ValueError(
                f"The batch's actions have {act_dim} dimensions; the action spec has "
                f"{self.random_action_center.shape[-1]}."
            )
        unit = like.new_empty(
            (*tensordict.shape[:-1], tensordict.shape[-1] * self.num_random, act_dim)
        ).uniform_(-1, 1)
        center = self.random_action_center.to(unit)
        half_range = self.random_action_half_range.to(unit)
        actions = center + half_range * unit
        return actions.clamp(self.random_action_low.to(unit), self.random_action_high.to(unit))

    def cql_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """The conservative term: TorchRL 0.14.1's ``CQLLoss.cql_loss`` with the uniform actions on the bounds.

        Same inputs (``pred_q1``/``pred_q2`` written by :meth:`q_loss`), outputs and side effects (writes
        ``cql_q1_loss``/``cql_q2_loss`` for :meth:`alpha_prime_loss`) as TorchRL's; only the random-action draw
        (:meth:`_random_actions`) and its log-density (:attr:`random_log_density`) differ.
        """
        pred_q1 = tensordict.get(self.tensor_keys.pred_q1)
        pred_q2 = tensordict.get(self.tensor_keys.pred_q2)
        if pred_q1 is None:
            raise KeyError(
                f"Couldn't find the pred_q1 with key {self.tensor_keys.pred_q1} in the input tensordict. "
                "This could be caused by calling cql_loss method before q_loss method."
            )
        if pred_q2 is None:
            raise KeyError(
                f"Couldn't find the pred_q2 with key {self.tensor_keys.pred_q2} in the input tensordict. "
                "This could be caused by calling cql_loss method before q_loss method."
            )

        random_actions_tensor = self._random_actions(tensordict, pred_q1)
        curr_actions_td, curr_log_pis = self._get_policy_actions(
            tensordict.copy(), self.actor_network_params, num_actions=self.num_random
        )
        new_curr_actions_td, new_log_pis = self._get_policy_actions(
            tensordict.get("next").copy(), self.actor_network_params, num_actions=self.num_random
        )

        # One forward pass of the critics for the random, current-state and next-state policy actions.
        qvalue_params = torch.cat(
            [self.qvalue_network_params, self.qvalue_network_params, self.qvalue_network_params], 0
        )
        tensordict_q_random = tensordict.select(*self.actor_network.in_keys, strict=False)
        batch_size = tensordict_q_random.batch_size
        batch_size = list(batch_size[:-1]) + [batch_size[-1] * self.num_random]
        in_keys = [unravel_key(key) for key in self.actor_network.in_keys]

        def filter_and_repeat(name, x):
            if name in in_keys:
                return x.repeat_interleave(self.num_random, dim=tensordict_q_random.ndim - 1)

        tensordict_q_random = tensordict_q_random.named_apply(
            filter_and_repeat, batch_size=batch_size, filter_empty=True
        )
        tensordict_q_random.set(self.tensor_keys.action, random_actions_tensor)
        cql_tensordict = torch.cat(
            [
                tensordict_q_random.expand(self.num_qvalue_nets, *curr_actions_td.batch_size),
                curr_actions_td.expand(self.num_qvalue_nets, *curr_actions_td.batch_size),
                new_curr_actions_td.expand(self.num_qvalue_nets, *curr_actions_td.batch_size),
            ],
            0,
        ).contiguous()
        state_action_value = self._vmap_qvalue_network00(cql_tensordict, qvalue_params).get(
            self.tensor_keys.state_action_value
        )
        q_random, q_curr, q_new = state_action_value.split([self.num_qvalue_nets] * 3, dim=0)

        # Importance-sampled log-sum-exp (CQL, Appendix F): each value minus its proposal's log-density.
        random_density = self.random_log_density
        cat_q1 = torch.cat(
            [
                q_random[0] - random_density,
                q_new[0] - new_log_pis.detach().unsqueeze(-1),
                q_curr[0] - curr_log_pis.detach().unsqueeze(-1),
            ],
            -1,
        )
        cat_q2 = torch.cat(
            [
                q_random[1] - random_density,
                q_new[1] - new_log_pis.detach().unsqueeze(-1),
                q_curr[1] - curr_log_pis.detach().unsqueeze(-1),
            ],
            -1,
        )
        min_qf1_loss = (
            torch.logsumexp(cat_q1 / self.temperature, dim=-1)
            * self.min_q_weight
            * self.temperature
        )
        min_qf2_loss = (
            torch.logsumexp(cat_q2 / self.temperature, dim=-1)
            * self.min_q_weight
            * self.temperature
        )

        # Subtract the value of the data's actions.
        cql_q1_loss = min_qf1_loss.flatten() - pred_q1 * self.min_q_weight
        cql_q2_loss = min_qf2_loss.flatten() - pred_q2 * self.min_q_weight
        tensordict.set(self.tensor_keys.cql_q1_loss, cql_q1_loss)
        tensordict.set(self.tensor_keys.cql_q2_loss, cql_q2_loss)

        cql_q_loss = (cql_q1_loss + cql_q2_loss).mean(-1)
        cql_q_loss = self._reduce_loss(cql_q_loss, tensordict=tensordict)
        self._clear_weakrefs(
            tensordict,
            "actor_network_params",
            "qvalue_network_params",
            "target_actor_network_params",
            "target_qvalue_network_params",
        )
        return cql_q_loss, {}
