"""Builders: networks, loss, deployment policy, optimisers and target updater of one agent's algorithm.

The OTC paper (section 4, Table 3) runs four base algorithms: BCQ and AWAC (this package's
:class:`~torchrl_otc.objectives.BCQLoss`, :class:`~torchrl_otc.objectives.AWACLoss`), CQL (TorchRL's
:class:`~torchrl.objectives.CQLLoss` with its uniform actions drawn in the action bounds,
:class:`~torchrl_otc.objectives.BoundedCQLLoss`) and TD3+BC (TorchRL's :class:`~torchrl.objectives.TD3BCLoss`).
:func:`make_algorithm` builds one of them for one agent, with flat keys (``"observation"``, ``"action"``,
``("next", "observation")``, ``("next", "reward")``, ``("next", "done")``, ``("next", "terminated")``): one loss
per agent, so that TorchRL's multi-agent quirks (CQLLoss with nested keys; TD3BCLoss averaging its lambda over
stacked agents) cannot couple agents. :func:`update_step` does one gradient step of every part and the target update.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictModuleBase
from torch import Tensor, nn
from torchrl.data import Bounded, Composite, TensorSpec
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, Actor, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import LossModule, SoftUpdate, TD3BCLoss
from torchrl.objectives.utils import ValueEstimators, distance_loss
from torchrl.objectives.value import TD0Estimator

from torchrl_otc.configs.algorithms import (
    ALGORITHM_CONFIGS,
    AlgorithmConfig,
    AWACConfig,
    BCQConfig,
    CQLConfig,
    TD3BCConfig,
    make_config,
)
from torchrl_otc.modules.models.vae import ActionVAE
from torchrl_otc.objectives.awac import AWACLoss
from torchrl_otc.objectives.bcq import BCQActor, BCQLoss, BCQPerturbation
from torchrl_otc.objectives.cql import BoundedCQLLoss
from torchrl_otc.objectives.utils import ForeachSoftUpdate, StackedMLP, call_net

__all__ = [
    "Algorithm",
    "BoundedTanh",
    "DeterministicPolicy",
    "make_algorithm",
    "update_step",
    "OBSERVATION_KEY",
    "ACTION_KEY",
]

logger = logging.getLogger(__name__)

OBSERVATION_KEY = "observation"
ACTION_KEY = "action"


class BoundedTanh(nn.Module):
    """``c + h * tanh(x)`` with ``c, h`` the centre and half-range of the action bounds (TD3's actor head).

    Args:
        low: lower bounds, ``[action_dim]``.
        high: upper bounds, ``[action_dim]``.

    Examples:
        >>> head = BoundedTanh(torch.tensor([0.0]), torch.tensor([2.0]))
        >>> head(torch.tensor([[0.0], [100.0]]))
        tensor([[1.],
                [2.]])
    """

    def __init__(self, low: Tensor, high: Tensor) -> None:
        super().__init__()
        self.register_buffer("center", (high + low) / 2)
        self.register_buffer("half_range", (high - low) / 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.center + self.half_range * torch.tanh(x)


class DeterministicPolicy(nn.Module):
    """A stochastic TorchRL actor evaluated in ``ExplorationType.DETERMINISTIC`` (for TanhNormal: the squashed mean).

    AWAC and CQL deploy the deterministic action of their Gaussian policy, whatever exploration type the caller
    (e.g. a collector, which samples by default) has set. Wrap it in a :class:`~tensordict.nn.TensorDictModule`
    with ``in_keys=actor.in_keys`` and ``out_keys=["action"]``. It shares the actor's parameters.

    Args:
        actor: a :class:`~torchrl.modules.ProbabilisticActor`.
        action_key: the key the actor writes. Defaults to ``"action"``.

    Examples:
        >>> from tensordict.nn import NormalParamExtractor
        >>> from torchrl.modules import MLP, ProbabilisticActor, TanhNormal
        >>> net = nn.Sequential(MLP(in_features=3, out_features=4, num_cells=[8]), NormalParamExtractor())
        >>> actor = ProbabilisticActor(TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        ...                            in_keys=["loc", "scale"], distribution_class=TanhNormal)
        >>> policy = DeterministicPolicy(actor)
        >>> obs = torch.randn(5, 3)
        >>> bool((policy(obs) == policy(obs)).all())
        True
    """

    def __init__(self, actor: TensorDictModuleBase, action_key: str = ACTION_KEY) -> None:
        super().__init__()
        self.actor = actor
        self.action_key = action_key

    def forward(self, *inputs: Tensor) -> Tensor:
        td = TensorDict(dict(zip(self.actor.in_keys, inputs)), inputs[0].shape[:-1])
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            return self.actor(td).get(self.action_key)


@dataclass
class Algorithm:
    """One agent's algorithm: loss, deployment policy, optimisers (one per part) and target updater.

    Attributes:
        name: ``"bcq"``, ``"awac"``, ``"cql"`` or ``"td3bc"``.
        config: the resolved config.
        loss: the loss module (holds every trainable parameter and the target parameters).
        policy: the deterministic deployment policy, a :class:`~tensordict.nn.TensorDictModule` reading
            ``"observation"`` and writing ``"action"``; it shares the loss's parameters.
        optimizers: one Adam per part, e.g. ``{"actor", "critic"}``, plus ``"vae"`` (BCQ), ``"alpha"`` (CQL
            unless ``fixed_alpha``) and ``"alpha_prime"`` (CQL with Lagrange).
        target_updater: a :class:`~torchrl.objectives.SoftUpdate` (the subclass
            :class:`~torchrl_otc.objectives.utils.ForeachSoftUpdate`: same rule, one fused ``lerp_``) with ``tau``
            from the config.
        device: where the parameters live.
        num_updates: gradient steps done (drives TD3+BC's policy delay).

    One agent's base algorithm of the OTC paper (section 4, Table 3); built by :func:`make_algorithm`.

    Examples:
        >>> from torchrl.data import Bounded, Unbounded
        >>> algo = make_algorithm("awac", Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)), seed=0)
        >>> algo.name, sorted(algo.optimizers), algo.num_updates
        ('awac', ['actor', 'critic'], 0)
        >>> state = algo.state_dict()
        >>> algo.load_state_dict(state)
    """

    name: str
    config: AlgorithmConfig
    loss: LossModule
    policy: TensorDictModule
    optimizers: dict[str, torch.optim.Optimizer]
    target_updater: SoftUpdate
    device: torch.device
    num_updates: int = 0
    _parts: dict[str, list[Tensor]] = field(default_factory=dict, repr=False)

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        """One gradient step of every part and the target update; see :func:`update_step`."""
        return update_step(self, batch)

    @torch.no_grad()
    def act(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Writes the deterministic deployment action into ``tensordict`` (no gradient)."""
        return self.policy(tensordict)

    def parameters(self, part: str | None = None) -> Iterator[Tensor]:
        """The trainable parameters of one part (``"actor"``, ``"critic"``, ...) or of all parts."""
        parts = [part] if part is not None else list(self._parts)
        for name in parts:
            yield from self._parts[name]

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
        """
        if state_dict["name"] != self.name:
            raise ValueError(
                f"Checkpoint of {state_dict['name']!r} cannot be loaded into {self.name!r}."
            )
        self.loss.load_state_dict(state_dict["loss"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(copy.deepcopy(state_dict["optimizers"][key]))
        self.num_updates = int(state_dict["num_updates"])


# ------------------------------------------------------------------------------------------------ specs
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


def _resolve_config(name_or_config: str | AlgorithmConfig) -> AlgorithmConfig:
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


# --------------------------------------------------------------------------------------------- networks
def _trainable(params: TensorDictBase) -> list[Tensor]:
    """The parameters (not the buffers) of a functional network's parameter tensordict."""
    return [p for p in params.values(True, True) if isinstance(p, nn.Parameter) and p.requires_grad]


