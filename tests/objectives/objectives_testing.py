"""Shared helpers of the objectives tests: small networks, batches and a one-step continuous bandit."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import NormalParamExtractor, TensorDictModule
from tensordict.utils import NestedKey
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator

from torchrl_otc.modules.models.vae import ActionVAE
from torchrl_otc.objectives import AWACLoss, BCQLoss, BCQPerturbation

OBS_DIM = 3
ACT_DIM = 2
HIDDEN = (16, 16)


def make_batch(
    batch: int = 16,
    *,
    obs_key: NestedKey = "observation",
    action_key: NestedKey = "action",
    prefix: tuple[str, ...] = (),
    seed: int = 0,
    terminated_rows: int = 0,
    done_rows: int = 0,
) -> TensorDict:
    """Random transitions; ``prefix`` nests reward/done/terminated (e.g. ``("agent0",)``)."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, OBS_DIM, generator=g)
    next_obs = torch.randn(batch, OBS_DIM, generator=g)
    action = torch.rand(batch, ACT_DIM, generator=g) * 1.8 - 0.9
    reward = torch.randn(batch, 1, generator=g)
    terminated = torch.zeros(batch, 1, dtype=torch.bool)
    terminated[:terminated_rows] = True
    done = terminated.clone()
    done[terminated_rows : terminated_rows + done_rows] = True  # timeouts: done but not terminated
    td = TensorDict({}, [batch])
    td.set(obs_key, obs)
    td.set(action_key, action)
    td.set(("next", obs_key) if isinstance(obs_key, str) else ("next", *obs_key), next_obs)
    td.set(("next", *prefix, "reward"), reward)
    td.set(("next", *prefix, "done"), done)
    td.set(("next", *prefix, "terminated"), terminated)
    return td


def build_bcq(
    *,
    obs_key: NestedKey = "observation",
    action_key: NestedKey = "action",
    value_key: NestedKey = "state_action_value",
    seed: int = 0,
    low: float = -1.0,
    high: float = 1.0,
    **kwargs,
) -> BCQLoss:
    """A small BCQLoss whose networks read ``obs_key``/``action_key``."""
    torch.manual_seed(seed)
    actor = TensorDictModule(
        BCQPerturbation(OBS_DIM, ACT_DIM, low=low, high=high, hidden_sizes=HIDDEN),
        in_keys=[obs_key, action_key],
        out_keys=[action_key],
    )
    qvalue = ValueOperator(
        MLP(in_features=OBS_DIM + ACT_DIM, out_features=1, num_cells=list(HIDDEN)),
        in_keys=[obs_key, action_key],
        out_keys=[value_key],
    )
    vae = TensorDictModule(
        ActionVAE(OBS_DIM, ACT_DIM, low=low, high=high, hidden_sizes=HIDDEN),
        in_keys=[obs_key, action_key],
        out_keys=["recon", "loc", "log_std"],
    )
    loss = BCQLoss(actor, qvalue, vae, **kwargs)
    loss.make_value_estimator(gamma=0.99)
    return loss


def build_awac(
    *,
    obs_key: NestedKey = "observation",
    action_key: NestedKey = "action",
    value_key: NestedKey = "state_action_value",
    seed: int = 0,
    **kwargs,
) -> AWACLoss:
    """A small AWACLoss (TanhNormal actor) whose networks read ``obs_key``/``action_key``."""
    torch.manual_seed(seed)
    spec = Bounded(-1.0, 1.0, (ACT_DIM,))
    net = nn.Sequential(
        MLP(in_features=OBS_DIM, out_features=2 * ACT_DIM, num_cells=list(HIDDEN)),
        NormalParamExtractor(),
    )
    actor = ProbabilisticActor(
        TensorDictModule(net, in_keys=[obs_key], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        out_keys=[action_key],
        spec=spec,
        distribution_class=TanhNormal,
    )
    qvalue = ValueOperator(
        MLP(in_features=OBS_DIM + ACT_DIM, out_features=1, num_cells=list(HIDDEN)),
        in_keys=[obs_key, action_key],
        out_keys=[value_key],
    )
    loss = AWACLoss(actor, qvalue, **kwargs)
    loss.make_value_estimator(gamma=0.99)
    return loss


def param_groups(loss) -> dict[str, list[torch.Tensor]]:
    """The trainable tensors of each network of a loss, and its target tensors."""
    groups = {}
    for name in ("actor_network", "qvalue_network", "vae_network"):
        params = getattr(loss, f"{name}_params", None)
        if params is not None:
            groups[name] = [p for p in params.values(True, True) if isinstance(p, nn.Parameter)]
        target = loss._modules.get(f"target_{name}_params")
        if target is not None:
            groups[f"target_{name}"] = list(target.values(True, True))
    return groups


def grad_norm(tensors: list[torch.Tensor]) -> float:
    """Sum of gradient norms (0 where a tensor has no gradient)."""
    return float(sum(t.grad.norm() for t in tensors if t.grad is not None))


def zero_grads(loss) -> None:
    for p in loss.parameters():
        p.grad = None


# ------------------------------------------------------------------------------------- one-step bandit
BANDIT_OBS_DIM = 2
BANDIT_ACT_DIM = 2
BANDIT_GAIN = 0.6


def bandit_optimum(obs: torch.Tensor) -> torch.Tensor:
    """a*(s) = 0.6 s: the action of maximal reward in state s."""
    return BANDIT_GAIN * obs


def bandit_reward(obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """r(s, a) = -||a - a*(s)||^2."""
    return -(action - bandit_optimum(obs)).pow(2).sum(-1, keepdim=True)


def bandit_dataset(size: int, generator: torch.Generator) -> TensorDictBase:
    """One-step episodes: s ~ U[-1, 1]^2, a ~ U[-1, 1]^2 (uniform behaviour policy), terminated after one step."""
    obs = torch.rand(size, BANDIT_OBS_DIM, generator=generator) * 2 - 1
    action = torch.rand(size, BANDIT_ACT_DIM, generator=generator) * 2 - 1
    ones = torch.ones(size, 1, dtype=torch.bool)
    return TensorDict(
        {
            "observation": obs,
            "action": action,
            ("next", "observation"): torch.rand(size, BANDIT_OBS_DIM, generator=generator) * 2 - 1,
            ("next", "reward"): bandit_reward(obs, action),
            ("next", "done"): ones,
            ("next", "terminated"): ones.clone(),
        },
        [size],
    )


def behaviour_return(obs: torch.Tensor) -> float:
    """E_{a ~ U[-1,1]^d}[r(s, a)] = -(d/3 + ||a*(s)||^2), averaged over ``obs`` (Var U[-1,1] = 1/3)."""
    return float(-(BANDIT_ACT_DIM / 3 + bandit_optimum(obs).pow(2).sum(-1)).mean())


def best_state_blind_return(obs: torch.Tensor) -> float:
    """The best return of an action that ignores the state: a = E[a*(s)] = 0, so -E||a*(s)||^2."""
    return float(-bandit_optimum(obs).pow(2).sum(-1).mean())
