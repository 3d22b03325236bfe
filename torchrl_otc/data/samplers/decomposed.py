"""Decomposed OTC: a fixed online share of every batch, the rest chosen by eq. (3) among offline rows only.

The paper's sampler (Jiang & Lu, AAAI 2023, section 3.2, eq. 1 and 3) couples two effects: *how many* online rows
a batch gets (an online candidate matches its own copy at distance 0 and takes the top ranks) and *which* offline
rows it keeps (those whose next state agrees with the best-matched online transition). With
``OTCSampler(online_fraction=F)`` the two are separated: ``round(F * batch_size)`` rows come uniformly from the
online rows of the merged storage (as :class:`~torchrl_otc.MixSampler` draws them), the rest by eq. (3) over
``|B|`` candidates drawn from the *offline* rows only, so alpha controls only the offline selection.

This module holds the pieces of that draw that are not OTC's scoring (which stays in
:class:`~torchrl_otc.OTCSampler`): the check of the share, the adaptive share driven by eq. (4)'s
:math:`\\mathbb{D}_k`, and the joining of the two parts into one shuffled batch.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "OnlineSource",
    "ADAPTIVE",
    "DEFAULT_FRACTION_RANGE",
    "adaptive_online_fraction",
    "check_online_fraction",
    "join_online_rows",
]

#: Where the online part of a batch comes from: every deployment so far (``"all"``) or the latest (``"latest"``).
OnlineSource = Literal["all", "latest"]

#: The value of ``online_fraction`` that lets eq. (4)'s :math:`\mathbb{D}_k` set the share per deployment.
ADAPTIVE = "adaptive"
#: ``(f_min, f_max)``: the clamp of the adaptive share. Neither part of the batch may vanish for good on one
#: noisy :math:`\mathbb{D}_k` estimate.
DEFAULT_FRACTION_RANGE = (0.05, 0.95)

#: What the per-row ``otc_*`` keys hold for the online rows of a decomposed batch (they are not ranked):
#: distances 0 (an online row agrees with the online dynamics: its self-match distance in the coupled procedure),
#: rank 0 (no rank), match index -1 (no match in the online buffer), importance weight 1 (uniform in its part).
#: ``otc_prob`` is the probability of the row in one draw of the online part (``1 / number of online rows``).
_ONLINE_FILL = {"otc_match_index": -1, "priority_weight": 1.0}


def check_online_fraction(value: Any, who: str = "OTCSampler") -> float | str | None:
    """``online_fraction`` as the sampler holds it: ``None`` (the paper's coupled procedure), a number in
    ``[0, 1)``, or ``"adaptive"``.

    Args:
        value: the value given.
        who: how the error message names the caller.

    Returns:
        ``None``, the float, or ``"adaptive"``.

    Raises:
        ValueError: a number outside ``[0, 1)`` or a word other than ``"adaptive"``.

    Examples:
        >>> check_online_fraction("0.25"), check_online_fraction(None), check_online_fraction("adaptive")
        (0.25, None, 'adaptive')
        >>> check_online_fraction(1.0)
        Traceback (most recent call last):
        ...
        ValueError: OTCSampler: online_fraction must be a number in [0, 1) or 'adaptive'; got 1.0. ...
    """
    if value is None or value == ADAPTIVE:
        return value
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = math.nan
    if isinstance(value, bool) or not 0.0 <= fraction < 1.0:
        raise ValueError(
            f"{who}: online_fraction must be a number in [0, 1) or 'adaptive'; got {value!r}. Leave it unset "
            f"(None) for the paper's coupled sampler, and use OnlineOnlySampler for online rows only."
        )
    return fraction


def adaptive_online_fraction(
    d_k: float, d_0: float, bounds: tuple[float, float] = DEFAULT_FRACTION_RANGE
) -> float:
    """The online share of deployment ``k`` from eq. (4)'s :math:`\\mathbb{D}_k`:
    ``F_k = clamp(D_k / (D_k + D_0), f_min, f_max)``.

    :math:`\\mathbb{D}_k` (section 3.4) is the mean next-state distance of the offline rows to their best-matched
    online transitions: how far the offline data's dynamics are from the latest deployment's. The paper lets it
    scale alpha (eq. 4: more correction when the gap grows); here it also scales how much of the batch is online
    data, by the same prior: the further the offline dynamics are from the online ones, the less the offline rows
    can be trusted. The map is

    * relative to ``D_0`` (the first deployment's :math:`\\mathbb{D}`), as eq. (4) is relative to
      :math:`\\mathbb{D}_{k-1}`, so it does not depend on the distance's scale: ``F_1 = 1/2``, and ``F_k``
      rises to 2/3 when the gap doubles, falls to 1/3 when it halves;
    * monotone increasing in ``D_k`` and bounded in ``[0, 1)`` before the clamp; the clamp to
      ``[f_min, f_max]`` keeps both parts of the batch alive on a noisy estimate (as ``alpha_range`` does for
      alpha);
    * deterministic (a function of the two numbers). Non-finite or negative inputs, or ``D_k + D_0 = 0``, give
      ``1/2`` clamped (no evidence either way).

    Args:
        d_k: :math:`\\mathbb{D}_k` of this deployment.
        d_0: :math:`\\mathbb{D}` of the first deployment.
        bounds: ``(f_min, f_max)`` with ``0 <= f_min <= f_max < 1``.

    Returns:
        The share ``F_k``.

    Examples:
        >>> adaptive_online_fraction(1.0, 1.0), adaptive_online_fraction(2.0, 1.0), adaptive_online_fraction(0.0, 1.0)
        (0.5, 0.6666666666666666, 0.05)
    """
    lo, hi = bounds
    total = d_k + d_0
    valid = math.isfinite(total) and d_k >= 0 and d_0 >= 0 and total > 0
    share = d_k / total if valid else 0.5
    return float(min(max(share, lo), hi))


def join_online_rows(
    online: Tensor,
    offline: Tensor,
    info: dict[str, Any],
    online_prob: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, dict[str, Any]]:
    """One shuffled batch of the online rows ``online`` and the offline rows ``offline`` drawn by eq. (3).

    The per-row entries of ``info`` (those with ``offline``'s length, from the offline draw) get values for the
    online rows (distances 0, rank 0, ``otc_prob = online_prob``, match index -1, importance weight 1), then rows
    and entries are permuted together by one ``randperm`` (:class:`~torchrl_otc.MixSampler` shuffles with it too). Per-batch
    entries (0-d tensors) are kept.

    Args:
        online: ``[n_on]`` flat storage indices of the online rows.
        offline: ``[n_off]`` flat storage indices of the offline rows.
        info: the offline draw's ``info``.
        online_prob: probability of an online row in one draw of the online part.
        generator: the sampler's random generator.

    Returns:
        ``(flat indices [n_on + n_off], info)``.

    Examples:
        >>> import torch
        >>> info = {"otc_rank": torch.tensor([2, 1]), "otc_alpha": torch.tensor(1.0)}
        >>> flat, info = join_online_rows(torch.tensor([7]), torch.tensor([3, 4]), info, 0.5, None)
        >>> sorted(flat.tolist()), sorted(info["otc_rank"].tolist()), info["otc_alpha"].item()
        ([3, 4, 7], [0, 1, 2], 1.0)
    """
    n_on, n_off = online.numel(), offline.numel()
    perm = torch.randperm(n_on + n_off, generator=generator, device=offline.device)
    joined: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == n_off:
            fill = online_prob if key == "otc_prob" else _ONLINE_FILL.get(key, 0)
            head = value.new_full((n_on, *value.shape[1:]), fill)
            value = torch.cat([head, value])[perm]
        joined[key] = value
    return torch.cat([online, offline])[perm], joined
