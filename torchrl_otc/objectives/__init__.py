"""Loss modules and builders of the base offline RL algorithms (OTC paper section 4, Table 3).

BCQ and AWAC are this package's (TorchRL has neither); CQL is TorchRL's ``CQLLoss`` with the uniform actions of its
conservative term drawn in the action bounds (:class:`BoundedCQLLoss`) and TD3+BC is TorchRL's ``TD3BCLoss``, built
by :func:`make_algorithm` with the same configs.
"""

from torchrl_otc.objectives.awac import AWACLoss
from torchrl_otc.objectives.batched import BatchedTD3BC
from torchrl_otc.objectives.bcq import BCQActor, BCQLoss, BCQPerturbation
from torchrl_otc.objectives.builders import (
    Algorithm,
    BoundedTanh,
    DeterministicPolicy,
    make_algorithm,
    update_step,
)
from torchrl_otc.objectives.cql import BoundedCQLLoss
from torchrl_otc.objectives.transition_vae import TransitionVAELoss
from torchrl_otc.objectives.utils import ForeachSoftUpdate

__all__ = [
    "AWACLoss",
    "Algorithm",
    "BatchedTD3BC",
    "BCQActor",
    "BCQLoss",
    "BCQPerturbation",
    "BoundedCQLLoss",
    "BoundedTanh",
    "DeterministicPolicy",
    "ForeachSoftUpdate",
    "TransitionVAELoss",
    "make_algorithm",
    "update_step",
]