def _critic(cfg: AlgorithmConfig, obs_dim: int, act_dim: int) -> ValueOperator:
    net = MLP(
        in_features=obs_dim + act_dim,
        out_features=1,
        num_cells=list(cfg.hidden_sizes),
        activation_class=cfg.activation_class,
    )
    return ValueOperator(net, in_keys=[OBSERVATION_KEY, ACTION_KEY])


def _gaussian_actor(
    cfg: AlgorithmConfig,
    obs_dim: int,
    act_dim: int,
    action_spec: Bounded,
    low: Tensor,
    high: Tensor,
) -> ProbabilisticActor:
    net = nn.Sequential(
        MLP(
            in_features=obs_dim,
            out_features=2 * act_dim,
            num_cells=list(cfg.hidden_sizes),
            activation_class=cfg.activation_class,
        ),
        NormalParamExtractor(),
    )
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=[OBSERVATION_KEY], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        out_keys=[ACTION_KEY],
        spec=action_spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": low, "high": high},
    )


def _build_bcq(
    cfg: BCQConfig, obs_dim: int, act_dim: int, spec: Bounded, low: Tensor, high: Tensor, device
):
    act = cfg.activation_class
    actor = TensorDictModule(
        BCQPerturbation(
            obs_dim,
            act_dim,
            low=low,
            high=high,
            max_perturbation=cfg.max_perturbation,
            hidden_sizes=cfg.hidden_sizes,
            activation=act,
        ),
        in_keys=[OBSERVATION_KEY, ACTION_KEY],
        out_keys=[ACTION_KEY],
    ).to(device)
    vae = TensorDictModule(
        ActionVAE(
            obs_dim,
            act_dim,
            cfg.latent_dim,
            low=low,
            high=high,
            hidden_sizes=cfg.vae_hidden_sizes or cfg.hidden_sizes,
            activation=act,
        ),
        in_keys=[OBSERVATION_KEY, ACTION_KEY],
        out_keys=["vae_reconstruction", "vae_loc", "vae_log_std"],
    ).to(device)
    loss = BCQLoss(
        actor,
        _critic(cfg, obs_dim, act_dim).to(device),
        vae,
        lmbda=cfg.lmbda,
        num_samples=cfg.num_samples,
        kl_weight=cfg.kl_weight,
        target_selection=cfg.target_selection,
        loss_function=cfg.loss_function,
    )
    policy = TensorDictModule(
        BCQActor(loss, num_samples=cfg.deploy_num_samples),
        in_keys=loss.observation_keys,
        out_keys=[ACTION_KEY],
    )
    parts = {
        "vae": (_trainable(loss.vae_network_params), cfg.vae_lr),
        "critic": (_trainable(loss.qvalue_network_params), cfg.critic_lr),
        "actor": (_trainable(loss.actor_network_params), cfg.actor_lr),
    }
    return loss, policy, parts


