r"""The base algorithms of the OTC paper on discrete (one-hot) actions: discrete BCQ and discrete CQL (issue 17).

The OTC paper (section 4, Table 3) runs BCQ and CQL on continuous control; their discrete variants let the tuning
loop train the same two algorithms on discrete tasks with the same configs
(:class:`~torchrl_otc.configs.algorithms.BCQConfig`, :class:`~torchrl_otc.configs.algorithms.CQLConfig`):

- :class:`DiscreteBCQ`: discrete BCQ of Fujimoto, Conti, Ghavamzadeh and Pineau (2019), "Benchmarking Batch
  Deep Reinforcement Learning Algorithms" (arXiv:1910.01708), section 3, on
  :class:`~torchrl_otc.objectives.DiscreteBCQLoss`;
- :class:`DiscreteCQL`: discrete CQL(H) of Kumar et al. (2020), eq. (4), on
  :class:`~torchrl_otc.objectives.MaskedDiscreteCQLLoss`.

Actions. The action spec is TorchRL's ``OneHot(n)`` spec (shape ``[n]``), which
:func:`~torchrl_otc.trainers.algorithms.make_algorithm` recognises by itself; a
``Bounded(0, 1, (n,))`` spec is accepted too when the caller asks for the discrete class
(``make_algorithm(..., discrete=True)`` or the class itself). ``Categorical`` (index) and
``MultiOneHot`` specs are refused. In a batch the action is one-hot ``[*B, n]`` of any dtype
(``bool`` as TorchRL's ``OneHot`` spec, ``int64``, float): the networks read only the observation and the losses
turn the action into its index, so the data is never cast. The actions these classes *write* (:meth:`act`,
:meth:`explore`) are one-hot in the default floating dtype (``torch.get_default_dtype()``, float32 unless changed);
``action.bool()`` gives the dtype of TorchRL's ``OneHot`` spec.

Action masks. An optional boolean ``"action_mask"`` (``True`` = available, ``[*B, n]``) and
``("next", "action_mask")`` in a batch are honoured by both losses (``use_action_mask="auto"``); :meth:`act` and
:meth:`explore` read ``"action_mask"`` when the tensordict has it. A row with no available action raises
:class:`ValueError` (:func:`~torchrl_otc.objectives.discrete_bcq.check_action_mask`).
"""

from __future__ import annotations

import abc
from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from torch import Tensor
from torchrl.data import Categorical, Composite, MultiOneHot, OneHot, TensorSpec
from torchrl.modules import MLP

from torchrl_otc.configs.algorithms import AlgorithmConfig, BCQConfig, CQLConfig
from torchrl_otc.objectives.discrete_bcq import DiscreteBCQLoss, check_action_mask, masked_argmax
from torchrl_otc.objectives.discrete_cql import MaskedDiscreteCQLLoss
from torchrl_otc.objectives.utils import call_net
from torchrl_otc.trainers.algorithms.base import Algorithm, Parts
from torchrl_otc.trainers.algorithms.networks import ACTION_KEY, OBSERVATION_KEY, trainable

__all__ = [
    "ACTION_MASK_KEY",
    "DiscreteAlgorithm",
    "DiscreteBCQ",
    "DiscreteCQL",
    "DiscreteGreedyPolicy",
    "is_discrete_action_spec",
]

#: The key of the optional boolean mask of available actions (``True`` = available), ``[*B, n]``.
ACTION_MASK_KEY = "action_mask"


def _action_leaf(action_spec: TensorSpec) -> TensorSpec:
    if isinstance(action_spec, Composite) and ACTION_KEY in action_spec.keys():
        return action_spec[ACTION_KEY]
    return action_spec


def is_discrete_action_spec(action_spec: TensorSpec) -> bool:
    """Whether ``action_spec`` (or its ``"action"`` entry) is a ``OneHot`` spec.

    :func:`~torchrl_otc.trainers.algorithms.make_algorithm` builds the discrete classes for these specs.

    Args:
        action_spec: an agent's action spec, or a Composite with ``"action"``.

    Examples:
        >>> from torchrl.data import Bounded, Composite, OneHot
        >>> is_discrete_action_spec(OneHot(4)), is_discrete_action_spec(Composite(action=OneHot(4)))
        (True, True)
        >>> is_discrete_action_spec(Bounded(0.0, 1.0, (4,)))
        False
    """
    return isinstance(_action_leaf(action_spec), OneHot)


