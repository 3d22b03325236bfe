r"""BREMEN's dynamics-model ensemble, decentralised: one agent's models of ``(s' - s, r)`` given ``(s, a_i)``.

BREMEN (Matsushima, Furuta, Matsuo, Nachum and Gu, "Deployment-Efficient Reinforcement Learning via Model-Based
Offline Optimization", ICLR 2021, Algorithm 1) fits an ensemble of ``K`` deterministic feed-forward dynamics
models :math:`\hat f_{\phi_k}` by mean squared error on standardised targets (as ME-TRPO, Kurutach et al. 2018,
on which it builds), and improves its policy on imagined rollouts that draw one model of the ensemble per
rollout. The OTC paper (Jiang & Lu, AAAI 2023, section 4.4, Figures 6a-b) adapts it to decentralised
offline-to-online tuning: agent ``i`` models

.. math::
    \big(s' - s,\ r\big) \approx \hat f_{\phi_k}(s, a_i), \qquad k = 1..K,

from the global state and its *own* action only, so the other agents' behaviour is part of the dynamics the
models learn (the mismatch OTC corrects by choosing the rows the models are fitted on).

Defaults. ``K = 5`` (BREMEN's ensemble size); hidden sizes ``(256, 256)`` with ReLU (OTC Table 3, whose BREMEN
column gives these sizes; BREMEN's own configurations use two hidden layers of 1024 ReLU units). Learning rates
belong to the trainer that owns the optimiser: OTC Table 3 lists ``1e-4`` (actor) and ``5e-4`` (critic) for
BREMEN, BREMEN's configurations fit the models with Adam at ``1e-3``, minibatches of 1000, 200 epochs.

Why not :class:`~torchrl_otc.modules.likelihood.GaussianEnsemble`: its members are Gaussian (mean and bounded
log-variance heads, SiLU), fitted by likelihood for ranking; BREMEN's are deterministic ReLU networks fitted by
MSE. What is shared is reused: the standardisation statistics
(:func:`~torchrl_otc.modules.distances.feature_statistics`) and the flattening of transitions
(:func:`~torchrl_otc.modules.trainable.flat_transitions`).

The pieces: :class:`EnsembleMLP` (``K`` stacked MLPs evaluated as batched matrix products),
:class:`DynamicsEnsemble` (standardisation, :meth:`~DynamicsEnsemble.predict`,
:meth:`~DynamicsEnsemble.sample_member`), :class:`DynamicsEnsembleLoss` (a TorchRL
:class:`~torchrl.objectives.LossModule`: MSE on standardised targets), and :func:`bootstrap_indices` /
:func:`member_minibatches` (each member's own bootstrap resample and its own random minibatch order).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor, nn
from torchrl.objectives import LossModule

from torchrl_otc.modules.distances import feature_statistics
from torchrl_otc.modules.trainable import flat_transitions
from torchrl_otc.modules.transition_distance import check_positive_int, flat_features

__all__ = [
    "EnsembleMLP",
    "DynamicsEnsemble",
    "DynamicsEnsembleLoss",
    "bootstrap_indices",
    "member_minibatches",
]


class EnsembleMLP(nn.Module):
    """``K`` independent deterministic MLPs ``x -> y``, evaluated together as batched matrix products.

    Parameters are stacked per layer (weights ``[K, in, out]``, biases ``[K, 1, out]``), so a forward pass is one
    :func:`torch.matmul` per layer for all members; each member's gradient depends only on its own outputs.

    Args:
        in_dim: input width.
        out_dim: output width.
        ensemble_size: ``K``.
        hidden_sizes: hidden widths.

    Keyword Args:
        activation: hidden activation class. Defaults to :class:`torch.nn.ReLU` (OTC Table 3).
        generator: draws the initial parameters (``nn.Linear``'s default, uniform in ``+-1/sqrt(fan_in)``);
            the global random state is used when ``None``.

    Examples:
        >>> net = EnsembleMLP(3, 2, 5, (16,), generator=torch.Generator().manual_seed(0))
        >>> net(torch.zeros(7, 3)).shape, net(torch.zeros(5, 7, 3)).shape
        (torch.Size([5, 7, 2]), torch.Size([5, 7, 2]))
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        ensemble_size: int,
        hidden_sizes: Sequence[int],
        *,
        activation: type[nn.Module] = nn.ReLU,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        sizes = [in_dim, *hidden_sizes, out_dim]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(ensemble_size, a, b)) for a, b in zip(sizes, sizes[1:])
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.empty(ensemble_size, 1, b)) for b in sizes[1:]
        )
        self.activation = activation()
        self.ensemble_size = ensemble_size
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """``nn.Linear``'s default initialisation (uniform in ``+-1/sqrt(fan_in)``), drawn from ``generator``."""
        for w, b in zip(self.weights, self.biases):
            bound = 1.0 / math.sqrt(w.shape[1])
            for p in (w, b):
                noise = torch.rand(p.shape, generator=generator, device=p.device)
                p.copy_((noise * 2 - 1).mul_(bound))

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[N, in]`` (shared by the members) or ``[K, N, in]`` (one batch per member) -> ``[K, N, out]``."""
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w) if h.ndim == 3 else torch.matmul(h, w) + b
            if i < last:
                h = self.activation(h)
        return h

    def forward_member(self, x: Tensor, member: int) -> Tensor:
        """Member ``member``'s output for ``x`` ``[N, in]`` -> ``[N, out]`` (only that member is evaluated)."""
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.addmm(b[member], h, w[member])
            if i < last:
                h = self.activation(h)
        return h