def _build_awac(
    cfg: AWACConfig, obs_dim: int, act_dim: int, spec: Bounded, low: Tensor, high: Tensor, device
):
    actor = _gaussian_actor(cfg, obs_dim, act_dim, spec, low, high).to(device)
    loss = AWACLoss(
        actor,
        _critic(cfg, obs_dim, act_dim).to(device),
        temperature=cfg.temperature,
        max_weight=cfg.max_weight,
        num_value_samples=cfg.num_value_samples,
        loss_function=cfg.loss_function,
    )
    policy = TensorDictModule(
        DeterministicPolicy(actor), in_keys=actor.in_keys, out_keys=[ACTION_KEY]
    )
    parts = {
        "critic": (_trainable(loss.qvalue_network_params), cfg.critic_lr),
        "actor": (_trainable(loss.actor_network_params), cfg.actor_lr),
    }
    return loss, policy, parts


def _build_cql(
    cfg: CQLConfig, obs_dim: int, act_dim: int, spec: Bounded, low: Tensor, high: Tensor, device
):
    actor = _gaussian_actor(cfg, obs_dim, act_dim, spec, low, high).to(device)
    # TorchRL's CQLLoss with the uniform actions of its conservative term drawn in the bounds, not [-1, 1].
    loss = BoundedCQLLoss(
        actor,
        _critic(cfg, obs_dim, act_dim).to(device),
        loss_function=cfg.loss_function,
        alpha_init=cfg.alpha_init,
        fixed_alpha=cfg.fixed_alpha,
        action_spec=spec,
        temperature=cfg.cql_temperature,
        min_q_weight=cfg.min_q_weight,
        max_q_backup=cfg.max_q_backup,
        deterministic_backup=cfg.deterministic_backup,
        num_random=cfg.num_random,
        with_lagrange=cfg.with_lagrange,
        lagrange_thresh=cfg.lagrange_thresh,
    )
    policy = TensorDictModule(
        DeterministicPolicy(actor), in_keys=actor.in_keys, out_keys=[ACTION_KEY]
    )
    parts = {
        "critic": (_trainable(loss.qvalue_network_params), cfg.critic_lr),
        "actor": (_trainable(loss.actor_network_params), cfg.actor_lr),
    }
    if not cfg.fixed_alpha:
        parts["alpha"] = ([loss.log_alpha], cfg.alpha_lr)
    if cfg.with_lagrange:
        parts["alpha_prime"] = ([loss.log_alpha_prime], cfg.alpha_lr)
    return loss, policy, parts