class DiscreteGreedyPolicy(TensorDictModuleBase):
    """The deployment policy of a :class:`DiscreteAlgorithm`: its greedy allowed action, one-hot.

    Reads ``"observation"`` and, when present, ``"action_mask"`` (an optional key, so it is not in
    :attr:`in_keys`); writes ``"action"`` ``[*B, n]`` in the default floating dtype. It holds no parameter of its
    own: it calls :meth:`DiscreteAlgorithm.greedy_action`, which reads the algorithm's live parameters.

    Args:
        algorithm: the algorithm whose greedy action to deploy.
    """

    def __init__(self, algorithm: DiscreteAlgorithm) -> None:
        super().__init__()
        self.in_keys = [OBSERVATION_KEY]
        self.out_keys = [ACTION_KEY]
        self.__dict__["_algorithm"] = algorithm  # not a submodule: the algorithm is no nn.Module

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        algorithm: DiscreteAlgorithm = self.__dict__["_algorithm"]
        action = algorithm.greedy_action(
            tensordict.get(OBSERVATION_KEY), tensordict.get(ACTION_MASK_KEY, None)
        )
        tensordict.set(ACTION_KEY, action)
        return tensordict


def _q_network(cfg: AlgorithmConfig, obs_dim: int, n: int, out_key: str) -> TensorDictModule:
    """An MLP ``obs_dim -> hidden_sizes -> n`` (Table 3 sizes and activation) writing ``out_key``."""
    mlp = MLP(
        in_features=obs_dim,
        out_features=n,
        num_cells=list(cfg.hidden_sizes),
        activation_class=cfg.activation_class,
    )
    return TensorDictModule(mlp, in_keys=[OBSERVATION_KEY], out_keys=[out_key])


