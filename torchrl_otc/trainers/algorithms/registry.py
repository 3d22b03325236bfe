"""The algorithms by name, and :func:`make_algorithm` (OTC paper section 4, Table 3)."""

from __future__ import annotations

import torch
from torchrl.data import TensorSpec

from torchrl_otc.configs.algorithms import AlgorithmConfig
from torchrl_otc.trainers.algorithms.awac import AWAC
from torchrl_otc.trainers.algorithms.base import Algorithm, resolve_config
from torchrl_otc.trainers.algorithms.bcq import BCQ
from torchrl_otc.trainers.algorithms.bremen import BREMEN
from torchrl_otc.trainers.algorithms.cql import CQL
from torchrl_otc.trainers.algorithms.discrete import (
    DiscreteBCQ,
    DiscreteCQL,
    is_discrete_action_spec,
)
from torchrl_otc.trainers.algorithms.td3bc import TD3BC

__all__ = ["ALGORITHMS", "DISCRETE_ALGORITHMS", "make_algorithm"]

#: The base algorithms of the paper (section 4, Table 3; BREMEN: section 4.4), by config name.
ALGORITHMS: dict[str, type[Algorithm]] = {
    "bcq": BCQ,
    "awac": AWAC,
    "cql": CQL,
    "td3bc": TD3BC,
    "bremen": BREMEN,
}

#: The algorithms with a discrete (one-hot action) class, by config name (issue 17): same configs as above.
DISCRETE_ALGORITHMS: dict[str, type[Algorithm]] = {"bcq": DiscreteBCQ, "cql": DiscreteCQL}


def make_algorithm(
    name_or_config: str | AlgorithmConfig,
    observation_spec: TensorSpec,
    action_spec: TensorSpec,
    device: torch.device | str | None = None,
    *,
    seed: int | None = None,
    discrete: bool | None = None,
) -> Algorithm:
    """Builds one agent's algorithm (OTC paper section 4, Table 3): networks, loss, policy, optimisers, updater.

    Networks (Table 3): MLPs with ``config.hidden_sizes`` and ``config.activation``. Critics: ``Q(s, a)``, two
    of them with target copies. Actors: BCQ, the perturbation model + action VAE (``BCQActor`` deploys);
    AWAC and CQL, a TanhNormal policy (deployed by its squashed mean, ``DeterministicPolicy``); TD3+BC, a
    deterministic tanh actor. Optimisers: Adam, one per part, with the config's rates. Target updater:
    ``ForeachSoftUpdate(loss, tau=config.tau)`` (TorchRL's ``SoftUpdate`` rule, fused). Value estimator: TD(0)
    with ``gamma=config.discount``. The class is ``ALGORITHMS[config.name]``, or on discrete tasks
    ``DISCRETE_ALGORITHMS[config.name]`` (:class:`~torchrl_otc.trainers.algorithms.DiscreteBCQ`,
    :class:`~torchrl_otc.trainers.algorithms.DiscreteCQL`: same configs, one-hot actions); AWAC and TD3+BC have
    no discrete variant. BREMEN (section 4.4, :class:`~torchrl_otc.trainers.algorithms.BREMEN`): a dynamics ensemble,
    a Gaussian policy cloned on the offline data and improved by TRPO on imagined rollouts, a GAE value network.

    Args:
        name_or_config: ``"bcq"``, ``"awac"``, ``"cql"``, ``"td3bc"``, ``"bremen"`` (Table 3 defaults) or a config from
            :mod:`torchrl_otc.configs.algorithms`.
        observation_spec: the agent's observation spec, shape ``[obs_dim]`` (or a Composite with
            ``"observation"``).
        action_spec: the agent's :class:`~torchrl.data.Bounded` action spec, shape ``[act_dim]``, or a
            ``OneHot(n)`` spec for discrete actions (or a Composite with ``"action"``).
        device: where to build the parameters. Defaults to the CPU.

    Keyword Args:
        seed: if given, the parameters are initialised from ``torch.manual_seed(seed)`` inside
            :func:`torch.random.fork_rng`, leaving the global random state untouched.
        discrete: build the discrete class (one-hot actions; a ``Bounded(0, 1, (n,))`` spec is then read as
            one-hot). ``None`` (default): discrete exactly when the action spec is a ``OneHot`` spec.

    Returns:
        an :class:`~torchrl_otc.trainers.algorithms.Algorithm` (:class:`~torchrl_otc.trainers.algorithms.BCQ`,
        :class:`~torchrl_otc.trainers.algorithms.AWAC`, :class:`~torchrl_otc.trainers.algorithms.CQL` or
        :class:`~torchrl_otc.trainers.algorithms.TD3BC`; on discrete actions
        :class:`~torchrl_otc.trainers.algorithms.DiscreteBCQ` or :class:`~torchrl_otc.trainers.algorithms.DiscreteCQL`).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Unbounded
        >>> algo = make_algorithm("td3bc", Unbounded(shape=(5,)), Bounded(-1.0, 1.0, shape=(2,)), seed=0)
        >>> sorted(algo.optimizers), algo.config.hidden_sizes
        (['actor', 'critic'], (256, 256))
        >>> batch = TensorDict({
        ...     "observation": torch.randn(128, 5), "action": torch.rand(128, 2) * 2 - 1,
        ...     ("next", "observation"): torch.randn(128, 5), ("next", "reward"): torch.randn(128, 1),
        ...     ("next", "done"): torch.zeros(128, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(128, 1, dtype=torch.bool),
        ... }, [128])
        >>> sorted(algo.update(batch))  # TD3: the actor and targets move every second step
        ['loss_qvalue', 'next_state_value', 'pred_value', 'target_value']
        >>> algo.act(TensorDict({"observation": torch.randn(3, 5)}, [3]))["action"].shape
        torch.Size([3, 2])
        >>> make_algorithm("sac", Unbounded(shape=(5,)), Bounded(-1.0, 1.0, shape=(2,)))
        Traceback (most recent call last):
        ...
        ValueError: Unknown algorithm 'sac'; valid algorithms: bcq, awac, cql, td3bc, bremen.
        >>> from torchrl.data import OneHot
        >>> type(make_algorithm("cql", Unbounded(shape=(5,)), OneHot(4))).__name__
        'DiscreteCQL'
        >>> make_algorithm("awac", Unbounded(shape=(5,)), OneHot(4))
        Traceback (most recent call last):
        ...
        ValueError: awac needs continuous actions; on discrete tasks use algo=bcq or algo=cql
    """
    cfg = resolve_config(name_or_config)
    if discrete is None:
        discrete = is_discrete_action_spec(action_spec)
    if not discrete:
        return ALGORITHMS[cfg.name](observation_spec, action_spec, cfg, device, seed=seed)
    if cfg.name not in DISCRETE_ALGORITHMS:
        raise ValueError(
            f"{cfg.name} needs continuous actions; on discrete tasks use "
            f"{' or '.join('algo=' + name for name in DISCRETE_ALGORITHMS)}"
        )
    return DISCRETE_ALGORITHMS[cfg.name](observation_spec, action_spec, cfg, device, seed=seed)