def _build_td3bc(
    cfg: TD3BCConfig, obs_dim: int, act_dim: int, spec: Bounded, low: Tensor, high: Tensor, device
):
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
    actor = Actor(net, in_keys=[OBSERVATION_KEY], out_keys=[ACTION_KEY], spec=spec).to(device)
    loss = TD3BCLoss(
        actor,
        _critic(cfg, obs_dim, act_dim).to(device),
        action_spec=spec,
        policy_noise=cfg.policy_noise * scale,
        noise_clip=cfg.noise_clip * scale,
        alpha=cfg.alpha,
        loss_function=cfg.loss_function,
    )
    parts = {
        "critic": (_trainable(loss.qvalue_network_params), cfg.critic_lr),
        "actor": (_trainable(loss.actor_network_params), cfg.actor_lr),
    }
    return loss, actor, parts


_BUILDERS: dict[
    str, Callable[..., tuple[LossModule, TensorDictModule, dict[str, tuple[list[Tensor], float]]]]
] = {
    "bcq": _build_bcq,
    "awac": _build_awac,
    "cql": _build_cql,
    "td3bc": _build_td3bc,
}


def make_algorithm(
    name_or_config: str | AlgorithmConfig,
    observation_spec: TensorSpec,
    action_spec: TensorSpec,
    device: torch.device | str | None = None,
    *,
    seed: int | None = None,
) -> Algorithm:
    """Builds one agent's algorithm (OTC paper section 4, Table 3): networks, loss, policy, optimisers, updater.

    Networks (Table 3): MLPs with ``config.hidden_sizes`` and ``config.activation``. Critics: ``Q(s, a)``, two
    of them with target copies. Actors: BCQ, the perturbation model + action VAE (:class:`BCQActor` deploys);
    AWAC and CQL, a TanhNormal policy (deployed by its squashed mean, :class:`DeterministicPolicy`); TD3+BC, a
    deterministic tanh actor. Optimisers: Adam, one per part, with the config's rates. Target updater:
    ``ForeachSoftUpdate(loss, tau=config.tau)`` (TorchRL's ``SoftUpdate`` rule, fused). Value estimator: TD(0) with ``gamma=config.discount``.

    Args:
        name_or_config: ``"bcq"``, ``"awac"``, ``"cql"``, ``"td3bc"`` (Table 3 defaults) or a config from
            :mod:`torchrl_otc.configs.algorithms`.
        observation_spec: the agent's observation spec, shape ``[obs_dim]`` (or a Composite with
            ``"observation"``).
        action_spec: the agent's :class:`~torchrl.data.Bounded` action spec, shape ``[act_dim]`` (or a Composite
            with ``"action"``).
        device: where to build the parameters. Defaults to the CPU.

    Keyword Args:
        seed: if given, the parameters are initialised from ``torch.manual_seed(seed)`` inside
            :func:`torch.random.fork_rng`, leaving the global random state untouched.

    Returns:
        an :class:`Algorithm`.

    Examples:
        >>> from torchrl.data import Bounded, Unbounded
        >>> algo = make_algorithm("td3bc", Unbounded(shape=(5,)), Bounded(-1.0, 1.0, shape=(2,)), seed=0)
        >>> sorted(algo.optimizers), algo.config.hidden_sizes
        (['actor', 'critic'], (256, 256))
        >>> batch = TensorDict({
        ...     "observation": torch.randn(128, 5), "action": torch.rand(128, 2) * 2 - 1,
        ...     ("next", "observation"): torch.randn(128, 5), ("next", "reward"): torch.randn(128, 1),
        ...     ("next", "done"): torch.zeros(128, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(128, 1, dtype=torch.bool),
        ... }, [128])
        >>> sorted(algo.update(batch))  # TD3: the actor and targets move every second step
        ['loss_qvalue', 'next_state_value', 'pred_value', 'target_value']
        >>> algo.act(TensorDict({"observation": torch.randn(3, 5)}, [3]))["action"].shape
        torch.Size([3, 2])
        >>> make_algorithm("sac", Unbounded(shape=(5,)), Bounded(-1.0, 1.0, shape=(2,)))
        Traceback (most recent call last):
        ...
        ValueError: Unknown algorithm 'sac'; valid algorithms: bcq, awac, cql, td3bc.
    """
    cfg = _resolve_config(name_or_config)
    device = torch.device(device) if device is not None else torch.device("cpu")
    obs_spec = _leaf_spec(observation_spec, OBSERVATION_KEY, "observation")
    act_spec = _leaf_spec(action_spec, ACTION_KEY, "action")
    low, high = _action_bounds(act_spec)
    act_spec = act_spec.to(device)
    low, high = low.to(device), high.to(device)
    obs_dim, act_dim = int(obs_spec.shape[-1]), int(act_spec.shape[-1])
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        loss, policy, parts = _BUILDERS[cfg.name](
            cfg, obs_dim, act_dim, act_spec, low, high, device
        )
    loss.make_value_estimator(ValueEstimators.TD0, gamma=cfg.discount)
    updater = ForeachSoftUpdate(loss, tau=cfg.tau)
    optimizers = {name: torch.optim.Adam(params, lr=lr) for name, (params, lr) in parts.items()}
    return Algorithm(
        name=cfg.name,
        config=cfg,
        loss=loss,
        policy=policy,
        optimizers=optimizers,
        target_updater=updater,
        device=device,
        _parts={name: params for name, (params, _) in parts.items()},
    )


