"""A torch random state of one's own: what keeps one agent's (or one module's) randomness out of another's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["RandomStream"]


class RandomStream:
    """A saved torch random state (CPU, and CUDA for a CUDA ``device``) swapped in around a block.

    Code run inside :meth:`activate` draws from this stream with the usual global functions (``torch.randn``,
    ``randn_like``, ``multinomial``...), and the caller's random state is restored afterwards
    (:func:`torch.random.fork_rng`): two streams never read or advance each other, whatever runs in between.

    Args:
        seed: seeds the stream.
        device: a CUDA device also gets its own CUDA state. Defaults to the CPU.

    Examples:
        >>> stream = RandomStream(0)
        >>> with stream.activate():
        ...     a = torch.rand(1)
        >>> stream.load_state_dict(RandomStream(0).state_dict())
        >>> with stream.activate():
        ...     b = torch.rand(1)
        >>> bool(a == b)
        True
    """

    def __init__(self, seed: int, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        devices = self._devices()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            self.cpu_state = torch.get_rng_state()
            self.cuda_state = torch.cuda.get_rng_state(self.device) if devices else None

    def _devices(self) -> list[torch.device]:
        return [self.device] if self.device.type == "cuda" else []

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Runs the block with this stream's state (saved back afterwards); restores the caller's."""
        devices = self._devices()
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_state)
            if devices:
                torch.cuda.set_rng_state(self.cuda_state, self.device)
            yield
            self.cpu_state = torch.get_rng_state()
            if devices:
                self.cuda_state = torch.cuda.get_rng_state(self.device)

    def state_dict(self) -> dict[str, Any]:
        """Copies of the CPU and CUDA states."""
        return {
            "cpu": self.cpu_state.clone(),
            "cuda": None if self.cuda_state is None else self.cuda_state.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` saved (copies)."""
        self.cpu_state = state["cpu"].clone()
        if state.get("cuda") is not None:
            self.cuda_state = state["cuda"].clone()
