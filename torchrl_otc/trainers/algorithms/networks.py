"""The networks of the four base algorithms (OTC paper section 4, Table 3): critics, actors and policy wrappers.

Table 3 fixes MLPs with ``config.hidden_sizes`` and ``config.activation`` for every network. The critics read
``[observation, action]`` and output one value (the losses stack two of them, with target copies); AWAC and CQL
act with a TanhNormal policy (deployed by its squashed mean, :class:`DeterministicPolicy`); TD3+BC with a
deterministic tanh actor (:class:`BoundedTanh` head).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictModuleBase
from torch import Tensor, nn
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import LossModule

from torchrl_otc.configs.algorithms import AlgorithmConfig

__all__ = [
    "ACTION_KEY",
    "OBSERVATION_KEY",
    "BoundedTanh",
    "DeterministicPolicy",
    "make_critic",
    "make_gaussian_actor",
    "trainable",
]

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


def trainable(params: TensorDictBase) -> list[Tensor]:
    """The parameters (not the buffers) of a functional network's parameter tensordict.

    Args:
        params: e.g. ``loss.qvalue_network_params``.

    Returns:
        the trainable leaves, in the tensordict's order.

    Examples:
        >>> net = TensorDictModule(nn.Linear(2, 1), in_keys=["x"], out_keys=["y"])
        >>> len(trainable(TensorDict.from_module(net, as_module=True)))
        2
    """
    return [p for p in params.values(True, True) if isinstance(p, nn.Parameter) and p.requires_grad]


def actor_critic_parts(
    loss: LossModule, cfg: AlgorithmConfig
) -> dict[str, tuple[list[Tensor], float]]:
    """The ``critic`` and ``actor`` parts of an actor-critic loss: trainable tensors and learning rate (Table 3).

    Args:
        loss: a loss with ``qvalue_network_params`` and ``actor_network_params``.
        cfg: the algorithm's config (``critic_lr``, ``actor_lr``).

    Returns:
        ``{"critic": (params, critic_lr), "actor": (params, actor_lr)}``, in that order.
    """
    return {
        "critic": (trainable(loss.qvalue_network_params), cfg.critic_lr),
        "actor": (trainable(loss.actor_network_params), cfg.actor_lr),
    }


def deterministic_policy(actor: TensorDictModuleBase) -> TensorDictModule:
    """The deployment policy of a stochastic actor: its deterministic action (:class:`DeterministicPolicy`),
    reading the actor's inputs and writing ``"action"``."""
    return TensorDictModule(
        DeterministicPolicy(actor), in_keys=actor.in_keys, out_keys=[ACTION_KEY]
    )


def make_critic(cfg: AlgorithmConfig, obs_dim: int, act_dim: int) -> ValueOperator:
    """``Q(s, a)``: an MLP reading ``[observation, action]`` (Table 3 sizes and activation).

    Args:
        cfg: the algorithm's config (``hidden_sizes``, ``activation``).
        obs_dim: observation size.
        act_dim: action size.

    Returns:
        a :class:`~torchrl.modules.ValueOperator` writing ``"state_action_value"``.

    Examples:
        >>> from torchrl_otc.configs.algorithms import TD3BCConfig
        >>> critic = make_critic(TD3BCConfig(hidden_sizes=(8,)), 3, 2)
        >>> critic(TensorDict({"observation": torch.zeros(4, 3), "action": torch.zeros(4, 2)}, [4]))[
        ...     "state_action_value"].shape
        torch.Size([4, 1])
    """
    net = MLP(
        in_features=obs_dim + act_dim,
        out_features=1,
        num_cells=list(cfg.hidden_sizes),
        activation_class=cfg.activation_class,
    )
    return ValueOperator(net, in_keys=[OBSERVATION_KEY, ACTION_KEY])


def make_gaussian_actor(
    cfg: AlgorithmConfig,
    obs_dim: int,
    act_dim: int,
    action_spec: Bounded,
    low: Tensor,
    high: Tensor,
) -> ProbabilisticActor:
    """AWAC's and CQL's policy: an MLP to ``(loc, scale)`` and a TanhNormal squashed into ``[low, high]``.

    Args:
        cfg: the algorithm's config (``hidden_sizes``, ``activation``).
        obs_dim: observation size.
        act_dim: action size.
        action_spec: the bounded action spec.
        low: lower action bounds.
        high: upper action bounds.

    Returns:
        a :class:`~torchrl.modules.ProbabilisticActor` writing ``"action"``.

    Examples:
        >>> from torchrl_otc.configs.algorithms import AWACConfig
        >>> spec = Bounded(-1.0, 1.0, (2,))
        >>> actor = make_gaussian_actor(AWACConfig(hidden_sizes=(8,)), 3, 2, spec, spec.space.low, spec.space.high)
        >>> actor(TensorDict({"observation": torch.zeros(4, 3)}, [4]))["action"].shape
        torch.Size([4, 2])
    """
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
