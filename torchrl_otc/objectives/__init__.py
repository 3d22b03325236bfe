"""Loss modules and builders of the base offline RL algorithms (OTC paper section 4, Table 3).

BCQ and AWAC are this package's (TorchRL has neither); CQL and TD3+BC are TorchRL's ``CQLLoss`` and ``TD3BCLoss``,
built by :func:`make_algorithm` with the same configs.
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
from torchrl_otc.objectives.transition_vae import TransitionVAELoss
from torchrl_otc.objectives.utils import ForeachSoftUpdate

__all__ = [
    "AWACLoss",
    "Algorithm",
    "BatchedTD3BC",
    "BCQActor",
    "BCQLoss",
    "BCQPerturbation",
    "BoundedTanh",
    "DeterministicPolicy",
    "ForeachSoftUpdate",
    "TransitionVAELoss",
    "make_algorithm",
    "update_step",
]
