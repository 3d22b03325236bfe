"""Milliseconds per gradient update of each base algorithm, against a plain-PyTorch version of the same update.

Sizes are the OTC paper's Table 3 (batch 128; hidden (64, 64) for BCQ and its VAE, (256, 256) otherwise; ReLU)
on a HalfCheetah-2x3-like agent (17-d state, 3-d action). The package's update is
``Algorithm.update`` on an algorithm from ``torchrl_otc.trainers.algorithms.make_algorithm`` (TorchRL ``CQLLoss`` /
``TD3BCLoss``, this package's ``BCQLoss`` / ``AWACLoss``). Each plain-PyTorch reference below does the same
computation in the same order with ``nn.Module`` networks and tensors (the authors' or CORL's code structure).
Both run interleaved in one process on pre-drawn batches (no sampling cost); figures are medians over blocks of
updates (TD3+BC's blocks are even, so they hold as many actor steps as the schedule gives).

A second table times N TD3+BC agents (N = 1..6): N separate ``TD3BC.update`` calls against one
``BatchedTD3BC.update`` on the same N batches (stacked parameters, one batched matmul per layer).

Usage: ``python benchmarks/bench_update.py [--repeats 20] [--block 10] [--threads 1] [--only bcq,td3bc,batched]
[--device cpu]``
"""

from __future__ import annotations

import argparse
import copy
import datetime
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import nn
from torchrl.data import Bounded, Unbounded
from torchrl.objectives import SoftUpdate

from torchrl_otc.configs.algorithms import make_config
from torchrl_otc.objectives.utils import ForeachSoftUpdate, critic_values
from torchrl_otc.trainers.algorithms import BatchedTD3BC, make_algorithm

OBS, ACT, BATCH, GAMMA, TAU = 17, 3, 128, 0.99, 0.005


def mlp(inp: int, out: int, hidden: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(inp, h), nn.ReLU()]
        inp = h
    return nn.Sequential(*layers, nn.Linear(inp, out))


class TwinQ(nn.Module):
    def __init__(self, hidden: Sequence[int]) -> None:
        super().__init__()
        self.q1, self.q2 = mlp(OBS + ACT, 1, hidden), mlp(OBS + ACT, 1, hidden)

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([s, a], -1)
        return self.q1(x), self.q2(x)


def soft_update(target: nn.Module, source: nn.Module) -> None:
    with torch.no_grad():
        for t, p in zip(target.parameters(), source.parameters()):
            t.lerp_(p, TAU)