def bootstrap_indices(
    num_rows: int,
    ensemble_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Each member's bootstrap resample of ``num_rows`` rows: ``[K, num_rows]`` indices drawn with replacement.

    Bootstrapping (Efron) gives each member a different view of the data, so that the members disagree where
    data is scarce; BREMEN and ME-TRPO train their members on different data orders, PETS on bootstrap
    resamples. Pass ``torch.arange(num_rows).expand(K, -1)`` to :func:`member_minibatches` instead for
    random-order minibatches without resampling.

    Args:
        num_rows: rows in the data set.
        ensemble_size: ``K``.

    Keyword Args:
        generator: the random stream. Defaults to the global one.
        device: where the indices live. Defaults to the generator's device (CPU without a generator).

    Examples:
        >>> idx = bootstrap_indices(100, 5, generator=torch.Generator().manual_seed(0))
        >>> idx.shape, bool((idx[0] != idx[1]).any()), 0 <= int(idx.min()) and int(idx.max()) < 100
        (torch.Size([5, 100]), True, True)
    """
    check_positive_int("num_rows", num_rows)
    check_positive_int("ensemble_size", ensemble_size)
    if device is None and generator is not None:
        device = generator.device
    return torch.randint(num_rows, (ensemble_size, num_rows), generator=generator, device=device)


def member_minibatches(
    rows: Tensor,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[Tensor]:
    """One epoch of minibatches, each member walking its own rows in its own random order.

    Args:
        rows: ``[K, M]`` row indices of each member's data set (:func:`bootstrap_indices`, or the same
            ``arange`` for every member).
        batch_size: rows per member and minibatch.

    Keyword Args:
        generator: the random stream of the orders. Defaults to the global one.
        drop_last: skip a last, smaller minibatch. Defaults to ``False``.

    Yields:
        ``[K, b]`` index tensors (``b = batch_size`` except perhaps the last): row ``k`` for member ``k``.
        Index a flat data set with them (``data[idx]`` has batch shape ``[K, b]``) and pass the result to
        :class:`DynamicsEnsembleLoss`.

    Examples:
        >>> rows = torch.arange(10).expand(3, -1)
        >>> batches = list(member_minibatches(rows, 4, generator=torch.Generator().manual_seed(0)))
        >>> [tuple(b.shape) for b in batches]
        [(3, 4), (3, 4), (3, 2)]
        >>> torch.cat(batches, 1).sort(1).values.equal(rows)  # every member sees every row once per epoch
        True
    """
    check_positive_int("batch_size", batch_size)
    if rows.ndim != 2:
        raise ValueError(f"rows must be [ensemble_size, num_rows]; got shape {tuple(rows.shape)}.")
    k, m = rows.shape
    keys = torch.rand(
        k, m, generator=generator, device=rows.device if generator is None else generator.device
    )
    order = rows.gather(1, keys.argsort(1).to(rows.device))
    stop = m - m % batch_size if drop_last else m
    for start in range(0, stop, batch_size):
        yield order[:, start : start + batch_size]


class DynamicsEnsemble(nn.Module):
    r"""One agent's ensemble of ``K`` deterministic dynamics models of ``(s' - s, r)`` given ``(s, a_i)``.

    BREMEN, Algorithm 1 ("train K dynamics models on the data", ensemble-based imagined rollouts); OTC section 4.4
    (decentralised: the input is the global state and the agent's *own* action, never another agent's).
    Inputs ``x = [s, a_i]`` and targets ``y = [s' - s, r]`` are standardised with statistics :meth:`fit` on data
    (per column; a constant column keeps scale 1), each member predicts the standardised target, and
    :meth:`predict` maps back:

    .. math::
        \hat s' = s + \sigma_\Delta \odot \hat y^{(k)}_{\Delta} + \mu_\Delta, \qquad
        \hat r = \sigma_r \hat y^{(k)}_r + \mu_r, \qquad
        \hat y^{(k)} = f_{\phi_k}\big((x - \mu_x) / \sigma_x\big).

    Before :meth:`fit` the statistics are the identity (mean 0, scale 1).

    Args:
        state_dim: width of ``s`` (and ``s'``).
        action_dim: width of the agent's own action ``a_i``.

    Keyword Args:
        ensemble_size: ``K``. Defaults to ``5`` (BREMEN's).
        hidden_sizes: hidden widths of each member. Defaults to ``(256, 256)`` (OTC Table 3, BREMEN column).
        activation: hidden activation class. Defaults to ReLU (OTC Table 3).
        seed: seeds the initial parameters (the global random state is left untouched); ``None`` draws them
            from the global stream. Defaults to ``0``.
        device: where the ensemble lives. Defaults to the CPU.

    Examples:
        >>> from tensordict import TensorDict
        >>> data = TensorDict({"observation": torch.randn(64, 3), "action": torch.rand(64, 1),
        ...                    ("next", "observation"): torch.randn(64, 3),
        ...                    ("next", "reward"): torch.randn(64, 1)}, [64])
        >>> model = DynamicsEnsemble(3, 1, hidden_sizes=(32,)).fit(data)
        >>> next_obs, reward = model.predict(data["observation"], data["action"])  # every member
        >>> next_obs.shape, reward.shape
        (torch.Size([5, 64, 3]), torch.Size([5, 64, 1]))
        >>> k = model.sample_member(torch.Generator().manual_seed(0))
        >>> model.predict(data["observation"], data["action"], member=k)[0].shape
        torch.Size([64, 3])
        >>> members = torch.randint(5, (64,), generator=torch.Generator().manual_seed(1))  # one per row
        >>> torch.allclose(model.predict(data["observation"][:1], data["action"][:1], member=int(members[0]))[0],
        ...                model.predict(data["observation"], data["action"], member=members)[0][:1])
        True
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        *,
        ensemble_size: int = 5,
        hidden_sizes: Sequence[int] = (256, 256),
        activation: type[nn.Module] = nn.ReLU,
        seed: int | None = 0,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.state_dim = check_positive_int("state_dim", state_dim)
        self.action_dim = check_positive_int("action_dim", action_dim)
        self.ensemble_size = check_positive_int("ensemble_size", ensemble_size)
        self.hidden_sizes = tuple(check_positive_int("hidden_sizes", h) for h in hidden_sizes)
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        self.members = EnsembleMLP(
            state_dim + action_dim,
            state_dim + 1,
            self.ensemble_size,
            self.hidden_sizes,
            activation=activation,
            generator=generator,
        )
        self.register_buffer("input_mean", torch.zeros(state_dim + action_dim))
        self.register_buffer("input_std", torch.ones(state_dim + action_dim))
        self.register_buffer("target_mean", torch.zeros(state_dim + 1))
        self.register_buffer("target_std", torch.ones(state_dim + 1))
        if device is not None:
            self.to(device)

    @property
    def device(self) -> torch.device:
        """Where the ensemble lives (follows ``.to(...)``)."""
        return self.input_mean.device

    # ------------------------------------------------------------------------------------- standardisation
    @torch.no_grad()
    def fit(
        self,
        data: TensorDictBase,
        *,
        state_key: NestedKey = "observation",
        action_key: NestedKey = "action",
        next_state_key: NestedKey = ("next", "observation"),
        reward_key: NestedKey = ("next", "reward"),
    ) -> DynamicsEnsemble:
        """Fits the input and target standardisation to transitions (any batch shape); returns ``self``.

        Args:
            data: the agent's transitions (its own action under ``action_key``).

        Keyword Args:
            state_key: key of ``s``. Defaults to ``"observation"``.
            action_key: key of ``a_i``. Defaults to ``"action"``.
            next_state_key: key of ``s'``. Defaults to ``("next", "observation")``.
            reward_key: key of ``r``. Defaults to ``("next", "reward")``.
        """
        keys = [state_key, action_key, next_state_key, reward_key]
        flat = flat_transitions(data, keys, "DynamicsEnsemble.fit")
        state, action, nxt, reward = (flat_features(flat, k).to(self.device) for k in keys)
        self._check_widths(state, action)
        x = torch.cat([state, action], -1)
        y = torch.cat([nxt - state, reward], -1)
        for name, value in (("input", x), ("target", y)):
            mean, std = feature_statistics(value, what=f"DynamicsEnsemble.fit ({name})")
            getattr(self, f"{name}_mean").copy_(mean)
            getattr(self, f"{name}_std").copy_(std)
        return self

    def _check_widths(self, state: Tensor, action: Tensor) -> None:
        if state.shape[-1] != self.state_dim or action.shape[-1] != self.action_dim:
            raise ValueError(
                f"DynamicsEnsemble expects states of width {self.state_dim} and actions of width "
                f"{self.action_dim} (the agent's own action); got {state.shape[-1]} and {action.shape[-1]}."
            )

    def normalized_inputs(self, state: Tensor, action: Tensor) -> Tensor:
        """The standardised model input ``([s, a_i] - mu_x) / sigma_x``, ``[*B, ds + da]``."""
        self._check_widths(state, action)
        return (torch.cat([state, action], -1) - self.input_mean) / self.input_std

    def normalized_targets(self, state: Tensor, next_state: Tensor, reward: Tensor) -> Tensor:
        """The standardised target ``([s' - s, r] - mu_y) / sigma_y``, ``[*B, ds + 1]``."""
        if reward.ndim == state.ndim - 1:
            reward = reward.unsqueeze(-1)
        return (torch.cat([next_state - state, reward], -1) - self.target_mean) / self.target_std

    def forward(self, state: Tensor, action: Tensor, *, per_member: bool = False) -> Tensor:
        """Every member's standardised prediction of ``[s' - s, r]``.

        Args:
            state: ``[*B, ds]`` (shared by the members), or ``[K, *B, ds]`` with ``per_member=True``.
            action: ``[*B, da]`` or ``[K, *B, da]`` likewise.

        Keyword Args:
            per_member: the leading dimension of the inputs indexes the members (member ``k`` sees
                ``state[k]`` only). Defaults to ``False``.

        Returns:
            ``[K, *B, ds + 1]``.
        """
        x = self.normalized_inputs(state, action)
        if per_member:
            if x.ndim < 2 or x.shape[0] != self.ensemble_size:
                raise ValueError(
                    f"per_member inputs need a leading dimension of {self.ensemble_size}; "
                    f"got shape {tuple(x.shape)}."
                )
            batch = x.shape[1:-1]
            out = self.members(x.reshape(self.ensemble_size, -1, x.shape[-1]))
        else:
            batch = x.shape[:-1]
            out = self.members(x.reshape(-1, x.shape[-1]))
        return out.reshape(self.ensemble_size, *batch, -1)

    def _denormalize(self, state: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        y = y * self.target_std + self.target_mean
        return state + y[..., : self.state_dim], y[..., self.state_dim :]

    # ------------------------------------------------------------------------------------------ rollouts
    def predict(
        self, state: Tensor, action: Tensor, member: int | Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Predicted next state and reward, in raw units.

        Args:
            state: ``[*B, ds]``.
            action: ``[*B, da]``, the agent's own action.
            member: ``None`` for every member (outputs ``[K, *B, ...]``), an ``int`` for one member (outputs
                ``[*B, ...]``, only that member is evaluated), or a long tensor ``[*B]`` giving each row's member
                (outputs ``[*B, ...]``; each member is evaluated on its rows only, so the cost is one member's).

        Returns:
            ``(next_state, reward)``: ``[..., ds]`` and ``[..., 1]``.
        """
        if member is None:
            return self._denormalize(state, self(state, action))
        x = self.normalized_inputs(state, action)
        batch = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        if isinstance(member, Tensor) and member.ndim > 0:
            if member.shape != batch:
                raise ValueError(
                    f"member must have the batch shape {tuple(batch)} of the states; got {tuple(member.shape)}."
                )
            member = member.reshape(-1).to(flat.device)
            if bool(((member < 0) | (member >= self.ensemble_size)).any()):
                raise IndexError(f"member indices must lie in [0, {self.ensemble_size}).")
            y = flat.new_empty(flat.shape[0], self.state_dim + 1)
            for k in range(self.ensemble_size):
                rows = (member == k).nonzero().squeeze(-1)
                if rows.numel():
                    y[rows] = self.members.forward_member(flat[rows], k)
        else:
            k = int(member)
            if not 0 <= k < self.ensemble_size:
                raise IndexError(f"member must lie in [0, {self.ensemble_size}); got {k}.")
            y = self.members.forward_member(flat, k)
        return self._denormalize(state, y.reshape(*batch, -1))

    def sample_member(self, generator: torch.Generator | None = None) -> int:
        """A member drawn uniformly (BREMEN draws one model per imagined rollout), from ``generator``."""
        return int(torch.randint(self.ensemble_size, (), generator=generator))

    def extra_repr(self) -> str:
        return f"ensemble_size={self.ensemble_size}, hidden_sizes={self.hidden_sizes}"


class DynamicsEnsembleLoss(LossModule):
    r"""MSE of a :class:`DynamicsEnsemble` on standardised targets (BREMEN, Algorithm 1, model fitting).

    .. math::
        \mathcal{L}(\phi) = \sum_{k=1}^{K} \frac{1}{|\mathcal{B}_k|} \sum_{(s, a_i, r, s') \in \mathcal{B}_k}
            \frac{1}{d_s + 1} \big\lVert f_{\phi_k}(\bar x) - \bar y \big\rVert^2,

    with :math:`\bar x, \bar y` the standardised input and target. Members are *summed*, so each member's gradient
    is what it would be alone (a mean would shrink it by ``K``). ``reduction="none"`` returns the ``[K, *B]``
    per-member, per-row errors.

    The batch is either shared by the members (batch shape ``[*B]``) or holds one batch per member (batch shape
    ``[K, b]``, e.g. ``data[idx]`` for ``idx`` from :func:`member_minibatches`): members see different rows, as
    BREMEN's bootstrap/random-order training wants. A batch with two batch dimensions whose first is ``K`` is
    read as per-member: flatten a shared batch of that shape first (``data.reshape(-1)``). The loss reads only the agent's own action
    (``tensor_keys.action``): in a multi-agent batch, point it at agent ``i``'s slice with
    ``set_keys(action=("agents", "action"))`` on a per-agent view.

    Why MSE and not a Gaussian likelihood: BREMEN's models are deterministic and fitted by MSE on standardised
    targets; :class:`~torchrl_otc.modules.likelihood.LikelihoodDistance` is the package's Gaussian (NLL) ensemble.

    Args:
        dynamics: the ensemble.

    Keyword Args:
        reduction: ``"mean"`` (over rows, members summed), ``"sum"`` or ``"none"``. Defaults to ``"mean"``.

    Examples:
        >>> from tensordict import TensorDict
        >>> data = TensorDict({"observation": torch.randn(32, 3), "action": torch.rand(32, 1),
        ...                    ("next", "observation"): torch.randn(32, 3),
        ...                    ("next", "reward"): torch.randn(32, 1)}, [32])
        >>> model = DynamicsEnsemble(3, 1, ensemble_size=2, hidden_sizes=(16,)).fit(data)
        >>> loss = DynamicsEnsembleLoss(model)
        >>> idx = next(member_minibatches(bootstrap_indices(32, 2), 8))
        >>> out = loss(data[idx])  # batch [K, 8]: one minibatch per member
        >>> out["loss_dynamics"].backward()
        >>> sorted(out.keys())
        ['loss_dynamics', 'mse_reward', 'mse_state']
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys (``set_keys(name=key)``).

        Attributes:
            observation (NestedKey): the state ``s``; ``s'`` is read under ``"next"``.
                Defaults to ``"observation"``.
            action (NestedKey): the agent's own action ``a_i``. Defaults to ``"action"``.
            reward (NestedKey): the reward, read under ``"next"``. Defaults to ``"reward"``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        reward: NestedKey = "reward"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = None
    out_keys = ["loss_dynamics", "mse_state", "mse_reward"]

    def __init__(self, dynamics: DynamicsEnsemble, *, reduction: str | None = None) -> None:
        super().__init__()
        if not isinstance(dynamics, DynamicsEnsemble):
            raise TypeError(
                f"DynamicsEnsembleLoss needs a DynamicsEnsemble; got {type(dynamics).__name__}."
            )
        if reduction is None:
            reduction = "mean"
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}.")
        self.dynamics = dynamics
        self.reduction = reduction

    @property
    def in_keys(self) -> list[NestedKey]:
        """The keys :meth:`forward` reads."""
        keys = self.tensor_keys
        return [
            keys.observation,
            keys.action,
            unravel_key(("next", keys.observation)),
            unravel_key(("next", keys.reward)),
        ]

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def errors(self, tensordict: TensorDictBase) -> tuple[Tensor, Tensor]:
        """Per-member, per-row squared errors (standardised units) of the state change and of the reward.

        Returns:
            ``([K, *B], [K, *B])``: the mean over the state-change columns, and the reward's error. With a
            ``[K, b]`` batch (one per member) the output is ``[K, b]``: member ``k`` on row ``k`` only.
        """
        keys = self.in_keys
        state, action, nxt, reward = (tensordict.get(k) for k in keys)
        model = self.dynamics
        per_member = tensordict.batch_dims >= 2 and tensordict.batch_size[0] == model.ensemble_size
        target = model.normalized_targets(state, nxt, reward.to(state.dtype))
        # [K, b, ds + 1] with row k from member k, or [K, *B, ds + 1] with every member on every row
        pred = model(state, action, per_member=per_member)
        if not per_member:
            target = target.expand(model.ensemble_size, *target.shape)
        err = (pred - target).pow(2)
        return err[..., : model.state_dim].mean(-1), err[..., model.state_dim]

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """``loss_dynamics`` (reduced as above) and the detached means ``mse_state``, ``mse_reward``."""
        err_state, err_reward = self.errors(tensordict)
        d = self.dynamics.state_dim
        per_row = (d * err_state + err_reward) / (d + 1)  # [K, *B]
        if self.reduction == "none":
            loss = per_row
        else:
            loss = (
                per_row.flatten(1).mean(1)
                if self.reduction == "mean"
                else per_row.flatten(1).sum(1)
            )
            loss = loss.sum()
        return TensorDict(
            {
                "loss_dynamics": loss,
                "mse_state": err_state.detach().mean(),
                "mse_reward": err_reward.detach().mean(),
            }
        )