class DiscreteAlgorithm(Algorithm):
    r"""What :class:`DiscreteBCQ` and :class:`DiscreteCQL` share: one-hot specs, the greedy policy, exploration and
    the values :math:`Q(s, a)`, :math:`V(s)` of the value distance ``d_q`` (OTC paper section 3.3).

    A subclass builds a Q-network :math:`Q_\theta(s, \cdot)` (one value per action, one head: there are no twin
    critics, so the ``reduction`` over critics of :meth:`q_value` and :meth:`state_value` changes nothing) and
    says which actions its greedy policy may take (:meth:`allowed_actions`) and how its ``"sample"`` state value
    weighs the actions (:meth:`action_distribution`).

    Args:
        observation_spec: the agent's observation spec, shape ``[obs_dim]``.
        action_spec: a ``OneHot(n)`` spec, or :class:`~torchrl.data.Bounded`
            ``(0, 1, (n,))`` (or a Composite with ``"action"``).
        config: the algorithm's config; Table 3's defaults when omitted.
        device: where to build the parameters. Defaults to the CPU.

    Keyword Args:
        seed: seed of the parameter initialisation (the global random state is left untouched).
    """

    discrete_actions = True
    num_actions: int

    def __init__(
        self,
        observation_spec: TensorSpec,
        action_spec: TensorSpec,
        config: AlgorithmConfig | None = None,
        device: torch.device | str | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        leaf = _action_leaf(action_spec)
        if isinstance(leaf, (Categorical, MultiOneHot)):
            raise TypeError(
                f"{type(self).__name__} takes one-hot actions: a torchrl.data.OneHot(n) action spec (or "
                f"Bounded(0, 1, (n,))); got {type(leaf).__name__}. Store actions one-hot "
                "(torch.nn.functional.one_hot(index, n)) and use OneHot(n)."
            )
        super().__init__(observation_spec, action_spec, config, device, seed=seed)

    def _check_one_hot_spec(
        self, action_spec: TensorSpec, low: Tensor, high: Tensor, act_dim: int
    ) -> None:
        """Refuses a Bounded spec whose bounds are not 0 and 1; sets :attr:`num_actions`."""
        self.num_actions = act_dim
        if not isinstance(action_spec, OneHot) and not bool((low == 0).all() and (high == 1).all()):
            raise ValueError(
                "A discrete algorithm reads a Bounded action spec as one-hot actions and needs its bounds to be "
                f"0 and 1; got low={low.tolist()}, high={high.tolist()}. Use torchrl.data.OneHot(n)."
            )

    # ------------------------------------------------------------------------------- to implement
    @abc.abstractmethod
    def action_values(self, observation: Tensor) -> Tensor:
        r""":math:`Q_\theta(s, \cdot)` ``[*B, n]`` of the current Q-network (with gradient if enabled)."""

    @abc.abstractmethod
    def allowed_actions(self, observation: Tensor, mask: Tensor | None = None) -> Tensor:
        """Boolean ``[*B, n]``: the actions the greedy policy may take (``mask``: the available ones, or all)."""

    @abc.abstractmethod
    def action_distribution(self, observation: Tensor) -> Tensor:
        """``[*B, n]`` probabilities of the policy's action distribution, read by ``state_value("sample")``."""

    # ----------------------------------------------------------------------------------- acting
    @staticmethod
    def _mask(mask: Tensor | None, like: Tensor) -> Tensor | None:
        if mask is None:
            return None
        mask = mask.to(like.device)
        mask = mask if mask.dtype == torch.bool else mask.bool()
        if mask.shape[-1] != like.shape[-1]:
            raise ValueError(
                f"{ACTION_MASK_KEY!r} must have one entry per action ({like.shape[-1]}); got shape "
                f"{tuple(mask.shape)}."
            )
        check_action_mask(mask, ACTION_MASK_KEY)
        return mask

    @torch.no_grad()
    def greedy_action(self, observation: Tensor, mask: Tensor | None = None) -> Tensor:
        """The one-hot greedy action among :meth:`allowed_actions` (first index on ties), default float dtype.

        Args:
            observation: ``[*B, obs_dim]``.
            mask: optional boolean ``[*B, n]`` of available actions.

        Returns:
            ``[*B, n]``, one 1 per row, never on a masked action.
        """
        observation = observation.to(self.device)
        q = self.action_values(observation)
        mask = self._mask(mask, q)
        index = masked_argmax(q, self.allowed_actions(observation, mask))
        return torch.nn.functional.one_hot(index, q.shape[-1]).to(torch.get_default_dtype())

    @torch.no_grad()
    def explore(
        self,
        tensordict: TensorDictBase,
        epsilon: float,
        generator: torch.Generator | None = None,
    ) -> TensorDictBase:
        r"""Epsilon-greedy action for collection on discrete actions (issue 17, item 6), one-hot, into ``"action"``.

        The exploration of the sequential collection (OTC paper section 4.6: one agent explores while the others
        exploit) on discrete tasks, where the Gaussian noise of the continuous algorithms has no meaning: in
        each row, with probability :math:`\epsilon` an action drawn uniformly among the *available* actions
        (``"action_mask"`` when present, else all; BCQ's threshold does not restrict exploration), else
        :meth:`act`'s greedy action. ``epsilon=0`` is :meth:`act`.

        Args:
            tensordict: holds ``"observation"`` ``[*B, obs_dim]`` and optionally ``"action_mask"``.
            epsilon: the probability of a random action, in ``[0, 1]``.
            generator: the random draws' generator (its device is used for the draws); the global one when
                omitted.

        Returns:
            ``tensordict`` with ``"action"`` ``[*B, n]`` (default float dtype).
        """
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1]; got {epsilon}.")
        observation = tensordict.get(OBSERVATION_KEY).to(self.device)
        greedy = self.greedy_action(observation, tensordict.get(ACTION_MASK_KEY, None))
        n = greedy.shape[-1]
        mask = self._mask(tensordict.get(ACTION_MASK_KEY, None), greedy)
        available = (
            mask if mask is not None else torch.ones_like(greedy, dtype=torch.bool)
        ).reshape(-1, n)
        draw_device = generator.device if generator is not None else self.device
        rows = available.shape[0]
        random_index = torch.multinomial(
            available.to(draw_device, torch.float), 1, generator=generator
        ).squeeze(-1)
        explore = torch.rand(rows, generator=generator, device=draw_device) < epsilon
        random_action = torch.nn.functional.one_hot(random_index, n).to(greedy.dtype)
        action = torch.where(
            explore.unsqueeze(-1).to(self.device),
            random_action.to(self.device),
            greedy.reshape(-1, n),
        )
        tensordict.set(ACTION_KEY, action.reshape(greedy.shape))
        return tensordict

    # ----------------------------------------------------------------------------- values (d_q)
    @staticmethod
    def _check_reduction(reduction: str) -> None:
        if reduction not in ("mean", "min"):
            raise ValueError(f"reduction must be 'mean' or 'min'; got {reduction!r}.")

    @torch.no_grad()
    def q_value(
        self,
        observation: Tensor,
        action: Tensor,
        reduction: Literal["mean", "min"] = "mean",
    ) -> Tensor:
        r""":math:`Q_\theta(s, a) = Q_\theta(s, \cdot) \cdot \mathrm{onehot}(a)` (no gradient).

        Args:
            observation: ``[N, obs_dim]`` (moved to :attr:`device`).
            action: one-hot ``[N, n]`` of any dtype (its argmax is the action).
            reduction: accepted for the value distance's interface; the discrete Q-network has one head, so
                ``"mean"`` and ``"min"`` are the same.

        Returns:
            ``[N]``.
        """
        self._check_reduction(reduction)
        q = self.action_values(observation.to(self.device))
        if action.shape[-1] != q.shape[-1]:
            raise ValueError(
                f"{type(self).__name__}.q_value takes one-hot actions [N, {q.shape[-1]}]; got shape "
                f"{tuple(action.shape)}."
            )
        index = action.to(self.device, torch.float).argmax(-1, keepdim=True)
        return q.gather(-1, index).squeeze(-1)

    @torch.no_grad()
    def state_value(
        self,
        observation: Tensor,
        actions: Literal["policy", "sample"] = "policy",
        num_samples: int = 10,
        reduction: Literal["mean", "min"] = "mean",
    ) -> Tensor:
        r""":math:`V(s)` as the value distance ``d_q`` reads it (OTC paper section 3.3; no gradient).

        ``actions="policy"``: :math:`\max_{a \in \mathrm{allowed}(s)} Q_\theta(s, a)`, the value of :meth:`act`'s
        greedy action. ``actions="sample"``: the exact expectation :math:`\sum_a \pi(a|s) Q_\theta(s, a)` under
        :meth:`action_distribution` (the limit of averaging ``num_samples`` sampled actions, computed without
        sampling, so ``num_samples`` is not read). The method takes observations only: every action counts as
        available (no action mask can be given), a limitation on tasks whose masks vary by state.

        Args:
            observation: ``[N, obs_dim]`` (moved to :attr:`device`).
            actions: ``"policy"`` or ``"sample"``.
            num_samples: unused (the expectation is exact); kept for the value distance's interface.
            reduction: as in :meth:`q_value` (one head: no effect).

        Returns:
            ``[N]``.
        """
        self.check_state_value(actions)
        self._check_reduction(reduction)
        observation = observation.to(self.device)
        q = self.action_values(observation)
        if actions == "policy":
            return q.masked_fill(~self.allowed_actions(observation), float("-inf")).amax(-1)
        return (self.action_distribution(observation) * q).sum(-1)

    def _critic_values(self, observation: Tensor, action: Tensor) -> Tensor:
        return self.q_value(observation, action).unsqueeze(0)


