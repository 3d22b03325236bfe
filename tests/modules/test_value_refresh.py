"""d_q with stale values: ValueDistance(refresh_every=k) with OTCSampler(score_every=k) (issue 14, item 4).

The exact d_q recomputes the critic's values of every compared row at every update; ``refresh_every=k`` lets one
scoring serve ``k`` batches. These tests check when the values are recomputed (the critic passes are counted), that
``refresh_every=1`` is the exact procedure, and that bad settings are refused naming the value.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from torchrl_otc import OTCSampler, ValueDistance
from torchrl_otc.configs.parts import ConfigError
from torchrl_otc.configs.tune import TuneConfig


class CountingCritic:
    """A :class:`~torchrl_otc.modules.ValueFunctions` with known values that counts its passes and its updates."""

    def __init__(self, num_updates: int | None = 0) -> None:
        self.passes = 0
        self.rows = 0
        if num_updates is not None:
            self.num_updates = num_updates
        self.shift = 0.0

    def q_value(self, observation, action, reduction="mean"):
        self.passes += 1
        self.rows += observation.shape[0]
        return observation.sum(-1) + action.sum(-1) + self.shift

    def state_value(self, observation, actions="policy", num_samples=10, reduction="mean"):
        return observation.sum(-1) + 1.0 + self.shift

    def check_state_value(self, actions):
        pass


def _buffers(critic: CountingCritic, refresh_every: int, score_every: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def data(n: int, online: bool) -> TensorDict:
        s = torch.randn(n, 2, generator=g)
        a = torch.rand(n, 1, generator=g)
        return TensorDict(
            {
                "observation": s,
                "action": a,
                ("next", "observation"): s + a + (0.0 if online else 0.3),
                "is_online": torch.full((n,), online),
            },
            [n],
        )

    online = TensorDictReplayBuffer(storage=LazyTensorStorage(100))
    distance = ValueDistance(critic, refresh_every=refresh_every)
    sampler = OTCSampler(
        online, distance=distance, num_candidates=8, num_online=6, score_every=score_every
    )
    merged = TensorDictReplayBuffer(storage=LazyTensorStorage(100), sampler=sampler, batch_size=4)
    merged.extend(data(30, False))
    d1 = data(12, True)
    online.extend(d1)
    merged.extend(d1)
    sampler._rng = torch.Generator().manual_seed(seed)
    return merged, sampler


def test_version_follows_the_critics_updates():
    critic = CountingCritic()
    exact, stale = ValueDistance(critic), ValueDistance(critic, refresh_every=3)
    versions = []
    for n in range(7):
        critic.num_updates = n
        versions.append((exact.version, stale.version))
    assert [v for v, _ in versions] == [None] * 7  # exact: scored at every update
    assert [v for _, v in versions] == [0, 0, 0, 1, 1, 1, 2]
    assert ValueDistance(refresh_every=3).version is None  # unbound: nothing to follow yet


@pytest.mark.parametrize("k", [2, 4])
def test_one_critic_pass_serves_k_updates(k):
    critic = CountingCritic()
    merged, sampler = _buffers(critic, refresh_every=k, score_every=k)
    updates = 3 * k
    for _ in range(updates):
        sampler.sample(merged.storage, 4)
        critic.num_updates += 1  # the learner's update after each batch
    assert critic.passes == updates // k
    assert critic.rows == (updates // k) * (
        k * 8 + 6
    )  # k |B| candidates and the |D| online rows per pass


def test_refresh_every_one_is_exact_and_passes_every_update():
    critic = CountingCritic()
    merged, sampler = _buffers(critic, refresh_every=1, score_every=4)
    for _ in range(6):
        sampler.sample(merged.storage, 4)
        critic.num_updates += 1
    assert critic.passes == 6
    # and it draws what a sampler without score_every draws (per-update procedure, same seed)
    a_critic, b_critic = CountingCritic(), CountingCritic()
    (ma, a), (mb, b) = _buffers(a_critic, 1, 4, seed=3), _buffers(b_critic, 1, 1, seed=3)
    for _ in range(5):
        assert torch.equal(a.sample(ma.storage, 4)[0], b.sample(mb.storage, 4)[0])


def test_stale_scores_are_those_of_the_groups_first_critic():
    """Within a group the batches come from the values scored at its start, whatever the critic does meanwhile;
    the next group sees the new critic."""
    critic = CountingCritic()
    merged, sampler = _buffers(critic, refresh_every=2, score_every=2)
    sampler.sample(merged.storage, 4)
    critic.num_updates, critic.shift = 1, 100.0  # a big change of the critic inside the group
    sampler.sample(merged.storage, 4)
    assert critic.passes == 1
    critic.num_updates = 2
    sampler.sample(merged.storage, 4)
    assert critic.passes == 2


def test_refresh_every_is_refused_where_it_cannot_work():
    with pytest.raises(ValueError, match="refresh_every must be a positive integer; got 0"):
        ValueDistance(refresh_every=0)
    with pytest.raises(ValueError, match="with q_function and value_function there is none"):
        ValueDistance(
            q_function=lambda s, a: s.sum(-1), value_function=lambda s: s.sum(-1), refresh_every=2
        )
    with pytest.raises(ValueError, match="counts its updates"):
        ValueDistance(CountingCritic(num_updates=None), refresh_every=2)


def test_config_value_refresh_every():
    cfg = TuneConfig(distance="value", value_refresh_every=4, score_every=4).validate()
    assert cfg.sampler.distance.refresh_every == 4
    with pytest.raises(ConfigError, match="Set score_every=4 too"):
        TuneConfig(distance="value", value_refresh_every=4).validate()
    with pytest.raises(ConfigError, match="distance=feature has none"):
        TuneConfig(distance="feature", value_refresh_every=2, score_every=2).validate()
    with pytest.raises(ConfigError, match="refresh_every"):
        TuneConfig(distance="value", value_refresh_every=0).validate()
