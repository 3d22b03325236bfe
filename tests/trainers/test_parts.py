"""The learner owns the training of its sampler's learned parts (trainers/parts.py): protocol, numbers, checkpoints.

d_e's CVAE and Balanced Replay's density-ratio network used to train themselves (their own optimiser, random
stream and counters). Their trainers must give the same numbers as that algorithm (a copy of it is kept here), and
checkpoints written then (``data/learner_states_01d1a80.pt``, written by main at commit 01d1a80) must still load.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded, Unbounded

from torchrl_otc import BalancedReplaySampler, EmbeddingDistance, FeatureDistance
from torchrl_otc._random import RandomStream
from torchrl_otc.configs.algorithms import make_config
from torchrl_otc.data.samplers.balanced_replay import js_density_ratio_loss
from torchrl_otc.modules.trainable import Fittable, TrainablePart
from torchrl_otc.objectives import TransitionVAELoss
from torchrl_otc.trainers.learner import AgentLearner
from torchrl_otc.trainers.parts import (
    BalancedReplayTrainer,
    EmbeddingDistanceTrainer,
    legacy_part_states,
    trainable_part,
)

DATA = Path(__file__).parent / "data"


def transitions(n: int, seed: int, shift: float = 0.0, obs: int = 4, act: int = 2) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, obs, generator=g)
    a = torch.rand(n, act, generator=g) * 2 - 1
    return TensorDict(
        {
            "observation": o,
            "action": a,
            ("next", "observation"): o + 0.1 * a.sum(-1, keepdim=True) + shift,
            ("next", "reward"): -a.pow(2).sum(-1, keepdim=True),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        [n],
    )


def learner(obs: int = 4, act: int = 2, hidden=(16, 16), batch: int = 32, **kwargs) -> AgentLearner:
    cfg = make_config("td3bc", hidden_sizes=hidden, batch_size=batch)
    kwargs.setdefault("merged_capacity", 5000)
    kwargs.setdefault("online_capacity", 500)
    return AgentLearner(cfg, Unbounded(shape=(obs,)), Bounded(-1.0, 1.0, (act,)), seed=0, **kwargs)


# ------------------------------------------------------------------------------------------ the old algorithms
class _OldSelfTrainedCVAE:
    """d_e's training as EmbeddingDistance ran it on itself at 01d1a80 (update, pretrain, _train_step)."""

    def __init__(self, distance: EmbeddingDistance) -> None:
        self.distance = distance
        module = TensorDictModule(
            distance.vae,
            in_keys=list(distance.in_keys),
            out_keys=["vae_reconstruction", "vae_target", "vae_loc", "vae_log_std"],
        )
        self.loss_module = TransitionVAELoss(module, kl_weight=distance.kl_weight)
        params = [
            p
            for p in self.loss_module.vae_network_params.values(True, True)
            if isinstance(p, nn.Parameter)
        ]
        self.optimizer = torch.optim.Adam(params, lr=distance.lr)
        self.stream = RandomStream(distance.seed + 1, distance.device)
        self._calls = 0

    def _train_step(self, batch):
        d = self.distance
        batch = batch.select(*d.in_keys).to(d.device)
        with self.stream.activate(), torch.enable_grad():
            if d.train_batch_size is not None and len(batch) > d.train_batch_size:
                batch = batch[torch.randperm(len(batch), device=batch.device)[: d.train_batch_size]]
            loss, metadata = self.loss_module.vae_loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        d.version += 1
        return {"loss_vae": loss.detach(), **metadata}

    # the TrainablePart protocol, so that a learner can run it in place of its trainer
    def fit(self, data):
        return self.distance.fit(data)

    def update(self, batch):
        self._calls += 1
        if (self._calls - 1) % self.distance.update_every:
            return {}
        return self._train_step(batch)

    def pretrain(self, data, num_updates, *, progress=False):
        flat = data.select(*self.distance.in_keys).reshape(-1)
        size = self.distance.train_batch_size or 256
        metrics = {}
        for _ in range(num_updates):
            with self.stream.activate():
                index = torch.randint(len(flat), (size,))
            metrics = self._train_step(flat[index])
        return {k: float(v) for k, v in metrics.items()}

    def state_dict(self):
        return {}

    def load_state_dict(self, state_dict):
        return None