class DiscreteBCQ(DiscreteAlgorithm):
    r"""Discrete BCQ for one agent (Fujimoto, Conti, Ghavamzadeh and Pineau 2019, section 3), OTC's BCQ on one-hot
    actions (OTC paper section 4, Table 3).

    Networks (Table 3, BCQ: MLPs of ``hidden_sizes`` (64, 64) with ``activation``): a Q-network
    :math:`Q_\theta(s, \cdot)` with a target copy and a generative model of the behaviour policy
    :math:`G_\omega(a|s) = \mathrm{softmax}(z_\omega(s))`, trained by
    :class:`~torchrl_otc.objectives.DiscreteBCQLoss` (double-Q target restricted to the actions with
    :math:`G_\omega(a|s') / \max_{\hat a} G_\omega(\hat a|s') > \tau`,
    :math:`\tau` = ``config.discrete_threshold``, 0.3 in the paper). Parts: ``"critic"`` (the Q-network,
    ``critic_lr``) and ``"imitation"`` (:math:`G_\omega`, ``actor_lr``: it takes the place of BCQ's actor).
    Update: both losses from the same parameters (the authors' code takes one step on their sum), each part's
    gradient clipped and stepped by its own Adam, then the target update ``ForeachSoftUpdate(tau=config.tau)``.
    The critic regression is ``config.loss_function`` (``"l2"`` by BCQConfig's default; the discrete BCQ paper
    uses the Huber loss, ``loss_function="smooth_l1"``). Read from :class:`~torchrl_otc.configs.algorithms.BCQConfig`:
    ``discount``, ``batch_size``, ``hidden_sizes``, ``activation``, ``actor_lr``, ``critic_lr``, ``tau``,
    ``finetune_updates``, ``max_grad_norm``, ``loss_function``, ``discrete_threshold``; the VAE and perturbation
    fields of continuous BCQ are not read.

    Acting: :meth:`act` writes :math:`\arg\max_{a \in \mathrm{allowed}(s)} Q_\theta(s, a)` one-hot, allowed =
    available under ``"action_mask"`` and above the threshold (as
    :class:`~torchrl_otc.objectives.DiscreteBCQActor`); :meth:`explore` is epsilon-greedy over the available
    actions. For ``d_q``: ``state_value("policy")`` is the max of :math:`Q` over the threshold-allowed actions;
    ``state_value("sample")`` the expectation of :math:`Q` under :math:`G_\omega` renormalised over the
    threshold-allowed actions (the behaviour model the batch constraint trusts, as continuous BCQ averages over
    its VAE's actions).

    Args:
        observation_spec: the agent's observation spec, shape ``[obs_dim]``.
        action_spec: a ``OneHot(n)`` spec (or :class:`~torchrl.data.Bounded`
            ``(0, 1, (n,))``).
        config: a :class:`~torchrl_otc.configs.algorithms.BCQConfig`; Table 3's defaults when omitted.
        device: where to build the parameters. Defaults to the CPU.

    Keyword Args:
        seed: seed of the parameter initialisation (the global random state is left untouched).

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl.data import OneHot, Unbounded
        >>> algo = DiscreteBCQ(Unbounded(shape=(4,)), OneHot(3), seed=0)
        >>> sorted(algo.optimizers), algo.config.discrete_threshold
        (['critic', 'imitation'], 0.3)
        >>> mask = torch.tensor([True, True, False]).expand(8, 3)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(8, 4),
        ...     "action": torch.nn.functional.one_hot(torch.randint(2, (8,)), 3).bool(),
        ...     "action_mask": mask, ("next", "action_mask"): mask,
        ...     ("next", "observation"): torch.randn(8, 4), ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool),
        ... }, [8])
        >>> sorted(k for k in algo.update(batch) if k.startswith("loss_"))
        ['loss_imitation', 'loss_qvalue']
        >>> action = algo.act(TensorDict({"observation": torch.randn(5, 4), "action_mask": mask[:5]}, [5]))["action"]
        >>> action.dtype, action.sum(-1).tolist(), bool(action[:, 2].any())
        (torch.float32, [1.0, 1.0, 1.0, 1.0, 1.0], False)
        >>> algo.state_value(torch.randn(5, 4), actions="sample").shape
        torch.Size([5])
    """

    name = "bcq"
    loss: DiscreteBCQLoss
    config: BCQConfig

    def _build(
        self,
        cfg: BCQConfig,
        obs_dim: int,
        act_dim: int,
        action_spec: TensorSpec,
        low: Tensor,
        high: Tensor,
        device: torch.device,
    ) -> tuple[DiscreteBCQLoss, TensorDictModuleBase, Parts]:
        self._check_one_hot_spec(action_spec, low, high, act_dim)
        loss = DiscreteBCQLoss(
            _q_network(cfg, obs_dim, act_dim, "action_value").to(device),
            _q_network(cfg, obs_dim, act_dim, "imitation_logits").to(device),
            threshold=cfg.discrete_threshold,
            loss_function=cfg.loss_function,
        )
        parts = {
            "critic": (trainable(loss.value_network_params), cfg.critic_lr),
            "imitation": (trainable(loss.imitation_network_params), cfg.actor_lr),
        }
        return loss, DiscreteGreedyPolicy(self), parts

    def _update(self, batch: TensorDictBase) -> dict[str, Tensor]:
        # the authors' code: one step on Q loss + imitation loss, both from the current parameters. The two
        # losses share no parameter (the target's next action reads G without gradient), so one backward gives
        # each part its own gradient; each part is then clipped and stepped by its own optimiser.
        loss = self.loss
        loss_q, meta_q = loss.qvalue_loss(batch)
        loss_g, meta_g = loss.imitation_loss(batch)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        (loss_q + loss_g).backward()
        for part in self.optimizers:
            self._clip_and_step(part)
        self.target_updater.step()
        meta_q.pop("td_error")
        return {"loss_qvalue": loss_q, "loss_imitation": loss_g, **meta_q, **meta_g}

    def action_values(self, observation: Tensor) -> Tensor:
        return self.loss.action_values(
            {OBSERVATION_KEY: observation}, self.loss.value_network_params
        )

    def allowed_actions(self, observation: Tensor, mask: Tensor | None = None) -> Tensor:
        """Available under ``mask`` and :math:`G_\\omega(a|s) / \\max G_\\omega > \\tau`
        (:meth:`~torchrl_otc.objectives.DiscreteBCQLoss.allowed_actions`)."""
        logits = self.loss.imitation_logits({OBSERVATION_KEY: observation})
        return self.loss.allowed_actions(logits, mask)

    def action_distribution(self, observation: Tensor) -> Tensor:
        """:math:`G_\\omega(\\cdot|s)` renormalised over the threshold-allowed actions."""
        logits = self.loss.imitation_logits({OBSERVATION_KEY: observation})
        allowed = self.loss.allowed_actions(logits)
        return torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)


