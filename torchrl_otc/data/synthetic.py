"""Small synthetic transition sets with known dynamics, for tutorials, tests and sampler measurements.

The point-mass transitions follow the dynamics of the non-stationary navigation task of section 4.5: a point in
``[-1, 1]^d`` moves by ``beta * a`` for an action ``a`` in ``[-1, 1]^d``. Offline data draws ``beta`` uniformly
from ``[-0.2, 0.2]`` (so the expected move of every action is zero); online data has one ``beta``. The true
``beta`` of every row is stored under ``"beta"``, so the share of sampled rows with the online dynamics can be read
off a batch.

The discrete MDP (:func:`discrete_mdp`) has one-hot states and actions whose offline data follows a kernel ``P_B``
and whose online data follows another kernel ``P_D``; :func:`kernel_kl` measures how close the ``(s, a) -> s'``
distribution of sampled batches is to ``P_D`` (eq. 2's objective).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch import Tensor
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import Sampler

__all__ = [
    "point_mass_transitions",
    "point_mass_sampling_shares",
    "discrete_mdp",
    "kernel_kl",
    "masked_chain",
    "CHAIN_STATES",
]


def point_mass_transitions(
    n: int,
    beta: float | tuple[float, float],
    *,
    dim: int = 2,
    online: bool = False,
    generator: torch.Generator | None = None,
) -> TensorDict:
    """``n`` transitions ``s' = clip(s + beta * a, -1, 1)`` with uniform states and actions.

    Args:
        n: number of transitions.
        beta: the speed factor, or a ``(low, high)`` range to draw it from uniformly per transition.

    Keyword Args:
        dim: dimension of the state and the action. Defaults to 2.
        online: value of the ``"is_online"`` column. Defaults to ``False``.
        generator: random generator.

    Returns:
        A TensorDict of batch size ``[n]`` with ``observation``, ``action``, ``("next", "observation")``,
        ``beta`` and ``is_online``.

    Examples:
        >>> td = point_mass_transitions(4, beta=(-0.2, 0.2), generator=torch.Generator().manual_seed(0))
        >>> td["observation"].shape, bool(((td["beta"] >= -0.2) & (td["beta"] <= 0.2)).all())
        (torch.Size([4, 2]), True)
    """
    if n < 0 or dim < 1:
        raise ValueError(f"n must be >= 0 and dim >= 1; got n={n}, dim={dim}.")
    state = torch.rand(n, dim, generator=generator) * 2 - 1
    action = torch.rand(n, dim, generator=generator) * 2 - 1
    if isinstance(beta, tuple):
        low, high = beta
        b = torch.rand(n, 1, generator=generator) * (high - low) + low
    else:
        b = torch.full((n, 1), float(beta))
    return TensorDict(
        {
            "observation": state,
            "action": action,
            ("next", "observation"): (state + b * action).clamp(-1, 1),
            "beta": b,
            "is_online": torch.full((n,), online, dtype=torch.bool),
        },
        batch_size=[n],
    )


def point_mass_sampling_shares(
    make_sampler: Callable[[TensorDictReplayBuffer], Sampler],
    *,
    n_offline: int = 50_000,
    n_online: int = 500,
    online_beta: float = 0.15,
    calls: int = 100,
    batch_size: int = 128,
    seed: int = 0,
) -> tuple[float, float]:
    """What a sampler draws from merged point-mass data whose dynamics changed (section 4.5's setting).

    Offline rows have ``beta ~ U[-0.2, 0.2]``, the deployment's online rows ``beta = online_beta``; both are written
    to a merged buffer (online rows also to the online buffer, with ``transition_id`` columns so that
    ``self_match=False`` works). ``make_sampler(online_buffer)`` builds the merged buffer's sampler; a sampler with
    a ``distance`` that has ``fit`` gets it fitted on the offline rows.

    Returns:
        ``(share of drawn offline rows whose beta has the online sign, share of online rows in the batches)``.

    Examples:
        >>> from torchrl.data import RandomSampler
        >>> right, online = point_mass_sampling_shares(lambda online: RandomSampler(), n_offline=2000,
        ...                                            n_online=100, calls=20)
        >>> 0.4 < right < 0.6, online < 0.15
        (True, True)
    """
    g = torch.Generator().manual_seed(seed)
    offline = point_mass_transitions(n_offline, (-0.2, 0.2), generator=g)
    deployment = point_mass_transitions(n_online, online_beta, online=True, generator=g)
    offline["transition_id"] = torch.arange(n_offline)
    deployment["transition_id"] = torch.arange(n_offline, n_offline + n_online)
    online = TensorDictReplayBuffer(storage=LazyTensorStorage(n_online))
    sampler = make_sampler(online)
    merged = TensorDictReplayBuffer(
        storage=LazyTensorStorage(n_offline + n_online), sampler=sampler, batch_size=batch_size
    )
    merged.extend(offline)
    fit = getattr(getattr(sampler, "distance", None), "fit", None)
    if callable(fit):
        fit(offline)
    online.extend(deployment)
    merged.extend(deployment)
    merged.set_rng(torch.Generator().manual_seed(seed))
    batch = torch.cat([merged.sample() for _ in range(calls)])
    off = ~batch["is_online"]
    right = (torch.sign(batch["beta"][off]) == (1.0 if online_beta > 0 else -1.0)).float().mean()
    return float(right), float(batch["is_online"].float().mean())


def discrete_mdp(
    seed: int = 0,
    n_states: int = 5,
    n_actions: int = 2,
    n_offline: int = 20_000,
    n_online: int = 2_000,
) -> tuple[Tensor, Tensor, TensorDict, TensorDict]:
    """A small MDP whose transition kernel changed between offline and online collection.

    ``P_B`` (offline) has rows drawn from a flat Dirichlet, ``P_D`` (online) from a sparse one (concentration 0.3).
    States and actions are drawn uniformly and written one-hot; their indices are kept under ``s_id``, ``a_id`` and
    ``s2_id``.

    Returns:
        ``(P_B, P_D, offline transitions, online transitions)``; the kernels have shape
        ``[n_states, n_actions, n_states]``.

    Examples:
        >>> p_b, p_d, offline, online = discrete_mdp(n_offline=100, n_online=10)
        >>> p_d.shape, offline["observation"].shape, online["s2_id"].shape
        (torch.Size([5, 2, 5]), torch.Size([100, 5]), torch.Size([10]))
    """
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(
            seed
        )  # Dirichlet draws use the global generator: fix it, leave the caller's alone
        p_b = torch.distributions.Dirichlet(torch.ones(n_states)).sample((n_states, n_actions))
        p_d = torch.distributions.Dirichlet(torch.full((n_states,), 0.3)).sample(
            (n_states, n_actions)
        )

    def draw(n: int, kernel: Tensor) -> TensorDict:
        s = torch.randint(n_states, (n,), generator=g)
        a = torch.randint(n_actions, (n,), generator=g)
        s2 = torch.multinomial(kernel[s, a], 1, generator=g).squeeze(-1)
        eye_s, eye_a = torch.eye(n_states), torch.eye(n_actions)
        return TensorDict(
            {
                "observation": eye_s[s],
                "action": eye_a[a],
                ("next", "observation"): eye_s[s2],
                "s_id": s,
                "a_id": a,
                "s2_id": s2,
            },
            batch_size=[n],
        )

    return p_b, p_d, draw(n_offline, p_b), draw(n_online, p_d)


def kernel_kl(batches: TensorDict, kernel: Tensor) -> tuple[float, int]:
    """Mean over ``(s, a)`` of ``KL(kernel(.|s, a) || empirical(.|s, a))`` of sampled batches of :func:`discrete_mdp`.

    The empirical distribution is smoothed by adding 1/2 to every count (Jeffreys), which keeps the KL finite.

    Returns:
        ``(mean KL, the smallest number of sampled rows of any (s, a) pair)``: the plug-in KL over ``K`` outcomes
        has a bias of order ``(K - 1) / (2 n)`` with ``n`` rows per pair, from which tests derive their margins.

    Examples:
        >>> p_b, p_d, offline, online = discrete_mdp(n_offline=5000, n_online=10)
        >>> kl_b, n = kernel_kl(offline, p_b)
        >>> kl_d, _ = kernel_kl(offline, p_d)
        >>> kl_b < kl_d, n > 300
        (True, True)
    """
    n_states, n_actions = kernel.shape[:2]
    counts = torch.zeros(n_states, n_actions, n_states)
    counts.index_put_(
        (batches["s_id"], batches["a_id"], batches["s2_id"]),
        torch.ones(len(batches)),
        accumulate=True,
    )
    emp = (counts + 0.5) / (counts + 0.5).sum(-1, keepdim=True)
    kl = (kernel * (kernel.clamp_min(1e-12).log() - emp.log())).sum(-1)
    return float(kl.mean()), int(counts.sum(-1).min())


#: The number of states of :func:`masked_chain`, its terminal goal (the last state) included.
CHAIN_STATES = 4


def masked_chain(action_dtype: torch.dtype = torch.bool) -> TensorDict:
    """A deterministic chain with one never-available action, for tests of discrete-action learners (issue 17).

    One-hot states ``0, 1, 2`` and a terminal goal ``3``; three actions: ``0`` moves right (reward 1 on reaching
    the goal, which terminates), ``1`` stays (reward 0.05), ``2`` is masked out everywhere (``action_mask`` and
    ``("next", "action_mask")`` are ``[True, True, False]``) and never in the data. Every (state, available action)
    pair appears once. With discount ``gamma`` the optimal action is "right" in every state and
    :math:`Q^*(s, \text{right}) = \\gamma^{2 - s}`; staying is worse everywhere.

    Args:
        action_dtype: dtype of the one-hot actions (bool as TorchRL's ``OneHot``, int64 as datasets store them).

    Returns:
        A TensorDict of 6 transitions.

    Examples:
        >>> chain = masked_chain()
        >>> chain.shape, chain["action"].sum(0).tolist(), bool(chain["next", "terminated"].sum() == 1)
        (torch.Size([6]), [3, 3, 0], True)
    """
    obs, actions, next_obs, rewards, terms = [], [], [], [], []
    eye = torch.eye(CHAIN_STATES)
    for s in range(CHAIN_STATES - 1):
        for a in (0, 1):
            nxt = s + 1 if a == 0 else s
            obs.append(eye[s])
            next_obs.append(eye[nxt])
            actions.append(a)
            rewards.append(1.0 if nxt == CHAIN_STATES - 1 else (0.05 if a == 1 else 0.0))
            terms.append(nxt == CHAIN_STATES - 1)
    n = len(obs)
    mask = torch.tensor([[True, True, False]]).expand(n, 3).clone()
    terminated = torch.tensor(terms).unsqueeze(-1)
    return TensorDict(
        {
            "observation": torch.stack(obs),
            "action": torch.nn.functional.one_hot(torch.tensor(actions), 3).to(action_dtype),
            "action_mask": mask,
            ("next", "observation"): torch.stack(next_obs),
            ("next", "action_mask"): mask.clone(),
            ("next", "reward"): torch.tensor(rewards).unsqueeze(-1),
            ("next", "done"): terminated.clone(),
            ("next", "terminated"): terminated,
        },
        [n],
    )