class _OldSelfTrainedDensityRatio:
    """Balanced Replay's update() as the sampler ran it on itself at 01d1a80 (its own generator and Adam)."""

    def __init__(self, sampler: BalancedReplaySampler) -> None:
        self.sampler = sampler
        self.generator = torch.Generator().manual_seed(sampler.seed)
        self.optimizer = None

    def fit(self, data):
        return self.sampler.fit(data)

    def update(self, batch=None):
        s = self.sampler
        storage = s._storage
        if storage is None or len(storage) == 0:
            return {}
        online_rows, offline_rows = s._online_offline_rows(storage)
        if online_rows.numel() == 0 or offline_rows.numel() == 0:
            return {}
        size = s.train_batch_size
        on = online_rows[s._randint(online_rows.numel(), size, self.generator, online_rows.device)]
        off = offline_rows[
            s._randint(offline_rows.numel(), size, self.generator, online_rows.device)
        ]
        weight = s._ratio(storage, torch.cat([on, off]))
        loss = js_density_ratio_loss(weight[:size], weight[size:])
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(s.network.parameters(), lr=s.lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def pretrain(self, data, num_updates, *, progress=False):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state_dict):
        return None


def _run(agent: AgentLearner, pretrain: int) -> list[dict[str, float]]:
    agent.add_offline(transitions(400, seed=0))
    metrics = [agent.pretrain_sampler(pretrain)]
    metrics.append(agent.update())
    agent.add_deployment(transitions(50, seed=1, shift=0.4))
    metrics += [agent.update() for _ in range(7)]
    agent.add_deployment(transitions(60, seed=2, shift=0.2))
    metrics += [agent.update() for _ in range(3)]
    return metrics


@pytest.mark.parametrize("compile", [False, True])
def test_learner_trained_cvae_equals_the_old_self_trained_distance(compile):
    """Same optimiser, random stream, update_every schedule and subset draws: the same bits."""
    agents = []
    for old in (False, True):
        distance = EmbeddingDistance(
            4, 2, hidden_sizes=(16,), update_every=2, train_batch_size=16, seed=7, compile=compile
        )
        agent = learner(
            sampler_kwargs={"distance": distance, "num_candidates": 64, "num_online": 20}
        )
        assert isinstance(agent.trained_parts["distance"], EmbeddingDistanceTrainer)
        if old:
            agent.trained_parts["distance"] = _OldSelfTrainedCVAE(distance)
        agents.append((agent, _run(agent, pretrain=15)))
    (new, new_metrics), (old, old_metrics) = agents
    for a, b in zip(new.distance.parameters(), old.distance.parameters()):
        assert torch.equal(a, b)
    s, o = new.algorithm.loss.state_dict(), old.algorithm.loss.state_dict()
    assert all(torch.equal(s[k], o[k]) for k in s)
    for a, b in zip(new_metrics, old_metrics):
        assert {k: float(v) for k, v in a.items() if k != "distance/num_updates"} == {
            k: float(v) for k, v in b.items()
        }
    assert new.trained_parts["distance"].num_updates == 15 + 6  # 11 updates, one CVAE step every 2
    assert new.distance.version == 1 + 15 + 6


