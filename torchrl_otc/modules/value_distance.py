"""The value-based transition distance ``d_q`` of OTC (paper section 3.3), from the agent's own critic.

:class:`ValueFunctions` declares what ``d_q`` needs from an algorithm (``Q(s, a)`` and ``V(s)``); every
:class:`~torchrl_otc.trainers.algorithms.Algorithm` provides it, so this module names no algorithm and reads no
loss's internals. Also importable from :mod:`torchrl_otc.modules.distances`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol, runtime_checkable

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor

from torchrl_otc.modules.transition_distance import (
    L1EmbeddingDistance,
    check_positive_int,
    flat_features,
)

__all__ = ["ValueDistance", "ValueFunctions"]


@runtime_checkable
class ValueFunctions(Protocol):
    """What the value distance ``d_q`` (paper section 3.3) needs from an agent's algorithm: ``Q(s, a)`` and ``V(s)``.

    Every :class:`~torchrl_otc.trainers.algorithms.Algorithm` follows it (BCQ, AWAC, CQL, TD3+BC; each says how it
    computes its values). Both values are computed without gradient, on flat rows.

    Examples:
        >>> class Linear:  # any object with these three methods
        ...     def q_value(self, observation, action, reduction="mean"):
        ...         return observation.sum(-1) + action.sum(-1)
        ...     def state_value(self, observation, actions="policy", num_samples=10, reduction="mean"):
        ...         return observation.sum(-1)
        ...     def check_state_value(self, actions):
        ...         pass
        >>> isinstance(Linear(), ValueFunctions)
        True
    """

    def q_value(
        self, observation: Tensor, action: Tensor, reduction: Literal["mean", "min"] = "mean"
    ) -> Tensor:
        """``Q(s, a)`` ``[N]`` of ``observation [N, ds]`` and ``action [N, da]``, ``reduction`` over the critics."""
        ...

    def state_value(
        self,
        observation: Tensor,
        actions: Literal["policy", "sample"] = "policy",
        num_samples: int = 10,
        reduction: Literal["mean", "min"] = "mean",
    ) -> Tensor:
        """``V(s) = E_a Q(s, a)`` ``[N]``: of the policy's action, or the mean over ``num_samples`` sampled ones."""
        ...

    def check_state_value(self, actions: str) -> None:
        """Raises ``ValueError`` when :meth:`state_value` cannot use ``actions`` (called when a distance binds)."""
        ...


