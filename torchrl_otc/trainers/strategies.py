"""The sampling strategies of the tuning loop: one agent's sampler, built from the run's ``sampler.*`` settings.

:func:`make_sampler` maps a :class:`~torchrl_otc.configs.parts.SamplerConfig` onto the sampler of one agent's
merged buffer: TorchRL's :class:`~torchrl.data.RandomSampler` (``uniform``), :class:`~torchrl_otc.OnlineOnlySampler`,
:class:`~torchrl_otc.MixSampler`, :class:`~torchrl_otc.BalancedReplaySampler` or :class:`~torchrl_otc.OTCSampler`
with its transition distance (feature, d_e or d_q, section 3.3). The columns the tuning loop writes with every
transition, and that the samplers read, are named here (:data:`ONLINE_KEY`, :data:`ID_KEY`,
:data:`DEPLOYMENT_KEY`).
"""

from __future__ import annotations

import torch
from torchrl.data import RandomSampler, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import Sampler

from torchrl_otc.configs.parts import SamplerConfig
from torchrl_otc.data.samplers import (
    BalancedReplaySampler,
    MixSampler,
    OnlineOnlySampler,
    OTCSampler,
)
from torchrl_otc.modules.distances import (
    EmbeddingDistance,
    FeatureDistance,
    TransitionDistance,
    ValueDistance,
)
from torchrl_otc.modules.likelihood import LikelihoodDistance

__all__ = ["DEPLOYMENT_KEY", "ID_KEY", "ONLINE_KEY", "make_sampler"]

#: Boolean column: ``False`` for offline rows, ``True`` for the rows of a deployment.
ONLINE_KEY = "is_online"
#: Integer column: the row's index in its agent's merged storage (OTC uses it to tell self-matches).
ID_KEY = "transition_id"
#: Integer column: 0 for offline rows, ``k`` for the rows of deployment ``k`` (``MixSampler(source="latest")``).
DEPLOYMENT_KEY = "deployment"


def make_sampler(
    config: SamplerConfig,
    online: TensorDictReplayBuffer,
    *,
    state_dim: int,
    action_dim: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> Sampler:
    """One agent's sampler for ``config.name`` (and, for ``otc``, its distance ``config.distance``).

    ``mix_fraction=matched`` starts at 0.5: the tuning loop sets the paired run's share per deployment
    (:func:`~torchrl_otc.trainers.matched_mix.matched_fraction`); offline a mix samples uniformly anyway.

    Args:
        config: the run's ``sampler`` part.
        online: the agent's online buffer ``D_i^k`` (OTC matches against it).

    Keyword Args:
        state_dim: size of the agent's observation (d_e's CVAE input).
        action_dim: size of the agent's action (idem).
        seed: seed of the sampler's own learned parts (d_e's CVAE, Balanced Replay's network); keep it away from
            the learner's seeds.
        device: where learned parts live.

    Returns:
        The sampler, to attach to the agent's merged buffer.

    Examples:
        >>> from torchrl.data import LazyTensorStorage
        >>> online = TensorDictReplayBuffer(storage=LazyTensorStorage(100))
        >>> sampler = make_sampler(SamplerConfig(num_candidates=64, num_online=50), online,
        ...                        state_dim=4, action_dim=2, seed=5)
        >>> type(sampler).__name__, type(sampler.distance).__name__, sampler.online_key
        ('OTCSampler', 'FeatureDistance', 'is_online')
        >>> type(make_sampler(SamplerConfig(name="uniform"), online, state_dim=4, action_dim=2, seed=5)).__name__
        'RandomSampler'
    """
    if config.name == "uniform":
        return RandomSampler()
    if config.name == "online-only":
        return OnlineOnlySampler(online_key=ONLINE_KEY)
    if config.name == "mix":
        share = config.mix_fraction
        return MixSampler(
            0.5 if share == "matched" else float(share),
            online_key=ONLINE_KEY,
            source=config.mix_source,
            deployment_key=DEPLOYMENT_KEY,
        )
    if config.name == "balanced-replay":
        return BalancedReplaySampler(
            online_key=ONLINE_KEY,
            num_candidates=config.num_candidates,
            seed=seed,
            device=device,
        )
    spec = config.distance
    distance: TransitionDistance
    if spec.name == "feature":  # fitted on the agent's offline data by AgentLearner.add_offline
        distance = FeatureDistance(next_state=spec.next_state, compile=spec.compile)
    elif spec.name == "embedding":  # d_e (sections 3.3, 3.5); pretrained after offline training
        distance = EmbeddingDistance(
            state_dim,
            action_dim,
            reconstruct=spec.reconstruct,
            update_every=spec.update_every,
            seed=seed,
            device=device,
            compile=spec.compile,
        )
    elif spec.name == "likelihood":
        # the dynamics-likelihood selector: refitted on each deployment's data by the learner (fit_online hook)
        distance = LikelihoodDistance(
            state_dim,
            action_dim,
            ensemble_size=spec.ensemble_size,
            hidden_sizes=spec.ensemble_hidden_sizes,
            fit_steps=spec.fit_steps,
            fit_batch_size=spec.fit_batch_size,
            seed=seed,
            device=device,
        )
    else:  # d_q (section 3.3): bound to the agent's own critic by AgentLearner
        distance = ValueDistance(
            value_actions=spec.value_actions, compile=spec.compile, refresh_every=spec.refresh_every
        )
    return OTCSampler(
        online,
        alpha=config.alpha,
        distance=distance,
        num_candidates=config.num_candidates,
        num_online=config.num_online,
        # eq. (4) is off for the likelihood: its NLL has no zero (a ratio of two models' mean NLLs means nothing)
        adaptive_alpha=config.adaptive_alpha and spec.name != "likelihood",
        self_match=config.self_match,
        online_key=ONLINE_KEY,
        id_key=ID_KEY,
        # decomposed OTC when set; "matched" starts at 0.5, the tuning loop sets the pair's share per deployment
        online_fraction=0.5 if config.online_fraction == "matched" else config.online_fraction,
        source=config.mix_source,
        deployment_key=DEPLOYMENT_KEY,
        score_every=config.score_every,
    )
