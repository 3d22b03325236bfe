"""Learned distances (d_e, d_q) and Balanced Replay: cost per update against uniform sampling, and what they pick.

Part 1, cost (the OTC paper's Table 2 compares a BCQ update with and without OTC): one ``AgentLearner.update()``
(sampling + the algorithm's gradient step + the sampler's own training step, if any) for BCQ and TD3+BC at Table 3's
sizes (batch 128, |B| = 512, |D| = 2000, hidden (64, 64) for BCQ, (256, 256) for TD3+BC, embedding 10) on a
HalfCheetah-2x3-like agent (17-d state, 3-d action), with each sampler: uniform (TorchRL's RandomSampler), OTC with
the feature distance, with d_e, with d_q, and Balanced Replay. The merged buffer holds ``--offline`` offline rows and
``--online`` online rows (also in the online buffer). All configurations run interleaved in one process; the
figures are medians over blocks, and ratios are against uniform sampling for the same algorithm.

Part 2, what the samplers pick, on data whose dynamics changed (no training of an agent): the share of drawn
offline rows with the online dynamics on point-mass transitions (section 4.5's setting, ``synthetic.py``), and the
KL of the batches' ``(s, a) -> s'`` distribution to the online kernel on the discrete MDP of the sampler's tests.
d_e is pretrained on the merged data first (1,500 steps); d_q uses a critic of known structure on the MDP only
(distinct values per state-action pair and per next state: it has no critic on the point mass).

``--device cuda`` puts part 1's networks (the algorithm's, d_e's CVAE, Balanced Replay's density-ratio network),
buffers and data on the GPU, and waits for the GPU (``torch.cuda.synchronize``) before the clock starts and before
it is read. Part 2 measures what is drawn, not time, and runs on the CPU whatever ``--device`` says.

Usage: ``python benchmarks/bench_learned_distances.py [--repeats 15] [--block 20] [--threads 1] [--only cost,readings]
[--device cpu]``
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from typing import Any

import torch
from tensordict import TensorDict
from torchrl.data import (
    Bounded,
    LazyTensorStorage,
    RandomSampler,
    TensorDictReplayBuffer,
    Unbounded,
)

from torchrl_otc import (
    BalancedReplaySampler,
    EmbeddingDistance,
    FeatureDistance,
    OTCSampler,
    ValueDistance,
)
from torchrl_otc.configs.algorithms import make_config
from torchrl_otc.data.synthetic import discrete_mdp, kernel_kl, point_mass_sampling_shares
from torchrl_otc.trainers.learner import AgentLearner
from torchrl_otc.trainers.parts import EmbeddingDistanceTrainer

OBS, ACT = 17, 3


def transitions(n: int, seed: int, online: bool) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, OBS, generator=g)
    act = torch.rand(n, ACT, generator=g) * 2 - 1
    return TensorDict(
        {
            "observation": obs,
            "action": act,
            ("next", "observation"): obs + 0.1 * act.sum(-1, keepdim=True) + 0.05 * online,
            ("next", "reward"): torch.randn(n, 1, generator=g),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        [n],
    )


def samplers(device: torch.device) -> dict:
    """The samplers of part 1; d_e's CVAE on ``device`` (Balanced Replay's network follows the storage's device,
    d_q uses the learner's critic)."""
    return {
        "uniform": lambda online: RandomSampler(),
        "OTC feature": lambda online: OTCSampler(online),
        "OTC feature, compiled": lambda online: OTCSampler(
            online, distance=FeatureDistance(compile=True)
        ),
        "OTC feature, compiled, score_every=4": lambda online: OTCSampler(
            online, distance=FeatureDistance(compile=True), score_every=4
        ),
        "OTC d_e": lambda online: OTCSampler(
            online, distance=EmbeddingDistance(OBS, ACT, device=device)
        ),
        "OTC d_e, compiled": lambda online: OTCSampler(
            online, distance=EmbeddingDistance(OBS, ACT, compile=True, device=device)
        ),
        "OTC d_e, CVAE step every 10 updates, compiled": lambda online: OTCSampler(
            online,
            distance=EmbeddingDistance(OBS, ACT, update_every=10, compile=True, device=device),
        ),
        "OTC d_e, CVAE step every 10 updates, compiled, score_every=4": lambda online: OTCSampler(
            online,
            distance=EmbeddingDistance(OBS, ACT, update_every=10, compile=True, device=device),
            score_every=4,
        ),
        "OTC d_q": lambda online: OTCSampler(online, distance=ValueDistance()),
        "Balanced Replay": lambda online: BalancedReplaySampler(),
    }


def learner(
    algo: str,
    factory,
    offline: TensorDict,
    online: TensorDict,
    device: torch.device | str = "cpu",
    warmup: int = 5,
) -> AgentLearner:
    """An ``algo`` learner at Table 3's sizes (this module's agent) sampling with ``factory``, holding ``offline``
    and one deployment ``online`` (alpha adapted), after ``warmup`` updates (the first samples build caches).
    The cost benchmarks of the learned distances and of d_q (``bench_value_match.py``, ``bench_dq_refresh.py``)
    all build their learners here."""
    out = AgentLearner(
        make_config(algo),
        Unbounded(shape=(OBS,)),
        Bounded(-1.0, 1.0, (ACT,)),
        seed=0,
        device=device,
        storage_device=device,
        merged_capacity=len(offline) + len(online),
        online_capacity=len(online),
        sampler_factory=factory,
    )
    out.add_offline(offline)
    out.add_deployment(online, adapt_alpha=True)
    for _ in range(warmup):
        out.update()
    return out


