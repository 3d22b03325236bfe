"""Batch-Constrained deep Q-learning for discrete actions (discrete BCQ), as a TorchRL loss module.

Fujimoto, Conti, Ghavamzadeh and Pineau (2019), "Benchmarking Batch Deep Reinforcement Learning Algorithms"
(arXiv:1910.01708), section 3 (discrete BCQ). The discrete counterpart of :class:`~torchrl_otc.objectives.BCQLoss`;
TorchRL has no BCQ loss. Actions are one-hot (TorchRL's ``OneHot`` spec); an optional boolean action mask
excludes unavailable actions from every choice the loss and its actor make.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor, nn
from torchrl.objectives import LossModule
from torchrl.objectives.utils import ValueEstimators, distance_loss

from torchrl_otc.objectives.utils import LossFunction, Reduction, build_value_estimator, call_net

__all__ = [
    "batch_action_mask",
    "DiscreteBCQActor",
    "DiscreteBCQLoss",
    "check_action_mask",
    "masked_argmax",
]


def check_action_mask(mask: Tensor, key: NestedKey, rows: Tensor | None = None) -> None:
    """Raises :class:`ValueError` if a row of ``mask`` (restricted to ``rows``) has no available action.

    Args:
        mask: a boolean action mask ``[*B, n_actions]`` (``True`` = available).
        key: the tensordict key it was read from, named in the error.
        rows: boolean ``[*B]``: only these rows must have an available action (e.g. the next states of
            transitions that are not terminated). ``None``: every row.

    Examples:
        >>> check_action_mask(torch.tensor([[True, False], [False, True]]), "action_mask")
        >>> check_action_mask(torch.tensor([[True, False], [False, False]]), "action_mask")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: The action mask 'action_mask' has 1 row(s) with no available action (first at index (1,)) ...
    """
    empty = ~mask.any(-1)
    if rows is not None:
        empty = empty & rows
    if bool(empty.any()):
        first = tuple(int(i) for i in empty.nonzero()[0])
        raise ValueError(
            f"The action mask {key!r} has {int(empty.sum())} row(s) with no available action (first at index "
            f"{first}) in a state the loss acts in or bootstraps from. Make at least one action available in "
            "every such state (e.g. a no-op), mark the transition terminated if its next state has no legal "
            "action, or drop those rows from the batch."
        )


def masked_argmax(values: Tensor, allowed: Tensor | None = None) -> Tensor:
    """Index ``[*B]`` of the largest of ``values`` ``[*B, n]`` among the ``allowed`` entries (first one on ties).

    A forbidden entry is set to :math:`-\\infty` before the argmax, so it is never chosen while one entry of the
    row is allowed (rows with none allowed are the caller's to refuse, see :func:`check_action_mask`). Exactly one
    index per row, unlike an ``== max`` one-hot that marks every tied action.

    Examples:
        >>> q = torch.tensor([[1.0, 5.0, 2.0], [3.0, 3.0, 0.0]])
        >>> masked_argmax(q, torch.tensor([[True, False, True], [True, True, True]])).tolist()
        [2, 0]
    """
    if allowed is not None:
        values = values.masked_fill(~allowed, float("-inf"))
    return values.argmax(-1)


def batch_action_mask(
    tensordict: TensorDictBase,
    key: NestedKey,
    use_action_mask: bool | Literal["auto"],
    who: str,
    *,
    next: bool = False,
) -> Tensor | None:
    """The batch's boolean action mask under ``key`` (``("next", key)`` with ``next``), as a discrete loss reads it.

    ``use_action_mask=False`` reads none; ``"auto"`` reads it when the batch has it; ``True`` requires it.

    Args:
        tensordict: the batch.
        key: the mask's key.
        use_action_mask: ``True``, ``False`` or ``"auto"``.
        who: the loss's name, for the error.

    Keyword Args:
        next: read the next state's mask.

    Examples:
        >>> from tensordict import TensorDict
        >>> td = TensorDict({"action_mask": torch.tensor([[1, 0]])}, [1])
        >>> batch_action_mask(td, "action_mask", "auto", "MyLoss")
        tensor([[ True, False]])
        >>> batch_action_mask(td, "action_mask", True, "MyLoss", next=True)
        Traceback (most recent call last):
        ...
        KeyError: "MyLoss(use_action_mask=True) needs the action mask ('next', 'action_mask') in the batch; store it, set the key with set_keys(action_mask=...), or use use_action_mask='auto'."
    """
    if use_action_mask is False:
        return None
    full = unravel_key(("next", key)) if next else key
    mask = tensordict.get(full, None)
    if mask is None:
        if use_action_mask is True:
            raise KeyError(
                f"{who}(use_action_mask=True) needs the action mask {full!r} in the batch; "
                "store it, set the key with set_keys(action_mask=...), or use use_action_mask='auto'."
            )
        return None
    return mask if mask.dtype == torch.bool else mask.bool()


class DiscreteBCQLoss(LossModule):
    r"""Discrete BCQ loss (Fujimoto, Conti, Ghavamzadeh and Pineau 2019, section 3), one-hot actions.

    Two networks: a Q-network :math:`Q_\theta(s, \cdot)` (``value_network``, one value per action) with target
    parameters :math:`\theta'`, and a generative model of the behaviour policy :math:`G_\omega(a|s)`
    (``imitation_network``, one logit per action, :math:`G_\omega = \mathrm{softmax}`). Two parts, one public
    method each, each returning ``(loss, metadata)``:

    1. :meth:`qvalue_loss`: the Huber TD loss on the batch-constrained double-Q target

       .. math::

           y = r + \gamma (1 - \mathrm{terminated})\, Q_{\theta'}(s', a'), \qquad
           a' = \arg\max_{a\,:\,G_\omega(a|s') / \max_{\hat a} G_\omega(\hat a|s') > \tau} Q_\theta(s', a),

       :math:`\mathcal{L}_Q = \ell_\kappa(Q_\theta(s, a) - y)` with :math:`\ell_\kappa` the Huber loss
       (``loss_function="smooth_l1"``): the next action is chosen by the *online* network among the actions
       whose behaviour probability is at least a fraction :math:`\tau` (``threshold``) of the most likely one,
       and valued by the target network.
    2. :meth:`imitation_loss`: :math:`G_\omega` trained by cross-entropy on the data's actions, plus the small
       penalty on its logits :math:`z = z_\omega(s)` of the authors' implementation:

       .. math::

           \mathcal{L}_G = -\log G_\omega(a|s) + \lambda_z \tfrac{1}{|\mathcal{A}|} \textstyle\sum_b z_b^2,
           \qquad \lambda_z = 10^{-2} .

    Action masks: when the batch holds a boolean ``action_mask`` (``True`` = available; ``[*B, n_actions]``),
    :math:`G_\omega` is a softmax over the available actions only (so the ratio test compares available actions),
    an unavailable action is set to :math:`-\infty` before the threshold and the argmax, and the next action is
    chosen with ``("next", "action_mask")``. A state the loss bootstraps from (the next state of a transition that
    is not terminated) or whose data action it imitates must have an available action, else :class:`ValueError`;
    the next mask of a terminated transition is not read (terminal states often have no legal action). A data
    action marked unavailable also raises. These checks synchronise with the device once per call.

    Terminal flags follow TorchRL: ``("next", "terminated")`` stops bootstrapping, ``done`` alone (a timeout) does
    not. Target parameters are created by :meth:`~torchrl.objectives.LossModule.convert_to_functional` and moved
    with :class:`~torchrl.objectives.SoftUpdate`. The greedy (deployment) action is :class:`DiscreteBCQActor`.
    The algorithm that trains it in the tuning loop, with Table 3's hyperparameters, is
    :class:`~torchrl_otc.trainers.algorithms.DiscreteBCQ` (its config is BCQ's, ``BCQConfig``).

    Args:
        value_network: a :class:`~tensordict.nn.TensorDictModule` mapping the observation(s) to the action values
            ``[*B, n_actions]`` (one ``out_key``); its module is called on the tensors of its ``in_keys``.
        imitation_network: a :class:`~tensordict.nn.TensorDictModule` mapping the observation(s) to the logits of
            :math:`G_\omega` ``[*B, n_actions]`` (one ``out_key``).

    Keyword Args:
        threshold: :math:`\tau` in :math:`[0, 1)`. ``0`` keeps every available action (DQN with double-Q);
            values near ``1`` keep only the behaviour policy's most likely action (imitation). Defaults to ``0.3``,
            the value of the paper.
        logit_penalty: :math:`\lambda_z`. Defaults to ``1e-2``.
        loss_function: TD regression loss, ``"smooth_l1"`` (Huber, the paper), ``"l2"`` or ``"l1"``.
        use_action_mask: ``"auto"`` (use ``action_mask`` and ``("next", "action_mask")`` when the batch holds
            them), ``True`` (require them; they join :attr:`in_keys`) or ``False`` (ignore them).
            Defaults to ``"auto"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``. Defaults to ``"mean"``.
        use_prioritized_weights: ``"auto"`` (weight by ``priority_weight`` when the batch has it), ``True`` or
            ``False``. Defaults to ``"auto"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.data import OneHot
        >>> from torchrl.modules import MLP
        >>> from torchrl.objectives import SoftUpdate
        >>> _ = torch.manual_seed(0)
        >>> n_obs, n_act, batch = 4, 3, 8
        >>> qnet = TensorDictModule(MLP(in_features=n_obs, out_features=n_act, num_cells=[32]),
        ...                         in_keys=["observation"], out_keys=["action_value"])
        >>> imitation = TensorDictModule(MLP(in_features=n_obs, out_features=n_act, num_cells=[32]),
        ...                              in_keys=["observation"], out_keys=["imitation_logits"])
        >>> loss = DiscreteBCQLoss(qnet, imitation, threshold=0.3).make_value_estimator(gamma=0.99)
        >>> updater = SoftUpdate(loss, tau=0.005)
        >>> spec = OneHot(n_act)
        >>> mask = torch.ones(batch, n_act, dtype=torch.bool)
        >>> mask[:, 2] = False  # action 2 is unavailable everywhere
        >>> data = TensorDict({
        ...     "observation": torch.randn(batch, n_obs),
        ...     "action": torch.nn.functional.one_hot(torch.randint(2, (batch,)), n_act).bool(),
        ...     "action_mask": mask,
        ...     ("next", "observation"): torch.randn(batch, n_obs),
        ...     ("next", "action_mask"): mask.clone(),
        ...     ("next", "reward"): torch.randn(batch, 1),
        ...     ("next", "done"): torch.zeros(batch, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(batch, 1, dtype=torch.bool),
        ... }, [batch])
        >>> out = loss(data)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_imitation', 'loss_qvalue']
        >>> (out["loss_qvalue"] + out["loss_imitation"]).backward()
        >>> updater.step()
        >>> policy = TensorDictModule(DiscreteBCQActor(loss), in_keys=["observation", "action_mask"],
        ...                           out_keys=["action"])
        >>> action = policy(TensorDict({"observation": torch.randn(5, n_obs), "action_mask": mask[:5]}, [5]))["action"]
        >>> action.shape, bool(spec.is_in(action)), bool(action[:, 2].any())
        (torch.Size([5, 3]), True, False)
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys (``set_keys(name=key)``).

        Attributes:
            action (NestedKey): the one-hot action. Defaults to ``"action"``.
            action_mask (NestedKey): the boolean mask of available actions, also read under ``"next"``.
                Defaults to ``"action_mask"``.
            value (NestedKey): the name the value estimator gives the chosen action's value.
                Defaults to ``"chosen_action_value"``.
            priority (NestedKey): where :meth:`forward` writes the squared TD error for prioritised replay.
                Defaults to ``"td_error"``.
            reward (NestedKey): the reward, read under ``"next"``. Defaults to ``"reward"``.
            done (NestedKey): the done flag, read under ``"next"``. Defaults to ``"done"``.
            terminated (NestedKey): the termination flag, read under ``"next"``. Defaults to ``"terminated"``.
            priority_weight (NestedKey): importance weights, read only when present.
                Defaults to ``"priority_weight"``.
        """

        action: NestedKey = "action"
        action_mask: NestedKey = "action_mask"
        value: NestedKey = "chosen_action_value"
        priority: NestedKey = "td_error"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        priority_weight: NestedKey = "priority_weight"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = (
        ValueEstimators.TD0,
        ValueEstimators.TD1,
        ValueEstimators.TDLambda,
    )
    out_keys = [
        "loss_qvalue",
        "loss_imitation",
        "imitation_nll",
        "imitation_logit_penalty",
        "pred_value",
        "target_value",
        "next_state_value",
    ]

    value_network: TensorDictModule
    imitation_network: TensorDictModule
    value_network_params: TensorDictParams
    imitation_network_params: TensorDictParams
    target_value_network_params: TensorDictParams
    target_imitation_network_params: TensorDictParams

    def __init__(
        self,
        value_network: TensorDictModule,
        imitation_network: TensorDictModule,
        *,
        threshold: float = 0.3,
        logit_penalty: float = 1e-2,
        loss_function: LossFunction = "smooth_l1",
        use_action_mask: bool | Literal["auto"] = "auto",
        reduction: Reduction | None = None,
        use_prioritized_weights: str | bool = "auto",
    ) -> None:
        if reduction is None:
            reduction = "mean"
        super().__init__()
        if not 0.0 <= threshold < 1.0:
            raise ValueError(
                f"threshold must be in [0, 1) (the most likely action has ratio 1); got {threshold}."
            )
        if logit_penalty < 0:
            raise ValueError(f"logit_penalty must be >= 0; got {logit_penalty}.")
        if use_action_mask not in (True, False, "auto"):
            raise ValueError(
                f"use_action_mask must be True, False or 'auto'; got {use_action_mask!r}."
            )
        for name, net in (
            ("value_network", value_network),
            ("imitation_network", imitation_network),
        ):
            if not isinstance(net, TensorDictModule) or len(net.out_keys) != 1:
                raise TypeError(
                    f"{name} must be a TensorDictModule mapping the observation(s) to one value per action "
                    f"(one out_key); got {type(net).__name__} with out_keys {getattr(net, 'out_keys', None)}."
                )
        self._in_keys = None
        self.threshold = threshold
        self.logit_penalty = logit_penalty
        self.loss_function = loss_function
        self.use_action_mask = use_action_mask
        self.reduction = reduction
        self.use_prioritized_weights = use_prioritized_weights
        self.convert_to_functional(value_network, "value_network", create_target_params=True)
        self.convert_to_functional(
            imitation_network, "imitation_network", create_target_params=False
        )

    # ----------------------------------------------------------------------------------------------- keys
    @property
    def observation_keys(self) -> list[NestedKey]:
        """The keys the two networks read, in order of first use."""
        return list(
            dict.fromkeys(
                unravel_key(k)
                for k in (*self.value_network.in_keys, *self.imitation_network.in_keys)
            )
        )

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                value=self.tensor_keys.value,
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
            )
        self._set_in_keys()

    def _set_in_keys(self) -> None:
        keys = [
            self.tensor_keys.action,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
            *self.observation_keys,
            *[("next", key) for key in self.observation_keys],
        ]
        if self.use_action_mask is True:
            keys += [self.tensor_keys.action_mask, ("next", self.tensor_keys.action_mask)]
        self._in_keys = list(dict.fromkeys(unravel_key(key) for key in keys))

    @property
    def in_keys(self) -> list[NestedKey]:
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values: list[NestedKey]) -> None:
        self._in_keys = values

    def make_value_estimator(
        self, value_type: ValueEstimators | None = None, **hyperparams
    ) -> DiscreteBCQLoss:
        r"""Builds the value estimator of the TD target and returns the loss (so that calls chain).

        ``TD0`` (default) is the one-step backup :math:`r + \gamma (1 - \mathrm{terminated})\, Q_{\theta'}(s', a')`
        of the paper, for batches of single transitions. ``TD1`` and ``TDLambda`` build the (lambda-)return along
        the last batch dimension from the loss's own next-state values and need batches of trajectories.

        Args:
            value_type: ``ValueEstimators.TD0`` (default), ``TD1`` or ``TDLambda``, or a
                :class:`~torchrl.objectives.value.ValueEstimatorBase` instance or subclass.
            **hyperparams: e.g. ``gamma``, ``lmbda`` (``TDLambda``).
        """
        return build_value_estimator(
            self, value_type, hyperparams, value_key=self.tensor_keys.value
        )

    # ------------------------------------------------------------------------------------------- helpers
    def action_values(self, inputs: Mapping[NestedKey, Tensor], params: TensorDictBase) -> Tensor:
        """:math:`Q(s, \\cdot)` ``[*B, n_actions]`` with ``params`` (``value_network_params`` or its target).

        Args:
            inputs: the observation tensors by key (at least the value network's ``in_keys``).
            params: the value network parameters to use.
        """
        tensors = [inputs[unravel_key(k)] for k in self.value_network.in_keys]
        return call_net(self, "value_network", params, tensors)

    def imitation_logits(self, inputs: Mapping[NestedKey, Tensor]) -> Tensor:
        """The logits :math:`z_\\omega(s)` ``[*B, n_actions]`` of :math:`G_\\omega` (current parameters).

        Args:
            inputs: the observation tensors by key (at least the imitation network's ``in_keys``).
        """
        tensors = [inputs[unravel_key(k)] for k in self.imitation_network.in_keys]
        return call_net(self, "imitation_network", self.imitation_network_params, tensors)

    def allowed_actions(self, logits: Tensor, mask: Tensor | None = None) -> Tensor:
        r"""The actions the batch constraint keeps, boolean ``[*B, n_actions]``.

        .. math::

            \mathrm{allowed}(a) = m(a) \wedge \frac{G_\omega(a|s)}{\max_{\hat a} G_\omega(\hat a|s)} > \tau,
            \qquad G_\omega = \mathrm{softmax}(z_\omega(s) \text{ with } z_a = -\infty \text{ where } m(a)
            \text{ is false}),

        computed in log space: :math:`\log G(a) - \max \log G > \log \tau`. The most likely available action is
        always kept (ratio 1).

        Args:
            logits: :math:`z_\omega(s)`.
            mask: the available actions :math:`m` (``None``: all).

        Examples:
            >>> loss = DiscreteBCQLoss(
            ...     TensorDictModule(nn.Linear(2, 3), in_keys=["observation"], out_keys=["action_value"]),
            ...     TensorDictModule(nn.Linear(2, 3), in_keys=["observation"], out_keys=["logits"]),
            ...     threshold=0.3)
            >>> logits = torch.log(torch.tensor([[0.5, 0.1, 0.4]]))  # ratios 1, 0.2, 0.8
            >>> loss.allowed_actions(logits).tolist()
            [[True, False, True]]
            >>> loss.allowed_actions(logits, torch.tensor([[False, True, True]])).tolist()  # ratios -, 0.25, 1
            [[False, False, True]]
        """
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        log_prob = torch.log_softmax(logits, -1)
        ratio = (log_prob - log_prob.max(-1, keepdim=True).values).exp()
        allowed = ratio > self.threshold
        return allowed if mask is None else allowed & mask

    def select_actions(
        self,
        inputs: Mapping[NestedKey, Tensor],
        mask: Tensor | None = None,
        params: TensorDictBase | None = None,
    ) -> Tensor:
        """Index ``[*B]`` of the greedy batch-constrained action: ``argmax`` of ``Q`` over :meth:`allowed_actions`.

        Args:
            inputs: the observation tensors by key.
            mask: the available actions (``None``: all).
            params: value network parameters. Defaults to the current (online) ones.
        """
        q = self.action_values(inputs, self.value_network_params if params is None else params)
        return masked_argmax(q, self.allowed_actions(self.imitation_logits(inputs), mask))

    def _mask(self, tensordict: TensorDictBase, next: bool = False) -> Tensor | None:
        return batch_action_mask(
            tensordict,
            self.tensor_keys.action_mask,
            self.use_action_mask,
            type(self).__name__,
            next=next,
        )

    def _observations(
        self, tensordict: TensorDictBase, next: bool = False
    ) -> dict[NestedKey, Tensor]:
        if next:
            return {k: tensordict.get(unravel_key(("next", k))) for k in self.observation_keys}
        return {k: tensordict.get(k) for k in self.observation_keys}

    def _action_index(self, tensordict: TensorDictBase, like: Tensor) -> Tensor:
        action = tensordict.get(self.tensor_keys.action)
        if action.shape != like.shape:
            raise ValueError(
                f"DiscreteBCQLoss expects one-hot actions of shape {tuple(like.shape)} (batch, n_actions) under "
                f"{self.tensor_keys.action!r}; got shape {tuple(action.shape)}. Store actions with a OneHot spec "
                "(e.g. torch.nn.functional.one_hot(index, n_actions))."
            )
        return action.to(torch.float).argmax(-1)

    # ---------------------------------------------------------------------------------------------- parts
    def imitation_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """Part 2: cross-entropy of :math:`G_\\omega` on the data's actions plus the logit penalty.

        Args:
            tensordict: a batch with the observation and action keys (and, optionally, the action mask).

        Returns:
            the reduced loss (gradient to the imitation network only) and ``{"imitation_nll",
            "imitation_logit_penalty"}`` (detached batch means).
        """
        weights = self._maybe_get_priority_weight(tensordict)
        logits = self.imitation_logits(self._observations(tensordict))
        index = self._action_index(tensordict, logits).unsqueeze(-1)
        mask = self._mask(tensordict)
        masked_logits = logits
        if mask is not None:
            check_action_mask(mask, self.tensor_keys.action_mask)
            if not bool(mask.gather(-1, index).all()):
                raise ValueError(
                    f"The batch holds an action that its mask {self.tensor_keys.action_mask!r} marks unavailable; "
                    "the mask must be the one observed in the state where the action was taken."
                )
            masked_logits = logits.masked_fill(~mask, float("-inf"))
        nll = -torch.log_softmax(masked_logits, -1).gather(-1, index).squeeze(-1)
        penalty = self.logit_penalty * logits.pow(2).mean(-1)
        loss = self._reduce_loss(nll + penalty, tensordict=tensordict, weights=weights)
        return loss, {
            "imitation_nll": nll.detach().mean(),
            "imitation_logit_penalty": penalty.detach().mean(),
        }

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """Part 1: the Huber TD loss on the batch-constrained double-Q target (gradient to the Q-network only).

        Args:
            tensordict: a batch with the observation, action and ``next`` keys (and, optionally, the masks).

        Returns:
            the reduced loss and ``{"td_error", "pred_value", "target_value", "next_state_value"}`` (detached,
            per sample).
        """
        weights = self._maybe_get_priority_weight(tensordict)
        with torch.no_grad():
            next_obs = self._observations(tensordict, next=True)
            next_mask = self._mask(tensordict, next=True)
            if next_mask is not None:
                terminated = tensordict.get(("next", self.tensor_keys.terminated))
                check_action_mask(
                    next_mask,
                    unravel_key(("next", self.tensor_keys.action_mask)),
                    rows=~terminated.reshape(next_mask.shape[:-1]),
                )
            next_action = self.select_actions(next_obs, next_mask)
            next_q = self.action_values(next_obs, self.target_value_network_params)
            next_value = next_q.gather(-1, next_action.unsqueeze(-1))
            target_value = self.value_estimator.value_estimate(
                tensordict, next_value=next_value
            ).squeeze(-1)
            next_value = next_value.squeeze(-1)
        q = self.action_values(self._observations(tensordict), self.value_network_params)
        pred = q.gather(-1, self._action_index(tensordict, q).unsqueeze(-1)).squeeze(-1)
        loss = distance_loss(pred, target_value, loss_function=self.loss_function)
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=weights)
        metadata = {
            "td_error": (pred.detach() - target_value).pow(2),
            "pred_value": pred.detach(),
            "target_value": target_value,
            "next_state_value": next_value,
        }
        return loss, metadata

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes :meth:`qvalue_loss` and :meth:`imitation_loss` and gathers them.

        Writes the per-sample squared TD error under ``tensor_keys.priority`` in ``tensordict``.
        """
        loss_qvalue, meta_q = self.qvalue_loss(tensordict)
        loss_imitation, meta_g = self.imitation_loss(tensordict)
        tensordict.set(self.tensor_keys.priority, meta_q.pop("td_error"))
        return TensorDict(
            {"loss_qvalue": loss_qvalue, "loss_imitation": loss_imitation, **meta_g, **meta_q}
        )


class DiscreteBCQActor(nn.Module):
    r"""Discrete BCQ's greedy action, one-hot: :math:`\arg\max_{a \in \mathrm{allowed}(s)} Q_\theta(s, a)`.

    Fujimoto et al. (2019), section 3: the action of highest value among the available actions whose behaviour
    probability is above ``threshold`` times the largest (:meth:`DiscreteBCQLoss.allowed_actions`). Deterministic
    (ties go to the lowest index) and without gradient. The module reads the live parameters of ``loss`` (the
    Q-network's and the imitation network's, registered here), so it follows training without copies.

    Call it with the observation tensors in the order of ``loss.observation_keys`` and, when masks are used, the
    boolean action mask last; wrap it in a :class:`~tensordict.nn.TensorDictModule` with ``in_keys=actor.in_keys``
    and ``out_keys=[loss.tensor_keys.action]`` to use it as a TorchRL policy. A row whose mask has no available
    action raises :class:`ValueError`.

    Args:
        loss: the :class:`DiscreteBCQLoss` whose networks and parameters to use.

    Keyword Args:
        use_action_mask: whether :attr:`in_keys` ends with the mask key. ``None``: unless
            ``loss.use_action_mask`` is ``False``. A mask passed as an extra last argument is used either way.
        dtype: the dtype of the one-hot action. Defaults to ``torch.bool``, that of TorchRL's ``OneHot`` spec.

    Examples:
        >>> loss = DiscreteBCQLoss(
        ...     TensorDictModule(nn.Linear(2, 3), in_keys=["observation"], out_keys=["action_value"]),
        ...     TensorDictModule(nn.Linear(2, 3), in_keys=["observation"], out_keys=["logits"]))
        >>> actor = DiscreteBCQActor(loss)
        >>> actor.in_keys
        ['observation', 'action_mask']
        >>> out = actor(torch.randn(4, 2), torch.tensor([[False, False, True]]).expand(4, 3))
        >>> out.tolist() == [[False, False, True]] * 4
        True
    """

    def __init__(
        self,
        loss: DiscreteBCQLoss,
        *,
        use_action_mask: bool | None = None,
        dtype: torch.dtype = torch.bool,
    ) -> None:
        super().__init__()
        self.value_params = loss.value_network_params
        self.imitation_params = loss.imitation_network_params
        self.use_action_mask = (
            loss.use_action_mask is not False if use_action_mask is None else use_action_mask
        )
        self.dtype = dtype
        # the loss itself is not registered: its parameters are, through the two attributes above.
        self.__dict__["_loss"] = loss

    @property
    def in_keys(self) -> list[NestedKey]:
        """The loss's observation keys, then its action mask key when :attr:`use_action_mask`."""
        loss: DiscreteBCQLoss = self.__dict__["_loss"]
        keys = list(loss.observation_keys)
        if self.use_action_mask:
            keys.append(loss.tensor_keys.action_mask)
        return keys

    @torch.no_grad()
    def forward(self, *inputs: Tensor) -> Tensor:
        """The one-hot greedy action ``[*B, n_actions]`` for observations (and optionally a mask, last)."""
        loss: DiscreteBCQLoss = self.__dict__["_loss"]
        keys = loss.observation_keys
        if len(inputs) not in (len(keys), len(keys) + 1):
            raise TypeError(
                f"DiscreteBCQActor expects the {len(keys)} observation tensors {keys}, optionally followed by the "
                f"action mask; got {len(inputs)} tensors."
            )
        mask = None
        if len(inputs) == len(keys) + 1:
            mask = inputs[-1] if inputs[-1].dtype == torch.bool else inputs[-1].bool()
            check_action_mask(mask, loss.tensor_keys.action_mask)
        elif self.use_action_mask:
            raise TypeError(
                f"DiscreteBCQActor(use_action_mask=True) expects the action mask after the observations {keys}."
            )
        obs = dict(zip(keys, inputs[: len(keys)]))
        q = loss.action_values(obs, self.value_params)
        index = masked_argmax(q, loss.allowed_actions(loss.imitation_logits(obs), mask))
        return torch.nn.functional.one_hot(index, q.shape[-1]).to(self.dtype)
