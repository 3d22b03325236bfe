"""The base class of one agent's algorithm: build, update step with its optimisers, value functions for d_q.

The OTC paper (section 4, Table 3) runs four base algorithms, one subclass each: :class:`~.bcq.BCQ`,
:class:`~.awac.AWAC`, :class:`~.cql.CQL` and :class:`~.td3bc.TD3BC`. Each builds its networks and loss with flat
keys (``"observation"``, ``"action"``, ``("next", "observation")``, ``("next", "reward")``, ``("next", "done")``,
``("next", "terminated")``) for one agent, so that TorchRL's multi-agent quirks (CQLLoss with nested keys;
TD3BCLoss averaging its lambda over stacked agents) cannot couple agents, and implements its own update step
(the order of its reference implementation) and the values ``Q(s, a)`` and ``V(s)`` that the value distance
``d_q`` (section 3.3) reads.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor
from torchrl.data import Bounded, Composite, OneHot, TensorSpec
from torchrl.objectives import LossModule, SoftUpdate
from torchrl.objectives.utils import ValueEstimators

from torchrl_otc.configs.algorithms import ALGORITHM_CONFIGS, AlgorithmConfig, make_config
from torchrl_otc.objectives.utils import ForeachSoftUpdate, policy_distribution
from torchrl_otc.trainers.algorithms.networks import ACTION_KEY, OBSERVATION_KEY

__all__ = ["Algorithm", "Parts", "resolve_config"]

#: What :meth:`Algorithm._build` returns for each part: its trainable tensors and its Adam learning rate.
Parts = dict[str, tuple[list[Tensor], float]]


def resolve_config(name_or_config: str | AlgorithmConfig) -> AlgorithmConfig:
    """The validated config of an algorithm name (Table 3 defaults) or of a given config.

    Args:
        name_or_config: ``"bcq"``, ``"awac"``, ``"cql"``, ``"td3bc"`` or a config from
            :mod:`torchrl_otc.configs.algorithms`.

    Returns:
        the config.

    Examples:
        >>> resolve_config("TD3+BC").name
        'td3bc'
        >>> resolve_config(3)
        Traceback (most recent call last):
        ...
        TypeError: make_algorithm takes an algorithm name (bcq, awac, cql, td3bc, bremen) or an AlgorithmConfig; got int.
    """
    if isinstance(name_or_config, AlgorithmConfig):
        if name_or_config.name not in ALGORITHM_CONFIGS:
            raise ValueError(
                f"Unknown algorithm config {type(name_or_config).__name__}; valid algorithms: "
                f"{', '.join(ALGORITHM_CONFIGS)}."
            )
        return name_or_config.validate()
    if isinstance(name_or_config, str):
        return make_config(name_or_config)
    raise TypeError(
        f"make_algorithm takes an algorithm name ({', '.join(ALGORITHM_CONFIGS)}) or an AlgorithmConfig; "
        f"got {type(name_or_config).__name__}."
    )


def _leaf_spec(spec: TensorSpec, key: str, what: str) -> TensorSpec:
    if isinstance(spec, Composite):
        if key not in spec.keys(True, True):
            raise KeyError(
                f"The {what} Composite spec has no {key!r} entry; its keys are {list(spec.keys(True))}."
            )
        spec = spec[key]
    if len(spec.shape) != 1:
        raise ValueError(
            f"make_algorithm builds one flat loss per agent: the {what} spec must have shape [features]; got "
            f"{tuple(spec.shape)}. Split stacked agents into one spec per agent."
        )
    return spec


def _action_bounds(action_spec: TensorSpec) -> tuple[Tensor, Tensor]:
    # one-hot actions (the discrete classes): every entry in [0, 1]
    if isinstance(action_spec, OneHot):
        n = action_spec.shape[-1]
        dtype = torch.get_default_dtype()
        return torch.zeros(n, dtype=dtype), torch.ones(n, dtype=dtype)
    if not isinstance(action_spec, Bounded):
        raise TypeError(
            f"Continuous control needs a Bounded action spec; got {type(action_spec).__name__}. "
            "Give the action bounds with torchrl.data.Bounded(low, high, shape)."
        )
    low = action_spec.space.low.to(torch.get_default_dtype())
    high = action_spec.space.high.to(torch.get_default_dtype())
    if not bool(torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise ValueError("The action bounds must be finite.")
    return low, high


class Algorithm(abc.ABC):
    """One agent's base algorithm of the OTC paper (section 4, Table 3): loss, policy, optimisers, target updater.

    A subclass builds its networks and loss (:meth:`_build`), takes one gradient step of every part in its
    reference's order (:meth:`_update`) and says how it computes ``Q(s, a)`` and ``V(s)`` for the value
    distance ``d_q`` (:meth:`q_value`, :meth:`state_value`; section 3.3). The base class holds what they share:
    one Adam per part with the config's rate, per-part gradient clipping (``config.max_grad_norm``), the target
    updater ``ForeachSoftUpdate(loss, tau=config.tau)`` (TorchRL's ``SoftUpdate`` rule, fused), the TD(0)
    value estimator with ``gamma=config.discount``, the update counter and the checkpoint layout.

    Args:
        observation_spec: the agent's observation spec, shape ``[obs_dim]`` (or a Composite with
            ``"observation"``).
        action_spec: the agent's :class:`~torchrl.data.Bounded` action spec, shape ``[act_dim]`` (or a Composite
            with ``"action"``).
        config: the algorithm's config; Table 3's defaults when omitted.
        device: where to build the parameters. Defaults to the CPU.

    Keyword Args:
        seed: if given, the parameters are initialised from ``torch.manual_seed(seed)`` inside
            :func:`torch.random.fork_rng`, leaving the global random state untouched.

    Attributes:
        name: ``"bcq"``, ``"awac"``, ``"cql"`` or ``"td3bc"`` (a class attribute).
        config: the resolved config.
        loss: the loss module (holds every trainable parameter and the target parameters).
        policy: the deterministic deployment policy, a :class:`~tensordict.nn.TensorDictModule` reading
            ``"observation"`` and writing ``"action"``; it shares the loss's parameters.
        optimizers: one Adam per part, e.g. ``{"actor", "critic"}``, plus ``"vae"`` (BCQ), ``"alpha"`` (CQL
            unless ``fixed_alpha``) and ``"alpha_prime"`` (CQL with Lagrange).
        target_updater: a :class:`~torchrl.objectives.SoftUpdate` (the subclass
            :class:`~torchrl_otc.objectives.utils.ForeachSoftUpdate`: same rule, one fused ``lerp_``).
        device: where the parameters live.
        num_updates: gradient steps done (drives TD3+BC's policy delay).

    Examples:
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_otc.trainers.algorithms import AWAC
        >>> algo = AWAC(Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)), seed=0)
        >>> algo.name, sorted(algo.optimizers), algo.num_updates
        ('awac', ['actor', 'critic'], 0)
        >>> algo.q_value(torch.zeros(4, 3), torch.zeros(4, 1)).shape
        torch.Size([4])
        >>> state = algo.state_dict()
        >>> algo.load_state_dict(state)
    """

    name: ClassVar[str]
    #: Whether the class takes one-hot actions (a ``OneHot`` spec): the classes of
    #: :mod:`~torchrl_otc.trainers.algorithms.discrete`; the continuous ones refuse a ``OneHot`` spec.
    discrete_actions: ClassVar[bool] = False

    def __init__(
        self,
        observation_spec: TensorSpec,
        action_spec: TensorSpec,
        config: AlgorithmConfig | None = None,
        device: torch.device | str | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        cfg = resolve_config(config if config is not None else self.name)
        if cfg.name != self.name:
            raise TypeError(
                f"{type(self).__name__} takes a {ALGORITHM_CONFIGS[self.name].__name__}; got "
                f"{type(cfg).__name__}."
            )
        device = torch.device(device) if device is not None else torch.device("cpu")
        obs_spec = _leaf_spec(observation_spec, OBSERVATION_KEY, "observation")
        act_spec = _leaf_spec(action_spec, ACTION_KEY, "action")
        if isinstance(act_spec, OneHot) and not self.discrete_actions:
            raise ValueError(
                f"{type(self).__name__} needs continuous actions (a Bounded spec); got a OneHot spec. On "
                "discrete tasks use make_algorithm with algo=bcq or algo=cql (it builds DiscreteBCQ or "
                "DiscreteCQL)."
            )
        low, high = _action_bounds(act_spec)
        act_spec = act_spec.to(device)
        low, high = low.to(device), high.to(device)
        obs_dim, act_dim = int(obs_spec.shape[-1]), int(act_spec.shape[-1])
        fork_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            loss, policy, parts = self._build(cfg, obs_dim, act_dim, act_spec, low, high, device)
        loss.make_value_estimator(ValueEstimators.TD0, gamma=cfg.discount)
        self.config = cfg
        self.loss: LossModule = loss
        self.policy: TensorDictModule = policy
        self.target_updater: SoftUpdate = ForeachSoftUpdate(loss, tau=cfg.tau)
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            part: torch.optim.Adam(params, lr=lr) for part, (params, lr) in parts.items()
        }
        self.device = device
        self.num_updates = 0
        self._parts: dict[str, list[Tensor]] = {part: params for part, (params, _) in parts.items()}

    # --------------------------------------------------------------------------------- to implement
    @abc.abstractmethod
    def _build(
        self,
        cfg: AlgorithmConfig,
        obs_dim: int,
        act_dim: int,
        action_spec: Bounded,
        low: Tensor,
        high: Tensor,
        device: torch.device,
    ) -> tuple[LossModule, TensorDictModule, Parts]:
        """Networks, loss, deployment policy and parts (trainable tensors and learning rate of each)."""

    @abc.abstractmethod
    def _update(self, batch: TensorDictBase) -> dict[str, Tensor]:
        """One gradient step of every part and the target update; the losses and diagnostics as tensors."""

    def _sampled_actions(self, observation: Tensor, num_samples: int) -> Tensor:
        """``num_samples`` actions per state from the policy, ``[num_samples, N, act_dim]``: samples of the
        loss's stochastic actor (AWAC, CQL); BCQ and TD3+BC override it."""
        dist = policy_distribution(
            self.loss,
            "actor_network",
            self.loss.actor_network_params,
            {OBSERVATION_KEY: observation},
        )
        return dist.sample((num_samples,))

    # ---------------------------------------------------------------------------------------- update
    def update(self, batch: TensorDictBase) -> dict[str, float]:
        """One gradient step of every part on ``batch``, then the target update.

        Each subclass keeps its reference's order of the parts (BCQ: VAE, critics, actor, targets; AWAC:
        critics, actor, targets; CQL: every part from the same parameters, then targets; TD3+BC: critics every
        step, actor and targets every ``policy_delay``-th step). With ``config.max_grad_norm`` each part's
        gradient is clipped on its own.

        Args:
            batch: transitions with the keys listed in the module docstring, batch shape ``[batch_size]``.

        Returns:
            the losses and scalar diagnostics as floats (per-sample diagnostics are averaged).
        """
        tensors = self._update(batch)
        self.num_updates += 1
        names = list(tensors)
        values = torch.stack([v.detach().float().mean() for v in tensors.values()]).tolist()
        return dict(zip(names, values))

    def _step(self, part: str, loss: Tensor) -> None:
        """Backward of ``loss`` into ``part`` alone, then its (clipped) optimiser step."""
        opt = self.optimizers[part]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        self._clip_and_step(part)

    def _clip_and_step(self, part: str) -> None:
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._parts[part], self.config.max_grad_norm)
        self.optimizers[part].step()

    # ---------------------------------------------------------------------------------------- acting
    @torch.no_grad()
    def act(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Writes the deterministic deployment action into ``tensordict`` (no gradient).

        Args:
            tensordict: holds ``"observation"``.

        Returns:
            ``tensordict`` with ``"action"``.
        """
        return self.policy(tensordict)

    def parameters(self, part: str | None = None) -> Iterator[Tensor]:
        """The trainable parameters of one part (``"actor"``, ``"critic"``, ...) or of all parts.

        Args:
            part: a key of :attr:`optimizers`; all parts when omitted.
        """
        parts = [part] if part is not None else list(self._parts)
        for name in parts:
            yield from self._parts[name]

    # --------------------------------------------------------------------------------- values (d_q)
    def _critic_values(self, observation: Tensor, action: Tensor) -> Tensor:
        """``[num_q, *B]`` values of every critic, one ``to_module`` call per critic (TorchRL's losses)."""
        loss = self.loss
        net, params = loss.qvalue_network, loss.qvalue_network_params
        td = TensorDict({OBSERVATION_KEY: observation, ACTION_KEY: action}, observation.shape[:-1])
        values = []
        for i in range(params.shape[0]):
            with params[i].to_module(net, preserve_module_state=False):
                values.append(net(td.copy()).get(loss.tensor_keys.state_action_value).squeeze(-1))
        return torch.stack(values)

    def _policy_actions(self, observation: Tensor, num_samples: int) -> Tensor:
        """The deployment policy's action, ``[*B, act_dim]``."""
        td = TensorDict({OBSERVATION_KEY: observation}, observation.shape[:-1])
        return self.policy(td).get(ACTION_KEY)

    @torch.no_grad()
    def q_value(
        self,
        observation: Tensor,
        action: Tensor,
        reduction: Literal["mean", "min"] = "mean",
    ) -> Tensor:
        """``Q(s, a)`` of the twin critics, reduced over the critics (no gradient).

        Args:
            observation: ``[N, obs_dim]`` (moved to :attr:`device`).
            action: ``[N, act_dim]``.
            reduction: ``"mean"`` of the critics (the value distance's default) or ``"min"`` (clipped double
                Q).

        Returns:
            ``[N]``.
        """
        if reduction not in ("mean", "min"):
            raise ValueError(f"reduction must be 'mean' or 'min'; got {reduction!r}.")
        q = self._critic_values(observation.to(self.device), action.to(self.device))
        return q.mean(0) if reduction == "mean" else q.min(0).values

    def check_state_value(self, actions: str) -> None:
        """Raises ``ValueError`` when :meth:`state_value` cannot use ``actions``.

        Args:
            actions: ``"policy"`` or ``"sample"``.
        """
        if actions not in ("policy", "sample"):
            raise ValueError(f"actions must be 'policy' or 'sample'; got {actions!r}.")

    @torch.no_grad()
    def state_value(
        self,
        observation: Tensor,
        actions: Literal["policy", "sample"] = "policy",
        num_samples: int = 10,
        reduction: Literal["mean", "min"] = "mean",
    ) -> Tensor:
        """``V(s) = E_a Q(s, a)`` as the value distance ``d_q`` reads it (section 3.3; no gradient).

        Args:
            observation: ``[N, obs_dim]`` (moved to :attr:`device`).
            actions: ``"policy"``: ``Q`` of the deployment policy's action (BCQ: the greedy one of
                ``num_samples`` perturbed VAE actions, BCQ's own target); ``"sample"``: the mean of ``Q`` over
                ``num_samples`` actions sampled from the policy (refused where the policy is deterministic).
            num_samples: actions per state (see ``actions``).
            reduction: over the critics, as in :meth:`q_value`.

        Returns:
            ``[N]``.
        """
        self.check_state_value(actions)
        observation = observation.to(self.device)
        if actions == "policy":
            return self.q_value(
                observation, self._policy_actions(observation, num_samples), reduction
            )
        sampled = self._sampled_actions(observation, num_samples)
        flat_obs = observation.expand(num_samples, *observation.shape).reshape(
            -1, observation.shape[-1]
        )
        q = self.q_value(flat_obs, sampled.reshape(-1, sampled.shape[-1]), reduction)
        return q.reshape(num_samples, -1).mean(0)

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Loss parameters (targets included), optimiser states and the update counter."""
        return {
            "name": self.name,
            "config": self.config.to_dict(),
            "loss": self.loss.state_dict(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` saved, copying it into this algorithm's own tensors.

        The optimiser states are deep-copied first: :meth:`torch.optim.Optimizer.load_state_dict` keeps
        references to same-device tensors (Adam's step counters and moments), which would tie two in-memory
        algorithms (two agents) together.

        Args:
            state_dict: from :meth:`state_dict` (also the layout of the package's older checkpoints).
        """
        if state_dict["name"] != self.name:
            raise ValueError(
                f"Checkpoint of {state_dict['name']!r} cannot be loaded into {self.name!r}."
            )
        self.loss.load_state_dict(state_dict["loss"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(copy.deepcopy(state_dict["optimizers"][key]))
        self.num_updates = int(state_dict["num_updates"])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(parts={list(self.optimizers)}, device={self.device}, "
            f"num_updates={self.num_updates})"
        )