# ------------------------------------------------------------------------------------------------ update
def _step(algo: Algorithm, part: str, loss: Tensor) -> None:
    opt = algo.optimizers[part]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    _clip_and_step(algo, part)


def _clip_and_step(algo: Algorithm, part: str) -> None:
    if algo.config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(algo._parts[part], algo.config.max_grad_norm)
    algo.optimizers[part].step()


def _update_bcq(algo: Algorithm, batch: TensorDictBase) -> dict[str, Tensor]:
    # order of BCQ's train(): VAE, critic, actor, then the targets.
    loss: BCQLoss = algo.loss
    loss_vae, meta_vae = loss.vae_loss(batch)
    _step(algo, "vae", loss_vae)
    loss_q, meta_q = loss.qvalue_loss(batch)
    _step(algo, "critic", loss_q)
    loss_actor, meta_actor = loss.actor_loss(batch)
    _step(algo, "actor", loss_actor)
    algo.target_updater.step()
    meta_q.pop("td_error")
    return {
        "loss_vae": loss_vae,
        "loss_qvalue": loss_q,
        "loss_actor": loss_actor,
        **meta_vae,
        **meta_q,
        **meta_actor,
    }


def _update_awac(algo: Algorithm, batch: TensorDictBase) -> dict[str, Tensor]:
    # CORL's AWAC order: critic, actor, then the targets.
    loss: AWACLoss = algo.loss
    loss_q, meta_q = loss.qvalue_loss(batch)
    _step(algo, "critic", loss_q)
    loss_actor, meta_actor = loss.actor_loss(batch)
    _step(algo, "actor", loss_actor)
    algo.target_updater.step()
    meta_q.pop("td_error")
    return {"loss_qvalue": loss_q, "loss_actor": loss_actor, **meta_q, **meta_actor}


