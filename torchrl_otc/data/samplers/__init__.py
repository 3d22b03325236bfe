"""Samplers for online tuning: Online Transition Correction (OTC) and the baselines it is compared with.

One file per sampler, as in :mod:`torchrl.data.replay_buffers.samplers`:

* :class:`OTCSampler` (``otc.py``) implements Algorithm 1, lines 10-14 of Jiang & Lu, "Online Tuning for Offline
  Decentralized Multi-Agent Reinforcement Learning" (AAAI 2023), section 3.2, eq. 1-4: rank-based prioritised
  sampling of the merged offline + online data by how well each transition agrees with its best-matched online
  transition; :func:`argmin_random_ties` (eq. 1) and :func:`rank_priorities` (eq. 3) are its math (``ranking.py``).
  With ``online_fraction`` set it is *decomposed* OTC: a fixed online share per batch, eq. 3 choosing among
  offline rows only; the share's check, its adaptive rule and the joining of the two parts are in
  ``decomposed.py``.
* :class:`OnlineOnlySampler` (``online_only.py``) samples uniformly from the online rows of the merged data.
* :class:`MixSampler` (``mix.py``) draws a fixed share of every batch from the online rows and the rest from the
  offline rows (the matched-mix control of OTC: the same online share, without OTC's choice of offline rows).
* :class:`BalancedReplaySampler` (``balanced_replay.py``) samples by an estimated density ratio of online to
  offline data (Lee et al., CoRL 2021), the offline-to-online baseline.
* Uniform sampling from the merged data is TorchRL's :class:`~torchrl.data.RandomSampler`.

``_storage.py`` holds the storage helpers they share (checks, column reads, index conversion, online rows).
"""

from torchrl_otc.data.samplers.balanced_replay import BalancedReplaySampler
from torchrl_otc.data.samplers.mix import MixSampler
from torchrl_otc.data.samplers.online_only import OnlineOnlySampler
from torchrl_otc.data.samplers.otc import OTCSampler
from torchrl_otc.data.samplers.ranking import argmin_random_ties, rank_priorities

__all__ = [
    "BalancedReplaySampler",
    "MixSampler",
    "OTCSampler",
    "OnlineOnlySampler",
    "argmin_random_ties",
    "rank_priorities",
]
