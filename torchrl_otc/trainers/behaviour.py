"""The TD3 run that trains the behaviour policy of a task's ``medium`` / ``medium-replay`` datasets (section 4.1).

D4RL's ``medium`` data comes from a policy trained online and stopped at about a third of the expert's return;
``medium-replay`` is that training run's replay buffer up to the stopping point. :func:`train_behaviour_policy`
does the same on each task's joint view (:class:`~torchrl_otc.envs.JointEnv`: one policy controls every agent from
the global state, as D4RL's policies controlled the whole robot) with TD3 (Fujimoto et al. 2018), and stops at the
first evaluation whose normalised score reaches ``target_fraction`` (1/3). :func:`build_dataset` builds every
dataset kind; for ``medium-replay`` it re-runs the seeded training recorded in the policy's checkpoint.

TD3's rules (target policy smoothing, clipped double Q, delayed policy updates) are those of
:mod:`torchrl_otc.trainers.algorithms.td3bc`, shared with :class:`~torchrl_otc.trainers.algorithms.TD3BC`. The
networks and losses are TD3's own, not TD3+BC's: plain-PyTorch MLPs (two separate critics, one Adam per network,
actor loss ``-Q_1(s, pi(s))`` without a behaviour-cloning term), in the arithmetic the shipped policies were
trained with, so that a re-run (``medium-replay``) repeats the recorded run bit for bit on one CPU. The policies,
references, configuration and checkpoint format are in :mod:`torchrl_otc.data.datasets.behaviour`.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDict
from torch import nn
from tqdm.auto import tqdm

from torchrl_otc.configs.parts import ConfigError
from torchrl_otc.data.datasets import builders
from torchrl_otc.data.datasets.behaviour import (
    Actor,
    BehaviourConfig,
    BehaviourResult,
    actor_policy,
    evaluate_policy,
    normalised_score,
    reference_returns,
    uniform_policy,
)
from torchrl_otc.data.datasets.storage import OfflineDataset
from torchrl_otc.envs.registry import get_task, make_env
from torchrl_otc.trainers.algorithms.td3bc import (
    clipped_double_q_target,
    is_policy_step,
    smoothed_target_action,
    smoothing_noise,
)

__all__ = ["build_dataset", "train_behaviour_policy"]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- networks
class _Critic(nn.Module):
    """Twin Q-networks ``(s, a) -> (Q1, Q2)``."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()

        def mlp() -> nn.Sequential:
            layers: list[nn.Module] = []
            last = obs_dim + action_dim
            for h in hidden:
                layers += [nn.Linear(last, h), nn.ReLU()]
                last = h
            layers.append(nn.Linear(last, 1))
            return nn.Sequential(*layers)

        self.q1, self.q2 = mlp(), mlp()

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x), self.q2(x)


# ---------------------------------------------------------------------------------------------- training
_KEEP = ("observation", "action", "episode")
_KEEP_NEXT = ("observation", "reward", "done", "terminated", "truncated")


def train_behaviour_policy(
    task: str,
    config: BehaviourConfig | None = None,
    *,
    progress: bool = True,
    reference: dict[str, Any] | None = None,
) -> BehaviourResult:
    """Train a task's behaviour policy with TD3 until its normalised score reaches ``target_fraction`` (4.1).

    The run uses one CPU thread and is deterministic given ``config.seed`` (on one CPU architecture and library
    versions).

    Args:
        task: registered task name.
        config: hyperparameters; :meth:`BehaviourConfig.for_task` when omitted.

    Keyword Args:
        progress: show a tqdm bar.
        reference: ``R_random``/``R_expert``; measured with :func:`reference_returns` when omitted.

    Returns:
        The actor, the replay buffer up to the stopping point and the run's record.

    Examples:
        >>> from torchrl_otc.data.datasets.behaviour import BehaviourConfig
        >>> cfg = BehaviourConfig.for_task("nav/nonstationary", max_transitions=512, start_transitions=256,
        ...                                eval_every=512, eval_episodes=8)
        >>> result = train_behaviour_policy("nav/nonstationary", cfg, progress=False)
        >>> len(result.replay), result.final["transitions"]
        (512, 512)
    """
    threads = torch.get_num_threads()
    # One thread: small networks gain nothing from more, and the same arithmetic on every machine lets a re-run
    # (medium-replay) repeat the recorded run.
    torch.set_num_threads(1)
    try:
        return _train(task, config, progress=progress, reference=reference)
    finally:
        torch.set_num_threads(threads)


