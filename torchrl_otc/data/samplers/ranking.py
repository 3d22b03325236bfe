"""The math of OTC's sampler (Jiang & Lu, AAAI 2023, section 3.2): eq. (1)'s matching and eq. (3)'s priorities.

Pure functions, exposed for tests and for users who build their own samplers; :class:`~torchrl_otc.OTCSampler`
uses them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["argmin_random_ties", "break_ties", "rank_priorities"]


def argmin_random_ties(
    distances: Tensor, generator: torch.Generator | None = None, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Row-wise argmin with ties broken uniformly at random (eq. 1: "if there is more than one best-matched
    transition, we uniformly select one").

    Ties are rare with continuous features, so the random choice is only made for the rows that have them.

    Args:
        distances: ``[B, D]`` non-negative distances (``inf`` allowed).
        generator: the random generator for the tie-breaking.
        weights: ``[D]`` multiplicities of the columns (a column standing for a transition drawn several times);
            tied columns are chosen in proportion to them, which is the uniform choice among the copies.

    Returns:
        ``(index [B], value [B])``: the chosen column and its distance.

    Examples:
        >>> import torch
        >>> argmin_random_ties(torch.tensor([[3.0, 1.0, 2.0]]))
        (tensor([1]), tensor([1.]))
    """
    values, index = distances.min(-1)
    counts = (distances == values.unsqueeze(-1)).sum(-1)
    return break_ties(distances, values, index, counts, generator, weights), values


def break_ties(
    distances: Tensor,
    values: Tensor,
    index: Tensor,
    counts: Tensor,
    generator: torch.Generator | None,
    weights: Tensor | None = None,
) -> Tensor:
    """Replaces ``index`` by a (weighted) uniform choice among the minima in the rows that have more than one.

    The second half of :func:`argmin_random_ties`, for callers that computed the row minima already (a compiled
    kernel fuses them with the distances: :class:`~torchrl_otc.modules.Comparison`).

    Args:
        distances: ``[B, D]`` distances.
        values: ``[B]`` their row minima.
        index: ``[B]`` a column reaching each minimum.
        counts: ``[B]`` how many columns reach it.
        generator: the random generator for the tie-breaking.
        weights: ``[D]`` multiplicities of the columns (see :func:`argmin_random_ties`).

    Returns:
        ``[B]`` the chosen columns.

    Examples:
        >>> import torch
        >>> d = torch.tensor([[1.0, 1.0, 2.0]])  # columns 0 and 1 tie; column 0 stands for no draw
        >>> break_ties(d, torch.tensor([1.0]), torch.tensor([0]), torch.tensor([2]), None, torch.tensor([0, 1, 1]))
        tensor([1])
    """
    tied = (counts > 1).nonzero().squeeze(-1)
    if tied.numel():
        is_min = (distances[tied] == values[tied].unsqueeze(-1)).float()
        if weights is not None:
            is_min = is_min * weights.to(is_min)
        index = index.clone()
        index[tied] = torch.multinomial(is_min, 1, generator=generator).squeeze(-1)
    return index


def rank_priorities(distances: Tensor, alpha: float | Tensor) -> tuple[Tensor, Tensor]:
    """Rank-based priorities of eq. (3): ``P(j) = p_j^alpha / sum_m p_m^alpha`` with ``p_j = 1 / rank(j)``.

    Rank 1 is the smallest distance. Tied distances share their ranks fairly: a group of ``g`` equal distances
    that occupies ranks ``r .. r + g - 1`` gives each member the mean of ``(1/r)^alpha .. (1/(r+g-1))^alpha``.
    This keeps the group's total probability what any ordering of the ties would give, and gives equal
    distances equal probability (the paper's f-function is a function of the distance alone). Without ties this
    is exactly eq. (3).

    Args:
        distances: ``[B]`` next-state distances ``d(s', s'*)`` (``inf`` allowed: ranked last).
        alpha: the exponent ``alpha >= 0``; ``0`` gives uniform probabilities.

    Returns:
        ``(probabilities [B], rank [B])``; ``rank`` is the competition rank (ties share the smallest rank).

    Examples:
        >>> import torch
        >>> probs, rank = rank_priorities(torch.tensor([0.3, 0.1, 0.2]), alpha=1.0)
        >>> rank
        tensor([3, 1, 2])
        >>> torch.allclose(probs, torch.tensor([1 / 3, 1.0, 1 / 2]) / (1 + 1 / 2 + 1 / 3))
        True
    """
    n = distances.shape[0]
    device = distances.device
    ordered, order = torch.sort(distances, stable=True)
    positions = torch.arange(1, n + 1, device=device, dtype=torch.float64)
    base = positions.pow(-torch.as_tensor(alpha, dtype=torch.float64, device=device))
    rank = torch.empty(n, dtype=torch.long, device=device)
    priority = torch.empty_like(base)
    new_group = torch.ones(n, dtype=torch.bool, device=device)
    if n > 1:
        new_group[1:] = ordered[1:] != ordered[:-1]
    if bool(new_group.all()):  # no ties (the usual case with continuous features)
        priority[order] = base
        rank[order] = positions.long()
    else:
        group = new_group.cumsum(0) - 1
        n_groups = int(group[-1]) + 1
        group_sum = torch.zeros(n_groups, dtype=torch.float64, device=device)
        group_sum.scatter_add_(0, group, base)
        group_count = torch.bincount(group, minlength=n_groups).to(torch.float64)
        priority[order] = (group_sum / group_count)[group]
        rank[order] = positions.long()[new_group][group]
    return (priority / priority.sum()).to(torch.float32), rank
