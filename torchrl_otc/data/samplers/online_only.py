"""The "online only" baseline of OTC (Jiang & Lu, AAAI 2023, section 4.3, Figure 5): uniform over online rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tensordict.utils import NestedKey
from torchrl.data.replay_buffers.storages import Storage

from torchrl_otc.data.samplers._storage import (
    OnlineRowIndex,
    OnlineRowsSampler,
    backing,
    check_tensor_storage,
    keys_present,
    storage_device,
    to_storage_index,
)

__all__ = ["OnlineOnlySampler"]


class OnlineOnlySampler(OnlineRowsSampler):
    """Samples uniformly (with replacement) from the online rows of the merged storage.

    The "online only" baseline of the paper (section 4.3, Figure 5): the agent is tuned on the online
    transitions collected so far and ignores the offline data. Online rows are those whose boolean column
    ``online_key`` is true (the tuning loop writes it). While no online row exists (offline training) it falls
    back to uniform sampling of the whole storage and says so in ``info["online_only_uniform"]``.

    Keyword Args:
        online_key: key of the boolean column marking online rows. Defaults to ``"is_online"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
        >>> rb = TensorDictReplayBuffer(storage=LazyTensorStorage(100), sampler=OnlineOnlySampler(),
        ...                             batch_size=8)
        >>> _ = rb.extend(TensorDict({"x": torch.arange(10), "is_online": torch.arange(10) >= 7},
        ...                          batch_size=[10]))
        >>> bool((rb.sample()["x"] >= 7).all())
        True
    """

    info_prefix = "online_only_"

    def __init__(self, *, online_key: NestedKey = "is_online") -> None:
        self.online_key = online_key
        self._rows = OnlineRowIndex()

    def sample(self, storage: Storage, batch_size: int) -> tuple[Any, dict]:
        """Draws ``batch_size`` indices uniformly among the online rows."""
        storage = check_tensor_storage(storage, "OnlineOnlySampler")
        n = len(storage)
        if n == 0:
            raise RuntimeError("Cannot sample from an empty storage.")
        if self.online_key not in backing(storage).keys(include_nested=True):
            raise KeyError(
                f"OnlineOnlySampler: the storage has no key {self.online_key!r} marking online rows; keys "
                f"present: {keys_present(storage)}. Write a boolean column {self.online_key!r} with every "
                f"transition (True for online data)."
            )
        rows = self._rows.rows(storage, self.online_key)[0]
        device = storage_device(storage)
        if rows.numel() == 0:
            flat = torch.randint(n, (batch_size,), generator=self._rng, device=device)
            return to_storage_index(storage, flat), {"online_only_uniform": torch.tensor(True)}
        flat = rows[torch.randint(rows.numel(), (batch_size,), generator=self._rng, device=device)]
        return to_storage_index(storage, flat), {"online_only_uniform": torch.tensor(False)}

    def _empty(self) -> None:
        self._rows.invalidate()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return

    def dumps(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    def loads(self, path: str | Path) -> None:
        return

    def __repr__(self) -> str:
        return f"{type(self).__name__}(online_key={self.online_key!r})"
