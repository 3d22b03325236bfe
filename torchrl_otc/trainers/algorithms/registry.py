"""The algorithms by name, and :func:`make_algorithm` (OTC paper section 4, Table 3)."""

from __future__ import annotations

import torch
from torchrl.data import TensorSpec

from torchrl_otc.configs.algorithms import AlgorithmConfig
from torchrl_otc.trainers.algorithms.awac import AWAC
from torchrl_otc.trainers.algorithms.base import Algorithm, resolve_config
from torchrl_otc.trainers.algorithms.bcq import BCQ
from torchrl_otc.trainers.algorithms.cql import CQL
from torchrl_otc.trainers.algorithms.td3bc import TD3BC

__all__ = ["ALGORITHMS", "make_algorithm"]

#: The four base algorithms of the paper (section 4, Table 3), by config name.
ALGORITHMS: dict[str, type[Algorithm]] = {"bcq": BCQ, "awac": AWAC, "cql": CQL, "td3bc": TD3BC}


def make_algorithm(
    name_or_config: str | AlgorithmConfig,
    observation_spec: TensorSpec,
    action_spec: TensorSpec,
    device: torch.device | str | None = None,
    *,
    seed: int | None = None,
) -> Algorithm:
    """Builds one agent's algorithm (OTC paper section 4, Table 3): networks, loss, policy, optimisers, updater.

    Networks (Table 3): MLPs with ``config.hidden_sizes`` and ``config.activation``. Critics: ``Q(s, a)``, two
    of them with target copies. Actors: BCQ, the perturbation model + action VAE (``BCQActor`` deploys);
    AWAC and CQL, a TanhNormal policy (deployed by its squashed mean, ``DeterministicPolicy``); TD3+BC, a
    deterministic tanh actor. Optimisers: Adam, one per part, with the config's rates. Target updater:
    ``ForeachSoftUpdate(loss, tau=config.tau)`` (TorchRL's ``SoftUpdate`` rule, fused). Value estimator: TD(0)
    with ``gamma=config.discount``. The class is ``ALGORITHMS[config.name]``.

    Args:
        name_or_config: ``"bcq"``, ``"awac"``, ``"cql"``, ``"td3bc"`` (Table 3 defaults) or a config from
            :mod:`torchrl_otc.configs.algorithms`.
        observation_spec: the agent's observation spec, shape ``[obs_dim]`` (or a Composite with
            ``"observation"``).
        action_spec: the agent's :class:`~torchrl.data.Bounded` action spec, shape ``[act_dim]`` (or a Composite
            with ``"action"``).
        device: where to build the parameters. Defaults to the CPU.

    Keyword Args:
        seed: if given, the parameters are initialised from ``torch.manual_seed(seed)`` inside
            :func:`torch.random.fork_rng`, leaving the global random state untouched.

    Returns:
        an :class:`~torchrl_otc.trainers.algorithms.Algorithm` (:class:`~torchrl_otc.trainers.algorithms.BCQ`,
        :class:`~torchrl_otc.trainers.algorithms.AWAC`, :class:`~torchrl_otc.trainers.algorithms.CQL` or
        :class:`~torchrl_otc.trainers.algorithms.TD3BC`).

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
        ValueError: Unknown algorithm 'sac'; valid algorithms: bcq, awac, cql, td3bc.
    """
    cfg = resolve_config(name_or_config)
    return ALGORITHMS[cfg.name](observation_spec, action_spec, cfg, device, seed=seed)