def _update_cql(algo: Algorithm, batch: TensorDictBase) -> dict[str, Tensor]:
    # CQLLoss's parts all read the pre-update parameters (as TorchRL's and CORL's CQL scripts do). The critic,
    # actor and alpha losses share no parameter, so one backward of their sum gives each part its own gradient.
    # The Lagrange loss -alpha' (gap - thresh) also depends on the critic through the CQL gap: its gradient must
    # reach log_alpha' only (in the CQL authors' code and TorchRL's script the critic's gradients are zeroed after
    # the alpha' step), so it is taken separately with autograd.grad.
    loss: BoundedCQLLoss = algo.loss
    td = batch.copy()  # q_loss writes pred_q1/pred_q2 into its input
    loss_q, meta_q = loss.q_loss(td)
    loss_cql, _ = loss.cql_loss(td)
    out = {"loss_qvalue": loss_q, "loss_cql": loss_cql}
    total = loss_q + loss_cql
    alpha_prime_grad = None
    if loss.with_lagrange:
        loss_alpha_prime, _ = loss.alpha_prime_loss(td)
        out["loss_alpha_prime"] = loss_alpha_prime
        (alpha_prime_grad,) = torch.autograd.grad(
            loss_alpha_prime, [loss.log_alpha_prime], retain_graph=True
        )
    loss_actor, meta_actor = loss.actor_loss(td)
    loss_alpha, _ = loss.alpha_loss(meta_actor, mask_tensordict=td)
    total = total + loss_actor + loss_alpha
    for opt in algo.optimizers.values():
        opt.zero_grad(set_to_none=True)
    total.backward()
    if alpha_prime_grad is not None:
        loss.log_alpha_prime.grad = alpha_prime_grad
    for part in algo.optimizers:
        _clip_and_step(algo, part)
    algo.target_updater.step()
    out.update(loss_actor=loss_actor, loss_alpha=loss_alpha, alpha=loss._alpha)
    out["entropy"] = -meta_actor[loss.tensor_keys.log_prob].mean()
    return out


