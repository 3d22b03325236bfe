r"""Trust Region Policy Optimization (TRPO) steps with a KL bound to the previous policy, as BREMEN uses them.

Schulman, Levine, Moritz, Jordan and Abbeel (2015), "Trust Region Policy Optimization" (ICML), section 6 and
appendix C: maximise the importance-weighted surrogate

.. math::
    L(\theta) = \mathbb{E}_{s, a \sim \pi_{\theta_{old}}}\Big[\frac{\pi_\theta(a \mid s)}
        {\pi_{\theta_{old}}(a \mid s)} A(s, a)\Big]
    \quad \text{s.t.} \quad
    \bar D_{KL}(\theta) = \mathbb{E}_s\big[D_{KL}(\pi_{\theta_{old}}(\cdot \mid s) \,\Vert\, \pi_\theta(\cdot \mid s))\big]
        \le \delta,

by one natural-gradient step: solve :math:`F x = g` (``g = \nabla L``, ``F`` the Hessian of
:math:`\bar D_{KL}` at :math:`\theta_{old}`, i.e. the Fisher matrix) by conjugate gradients with Fisher-vector
products from double back-propagation, scale the step to the boundary of the quadratic model of the KL,
:math:`\beta = \sqrt{2\delta / x^\top F x}`, and backtrack until the measured KL is within :math:`\delta` and the
surrogate improves.

BREMEN (Matsushima et al., ICLR 2021, Algorithm 1) runs such steps on imagined rollouts of its dynamics ensemble
(:class:`~torchrl_otc.modules.models.dynamics_ensemble.DynamicsEnsemble`), from a policy re-initialised by
behaviour cloning (:func:`~torchrl_otc.objectives.bc.bc_init`); the KL bound to the previous policy is its
implicit behaviour regularisation. OTC section 4.4 adapts it per agent.

Pieces: :func:`conjugate_gradient`, :func:`trust_region_step` (generic: any parameters, any surrogate and KL
closures), :class:`TRPOLoss` (a TorchRL :class:`~torchrl.objectives.PPOLoss` whose :meth:`~TRPOLoss.step` performs
the update; advantages from TorchRL's GAE), and :class:`StateIndependentGaussian` with :func:`gaussian_policy`
(BREMEN's policy: a Gaussian whose log standard deviation is a free parameter, not a function of the state).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import InteractionType, TensorDictModule
from torch import Tensor, nn
from torch.distributions import kl_divergence
from torch.nn.utils import parameters_to_vector
from torchrl.modules import IndependentNormal, ProbabilisticActor
from torchrl.objectives import PPOLoss

from torchrl_otc.modules.models.vae import mlp

__all__ = [
    "TRPOLoss",
    "StateIndependentGaussian",
    "conjugate_gradient",
    "gaussian_policy",
    "trust_region_step",
]


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    iters: int = 10,
    residual_tol: float = 1e-10,
) -> Tensor:
    r"""Solves :math:`A x = b` for a symmetric positive-definite :math:`A` given only ``matvec(v) = A v``.

    Hestenes-Stiefel conjugate gradients (Nocedal & Wright, Algorithm 5.2), started from ``x = 0``; exact in ``n``
    iterations for an ``n``-dimensional system (up to rounding), stops early when :math:`\lVert r\rVert^2` falls to
    ``residual_tol``. TRPO (appendix C) uses 10 iterations with Fisher-vector products.

    Args:
        matvec: ``v -> A v``.
        b: the right-hand side, a vector.
        iters: the most iterations. Defaults to ``10``.
        residual_tol: stop when the squared residual norm is at most this. Defaults to ``1e-10``.

    Examples:
        >>> a = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
        >>> x = conjugate_gradient(lambda v: a @ v, torch.tensor([1.0, 2.0]))
        >>> torch.allclose(a @ x, torch.tensor([1.0, 2.0]))
        True
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if float(rr) <= residual_tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def _flat_grad(
    output: Tensor,
    params: Sequence[Tensor],
    *,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> Tensor:
    """The gradient of ``output`` as one flat vector (zeros for unused parameters; ``retain_graph`` as torch's:
    ``None`` follows ``create_graph``, which the second-order graph of the Fisher-vector products needs)."""
    grads = torch.autograd.grad(
        output, params, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True
    )
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]
    )


