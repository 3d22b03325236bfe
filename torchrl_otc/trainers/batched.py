"""Several agents' learners updated by one batched call, with the numbers of separate updates.

:class:`BatchedLearners` groups TD3+BC :class:`~torchrl_otc.trainers.AgentLearner` s (agents of a task, or seeds):
each still samples with its own sampler, generator and random stream; the gradient steps run as one
:class:`~torchrl_otc.trainers.algorithms.BatchedTD3BC` call on stacked copies of their parameters (the batched path
of :class:`~torchrl_otc.trainers.algorithms.TD3BC`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torchrl_otc.trainers.algorithms import BatchedTD3BC
from torchrl_otc.trainers.learner import AgentLearner

__all__ = ["BatchedLearners"]


class BatchedLearners:
    """N TD3+BC :class:`AgentLearner` s updated by one batched call; the same numbers as N separate updates.

    Each learner still samples its own batch with its own sampler and generator, and draws its target-policy
    noise from its own random stream, exactly as :meth:`AgentLearner.update` would; the gradient steps of all
    agents then run as one :class:`~torchrl_otc.trainers.algorithms.BatchedTD3BC` call on stacked copies of their
    parameters. Call :meth:`write_back` before using the learners' own algorithms again (acting, checkpointing,
    separate updates).

    Args:
        learners: TD3+BC learners with identical configs, at the same update count, on one device.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, RandomSampler, Unbounded
        >>> from torchrl_otc.configs.algorithms import TD3BCConfig
        >>> data = TensorDict({"observation": torch.randn(500, 3), "action": torch.rand(500, 1) * 2 - 1,
        ...     ("next", "observation"): torch.randn(500, 3), ("next", "reward"): torch.randn(500, 1),
        ...     ("next", "done"): torch.zeros(500, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(500, 1, dtype=torch.bool)}, [500])
        >>> learners = [AgentLearner(TD3BCConfig(hidden_sizes=(16,)), Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)),
        ...                          seed=i, merged_capacity=1000, sampler_factory=lambda online: RandomSampler())
        ...             for i in range(2)]
        >>> for learner in learners:
        ...     learner.add_offline(data)
        >>> group = BatchedLearners(learners)
        >>> len(group.update()), group.num_agents
        (2, 2)
        >>> group.write_back()
    """

    def __init__(self, learners: Sequence[AgentLearner]) -> None:
        self.learners = list(learners)
        if len({learner.device for learner in self.learners}) != 1:
            raise ValueError("BatchedLearners needs all learners on one device.")
        self.batched = BatchedTD3BC([learner.algorithm for learner in self.learners])

    @property
    def num_agents(self) -> int:
        """N."""
        return len(self.learners)

    def update(self) -> list[dict[str, float]]:
        """One update of every agent; returns each agent's losses (and its ``distance/``, ``sampler/`` metrics)."""
        batches, noise, extra = [], [], []
        for learner in self.learners:
            with learner.random_stream():
                batch = learner.sample()
                noise.append(torch.randn_like(batch.get("action")))
            batches.append(batch.select("observation", "action", "next"))
        stacked = torch.stack(batches)
        out = self.batched.update(stacked, torch.stack(noise))
        for learner, batch in zip(self.learners, batches):
            with learner.random_stream():
                extra.append(learner.sampler_update(batch))
            learner.num_updates += 1
        columns = {k: v.tolist() for k, v in out.items()}
        return [
            {**{k: v[i] for k, v in columns.items()}, **extra[i]} for i in range(self.num_agents)
        ]

    def write_back(self) -> None:
        """Copies the batched parameters, targets and optimiser states into each learner's algorithm."""
        self.batched.write_back()