class ValueDistance(L1EmbeddingDistance):
    r"""The value-based distance ``d_q`` of OTC (paper section 3.3), computed from the agent's own critic.

    Matching (eq. 1) compares the state-action values and the similarity compares the normalised values of the
    next states:

    .. math::
        d_q(s, a_i, s^*, a_i^*) = \lvert Q(s, a_i) - Q(s^*, a_i^*) \rvert, \qquad
        d_q(s', s'^*) = \left\lvert \frac{V(s')}{\lvert\mathbb{E}_{s'} V(s')\rvert}
            - \frac{V(s'^*)}{\lvert\mathbb{E}_{s'^*} V(s'^*)\rvert} \right\rvert,
        \qquad V(s') = \mathbb{E}_{a_i} Q(s', a_i).

    Transitions far apart in feature space but with isomorphic state-action pairs have similar values (the
    paper's DeepMDP argument), so ``d_q`` can match them where ``d_e`` cannot. It reuses the agent's critic: no
    module of its own, nothing to train; its numbers follow the critic as it learns.

    **Choices the paper leaves open.**

    * *Twin critics* are averaged (``critic_reduction="mean"``, default): a similarity needs the best estimate
      of the value, not the pessimistic one the targets use; ``"min"`` is the clipped double-Q reading.
    * ``V(s')`` comes from the policy's action (``value_actions="policy"``, default: the deterministic
      deployment action; for BCQ the best of ``num_action_samples`` perturbed VAE actions, BCQ's own target) or
      from the mean over ``num_action_samples`` actions sampled from the policy (``"sample"``; AWAC, CQL and
      BCQ): :meth:`ValueFunctions.state_value` of the algorithm.
    * *The expectations* ``E_{s'} V(s')`` and ``E_{s'*} V(s'*)`` are the means over the set being embedded:
      the ``|B|`` candidates for the first, the ``|D|`` online rows for the second (distinct rows, when the
      online buffer holds fewer than ``|D|``).
    * *The guarded denominator.* The paper divides by ``E[V]``. We divide by its magnitude ``|E[V]|``: when both
      means have the same sign this gives exactly the paper's distance (flipping both signs leaves the
      difference's absolute value unchanged); when they differ, the paper's ratio would flip one set's values
      against the other's and pair a value with its opposite. When ``|E[V]| < rel_tol * E|V|`` (values of
      both signs that average to about zero, where the mean says nothing about their scale) we divide by the
      mean magnitude ``E|V|`` instead, and never by less than ``eps`` (all values about zero: the
      distances are then those of the raw values / eps, so all next states look alike only if their values
      are). :meth:`value_scale` is that rule.

    Both embeddings are computed under :func:`torch.no_grad`: no gradient reaches the critic or the policy.
    The embedding of a set depends on the whole set (its mean), so :attr:`rowwise_embedding` is ``False`` and
    the sampler never caches online embeddings for this distance.

    Args:
        algorithm: the agent's algorithm, any :class:`ValueFunctions` (e.g. a
            :class:`~torchrl_otc.trainers.algorithms.Algorithm`: BCQ, AWAC, CQL or TD3+BC, each saying how it
            computes ``Q`` and ``V``). :class:`~torchrl_otc.trainers.AgentLearner` binds its own algorithm when
            given an unbound distance (see :meth:`bind`).

    Keyword Args:
        q_function: instead of ``algorithm``, a callable ``(s [N, ds], a [N, da]) -> Q [N]``.
        value_function: with ``q_function``, a callable ``(s' [N, ds]) -> V [N]``.
        critic_reduction: ``"mean"`` (default) or ``"min"`` over the critics.
        value_actions: ``"policy"`` (default) or ``"sample"``.
        num_action_samples: actions per next state for ``"sample"`` and for BCQ's ``"policy"``.
            Defaults to ``10`` (BCQ's target).
        rel_tol: see the guarded denominator. Defaults to ``0.1``.
        eps: smallest denominator. Defaults to ``1e-6``.
        state_key: key of ``s``. Defaults to ``"observation"``.
        action_key: key of ``a_i``. Defaults to ``"action"``.
        next_state_key: key of ``s'``. Defaults to ``("next", "observation")``.
        compile: compile the L1 step of the sampler's comparison (:class:`L1EmbeddingDistance`). Defaults to
            ``False``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> q = lambda s, a: s.sum(-1) + a.sum(-1)           # a critic with known values
        >>> v = lambda s: s.sum(-1)
        >>> dist = ValueDistance(q_function=q, value_function=v)
        >>> td = TensorDict({"observation": torch.tensor([[1.0], [2.0]]), "action": torch.tensor([[0.0], [1.0]]),
        ...                  ("next", "observation"): torch.tensor([[2.0], [4.0]])}, [2])
        >>> dist.state_action_distance(td, td)               # |Q - Q*| with Q = (1, 3)
        tensor([[0., 2.],
                [2., 0.]])
        >>> dist.embed(td)[1].squeeze(-1)                    # V / |E V| with V = (2, 4), E V = 3
        tensor([0.6667, 1.3333])
    """

    rowwise_embedding = False

    def __init__(
        self,
        algorithm: ValueFunctions | None = None,
        *,
        q_function: Callable[[Tensor, Tensor], Tensor] | None = None,
        value_function: Callable[[Tensor], Tensor] | None = None,
        critic_reduction: Literal["mean", "min"] = "mean",
        value_actions: Literal["policy", "sample"] = "policy",
        num_action_samples: int = 10,
        rel_tol: float = 0.1,
        eps: float = 1e-6,
        state_key: NestedKey = "observation",
        action_key: NestedKey = "action",
        next_state_key: NestedKey = ("next", "observation"),
        compile: bool = False,
    ) -> None:
        super().__init__(compile=compile)
        if critic_reduction not in ("mean", "min"):
            raise ValueError(f"critic_reduction must be 'mean' or 'min'; got {critic_reduction!r}.")
        if value_actions not in ("policy", "sample"):
            raise ValueError(f"value_actions must be 'policy' or 'sample'; got {value_actions!r}.")
        check_positive_int("num_action_samples", num_action_samples)
        if not (rel_tol >= 0 and eps > 0):
            raise ValueError(f"rel_tol must be >= 0 and eps > 0; got rel_tol={rel_tol}, eps={eps}.")
        if (q_function is None) != (value_function is None):
            raise ValueError(
                "Pass both q_function and value_function, or neither (and an algorithm)."
            )
        if q_function is not None and algorithm is not None:
            raise ValueError("Pass either an algorithm or q_function/value_function, not both.")
        self.critic_reduction = critic_reduction
        self.value_actions = value_actions
        self.num_action_samples = num_action_samples
        self.rel_tol = float(rel_tol)
        self.eps = float(eps)
        self.in_keys = [state_key, action_key, next_state_key]
        self._user_functions = q_function is not None
        # Plain callables (not registered submodules): the critic's parameters belong to the agent's algorithm.
        self.__dict__["q_function"] = q_function
        self.__dict__["value_function"] = value_function
        self.__dict__["algorithm"] = None
        if algorithm is not None:
            self.bind(algorithm)

    def bind(self, algorithm: ValueFunctions) -> None:
        """Uses ``algorithm``'s values (no-op when built with ``q_function``/``value_function``).

        Args:
            algorithm: any :class:`ValueFunctions`, e.g. an :class:`~torchrl_otc.trainers.algorithms.Algorithm`.

        Raises:
            ValueError: the algorithm cannot compute ``V`` with ``value_actions`` (TD3+BC with ``"sample"``).
        """
        if self._user_functions:
            return
        algorithm.check_state_value(self.value_actions)
        reduction, actions, n = self.critic_reduction, self.value_actions, self.num_action_samples

        def q_function(obs: Tensor, action: Tensor) -> Tensor:
            return algorithm.q_value(obs, action, reduction)

        def value_function(obs: Tensor) -> Tensor:
            return algorithm.state_value(obs, actions, n, reduction)

        self.__dict__.update(
            q_function=q_function, value_function=value_function, algorithm=algorithm
        )

    @staticmethod
    def value_scale(values: Tensor, rel_tol: float = 0.1, eps: float = 1e-6) -> Tensor:
        """The guarded denominator: ``|E V|``, or ``E|V|`` when ``|E V| < rel_tol * E|V|``, at least ``eps``.

        Examples:
            >>> ValueDistance.value_scale(torch.tensor([-2.0, -4.0]))  # same sign: |mean|
            tensor(3.)
            >>> ValueDistance.value_scale(torch.tensor([-1.0, 1.0]))   # mean 0: mean magnitude
            tensor(1.)
            >>> ValueDistance.value_scale(torch.zeros(3))
            tensor(1.0000e-06)
        """
        mean = values.mean().abs()
        magnitude = values.abs().mean()
        scale = torch.where(mean >= rel_tol * magnitude, mean, magnitude)
        return scale.clamp_min(eps)

    @torch.no_grad()
    def embed(self, transitions: TensorDictBase) -> tuple[Tensor, Tensor]:
        """``(Q(s, a_i) [N, 1], V(s') / scale [N, 1])`` for the set ``transitions``."""
        q, v = self._values(transitions)
        return q.unsqueeze(-1), (v / self.value_scale(v, self.rel_tol, self.eps)).unsqueeze(-1)

    @torch.no_grad()
    def embed_sets(
        self, candidates: TensorDictBase, online: TensorDictBase
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Both sets' embeddings from one pass of the critics and the policy; each set keeps its own E[V]."""
        q, v = self._values(torch.cat([candidates, online.to(candidates.device)]))
        b = candidates.shape[0]
        out = []
        for part in (slice(0, b), slice(b, None)):
            vs = v[part]
            out.append(
                (
                    q[part].unsqueeze(-1),
                    (vs / self.value_scale(vs, self.rel_tol, self.eps)).unsqueeze(-1),
                )
            )
        return out[0], out[1]

    def _values(self, transitions: TensorDictBase) -> tuple[Tensor, Tensor]:
        """``Q(s, a_i)`` and ``V(s')`` ``[N]`` of the rows of ``transitions``."""
        q_function, value_function = self.__dict__["q_function"], self.__dict__["value_function"]
        if q_function is None:
            raise RuntimeError(
                "ValueDistance is not bound to a critic: pass algorithm=..., or q_function and value_function, "
                "or use it through AgentLearner (which binds the agent's own algorithm)."
            )
        state, action, nxt = (flat_features(transitions, key) for key in self.in_keys)
        return q_function(state, action).reshape(-1), value_function(nxt).reshape(-1)

    def extra_repr(self) -> str:
        return (
            f"critic_reduction={self.critic_reduction!r}, value_actions={self.value_actions!r}, "
            f"bound={self.__dict__['q_function'] is not None}"
        )
