"""One class per base algorithm of the OTC paper (section 4, Table 3), as TorchRL keeps them under trainers.

Each :class:`Algorithm` builds one agent's networks and loss, owns its optimisers (one per part) and target
updater, takes one update step in its reference's order and computes the values ``Q(s, a)`` and ``V(s)`` that
the value distance ``d_q`` (section 3.3) reads (it follows
:class:`~torchrl_otc.modules.distances.ValueFunctions`). :class:`BatchedTD3BC` updates N TD3+BC agents in one
batched call.
"""

from torchrl_otc.trainers.algorithms.awac import AWAC
from torchrl_otc.trainers.algorithms.base import Algorithm
from torchrl_otc.trainers.algorithms.bcq import BCQ
from torchrl_otc.trainers.algorithms.cql import CQL
from torchrl_otc.trainers.algorithms.networks import BoundedTanh, DeterministicPolicy
from torchrl_otc.trainers.algorithms.registry import ALGORITHMS, make_algorithm
from torchrl_otc.trainers.algorithms.td3bc import TD3BC
from torchrl_otc.trainers.algorithms.td3bc_batched import BatchedTD3BC

__all__ = [
    "ALGORITHMS",
    "AWAC",
    "Algorithm",
    "BCQ",
    "BatchedTD3BC",
    "BoundedTanh",
    "CQL",
    "DeterministicPolicy",
    "TD3BC",
    "make_algorithm",
]