def test_learner_trained_density_ratio_equals_the_old_self_trained_sampler():
    agents = []
    for old in (False, True):
        sampler = BalancedReplaySampler(
            hidden_sizes=(16,), num_candidates=64, train_batch_size=16, seed=3
        )
        agent = learner(sampler_factory=lambda online, sampler=sampler: sampler)
        assert isinstance(agent.trained_parts["sampler"], BalancedReplayTrainer)
        if old:
            agent.trained_parts["sampler"] = _OldSelfTrainedDensityRatio(sampler)
        agents.append((agent, _run(agent, pretrain=5)))
    (new, new_metrics), (old, old_metrics) = agents
    for a, b in zip(new.sampler.network.parameters(), old.sampler.network.parameters()):
        assert torch.equal(a, b)
    s, o = new.algorithm.loss.state_dict(), old.algorithm.loss.state_dict()
    assert all(torch.equal(s[k], o[k]) for k in s)
    assert [m.get("sampler/loss") for m in new_metrics] == [
        m.get("sampler/loss") for m in old_metrics
    ]
    assert new.trained_parts["sampler"].num_updates == 10  # trained from the first deployment on


# ------------------------------------------------------------------------------------------ protocol
def test_the_learner_checks_the_protocol():
    assert isinstance(EmbeddingDistanceTrainer(EmbeddingDistance(3, 1)), TrainablePart)
    assert isinstance(BalancedReplayTrainer(BalancedReplaySampler()), TrainablePart)
    assert trainable_part(FeatureDistance()) is None and isinstance(FeatureDistance(), Fittable)
    assert trainable_part(None) is None
    # a distance is a function of its parameters only: its trainer is the learner's
    assert not isinstance(EmbeddingDistance(3, 1), TrainablePart)

    class PretrainOnly:
        def pretrain(self, data, num_updates, *, progress=False):
            return {}

    with pytest.raises(
        TypeError, match=r"sampler PretrainOnly has pretrain\(\).*missing \['fit', 'update'"
    ):
        trainable_part(PretrainOnly(), "sampler")


def test_parts_train_in_their_own_streams():
    """Training d_e leaves the agent's stream, the buffers' generators and the caller's state alone."""
    results = []
    for train in (False, True):
        agent = learner(
            sampler_kwargs={
                "distance": EmbeddingDistance(4, 2, hidden_sizes=(8,), seed=1),
                "num_candidates": 64,
                "num_online": 20,
            }
        )
        agent.add_offline(transitions(300, seed=0))
        agent.add_deployment(transitions(40, seed=1))
        torch.manual_seed(11)
        for _ in range(3):
            agent.update(train_sampler=train)
        results.append(
            (agent.stream.state_dict()["cpu"], agent.generator.get_state(), torch.get_rng_state())
        )
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("kind", ["embedding", "balanced_replay"])
def test_learner_state_round_trip_continues_identically(kind):
    def make():
        if kind == "embedding":
            distance = EmbeddingDistance(4, 2, hidden_sizes=(8,), update_every=2, seed=1)
            return learner(
                sampler_kwargs={"distance": distance, "num_candidates": 64, "num_online": 20}
            )
        sampler = BalancedReplaySampler(hidden_sizes=(8,), num_candidates=64, train_batch_size=8)
        return learner(sampler_factory=lambda online: sampler)

    source, dest = make(), make()
    for agent in (source, dest):
        agent.add_offline(transitions(300, seed=0))
        agent.add_deployment(transitions(40, seed=1), adapt_alpha=False)
    source.pretrain_sampler(3)
    for _ in range(3):
        source.update()
    dest.load_state_dict(source.state_dict())
    name = "distance" if kind == "embedding" else "sampler"
    assert dest.state_dict()["parts"].keys() == source.state_dict()["parts"].keys() == {name}
    # the part's optimiser moments, random stream and counters came along: it trains on identically
    batch = transitions(32, seed=5)
    after = [
        [agent.trained_parts[name].update(batch) for _ in range(3)] for agent in (source, dest)
    ]
    assert [{k: float(v) for k, v in m.items()} for m in after[0]] == [
        {k: float(v) for k, v in m.items()} for m in after[1]
    ]
    assert any(after[0])  # it did train
    # no online-embedding cache (whose history a checkpoint omits): whole updates continue identically
    if kind == "balanced_replay":
        assert [source.update() for _ in range(3)] == [dest.update() for _ in range(3)]


