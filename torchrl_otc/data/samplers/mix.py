"""The matched-mix control of OTC: a fixed online share of every batch, the rest offline, both uniform.

OTC (Jiang & Lu, AAAI 2023, section 3.2, eq. 3) raises the share of online rows in a batch *and* chooses among the
offline rows; :class:`MixSampler` at OTC's measured online share separates the two effects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tensordict.utils import NestedKey
from torchrl.data.replay_buffers.storages import Storage

from torchrl_otc.data.samplers._storage import (
    OnlineRowIndex,
    OnlineRowsSampler,
    check_online_columns,
    check_tensor_storage,
    storage_device,
    to_storage_index,
)
from torchrl_otc.data.samplers.decomposed import OnlineSource, join_online_rows

__all__ = ["MixSampler"]


class MixSampler(OnlineRowsSampler):
    """A fixed share of every batch from the online rows, the rest from the offline rows, both uniformly.

    The control that separates OTC's two effects (see the OTC paper, section 3.2 and eq. 3): OTC's ranking puts
    online rows (which match their own copies, or lie near the online data) at the top ranks, so it raises the
    *share* of online rows in a batch, and it also *chooses* among offline rows. A mix sampler at OTC's measured
    online share reproduces the first effect without the second: an OTC gain over uniform sampling that a
    matched mix also gets is a gain of the share, not of the correction.

    Every batch of ``batch_size`` rows holds ``round(online_fraction * batch_size)`` rows drawn uniformly with
    replacement from the online rows (those whose boolean column ``online_key`` is true; with
    ``source="latest"`` only those of the latest deployment, the largest value of the column ``deployment_key``)
    and the rest drawn uniformly with replacement from the offline rows; the batch is then shuffled. While the
    storage holds no online row (offline training), or no offline row, it samples the whole storage uniformly.

    Relation to TorchRL: :class:`torchrl.data.OfflineToOnlineReplayBuffer` (0.14.1) draws the same fixed
    count per batch (``round(offline_fraction * batch_size)`` offline rows, not a binomial number), but it is a
    buffer wrapping *two* buffers, not a sampler: it cannot be handed to ``ReplayBuffer(sampler=...)`` of the
    merged storage ``B_i^k`` that every strategy here samples from (Algorithm 1), and it has no "latest deployment
    only" source. This sampler keeps one merged storage, so the tuning loop, checkpoints and metrics do not change
    with the strategy.

    Args:
        online_fraction: the share of online rows, ``0 < online_fraction < 1``. May be changed between calls
            (the tuning loop sets the matched share per deployment).

    Keyword Args:
        online_key: key of the boolean column marking online rows. Defaults to ``"is_online"``.
        source: ``"all"`` (every online row so far) or ``"latest"`` (the latest deployment's rows only).
        deployment_key: key of the integer column numbering the deployments (read with ``source="latest"``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
        >>> rb = TensorDictReplayBuffer(storage=LazyTensorStorage(1000), sampler=MixSampler(0.25),
        ...                             batch_size=128)
        >>> _ = rb.extend(TensorDict({"x": torch.arange(1000), "is_online": torch.arange(1000) >= 990},
        ...                          batch_size=[1000]))
        >>> int(rb.sample()["is_online"].sum())  # round(0.25 * 128) online rows, whatever the storage holds
        32
    """

    def __init__(
        self,
        online_fraction: float,
        *,
        online_key: NestedKey = "is_online",
        source: OnlineSource = "all",
        deployment_key: NestedKey = "deployment",
    ) -> None:
        if source not in ("all", "latest"):
            raise ValueError(f"MixSampler: source must be 'all' or 'latest'; got {source!r}.")
        self.online_fraction = online_fraction
        self.online_key = online_key
        self.source = source
        self.deployment_key = deployment_key
        self._rows = OnlineRowIndex()

    @property
    def online_fraction(self) -> float:
        """The share of online rows in every batch, in (0, 1)."""
        return self._online_fraction

    @online_fraction.setter
    def online_fraction(self, value: float) -> None:
        value = float(value)
        if not 0.0 < value < 1.0:
            raise ValueError(
                f"MixSampler: online_fraction must lie in (0, 1); got {value}. Use OnlineOnlySampler for 1 "
                f"and RandomSampler (or an offline-only buffer) for 0."
            )
        self._online_fraction = value

    def sample(self, storage: Storage, batch_size: int) -> tuple[Any, dict]:
        """Draws ``round(online_fraction * batch_size)`` online rows and the rest offline rows, shuffled."""
        storage = check_tensor_storage(storage, "MixSampler")
        n = len(storage)
        if n == 0:
            raise RuntimeError(
                "Cannot sample from an empty storage: extend the buffer with offline data first."
            )
        latest = self.deployment_key if self.source == "latest" else None
        check_online_columns(storage, self.online_key, latest, "MixSampler")
        online, offline = self._rows.rows(storage, self.online_key, latest)
        device = storage_device(storage)
        if online.numel() == 0 or offline.numel() == 0:
            flat = torch.randint(n, (batch_size,), generator=self._rng, device=device)
            return to_storage_index(storage, flat), {}
        n_online = round(self.online_fraction * batch_size)
        pick_on = torch.randint(online.numel(), (n_online,), generator=self._rng, device=device)
        pick_off = torch.randint(
            offline.numel(), (batch_size - n_online,), generator=self._rng, device=device
        )
        flat, info = join_online_rows(online[pick_on], offline[pick_off], {}, 0.0, self._rng)
        return to_storage_index(storage, flat), info

    def _empty(self) -> None:
        self._rows.invalidate()

    def state_dict(self) -> dict[str, Any]:
        return {"online_fraction": self.online_fraction}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "online_fraction" in state_dict:
            self.online_fraction = state_dict["online_fraction"]

    def dumps(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "mix_sampler.json").write_text(json.dumps(self.state_dict()))

    def loads(self, path: str | Path) -> None:
        file = Path(path) / "mix_sampler.json"
        if file.exists():
            self.load_state_dict(json.loads(file.read_text()))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(online_fraction={self.online_fraction:g}, source={self.source!r}, "
            f"online_key={self.online_key!r})"
        )
