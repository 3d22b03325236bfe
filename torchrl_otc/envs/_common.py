"""Spec pieces shared by the package's pure-torch environments."""

from __future__ import annotations

import torch
from torchrl.data import Categorical, Composite


def done_spec(shape: tuple[int, ...], device: torch.device | str | None) -> Composite:
    """TorchRL's ``done`` / ``terminated`` / ``truncated`` booleans of shape ``[*shape, 1]``.

    Examples:
        >>> sorted(done_spec((4,), "cpu").keys())
        ['done', 'terminated', 'truncated']
    """
    flag = Categorical(2, (*shape, 1), dtype=torch.bool, device=device)
    return Composite(
        done=flag.clone(),
        terminated=flag.clone(),
        truncated=flag.clone(),
        shape=shape,
        device=device,
    )