class DiscreteCQL(DiscreteAlgorithm):
    r"""Discrete CQL(H) for one agent (Kumar et al. 2020, eq. (4)), OTC's CQL on one-hot actions (OTC paper
    section 4, Table 3).

    Network (Table 3, CQL: an MLP of ``hidden_sizes`` (256, 256) with ``activation``): a Q-network
    :math:`Q_\theta(s, \cdot)` with a target copy, trained by :class:`~torchrl_otc.objectives.MaskedDiscreteCQLLoss`
    (TorchRL's ``DiscreteCQLLoss`` with masked actions excluded from the target, the log-sum-exp and the greedy
    action) on

    .. math::

        \mathcal{L} = \tfrac12 \ell\big(Q_\theta(s, a), r + \gamma (1 - \mathrm{terminated})
        \max_{a'} Q_{\theta'}(s', a')\big) + w \Big(\log \sum_{a} e^{Q_\theta(s, a)} - Q_\theta(s, a)\Big),

    :math:`w` = ``config.min_q_weight`` (the conservative weight), :math:`\ell` = ``config.loss_function``.
    One part, ``"critic"`` (``critic_lr``); update: one step, then the target update
    ``ForeachSoftUpdate(tau=config.tau)``. Read from :class:`~torchrl_otc.configs.algorithms.CQLConfig`:
    ``discount``, ``batch_size``, ``hidden_sizes``, ``activation``, ``critic_lr``, ``tau``, ``finetune_updates``,
    ``max_grad_norm``, ``loss_function``, ``min_q_weight``. Not read (continuous SAC-based CQL only, or already
    what discrete CQL does): ``actor_lr``, ``alpha_lr``, ``alpha_init``, ``fixed_alpha``, ``num_random`` (the
    log-sum-exp is exact), ``deterministic_backup`` (no entropy), ``max_q_backup`` (the target is a max);
    ``with_lagrange=True`` and ``cql_temperature != 1`` change the loss and are refused.

    Acting: :meth:`act` writes :math:`\arg\max_{a \text{ available}} Q_\theta(s, a)` one-hot; :meth:`explore` is
    epsilon-greedy over the available actions. For ``d_q``: ``state_value("policy")`` is :math:`\max_a Q_\theta`;
    ``state_value("sample")`` the expectation of :math:`Q` under the Boltzmann policy
    :math:`\mathrm{softmax}(Q_\theta(s, \cdot))`, the distribution that attains CQL(H)'s log-sum-exp (its
    maximising :math:`\mu`).

    Args:
        observation_spec: the agent's observation spec, shape ``[obs_dim]``.
        action_spec: a ``OneHot(n)`` spec (or :class:`~torchrl.data.Bounded`
            ``(0, 1, (n,))``).
        config: a :class:`~torchrl_otc.configs.algorithms.CQLConfig`; Table 3's defaults when omitted.
        device: where to build the parameters. Defaults to the CPU.

    Keyword Args:
        seed: seed of the parameter initialisation (the global random state is left untouched).

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl.data import OneHot, Unbounded
        >>> from torchrl_otc.configs.algorithms import CQLConfig
        >>> algo = DiscreteCQL(Unbounded(shape=(4,)), OneHot(3), CQLConfig(hidden_sizes=(32,)), seed=0)
        >>> sorted(algo.optimizers)
        ['critic']
        >>> batch = TensorDict({
        ...     "observation": torch.randn(8, 4),
        ...     "action": torch.nn.functional.one_hot(torch.randint(3, (8,)), 3),  # int64 one-hot
        ...     ("next", "observation"): torch.randn(8, 4), ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool),
        ... }, [8])
        >>> sorted(k for k in algo.update(batch) if k.startswith("loss_"))
        ['loss_cql', 'loss_qvalue']
        >>> obs = torch.randn(5, 4)
        >>> v = algo.state_value(obs, actions="policy")
        >>> torch.allclose(v, algo.q_value(obs, algo.act(TensorDict({"observation": obs}, [5]))["action"]))
        True
    """

    name = "cql"
    loss: MaskedDiscreteCQLLoss
    config: CQLConfig

    def _build(
        self,
        cfg: CQLConfig,
        obs_dim: int,
        act_dim: int,
        action_spec: TensorSpec,
        low: Tensor,
        high: Tensor,
        device: torch.device,
    ) -> tuple[MaskedDiscreteCQLLoss, TensorDictModuleBase, Parts]:
        self._check_one_hot_spec(action_spec, low, high, act_dim)
        if cfg.with_lagrange:
            raise ValueError(
                "DiscreteCQL has no Lagrange variant; set with_lagrange=False and choose the conservative weight "
                "with min_q_weight."
            )
        if cfg.cql_temperature != 1.0:
            raise ValueError(
                f"DiscreteCQL's log-sum-exp has temperature 1 (MaskedDiscreteCQLLoss); got cql_temperature="
                f"{cfg.cql_temperature}. Leave it at 1.0."
            )
        loss = MaskedDiscreteCQLLoss(
            _q_network(cfg, obs_dim, act_dim, "action_value").to(device),
            action_space="one-hot",
            loss_function=cfg.loss_function,
        )
        parts = {"critic": (trainable(loss.value_network_params), cfg.critic_lr)}
        return loss, DiscreteGreedyPolicy(self), parts

    def _update(self, batch: TensorDictBase) -> dict[str, Tensor]:
        loss = self.loss
        # value_loss writes pred_val and td_error into its input: work on a copy without them, so that neither
        # the caller's batch nor a td_error tensor it holds is written to.
        td = batch.exclude(loss.tensor_keys.priority, loss.tensor_keys.pred_val)
        loss_q, meta_q = loss.value_loss(td)
        loss_cql, _ = loss.cql_loss(td)
        self._step("critic", loss_q + self.config.min_q_weight * loss_cql)
        self.target_updater.step()
        return {
            "loss_qvalue": loss_q,
            "loss_cql": loss_cql,
            "pred_value": meta_q["pred_value"],
            "target_value": meta_q["target_value"],
        }

    def action_values(self, observation: Tensor) -> Tensor:
        return call_net(self.loss, "value_network", self.loss.value_network_params, [observation])

    def allowed_actions(self, observation: Tensor, mask: Tensor | None = None) -> Tensor:
        """The available actions under ``mask`` (all when ``None``)."""
        if mask is not None:
            return mask
        return torch.ones(
            (*observation.shape[:-1], self.num_actions),
            dtype=torch.bool,
            device=observation.device,
        )

    def action_distribution(self, observation: Tensor) -> Tensor:
        """The Boltzmann policy :math:`\\mathrm{softmax}(Q_\\theta(s, \\cdot))`."""
        return torch.softmax(self.action_values(observation), -1)