def _td3bc_fast_critics(loss: TD3BCLoss, batch: TensorDictBase) -> StackedMLP | None:
    """The stacked-critic fast path of TD3+BC, or ``None`` where it would not give TorchRL's numbers.

    It applies with TorchRL's default keys, an MLP critic reading ``[observation, action]``, an actor reading
    ``observation``, no importance weights in the batch and the TD(0) estimator TD3BCLoss uses by default.
    """
    keys = loss.tensor_keys
    cache = loss.__dict__.setdefault("_cache", {})
    if "td3bc_fast" not in cache:
        fast = None
        default = type(keys)()
        if (
            keys == default
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


def _update_td3bc(algo: Algorithm, batch: TensorDictBase) -> dict[str, Tensor]:
    # TD3's schedule: the critic every step; the actor and the targets every policy_delay-th step.
    loss: TD3BCLoss = algo.loss
    fast = _td3bc_fast_critics(loss, batch)
    if fast is not None:
        return _update_td3bc_stacked(algo, fast, batch)
    loss_q, meta_q = loss.qvalue_loss(batch)
    _step(algo, "critic", loss_q)
    meta_q.pop("td_error")
    out = {"loss_qvalue": loss_q, **meta_q}
    if (algo.num_updates + 1) % algo.config.policy_delay == 0:
        loss_actor, meta_actor = loss.actor_loss(batch)
        _step(algo, "actor", loss_actor)
        algo.target_updater.step()
        out.update(loss_actor=loss_actor, **meta_actor)
    return out


def _update_td3bc_stacked(
    algo: Algorithm, fast: StackedMLP, batch: TensorDictBase
) -> dict[str, Tensor]:
    """TorchRL's ``TD3BCLoss.qvalue_loss`` / ``actor_loss`` on tensors: the same numbers and random draws.

    The critics run as one batched matmul per layer on the loss's own (stacked, target, detached) parameters
    instead of ``vmap`` over the TensorDictModule, and the actor as a plain module call; TorchRL's methods spend
    most of a TD3+BC update in that machinery (``benchmarks/bench_update.py``). ``test_td3bc_fast_path_equals_torchrl``
    checks the equality.
    """
    loss: TD3BCLoss = algo.loss
    obs, act = batch.get(OBSERVATION_KEY), batch.get(ACTION_KEY)
    next_obs = batch.get(("next", OBSERVATION_KEY))
    reward = batch.get(("next", loss.tensor_keys.reward)).squeeze(-1)
    terminated = batch.get(("next", loss.tensor_keys.terminated)).squeeze(-1)
    noise = (torch.randn_like(act) * loss.policy_noise).clamp(-loss.noise_clip, loss.noise_clip)
    with torch.no_grad():
        next_action = call_net(loss, "actor_network", loss.target_actor_network_params, [next_obs])
        next_action = (next_action + noise).clamp(loss.min_action, loss.max_action)
        next_q = fast(loss.target_qvalue_network_params, torch.cat([next_obs, next_action], -1))
        next_value = next_q.squeeze(-1).min(0)[0]
        gamma = loss.value_estimator.gamma
        target = reward + gamma * (~terminated).to(reward.dtype) * next_value
    current = fast(loss.qvalue_network_params, torch.cat([obs, act], -1)).squeeze(-1)
    loss_q = distance_loss(
        current, target.expand_as(current), loss_function=loss.loss_function
    ).sum(0)
    loss_q = loss_q.mean()
    _step(algo, "critic", loss_q)
    out = {
        "loss_qvalue": loss_q,
        "next_state_value": next_value,
        "pred_value": current.detach(),
        "target_value": target,
    }
    if (algo.num_updates + 1) % algo.config.policy_delay == 0:
        action = call_net(loss, "actor_network", loss.actor_network_params, [obs])
        q1 = fast(
            loss._cached_detach_qvalue_network_params, torch.cat([obs, action], -1), index=0
        ).squeeze(-1)
        bc_loss = torch.nn.functional.mse_loss(action, act)
        lmbd = loss.alpha / q1.abs().mean().detach()
        loss_actor = (-lmbd * q1 + bc_loss).mean()
        _step(algo, "actor", loss_actor)
        algo.target_updater.step()
        out.update(
            loss_actor=loss_actor,
            state_action_value_actor=q1.detach(),
            bc_loss=bc_loss.detach(),
            lmbd=lmbd,
        )
    return out


_UPDATES: dict[str, Callable[[Algorithm, TensorDictBase], dict[str, Tensor]]] = {
    "bcq": _update_bcq,
    "awac": _update_awac,
    "cql": _update_cql,
    "td3bc": _update_td3bc,
}


def update_step(algo: Algorithm, batch: TensorDictBase) -> dict[str, float]:
    """One gradient step of every part of ``algo`` on ``batch``, then the target update.

    Order of the parts, as in each algorithm's reference: BCQ: VAE, critics, actor, targets. AWAC: critics,
    actor, targets. CQL: all parts from the same parameters (one backward of their sum; the parts share no
    parameter), then targets. TD3+BC: critics every step, actor and targets every ``policy_delay``-th step.
    With ``config.max_grad_norm`` each part's gradient is clipped on its own.

    Args:
        algo: from :func:`make_algorithm`.
        batch: transitions with the keys listed in the module docstring, batch shape ``[batch_size]``.

    Returns:
        the losses and scalar diagnostics as floats (per-sample diagnostics are averaged).

    Examples:
        >>> from torchrl.data import Bounded, Unbounded
        >>> algo = make_algorithm("bcq", Unbounded(shape=(4,)), Bounded(-1.0, 1.0, shape=(2,)), seed=0)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(32, 4), "action": torch.rand(32, 2) * 2 - 1,
        ...     ("next", "observation"): torch.randn(32, 4), ("next", "reward"): torch.randn(32, 1),
        ...     ("next", "done"): torch.zeros(32, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(32, 1, dtype=torch.bool),
        ... }, [32])
        >>> metrics = update_step(algo, batch)
        >>> [k for k in metrics if k.startswith("loss_")]
        ['loss_vae', 'loss_qvalue', 'loss_actor']
    """
    tensors = _UPDATES[algo.name](algo, batch)
    algo.num_updates += 1
    names = list(tensors)
    values = torch.stack([v.detach().float().mean() for v in tensors.values()]).tolist()
    return dict(zip(names, values))
