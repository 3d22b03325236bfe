"""The learner's training of its sampler's learned parts (each a :class:`~torchrl_otc.modules.TrainablePart`).

The parts are functions of their inputs and parameters; what trains them lives here, in the layer of
:class:`~torchrl_otc.trainers.AgentLearner`, which owns one trainer per learned part of its agent's sampler:

* :class:`EmbeddingDistanceTrainer`: ``d_e``'s transition CVAE (paper sections 3.3 and 3.5,
  :class:`~torchrl_otc.EmbeddingDistance`) with its loss :class:`~torchrl_otc.objectives.TransitionVAELoss`;
* :class:`BalancedReplayTrainer`: Balanced Replay's density-ratio network (Lee et al., CoRL 2021, section 4.1,
  :class:`~torchrl_otc.BalancedReplaySampler`) with
  :func:`~torchrl_otc.modules.models.density_ratio.js_density_ratio_loss`;
* :class:`LikelihoodDistanceTrainer`: the dynamics-likelihood selector's Gaussian ensemble
  (:class:`~torchrl_otc.modules.likelihood.LikelihoodDistance`), refitted on each new deployment's data through
  the learner's optional ``fit_online`` hook.

Each owns an Adam optimiser, a random stream of its own (seeded from the part's ``seed``, never the agent's
stream) and its counters, and checkpoints them. :func:`trainable_part` picks the trainer of a part, takes a
user's part that implements the protocol itself, and refuses one that implements it only in part.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from tqdm.auto import tqdm

from torchrl_otc._random import RandomStream
from torchrl_otc.data.samplers.balanced_replay import BalancedReplaySampler
from torchrl_otc.modules.distances import EmbeddingDistance
from torchrl_otc.modules.likelihood import LikelihoodDistance
from torchrl_otc.modules.models.density_ratio import js_density_ratio_loss
from torchrl_otc.modules.trainable import TrainablePart, flat_transitions, missing_methods
from torchrl_otc.objectives.transition_vae import TransitionVAELoss

__all__ = [
    "BalancedReplayTrainer",
    "EmbeddingDistanceTrainer",
    "LikelihoodDistanceTrainer",
    "legacy_part_states",
    "trainable_part",
]

logger = logging.getLogger(__name__)

# TransitionVAELoss's default keys for the CVAE's four outputs.
_VAE_OUT_KEYS = ["vae_reconstruction", "vae_target", "vae_loc", "vae_log_std"]


class EmbeddingDistanceTrainer:
    r"""Trains ``d_e``'s transition CVAE (paper section 3.5) for its owner, the agent's learner.

    ``G_i`` is trained on agent ``i``'s transitions with :class:`~torchrl_otc.objectives.TransitionVAELoss`

    .. math::
        \mathcal{L}_{G} = \frac{1}{d_a}\lVert \bar a_i - \hat a_i \rVert_2^2
            + \beta\, \frac{1}{d_z} D_{KL}\left(\mathcal{N}(\mu, \sigma) \,\Vert\, \mathcal{N}(0, I)\right)

    (``beta`` = the distance's ``kl_weight``), by Adam at the distance's ``lr``, with a random stream seeded with
    the distance's ``seed + 1`` for the reparameterisation noise and the batch draws. :meth:`update` makes one
    gradient step every ``update_every`` calls (on a random subset of ``train_batch_size`` rows of the batch when
    it is larger); :meth:`pretrain` draws its batches from the offline data. Every step increases the distance's
    ``version`` (its cached online embeddings are then stale).

    Args:
        distance: the :class:`~torchrl_otc.EmbeddingDistance` whose CVAE is trained (its settings ``lr``,
            ``kl_weight``, ``update_every``, ``train_batch_size``, ``seed`` are read here).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_otc import EmbeddingDistance
        >>> data = TensorDict({"observation": torch.randn(256, 3), "action": torch.rand(256, 1),
        ...                    ("next", "observation"): torch.randn(256, 3)}, [256])
        >>> trainer = EmbeddingDistanceTrainer(EmbeddingDistance(3, 1, hidden_sizes=(16,), update_every=2))
        >>> trainer.fit(data).distance.version
        1
        >>> [bool(trainer.update(data[:32])) for _ in range(3)], trainer.num_updates
        ([True, False, True], 2)
    """

    def __init__(self, distance: EmbeddingDistance) -> None:
        self.distance = distance
        module = TensorDictModule(
            distance.vae, in_keys=list(distance.in_keys), out_keys=list(_VAE_OUT_KEYS)
        )
        self.loss_module = TransitionVAELoss(module, kl_weight=distance.kl_weight)
        params = [
            p
            for p in self.loss_module.vae_network_params.values(True, True)
            if isinstance(p, nn.Parameter)
        ]
        self.optimizer = torch.optim.Adam(params, lr=distance.lr)
        self.stream = RandomStream(distance.seed + 1, distance.device)
        self.num_updates = 0
        self.calls = 0

    def fit(self, data: TensorDictBase) -> EmbeddingDistanceTrainer:
        """The distance's input standardisation from offline data (:meth:`EmbeddingDistance.fit`)."""
        self.distance.fit(data)
        return self

    def _step(self, batch: TensorDictBase) -> dict[str, Tensor]:
        distance = self.distance
        batch = batch.select(*distance.in_keys).to(distance.device)
        with self.stream.activate(), torch.enable_grad():
            size = distance.train_batch_size
            if size is not None and len(batch) > size:
                batch = batch[torch.randperm(len(batch), device=batch.device)[:size]]
            loss, metadata = self.loss_module.vae_loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.num_updates += 1
        distance.version += 1
        return {"loss_vae": loss.detach(), **metadata}

    def update(self, batch: TensorDictBase) -> dict[str, Tensor]:
        """One gradient step of the CVAE on ``batch`` every ``update_every`` calls.

        Args:
            batch: transitions holding the distance's ``in_keys`` (the agent's training batch).

        Returns:
            ``{"loss_vae", "vae_reconstruction", "vae_kl"}`` on a training call, ``{}`` otherwise.
        """
        self.calls += 1
        if (self.calls - 1) % self.distance.update_every:
            return {}
        return self._step(batch)

    def pretrain(
        self,
        data: TensorDictBase,
        num_updates: int,
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> dict[str, float]:
        """``num_updates`` gradient steps on batches drawn uniformly (with this trainer's stream) from ``data``.

        Args:
            data: transitions holding the distance's ``in_keys`` (the agent's offline data ``B_i^0``).
            num_updates: gradient steps.

        Keyword Args:
            batch_size: rows per step; defaults to the distance's ``train_batch_size`` or 256.
            progress: show a tqdm bar.

        Returns:
            the metrics of the last step (floats).
        """
        flat = flat_transitions(data, self.distance.in_keys, "EmbeddingDistance pretraining")
        size = batch_size or self.distance.train_batch_size or 256
        metrics: dict[str, Tensor] = {}
        for _ in tqdm(
            range(num_updates), desc="d_e pretraining", disable=not progress, leave=False
        ):
            with self.stream.activate():
                index = torch.randint(len(flat), (size,))
            metrics = self._step(flat[index])
        return {k: float(v) for k, v in metrics.items()}

    def state_dict(self) -> dict[str, Any]:
        """Adam's state, the random stream and the counters (the CVAE's parameters are the distance's)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "stream": self.stream.state_dict(),
            "num_updates": self.num_updates,
            "calls": self.calls,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict` (copies: Adam keeps the moment tensors it is given)."""
        self.optimizer.load_state_dict(copy.deepcopy(state_dict["optimizer"]))
        self.stream.load_state_dict(state_dict["stream"])
        self.num_updates = int(state_dict["num_updates"])
        self.calls = int(state_dict["calls"])


class BalancedReplayTrainer:
    r"""Trains Balanced Replay's density-ratio network (Lee et al., CoRL 2021, section 4.1) for the agent's learner.

    Each :meth:`update` is one Adam step (the sampler's ``lr``) on the Jensen-Shannon objective
    :func:`~torchrl_otc.modules.models.density_ratio.js_density_ratio_loss`

    .. math::
        L(\psi) = \mathbb{E}_{d_{\mathrm{off}}}\left[\log\frac{w_\psi + 1}{2}\right]
                - \mathbb{E}_{d_{\mathrm{on}}}\left[\log\frac{2 w_\psi}{w_\psi + 1}\right]

    on the rows of :meth:`BalancedReplaySampler.training_weights`, drawn with this trainer's generator (seeded
    with the sampler's ``seed``): never the buffer's generator nor the global random state. The learner's batch
    is not used: the network learns online against offline rows of the whole storage. Balanced Replay is not
    pretrained (the ratio is defined by online data, which pretraining does not have).

    Args:
        sampler: the :class:`~torchrl_otc.BalancedReplaySampler` whose network is trained.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
        >>> sampler = BalancedReplaySampler(hidden_sizes=(16,), num_candidates=64, train_batch_size=32)
        >>> rb = TensorDictReplayBuffer(storage=LazyTensorStorage(500), sampler=sampler, batch_size=8)
        >>> def rows(n, centre, online):
        ...     return TensorDict({"observation": torch.randn(n, 2) + centre, "action": torch.rand(n, 1),
        ...                        "is_online": torch.full((n,), online)}, [n])
        >>> _ = rb.extend(rows(300, -2.0, False))
        >>> trainer = BalancedReplayTrainer(sampler).fit(rb[:])
        >>> trainer.update()  # no online row yet: nothing to learn
        {}
        >>> _ = rb.extend(rows(50, 2.0, True))
        >>> sorted(trainer.update())
        ['js_lower_bound', 'loss', 'num_updates', 'weight_offline', 'weight_online']
    """

    def __init__(self, sampler: BalancedReplaySampler) -> None:
        self.sampler = sampler
        self.generator = torch.Generator().manual_seed(sampler.seed)
        self.optimizer: torch.optim.Adam | None = None
        self.num_updates = 0
        self._device: torch.device | None = None

    def fit(self, data: TensorDictBase) -> BalancedReplayTrainer:
        """The network's input standardisation from offline data (:meth:`BalancedReplaySampler.fit`)."""
        self.sampler.fit(data)
        return self

    def _optimizer(self) -> torch.optim.Adam:
        """Adam over the network's parameters, created when the network exists; its state follows the network."""
        network = self.sampler.network
        if network is None:
            raise RuntimeError(
                "BalancedReplayTrainer: the sampler has no network yet (fit it, or sample from its buffer)."
            )
        device = network.state_mean.device
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(network.parameters(), lr=self.sampler.lr)
        elif device != self._device:  # the network moved to the storage's device: so do the moments
            for state in self.optimizer.state.values():
                for name, value in state.items():
                    if isinstance(value, Tensor) and name != "step":
                        state[name] = value.to(device)
        self._device = device
        return self.optimizer

    def update(self, batch: TensorDictBase | None = None) -> dict[str, float]:
        """One Adam step of the density-ratio network on the JS objective.

        Args:
            batch: ignored (the learner passes its training batch to every learned part).

        Returns:
            ``loss`` (the objective on this step's rows, before the step), ``js_lower_bound`` (``-loss / 2``, a
            lower bound on the Jensen-Shannon divergence between online and offline state-action distributions,
            at most ``log 2``), ``weight_online`` and ``weight_offline`` (mean ``w`` on the online and offline
            rows), ``num_updates``; ``{}`` before the storage holds online and offline rows.
        """
        weights = self.sampler.training_weights(self.generator)
        if weights is None:
            return {}
        w_on, w_off = weights
        loss = js_density_ratio_loss(w_on, w_off)
        optimizer = self._optimizer()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.num_updates += 1
        loss_value = float(loss.detach())
        return {
            "loss": loss_value,
            "js_lower_bound": -loss_value / 2,
            "weight_online": float(w_on.detach().mean()),
            "weight_offline": float(w_off.detach().mean()),
            "num_updates": float(self.num_updates),
        }

    def pretrain(
        self, data: TensorDictBase, num_updates: int, *, progress: bool = False
    ) -> dict[str, float]:
        """Nothing: the density ratio needs online rows, which the offline data has not (returns ``{}``)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Adam's state (``None`` before the first step), the generator and the step counter."""
        return {
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict` (load the sampler's state first: it builds the network)."""
        if state_dict["optimizer"] is not None:
            # deep copy: Optimizer.load_state_dict keeps the given moment tensors, which would otherwise be
            # shared with (and advanced by) the optimiser the state came from
            self._optimizer().load_state_dict(copy.deepcopy(state_dict["optimizer"]))
        self.generator.set_state(state_dict["generator"].clone())
        self.num_updates = int(state_dict["num_updates"])


class LikelihoodDistanceTrainer:
    r"""Fits the dynamics-likelihood selector's Gaussian ensemble to the agent's latest deployment.

    The learner calls :meth:`fit_online` from :meth:`AgentLearner.add_deployment
    <torchrl_otc.trainers.AgentLearner.add_deployment>` with the deployment's transitions ``D_i^k``: the ensemble
    is refitted *from scratch* on them (fresh parameters drawn from this trainer's generator, a fresh Adam at the
    distance's ``lr``, ``fit_steps`` steps, each member on its own ``fit_batch_size`` rows drawn with replacement
    per step, loss the members' mean Gaussian negative log-likelihood of the standardised ``s' - s``), so the
    model describes the latest dynamics only. :meth:`update` trains nothing (the agent's batches mix offline
    rows of other dynamics); after the first fit it reports the fit's result so that it is logged with the
    online updates. Nothing is pretrained: the model needs online data.

    Args:
        distance: the :class:`~torchrl_otc.modules.likelihood.LikelihoodDistance` whose ensemble is fitted (its
            settings ``fit_steps``, ``fit_batch_size``, ``lr``, ``seed`` are read here).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> s, a = torch.randn(300, 2), torch.rand(300, 1)
        >>> data = TensorDict({"observation": s, "action": a, ("next", "observation"): s + a}, [300])
        >>> trainer = LikelihoodDistanceTrainer(LikelihoodDistance(2, 1, hidden_sizes=(16,), fit_steps=20))
        >>> trainer.fit(data).update(data[:8])  # no deployment yet: nothing to report
        {}
        >>> sorted(trainer.fit_online(data)), sorted(trainer.update(data[:8]))
        (['fit_nll', 'num_fits'], ['fit_nll', 'num_fits'])
    """

    def __init__(self, distance: LikelihoodDistance) -> None:
        self.distance = distance
        self.generator = torch.Generator().manual_seed(distance.seed + 1)
        self.optimizer: torch.optim.Adam | None = None
        self.num_fits = 0
        self.fit_nll: float | None = None

    def fit(self, data: TensorDictBase) -> LikelihoodDistanceTrainer:
        """The distance's standardisation from offline data (:meth:`LikelihoodDistance.fit`)."""
        self.distance.fit(data)
        return self

    def fit_online(self, data: TensorDictBase) -> dict[str, float]:
        """Refits the ensemble from scratch on a deployment's transitions ``data`` (see the class).

        Returns:
            ``fit_nll`` (the members' mean Gaussian NLL per row of ``data`` after the fit, nats of the
            standardised ``s' - s``) and ``num_fits``.
        """
        dist = self.distance
        flat = flat_transitions(data, dist.in_keys, "LikelihoodDistance refit")
        x, target = dist.features(flat)
        ensemble = dist.ensemble
        ensemble.reset_parameters(self.generator)
        self.optimizer = torch.optim.Adam(ensemble.parameters(), lr=dist.lr)
        n, size = x.shape[0], dist.fit_batch_size
        with torch.enable_grad():
            for _ in range(dist.fit_steps):
                rows = torch.randint(n, (dist.ensemble_size, size), generator=self.generator)
                rows = rows.to(x.device)
                loss = -dist.member_log_likelihood(x[rows], target[rows]).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        with torch.no_grad():
            self.fit_nll = float(-dist.member_log_likelihood(x, target).mean())
        dist.trained.fill_(True)
        dist.version += 1
        self.num_fits += 1
        return {"fit_nll": self.fit_nll, "num_fits": float(self.num_fits)}

    def update(self, batch: TensorDictBase | None = None) -> dict[str, float]:
        """Trains nothing; after the first fit, the last fit's ``fit_nll`` and ``num_fits`` (else ``{}``)."""
        if self.fit_nll is None:
            return {}
        return {"fit_nll": self.fit_nll, "num_fits": float(self.num_fits)}

    def pretrain(
        self, data: TensorDictBase, num_updates: int, *, progress: bool = False
    ) -> dict[str, float]:
        """Nothing: the model describes online data, which the offline data has not (returns ``{}``)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The generator, the fit counter and the last fit's NLL (the ensemble's parameters are the distance's;
        each refit starts a fresh Adam, so none is kept)."""
        return {
            "generator": self.generator.get_state(),
            "num_fits": self.num_fits,
            "fit_nll": self.fit_nll,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict`."""
        self.generator.set_state(state_dict["generator"].clone())
        self.num_fits = int(state_dict["num_fits"])
        fit_nll = state_dict["fit_nll"]
        self.fit_nll = None if fit_nll is None else float(fit_nll)


_TRAINERS: tuple[tuple[type, type], ...] = (
    (EmbeddingDistance, EmbeddingDistanceTrainer),
    (LikelihoodDistance, LikelihoodDistanceTrainer),
    (BalancedReplaySampler, BalancedReplayTrainer),
)
"""The package's learned parts and the trainers the learner trains them with."""


def trainable_part(part: Any, name: str = "part") -> TrainablePart | None:
    """The :class:`~torchrl_otc.modules.TrainablePart` that trains ``part``, or ``None`` if nothing is learned.

    The package's learned parts get their trainer (:class:`EmbeddingDistanceTrainer`,
    :class:`LikelihoodDistanceTrainer`, :class:`BalancedReplayTrainer`); a part implementing the protocol itself is its own trainer; a part with
    ``update`` or ``pretrain`` but not the whole protocol is refused (the learner would not know how to fit,
    checkpoint or resume it).

    Args:
        part: a sampler or a distance (or ``None``).
        name: how the error names the part (``"distance"``, ``"sampler"``).

    Examples:
        >>> from torchrl_otc import FeatureDistance
        >>> trainable_part(FeatureDistance()) is None  # fitted, not trained
        True
        >>> class UpdateOnly:
        ...     def update(self, batch):
        ...         return {}
        >>> trainable_part(UpdateOnly(), "distance")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: the distance UpdateOnly has update() but does not implement TrainablePart ...
    """
    for kind, trainer in _TRAINERS:
        if isinstance(part, kind):
            return trainer(part)
    if isinstance(part, TrainablePart):
        return part
    if callable(getattr(part, "update", None)) or callable(getattr(part, "pretrain", None)):
        has = "update()" if callable(getattr(part, "update", None)) else "pretrain()"
        raise TypeError(
            f"the {name} {type(part).__name__} has {has} but does not implement TrainablePart "
            f"(torchrl_otc.modules.TrainablePart): missing {missing_methods(part)}. The learner fits, "
            f"pretrains, updates and checkpoints a learned part through that protocol: implement all of "
            f"fit, pretrain, update, state_dict and load_state_dict, or drop update/pretrain."
        )
    return None


def legacy_part_states(sampler_state: Any) -> dict[str, dict[str, Any]]:
    """The training states that checkpoints written before the learner owned them kept inside the sampler's state.

    Then ``d_e``'s optimiser, random stream and counters were the distance's extra state
    (``sampler["distance"]["_extra_state"]``) and Balanced Replay's optimiser, generator and step counter were
    in its sampler state (version 1); both have the layout of their trainer's :meth:`state_dict`.

    Args:
        sampler_state: the ``"sampler"`` entry of an :meth:`AgentLearner.state_dict
            <torchrl_otc.trainers.AgentLearner.state_dict>` (or ``None``).

    Returns:
        ``{"distance": ..., "sampler": ...}`` for what was found.

    Examples:
        >>> legacy_part_states({"version": 1, "alpha": 1.0})  # an OTC sampler's state holds no training state
        {}
    """
    parts: dict[str, dict[str, Any]] = {}
    if not isinstance(sampler_state, Mapping):
        return parts
    distance = sampler_state.get("distance")
    if isinstance(distance, Mapping) and "_extra_state" in distance:
        parts["distance"] = dict(distance["_extra_state"])
    if sampler_state.get("version") == 1 and {"optimizer", "generator", "num_updates"} <= set(
        sampler_state
    ):
        parts["sampler"] = {k: sampler_state[k] for k in ("optimizer", "generator", "num_updates")}
    return parts