def copy_of(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


# ------------------------------------------------------------------------------------ plain references
class PlainTD3BC:
    """Fujimoto and Gu (2021)'s TD3+BC update (their ``train``), policy delay 2."""

    def __init__(
        self, hidden=(256, 256), lr=3e-4, alpha=2.5, noise=0.2, clip=0.5, device="cpu"
    ) -> None:
        self.actor = nn.Sequential(mlp(OBS, ACT, hidden), nn.Tanh()).to(device)
        self.critic = TwinQ(hidden).to(device)
        self.actor_t, self.critic_t = copy_of(self.actor), copy_of(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=lr)
        self.alpha, self.noise, self.clip, self.it = alpha, noise, clip, 0

    def update(self, s, a, r, ns, term) -> None:
        self.it += 1
        with torch.no_grad():
            noise = (torch.randn_like(a) * self.noise).clamp(-self.clip, self.clip)
            na = (self.actor_t(ns) + noise).clamp(-1, 1)
            tq = torch.min(*self.critic_t(ns, na))
            y = r + GAMMA * (~term) * tq
        q1, q2 = self.critic(s, a)
        loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        self.critic_opt.zero_grad()
        loss.backward()
        self.critic_opt.step()
        if self.it % 2 == 0:
            pi = self.actor(s)
            q = self.critic.q1(torch.cat([s, pi], -1))
            lmbda = self.alpha / q.abs().mean().detach()
            actor_loss = -lmbda * q.mean() + F.mse_loss(pi, a)
            self.actor_opt.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()
            soft_update(self.critic_t, self.critic)
            soft_update(self.actor_t, self.actor)


class PlainVAE(nn.Module):
    def __init__(self, hidden: Sequence[int]) -> None:
        super().__init__()
        self.latent = 2 * ACT
        self.enc = mlp(OBS + ACT, 2 * self.latent, hidden)
        self.dec = mlp(OBS + self.latent, ACT, hidden)

    def forward(self, s, a):
        mean, log_std = self.enc(torch.cat([s, a], -1)).chunk(2, -1)
        std = log_std.clamp(-4, 15).exp()
        z = mean + std * torch.randn_like(std)
        return self.decode(s, z), mean, std

    def decode(self, s, z=None):
        if z is None:
            z = torch.randn(*s.shape[:-1], self.latent, device=s.device).clamp(-0.5, 0.5)
        return torch.tanh(self.dec(torch.cat([s, z], -1)))


class PlainPerturbation(nn.Module):
    def __init__(self, hidden: Sequence[int], phi: float = 0.05) -> None:
        super().__init__()
        self.net, self.phi = mlp(OBS + ACT, ACT, hidden), phi

    def forward(self, s, a):
        return (a + self.phi * torch.tanh(self.net(torch.cat([s, a], -1)))).clamp(-1, 1)


class PlainBCQ:
    """Fujimoto, Meger and Precup (2019)'s BCQ update (their ``train``): VAE, critic, actor, targets."""

    def __init__(
        self, hidden=(64, 64), vae_hidden=(64, 64), lr=1e-4, n=10, lmbda=0.75, device="cpu"
    ) -> None:
        self.actor, self.critic, self.vae = (
            PlainPerturbation(hidden).to(device),
            TwinQ(hidden).to(device),
            PlainVAE(vae_hidden).to(device),
        )
        self.actor_t, self.critic_t = copy_of(self.actor), copy_of(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=lr)
        self.vae_opt = torch.optim.Adam(self.vae.parameters(), lr=lr)
        self.n, self.lmbda = n, lmbda

    def update(self, s, a, r, ns, term) -> None:
        recon, mean, std = self.vae(s, a)
        kl = -0.5 * (1 + torch.log(std.pow(2)) - mean.pow(2) - std.pow(2)).mean()
        vae_loss = F.mse_loss(recon, a) + 0.5 * kl
        self.vae_opt.zero_grad()
        vae_loss.backward()
        self.vae_opt.step()
        with torch.no_grad():
            rep = torch.repeat_interleave(ns, self.n, 0)
            tq1, tq2 = self.critic_t(rep, self.actor_t(rep, self.vae.decode(rep)))
            tq = self.lmbda * torch.min(tq1, tq2) + (1 - self.lmbda) * torch.max(tq1, tq2)
            tq = tq.reshape(s.shape[0], -1).max(1)[0].reshape(-1, 1)
            y = r + GAMMA * (~term) * tq
        q1, q2 = self.critic(s, a)
        critic_loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        with torch.no_grad():
            sampled = self.vae.decode(s)
        actor_loss = -self.critic.q1(torch.cat([s, self.actor(s, sampled)], -1)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        soft_update(self.critic_t, self.critic)
        soft_update(self.actor_t, self.actor)


class TanhGaussian(nn.Module):
    """A tanh-squashed Gaussian policy with TorchRL's NormalParamExtractor scale mapping."""

    def __init__(self, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(OBS, 2 * ACT, hidden)
        self.bias = math.log(math.e - 1)  # softplus(bias) = 1

    def dist(self, s):
        loc, scale = self.net(s).chunk(2, -1)
        return torch.distributions.Normal(loc, F.softplus(scale + self.bias).clamp_min(1e-4))

    @staticmethod
    def _log_det(x):
        return 2 * (math.log(2) - x - F.softplus(-2 * x))

    def rsample_log_prob(self, s, shape=()):
        d = self.dist(s)
        x = d.rsample(shape)
        return torch.tanh(x), (d.log_prob(x) - self._log_det(x)).sum(-1)

    def log_prob(self, s, a):
        x = torch.atanh(a.clamp(-1 + 1e-6, 1 - 1e-6))
        return (self.dist(s).log_prob(x) - self._log_det(x)).sum(-1)


class PlainAWAC:
    """CORL's AWAC update: critic, actor (advantage-weighted likelihood, weights clipped at 100), targets."""

    def __init__(
        self, hidden=(256, 256), actor_lr=1e-4, critic_lr=5e-4, lam=1.0, device="cpu"
    ) -> None:
        self.actor, self.critic = TanhGaussian(hidden).to(device), TwinQ(hidden).to(device)
        self.critic_t = copy_of(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=critic_lr)
        self.lam = lam

    def update(self, s, a, r, ns, term) -> None:
        with torch.no_grad():
            na, _ = self.actor.rsample_log_prob(ns)
            y = r + GAMMA * (~term) * torch.min(*self.critic_t(ns, na))
        q1, q2 = self.critic(s, a)
        loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        self.critic_opt.zero_grad()
        loss.backward()
        self.critic_opt.step()
        log_prob = self.actor.log_prob(s, a)
        with torch.no_grad():
            pi, _ = self.actor.rsample_log_prob(s)
            v = torch.min(*self.critic(s, pi))
            q = torch.min(*self.critic(s, a))
            w = torch.exp((q - v).squeeze(-1) / self.lam).clamp_max(100.0)
        actor_loss = -(w * log_prob).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        soft_update(self.critic_t, self.critic)


class PlainCQL:
    """CQL(H) with SAC (Kumar et al. 2020), as TorchRL's CQLLoss computes it: all parts from one set of parameters."""

    def __init__(
        self,
        hidden=(256, 256),
        actor_lr=1e-4,
        critic_lr=1e-4,
        alpha_lr=3e-4,
        num_random=10,
        device="cpu",
    ) -> None:
        self.actor, self.critic = TanhGaussian(hidden).to(device), TwinQ(hidden).to(device)
        self.critic_t = copy_of(self.critic)
        self.log_alpha = torch.zeros((), device=device, requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=alpha_lr)
        self.n, self.target_entropy = num_random, -float(ACT)

    def _q_rep(self, s, a):
        return self.critic(s.unsqueeze(0).expand(a.shape[0], *s.shape), a)

    def update(self, s, a, r, ns, term) -> None:
        alpha = self.log_alpha.detach().exp()
        b = s.shape[0]
        with torch.no_grad():
            na, _ = self.actor.rsample_log_prob(ns)
            y = r + GAMMA * (~term) * torch.min(*self.critic_t(ns, na))
        q1, q2 = self.critic(s, a)
        q_loss = F.mse_loss(q1, y, reduction="none") + F.mse_loss(q2, y, reduction="none")
        with torch.no_grad():
            cur_a, cur_lp = self.actor.rsample_log_prob(s, (self.n,))
            nxt_a, nxt_lp = self.actor.rsample_log_prob(ns, (self.n,))
        rand_a = torch.empty(self.n, b, ACT, device=s.device).uniform_(-1, 1)
        rand_density = math.log(0.5**ACT)
        qr, qc, qn = self._q_rep(s, rand_a), self._q_rep(s, cur_a), self._q_rep(s, nxt_a)
        cql = 0.0
        for j in range(2):
            cat = torch.cat(
                [qr[j] - rand_density, qn[j] - nxt_lp.unsqueeze(-1), qc[j] - cur_lp.unsqueeze(-1)],
                0,
            )
            cql = cql + torch.logsumexp(cat, 0) - (q1, q2)[j]
        pi, log_pi = self.actor.rsample_log_prob(s)
        self.critic.requires_grad_(False)  # the actor term gives no gradient to the critics
        qpi = torch.min(*self.critic(s, pi)).squeeze(-1)
        self.critic.requires_grad_(True)
        actor_loss = (alpha * log_pi - qpi).mean()
        alpha_loss = -(self.log_alpha * (log_pi.detach() + self.target_entropy)).mean()
        total = q_loss.mean() + cql.mean() + actor_loss + alpha_loss
        for opt in (self.actor_opt, self.critic_opt, self.alpha_opt):
            opt.zero_grad()
        total.backward()
        for opt in (self.actor_opt, self.critic_opt, self.alpha_opt):
            opt.step()
        soft_update(self.critic_t, self.critic)


# ------------------------------------------------------------------------------------------ harness
def batches(count: int, seed: int = 0) -> list[TensorDict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        out.append(
            TensorDict(
                {
                    "observation": torch.randn(BATCH, OBS, generator=g),
                    "action": torch.rand(BATCH, ACT, generator=g) * 1.8 - 0.9,
                    ("next", "observation"): torch.randn(BATCH, OBS, generator=g),
                    ("next", "reward"): torch.randn(BATCH, 1, generator=g),
                    ("next", "done"): torch.zeros(BATCH, 1, dtype=torch.bool),
                    ("next", "terminated"): torch.zeros(BATCH, 1, dtype=torch.bool),
                },
                [BATCH],
            )
        )
    return out


def package_update(
    name: str, data: list[TensorDict], device: torch.device, **overrides
) -> Callable[[int], None]:
    algo = make_algorithm(
        make_config(name, **overrides),
        Unbounded(shape=(OBS,)),
        Bounded(-1.0, 1.0, (ACT,)),
        device,
        seed=0,
    )

    def run(i: int) -> None:
        algo.update(data[i % len(data)])

    return run


def plain_update(model, data: list[TensorDict]) -> Callable[[int], None]:
    tensors = [
        (
            td["observation"],
            td["action"],
            td["next", "reward"],
            td["next", "observation"],
            td["next", "terminated"],
        )
        for td in data
    ]

    def run(i: int) -> None:
        model.update(*tensors[i % len(tensors)])

    return run


def syncer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work (CUDA runs asynchronously), so that the clock reads finished work."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def measure(
    fns: dict[str, Callable[[int], None]],
    repeats: int,
    block: int,
    warmup: int = 10,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Median ms per update of each function, interleaving blocks so that machine load hits all alike.

    ``sync`` runs before the clock starts and before it is read (``torch.cuda.synchronize`` on a GPU).
    """
    for fn in fns.values():
        for i in range(warmup):
            fn(i)
    times: dict[str, list[float]] = {k: [] for k in fns}
    step = warmup
    for _ in range(repeats):
        for key, fn in fns.items():
            sync()
            start = time.perf_counter()
            for i in range(block):
                fn(step + i)
            sync()
            times[key].append((time.perf_counter() - start) * 1000 / block)
        step += block
    return {k: statistics.median(v) for k, v in times.items()}


def agent_updates(
    n: int, data: list[TensorDict], device: torch.device
) -> dict[str, Callable[[int], None]]:
    """N separate TD3+BC updates against one batched update of the same N agents."""
    spec = (Unbounded(shape=(OBS,)), Bounded(-1.0, 1.0, (ACT,)))
    separate = [make_algorithm("td3bc", *spec, device, seed=i) for i in range(n)]
    batched = BatchedTD3BC([make_algorithm("td3bc", *spec, device, seed=i) for i in range(n)])
    data = [td.to(device) for td in data]
    stacked = [torch.stack([data[(j + i) % len(data)] for i in range(n)]) for j in range(len(data))]

    def run_separate(j: int) -> None:
        for i, algo in enumerate(separate):
            algo.update(data[(j + i) % len(data)])

    def run_batched(j: int) -> None:
        batched.update(stacked[j % len(stacked)])

    return {"separate": run_separate, "batched": run_batched}


def parts(repeats: int, device: torch.device) -> list[tuple[str, float]]:
    """The helpers of ``torchrl_otc/objectives/utils.py`` against what they replace (BCQ, Table 3 sizes)."""
    algo = make_algorithm(
        make_config("bcq"), Unbounded(shape=(OBS,)), Bounded(-1.0, 1.0, (ACT,)), device, seed=0
    )
    loss = algo.loss
    torchrl_update, foreach_update = SoftUpdate(loss, tau=TAU), ForeachSoftUpdate(loss, tau=TAU)
    inputs = {
        "observation": torch.randn(BATCH, OBS, device=device),
        "action": torch.rand(BATCH, ACT, device=device) * 2 - 1,
    }
    sync = syncer(device)
    td = TensorDict(inputs, [BATCH])
    params = loss.qvalue_network_params

    def timed(fn: Callable[[], object]) -> float:
        for _ in range(10):
            fn()
        values = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            for _ in range(20):
                fn()
            sync()
            values.append((time.perf_counter() - t0) * 1e3 / 20)
        return statistics.median(values)

    with torch.no_grad():
        return [
            ("TorchRL SoftUpdate.step", timed(torchrl_update.step)),
            ("ForeachSoftUpdate.step (one torch._foreach_lerp_)", timed(foreach_update.step)),
            (
                "twin critics, vmap over the TensorDictModule",
                timed(lambda: loss._vmap_qvalue_networkN0(td, params)),
            ),
            (
                "twin critics, StackedMLP (one batched matmul per layer)",
                timed(lambda: critic_values(loss, inputs, params)),
            ),
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="bcq,bcq750,awac,cql,td3bc,batched,parts")
    parser.add_argument("--agents", default="1,2,3,4,5,6")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.block % 2:
        parser.error("--block must be even (TD3+BC's policy delay is 2)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    sync = syncer(device)
    data = [td.to(device) for td in batches(32)]
    cases = {
        "bcq": ("BCQ, VAE (64, 64)", {}, lambda: PlainBCQ(device=device)),
        "bcq750": (
            "BCQ, VAE (750, 750)",
            {"vae_hidden_sizes": (750, 750)},
            lambda: PlainBCQ(vae_hidden=(750, 750), device=device),
        ),
        "awac": ("AWAC", {}, lambda: PlainAWAC(device=device)),
        "cql": ("CQL (TorchRL CQLLoss)", {}, lambda: PlainCQL(device=device)),
        "td3bc": (
            "TD3+BC (TD3BCLoss's parameters, stacked-critic path)",
            {},
            lambda: PlainTD3BC(device=device),
        ),
    }
    rows = []
    keys = [k for k in args.only.split(",") if k not in ("batched", "parts")]
    for key in keys:
        label, overrides, plain = cases[key]
        name = "bcq" if key.startswith("bcq") else key
        fns = {
            "package": package_update(name, data, device, **overrides),
            "plain": plain_update(plain(), data),
        }
        result = measure(fns, args.repeats, args.block, sync=sync)
        rows.append((label, result["package"], result["plain"]))
    part_rows = parts(args.repeats, device) if "parts" in args.only.split(",") else []
    agent_rows = []
    if "batched" in args.only.split(","):
        for n in (int(x) for x in args.agents.split(",")):
            result = measure(agent_updates(n, data, device), args.repeats, args.block, sync=sync)
            agent_rows.append((n, result["separate"], result["batched"]))
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine())
    )
    print(
        f"\n{datetime.date.today()}, torch {torch.__version__}, {where}, "
        f"{args.threads} thread(s), batch {BATCH}, state {OBS}, action {ACT}, "
        f"medians of {args.repeats} blocks of {args.block} updates\n"
    )
    if rows:
        print("| algorithm | torchrl-otc ms/update | plain PyTorch ms/update | ratio |")
        print("|---|---|---|---|")
        for label, ours, plain in rows:
            print(f"| {label} | {ours:.2f} | {plain:.2f} | {ours / plain:.2f} |")
    if part_rows:
        print("\nParts of a BCQ update (Table 3 sizes), ms per call\n")
        print("| part | ms |")
        print("|---|---|")
        for label, ms in part_rows:
            print(f"| {label} | {ms:.3f} |")
    if agent_rows:
        print(f"\nTD3+BC, N agents on {device.type}, ms per update of all N agents\n")
        print("| N | separate (N x TD3BC.update) | batched (BatchedTD3BC) | speed-up |")
        print("|---|---|---|---|")
        for n, sep, bat in agent_rows:
            print(f"| {n} | {sep:.2f} | {bat:.2f} | {sep / bat:.2f} |")


if __name__ == "__main__":
    main()
