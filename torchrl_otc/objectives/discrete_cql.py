"""Discrete CQL whose target, conservative term and greedy action honour an action mask.

Kumar, Zhou, Tucker and Levine (2020), "Conservative Q-Learning for Offline Reinforcement Learning"
(arXiv:2006.04779), CQL(H) for discrete actions (eq. (4), section 4 and Appendix F). TorchRL 0.14.1's
``torchrl.objectives.DiscreteCQLLoss`` reads no mask itself; it honours one only through a ``QValueActor`` built with
``action_mask_key``, whose ``QValueModule`` overwrites the masked action values with the dtype's lowest finite
value. That makes the conservative term and the greedy target skip masked actions, but (measured on 0.14.1):

- a terminated transition whose next mask has no available action (a common terminal state) gets a NaN target:
  the greedy one-hot marks every tied action, their values (each the lowest float) sum to ``-inf``, and
  :math:`0 \\cdot (-\\infty)` is NaN;
- tied greedy actions (e.g. two equal values) are all marked, so the target bootstraps from the *sum* of the tied
  values (twice the value for two ties), masked or not;
- the logged ``pred_value`` averages the masked entries too (``-inf``);
- a state with no available action, or a data action marked unavailable, passes silently.

:class:`MaskedDiscreteCQLLoss` keeps TorchRL's class and replaces :meth:`~MaskedDiscreteCQLLoss.value_loss` and
:meth:`~MaskedDiscreteCQLLoss.cql_loss` to read the mask from the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from tensordict import TensorDictBase
from tensordict.nn import dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor, nn
from torchrl.objectives import DiscreteCQLLoss
from torchrl.objectives.utils import ValueEstimators, distance_loss

from torchrl_otc.objectives.discrete_bcq import batch_action_mask, check_action_mask, masked_argmax
from torchrl_otc.objectives.utils import build_value_estimator

__all__ = ["MaskedDiscreteCQLLoss"]


class MaskedDiscreteCQLLoss(DiscreteCQLLoss):
    r"""TorchRL's discrete CQL loss with unavailable actions excluded from the target, the log-sum-exp and the action.

    Discrete CQL(H) (Kumar et al. 2020, eq. (4)) adds to the DQN loss the conservative term

    .. math::

        \mathcal{L}_{\mathrm{CQL}} = \log \sum_{a \in \mathcal{A}(s)} \exp Q_\theta(s, a) - Q_\theta(s, a_{\mathcal D}),

    and the TD part regresses :math:`Q_\theta(s, a_{\mathcal D})` on

    .. math::

        y = r + \gamma (1 - \mathrm{terminated}) \max_{a' \in \mathcal{A}(s')} Q_{\theta'}(s', a'),
        \qquad \mathcal{L}_Q = \tfrac{1}{2}\, \ell(Q_\theta(s, a_{\mathcal D}), y),

    as TorchRL's class does (its factor :math:`\tfrac12`, its ``loss_function``, target parameters :math:`\theta'`
    when ``delay_value``). Here :math:`\mathcal{A}(s)` is the set of actions the boolean ``action_mask`` marks
    available (``True``) in :math:`s` and :math:`\mathcal{A}(s')` that of ``("next", "action_mask")``: masked
    actions are set to :math:`-\infty` before the log-sum-exp and the argmax, the greedy next action is one action
    (the first on ties), and :meth:`greedy_action` picks the data-free greedy action the same way. Without a mask
    in the batch (``use_action_mask="auto"``) the numbers are TorchRL's (up to ties in the target, which TorchRL
    sums). The next mask of a terminated transition is not read; any other state with no available action, and a
    data action marked unavailable, raise :class:`ValueError`.

    The value network may be a ``QValueActor`` (with or without ``action_mask_key``: a masking actor's
    lowest-float values are re-masked to :math:`-\infty`, same result), a
    :class:`~tensordict.nn.TensorDictModule` writing ``action_value``, or a plain ``nn.Module`` (then pass
    ``action_space="one-hot"``: TorchRL 0.14.1 refuses a spec there). Keys, ``delay_value`` and the other
    arguments are TorchRL's; :meth:`make_value_estimator` returns the loss.

    Args:
        value_network: the Q-network, as for ``torchrl.objectives.DiscreteCQLLoss``.

    Keyword Args:
        use_action_mask: ``"auto"`` (use the masks when the batch holds them), ``True`` (require them; they join
            :attr:`in_keys`) or ``False`` (ignore them). Defaults to ``"auto"``.
        **kwargs: ``DiscreteCQLLoss``'s keyword arguments (``loss_function``, ``delay_value``, ``action_space``,
            ``reduction``), passed on unchanged.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import OneHot
        >>> from torchrl.modules import MLP, QValueActor
        >>> from torchrl.objectives import SoftUpdate
        >>> _ = torch.manual_seed(0)
        >>> n_obs, n_act, batch = 4, 3, 8
        >>> spec = OneHot(n_act)
        >>> actor = QValueActor(MLP(in_features=n_obs, out_features=n_act, num_cells=[32]),
        ...                     in_keys=["observation"], spec=spec, action_mask_key="action_mask")
        >>> loss = MaskedDiscreteCQLLoss(actor, action_space=spec).make_value_estimator(gamma=0.99)
        >>> updater = SoftUpdate(loss, tau=0.005)
        >>> mask = torch.ones(batch, n_act, dtype=torch.bool)
        >>> mask[:, 2] = False
        >>> next_mask = mask.clone()
        >>> next_mask[0] = False  # a terminal state without legal actions
        >>> terminated = torch.zeros(batch, 1, dtype=torch.bool)
        >>> terminated[0] = True
        >>> data = TensorDict({
        ...     "observation": torch.randn(batch, n_obs),
        ...     "action": torch.nn.functional.one_hot(torch.randint(2, (batch,)), n_act).bool(),
        ...     "action_mask": mask,
        ...     ("next", "observation"): torch.randn(batch, n_obs),
        ...     ("next", "action_mask"): next_mask,
        ...     ("next", "reward"): torch.randn(batch, 1),
        ...     ("next", "done"): terminated.clone(),
        ...     ("next", "terminated"): terminated,
        ... }, [batch])
        >>> out = loss(data)
        >>> sorted(out.keys())
        ['loss_cql', 'loss_qvalue', 'pred_value', 'target_value', 'td_error']
        >>> bool(torch.isfinite(out["loss_qvalue"]) and torch.isfinite(out["pred_value"]))
        True
        >>> (out["loss_qvalue"] + out["loss_cql"]).backward()
        >>> updater.step()
        >>> loss.greedy_action(data)[:, 2].any().item()  # never the unavailable action
        False
    """

    @dataclass
    class _AcceptedKeys(DiscreteCQLLoss._AcceptedKeys):
        """TorchRL's keys (see ``DiscreteCQLLoss``) and the action mask.

        Attributes:
            action_mask (NestedKey): the boolean mask of available actions, also read under ``"next"``.
                Defaults to ``"action_mask"``.
        """

        action_mask: NestedKey = "action_mask"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self,
        value_network: nn.Module,
        *,
        use_action_mask: bool | Literal["auto"] = "auto",
        **kwargs: Any,
    ) -> None:
        if use_action_mask not in (True, False, "auto"):
            raise ValueError(
                f"use_action_mask must be True, False or 'auto'; got {use_action_mask!r}."
            )
        self.use_action_mask = use_action_mask
        super().__init__(value_network, **kwargs)

    # ----------------------------------------------------------------------------------------------- keys
    def _set_in_keys(self) -> None:
        super()._set_in_keys()
        if self.use_action_mask is True:
            extra = [
                unravel_key(self.tensor_keys.action_mask),
                unravel_key(("next", self.tensor_keys.action_mask)),
            ]
            self._in_keys = sorted({*self._in_keys, *extra}, key=str)

    def make_value_estimator(
        self, value_type: ValueEstimators | None = None, **hyperparams: Any
    ) -> MaskedDiscreteCQLLoss:
        """Builds the value estimator (``TD0`` by default, e.g. ``gamma=0.99``) and returns the loss.

        Unlike TorchRL's, the estimator gets no value network: :meth:`value_loss` hands it the masked greedy
        next-state values, so any network writing the action values works (TorchRL's needs one that writes
        ``chosen_action_value``, i.e. a ``QValueActor``).

        Args:
            value_type: ``ValueEstimators.TD0`` (default), ``TD1`` or ``TDLambda``, or a
                :class:`~torchrl.objectives.value.ValueEstimatorBase` instance or subclass.
            **hyperparams: e.g. ``gamma``, ``lmbda`` (``TDLambda``).
        """
        return build_value_estimator(
            self,
            value_type,
            hyperparams,
            value_key=self.tensor_keys.value,
            extra_keys={"value_target": "value_target"},
        )

    # ------------------------------------------------------------------------------------------- helpers
    def _mask(self, tensordict: TensorDictBase, next: bool = False) -> Tensor | None:
        return batch_action_mask(
            tensordict,
            self.tensor_keys.action_mask,
            self.use_action_mask,
            type(self).__name__,
            next=next,
        )

    def _action_index(self, tensordict: TensorDictBase, like: Tensor) -> Tensor:
        action = tensordict.get(self.tensor_keys.action)
        if self.action_space == "categorical":
            return action.reshape(like.shape[:-1]).long()
        return action.to(torch.float).argmax(-1)

    def _action_values(self, tensordict: TensorDictBase, params: TensorDictBase) -> Tensor:
        td = tensordict.select(*self.value_network.in_keys, strict=False).clone(False)
        with params.to_module(self.value_network, preserve_module_state=False):
            self.value_network(td)
        return td.get(self.tensor_keys.action_value)

    def greedy_action(self, tensordict: TensorDictBase) -> Tensor:
        """The one-hot greedy action (``torch.bool``) of the current network among the available actions.

        One action per row (the first on ties), never a masked one; rows with no available action raise.

        Args:
            tensordict: observations (the value network's ``in_keys``) and, optionally, ``action_mask``.
        """
        with torch.no_grad():
            q = self._action_values(tensordict, self.value_network_params)
            mask = self._mask(tensordict)
            if mask is not None:
                check_action_mask(mask, self.tensor_keys.action_mask)
            index = masked_argmax(q, mask)
        return torch.nn.functional.one_hot(index, q.shape[-1]).bool()

    # ---------------------------------------------------------------------------------------------- parts
    @dispatch
    def value_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """The TD part: :math:`\\tfrac12 \\ell(Q(s, a), r + \\gamma (1 - d) \\max_{a' \\in \\mathcal{A}(s')} Q'(s', a'))`.

        As TorchRL's, it writes the squared TD error under ``priority`` and the action values under ``pred_val``
        (read by :meth:`cql_loss`) in ``tensordict``.

        Returns:
            the reduced loss and ``{"td_error", "pred_value", "target_value"}`` (detached batch means;
            ``pred_value`` over the available actions only).
        """
        pred_val = self._action_values(tensordict, self.value_network_params)
        index = self._action_index(tensordict, pred_val)
        mask = self._mask(tensordict)
        if mask is not None:
            check_action_mask(mask, self.tensor_keys.action_mask)
            if not bool(mask.gather(-1, index.unsqueeze(-1)).all()):
                raise ValueError(
                    f"The batch holds an action that its mask {self.tensor_keys.action_mask!r} marks unavailable; "
                    "the mask must be the one observed in the state where the action was taken."
                )
        pred_val_index = pred_val.gather(-1, index.unsqueeze(-1)).squeeze(-1)

        with torch.no_grad():
            next_td = tensordict.get("next")
            next_q = self._action_values(next_td, self._cached_detached_target_value_params)
            terminated = tensordict.get(("next", self.tensor_keys.terminated)).reshape(
                next_q.shape[:-1]
            )
            next_mask = self._mask(tensordict, next=True)
            if next_mask is not None:
                check_action_mask(
                    next_mask,
                    unravel_key(("next", self.tensor_keys.action_mask)),
                    rows=~terminated,
                )
            next_value = next_q.gather(-1, masked_argmax(next_q, next_mask).unsqueeze(-1))
            # a terminal state may have no available action: its value is never used, keep it finite
            next_value = torch.where(
                terminated.unsqueeze(-1), torch.zeros_like(next_value), next_value
            )
            target_value = self.value_estimator.value_estimate(
                tensordict, next_value=next_value
            ).squeeze(-1)

        td_error = (pred_val_index - target_value).pow(2).unsqueeze(-1)
        tensordict.set(self.tensor_keys.priority, td_error.detach(), inplace=True)
        tensordict.set(self.tensor_keys.pred_val, pred_val, inplace=True)
        loss = 0.5 * distance_loss(pred_val_index, target_value, self.loss_function)
        loss = self._reduce_loss(loss, tensordict=tensordict)
        if mask is None:
            pred_value = pred_val.detach().mean()
        else:
            pred_value = pred_val.detach().masked_fill(~mask, 0).sum() / mask.sum()
        metadata = {
            "td_error": td_error.mean(0).detach(),
            "pred_value": pred_value,
            "target_value": target_value.mean().detach(),
        }
        return loss, metadata

    def cql_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """The conservative term :math:`\\log \\sum_{a \\in \\mathcal{A}(s)} e^{Q(s, a)} - Q(s, a_{\\mathcal D})`.

        Reads the action values :meth:`value_loss` wrote under ``pred_val`` (call it first, as in TorchRL).
        """
        qvalues = tensordict.get(self.tensor_keys.pred_val, default=None)
        if qvalues is None:
            raise KeyError(
                f"Couldn't find the predicted qvalue with key {self.tensor_keys.pred_val} in the input tensordict. "
                "Call value_loss before cql_loss."
            )
        index = self._action_index(tensordict, qvalues)
        mask = self._mask(tensordict)
        masked = qvalues if mask is None else qvalues.masked_fill(~mask, float("-inf"))
        q_a = qvalues.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        loss_cql = torch.logsumexp(masked, dim=-1) - q_a
        return self._reduce_loss(loss_cql, tensordict=tensordict), {}
