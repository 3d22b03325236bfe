"""Offline datasets: one on-disk format, builders (random / medium / medium-replay) and foreign-format loaders.

* :mod:`.storage`: the format (memory-mapped TorchRL transitions + ``metadata.json`` with a checksum),
  :func:`save_dataset` (atomic), :func:`load_offline_dataset` (read-only), :func:`check_dataset_for_task`,
  :class:`OfflineDataset`.
* :mod:`.builders`: :func:`build_dataset` (``otc data build``).
* :mod:`torchrl_otc.data.datasets.behaviour`: the behaviour policies of ``medium`` / ``medium-replay`` and their
  checkpoints; they are trained by :mod:`torchrl_otc.trainers.behaviour`, which also builds those kinds.
* :mod:`.foreign`: :func:`load_d4rl_hdf5`, :func:`load_minari` (h5py only).

Joint datasets become the agents' decentralised datasets with :func:`torchrl_otc.data.transforms.split_agents`
or the :class:`~torchrl_otc.data.transforms.AgentView` replay-buffer transform (section 4.1).
"""

from torchrl_otc.data.datasets.builders import KINDS, build_dataset, collect_transitions
from torchrl_otc.data.datasets.foreign import load_d4rl_hdf5, load_minari
from torchrl_otc.data.datasets.storage import (
    REQUIRED_KEYS,
    DatasetError,
    OfflineDataset,
    check_dataset_for_task,
    content_checksum,
    load_dataset,
    load_offline_dataset,
    prepare_dataset_folder,
    read_metadata,
    save_dataset,
    validate_transitions,
)

__all__ = [
    "KINDS",
    "REQUIRED_KEYS",
    "DatasetError",
    "OfflineDataset",
    "build_dataset",
    "check_dataset_for_task",
    "collect_transitions",
    "content_checksum",
    "load_d4rl_hdf5",
    "load_dataset",
    "load_offline_dataset",
    "load_minari",
    "prepare_dataset_folder",
    "read_metadata",
    "save_dataset",
    "validate_transitions",
]
