"""Behaviour policies of the ``medium`` / ``medium-replay`` datasets, trained online by this package (section 4.1).

D4RL's ``medium`` data comes from a policy trained online and stopped at about a third of the expert's return;
``medium-replay`` is that training run's replay buffer up to the stopping point. We do the same on each task's
joint view (:class:`~torchrl_otc.envs.JointEnv`: one policy controls every agent from the global state, as D4RL's
policies controlled the whole robot) with TD3 (Fujimoto et al. 2018), and stop at the first evaluation whose
normalised score reaches ``target_fraction`` (1/3):

.. math::

    \\text{score} = \\frac{R - R_\\text{random}}{R_\\text{expert} - R_\\text{random}}

``R_random`` and ``R_expert`` are D4RL's reference returns for the MuJoCo robots, and for the other tasks the
measured returns of the uniform random policy and of a scripted expert (:func:`scripted_expert`): navigation
agents go straight to the landmarks of the best assignment; predators run straight at the prey; the
non-stationary navigation agent goes straight to its landmark knowing ``beta``.

``nav/nonstationary`` is trained with ``beta = 0.15`` (the middle of the online range 0.1..0.2): with ``beta`` drawn
from ``[-0.2, 0.2]`` every action's expected move is zero, so no policy can beat random there (section 4.5).
Its ``medium`` data is then collected with the offline range of ``beta``; it has no ``medium-replay``.

Checkpoints hold the actor only (a small MLP) and the run's record (returns, references, steps, command); they are
shipped in ``torchrl_otc/envs/assets/`` and listed in ``behaviour_policies.json`` there.

This module holds what the data layer needs: the policies, the references, the run's configuration and result,
and the checkpoint format. The training run itself (:func:`~torchrl_otc.trainers.behaviour.train_behaviour_policy`)
is a trainer, in :mod:`torchrl_otc.trainers.behaviour`.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from torchrl_otc.envs.registry import get_task, make_env

__all__ = [
    "BehaviourConfig",
    "BehaviourResult",
    "Actor",
    "scripted_expert",
    "uniform_policy",
    "evaluate_policy",
    "reference_returns",
    "load_behaviour_policy",
    "save_behaviour_policy",
    "ASSETS_DIR",
    "behaviour_checkpoint_path",
]

logger = logging.getLogger(__name__)

#: Where the shipped behaviour-policy checkpoints live.
ASSETS_DIR = Path(__file__).resolve().parents[2] / "envs" / "assets"
_INDEX_FILE = "behaviour_policies.json"
#: ``beta`` used to train the non-stationary navigation behaviour policy (middle of the online range).
NAV_BEHAVIOUR_BETA = 0.15

Policy = Callable[[TensorDictBase], TensorDictBase]


def behaviour_checkpoint_path(task: str, root: str | Path | None = None) -> Path:
    """File of a task's ``medium`` behaviour-policy checkpoint (section 4.1), e.g. ``behaviour_mpe_navigation-3.pt``.

    Args:
        task: registered task name.
        root: folder; defaults to the package's assets folder.

    Returns:
        The path (which may not exist).

    Examples:
        >>> behaviour_checkpoint_path("mpe/navigation-3", "/tmp").name
        'behaviour_mpe_navigation-3.pt'
    """
    return Path(root if root is not None else ASSETS_DIR) / f"behaviour_{task.replace('/', '_')}.pt"


# ---------------------------------------------------------------------------------------------- networks
class Actor(nn.Module):
    """Behaviour policy ``s -> a`` of the ``medium`` datasets (section 4.1): an MLP, tanh output scaled to the bounds.

    Args:
        obs_dim: state size.
        action_dim: joint action size.
        low: lower action bound.
        high: upper action bound.
        hidden: hidden layer sizes.

    Examples:
        >>> actor = Actor(4, 2, -0.1, 0.1, (16, 16))
        >>> bool(actor(torch.randn(5, 4)).abs().le(0.1).all())
        True
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        low: float,
        high: float,
        hidden: Sequence[int] = (256, 256),
    ) -> None:
        super().__init__()
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        layers: list[nn.Module] = []
        last = obs_dim
        for h in hidden:
            layers += [nn.Linear(last, h), nn.ReLU()]
            last = h
        layers.append(nn.Linear(last, action_dim))
        self.net = nn.Sequential(*layers)
        self.register_buffer("center", torch.tensor((high + low) / 2, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor((high - low) / 2, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.center + self.scale * torch.tanh(self.net(obs))


# ---------------------------------------------------------------------------------------------- policies
def uniform_policy(env: Any, generator: torch.Generator | None = None) -> Policy:
    """Uniform random actions within the env's action bounds (the ``random`` datasets, section 4.1).

    Args:
        env: a TorchRL env with a bounded ``action_spec``.
        generator: random generator (seeded for reproducible data).

    Returns:
        A policy writing ``"action"``.

    Examples:
        >>> from torchrl_otc.envs import make_env
        >>> env = make_env("nav/nonstationary", num_envs=3, seed=0)
        >>> uniform_policy(env)(env.reset())["action"].shape
        torch.Size([3, 2])
    """
    spec = env.action_spec
    low = spec.space.low.to(env.device)
    high = spec.space.high.to(env.device)

    def policy(td: TensorDictBase) -> TensorDictBase:
        u = torch.rand(spec.shape, generator=generator, device=env.device)
        return td.set("action", low + (high - low) * u)

    return policy


def actor_policy(
    actor: nn.Module, noise_std: float = 0.0, generator: torch.Generator | None = None
) -> Policy:
    """Wrap an :class:`Actor` as a policy with optional Gaussian action noise (the ``medium`` data, section 4.1).

    Args:
        actor: the actor.
        noise_std: std of the added Gaussian noise, as a fraction of the half-range of the actions.
        generator: random generator of the noise.

    Returns:
        A policy writing ``"action"`` (clipped to the bounds).

    Examples:
        >>> policy = actor_policy(Actor(4, 2, -1.0, 1.0, (8,)), noise_std=5.0)
        >>> bool(policy(TensorDict({"observation": torch.randn(6, 4)}, [6]))["action"].abs().le(1).all())
        True
    """

    def policy(td: TensorDictBase) -> TensorDictBase:
        with torch.no_grad():
            obs = td.get("observation")
            a = actor(obs)
            if noise_std > 0:
                eps = torch.randn(a.shape, generator=generator, device=a.device)
                a = a + noise_std * actor.scale * eps
            a = torch.maximum(
                torch.minimum(a, actor.center + actor.scale), actor.center - actor.scale
            )
        return td.set("action", a)

    return policy


def _navigation_expert(n: int, bound: float) -> Policy:
    perms = torch.tensor(list(itertools.permutations(range(n))))  # [P, n]

    def policy(td: TensorDictBase) -> TensorDictBase:
        s = td.get("observation")
        agents = s[..., : 2 * n].unflatten(-1, (n, 2))
        landmarks = s[..., 2 * n :].unflatten(-1, (n, 2))
        dist = torch.cdist(agents, landmarks)  # [..., agent, landmark]
        p = perms.to(s.device)
        cost = dist[..., torch.arange(n, device=s.device), p].sum(-1)  # [..., P]
        best = p[cost.argmin(-1)]  # [..., n]: landmark of each agent
        target = landmarks.gather(-2, best.unsqueeze(-1).expand(*best.shape, 2))
        return td.set("action", (target - agents).clamp(-bound, bound).flatten(-2))

    return policy


def _predator_expert(bound: float) -> Policy:
    def policy(td: TensorDictBase) -> TensorDictBase:
        s = td.get("observation")
        predators = s[..., :6].unflatten(-1, (3, 2))
        prey = s[..., 6:8].unsqueeze(-2)
        return td.set("action", (prey - predators).clamp(-bound, bound).flatten(-2))

    return policy


def _nav_expert() -> Policy:
    def policy(td: TensorDictBase) -> TensorDictBase:
        obs, beta = td.get("observation"), td.get("beta")
        safe = torch.where(beta.abs() < 1e-6, torch.full_like(beta, 1e-6), beta)
        return td.set("action", (obs[..., 2:4] / safe).clamp(-1.0, 1.0))

    return policy


def scripted_expert(task: str) -> Policy:
    """The scripted expert of a task's return normalisation (MPE tasks, 4.4/4.7; non-stationary navigation, 4.5).

    Navigation: agents move at full speed to the landmarks of the assignment with the smallest total distance.
    Predator-prey: predators run straight at the prey. Non-stationary navigation: straight to the landmark,
    knowing ``beta`` (which a learned policy does not see).

    Args:
        task: registered task name.

    Returns:
        A policy on the joint view (reads ``observation``, writes ``action``).

    Raises:
        ValueError: the task has no scripted expert (MuJoCo robots use D4RL's reference returns).

    Examples:
        >>> agents = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
        >>> landmarks = [[0.0, 1.05], [0.5, 0.0], [1.0, -0.05]]   # best assignment: 1, 2, 0
        >>> s = torch.tensor([sum(agents + landmarks, [])])
        >>> td = scripted_expert("mpe/navigation-3")(TensorDict({"observation": s}, [1]))
        >>> td["action"].view(3, 2)
        tensor([[ 0.1000,  0.0000],
                [ 0.0000, -0.0500],
                [ 0.0000,  0.0500]])
    """
    spec = get_task(task)
    if spec.family == "mpe" and spec.options["task"] == "navigation":
        return _navigation_expert(spec.n_agents, spec.action_high)
    if spec.family == "mpe":
        return _predator_expert(spec.action_high)
    if spec.family == "nav":
        return _nav_expert()
    raise ValueError(
        f"No scripted expert for {task!r}; MuJoCo robots use D4RL's reference returns."
    )


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate_policy(
    env: Any, policy: Policy, episodes: int, *, max_steps: int | None = None
) -> torch.Tensor:
    """Undiscounted returns of ``episodes`` complete episodes (the evaluation of section 4; env batches in rounds).

    Args:
        env: a TorchRL env in the joint layout (batch size ``[]`` or ``[B]``).
        policy: writes ``"action"``.
        episodes: number of episodes.

    Keyword Args:
        max_steps: safety cap on the steps of one round; defaults to 10,000.

    Returns:
        A tensor of ``episodes`` returns.

    Examples:
        >>> from torchrl_otc.envs import make_env
        >>> env = make_env("nav/nonstationary", num_envs=8, seed=0, beta=0.2)
        >>> evaluate_policy(env, scripted_expert("nav/nonstationary"), 8).tolist()
        [10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0]
    """
    cap = max_steps if max_steps is not None else 10_000
    batch = int(env.batch_size.numel()) if len(env.batch_size) else 1
    out: list[torch.Tensor] = []
    while sum(len(o) for o in out) < episodes:
        td = env.reset()
        ret = torch.zeros(batch, device=env.device)
        running = torch.ones(batch, dtype=torch.bool, device=env.device)
        for _ in range(cap):
            td = env.step(policy(td))
            r = td.get(("next", "reward")).reshape(batch)
            ret += torch.where(running, r, torch.zeros_like(r))
            running &= ~td.get(("next", "done")).reshape(batch)
            if not bool(running.any()):
                break
            td = env.step_mdp(td)
        out.append(ret.cpu())
    return torch.cat(out)[:episodes]


def reference_returns(task: str, *, episodes: int = 200, seed: int = 12345) -> dict[str, float]:
    """``R_random`` and ``R_expert`` of the score normalisation of ``medium`` (section 4.1; D4RL's for MuJoCo).

    Args:
        task: registered task name.

    Keyword Args:
        episodes: episodes per measurement (MPE and navigation).
        seed: seed of the measurement.

    Returns:
        ``{"random": ..., "expert": ..., "source": ...}``.

    Examples:
        >>> ref = reference_returns("nav/nonstationary", episodes=16)
        >>> ref["expert"], ref["random"] < ref["expert"]
        (10.0, True)
    """
    spec = get_task(task)
    if spec.d4rl_reference is not None:
        lo, hi = spec.d4rl_reference
        return {
            "random": float(lo),
            "expert": float(hi),
            "source": "D4RL REF_MIN_SCORE / REF_MAX_SCORE",
        }
    kwargs = {"beta": NAV_BEHAVIOUR_BETA} if spec.family == "nav" else {}
    env = make_env(task, layout="joint", num_envs=min(episodes, 256), seed=seed, **kwargs)
    g = torch.Generator(device=env.device).manual_seed(seed)
    rnd = evaluate_policy(env, uniform_policy(env, g), episodes)
    exp = evaluate_policy(env, scripted_expert(task), episodes)
    env.close()
    return {
        "random": float(rnd.mean()),
        "expert": float(exp.mean()),
        "source": f"measured: uniform random policy and scripted expert, {episodes} episodes, seed {seed}",
    }


def normalised_score(ret: float, reference: dict[str, float]) -> float:
    """``(R - R_random) / (R_expert - R_random)``: D4RL's normalisation as a fraction (``medium`` = 1/3, 4.1).

    Examples:
        >>> normalised_score(40.0, {"random": 10.0, "expert": 100.0})
        0.3333333333333333
    """
    return (ret - reference["random"]) / (reference["expert"] - reference["random"])


# ------------------------------------------------------------------------ the training run: config, result
@dataclass
class BehaviourConfig:
    """Hyperparameters of the TD3 run that trains a ``medium`` behaviour policy (section 4.1); defaults per task
    family in :meth:`for_task`. Read by :func:`~torchrl_otc.trainers.behaviour.train_behaviour_policy`.

    Attributes:
        seed: seed of the run (networks, environments, noise).
        target_fraction: stop at the first evaluation whose normalised score reaches this (D4RL: about 1/3).
        max_transitions: give up after this many environment transitions.
        num_envs: environments collected in parallel.
        hidden: hidden layer sizes of the actor and the critics.
        gamma: discount factor.
        lr: Adam learning rate of actor and critics.
        batch_size: minibatch size.
        tau: target-network update rate.
        policy_noise: target policy smoothing noise (fraction of the action half-range).
        noise_clip: clip of the smoothing noise (fraction of the half-range).
        exploration_noise: Gaussian exploration noise (fraction of the half-range).
        policy_delay: critic updates per actor update.
        start_transitions: uniformly random transitions before the policy acts.
        updates_per_transition: gradient updates per collected transition.
        eval_every: transitions between evaluations.
        eval_episodes: episodes per evaluation.
        env_kwargs: arguments of the training environment (e.g. ``beta`` for non-stationary navigation).

    Examples:
        >>> cfg = BehaviourConfig(seed=3, max_transitions=50_000)
        >>> cfg.target_fraction == 1 / 3, cfg.hidden, cfg.policy_delay
        (True, (256, 256), 2)
    """

    seed: int = 0
    target_fraction: float = 1.0 / 3.0
    max_transitions: int = 200_000
    num_envs: int = 1
    hidden: tuple[int, ...] = (256, 256)
    gamma: float = 0.99
    lr: float = 3e-4
    batch_size: int = 256
    tau: float = 0.005
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    exploration_noise: float = 0.1
    policy_delay: int = 2
    start_transitions: int = 10_000
    updates_per_transition: float = 1.0
    eval_every: int = 5_000
    eval_episodes: int = 10
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_task(cls, task: str, **overrides: Any) -> BehaviourConfig:
        """Defaults that fit a 2-core CPU for a task's family, with ``overrides`` applied.

        Examples:
            >>> BehaviourConfig.for_task("mpe/navigation-3").num_envs
            16
        """
        family = get_task(task).family
        base: dict[str, Any] = {}
        if family == "mpe":
            base = dict(
                num_envs=16,
                hidden=(128, 128),
                gamma=0.95,
                start_transitions=5_000,
                updates_per_transition=0.25,
                eval_every=4_000,
                eval_episodes=64,
                max_transitions=400_000,
            )
        elif family == "nav":
            base = dict(
                num_envs=16,
                hidden=(128, 128),
                gamma=0.97,
                start_transitions=5_000,
                updates_per_transition=0.25,
                eval_every=256,
                eval_episodes=128,
                max_transitions=400_000,
                env_kwargs={"beta": NAV_BEHAVIOUR_BETA},
            )
        elif family == "mamujoco":
            base = dict(
                num_envs=1,
                hidden=(256, 256),
                start_transitions=10_000,
                eval_every=5_000,
                eval_episodes=5,
            )
        base.update(overrides)
        return cls(**base)


@dataclass
class BehaviourResult:
    """What a behaviour-policy training run produced (``medium`` / ``medium-replay``, section 4.1).

    Returned by :func:`~torchrl_otc.trainers.behaviour.train_behaviour_policy`; saved by
    :func:`save_behaviour_policy`.

    Attributes:
        actor: the actor at the stopping point (on CPU).
        replay: every transition collected up to the stopping point, in order (the ``medium-replay`` data).
        history: one record per evaluation: transitions, mean/std return, normalised score.
        reference: ``R_random``, ``R_expert`` and their source.
        reached: whether the target was reached (else the run hit ``max_transitions``).
        config: the run's configuration.
        seconds: wall-clock time of the run.

    Examples:
        >>> result = BehaviourResult(
        ...     actor=Actor(4, 2, -1.0, 1.0, (8,)), replay=TensorDict({"observation": torch.zeros(3, 4)}, [3]),
        ...     history=[{"transitions": 3, "return_mean": 1.0}], reference={"random": 0.0, "expert": 3.0},
        ...     reached=True, config=BehaviourConfig(), seconds=0.1)
        >>> result.final["return_mean"], normalised_score(result.final["return_mean"], result.reference)
        (1.0, 0.3333333333333333)
    """

    actor: Actor
    replay: TensorDict
    history: list[dict[str, float]]
    reference: dict[str, Any]
    reached: bool
    config: BehaviourConfig
    seconds: float

    @property
    def final(self) -> dict[str, float]:
        """The last evaluation."""
        return self.history[-1]


# ---------------------------------------------------------------------------------------------- checkpoints
def save_behaviour_policy(
    task: str, result: BehaviourResult, path: str | Path | None = None, *, command: str = ""
) -> Path:
    """Save a run's actor and record (section 4.1 ``medium``), and update ``behaviour_policies.json`` next to it.

    Args:
        task: registered task name.
        result: the training run.
        path: the checkpoint file; defaults to the package's assets folder.

    Keyword Args:
        command: the command line that reproduces the run (recorded).

    Returns:
        The checkpoint's path.

    Examples:
        >>> import tempfile
        >>> history = [{"transitions": 256, "return_mean": 1.0, "return_std": 0.0, "normalised_score": 0.4}]
        >>> result = BehaviourResult(
        ...     actor=Actor(4, 2, -1.0, 1.0, (8,)), replay=TensorDict({"observation": torch.zeros(256, 4)}, [256]),
        ...     history=history, reference={"random": 0.0, "expert": 2.5, "source": "example"}, reached=True,
        ...     config=BehaviourConfig(hidden=(8,)), seconds=0.1)
        >>> path = save_behaviour_policy("nav/nonstationary", result, Path(tempfile.mkdtemp()) / "b.pt")
        >>> load_behaviour_policy("nav/nonstationary", path)[1]["transitions"]
        256
    """
    path = Path(path) if path is not None else behaviour_checkpoint_path(task)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = get_task(task)
    record = {
        "task": task,
        "algorithm": "TD3 (torchrl_otc.trainers.behaviour)",
        "config": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(result.config).items()
        },
        "reference": result.reference,
        "final": result.final,
        "history": result.history,
        "reached_target": result.reached,
        "transitions": int(result.replay.batch_size[0]),
        "seconds": round(result.seconds, 1),
        "command": command,
        "trained": time.strftime("%Y-%m-%d"),
        "obs_dim": result.actor.obs_dim,
        "action_dim": result.actor.action_dim,
        "action_bounds": [spec.action_low, spec.action_high],
    }
    torch.save({"actor": result.actor.state_dict(), "record": record}, path)
    index_file = path.parent / _INDEX_FILE
    index = json.loads(index_file.read_text()) if index_file.exists() else {}
    summary = {k: v for k, v in record.items() if k not in ("history",)}
    summary["file"] = path.name
    summary["size_bytes"] = path.stat().st_size
    index[task] = summary
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True))
    (path.parent / "README.md").write_text(_index_markdown(index))
    return path


