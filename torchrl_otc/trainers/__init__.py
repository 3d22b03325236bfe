"""Per-agent learners and the online-tuning loop (Algorithm 1)."""

from torchrl_otc.trainers.batched import BatchedLearners
from torchrl_otc.trainers.learner import AgentLearner
from torchrl_otc.trainers.lockstep import LockstepTuners
from torchrl_otc.trainers.run import RunFolder
from torchrl_otc.trainers.tuning import DivergenceError, OnlineTuner

__all__ = [
    "AgentLearner",
    "BatchedLearners",
    "DivergenceError",
    "LockstepTuners",
    "OnlineTuner",
    "RunFolder",
]
