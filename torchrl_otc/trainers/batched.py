"""Several learners (agents x seeds) updated by one batched call, with the numbers of separate updates.

:class:`BatchedLearners` groups :class:`~torchrl_otc.trainers.AgentLearner` s of one algorithm (the agents of a
task, the seeds of a grid cell): each still samples with its own sampler, generator and random stream; the gradient
steps run as one call of the algorithm's batched class (:data:`BATCHED_ALGORITHMS`:
:class:`~torchrl_otc.trainers.algorithms.BatchedBCQ`, :class:`~torchrl_otc.trainers.algorithms.BatchedAWAC`,
:class:`~torchrl_otc.trainers.algorithms.BatchedCQL`, :class:`~torchrl_otc.trainers.algorithms.BatchedTD3BC`) on
stacked copies of their parameters.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from torchrl_otc.trainers.algorithms import (
    BatchedAWAC,
    BatchedBCQ,
    BatchedCQL,
    BatchedTD3BC,
)
from torchrl_otc.trainers.learner import AgentLearner

__all__ = ["BATCHED_ALGORITHMS", "BatchedLearners"]

#: The batched class of each algorithm, by config name. Each takes the learners' algorithms, has
#: ``draw_noise(batch)`` (one learner's random tensors, drawn in its stream), ``update(batches, noise)`` (``[N, B]``
#: batches, stacked noise; per-learner values ``[N]``) and ``write_back()``.
BATCHED_ALGORITHMS: dict[str, type[Any]] = {
    "bcq": BatchedBCQ,
    "awac": BatchedAWAC,
    "cql": BatchedCQL,
    "td3bc": BatchedTD3BC,
}

_BATCH_KEYS = ("observation", "action", "next")


class BatchedLearners:
    """N :class:`AgentLearner` s of one algorithm updated by one batched call; the numbers of N separate updates.

    :meth:`update` does what :meth:`AgentLearner.update` does for each learner, in the same order of random draws:
    inside the learner's random stream it samples the learner's batch (its own sampler and generator) and draws the
    algorithm's random tensors (``draw_noise`` of the batched class: TD3's target noise, BCQ's VAE latents, AWAC's
    and CQL's policy samples, CQL's uniform actions); then one batched step updates every learner on stacked copies
    of the parameters (each with its own Adam moments, clipped per learner and per part); then, in each learner's
    stream again, the sampler's learned parts take their step. Call :meth:`write_back` before using the learners'
    own algorithms again (acting, checkpointing, separate updates).

    Args:
        learners: learners of one algorithm with identical configs and sizes, at the same update count, on one
            device.

    Raises:
        ValueError: no learners, learners on several devices, or algorithms that differ in kind, config, update
            count or sizes (the message names what differs).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, RandomSampler, Unbounded
        >>> from torchrl_otc.configs.algorithms import BCQConfig
        >>> data = TensorDict({"observation": torch.randn(500, 3), "action": torch.rand(500, 1) * 2 - 1,
        ...     ("next", "observation"): torch.randn(500, 3), ("next", "reward"): torch.randn(500, 1),
        ...     ("next", "done"): torch.zeros(500, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(500, 1, dtype=torch.bool)}, [500])
        >>> learners = [AgentLearner(BCQConfig(hidden_sizes=(16,)), Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)),
        ...                          seed=i, merged_capacity=1000, sampler_factory=lambda online: RandomSampler())
        ...             for i in range(2)]
        >>> for learner in learners:
        ...     learner.add_offline(data)
        >>> group = BatchedLearners(learners)
        >>> metrics = group.update()
        >>> len(metrics), group.num_agents, sorted(metrics[0])
        (2, 2, ['loss_actor', 'loss_qvalue', 'loss_vae', 'online_share'])
        >>> group.write_back()
    """

    def __init__(self, learners: Sequence[AgentLearner]) -> None:
        self.learners = list(learners)
        if not self.learners:
            raise ValueError("BatchedLearners needs at least one learner.")
        devices = [str(learner.device) for learner in self.learners]
        if len(set(devices)) != 1:
            raise ValueError(f"BatchedLearners needs all learners on one device; got {devices}.")
        name = self.learners[0].algorithm.name
        if any(getattr(learner.algorithm, "discrete_actions", False) for learner in self.learners):
            raise ValueError(
                f"No batched class for discrete-action {name!r} (the batched classes are for continuous actions); "
                f"update these learners one by one."
            )
        if name not in BATCHED_ALGORITHMS:
            raise ValueError(
                f"No batched class for algorithm {name!r}; batched algorithms: {', '.join(BATCHED_ALGORITHMS)}."
            )
        self.batched = BATCHED_ALGORITHMS[name]([learner.algorithm for learner in self.learners])

    @property
    def num_agents(self) -> int:
        """N."""
        return len(self.learners)

    def _draw(self, advice: str) -> tuple[list[Any], Any, dict[str, torch.Tensor], list[float]]:
        """Each learner's batch and random draws, in its own stream and in the order of its separate update.

        Args:
            advice: what to do instead, for the refusal of importance-weighted batches.

        Returns:
            The batches, their stacked ``observation``/``action``/``next`` keys, the stacked draws of
            :meth:`draw_noise` and each learner's sampling time in milliseconds.

        Raises:
            ValueError: a batch carries ``priority_weight``, which the batched step would ignore.
        """
        batches, noise, sample_ms = [], [], []
        for learner in self.learners:
            with learner.random_stream():
                start = time.perf_counter()
                batch = learner.sample()
                sample_ms.append((time.perf_counter() - start) * 1e3)
                noise.append(self.batched.draw_noise(batch))
            if "priority_weight" in batch.keys():
                raise ValueError(
                    f"The batched update does not weight the losses by 'priority_weight'; the batches carry it. "
                    f"{advice}"
                )
            batches.append(batch)
        stacked = torch.stack([batch.select(*_BATCH_KEYS) for batch in batches])
        return (
            batches,
            stacked,
            {k: torch.stack([d[k] for d in noise]) for k in noise[0]},
            sample_ms,
        )

    def update(self, *, train_sampler: bool = True) -> list[dict[str, float]]:
        """One update of every learner, as :meth:`AgentLearner.update` would give it.

        Keyword Args:
            train_sampler: also train the sampler's learned parts (as :meth:`AgentLearner.update`).

        Returns:
            each learner's metrics: its losses (``loss*``), the ``distance/`` and ``sampler/`` metrics of its
            learned parts, and ``online_share`` (as :meth:`AgentLearner.update` computes it).

        Raises:
            ValueError: a batch carries importance weights (``priority_weight``), which the batched step ignores.
        """
        batches, stacked, noise, _ = self._draw("Update these learners separately.")
        out = self.batched.update(stacked, noise)
        extra: list[dict[str, float]] = []
        for learner, batch in zip(self.learners, batches):
            parts: dict[str, float] = {}
            if train_sampler:
                with learner.random_stream():
                    parts = learner.sampler_update(batch)
            extra.append({**parts, **self._online_share(learner, batch)})
            learner.num_updates += 1
        losses = {k: v.tolist() for k, v in out.items() if k.startswith("loss")}
        return [
            {**{k: v[i] for k, v in losses.items()}, **extra[i]} for i in range(self.num_agents)
        ]

    @staticmethod
    def _online_share(learner: AgentLearner, batch: Any) -> dict[str, float]:
        keys = batch.keys()
        if "otc_online_share" in keys:
            return {"online_share": float(batch.get("otc_online_share").float().mean())}
        if learner.online_key is not None and learner.online_key in keys:
            return {"online_share": float(batch.get(learner.online_key).float().mean())}
        return {}

    def write_back(self) -> None:
        """Copies the batched parameters, targets and optimiser states into each learner's algorithm."""
        self.batched.write_back()