def _index_markdown(index: dict[str, Any]) -> str:
    """The assets README: one row per shipped behaviour policy, generated from ``behaviour_policies.json``."""
    lines = [
        "# Behaviour policies of the `medium` datasets",
        "",
        "Generated by `save_behaviour_policy` from `behaviour_policies.json`; do not edit by hand. Each policy was "
        "trained by `otc data train-behaviour TASK` (TD3 on the task's joint view) and stopped at the first "
        "evaluation whose normalised score `(R - R_random) / (R_expert - R_random)` reached the target (D4RL's "
        "`medium`: about a third of the expert). Returns are undiscounted episode returns of the deterministic "
        "policy (mean +- std over the evaluation episodes).",
        "",
        "| task | return | normalised | R_random | R_expert | reference | training env | actor | transitions | "
        "seconds | trained | size (KB) | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task in sorted(index):
        e = index[task]
        f, ref = e["final"], e["reference"]
        flag = "" if e.get("reached_target", True) else " (target not reached)"
        lines.append(
            f"| {task} | {f['return_mean']:.4g} +- {f['return_std']:.3g} | {f['normalised_score']:.3f}{flag} | "
            f"{ref['random']:.4g} | {ref['expert']:.4g} | {ref['source']} | "
            f"{json.dumps(e['config'].get('env_kwargs') or {})} | MLP {tuple(e['config']['hidden'])} | "
            f"{e['transitions']} | "
            f"{e['seconds']} | {e['trained']} | {e['size_bytes'] / 1024:.0f} | `{e['command']}` |"
        )
    return "\n".join(lines) + "\n"


def load_behaviour_policy(
    task: str, path: str | Path | None = None
) -> tuple[Actor, dict[str, Any]]:
    """Load a task's ``medium`` behaviour-policy actor and its record (section 4.1; shipped checkpoint by default).

    Args:
        task: registered task name.
        path: a checkpoint file; defaults to the package's assets folder.

    Returns:
        ``(actor, record)``.

    Raises:
        FileNotFoundError: no checkpoint for the task; the message gives the command that trains one.

    Examples:
        >>> actor, record = load_behaviour_policy("nav/nonstationary")
        >>> record["reached_target"], actor(torch.zeros(1, 4)).shape
        (True, torch.Size([1, 2]))
    """
    path = Path(path) if path is not None else behaviour_checkpoint_path(task)
    if not path.exists():
        shipped = sorted(p.name for p in ASSETS_DIR.glob("behaviour_*.pt"))
        raise FileNotFoundError(
            f"No behaviour policy for {task!r} at {path}. Train one with `otc data train-behaviour {task}` "
            f"(or pass --checkpoint). Shipped: {', '.join(shipped) or 'none'}."
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    rec = ckpt["record"]
    if rec.get("task") != task:
        raise ValueError(f"{path} holds the behaviour policy of {rec.get('task')!r}, not {task!r}.")
    lo, hi = rec["action_bounds"]
    actor = Actor(rec["obs_dim"], rec["action_dim"], lo, hi, tuple(rec["config"]["hidden"]))
    actor.load_state_dict(ckpt["actor"])
    return actor.eval(), rec