@torch.no_grad()
def _assign(params: Sequence[Tensor], flat: Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def trust_region_step(
    params: Iterable[Tensor],
    surrogate: Callable[[], Tensor],
    kl: Callable[[], Tensor],
    max_kl: float,
    *,
    cg_iters: int = 10,
    cg_damping: float = 0.1,
    backtrack_coeff: float = 0.8,
    max_backtracks: int = 15,
    accept_ratio: float = 0.0,
    kl_tolerance: float = 1e-5,
) -> TensorDict:
    r"""One TRPO update of ``params`` in place: natural gradient, quadratic step size, backtracking line search.

    TRPO (Schulman et al. 2015) section 6 and appendix C:

    1. :math:`g = \nabla_\theta L` at the current parameters :math:`\theta_{old}` (``surrogate()``, to maximise).
    2. :math:`x \approx (F + \lambda I)^{-1} g` by :func:`conjugate_gradient` (``cg_iters``), with Fisher-vector
       products :math:`F v = \nabla_\theta\big((\nabla_\theta \bar D_{KL})^\top v\big)` by double back-propagation
       of ``kl()`` and damping :math:`\lambda` = ``cg_damping``.
    3. Full step :math:`\Delta = \beta x`, :math:`\beta = \sqrt{2\delta / x^\top (F + \lambda I) x}`: the step at
       which the quadratic model of the KL reaches :math:`\delta` = ``max_kl``.
    4. Line search: try :math:`\theta_{old} + c^j \Delta` for :math:`j = 0, 1, \dots,` ``max_backtracks``
       (:math:`c` = ``backtrack_coeff``) and accept the first with a finite measured
       ``kl() <= max_kl * (1 + kl_tolerance)`` and a
       surrogate improvement :math:`L(\theta) - L(\theta_{old}) > 0` that is also at least ``accept_ratio`` times
       the improvement the linear model predicts (:math:`c^j g^\top \Delta`). If none passes, the parameters
       are restored exactly and ``accepted`` is false.

    ``surrogate`` and ``kl`` are closures evaluated at the current values of ``params`` (which this function
    overwrites in place); ``kl`` must be the divergence from the *fixed* pre-step policy (zero with zero
    gradient at :math:`\theta_{old}`), e.g. computed against a distribution evaluated without gradient before
    the step.

    Args:
        params: the parameters to update (leaf tensors that require gradients).
        surrogate: ``() -> L(theta)``, a scalar to maximise.
        kl: ``() -> mean KL(pi_old || pi_theta)``, a scalar.
        max_kl: :math:`\delta > 0`.

    Keyword Args:
        cg_iters: conjugate-gradient iterations. Defaults to ``10`` (TRPO, rllab, Spinning Up).
        cg_damping: :math:`\lambda`. Defaults to ``0.1`` (OpenAI Baselines, Spinning Up).
        backtrack_coeff: :math:`c \in (0, 1)`. Defaults to ``0.8`` (rllab, Spinning Up).
        max_backtracks: the most shrinkings after the full step. Defaults to ``15`` (rllab).
        accept_ratio: the least ratio of actual to predicted improvement. Defaults to ``0`` (improvement only).
        kl_tolerance: relative slack on the bound for rounding: the full step aims exactly at the boundary of the
            quadratic model, where an exactly quadratic KL measures ``max_kl`` up to float rounding. Defaults to
            ``1e-5``.

    Returns:
        a :class:`~tensordict.TensorDict` of detached scalars: ``accepted`` (bool), ``step_fraction``
        (:math:`c^j`, 0 when rejected), ``backtracks`` (:math:`j`), ``kl`` (measured at the accepted step, 0 when
        rejected), ``surrogate_before``, ``surrogate_after``, ``improvement``, ``expected_improvement`` (of the
        full step), ``grad_norm``.

    Examples:
        A quadratic "policy": parameters ``x``, KL ``0.5 |x - x_old|^2`` (Fisher ``I``), surrogate ``g . x``:
        the step goes along ``g`` to KL ``max_kl`` (exactly, without damping).

        >>> x = nn.Parameter(torch.zeros(3))
        >>> g = torch.tensor([1.0, 2.0, 2.0])
        >>> info = trust_region_step([x], lambda: g @ x, lambda: 0.5 * x.pow(2).sum(), 0.02, cg_damping=0.0)
        >>> bool(info["accepted"]), round(float(info["kl"]), 4), torch.allclose(x, g * 0.2 / 3)
        (True, 0.02, True)
    """
    params = list(params)
    if not max_kl > 0:
        raise ValueError(f"max_kl must be positive; got {max_kl}.")
    if not 0 < backtrack_coeff < 1:
        raise ValueError(f"backtrack_coeff must lie in (0, 1); got {backtrack_coeff}.")
    if max_backtracks < 0 or cg_iters < 1 or cg_damping < 0:
        raise ValueError(
            "max_backtracks must be >= 0, cg_iters >= 1 and cg_damping >= 0; got "
            f"{max_backtracks}, {cg_iters}, {cg_damping}."
        )
    old = parameters_to_vector(params).detach().clone()
    sur_before = surrogate()
    g = _flat_grad(sur_before, params)
    sur_before = sur_before.detach()
    grad_kl = _flat_grad(kl(), params, create_graph=True)

    def fisher_vector(v: Tensor) -> Tensor:
        return _flat_grad(grad_kl @ v, params, retain_graph=True) + cg_damping * v

    zero = sur_before.new_zeros(())
    info = {
        "accepted": torch.tensor(False),
        "step_fraction": zero,
        "backtracks": torch.tensor(0),
        "kl": zero,
        "surrogate_before": sur_before,
        "surrogate_after": sur_before,
        "improvement": zero,
        "expected_improvement": zero,
        "grad_norm": g.norm(),
    }
    if not bool(torch.isfinite(g).all()) or float(g.norm()) == 0.0:
        return TensorDict(info)
    x = conjugate_gradient(fisher_vector, g, cg_iters)
    if float(x.norm()) == 0.0:
        return TensorDict(info)
    curvature = x @ fisher_vector(x)
    if not bool(torch.isfinite(curvature)) or float(curvature) <= 0.0:
        return TensorDict(info)
    full_step = torch.sqrt(2 * max_kl / curvature) * x
    expected = (g @ full_step).detach()
    info["expected_improvement"] = expected
    for j in range(max_backtracks + 1):
        fraction = backtrack_coeff**j
        _assign(params, old + fraction * full_step.detach())
        with torch.no_grad():
            sur_after = surrogate()
            kl_after = kl()
        improvement = sur_after - sur_before
        if (
            bool(torch.isfinite(kl_after) & torch.isfinite(sur_after))
            and float(kl_after) <= max_kl * (1 + kl_tolerance)
            and float(improvement) > 0.0
            and float(improvement) >= accept_ratio * fraction * float(expected)
        ):
            info.update(
                accepted=torch.tensor(True),
                step_fraction=torch.tensor(fraction),
                backtracks=torch.tensor(j),
                kl=kl_after.detach(),
                surrogate_after=sur_after.detach(),
                improvement=improvement.detach(),
            )
            return TensorDict(info)
    _assign(params, old)
    return TensorDict(info)


class StateIndependentGaussian(nn.Module):
    r"""A Gaussian policy head: the mean is an MLP of the observation, the log standard deviation a free vector.

    .. math:: \pi_\theta(a \mid s) = \mathcal{N}\big(\mu_\theta(s),\ \operatorname{diag} e^{2 \log\sigma}\big)

    As in TRPO, ME-TRPO and BREMEN (whose policies are "Gaussian MLP policies" with a learned, state-independent
    log standard deviation, initial value 0 in BREMEN's configurations). No tanh squashing, as in BREMEN: clip
    actions to the action bounds in the environment. The KL between two such policies is closed-form, which the
    Fisher-vector products of :func:`trust_region_step` need.

    Args:
        observation_dim: width of the observation.
        action_dim: width of the action.

    Keyword Args:
        hidden_sizes: hidden widths of the mean network. Defaults to ``(256, 256)`` (OTC Table 3; BREMEN:
            ``(200, 200)``).
        activation: hidden activation class. Defaults to ReLU (OTC Table 3, BREMEN).
        log_std_init: initial log standard deviation. Defaults to ``0.0`` (BREMEN's ``init_logstd``).

    Examples:
        >>> net = StateIndependentGaussian(3, 2, hidden_sizes=(8,))
        >>> loc, scale = net(torch.randn(5, 3))
        >>> loc.shape, scale.shape, bool((scale == 1).all())
        (torch.Size([5, 2]), torch.Size([5, 2]), True)
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        hidden_sizes: Sequence[int] = (256, 256),
        activation: type[nn.Module] = nn.ReLU,
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.mean = mlp(observation_dim, action_dim, hidden_sizes, activation)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))

    def forward(self, observation: Tensor) -> tuple[Tensor, Tensor]:
        """``(loc, scale)``, each ``[*B, action_dim]``."""
        loc = self.mean(observation)
        return loc, self.log_std.exp().expand_as(loc)


def gaussian_policy(
    observation_dim: int,
    action_dim: int,
    *,
    hidden_sizes: Sequence[int] = (256, 256),
    activation: type[nn.Module] = nn.ReLU,
    log_std_init: float = 0.0,
    observation_key: str = "observation",
    action_key: str = "action",
    log_prob_key: str = "action_log_prob",
) -> ProbabilisticActor:
    """BREMEN's policy as a TorchRL :class:`~torchrl.modules.ProbabilisticActor` (:class:`StateIndependentGaussian`).

    The distribution is :class:`~torchrl.modules.IndependentNormal` (a diagonal Normal; ``tanh_loc=False``, no
    squashing), so :func:`torch.distributions.kl_divergence` is closed-form. The actor *samples* by default
    (``default_interaction_type=RANDOM``: TRPO's on-policy rollouts need sampled actions; with the mean action
    the surrogate has no gradient for the mean network); inside
    ``set_exploration_type(ExplorationType.DETERMINISTIC)`` it returns the mean. Actions and their log
    probability (``log_prob_key``) are written by the actor.

    Args:
        observation_dim: width of the observation.
        action_dim: width of the action.

    Keyword Args:
        hidden_sizes, activation, log_std_init: as :class:`StateIndependentGaussian`.
        observation_key: the key read. Defaults to ``"observation"``.
        action_key: the key written. Defaults to ``"action"``.
        log_prob_key: where the sample's log probability goes. Defaults to ``"action_log_prob"``.

    Examples:
        >>> actor = gaussian_policy(3, 2, hidden_sizes=(8,))
        >>> td = actor(TensorDict({"observation": torch.randn(4, 3)}, [4]))
        >>> td["action"].shape, td["action_log_prob"].shape
        (torch.Size([4, 2]), torch.Size([4]))
    """
    net = StateIndependentGaussian(
        observation_dim,
        action_dim,
        hidden_sizes=hidden_sizes,
        activation=activation,
        log_std_init=log_std_init,
    )
    module = TensorDictModule(net, in_keys=[observation_key], out_keys=["loc", "scale"])
    return ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        out_keys=[action_key],
        distribution_class=IndependentNormal,
        distribution_kwargs={"tanh_loc": False},
        return_log_prob=True,
        log_prob_key=log_prob_key,
        default_interaction_type=InteractionType.RANDOM,
    )


class TRPOLoss(PPOLoss):
    r"""TRPO as a TorchRL loss: PPO's surrogate, critic loss and GAE, plus :meth:`step`, the trust-region update.

    BREMEN (Matsushima et al. 2021, Algorithm 1) improves its policy by TRPO steps on imagined rollouts with a KL
    bound :math:`\delta` to the previous policy (``max_kl``; BREMEN's ``target_kl``: 0.05 for Ant, Hopper and
    Walker2d, 0.1 for HalfCheetah), GAE advantages (:math:`\gamma = 0.99`, :math:`\lambda = 0.95`) and a learned
    value baseline. OTC section 4.4 uses it per agent.

    Everything but the actor update is TorchRL's :class:`~torchrl.objectives.PPOLoss`: the keys
    (``set_keys(advantage=..., value=..., action=..., sample_log_prob=...)``), the critic loss
    (``loss_critic``, trained by an ordinary optimiser), the value estimator (GAE by default:
    ``make_value_estimator(ValueEstimators.GAE, gamma=0.99, lmbda=0.95)``), advantage normalisation, and
    :meth:`forward` (the unconstrained surrogate ``loss_objective`` for logging). :meth:`step` replaces the
    optimiser for the actor: it computes advantages if the batch has none (as :meth:`forward` does), evaluates the
    pre-step policy without gradient, and calls :func:`trust_region_step` with

    .. math::
        L(\theta) = \frac{1}{N}\sum_n \exp\big(\log\pi_\theta(a_n \mid s_n) - \log\pi_{\theta_{old}}(a_n \mid s_n)\big)
            A_n, \qquad
        \bar D_{KL}(\theta) = \frac{1}{N}\sum_n D_{KL}\big(\pi_{\theta_{old}}(\cdot \mid s_n) \,\Vert\,
            \pi_\theta(\cdot \mid s_n)\big).

    The ratio's denominator is the pre-step policy evaluated by :meth:`step` (not the batch's stored log
    probability): on-policy imagined rollouts, as BREMEN's, make the two equal, and the KL bound is always to the
    policy that the step starts from. The KL must be closed-form (:func:`torch.distributions.kl_divergence`):
    Normal and :class:`~torchrl.modules.IndependentNormal` policies (:func:`gaussian_policy`) have it; so does a
    :class:`~torchrl.modules.TanhNormal` (torch computes the KL of two equally squashed distributions as that of
    the underlying Normals, which is exact because tanh is a bijection). Others (e.g.
    TorchRL's ``TruncatedNormal``) are refused.

    Why not :class:`~torchrl.objectives.KLPENPPOLoss`: its KL enters as a penalty with an adapted coefficient
    and first-order optimiser steps; the bound is then kept on average, not per update. TRPO's hard bound needs
    the second-order step here.

    Args:
        actor_network: the policy, a probabilistic actor (e.g. :func:`gaussian_policy`).
        critic_network: the value network writing ``state_value``; optional (then pass advantages in the batch).

    Keyword Args:
        max_kl: :math:`\delta`. Defaults to ``0.05`` (BREMEN's ``target_kl`` for most tasks).
        cg_iters, cg_damping, backtrack_coeff, max_backtracks, accept_ratio, kl_tolerance: as
            :func:`trust_region_step`.
        normalize_advantage: standardise advantages per batch (rllab's ``center_adv``, on in ME-TRPO and BREMEN).
            Defaults to ``True``.
        entropy_bonus: add PPO's entropy term to :meth:`forward`'s output. Defaults to ``False`` (TRPO has none).
        loss_critic_type: ``"l2"``, ``"l1"`` or ``"smooth_l1"``. Defaults to ``"l2"``.
        **kwargs: passed to :class:`~torchrl.objectives.PPOLoss` (``reduction``, ``critic_coeff``, ...).

    Examples:
        >>> from torchrl.modules import MLP, ValueOperator
        >>> from torchrl.objectives import ValueEstimators
        >>> _ = torch.manual_seed(0)
        >>> actor = gaussian_policy(3, 2, hidden_sizes=(16,))
        >>> critic = ValueOperator(MLP(in_features=3, out_features=1, num_cells=[16]), in_keys=["observation"])
        >>> loss = TRPOLoss(actor, critic, max_kl=0.01)
        >>> loss.make_value_estimator(ValueEstimators.GAE, gamma=0.99, lmbda=0.95)
        >>> rollout = TensorDict({"observation": torch.randn(4, 10, 3)}, [4, 10])  # 4 imagined rollouts
        >>> with torch.no_grad():
        ...     rollout = actor(rollout)
        >>> rollout["next"] = TensorDict({
        ...     "observation": torch.randn(4, 10, 3), "reward": rollout["action"].sum(-1, keepdim=True),
        ...     "done": torch.zeros(4, 10, 1, dtype=torch.bool),
        ...     "terminated": torch.zeros(4, 10, 1, dtype=torch.bool)}, [4, 10])
        >>> info = loss.step(rollout)  # GAE advantages, then the trust-region step on the actor
        >>> bool(info["accepted"]), float(info["kl"]) <= 0.01
        (True, True)
        >>> loss(rollout)["loss_critic"].backward()  # the critic is fitted by an ordinary optimiser
    """

    def __init__(
        self,
        actor_network: ProbabilisticActor,
        critic_network: TensorDictModule | None = None,
        *,
        max_kl: float = 0.05,
        cg_iters: int = 10,
        cg_damping: float = 0.1,
        backtrack_coeff: float = 0.8,
        max_backtracks: int = 15,
        accept_ratio: float = 0.0,
        kl_tolerance: float = 1e-5,
        normalize_advantage: bool = True,
        entropy_bonus: bool = False,
        loss_critic_type: str = "l2",
        **kwargs,
    ) -> None:
        if not max_kl > 0:
            raise ValueError(f"max_kl must be positive; got {max_kl}.")
        super().__init__(
            actor_network,
            critic_network,
            entropy_bonus=entropy_bonus,
            normalize_advantage=normalize_advantage,
            loss_critic_type=loss_critic_type,
            **kwargs,
        )
        self.max_kl = float(max_kl)
        self.cg_iters = cg_iters
        self.cg_damping = cg_damping
        self.backtrack_coeff = backtrack_coeff
        self.max_backtracks = max_backtracks
        self.accept_ratio = accept_ratio
        self.kl_tolerance = kl_tolerance

    def actor_parameters(self) -> list[Tensor]:
        """The actor's trainable parameters, the tensors :meth:`step` updates in place."""
        params = self.actor_network_params if self.functional else self.actor_network
        if isinstance(params, nn.Module):
            return [p for p in params.parameters() if p.requires_grad]
        return [p for p in params.values(True, True) if p.requires_grad]

    def _advantage(self, tensordict: TensorDictBase) -> Tensor:
        advantage = tensordict.get(self.tensor_keys.advantage, None)
        update_norm = advantage is None
        if advantage is None:
            if self.critic_network is None:
                raise KeyError(
                    f"TRPOLoss.step: the batch has no {self.tensor_keys.advantage!r} and the loss has no critic "
                    "to compute it; pass a critic_network or compute advantages first."
                )
            self.value_estimator(
                tensordict,
                params=self._cached_critic_network_params_detached,
                target_params=self.target_critic_network_params,
            )
            advantage = tensordict.get(self.tensor_keys.advantage)
        return self._maybe_normalize_advantage(advantage, tensordict, update_norm=update_norm)

    def step(self, tensordict: TensorDictBase) -> TensorDict:
        """One trust-region update of the actor on ``tensordict`` (in place); returns :func:`trust_region_step`'s info.

        Args:
            tensordict: a batch of (imagined) transitions with the actor's observation keys and the action, and
                either ``advantage`` or what the value estimator needs (``next`` observations, rewards, done and
                terminated flags; batch shape ``[..., T]`` with time last, as TorchRL's GAE expects).
        """
        td = tensordict.clone(False)
        advantage = self._advantage(td).detach()
        with torch.no_grad():
            log_prob_old, dist_old, _ = self._get_cur_log_prob(td)
        if advantage.ndim == log_prob_old.ndim + 1 and advantage.shape[-1] == 1:
            advantage = advantage.squeeze(-1)
        try:
            kl_divergence(dist_old, dist_old)
        except NotImplementedError as err:
            raise TypeError(
                f"TRPOLoss needs a policy whose KL is closed-form; got {type(dist_old).__name__}. "
                "Use gaussian_policy(...) (an IndependentNormal), or a Normal or TanhNormal actor."
            ) from err

        def surrogate() -> Tensor:
            log_prob, _, _ = self._get_cur_log_prob(td)
            return ((log_prob - log_prob_old).exp() * advantage).mean()

        def mean_kl() -> Tensor:
            _, dist, _ = self._get_cur_log_prob(td)
            kl = kl_divergence(dist_old, dist)
            while kl.ndim > log_prob_old.ndim:
                kl = kl.sum(-1)
            return kl.mean()

        return trust_region_step(
            self.actor_parameters(),
            surrogate,
            mean_kl,
            self.max_kl,
            cg_iters=self.cg_iters,
            cg_damping=self.cg_damping,
            backtrack_coeff=self.backtrack_coeff,
            max_backtracks=self.max_backtracks,
            accept_ratio=self.accept_ratio,
            kl_tolerance=self.kl_tolerance,
        )
