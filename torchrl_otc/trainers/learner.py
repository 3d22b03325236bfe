"""One agent's decentralised learner: buffers, sampler, algorithm, random streams (OTC paper, Algorithm 1).

OTC tunes each agent i on its own: a merged buffer ``B_i^k`` (offline data plus every deployment's data), an
online buffer ``D_i^k`` (the latest deployment's data only), a sampler drawing the training batches from the
merged buffer (OTC's eq. 3 by default), and the base algorithm's networks and optimisers (section 4, Table 3).
:class:`AgentLearner` holds all of that for one agent, and nothing in it is shared with another agent: separate
parameters, optimisers, distance normalisers, random streams and gradient clipping.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer, TensorSpec
from torchrl.data.replay_buffers.samplers import Sampler

from torchrl_otc._random import RandomStream
from torchrl_otc.configs.algorithms import AlgorithmConfig
from torchrl_otc.data.samplers import MixSampler, OTCSampler
from torchrl_otc.modules.trainable import Fittable, TrainablePart
from torchrl_otc.trainers.algorithms import Algorithm, make_algorithm
from torchrl_otc.trainers.parts import legacy_part_states, trainable_part

__all__ = ["AgentLearner"]

logger = logging.getLogger(__name__)

SamplerFactory = Callable[[TensorDictReplayBuffer], Sampler]
#: Labels a batch: a boolean ``[N]`` mask of the rows with the current dynamics, or ``None`` (no labels); e.g.
#: :meth:`TaskSpec.right_dynamics <torchrl_otc.envs.TaskSpec.right_dynamics>` bound to a deployment.
RowLabels = Callable[[TensorDictBase], "torch.Tensor | None"]
#: The samplers' per-batch information that :meth:`AgentLearner.update` averages (``diagnostics=True``), under
#: the sampler's ``info_prefix`` (``otc_alpha``, ``balanced_replay_uniform``, ...).
_SAMPLER_INFO = ("alpha", "uniform", "online_share", "distance")


def _prefixed(prefix: str, metrics: Any) -> dict[str, float]:
    """``{prefix/name: float}`` of a learned part's metrics (a mapping of floats or scalar tensors, or ``None``)."""
    return {f"{prefix}/{k}": float(v) for k, v in dict(metrics or {}).items()}


