"""Pieces shared by the package's pure-torch environments (``nav/nonstationary``, ``coord/partner-modes``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
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


def reset_indices(
    tensordict: TensorDictBase | None, num_envs: int, device: torch.device
) -> torch.Tensor:
    """The environments to reset: those flagged by ``tensordict["_reset"]``, or all of them.

    Examples:
        >>> from tensordict import TensorDict
        >>> reset_indices(None, 3, torch.device("cpu"))
        tensor([0, 1, 2])
        >>> flags = TensorDict({"_reset": torch.tensor([[False], [True], [True]])}, [3])
        >>> reset_indices(flags, 3, torch.device("cpu"))
        tensor([1, 2])
    """
    if tensordict is None or "_reset" not in tensordict.keys():
        return torch.arange(num_envs, device=device)
    return tensordict.get("_reset").reshape(num_envs).nonzero().squeeze(-1)


def start_and_target(
    uniform: Callable[[int], torch.Tensor], n: int, min_distance: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` start points and ``n`` targets drawn by ``uniform``, each target redrawn until it lies at least
    ``min_distance`` from its start (the start is drawn first, then the targets, then the redraws).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> start, target = start_and_target(lambda n: torch.rand(n, 2, generator=g), 64, 0.3)
        >>> bool(((target - start).norm(dim=-1) >= 0.3).all())
        True
    """
    start, target = uniform(n), uniform(n)
    too_close = (target - start).norm(dim=-1) < min_distance
    while bool(too_close.any()):
        target[too_close] = uniform(int(too_close.sum()))
        too_close = (target - start).norm(dim=-1) < min_distance
    return start, target
