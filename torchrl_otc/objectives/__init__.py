"""Loss modules of the base offline RL algorithms (OTC paper section 4, Table 3) and their helpers.

BCQ and AWAC are this package's (TorchRL has neither); CQL is TorchRL's ``CQLLoss`` with the uniform actions of its
conservative term drawn in the action bounds (:class:`BoundedCQLLoss`) and TD3+BC is TorchRL's ``TD3BCLoss``. The
algorithms that build these losses, own their optimisers and take their update steps are in
:mod:`torchrl_otc.trainers.algorithms`.
"""

from torchrl_otc.objectives.awac import AWACLoss
from torchrl_otc.objectives.bc import BCLoss, bc_init
from torchrl_otc.objectives.bcq import BCQActor, BCQLoss, BCQPerturbation
from torchrl_otc.objectives.cql import BoundedCQLLoss
from torchrl_otc.objectives.discrete_bcq import DiscreteBCQActor, DiscreteBCQLoss
from torchrl_otc.objectives.discrete_cql import MaskedDiscreteCQLLoss
from torchrl_otc.objectives.transition_vae import TransitionVAELoss
from torchrl_otc.objectives.trpo import (
    TRPOLoss,
    conjugate_gradient,
    gaussian_policy,
    trust_region_step,
)
from torchrl_otc.objectives.utils import ForeachSoftUpdate

__all__ = [
    "AWACLoss",
    "BCQActor",
    "BCLoss",
    "BCQLoss",
    "BCQPerturbation",
    "BoundedCQLLoss",
    "DiscreteBCQActor",
    "DiscreteBCQLoss",
    "ForeachSoftUpdate",
    "MaskedDiscreteCQLLoss",
    "TRPOLoss",
    "TransitionVAELoss",
    "bc_init",
    "conjugate_gradient",
    "gaussian_policy",
    "trust_region_step",
]