def synchronizer(device: torch.device | str):
    """A function that waits for ``device`` before a clock is read (nothing to wait for on the CPU)."""
    device = torch.device(device)
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def interleaved_update_ms(
    learners: dict, repeats: int, block: int, sync=lambda: None
) -> dict[Any, list[float]]:
    """Milliseconds per ``update()`` of each learner: ``repeats`` rounds, each timing ``block`` updates of every
    learner in turn (interleaved, so that a load change affects all of them alike); ``sync`` waits for the device."""
    times: dict[Any, list[float]] = {key: [] for key in learners}
    for _ in range(repeats):
        for key, each in learners.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(block):
                each.update()
            sync()
            times[key].append((time.perf_counter() - t0) * 1e3 / block)
    return times


def cost(args) -> list[tuple[str, str, float, float]]:
    device = torch.device(args.device)
    sync = synchronizer(device)
    offline = transitions(args.offline, 0, False).to(device)
    online = transitions(args.online, 1, True).to(device)
    learners = {
        (algo, name): learner(algo, factory, offline, online, device)
        for algo in ("bcq", "td3bc")
        for name, factory in samplers(device).items()
    }
    times = interleaved_update_ms(learners, args.repeats, args.block, sync)
    rows = []
    for (algo, name), values in times.items():
        ms = statistics.median(values)
        base = statistics.median(times[algo, "uniform"])
        rows.append((algo, name, ms, ms / base))
    return rows


def readings() -> list[tuple[str, str, float]]:
    rows: list[tuple[str, str, float]] = []

    def with_pretrained(factory):
        def make(online):
            sampler = factory(online)
            fit, trainer = sampler.distance.fit, EmbeddingDistanceTrainer(sampler.distance)

            def fit_and_pretrain(data):  # point_mass_sampling_shares calls fit(offline) once
                fit(data)
                trainer.pretrain(data, 1500)

            sampler.distance.fit = fit_and_pretrain
            return sampler

        return make

    point_mass = {
        "uniform": lambda online: RandomSampler(),
        "OTC feature (displacement)": lambda online: OTCSampler(online),
        "OTC d_e, reconstruct=action (paper)": with_pretrained(
            lambda online: OTCSampler(online, distance=EmbeddingDistance(2, 2))
        ),
        "OTC d_e, reconstruct=next_state": with_pretrained(
            lambda online: OTCSampler(
                online, distance=EmbeddingDistance(2, 2, reconstruct="next_state")
            )
        ),
    }
    for name, factory in point_mass.items():
        right, _ = point_mass_sampling_shares(factory, n_offline=20_000, calls=50)
        rows.append(("point mass: offline rows with the online dynamics", name, right))

    p_b, p_d, offline, online_data = discrete_mdp()
    table = torch.randperm(10, generator=torch.Generator().manual_seed(3)).float().reshape(5, 2) + 1

    def q(s, a):
        return (s @ table * a).sum(-1)

    def v(s):
        return s @ table.mean(-1)

    mdp = {
        "uniform": lambda online: RandomSampler(),
        "OTC feature (displacement)": lambda online: OTCSampler(online),
        "OTC d_e, reconstruct=action (paper)": lambda online: OTCSampler(
            online, distance=EmbeddingDistance(5, 2)
        ),
        "OTC d_e, reconstruct=next_state": lambda online: OTCSampler(
            online, distance=EmbeddingDistance(5, 2, reconstruct="next_state")
        ),
        "OTC d_q (critic of known structure)": lambda online: OTCSampler(
            online, distance=ValueDistance(q_function=q, value_function=v)
        ),
    }
    for name, factory in mdp.items():
        online = TensorDictReplayBuffer(storage=LazyTensorStorage(5_000))
        sampler = factory(online)
        merged = TensorDictReplayBuffer(
            storage=LazyTensorStorage(30_000), sampler=sampler, batch_size=128
        )
        merged.extend(offline)
        online.extend(online_data)
        merged.extend(online_data)
        distance = getattr(sampler, "distance", None)
        if callable(getattr(distance, "fit", None)):
            distance.fit(merged[:])
        if isinstance(distance, EmbeddingDistance):
            EmbeddingDistanceTrainer(distance).pretrain(merged[:], 1500)
        merged.set_rng(torch.Generator().manual_seed(0))
        batches = torch.cat([merged.sample() for _ in range(150)])
        rows.append(("discrete MDP: KL to the online kernel", name, kernel_kl(batches, p_d)[0]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--offline", type=int, default=100_000)
    parser.add_argument("--online", type=int, default=10_000)
    parser.add_argument("--only", default="cost,readings")
    parser.add_argument(
        "--device", default="cpu", help="where part 1 (cost) runs; part 2 runs on the CPU"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    where = (
        torch.cuda.get_device_name(args.device)
        if torch.device(args.device).type == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"# {datetime.date.today()} | {where} | device {args.device} | torch "
        f"{torch.__version__} | threads {args.threads} | offline {args.offline} online {args.online}\n"
    )
    parts = args.only.split(",")
    if "cost" in parts:
        print("| algorithm | sampler | ms per update | ratio to uniform |\n|---|---|---|---|")
        for algo, name, ms, ratio in cost(args):
            print(f"| {algo} | {name} | {ms:.2f} | {ratio:.2f} |")
        print()
    if "readings" in parts:
        print("| measure | sampler | value |\n|---|---|---|")
        for measure, name, value in readings():
            print(f"| {measure} | {name} | {value:.3f} |")


if __name__ == "__main__":
    main()