def test_checkpoints_written_before_the_learner_owned_training_load():
    """Learner states of 01d1a80: d_e's optimiser, stream and counters in the distance's extra state, Balanced
    Replay's in its sampler state (version 1). Written by that commit with the two learners built below, after
    add_offline(transitions(200, seed 0)), pretrain_sampler(3) (d_e), add_deployment(transitions(30, seed 1,
    shift 0.5)) and three updates."""
    states = torch.load(DATA / "learner_states_01d1a80.pt", weights_only=True)

    def data(n, seed, shift=0.0):
        return transitions(n, seed, shift, obs=3, act=1)

    def old_learner(**kwargs):
        return learner(obs=3, act=1, hidden=(8,), batch=16, merged_capacity=400,
                       online_capacity=50, **kwargs)  # fmt: skip

    # d_e
    distance = EmbeddingDistance(3, 1, 4, hidden_sizes=(8,), update_every=2, seed=1)
    agent = old_learner(
        sampler_kwargs={"distance": distance, "num_candidates": 32, "num_online": 20}
    )
    agent.add_offline(data(200, 0))
    agent.add_deployment(data(30, 1, 0.5))
    saved = states["embedding"]
    assert "parts" not in saved
    agent.load_state_dict(saved)
    old = saved["sampler"]["distance"]
    prefix = "loss_module.vae_network_params.module."
    now = distance.state_dict()
    assert {k[len(prefix) :] for k in old if k.startswith(prefix)} == {
        k[len("vae.") :] for k in now
    }
    for key, value in old.items():
        if key.startswith(prefix):
            assert torch.equal(now["vae." + key[len(prefix) :]], value), key
    trainer, extra = agent.trained_parts["distance"], old["_extra_state"]
    assert (trainer.num_updates, trainer.calls) == (extra["num_updates"], extra["calls"]) == (5, 3)
    assert torch.equal(trainer.stream.state_dict()["cpu"], extra["stream"]["cpu"])
    moments = [v for s in trainer.optimizer.state_dict()["state"].values() for v in s.values()]
    expected = [v for s in extra["optimizer"]["state"].values() for v in s.values()]
    assert len(moments) == len(expected) > 0
    assert all(torch.equal(a, b) for a, b in zip(moments, expected))
    # and it trains on: update_every=2 after 3 calls, so the 5th call steps
    assert "distance/loss_vae" not in agent.update() and agent.update()["distance/loss_vae"] > 0

    # Balanced Replay
    sampler = BalancedReplaySampler(
        hidden_sizes=(8,), num_candidates=32, train_batch_size=8, seed=1
    )
    agent = old_learner(sampler_factory=lambda online: sampler)
    agent.add_offline(data(200, 0))
    agent.add_deployment(data(30, 1, 0.5))
    saved = states["balanced_replay"]
    assert saved["sampler"]["version"] == 1 and set(legacy_part_states(saved["sampler"])) == {
        "sampler"
    }
    agent.load_state_dict(saved)
    for key, value in saved["sampler"]["network"].items():
        assert torch.equal(sampler.network.state_dict()[key], value), key
    trainer = agent.trained_parts["sampler"]
    assert trainer.num_updates == saved["sampler"]["num_updates"] == 3
    assert torch.equal(trainer.generator.get_state(), saved["sampler"]["generator"])
    moments = [v for s in trainer.optimizer.state_dict()["state"].values() for v in s.values()]
    expected = [v for s in saved["sampler"]["optimizer"]["state"].values() for v in s.values()]
    assert len(moments) == len(expected) > 0
    assert all(torch.equal(a, b) for a, b in zip(moments, expected))
    assert agent.update()["sampler/num_updates"] == 4.0
