r"""What the batched learners share: group checks, stacked parameters, per-learner Adam and clipping, stacked MLPs.

Decentralised OTC trains one independent learner per agent (OTC paper section 3), and a grid trains several seeds
of each. A batched algorithm updates N such learners at once: each parameter of the N learners is stacked along a
leading learner dimension and every network runs as one ``bmm`` per layer over the learners. Nothing couples
them: each learner's loss reads only its own batch, parameters and random draws; the gradient of the sum of the N
losses with respect to learner :math:`i`'s slice is the gradient of learner :math:`i`'s loss alone; Adam is
elementwise, so one Adam over the stacked tensors, with each learner's moments in its slice, takes the N separate
steps; gradients are clipped per learner and per part,

.. math::

    g_{i} \leftarrow g_{i} \min\left(1, \frac{c}{\lVert g_{i} \rVert_2 + 10^{-6}}\right),

with :math:`\lVert g_i \rVert_2` over learner :math:`i`'s slices of one part, as
:func:`torch.nn.utils.clip_grad_norm_` does for a separate learner. The random numbers of a separate update (VAE
noise, policy samples, CQL's uniform actions) are drawn per learner by :meth:`BatchedAlgorithm.draw_noise` in the
separate update's order and shapes, inside that learner's random stream, then passed to
:meth:`BatchedAlgorithm.update`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn

from torchrl_otc.objectives.utils import ELEMENTWISE
from torchrl_otc.trainers.algorithms.base import Algorithm

__all__ = [
    "BatchedAlgorithm",
    "Key",
    "StackedSequential",
    "check_group",
    "clip_per_learner",
    "stacked_adam",
    "stacked_linear",
    "standard_normal",
    "tanh_normal_draw",
]

#: A nested key of a loss's parameter tensordict, e.g. ``("module", "0", "weight")``.
Key = tuple[str, ...]


def standard_normal(shape: Sequence[int], like: Tensor) -> Tensor:
    """``torch.empty(shape).normal_()``: the draw of :mod:`torch.distributions`' ``rsample`` and of ``randn``.

    Args:
        shape: the shape of the draw (the same shape as the separate update's draw: the numbers depend on it).
        like: gives the dtype and device.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> a = standard_normal((3, 2), torch.zeros(1))
        >>> _ = torch.manual_seed(0)
        >>> torch.equal(a, torch.randn(3, 2))
        True
    """
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device).normal_()


def tanh_normal_draw(dist: Any, noise: Tensor) -> tuple[Tensor, Tensor]:
    """TorchRL's ``TanhNormal.rsample_and_log_prob`` for given standard normal draws ``noise``.

    The pre-image ``loc + noise * scale`` (what :class:`torch.distributions.Normal` computes from its own draw),
    squashed by the distribution's transform, and its log-density scored on the pre-image.

    Args:
        dist: a :class:`~torchrl.modules.TanhNormal` (its ``loc`` and ``scale`` shaped like ``noise``).
        noise: standard normal draws, the distribution's sample shape.

    Returns:
        the action and its log-probability (summed over the action dimension).

    Examples:
        >>> from torchrl.modules import TanhNormal
        >>> dist = TanhNormal(torch.zeros(4, 2), torch.ones(4, 2))
        >>> _ = torch.manual_seed(0)
        >>> a, lp = dist.rsample_and_log_prob()
        >>> _ = torch.manual_seed(0)
        >>> b, lq = tanh_normal_draw(dist, standard_normal((4, 2), torch.zeros(1)))
        >>> torch.equal(a, b), torch.allclose(lp, lq)
        (True, True)
    """
    root = dist.root_dist
    preimage = root.loc + noise * root.scale
    transform = dist.transforms[0]
    sample = transform(preimage)
    jacobian = transform.log_abs_det_jacobian(preimage, sample)
    jacobian = jacobian.sum(-1) if len(dist.event_shape) else jacobian
    return sample, dist.base_dist.log_prob(preimage) - jacobian


def clip_per_learner(params: Sequence[Tensor], max_norm: float | None) -> None:
    """Clips the gradients of stacked ``params`` ``[N, ...]`` per learner, as ``clip_grad_norm_`` per learner.

    Args:
        params: one part's stacked parameters (``None`` gradients are skipped, as ``clip_grad_norm_`` does).
        max_norm: the largest gradient norm of one learner's part; ``None`` does nothing.

    Examples:
        >>> p = nn.Parameter(torch.zeros(2, 3))
        >>> p.grad = torch.tensor([[3.0, 4.0, 0.0], [0.3, 0.4, 0.0]])
        >>> clip_per_learner([p], 1.0)
        >>> p.grad.norm(dim=1)
        tensor([1.0000, 0.5000])
    """
    if max_norm is None:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    n = grads[0].shape[0]
    # the squared norms summed one tensor after the other: a reduction over a stacked [P, n] tensor takes another
    # order of additions when n is 1, and a learner's numbers must not depend on the size of its group
    norms = sum(g.reshape(n, -1).pow(2).sum(1) for g in grads).sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))


def stacked_adam(params: Sequence[nn.Parameter], **hyperparameters: Any) -> torch.optim.Adam:
    """Adam over stacked parameters ``[N, ...]``: the learners' N separate Adam steps, bit for bit.

    Adam is elementwise, so one step over the stacked tensors (each learner's moments in its slice) is each
    learner's own step. It runs the multi-tensor (``foreach``) implementation: on the CPU the same operations, in
    the same order, as the single-tensor default of the separate learners' optimisers (so the same numbers), with
    fewer passes over memory and temporaries.

    Args:
        params: one part's stacked parameters.
        **hyperparameters: of :class:`torch.optim.Adam` (``lr``, ``betas``, ...), the learners' own.

    Examples:
        >>> p, q = nn.Parameter(torch.ones(2, 3)), nn.Parameter(torch.ones(3))
        >>> p.grad, q.grad = torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]]), torch.tensor([0.5, -1.0, 2.0])
        >>> stacked_adam([p], lr=0.1).step(); torch.optim.Adam([q], lr=0.1).step()
        >>> torch.equal(p[0], q)
        True
    """
    return torch.optim.Adam(params, foreach=True, **hyperparameters)


def _group_bmm(a: Tensor, b: Tensor, transpose: bool = False) -> Tensor:
    """``bmm(a, b)`` (``b`` transposed with ``transpose``) with the same bits for a stack of one matrix as for
    that matrix in a stack of several: a single product with one result column takes another BLAS path (other bits;
    measured over a grid of shapes, no other product differs), so it runs as two, the copy's result dropped.
    ``b`` is repeated before it is transposed: a repeated transposed view would be laid out otherwise, which changes
    the bits too."""
    if a.shape[0] == 1 and b.shape[-2 if transpose else -1] == 1:
        return _group_bmm(a.repeat(2, 1, 1), b.repeat(2, 1, 1), transpose)[:1].clone()
    return torch.bmm(a, b.mT if transpose else b)


class _StackedLinear(torch.autograd.Function):
    """``x @ weight^T + bias`` of ``E`` stacked layers, its gradients computed in the parameters' own layout."""

    # forward(ctx, ...) rather than setup_context: apply then skips an inspect.signature per call
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        # bmm, then the bias in place: one memory pass, and bmm runs faster than baddbmm with a broadcast bias
        return _group_bmm(x, weight, transpose=True).add_(bias.unsqueeze(-2))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad
        # grad^T x is [E, out, in] like the weight: autograd accumulates it without a transposing copy
        return (
            _group_bmm(grad, weight) if need_x else None,
            torch.bmm(grad.mT, x) if need_weight else None,
            grad.sum(-2) if need_bias else None,
        )


