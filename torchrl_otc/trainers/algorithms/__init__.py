"""One class per base algorithm of the OTC paper (section 4, Table 3), as TorchRL keeps them under trainers.

Each :class:`Algorithm` builds one agent's networks and loss, owns its optimisers (one per part) and target
updater, takes one update step in its reference's order and computes the values ``Q(s, a)`` and ``V(s)`` that
the value distance ``d_q`` (section 3.3) reads (it follows
:class:`~torchrl_otc.modules.distances.ValueFunctions`). :class:`BatchedBCQ`, :class:`BatchedAWAC`,
:class:`BatchedCQL` and :class:`BatchedTD3BC` update N learners of one algorithm (agents x seeds) in one batched call
with the numbers of N separate updates. :class:`DiscreteBCQ` and :class:`DiscreteCQL` are BCQ and CQL on one-hot
(discrete) actions, with the same configs; :func:`make_algorithm` builds them for a ``OneHot`` action spec.
:class:`BREMEN` is the model-based, deployment-efficient baseline of section 4.4 (continuous actions, no batched class).
"""

from torchrl_otc.trainers.algorithms.awac import AWAC
from torchrl_otc.trainers.algorithms.awac_batched import BatchedAWAC
from torchrl_otc.trainers.algorithms.base import Algorithm
from torchrl_otc.trainers.algorithms.batched_common import BatchedAlgorithm
from torchrl_otc.trainers.algorithms.bcq import BCQ
from torchrl_otc.trainers.algorithms.bcq_batched import BatchedBCQ
from torchrl_otc.trainers.algorithms.bremen import BREMEN
from torchrl_otc.trainers.algorithms.cql import CQL
from torchrl_otc.trainers.algorithms.cql_batched import BatchedCQL
from torchrl_otc.trainers.algorithms.discrete import DiscreteAlgorithm, DiscreteBCQ, DiscreteCQL
from torchrl_otc.trainers.algorithms.networks import BoundedTanh, DeterministicPolicy
from torchrl_otc.trainers.algorithms.registry import (
    ALGORITHMS,
    DISCRETE_ALGORITHMS,
    make_algorithm,
)
from torchrl_otc.trainers.algorithms.td3bc import TD3BC
from torchrl_otc.trainers.algorithms.td3bc_batched import BatchedTD3BC

__all__ = [
    "ALGORITHMS",
    "AWAC",
    "DISCRETE_ALGORITHMS",
    "Algorithm",
    "BCQ",
    "BREMEN",
    "BatchedAWAC",
    "BatchedAlgorithm",
    "BatchedBCQ",
    "BatchedCQL",
    "BatchedTD3BC",
    "BoundedTanh",
    "CQL",
    "DeterministicPolicy",
    "DiscreteAlgorithm",
    "DiscreteBCQ",
    "DiscreteCQL",
    "TD3BC",
    "make_algorithm",
]