class AgentLearner:
    r"""One agent's buffers, sampler, algorithm and random streams; one gradient step per :meth:`update`.

    OTC paper, Algorithm 1, for agent :math:`i`: the merged buffer :math:`\mathcal{B}_i^k = \mathcal{B}_i^{k-1}
    \cup \mathcal{D}_i^k` (offline data first, :meth:`add_offline`), the online buffer :math:`\mathcal{D}_i^k`
    holding the latest deployment only (:meth:`add_deployment` empties it first), a sampler attached to the merged
    buffer (by default :class:`~torchrl_otc.OTCSampler` reading the online buffer; it samples uniformly while the
    online buffer is empty, i.e. during offline training) and the algorithm from
    :func:`~torchrl_otc.trainers.algorithms.make_algorithm`.

    Isolation (section 3: decentralised agents): each learner owns its networks, optimisers, target networks and
    gradient clipping (``config.max_grad_norm``, applied to this agent's parts only); its sampler's distance
    normaliser is fitted on its own offline data; its random streams are its own: a
    :class:`torch.Generator` for the buffers and sampler, and a saved torch random state swapped in (with
    :func:`torch.random.fork_rng`) around every :meth:`update` and :meth:`act`, so that the losses' own sampling
    (target noise, VAE latents, policy samples) neither reads nor advances another agent's or the caller's
    stream.

    Learned parts of the sampler (d_e's transition CVAE in :class:`~torchrl_otc.EmbeddingDistance`, Balanced
    Replay's density-ratio network) are functions of their inputs and parameters; this learner trains them.
    :attr:`trained_parts` maps ``"distance"`` / ``"sampler"`` to a :class:`~torchrl_otc.modules.TrainablePart`
    (:func:`~torchrl_otc.trainers.parts.trainable_part`): its optimiser, random stream and counters are this
    learner's, fitted in :meth:`add_offline`, pretrained in :meth:`pretrain_sampler`, stepped in
    :meth:`sampler_update` and saved under ``"parts"`` by :meth:`state_dict`. A part that has ``update`` or
    ``pretrain`` without the whole protocol is refused with a :class:`TypeError`.

    Args:
        algorithm: ``"bcq"``, ``"awac"``, ``"cql"``, ``"td3bc"``, an
            :class:`~torchrl_otc.configs.algorithms.AlgorithmConfig` or an already built
            :class:`~torchrl_otc.trainers.algorithms.Algorithm`.
        observation_spec: the agent's observation spec (used when ``algorithm`` is not built).
        action_spec: the agent's bounded action spec (idem).

    Keyword Args:
        seed: seeds the parameters (when built here), the buffers' generator and the agent's torch stream.
        device: where the algorithm's parameters live and batches are sent. Defaults to the CPU.
        storage_device: where the buffers live. Defaults to the CPU.
        merged_capacity: capacity of the merged buffer. Defaults to 1,100,000 (a D4RL dataset plus ten
            deployments of 1 %).
        online_capacity: capacity of the online buffer. Defaults to 100,000.
        batch_size: transitions per update; ``None`` means ``config.batch_size`` (Table 3: 128).
        sampler_factory: builds the merged buffer's sampler from the online buffer; ``None`` means
            ``OTCSampler(online, **sampler_kwargs)``. Any TorchRL sampler works, e.g.
            ``lambda online: RandomSampler()`` for the uniform baseline.
        sampler_kwargs: keyword arguments of the default ``OTCSampler`` (``alpha``, ``distance``, ...).
        online_key: name of the boolean column written with every transition (``False`` offline, ``True``
            online); :class:`~torchrl_otc.OTCSampler` reports the online share of its batches from it. ``None``
            writes nothing.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Unbounded
        >>> def transitions(n):
        ...     obs, act = torch.randn(n, 4), torch.rand(n, 2) * 2 - 1
        ...     return TensorDict({"observation": obs, "action": act,
        ...         ("next", "observation"): obs + 0.1 * act.sum(-1, keepdim=True),
        ...         ("next", "reward"): -act.pow(2).sum(-1, keepdim=True),
        ...         ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
        ...         ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool)}, [n])
        >>> agent = AgentLearner("td3bc", Unbounded(shape=(4,)), Bounded(-1.0, 1.0, (2,)), seed=0,
        ...                      merged_capacity=10_000, online_capacity=1_000,
        ...                      sampler_kwargs={"num_candidates": 64, "num_online": 50})
        >>> agent.add_offline(transitions(1000))
        >>> agent.update()  # offline: uniform sampling, no actor step at update 1 (TD3's delay)  # doctest: +ELLIPSIS
        {'loss_qvalue': ..., 'online_share': 0.0}
        >>> agent.add_deployment(transitions(50))  # D_i^1 (and eq. 4)
        >>> list(agent.update(timings=True))
        ['loss_qvalue', 'loss_actor', 'online_share', 'sample_ms', 'update_ms']
        >>> agent.update(diagnostics=True)["otc_uniform"]  # the sampler's own information, on request
        0.0
        >>> agent.act(TensorDict({"observation": torch.randn(3, 4)}, [3]))["action"].shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        algorithm: str | AlgorithmConfig | Algorithm,
        observation_spec: TensorSpec | None = None,
        action_spec: TensorSpec | None = None,
        *,
        seed: int = 0,
        device: torch.device | str | None = None,
        storage_device: torch.device | str | None = None,
        merged_capacity: int = 1_100_000,
        online_capacity: int = 100_000,
        batch_size: int | None = None,
        sampler_factory: SamplerFactory | None = None,
        sampler_kwargs: dict[str, Any] | None = None,
        online_key: str | None = "is_online",
    ) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if isinstance(algorithm, Algorithm):
            self.algorithm = algorithm
            self.device = algorithm.device
        else:
            if observation_spec is None or action_spec is None:
                raise TypeError(
                    "AgentLearner builds the algorithm from observation_spec and action_spec; pass both, or pass "
                    "an Algorithm from make_algorithm."
                )
            self.algorithm = make_algorithm(
                algorithm, observation_spec, action_spec, self.device, seed=seed
            )
        if sampler_factory is not None and sampler_kwargs:
            raise ValueError(
                "sampler_kwargs configure the default OTCSampler; drop them with a sampler_factory."
            )
        self.seed = seed
        self.online_key = online_key
        self.batch_size = int(batch_size or self.algorithm.config.batch_size)
        storage_device = (
            torch.device(storage_device) if storage_device is not None else torch.device("cpu")
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.online_buffer = TensorDictReplayBuffer(
            storage=LazyTensorStorage(online_capacity, device=storage_device),
            generator=torch.Generator().manual_seed(seed + 1),
        )
        if sampler_factory is None:
            sampler_factory = functools.partial(OTCSampler, **dict(sampler_kwargs or {}))
        self.sampler = sampler_factory(self.online_buffer)
        self.merged_buffer = TensorDictReplayBuffer(
            storage=LazyTensorStorage(merged_capacity, device=storage_device),
            sampler=self.sampler,
            batch_size=self.batch_size,
            generator=self.generator,
        )
        self.stream = RandomStream(seed + 2, self.device)
        self.num_updates = 0
        self.deployments = 0
        #: the metrics of the ``fit_online`` hooks at the last :meth:`add_deployment` (prefixed ``distance/``...)
        self.deployment_metrics: dict[str, float] = {}
        self.num_offline = (
            0  # rows written by add_offline; the merged buffer's rows after them are online
        )
        # The sampler's learned parts, each trained through the TrainablePart protocol by a trainer this learner
        # owns (optimiser, random stream, counters): d_e's CVAE, Balanced Replay's density-ratio network.
        self.trained_parts: dict[str, TrainablePart] = {}
        for name, part in self._sampler_parts():
            trained = trainable_part(part, name)
            if trained is not None:
                self.trained_parts[name] = trained
        bind = getattr(self.distance, "bind", None)
        if callable(bind):  # a distance computed from the agent's own networks (ValueDistance, d_q)
            bind(self.algorithm)

    # ------------------------------------------------------------------------------------------ random
    def random_stream(self) -> contextlib.AbstractContextManager[None]:
        """Runs the block with this agent's torch random state (saved back afterwards); restores the caller's."""
        return self.stream.activate()

    # -------------------------------------------------------------------------------------------- data
    @property
    def config(self) -> AlgorithmConfig:
        """The algorithm's config."""
        return self.algorithm.config

    @property
    def distance(self) -> Any:
        """The sampler's transition distance, if it has one."""
        return getattr(self.sampler, "distance", None)

    def _mark(self, data: TensorDictBase, online: bool) -> TensorDictBase:
        if self.online_key is None or self.online_key in data.keys():
            return data
        data = data.copy()
        data.set(
            self.online_key,
            torch.full(data.batch_size, online, dtype=torch.bool, device=data.device),
        )
        return data

    def _sampler_parts(self) -> list[tuple[str, Any]]:
        """``("distance", the sampler's distance)`` (where it has one) and ``("sampler", the sampler)``."""
        parts = [("distance", self.distance), ("sampler", self.sampler)]
        return [(name, part) for name, part in parts if part is not None]

    def add_offline(self, data: TensorDictBase, *, fit_distance: bool = True) -> None:
        """Writes offline transitions ``B_i^0`` to the merged buffer and fits the sampler's normalisers on them.

        An algorithm with a ``bc_initialise(data)`` method (:class:`~torchrl_otc.trainers.algorithms.BREMEN`:
        behaviour cloning of its policy, standardisation of its dynamics models) is initialised on ``data`` here,
        in this agent's random stream.

        Args:
            data: the agent's offline transitions (flat batch).
            fit_distance: call ``fit(data)`` on the sampler's distance and on the sampler where they follow
                :class:`~torchrl_otc.modules.Fittable` (e.g. the standardisation statistics of
                :class:`~torchrl_otc.FeatureDistance`, of :class:`~torchrl_otc.EmbeddingDistance` and of
                :class:`~torchrl_otc.BalancedReplaySampler`): fitted on this agent's own data only.
        """
        self.merged_buffer.extend(self._mark(data, online=False))
        self.num_offline = len(self.merged_buffer)
        bc_initialise = getattr(self.algorithm, "bc_initialise", None)
        if callable(bc_initialise):
            with self.random_stream():
                bc_initialise(data)
        if fit_distance:
            for _, part in self._sampler_parts():
                if isinstance(part, Fittable):
                    part.fit(data)

    def add_deployment(self, data: TensorDictBase, *, adapt_alpha: bool = True) -> None:
        """Starts deployment ``k``: ``D_i^k`` replaces the online buffer's content and joins the merged buffer.

        Then every learned part (:attr:`trained_parts`) that has the optional hook ``fit_online(data)`` is
        refitted on ``data`` (the dynamics-likelihood selector's ensemble,
        :class:`~torchrl_otc.trainers.parts.LikelihoodDistanceTrainer`); the hook draws from the part's own random
        stream and returns metrics, kept, prefixed as in :meth:`sampler_update`, in :attr:`deployment_metrics`.
        Then, with ``adapt_alpha``, adapts alpha once (:meth:`adapt_alpha`).

        Args:
            data: this deployment's transitions of this agent.
            adapt_alpha: call :meth:`adapt_alpha` now. A loop that deploys agents one after the other (section
                4.6) passes ``False`` and calls :meth:`adapt_alpha` once every agent's deployment is written.
        """
        marked = self._mark(data, online=True)
        self.online_buffer.empty()
        self.online_buffer.extend(marked)
        self.merged_buffer.extend(marked)
        self.deployments += 1
        self.deployment_metrics = {}
        for prefix, part in self.trained_parts.items():
            fit_online = getattr(part, "fit_online", None)
            if callable(
                fit_online
            ):  # optional hook: a part that is refitted on each deployment's data
                self.deployment_metrics.update(_prefixed(prefix, fit_online(marked)))
        if adapt_alpha:
            self.adapt_alpha()

    def adapt_alpha(self) -> float | None:
        """OTC's eq. 4, once per deployment: ``sampler.adapt_alpha(merged_buffer)`` in this agent's random stream.

        The one place alpha adapts (:meth:`add_deployment` calls it; so does the tuning loop). The first call only
        records ``D_1``.

        Returns:
            The new alpha, or ``None`` when the sampler does not adapt alpha (not an
            :class:`~torchrl_otc.OTCSampler`).
        """
        adapt = getattr(self.sampler, "adapt_alpha", None)
        if not callable(adapt):
            return None
        with self.random_stream():
            return adapt(self.merged_buffer)

    def sampler_metrics(self) -> dict[str, float]:
        r"""The sampler's settings now, as the tuning loop logs them with each evaluation.

        Returns:
            :class:`~torchrl_otc.OTCSampler`: ``alpha`` and, once eq. 4 has run, ``D`` (its last
            :math:`\mathbb{D}_k`); :class:`~torchrl_otc.MixSampler`, after the first deployment:
            ``mix_fraction``; else ``{}``.
        """
        metrics: dict[str, float] = {}
        if isinstance(self.sampler, OTCSampler):
            metrics["alpha"] = self.sampler.alpha
            if self.sampler.alpha_history:
                metrics["D"] = self.sampler.alpha_history[-1]["D"]
        if isinstance(self.sampler, MixSampler) and self.deployments > 0:
            metrics["mix_fraction"] = self.sampler.online_fraction
        return metrics

    # ---------------------------------------------------------------------------------------- training
    def sample(self) -> TensorDictBase:
        """One batch from the merged buffer, on the learner's device."""
        return self.merged_buffer.sample(self.batch_size).to(self.device, non_blocking=True)

    def update(
        self,
        *,
        train_sampler: bool = True,
        right_dynamics: RowLabels | None = None,
        timings: bool = False,
        diagnostics: bool = False,
    ) -> dict[str, float]:
        """One gradient step of every part of the algorithm on a batch from the sampler, then the targets.

        Then, with ``train_sampler``, one step of the sampler's learned parts on the same batch
        (:meth:`sampler_update`: the transition CVAE of :class:`~torchrl_otc.EmbeddingDistance`, the
        density-ratio network of :class:`~torchrl_otc.BalancedReplaySampler`). Runs in this agent's random stream.

        Keyword Args:
            train_sampler: also train the sampler's learned parts. The tuning loop turns it off during offline
                training so that the offline-trained agents do not depend on the sampling strategy.
            right_dynamics: labels the batch's rows with whether they have the current dynamics (a task's
                :meth:`~torchrl_otc.envs.TaskSpec.right_dynamics` bound to the deployment); adds
                ``offline_right_dynamics_share`` when it labels them and the batch has offline rows.
            timings: add ``sample_ms`` and ``update_ms``.
            diagnostics: add the algorithm's other values (``pred_value``, ...) and the batch means of the
                sampler's ``alpha``, ``uniform``, ``online_share`` and ``distance`` under its ``info_prefix``
                (``otc_alpha``, ``balanced_replay_uniform``, ...).

        Returns:
            The update's metrics under the names of ``docs/metrics.rst`` (the tuning loop prefixes them
            ``agent{i}/``), in this order: the algorithm's losses (``loss*``, see :meth:`Algorithm.update
            <torchrl_otc.trainers.algorithms.Algorithm.update>`); the learned parts' metrics prefixed
            ``distance/`` and ``sampler/``; ``online_share`` (the sampler's ``<info_prefix>online_share``, else the mean of
            the batch's ``online_key`` column); then ``offline_right_dynamics_share``, the diagnostics and the
            timings where asked for: ``sample_ms`` (drawing the batch and moving it to the device) and
            ``update_ms`` (this whole call), in milliseconds.
        """
        start = time.perf_counter()
        with self.random_stream():
            t0 = time.perf_counter()
            batch = self.sample()
            sample_ms = (time.perf_counter() - t0) * 1e3
            values = self.algorithm.update(batch)
            parts = self.sampler_update(batch) if train_sampler else {}
        self.num_updates += 1
        prefix = getattr(self.sampler, "info_prefix", "otc_")
        names = [prefix + name for name in _SAMPLER_INFO]
        info = {k: batch.get(k) for k in names if k in batch.keys()}
        if info:
            info = dict(zip(info, torch.stack([v.float().mean() for v in info.values()]).tolist()))
        metrics = {k: v for k, v in values.items() if k.startswith("loss")}
        metrics.update(parts)
        has_flags = self.online_key is not None and self.online_key in batch.keys()
        online = batch.get(self.online_key) if has_flags else None
        if prefix + "online_share" in info:
            metrics["online_share"] = info[prefix + "online_share"]
        elif online is not None:
            metrics["online_share"] = float(online.float().mean())
        right = None if right_dynamics is None else right_dynamics(batch)
        if (
            right is not None
        ):  # among the offline rows (all rows when the batch has no online flags)
            right = right.reshape(-1) if online is None else right.reshape(-1)[~online.reshape(-1)]
            if right.numel():
                metrics["offline_right_dynamics_share"] = float(right.float().mean())
        if diagnostics:
            metrics.update({k: v for k, v in values.items() if k not in metrics})
            metrics.update(info)
        if timings:
            metrics["sample_ms"] = sample_ms
            metrics["update_ms"] = (time.perf_counter() - start) * 1e3
        return metrics

    def sampler_update(self, batch: TensorDictBase) -> dict[str, float]:
        """One step of the sampler's learned parts: :meth:`TrainablePart.update
        <torchrl_otc.modules.TrainablePart.update>` of the distance's and of the sampler's (:attr:`trained_parts`).

        Args:
            batch: the agent's training batch (d_e's CVAE trains on it; Balanced Replay draws its own rows).

        Returns:
            their metrics (mappings of floats or scalar tensors), prefixed ``distance/`` and ``sampler/``; ``{}``
            when neither learns.
        """
        metrics: dict[str, float] = {}
        for prefix, part in self.trained_parts.items():
            metrics.update(_prefixed(prefix, part.update(batch)))
        return metrics

    def pretrain_sampler(self, num_updates: int, *, progress: bool = False) -> dict[str, float]:
        """Trains the sampler's learned parts on the offline data alone (before the first deployment).

        Calls :meth:`TrainablePart.pretrain <torchrl_otc.modules.TrainablePart.pretrain>` of every learned part
        with the merged buffer's content as ``data``; each part draws its own batches with its own random stream,
        so this leaves the agent's streams untouched.

        Args:
            num_updates: gradient steps of each part.

        Keyword Args:
            progress: show tqdm bars.

        Returns:
            the parts' final metrics, prefixed as in :meth:`sampler_update`.
        """
        metrics: dict[str, float] = {}
        if not self.trained_parts or num_updates < 1:
            return metrics
        data = self.merged_buffer[:]
        for prefix, part in self.trained_parts.items():
            metrics.update(_prefixed(prefix, part.pretrain(data, num_updates, progress=progress)))
        return metrics

    def finetune(self, num_updates: int | None = None) -> dict[str, float]:
        """``L`` updates after a deployment (Table 3: 4000 for BCQ, 2000 otherwise); returns the mean metrics.

        Args:
            num_updates: ``None`` means ``config.finetune_updates``.
        """
        n = self.config.finetune_updates if num_updates is None else int(num_updates)
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        for _ in range(n):
            for key, value in self.update().items():
                totals[key] = totals.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1
        return {k: totals[k] / counts[k] for k in totals}

    @torch.no_grad()
    def act(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Writes the deterministic deployment action (``"action"``) into ``tensordict`` (on the learner's device)."""
        with self.random_stream():  # BCQ's greedy action samples VAE actions
            return self.algorithm.policy(tensordict.to(self.device))

    def explore(
        self, tensordict: TensorDictBase, epsilon: float, generator: torch.Generator | None = None
    ) -> TensorDictBase:
        """Writes an exploring action (``"action"``) into ``tensordict``: on discrete actions, epsilon-greedy among
        the available ones (the algorithm's ``explore``; issue 17, section 4.6's sequential collection).

        Args:
            tensordict: holds ``"observation"`` (and ``"action_mask"`` where the task masks actions).
            epsilon: the probability of a uniformly random available action.
            generator: the exploration's random generator.
        """
        explore = getattr(self.algorithm, "explore", None)
        if explore is None:
            raise TypeError(
                f"{type(self.algorithm).__name__} has no epsilon-greedy exploration: it is for discrete actions; "
                f"continuous agents explore with Gaussian noise (Deployer's exploration_noise)."
            )
        with self.random_stream():
            return explore(tensordict.to(self.device), epsilon, generator)

    def parameters(self) -> Iterator[torch.Tensor]:
        """Every trainable parameter of this agent."""
        return self.algorithm.parameters()

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Algorithm (parameters, targets, optimisers), sampler state, random states and counters.

        ``"parts"`` holds the training state of the sampler's learned parts (:attr:`trained_parts`: optimisers,
        random streams, counters), by prefix; their parameters are in the sampler's state. The buffers' contents
        are not included (:mod:`~torchrl_otc.trainers.checkpointing` writes the online rows beside it).
        """
        stream = self.stream.state_dict()
        state: dict[str, Any] = {
            "algorithm": self.algorithm.state_dict(),
            "generator": self.generator.get_state(),
            "online_generator": self.online_buffer._rng.get_state()
            if self.online_buffer._rng is not None
            else None,
            "cpu_rng_state": stream["cpu"],
            "cuda_rng_state": stream["cuda"],
            "num_updates": self.num_updates,
            "deployments": self.deployments,
            "seed": self.seed,
        }
        if callable(getattr(self.sampler, "state_dict", None)):
            state["sampler"] = self.sampler.state_dict()
        state["parts"] = {name: part.state_dict() for name, part in self.trained_parts.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` saved (copies; nothing is shared with ``state``'s owner).

        States written before the learner owned its parts' training (no ``"parts"``) load too: their training
        state is read from the sampler's state (:func:`~torchrl_otc.trainers.parts.legacy_part_states`).
        """
        self.algorithm.load_state_dict(state["algorithm"])
        self.generator.set_state(state["generator"])
        if state.get("online_generator") is not None and self.online_buffer._rng is not None:
            self.online_buffer._rng.set_state(state["online_generator"])
        self.stream.load_state_dict(
            {"cpu": state["cpu_rng_state"], "cuda": state.get("cuda_rng_state")}
        )
        self.num_updates = int(state["num_updates"])
        self.deployments = int(state["deployments"])
        if "sampler" in state and callable(getattr(self.sampler, "load_state_dict", None)):
            self.sampler.load_state_dict(state["sampler"])
        parts = state["parts"] if "parts" in state else legacy_part_states(state.get("sampler"))
        # after the sampler: it builds the parts' networks
        for name, part in self.trained_parts.items():
            if name in parts:
                part.load_state_dict(parts[name])