def stacked_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``E`` independent ``Linear`` layers: ``x @ weight^T + bias`` for ``x`` ``[E, R, in]``, ``weight``
    ``[E, out, in]``, ``bias`` ``[E, out]``; ``[E, R, out]``.

    One ``bmm`` forward; backward, one ``bmm`` per gradient needed, the weight's in its own ``[E, out, in]``
    layout (``baddbmm`` of the transposed weight costs a transposing copy of every weight gradient and a slower
    matmul). The numbers are those of ``E`` ``Linear`` calls up to float rounding.

    Examples:
        >>> layer = nn.Linear(3, 2)
        >>> x = torch.randn(1, 4, 3)
        >>> y = stacked_linear(x, layer.weight.unsqueeze(0), layer.bias.unsqueeze(0))
        >>> torch.allclose(y[0], layer(x[0]), atol=1e-6)
        True
    """
    return _StackedLinear.apply(x, weight, bias)


class StackedSequential:
    """An ``nn.Sequential`` of ``Linear`` layers and elementwise activations, run on stacked parameters.

    Built from a network's module (:meth:`from_module`); called with the stacked tensors of its layers (in
    :attr:`keys` order, each ``[E, ...]``) and inputs ``[E, R, in]``, it returns ``[E, R, out]`` with one
    ``bmm`` per layer (:func:`stacked_linear`): ``E`` independent copies of the network.

    Args:
        layers: ``("linear", (weight_key, bias_key))`` or ``("act", module)`` per layer.

    Examples:
        >>> from tensordict.nn import TensorDictModule
        >>> net = TensorDictModule(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)), ["x"], ["y"])
        >>> plan = StackedSequential.from_module(net, net.module)
        >>> plan.keys[0]
        ('module', '0', 'weight')
        >>> params = dict(net.named_parameters())
        >>> tensors = [params[".".join(k)].unsqueeze(0) for k in plan.keys]
        >>> x = torch.randn(1, 5, 3)
        >>> torch.allclose(plan(tensors, x)[0], net.module(x[0]), atol=1e-6)
        True
    """

    def __init__(self, layers: list[tuple[str, Any]]) -> None:
        self.layers = layers
        self.keys: list[Key] = [k for kind, item in layers if kind == "linear" for k in item]

    @classmethod
    def from_module(
        cls, root: nn.Module, seq: nn.Module, what: str = "network"
    ) -> StackedSequential:
        """The plan of ``seq``, a submodule of ``root`` (keys relative to ``root``'s parameter tensordict).

        Raises:
            ValueError: ``seq`` is not a sequence of ``Linear`` layers (with bias) and elementwise activations
                ending with a ``Linear``.
        """
        prefix = next((name for name, mod in root.named_modules() if mod is seq), None)
        if prefix is None or not isinstance(seq, nn.Sequential):
            raise ValueError(
                f"The batched learners need the {what} to be an nn.Sequential (an MLP)."
            )
        base = tuple(prefix.split(".")) if prefix else ()
        layers: list[tuple[str, Any]] = []
        for name, child in seq.named_children():
            if type(child) is nn.Linear and child.bias is not None:
                layers.append(("linear", ((*base, name, "weight"), (*base, name, "bias"))))
            elif type(child) in ELEMENTWISE:
                layers.append(("act", child))
            else:
                raise ValueError(
                    f"The batched learners run the {what} as Linear layers and elementwise activations; it has "
                    f"a {type(child).__name__}."
                )
        if not layers or layers[-1][0] != "linear":
            raise ValueError(f"The {what} must end with a Linear layer.")
        return cls(layers)

    def __call__(self, tensors: Sequence[Tensor], x: Tensor) -> Tensor:
        """``[E, R, out]`` of inputs ``x`` ``[E, R, in]`` with the stacked layer tensors (in :attr:`keys` order)."""
        h = x
        i = 0
        for kind, item in self.layers:
            if kind == "act":
                # in place on the fresh layer output (its backward does not read it): one allocation less
                h = torch.relu_(h) if type(item) is nn.ReLU else item(h)
                continue
            h = stacked_linear(h, tensors[i], tensors[i + 1])
            i += 2
        return h


def _config_differences(configs: Sequence[Any]) -> list[str]:
    first = dataclasses.asdict(configs[0])
    diffs = []
    for j, cfg in enumerate(configs[1:], 1):
        other = dataclasses.asdict(cfg)
        for field in first:
            if first[field] != other.get(field):
                diffs.append(
                    f"{field} (learner 0: {first[field]!r}, learner {j}: {other.get(field)!r})"
                )
    return list(dict.fromkeys(diffs))


def check_group(algorithms: Sequence[Algorithm], cls: type, label: str, owner: str) -> None:
    """Raises ``ValueError`` naming what differs when ``algorithms`` cannot be batched together.

    They must be non-empty, all of class ``cls``, with equal configs, update counts, devices, and parameters of
    equal shapes and dtypes (the same observation and action sizes).

    Args:
        algorithms: the learners' algorithms.
        cls: the algorithm class the batched class handles.
        label: the algorithm's name for messages (e.g. ``"BCQ"``).
        owner: the batched class's name for messages.

    Examples:
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_otc.trainers.algorithms.awac import AWAC
        >>> a = AWAC(Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)))
        >>> b = AWAC(Unbounded(shape=(4,)), Bounded(-1.0, 1.0, (1,)))
        >>> check_group([a, b], AWAC, "AWAC", "BatchedAWAC")
        Traceback (most recent call last):
        ...
        ValueError: BatchedAWAC needs parameters of equal shapes; actor_network_params ('module', '0', 'module', '0', '0', 'weight') is (256, 3) for learner 0 and (256, 4) for learner 1 (different observation or action sizes?).
    """
    if not algorithms:
        raise ValueError(f"{owner} needs at least one algorithm.")
    wrong = [(i, a.name) for i, a in enumerate(algorithms) if not isinstance(a, cls)]
    if wrong:
        listed = ", ".join(f"learner {i}: {name}" for i, name in wrong)
        raise ValueError(f"{owner} batches {label} agents only; got {listed}.")
    configs = [a.config for a in algorithms]
    if any(c != configs[0] for c in configs):
        raise ValueError(
            f"{owner} needs agents with identical configs; they differ in "
            f"{'; '.join(_config_differences(configs))}."
        )
    counts = [a.num_updates for a in algorithms]
    if len(set(counts)) != 1:
        raise ValueError(f"{owner} needs agents at the same update count; got {counts}.")
    devices = [str(a.device) for a in algorithms]
    if len(set(devices)) != 1:
        raise ValueError(f"{owner} needs agents on one device; got {devices}.")
    first = algorithms[0].loss.state_dict()
    for j, algo in enumerate(algorithms[1:], 1):
        other = algo.loss.state_dict()
        if set(other) != set(first):
            raise ValueError(f"{owner} needs agents with the same networks; learner {j}'s differ.")
        for key, t in first.items():
            if t.shape != other[key].shape or t.dtype != other[key].dtype:
                name, _, rest = key.partition(".")
                raise ValueError(
                    f"{owner} needs parameters of equal shapes; {name} {tuple(rest.split('.'))} is "
                    f"{tuple(t.shape)} for learner 0 and {tuple(other[key].shape)} for learner {j} "
                    "(different observation or action sizes?)."
                )


class BatchedAlgorithm(abc.ABC):
    r"""N learners' algorithms of one kind with stacked parameters, updated by one batched call.

    A subclass names the loss's parameter tensordicts to stack (:attr:`param_sets`, targets included), its
    scalar loss parameters (:attr:`scalar_params`, e.g. CQL's ``log_alpha``), draws one learner's random
    tensors (:meth:`draw_noise`) and takes the batched step (:meth:`update`). This class stacks the tensors
    (``self.params[set_name][key]``, ``[N, ...]``; trainable ones as :class:`~torch.nn.Parameter` s listed per part
    in :attr:`parts`, in the order of the learners' own optimisers), builds one Adam per part with the learners'
    moments in its slices, clips per learner and per part, moves the targets and writes everything back
    (:meth:`write_back`).

    Args:
        algorithms: N algorithms of :attr:`algorithm_class` with equal configs, sizes and update counts.

    Raises:
        ValueError: an empty group, or algorithms that differ in class, config, update count, device, parameter
            shapes or optimiser step counts (the message names what differs).

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_otc._random import RandomStream
        >>> from torchrl_otc.configs.algorithms import AWACConfig
        >>> from torchrl_otc.trainers.algorithms import AWAC, BatchedAWAC
        >>> algos = [AWAC(Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)), AWACConfig(hidden_sizes=(8,)), seed=i)
        ...          for i in range(2)]
        >>> batched = BatchedAWAC(algos)
        >>> sorted(batched.parts), batched.parts["critic"][0].shape  # [N, num_critics, out, in]
        (['actor', 'critic'], torch.Size([2, 2, 8, 4]))
        >>> batch = TensorDict({"observation": torch.randn(16, 3), "action": torch.rand(16, 1) - 0.5,
        ...     ("next", "observation"): torch.randn(16, 3), ("next", "reward"): torch.randn(16, 1),
        ...     ("next", "done"): torch.zeros(16, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(16, 1, dtype=torch.bool)}, [16])
        >>> streams = [RandomStream(seed) for seed in (10, 11)]  # each learner's own random stream
        >>> noise = []
        >>> for stream in streams:
        ...     with stream.activate():
        ...         noise.append(batched.draw_noise(batch))
        >>> stacked_noise = {k: torch.stack([d[k] for d in noise]) for k in noise[0]}
        >>> out = batched.update(torch.stack([batch, batch]), stacked_noise)
        >>> out["loss_qvalue"].shape, batched.num_updates
        (torch.Size([2]), 1)
        >>> batched.write_back()
        >>> algos[1].num_updates
        1
    """

    #: the algorithm class batched.
    algorithm_class: ClassVar[type[Algorithm]]
    #: its name in messages.
    label: ClassVar[str]
    #: the loss's parameter tensordicts stacked (the trainable ones and their targets).
    param_sets: ClassVar[tuple[str, ...]]
    #: scalar parameters or buffers of the loss itself, stacked to ``[N]`` (absent ones are skipped).
    scalar_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, algorithms: Sequence[Algorithm]) -> None:
        owner = type(self).__name__
        check_group(algorithms, self.algorithm_class, self.label, owner)
        self.algorithms = list(algorithms)
        self.num_agents = len(self.algorithms)
        algo0 = self.algorithms[0]
        self.config = algo0.config
        self.device = algo0.device
        self.num_updates = algo0.num_updates
        self.params: dict[str, dict[Key, Tensor]] = {}
        where: dict[int, tuple[str, Key]] = {}
        for name in self.param_sets:
            tds = [getattr(a.loss, name) for a in self.algorithms]
            stacked: dict[Key, Tensor] = {}
            for key, tensor in tds[0].items(True, True):
                key = key if isinstance(key, tuple) else (key,)
                stacked[key] = torch.stack([td.get(key).detach() for td in tds]).clone()
                where[id(tensor)] = (name, key)
            self.params[name] = stacked
        self.params["loss"] = {}
        for attr in self.scalar_params:
            tensor = getattr(algo0.loss, attr, None)
            if tensor is None:
                continue
            self.params["loss"][(attr,)] = torch.stack(
                [getattr(a.loss, attr).detach() for a in self.algorithms]
            ).clone()
            where[id(tensor)] = ("loss", (attr,))
        self.parts: dict[str, list[nn.Parameter]] = {}
        self._part_keys: dict[str, list[tuple[str, Key]]] = {}
        for part, tensors in algo0._parts.items():
            keys = []
            for tensor in tensors:
                if id(tensor) not in where:
                    raise ValueError(
                        f"{owner}: a parameter of part {part!r} is not in {self.param_sets}."
                    )
                keys.append(where[id(tensor)])
            params = []
            for name, key in keys:
                p = nn.Parameter(self.params[name][key])
                self.params[name][key] = p
                params.append(p)
            self.parts[part] = params
            self._part_keys[part] = keys
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        for part, params in self.parts.items():
            group = algo0.optimizers[part].param_groups[0]
            self.optimizers[part] = stacked_adam(
                params,
                lr=group["lr"],
                betas=group["betas"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                amsgrad=group["amsgrad"],
            )
        self._load_optimizer_states()
        updater = algo0.target_updater
        self._target_pairs: list[tuple[Tensor, Tensor]] = []
        for key in updater._sources.keys(True, True):
            source_set, rest = key[0], tuple(key[1:])
            target_set = "target_" + source_set
            if target_set not in self.params:
                raise ValueError(f"{owner}: the target {target_set} is not stacked.")
            self._target_pairs.append(
                (self.params[target_set][rest], self.params[source_set][rest])
            )
        self.tau = 1.0 - float(updater.eps)

    # ------------------------------------------------------------------------------------ optimisers
    def _agent_tensor(self, algo: Algorithm, name: str, key: Key) -> Tensor:
        if name == "loss":
            return getattr(algo.loss, key[0])
        return getattr(algo.loss, name).get(key)

    def _load_optimizer_states(self) -> None:
        """Stacks the learners' Adam moments into the batched optimisers (their step counts must agree)."""
        for part, opt in self.optimizers.items():
            for j, p in enumerate(self.parts[part]):
                name, key = self._part_keys[part][j]
                states = [
                    a.optimizers[part].state.get(self._agent_tensor(a, name, key), {})
                    for a in self.algorithms
                ]
                if not any(states):
                    continue
                steps = [float(s["step"]) if s else 0.0 for s in states]
                if len(set(steps)) != 1:
                    raise ValueError(
                        f"{type(self).__name__} needs learners whose optimisers took the same number of steps; "
                        f"part {part!r} has {steps}."
                    )
                opt.state[p] = {
                    "step": states[0]["step"].clone(),
                    "exp_avg": torch.stack([s["exp_avg"] for s in states]).clone(),
                    "exp_avg_sq": torch.stack([s["exp_avg_sq"] for s in states]).clone(),
                }
                if "max_exp_avg_sq" in states[0]:
                    opt.state[p]["max_exp_avg_sq"] = torch.stack(
                        [s["max_exp_avg_sq"] for s in states]
                    ).clone()

    def _clip_and_step(self, part: str) -> None:
        clip_per_learner(self.parts[part], self.config.max_grad_norm)
        self.optimizers[part].step()

    def _step(self, part: str, loss: Tensor) -> None:
        """Backward of the learners' summed ``loss`` ``[N]`` into ``part``, clipped per learner, then Adam."""
        opt = self.optimizers[part]
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        self._clip_and_step(part)

    @torch.no_grad()
    def _update_targets(self) -> None:
        if self._target_pairs:
            targets, sources = zip(*self._target_pairs)
            torch._foreach_lerp_(list(targets), [s.detach() for s in sources], self.tau)

    # ------------------------------------------------------------------------------------------ helpers
    def _tensors(self, name: str, plan: StackedSequential) -> list[Tensor]:
        params = self.params[name]
        return [params[k] for k in plan.keys]

    def _stack_buffer(self, name: str, key: Key) -> Tensor:
        """A stacked buffer ``[N, d]`` as ``[N, 1, d]``, to broadcast over the batch rows."""
        return self.params[name][key].unsqueeze(1)

    def _critics(
        self,
        plan: StackedSequential,
        name: str,
        obs: Tensor,
        action: Tensor,
        index: int | None = None,
        detach: bool = False,
    ) -> Tensor:
        """Values ``[N, 2, R]`` of the stacked twin critics (``[N, R]`` of critic ``index``) at ``[N, R, *]``."""
        tensors = self._tensors(name, plan)
        if detach:
            tensors = [t.detach() for t in tensors]
        x = torch.cat([obs, action], -1)
        if index is not None:
            return plan([t[:, index] for t in tensors], x).squeeze(-1)
        n, r, num_q = x.shape[0], x.shape[1], tensors[0].shape[1]
        flat = [t.reshape(n * num_q, *t.shape[2:]) for t in tensors]
        x = x.unsqueeze(1).expand(n, num_q, r, x.shape[-1]).reshape(n * num_q, r, x.shape[-1])
        return plan(flat, x).reshape(n, num_q, r)

    # ------------------------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def draw_noise(self, batch: TensorDictBase) -> dict[str, Tensor]:
        """One learner's random tensors for one update on ``batch``, in the order and shapes of its separate update.

        Call it inside the learner's random stream (:meth:`AgentLearner.random_stream
        <torchrl_otc.trainers.AgentLearner.random_stream>`) right after sampling the batch to reproduce the separate
        update's numbers.
        """

    @abc.abstractmethod
    def _update(self, batches: TensorDictBase, noise: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The batched step on ``[N, B]`` batches with stacked noise ``[N, ...]``; per-learner values ``[N]``."""

    def update(
        self, batches: TensorDictBase, noise: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """One step of every learner on its own batch.

        Args:
            batches: ``[N, B]`` transitions, row ``i`` learner ``i``'s batch (flat keys ``"observation"``,
                ``"action"``, ``("next", ...)``).
            noise: each learner's :meth:`draw_noise`, stacked (``[N, ...]`` per name); ``None`` draws them here,
                learner after learner, from the current random stream.

        Returns:
            per-learner losses and diagnostics, ``[N]`` each.
        """
        if batches.batch_size[:1] != torch.Size([self.num_agents]) or batches.ndim != 2:
            raise ValueError(
                f"{type(self).__name__}.update takes [N={self.num_agents}, B] batches; got batch size "
                f"{tuple(batches.batch_size)}."
            )
        if noise is None:
            draws = [self.draw_noise(batches[i]) for i in range(self.num_agents)]
            noise = {k: torch.stack([d[k] for d in draws]) for k in draws[0]}
        out = self._update(batches, noise)
        self.num_updates += 1
        return out

    # ------------------------------------------------------------------------------------------- state
    @torch.no_grad()
    def write_back(self) -> None:
        """Copies the stacked parameters, targets, Adam states and update count into the learners' algorithms."""
        for i, algo in enumerate(self.algorithms):
            for name, stacked in self.params.items():
                for key, t in stacked.items():
                    self._agent_tensor(algo, name, key).data.copy_(t[i])
            for part, opt in self.optimizers.items():
                agent_opt = algo.optimizers[part]
                for p, (name, key) in zip(self.parts[part], self._part_keys[part]):
                    state = opt.state.get(p)
                    if state:
                        agent_opt.state[self._agent_tensor(algo, name, key)] = {
                            k: (v.clone() if k == "step" else v[i].clone())
                            for k, v in state.items()
                        }
            algo.num_updates = self.num_updates