def _train(
    task: str, config: BehaviourConfig | None, *, progress: bool, reference: dict[str, Any] | None
) -> BehaviourResult:
    spec = get_task(task)
    if spec.discrete:
        raise ConfigError(
            f"{task} has discrete (one-hot) actions; behaviour policies are trained with TD3, for continuous "
            f"actions only, so this task has only random data: otc data build {task} --kind random."
        )
    cfg = config if config is not None else BehaviourConfig.for_task(task)
    t0 = time.perf_counter()
    ref = reference if reference is not None else reference_returns(task)
    # Seed after measuring the references (VMAS reseeds torch's global generator), so that a re-run given the
    # recorded references (medium-replay) repeats the run exactly.
    torch.manual_seed(cfg.seed)
    env = make_env(task, layout="joint", num_envs=cfg.num_envs, seed=cfg.seed, **cfg.env_kwargs)
    eval_env = make_env(
        task,
        layout="joint",
        num_envs=cfg.eval_episodes if spec.family != "mamujoco" else 1,
        seed=cfg.seed + 10_000,
        **cfg.env_kwargs,
    )
    g = torch.Generator().manual_seed(cfg.seed)
    obs_dim = env.observation_spec["observation"].shape[-1]
    act_dim = env.action_spec.shape[-1]
    actor = Actor(obs_dim, act_dim, spec.action_low, spec.action_high, cfg.hidden)
    critic = _Critic(obs_dim, act_dim, cfg.hidden)
    actor_t, critic_t = copy.deepcopy(actor), copy.deepcopy(critic)
    for p in itertools.chain(actor_t.parameters(), critic_t.parameters()):
        p.requires_grad_(False)
    opt_a = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    opt_c = torch.optim.Adam(critic.parameters(), lr=cfg.lr)
    scale = actor.scale
    n = env.batch_size.numel() if len(env.batch_size) else 1
    cap = cfg.max_transitions + n
    replay: TensorDict | None = None
    size = 0
    episode = torch.arange(n)
    next_episode = n
    explore = uniform_policy(env, g)
    act = actor_policy(actor, cfg.exploration_noise, g)
    history: list[dict[str, float]] = []
    reached = False
    updates_due = 0.0
    n_updates = 0
    bar = tqdm(
        total=cfg.max_transitions,
        desc=f"train {task}",
        unit="tr",
        disable=not progress,
        leave=False,
    )
    td = env.reset()
    next_eval = cfg.eval_every
    while size < cfg.max_transitions:
        td = (explore if size < cfg.start_transitions else act)(td)
        td, td_next = env.step_and_maybe_reset(td)
        row = td.select(*_KEEP[:2], *[("next", k) for k in _KEEP_NEXT]).reshape(n)
        row.set("episode", episode.clone())
        if replay is None:
            replay = row[0].expand(cap).clone().zero_()
        replay[size : size + n] = row
        size += n
        bar.update(n)
        done = td.get(("next", "done")).reshape(n)
        if bool(done.any()):
            k = int(done.sum())
            episode[done] = torch.arange(next_episode, next_episode + k)
            next_episode += k
        td = td_next
        if size >= cfg.start_transitions:
            updates_due += n * cfg.updates_per_transition
            while updates_due >= 1:
                updates_due -= 1
                n_updates += 1
                idx = torch.randint(0, size, (cfg.batch_size,), generator=g)
                b = replay[idx]
                s, a = b["observation"], b["action"]
                r, s2 = b["next", "reward"], b["next", "observation"]
                not_term = 1.0 - b["next", "terminated"].float()
                with torch.no_grad():
                    eps = torch.randn(a.shape, generator=g)
                    noise = smoothing_noise(eps, cfg.policy_noise, cfg.noise_clip) * scale
                    a2 = smoothed_target_action(
                        actor_t(s2), noise, actor.center - scale, actor.center + scale
                    )
                    q1t, q2t = critic_t(s2, a2)
                    y = clipped_double_q_target(r, not_term, q1t, q2t, cfg.gamma)
                q1, q2 = critic(s, a)
                loss_c = (q1 - y).pow(2).mean() + (q2 - y).pow(2).mean()
                opt_c.zero_grad(set_to_none=True)
                loss_c.backward()
                opt_c.step()
                if is_policy_step(n_updates, cfg.policy_delay):
                    loss_a = -critic(s, actor(s))[0].mean()
                    opt_a.zero_grad(set_to_none=True)
                    loss_a.backward()
                    opt_a.step()
                    with torch.no_grad():
                        for net, tgt in ((actor, actor_t), (critic, critic_t)):
                            for p, pt in zip(net.parameters(), tgt.parameters()):
                                pt.lerp_(p, cfg.tau)
        if size >= next_eval:
            next_eval += cfg.eval_every
            rets = evaluate_policy(eval_env, actor_policy(actor), cfg.eval_episodes)
            score = normalised_score(float(rets.mean()), ref)
            history.append(
                {
                    "transitions": size,
                    "updates": n_updates,
                    "return_mean": float(rets.mean()),
                    "return_std": float(rets.std()) if len(rets) > 1 else 0.0,
                    "normalised_score": score,
                }
            )
            bar.set_postfix(ret=f"{float(rets.mean()):.2f}", score=f"{score:.2f}")
            logger.info(
                "%s: %d transitions, return %.3f, normalised %.3f",
                task,
                size,
                float(rets.mean()),
                score,
            )
            if size >= cfg.start_transitions and score >= cfg.target_fraction:
                reached = True
                break
    bar.close()
    env.close()
    eval_env.close()
    if not history:
        raise RuntimeError(
            f"max_transitions={cfg.max_transitions} is below eval_every={cfg.eval_every}."
        )
    assert replay is not None
    return BehaviourResult(
        actor=actor.eval(),
        replay=replay[:size].clone(),
        history=history,
        reference=ref,
        reached=reached,
        config=cfg,
        seconds=time.perf_counter() - t0,
    )


