"""Helpers shared by the package's losses: a foreach soft update and fast paths around TensorDict calls.

Why they exist (``python benchmarks/bench_update.py --only parts``, 2-core CPU, one thread, BCQ at Table 3's
sizes, 2026-12-01, idle Intel Xeon VM): TorchRL's :class:`~torchrl.objectives.SoftUpdate` took 0.292 ms per step
against 0.012 ms for one ``torch._foreach_lerp_`` (:class:`ForeachSoftUpdate`); evaluating the twin critics
through ``vmap`` over a :class:`~tensordict.nn.TensorDictModule` took 0.464 ms for a batch of 128 against 0.097 ms
for one batched matmul per layer (:class:`StackedMLP`). The helpers below keep the TensorDict
interface (keys, functional parameters, targets) and skip that overhead where the result is provably the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import (
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
)
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor, nn
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import LossModule, SoftUpdate
from torchrl.objectives.utils import (
    ValueEstimators,
    _cache_values,
    _vmap_func,
    dispatch_value_estimator,
)
from torchrl.objectives.value import ValueEstimatorBase

__all__ = [
    "LossFunction",
    "Reduction",
    "ForeachSoftUpdate",
    "StackedMLP",
    "build_value_estimator",
    "call_net",
    "critic_values",
    "owns_parameters",
    "policy_distribution",
]

#: A critic's regression loss, as :func:`torchrl.objectives.utils.distance_loss` names it.
LossFunction = Literal["l2", "l1", "smooth_l1"]
#: How a loss reduces over the batch (TorchRL's ``reduction``).
Reduction = Literal["mean", "sum", "none"]

#: Parameter-free elementwise modules an MLP fast path may apply as they are.
ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.ELU, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Identity)


class ForeachSoftUpdate(SoftUpdate):
    r"""TorchRL's :class:`~torchrl.objectives.SoftUpdate` with one fused ``torch._foreach_lerp_`` per step.

    Same targets, same rule (Lillicrap et al. 2016, DDPG):

    .. math::

        \theta' \leftarrow (1 - \tau)\,\theta' + \tau\,\theta ,

    and the same constructor (``ForeachSoftUpdate(loss, tau=0.005)``); only :meth:`step` differs: TorchRL's
    walks the parameter tensordicts and calls ``lerp_`` on ``.data`` views of them (0.29 ms per BCQ step on the
    2-core CPU), this one updates the same tensors in one fused call (0.01 ms). The tensor lists are cached in
    the loss's ``_cache``, which :class:`~torchrl.objectives.LossModule` clears whenever the loss is moved or
    cast.

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import MLP, ValueOperator
        >>> from torchrl_otc.modules.models.vae import ActionVAE
        >>> from torchrl_otc.objectives.bcq import BCQLoss, BCQPerturbation
        >>> actor = TensorDictModule(BCQPerturbation(3, 2), in_keys=["observation", "action"], out_keys=["action"])
        >>> qvalue = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[8]), in_keys=["observation", "action"])
        >>> vae = TensorDictModule(ActionVAE(3, 2), in_keys=["observation", "action"], out_keys=["r", "m", "s"])
        >>> loss = BCQLoss(actor, qvalue, vae)
        >>> updater = ForeachSoftUpdate(loss, tau=0.5)
        >>> w = loss.qvalue_network_params["module", "0", "weight"]
        >>> with torch.no_grad():
        ...     _ = w.add_(1.0)
        >>> before = loss.target_qvalue_network_params["module", "0", "weight"].clone()
        >>> updater.step()
        >>> torch.allclose(loss.target_qvalue_network_params["module", "0", "weight"], 0.5 * before + 0.5 * w)
        True
    """

    def step(self) -> None:
        if not self.initialized:
            raise RuntimeError(
                f"{type(self).__name__} must be initialised (init_()) before step()."
            )
        for name in self._target_names:  # materialises lazy targets, as TorchRL's step does
            getattr(self.loss_module, name)
        # the pairs live in the loss's cache, which LossModule erases whenever the loss is moved or cast
        cache = self.loss_module.__dict__.setdefault("_cache", {})
        pairs = cache.get(("foreach_soft_update", id(self)))
        if pairs is None:
            pairs = cache[("foreach_soft_update", id(self))] = self._pairs()
        targets, sources = pairs
        if targets:
            with torch.no_grad():
                torch._foreach_lerp_(targets, sources, 1 - self.eps)

    def _pairs(self) -> tuple[list[Tensor], list[Tensor]]:
        sources, targets = [], []
        for key, source in self._sources.items(True, True):
            key = key if isinstance(key, tuple) else (key,)
            target = self._targets.get(("target_" + key[0], *key[1:]))
            if target.requires_grad:
                raise RuntimeError("the target parameter is part of a graph.")
            sources.append(source)
            targets.append(target)
        return targets, sources


def owns_parameters(module: nn.Module, params: TensorDictBase) -> bool:
    """Whether ``params`` are ``module``'s own tensors (calling ``module`` directly then equals a functional call).

    True when every parameter of ``params`` *is* the module's parameter of the same name and every buffer
    shares the module's buffer storage, as right after
    :meth:`~torchrl.objectives.LossModule.convert_to_functional` for a network that is not expanded.

    Examples:
        >>> from tensordict import TensorDict
        >>> net = TensorDictModule(nn.Linear(2, 1), in_keys=["x"], out_keys=["y"])
        >>> owns_parameters(net, TensorDict.from_module(net, as_module=True))
        True
        >>> owns_parameters(net, TensorDict.from_module(net).clone())
        False
    """
    state: dict[str, Tensor] = dict(module.named_parameters())
    state.update(dict(module.named_buffers()))
    flat = {".".join(k) if isinstance(k, tuple) else k: v for k, v in params.items(True, True)}
    if set(flat) != set(state):
        return False
    for name, tensor in flat.items():
        own = state[name]
        if tensor is own:
            continue
        if isinstance(own, nn.Parameter) or tensor.requires_grad:
            return False
        if (
            tensor.data_ptr() != own.data_ptr()
            or tensor.shape != own.shape
            or tensor.device != own.device
        ):
            return False
    return True


class StackedMLP:
    """One batched matmul per layer for an ensemble of MLP critics with stacked parameters.

    TorchRL's losses evaluate ``num_qvalue_nets`` critics with :func:`torch.vmap` over a
    :class:`~tensordict.nn.TensorDictModule`. When the critic is a :class:`~torchrl.modules.MLP` (which
    concatenates its inputs) of ``Linear`` layers and parameter-free elementwise activations, the same values come
    from ``baddbmm`` on the stacked weights, at a fraction of the cost (see the module docstring). For any other
    critic :meth:`from_module` returns ``None`` and the losses keep the ``vmap`` path.

    Args:
        layers: ``(kind, module_or_key)`` per layer: ``("linear", (weight_key, bias_key))`` or
            ``("act", module)``.

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import ValueOperator
        >>> q = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[8, 8]), in_keys=["obs", "action"])
        >>> fast = StackedMLP.from_module(q)
        >>> params = TensorDict.from_modules(q, q, as_module=True)
        >>> x = torch.randn(4, 5)
        >>> out = fast(params, x)
        >>> out.shape, torch.allclose(out[0], q.module(x[:, :3], x[:, 3:]), atol=1e-6)
        (torch.Size([2, 4, 1]), True)
    """

    def __init__(self, layers: list[tuple[str, object]]) -> None:
        self.layers = layers

    @classmethod
    def from_module(cls, net: nn.Module) -> StackedMLP | None:
        """The fast path for ``net`` (a TensorDictModule wrapping an ``MLP``), or ``None`` if it does not apply."""
        if type(net) not in (TensorDictModule,) and not _is_value_operator(net):
            return None
        mlp = getattr(net, "module", None)
        if not isinstance(mlp, MLP) or getattr(mlp, "_reshape_out", False):
            return None
        layers: list[tuple[str, object]] = []
        for name, child in mlp.named_children():
            if type(child) is nn.Linear and child.bias is not None:
                layers.append(("linear", (("module", name, "weight"), ("module", name, "bias"))))
            elif type(child) in ELEMENTWISE:
                layers.append(("act", child))
            else:
                return None
        if not layers or layers[-1][0] != "linear" or len(net.out_keys) != 1:
            return None
        return cls(layers)

    def __call__(self, params: TensorDictBase, x: Tensor, index: int | None = None) -> Tensor:
        """Critic outputs ``[E, *batch, out]`` for stacked ``params`` of batch ``[E]`` (``[*batch, out]`` with ``index``).

        Args:
            params: the stacked parameters (e.g. ``loss.qvalue_network_params``), or unstacked ones with
                ``index=None`` and batch size ``[]``.
            x: the concatenated inputs ``[*batch, in]``.
            index: evaluate only ensemble member ``index``.
        """
        batch = x.shape[:-1]
        h = x.reshape(-1, x.shape[-1])
        stacked = params.batch_size != torch.Size([]) and index is None
        for kind, item in self.layers:
            if kind == "act":
                h = item(h)
                continue
            weight, bias = params.get(item[0]), params.get(item[1])
            if index is not None and params.batch_size != torch.Size([]):
                weight, bias = weight[index], bias[index]
            if stacked:
                if h.dim() == 2:
                    h = h.expand(weight.shape[0], *h.shape)
                h = torch.baddbmm(bias.unsqueeze(-2), h, weight.transpose(-1, -2))
            else:
                h = torch.nn.functional.linear(h, weight, bias)
        if stacked:
            return h.reshape(h.shape[0], *batch, h.shape[-1])
        return h.reshape(*batch, h.shape[-1])


def _is_value_operator(net: nn.Module) -> bool:
    return type(net) is ValueOperator


def _owned(loss: LossModule, net_name: str, params: TensorDictBase) -> bool:
    cache = loss.__dict__.setdefault("_cache", {})
    key = ("owns", net_name, id(params))
    owned = cache.get(key)
    if owned is None:
        owned = cache[key] = owns_parameters(getattr(loss, net_name), params)
    return owned


def call_net(
    loss: LossModule,
    net_name: str,
    params: TensorDictBase,
    inputs: Sequence[Tensor],
    *,
    method: str = "forward",
) -> Tensor | tuple[Tensor, ...]:
    """Runs ``getattr(loss.<net_name>.module, method)(*inputs)`` with ``params``, on tensors.

    Calls the module directly when ``params`` are its own tensors (:func:`owns_parameters`), through
    :func:`torch.func.functional_call` for other parameters (e.g. targets), and swaps them in with ``to_module``
    for a method other than ``forward``. What it caches lives in the loss's ``_cache``, which
    :class:`~torchrl.objectives.LossModule` clears whenever the loss is moved or cast.

    Args:
        loss: the loss holding the network (``loss.<net_name>``, a :class:`~tensordict.nn.TensorDictModule`).
        net_name: the network's attribute name, e.g. ``"actor_network"``.
        params: the parameters to run it with (e.g. ``loss.target_actor_network_params``).
        inputs: positional tensors of the module's ``method``.

    Keyword Args:
        method: the module method to call. Defaults to ``"forward"``.

    Examples:
        >>> from torchrl.modules import ValueOperator
        >>> from torchrl_otc.modules.models.vae import ActionVAE
        >>> from torchrl_otc.objectives.bcq import BCQLoss, BCQPerturbation
        >>> actor = TensorDictModule(BCQPerturbation(3, 2), in_keys=["observation", "action"], out_keys=["action"])
        >>> critic = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[8]), in_keys=["observation", "action"])
        >>> vae = TensorDictModule(ActionVAE(3, 2), in_keys=["observation", "action"], out_keys=["r", "m", "s"])
        >>> loss = BCQLoss(actor, critic, vae)
        >>> from torchrl.objectives import SoftUpdate
        >>> _ = SoftUpdate(loss, tau=0.005)
        >>> obs, act = torch.randn(4, 3), torch.zeros(4, 2)
        >>> call_net(loss, "actor_network", loss.target_actor_network_params, [obs, act]).shape
        torch.Size([4, 2])
        >>> call_net(loss, "vae_network", loss.vae_network_params, [obs], method="decode").shape
        torch.Size([4, 2])
    """
    net = getattr(loss, net_name)
    cache = loss.__dict__.setdefault("_cache", {})
    if _owned(loss, net_name, params):
        return getattr(net.module, method)(*inputs)
    if method == "forward":
        flat_key = ("flat", net_name, id(params))
        flat = cache.get(flat_key)
        if flat is None:
            flat = cache[flat_key] = {
                ".".join(k[1:]): v for k, v in params.items(True, True) if k[0] == "module"
            }
        return torch.func.functional_call(net.module, flat, tuple(inputs))
    with params.to_module(net, preserve_module_state=False):
        return getattr(net.module, method)(*inputs)


def critic_values(
    loss: LossModule,
    inputs: Mapping[NestedKey, Tensor],
    params: TensorDictBase,
    index: int | None = None,
) -> Tensor:
    """Values ``[num_q, *B]`` of the loss's stacked critics (``[*B]`` for critic ``index`` only).

    Uses ``loss._fast_qvalue`` (a :class:`StackedMLP`) when set, else ``loss._vmap_qvalue_networkN0`` (TorchRL's
    vmap over the critic), or a single ``to_module`` call for one critic.

    Args:
        loss: a loss with ``qvalue_network``, its stacked parameters and ``tensor_keys.state_action_value``.
        inputs: the critic's input tensors by key, batch shape ``[*B]``.
        params: stacked critic parameters (current, target or detached).
        index: evaluate only this critic.

    Examples:
        >>> from tensordict.nn import NormalParamExtractor
        >>> from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator
        >>> from torchrl_otc.objectives.awac import AWACLoss
        >>> net = nn.Sequential(MLP(in_features=3, out_features=4, num_cells=[8]), NormalParamExtractor())
        >>> actor = ProbabilisticActor(TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        ...                            in_keys=["loc", "scale"], distribution_class=TanhNormal)
        >>> critic = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[8]), in_keys=["observation", "action"])
        >>> loss = AWACLoss(actor, critic)
        >>> from torchrl.objectives import SoftUpdate
        >>> _ = SoftUpdate(loss, tau=0.005)
        >>> inputs = {"observation": torch.randn(6, 3), "action": torch.zeros(6, 2)}
        >>> critic_values(loss, inputs, loss.qvalue_network_params).shape
        torch.Size([2, 6])
        >>> critic_values(loss, inputs, loss.target_qvalue_network_params, index=0).shape
        torch.Size([6])
        >>> policy_distribution(loss, "actor_network", loss.actor_network_params, inputs).sample().shape
        torch.Size([6, 2])
    """
    net = loss.qvalue_network
    fast = loss._fast_qvalue
    if fast is not None:
        return fast(params, torch.cat([inputs[k] for k in net.in_keys], -1), index).squeeze(-1)
    batch = inputs[loss.tensor_keys.action].shape[:-1]
    td = TensorDict({k: inputs[k] for k in net.in_keys}, batch)
    if index is None:
        out = loss._vmap_qvalue_networkN0(td, params)
    else:
        with params[index].to_module(net, preserve_module_state=False):
            out = net(td)
    return out.get(loss.tensor_keys.state_action_value).squeeze(-1)


def policy_distribution(
    loss: LossModule, net_name: str, params: TensorDictBase, inputs: Mapping[NestedKey, Tensor]
) -> torch.distributions.Distribution:
    """``loss.<net_name>.get_dist`` on tensors, with ``params``.

    When the actor is a :class:`~tensordict.nn.ProbabilisticTensorDictSequential` of one
    :class:`~tensordict.nn.TensorDictModule` (state -> distribution parameters) and one
    :class:`~tensordict.nn.ProbabilisticTensorDictModule` (e.g. TorchRL's ``ProbabilisticActor`` with a
    ``TanhNormal``) and ``params`` are its own tensors, the distribution is built from the module's outputs
    exactly as ``get_dist`` does, without the TensorDict round trip; otherwise ``get_dist`` is called.

    Args:
        loss: the loss holding the actor.
        net_name: the actor's attribute name (e.g. ``"actor_network"``).
        params: the actor parameters.
        inputs: the actor's input tensors by key, batch shape ``[*B]``.

    Examples:
        See :func:`critic_values`.
    """
    actor = getattr(loss, net_name)
    mods = (
        list(getattr(actor, "module", ()))
        if isinstance(actor, ProbabilisticTensorDictSequential)
        else []
    )
    if (
        len(mods) == 2
        and type(mods[0]) is TensorDictModule
        and isinstance(mods[1], ProbabilisticTensorDictModule)
        and type(mods[1]).get_dist is ProbabilisticTensorDictModule.get_dist
        and _owned(loss, net_name, params)
    ):
        body, head = mods
        outs = body.module(*[inputs[k] for k in body.in_keys])
        values = dict(zip(body.out_keys, outs if isinstance(outs, tuple) else (outs,)))
        kwargs = {
            (dk[-1] if isinstance(dk, tuple) else dk): values[tk]
            for dk, tk in zip(head.dist_keys, head.in_keys)
        }
        return head.distribution_class(**kwargs, **head.distribution_kwargs)
    batch = next(iter(inputs.values())).shape[:-1]
    td = TensorDict({k: inputs[k] for k in actor.in_keys}, batch)
    with params.to_module(actor, preserve_module_state=False):
        return actor.get_dist(td)


def build_value_estimator(
    loss: LossModule,
    value_type: ValueEstimators | ValueEstimatorBase | type | None,
    hyperparams: dict[str, Any],
    *,
    value_key: NestedKey,
    extra_keys: dict[str, NestedKey] | None = None,
) -> LossModule:
    """The body of a loss's ``make_value_estimator`` that computes its own next-state values (no value network).

    ``None`` takes ``loss.default_value_estimator``; an estimator instance or class goes to
    :meth:`LossModule.make_value_estimator <torchrl.objectives.LossModule.make_value_estimator>`; an
    :class:`~torchrl.objectives.utils.ValueEstimators` member among ``loss.SUPPORTED_VALUE_ESTIMATORS`` is built with
    the loss's reward and done keys, ``value_key`` as the value and no value network. Returns ``loss``, so that
    ``make_value_estimator`` chains as TorchRL's do.

    Args:
        loss: the loss module.
        value_type: the estimator asked for.
        hyperparams: its hyperparameters (``gamma``, ``lmbda``).

    Keyword Args:
        value_key: the key the estimator reads the values from.
        extra_keys: more ``tensor_keys`` of the estimator (e.g. ``value_target``).

    Examples:
        >>> from tensordict.nn import TensorDictModule
        >>> from tensordict.nn import NormalParamExtractor
        >>> from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator
        >>> from torchrl_otc.objectives.awac import AWACLoss
        >>> net = nn.Sequential(MLP(in_features=3, out_features=4, num_cells=[8]), NormalParamExtractor())
        >>> actor = ProbabilisticActor(TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        ...                            in_keys=["loc", "scale"], distribution_class=TanhNormal)
        >>> critic = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[8]), in_keys=["observation", "action"])
        >>> loss = AWACLoss(actor, critic)
        >>> key = loss.tensor_keys.state_action_value
        >>> build_value_estimator(loss, None, {"gamma": 0.9}, value_key=key) is loss
        True
        >>> float(loss.value_estimator.gamma)
        0.8999999761581421
    """
    if value_type is None:
        value_type = loss.default_value_estimator
    if isinstance(value_type, ValueEstimatorBase) or (
        isinstance(value_type, type) and issubclass(value_type, ValueEstimatorBase)
    ):
        LossModule.make_value_estimator(loss, value_type, **hyperparams)
        return loss
    dispatch_value_estimator(
        loss,
        value_type,
        supported=loss.SUPPORTED_VALUE_ESTIMATORS,
        tensor_keys={
            **(extra_keys or {}),
            "value": value_key,
            "reward": loss.tensor_keys.reward,
            "done": loss.tensor_keys.done,
            "terminated": loss.tensor_keys.terminated,
        },
        value_network=None,
        **hyperparams,
    )
    return loss


class TwinCriticLoss(LossModule):
    """What :class:`~torchrl_otc.objectives.BCQLoss` and :class:`~torchrl_otc.objectives.AWACLoss` share: stacked
    twin critics with target copies (``qvalue_network``), TD(0), TD(1) or TD(lambda) value estimation, and in-keys built
    from :attr:`observation_keys` (defined by each loss).

    Subclasses call ``convert_to_functional(qvalue_network, "qvalue_network", n, create_target_params=True)`` and
    then :meth:`_make_vmap` in their ``__init__``.
    """

    SUPPORTED_VALUE_ESTIMATORS = (
        ValueEstimators.TD0,
        ValueEstimators.TD1,
        ValueEstimators.TDLambda,
    )
    _in_keys: list[NestedKey] | None = None

    @property
    def observation_keys(self) -> list[NestedKey]:  # pragma: no cover - every loss defines it
        raise NotImplementedError

    def _make_vmap(self) -> None:
        self._vmap_qvalue_networkN0 = _vmap_func(
            self.qvalue_network,
            (None, 0),
            randomness=self.vmap_randomness,
            pseudo_vmap=self.deactivate_vmap,
        )
        # one batched matmul per layer when the critic is a plain MLP; vmap otherwise (same values)
        self._fast_qvalue = (
            None if self.deactivate_vmap else StackedMLP.from_module(self.qvalue_network)
        )

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                value=self.tensor_keys.state_action_value,
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
        self._in_keys = list(dict.fromkeys(unravel_key(key) for key in keys))

    @property
    def in_keys(self) -> list[NestedKey]:
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values: list[NestedKey]) -> None:
        self._in_keys = values

    @property
    @_cache_values
    def _cached_detach_qvalue_network_params(self) -> TensorDictBase:
        return self.qvalue_network_params.detach()

    def make_value_estimator(
        self, value_type: ValueEstimators | None = None, **hyperparams
    ) -> TwinCriticLoss:
        r"""Builds the value estimator of the critics' target, as TorchRL's ``TD3BCLoss`` does.

        ``TD0`` (default) is the one-step backup :math:`r + \gamma (1 - \mathrm{terminated}) V(s')` of the
        papers, for batches of single transitions (what a replay buffer samples). ``TD1`` and ``TDLambda`` build
        the (lambda-)return backwards along the last batch dimension from the loss's own next-state values
        :math:`V(s'_t)`, bootstrapping where ``done`` and stopping where ``terminated``: they need batches of
        trajectories (``[*, T]``, time last, e.g. from a ``SliceSampler``) and are wrong on shuffled transitions.

        Args:
            value_type: ``ValueEstimators.TD0`` (default), ``TD1`` or ``TDLambda``, or a
                :class:`~torchrl.objectives.value.ValueEstimatorBase` instance or subclass. Others (``GAE``, ...)
                raise :class:`NotImplementedError`.
            **hyperparams: e.g. ``gamma``, ``lmbda`` (``TDLambda``).

        Returns:
            the loss itself, as TorchRL's losses do, so that calls chain
            (``loss = BCQLoss(...).make_value_estimator(gamma=0.99)``).
        """
        return build_value_estimator(
            self, value_type, hyperparams, value_key=self.tensor_keys.state_action_value
        )
