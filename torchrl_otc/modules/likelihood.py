"""The dynamics-likelihood selector: offline rows ranked by their likelihood under a model of the online dynamics.

OTC (Jiang & Lu, AAAI 2023, section 3.2) corrects the offline data *implicitly*: it keeps offline transitions
whose next state agrees with a matched online transition, and calls the explicit alternative, a model of the
current dynamics against which offline rows are scored, impractical. :class:`LikelihoodDistance` is that explicit
alternative, as a baseline for decomposed OTC (``OTCSampler(online_fraction=F)``): a small ensemble of Gaussian
next-state models ``p_m(s' - s | s, a_i)`` (one agent's state and *own* action only: decentralised) is fitted to
the agent's latest deployment ``D_i^k`` after each deployment, and every offline candidate is ranked by eq. (3) on
its negative log-likelihood

.. math::
    d(s, a_i, s') = -\\frac{1}{M} \\sum_{m=1}^{M} \\log \\mathcal{N}\\big(s' - s;\\, \\mu_m(s, a_i),
    \\operatorname{diag} \\sigma_m^2(s, a_i)\\big),

so that the rows the current dynamics explain best get rank 1 and are drawn most.

The distance is a function of its inputs and of the ensemble's parameters: the fit (optimiser, random stream,
schedule) belongs to :class:`~torchrl_otc.trainers.parts.LikelihoodDistanceTrainer`, which the agent's learner
calls when a deployment's data is added (:meth:`AgentLearner.add_deployment
<torchrl_otc.trainers.AgentLearner.add_deployment>`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor, nn

from torchrl_otc.modules.distances import feature_statistics
from torchrl_otc.modules.trainable import flat_transitions
from torchrl_otc.modules.transition_distance import (
    Comparison,
    OnlineRows,
    TransitionDistance,
    _excluded,
    check_positive_int,
    flat_features,
)

__all__ = ["GaussianEnsemble", "LikelihoodDistance"]


class GaussianEnsemble(nn.Module):
    """``M`` independent Gaussian MLPs ``x -> (mean, log_var)``, evaluated together as batched matrix products.

    Hidden layers use SiLU. The log-variance is bounded softly to ``[min_log_var, max_log_var]`` (as in PETS,
    Chua et al. 2018) so that a member cannot buy likelihood with a vanishing variance.

    Args:
        in_dim: input width.
        out_dim: output width (of the mean and of the log-variance each).
        ensemble_size: ``M``.
        hidden_sizes: hidden widths.

    Keyword Args:
        min_log_var: soft lower bound of the log-variance. Defaults to ``-10``.
        max_log_var: soft upper bound of the log-variance. Defaults to ``2``.

    Examples:
        >>> net = GaussianEnsemble(3, 2, 5, (16,))
        >>> mean, log_var = net(torch.zeros(7, 3))
        >>> mean.shape, bool((log_var <= 2).all())
        (torch.Size([5, 7, 2]), True)
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        ensemble_size: int,
        hidden_sizes: Sequence[int],
        *,
        min_log_var: float = -10.0,
        max_log_var: float = 2.0,
    ) -> None:
        super().__init__()
        sizes = [in_dim, *hidden_sizes, 2 * out_dim]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(ensemble_size, a, b)) for a, b in zip(sizes, sizes[1:])
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.empty(ensemble_size, 1, b)) for b in sizes[1:]
        )
        self.out_dim = out_dim
        self.min_log_var = float(min_log_var)
        self.max_log_var = float(max_log_var)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """``nn.Linear``'s default initialisation (uniform in ``+-1/sqrt(fan_in)``), drawn from ``generator``."""
        for w, b in zip(self.weights, self.biases):
            bound = 1.0 / math.sqrt(w.shape[1])
            for p in (w, b):
                noise = torch.rand(
                    p.shape, generator=generator, device=generator.device if generator else None
                )
                p.copy_((noise * 2 - 1).mul_(bound))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``[N, in]`` (shared by the members) or ``[M, N, in]`` -> ``(mean, log_var)``, each ``[M, N, out]``."""
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.matmul(h, w) + b
            if i < last:
                h = nn.functional.silu(h)
        mean, raw = h.split(self.out_dim, -1)
        log_var = self.max_log_var - nn.functional.softplus(self.max_log_var - raw)
        log_var = self.min_log_var + nn.functional.softplus(log_var - self.min_log_var)
        return mean, log_var


def gaussian_log_density(target: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """Log-density of ``target`` under ``N(mean, diag exp(log_var))``, summed over the last dimension."""
    return -0.5 * (
        (target - mean).pow(2) * torch.exp(-log_var) + log_var + math.log(2 * math.pi)
    ).sum(-1)


def _first_column(b: int, d: int, device: torch.device) -> Tensor:
    """``[b, d]`` (a broadcast view): ``0`` in column 0, ``inf`` elsewhere."""
    row = torch.full((d,), float("inf"), device=device)
    row[:1] = 0.0
    return row.expand(b, d)


class LikelihoodDistance(nn.Module, TransitionDistance):
    r"""Ranks candidates by their negative log-likelihood under an ensemble fitted to the latest online data.

    **The model.** ``ensemble_size`` Gaussian MLPs (:class:`GaussianEnsemble`) predict the standardised change
    of state ``(s' - s - mu_d) / sigma_d`` from the standardised ``[s, a_i]`` (the agent's *own* action only;
    the statistics come from the offline data, :meth:`fit`). A candidate's score is its negative log-likelihood

    .. math::
        \mathrm{NLL}(s, a_i, s') = -\frac{1}{M} \sum_m \log \mathcal{N}\big(s' - s;\, \mu_m, \sigma_m^2\big)

    in nats (of the raw ``s' - s``, the standardisation's Jacobian included); the candidate the ensemble
    explains best gets rank 1 under eq. (3). It can be negative: only its order matters to the ranking.

    **How** :class:`~torchrl_otc.modules.Comparison` **is filled.** The score compares a candidate with the
    ensemble, not with an online row, so eq. (1)'s match is irrelevant: every candidate is "matched" to the
    first compared online row at state-action distance 0 (``state_action`` is ``0`` in column 0 and ``inf``
    elsewhere, so ``minimum = 0``, ``argmin = 0``, ``ties = 1``; no random tie-break is drawn), and
    ``next_state(match)`` ignores ``match`` and returns the NLL. The sampler's ``otc_match_distance`` is then
    ``0``, ``otc_match_index`` the first compared online row, ``otc_distance`` the NLL.

    **Before any online data** (the ensemble never fitted: :attr:`trained` is false) every candidate scores
    ``0``: eq. (3) ranks them as one tie group, i.e. draws uniformly.

    **Training.** The distance holds no optimiser and no random stream:
    :class:`~torchrl_otc.trainers.parts.LikelihoodDistanceTrainer` (created by the agent's learner) refits it
    from scratch on the agent's latest deployment ``D_i^k`` each time one is added: fresh parameters,
    ``fit_steps`` Adam steps at ``lr``, each member on its own batches of ``fit_batch_size`` rows drawn with
    replacement, loss the members' mean Gaussian NLL. Every refit increases :attr:`version`.

    **Use it with decomposed OTC** (``OTCSampler(online_fraction=F)``, ``strategy=otc distance=likelihood
    online_fraction=F``): there the candidates are offline rows only. In the paper's coupled procedure the online
    rows the ensemble was fitted on would be scored against a model of themselves; the tuning config refuses
    that combination.

    Args:
        state_dim: width of ``s`` (and of ``s'``); states are flat vectors.
        action_dim: width of the agent's action ``a_i``.

    Keyword Args:
        ensemble_size: ``M``, the members. Defaults to ``5``.
        hidden_sizes: hidden widths of each member. Defaults to ``(64, 64)``.
        fit_steps: Adam steps of each refit. Defaults to ``200``.
        fit_batch_size: rows per member and step of a refit. Defaults to ``256``.
        lr: Adam learning rate of a refit. Defaults to ``1e-3``.
        seed: seeds the initial parameters (the global random state is left untouched) and, plus one, the
            trainer's random stream. Defaults to ``0``.
        device: where the ensemble lives. Defaults to the CPU.
        state_key: key of ``s``. Defaults to ``"observation"``.
        action_key: key of ``a_i``. Defaults to ``"action"``.
        next_state_key: key of ``s'``. Defaults to ``("next", "observation")``.

    Attributes:
        version (int): increases whenever the scores change (fit, refit, load).

    Examples:
        >>> from tensordict import TensorDict
        >>> td = TensorDict({"observation": torch.randn(8, 2), "action": torch.rand(8, 1),
        ...                  ("next", "observation"): torch.randn(8, 2)}, [8])
        >>> dist = LikelihoodDistance(2, 1, hidden_sizes=(8,))
        >>> out = dist.compare(td, OnlineRows.of(td[:3]))  # not fitted to online data yet: all scores 0
        >>> out.minimum.tolist() == [0.0] * 8, out.next_state(out.argmin).abs().sum().item()
        (True, 0.0)
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        *,
        ensemble_size: int = 5,
        hidden_sizes: Sequence[int] = (64, 64),
        fit_steps: int = 200,
        fit_batch_size: int = 256,
        lr: float = 1e-3,
        seed: int = 0,
        device: torch.device | str | None = None,
        state_key: NestedKey = "observation",
        action_key: NestedKey = "action",
        next_state_key: NestedKey = ("next", "observation"),
    ) -> None:
        super().__init__()
        self.state_dim = check_positive_int("state_dim", state_dim)
        self.action_dim = check_positive_int("action_dim", action_dim)
        self.ensemble_size = check_positive_int("ensemble_size", ensemble_size)
        self.hidden_sizes = tuple(check_positive_int("hidden_sizes", h) for h in hidden_sizes)
        self.fit_steps = check_positive_int("fit_steps", fit_steps)
        self.fit_batch_size = check_positive_int("fit_batch_size", fit_batch_size)
        if not lr > 0:
            raise ValueError(f"lr must be positive; got {lr}.")
        self.lr = float(lr)
        self.seed = int(seed)
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.state_key = state_key
        self.action_key = action_key
        self.next_state_key = next_state_key
        self.in_keys = [state_key, action_key, next_state_key]
        self.ensemble = GaussianEnsemble(
            state_dim + action_dim, state_dim, self.ensemble_size, self.hidden_sizes
        )
        self.ensemble.reset_parameters(torch.Generator().manual_seed(self.seed))
        self.register_buffer("input_mean", torch.zeros(state_dim + action_dim))
        self.register_buffer("input_std", torch.ones(state_dim + action_dim))
        self.register_buffer("target_mean", torch.zeros(state_dim))
        self.register_buffer("target_std", torch.ones(state_dim))
        self.register_buffer("trained", torch.tensor(False))
        self.version = 0
        self.to(device)

    @property
    def device(self) -> torch.device:
        """Where the ensemble lives (follows ``.to(...)``, as a module's device should)."""
        return self.input_mean.device

    # ------------------------------------------------------------------------------------------ features
    def features(self, transitions: TensorDictBase) -> tuple[Tensor, Tensor]:
        """Standardised ``([s, a_i], s' - s)`` of flat transitions, ``[N, ds + da]`` and ``[N, ds]``."""
        state = flat_features(transitions, self.state_key).to(self.device)
        action = flat_features(transitions, self.action_key).to(self.device)
        nxt = flat_features(transitions, self.next_state_key).to(self.device)
        x = (torch.cat([state, action], -1) - self.input_mean) / self.input_std
        return x, (nxt - state - self.target_mean) / self.target_std

    @torch.no_grad()
    def fit(self, data: TensorDictBase) -> LikelihoodDistance:
        """The input and target standardisation from (offline) transitions; returns ``self``."""
        flat = flat_transitions(data, self.in_keys, "LikelihoodDistance.fit")
        state = flat_features(flat, self.state_key)
        x = torch.cat([state, flat_features(flat, self.action_key)], -1)
        d = flat_features(flat, self.next_state_key) - state
        for name, value in (("input", x), ("target", d)):
            mean, std = feature_statistics(value, what=f"LikelihoodDistance.fit ({name})")
            getattr(self, f"{name}_mean").copy_(mean)
            getattr(self, f"{name}_std").copy_(std)
        self.version += 1
        return self

    def member_log_likelihood(self, x: Tensor, target: Tensor) -> Tensor:
        """``[M, N]`` log-densities of the standardised ``target`` under each member (standardised units)."""
        mean, log_var = self.ensemble(x)
        return gaussian_log_density(target, mean, log_var)

    @torch.no_grad()
    def log_likelihood(self, transitions: TensorDictBase) -> Tensor:
        """``[N]``: the members' mean log-density of each row's ``s' - s`` (nats, raw units); ``0`` before a fit."""
        x, target = self.features(transitions)
        if not bool(self.trained):
            return x.new_zeros(x.shape[0])
        jacobian = self.target_std.log().sum()
        return self.member_log_likelihood(x, target).mean(0) - jacobian

    # ------------------------------------------------------------------------------------- protocol
    def state_action_distance(self, candidates: TensorDictBase, online: TensorDictBase) -> Tensor:
        """``[B, D]``: ``0`` in column 0, ``inf`` elsewhere (every candidate matches the first online row)."""
        return _first_column(candidates.shape[0], online.shape[0], self.device)

    def next_state_distance(self, candidates: TensorDictBase, matches: TensorDictBase) -> Tensor:
        """``[B]``: the candidates' negative log-likelihood (``matches`` is not read)."""
        return -self.log_likelihood(candidates)

    @torch.no_grad()
    def compare(
        self,
        candidates: TensorDictBase,
        online: OnlineRows,
        *,
        exclude: tuple[Tensor, Tensor] | None = None,
    ) -> Comparison:
        """Every candidate matched to the first compared online row; ``next_state`` the NLL (see the class).

        Only ``online``'s size is read. With ``exclude``, pairs with equal ids are ``inf`` and the match is the
        first allowed column.
        """
        b, d = candidates.shape[0], online.size if online.rows is None else online.rows.shape[0]
        nll = -self.log_likelihood(candidates)
        if exclude is None:
            first = torch.zeros(b, dtype=torch.long, device=nll.device)
            state_action = _first_column(b, d, nll.device)
            return Comparison(state_action, nll.new_zeros(b), first, first + 1, lambda match: nll)
        # a match among the allowed columns: 0 everywhere allowed, ties broken by the first column
        state_action = _excluded(nll.new_zeros(b, d), exclude)
        minimum, argmin = state_action.min(-1)
        return Comparison(state_action, minimum, argmin, torch.ones_like(argmin), lambda match: nll)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D401
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.version += 1

    def extra_repr(self) -> str:
        return (
            f"ensemble_size={self.ensemble_size}, hidden_sizes={self.hidden_sizes}, "
            f"fit_steps={self.fit_steps}, trained={bool(self.trained)}"
        )