def build_dataset(task: str, kind: str, size: int, **kwargs: Any) -> OfflineDataset:
    """Build a joint offline dataset of any kind (section 4.1): ``random``, ``medium`` or ``medium-replay``.

    :func:`torchrl_otc.data.datasets.build_dataset` with the behaviour-policy trainer: ``medium-replay`` re-runs
    the seeded training recorded in the checkpoint (:func:`train_behaviour_policy`) to its stopping point and
    keeps its replay buffer. ``random`` and ``medium`` need no training and are built as the data layer builds
    them.

    Args:
        task: registered task name (``torchrl_otc.envs.list_tasks()``).
        kind: ``"random"``, ``"medium"`` or ``"medium-replay"``.
        size: number of joint transitions (``medium-replay``: at most this many, the most recent).
        **kwargs: the keyword arguments of :func:`torchrl_otc.data.datasets.build_dataset` (``seed``, ``out``,
            ``num_envs``, ``device``, ``local_obs``, ``checkpoint``, ``noise_std``, ``progress``, ``overwrite``,
            ``env_kwargs``).

    Returns:
        The dataset (memory-mapped from ``out`` when given).

    Examples:
        >>> ds = build_dataset("nav/nonstationary", "random", 100, seed=0, progress=False)
        >>> len(ds), ds.metadata["kind"]
        (100, 'random')
    """
    return builders.build_dataset(
        task, kind, size, train_behaviour=train_behaviour_policy, **kwargs
    )
