"""BREMEN's cost per update (issue 18): the model step every update, the policy step every ``policy_every`` updates.

One agent of ``mpe/navigation-4`` (16-d state, 2-d action) with the defaults of ``BREMENConfig`` (ensemble of 5
models of (256, 256), batch 128, rollouts of 10 steps from the batch's 128 states, one TRPO step with KL bound
0.05): the median over repeats of one model step (``BREMEN.update`` between policy steps), of one policy step
(rollouts, GAE, the value regression, the TRPO step), and the mean cost per update with a policy step every
``policy_every`` updates; against a TD3+BC update on the same batch, timed in the same process.

Usage: ``python benchmarks/bench_bremen.py [--repeats 20] [--threads 1] [--device cpu]``
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch
from bench_learned_distances import synchronizer
from tensordict import TensorDict
from torchrl.data import Bounded, Unbounded

from torchrl_otc.trainers.algorithms import make_algorithm

OBS, ACT = 16, 2


def batch(n: int, seed: int, device: torch.device) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, OBS, generator=g)
    act = torch.rand(n, ACT, generator=g) * 0.2 - 0.1
    return TensorDict(
        {
            "observation": obs,
            "action": act,
            ("next", "observation"): obs + 0.1 * torch.randn(n, OBS, generator=g),
            ("next", "reward"): torch.randn(n, 1, generator=g),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        [n],
    ).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = synchronizer(device)
    obs_spec, act_spec = Unbounded(shape=(OBS,)), Bounded(-0.1, 0.1, (ACT,))
    bremen = make_algorithm("bremen", obs_spec, act_spec, device, seed=0)
    td3bc = make_algorithm("td3bc", obs_spec, act_spec, device, seed=0)
    data = batch(2000, 0, device)
    bremen.bc_initialise(data)
    train = batch(128, 1, device)
    every = bremen.config.policy_every

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - t0) * 1e3

    model, policy, base = [], [], []
    for _ in range(2):  # warm-up: one policy step and a few model steps
        for _ in range(every):
            bremen.update(train)
            td3bc.update(train)
    for _ in range(args.repeats):
        for step in range(every):
            ms = timed(lambda: bremen.update(train))
            (policy if (bremen.num_updates % every) == 0 else model).append(ms)
            if step < 5:
                base.append(timed(lambda: td3bc.update(train)))
    m, p, b = statistics.median(model), statistics.median(policy), statistics.median(base)
    per_update = ((every - 1) * m + p) / every
    machine = platform.processor() or platform.machine()
    print(
        f"# {datetime.date.today()} | {machine} | device {device} | torch {torch.__version__} | threads "
        f"{torch.get_num_threads()} | policy_every {every} | repeats {args.repeats}\n"
    )
    print("| step | ms |")
    print("|---|---|")
    print(f"| BREMEN model step (update without a policy step) | {m:.2f} |")
    print(
        f"| BREMEN policy step (rollouts, GAE, value regression, TRPO), update included | {p:.2f} |"
    )
    print(f"| BREMEN mean per update (policy step every {every}) | {per_update:.2f} |")
    print(f"| TD3+BC update, same batch | {b:.2f} |")
    print(f"| BREMEN per update / TD3+BC update | {per_update / b:.2f} |")


if __name__ == "__main__":
    main()
