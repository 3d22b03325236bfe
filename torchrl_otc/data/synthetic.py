"""Small synthetic transition sets with known dynamics, for tutorials, tests and sampler measurements.

The point-mass transitions follow the dynamics of the non-stationary navigation task of section 4.5: a point in
``[-1, 1]^d`` moves by ``beta * a`` for an action ``a`` in ``[-1, 1]^d``. Offline data draws ``beta`` uniformly
from ``[-0.2, 0.2]`` (so the expected move of every action is zero); online data has one ``beta``. The true
``beta`` of every row is stored under ``"beta"``, so the share of sampled rows with the online dynamics can be read
off a batch.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

__all__ = ["point_mass_transitions"]


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
