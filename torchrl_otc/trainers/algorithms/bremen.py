r"""BREMEN (Matsushima et al. 2021), decentralised and mapped onto the loop's update granularity (OTC section 4.4).

BREMEN ("Deployment-Efficient Reinforcement Learning via Model-Based Offline Optimization", ICLR 2021, Algorithm
1) repeats, at every deployment: fit an ensemble of ``K`` dynamics models on all data so far; re-initialise the
policy by behaviour cloning (BC) on the data; improve it by TRPO steps with a KL bound to the previous policy on
imagined rollouts started from real states, one model of the ensemble drawn per rollout; deploy it. The OTC paper
(Jiang & Lu, AAAI 2023, section 4.4, Figures 6a-b) adapts it to offline-then-online tuning: each agent ``i`` trains
from its offline data first and finetunes at each deployment, with a model of ``(s' - s, r)`` given the global
state and its *own* action ``a_i`` only. The other agents' behaviour is therefore part of the dynamics the model
learns, and when their policies change from one deployment to the next, so do the dynamics that agent ``i``'s
data follow: the mismatch OTC corrects.

How the loop's update maps onto BREMEN (:meth:`BREMEN._update`; ``AgentLearner.update`` draws the batch through
the configured sampler, ``OTCSampler`` by default):

1. *model step*, every update: one Adam step of the ensemble (MSE on standardised targets,
   :class:`~torchrl_otc.modules.models.dynamics_ensemble.DynamicsEnsembleLoss`), each member on its own bootstrap
   resample of the batch. **This is where OTC plugs in**: the batch comes from the sampler, so the rows the model
   is fitted on are the ones OTC (or uniform, or a mix, ...) chose from the merged buffer.
2. *policy step*, every ``policy_every``-th update: imagined rollouts of ``rollout_horizon`` steps from the batch's
   states (drawn the same way), one member per rollout, rewards from the model; GAE advantages with the value
   network; ``value_steps`` Adam steps of the value network on the GAE targets; one TRPO step with KL bound
   ``max_kl`` (:meth:`~torchrl_otc.objectives.trpo.TRPOLoss.step`).

BC: :meth:`BREMEN.bc_initialise` clones the policy on the agent's offline data (and fits the models'
standardisation on it) once, before offline training (``AgentLearner.add_offline`` calls it). It is *not* re-run
after each deployment (BREMEN's Algorithm 1 re-clones at every deployment because it retrains from scratch; in
offline-to-online tuning the deployed policy is the one being finetuned, and re-cloning the merged data would
throw the offline improvement away).
"""

from __future__ import annotations

import warnings

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import InteractionType, TensorDictModule, set_interaction_type
from torch import Tensor, nn
from torchrl.data import Bounded, TensorSpec
from torchrl.modules import MLP, ProbabilisticActor, ValueOperator
from torchrl.objectives import ValueEstimators

from torchrl_otc.configs.algorithms import AlgorithmConfig, BREMENConfig
from torchrl_otc.modules.models.dynamics_ensemble import (
    DynamicsEnsemble,
    DynamicsEnsembleLoss,
    bootstrap_indices,
)
from torchrl_otc.objectives.bc import bc_init
from torchrl_otc.objectives.trpo import TRPOLoss, gaussian_policy
from torchrl_otc.trainers.algorithms.base import Algorithm, Parts
from torchrl_otc.trainers.algorithms.networks import ACTION_KEY, OBSERVATION_KEY

__all__ = ["BREMEN", "BREMENLoss", "ClampedMean"]

_NO_CRITIC = (
    "BREMEN has no critic over actions (its value network is V(s), a GAE baseline), so the value distance d_q "
    "cannot read Q(s, a) from it; use distance=feature, embedding or likelihood with algo=bremen."
)


class ClampedMean(nn.Module):
    """BREMEN's deployment action: the Gaussian policy's mean, clamped into the action bounds.

    BREMEN's policy is an unsquashed Gaussian whose actions the environment clips; deploying the clipped mean is
    the deterministic version of that.

    Args:
        mean: the mean network ``s -> mu(s)`` (shared with the policy, not copied).
        low: lower action bounds.
        high: upper action bounds.

    Examples:
        >>> policy = ClampedMean(nn.Linear(2, 1), torch.tensor([-1.0]), torch.tensor([1.0]))
        >>> bool((policy(100 * torch.randn(8, 2)).abs() <= 1).all())
        True
    """

    def __init__(self, mean: nn.Module, low: Tensor, high: Tensor) -> None:
        super().__init__()
        self.mean = mean
        self.register_buffer("low", low.clone())
        self.register_buffer("high", high.clone())

    def forward(self, observation: Tensor) -> Tensor:
        """``clamp(mu(s), low, high)``."""
        return torch.maximum(torch.minimum(self.mean(observation), self.high), self.low)


class BREMENLoss(TRPOLoss):
    r""":class:`~torchrl_otc.objectives.trpo.TRPOLoss` holding BREMEN's dynamics ensemble and its loss.

    One loss module for the whole agent, so that its ``state_dict`` holds every learned tensor: the policy and
    value network (TorchRL's functional parameters), the ensemble's members and standardisation
    (``dynamics_loss.dynamics``) and the value network's target copy ``target_critic_network_params`` (the
    value estimator reads it for the next states' values; BREMEN's default ``tau = 1`` makes it the value network
    itself after every regression).

    Args:
        actor_network: the Gaussian policy (:func:`~torchrl_otc.objectives.trpo.gaussian_policy`).
        critic_network: the value network ``V(s)`` writing ``state_value``.
        dynamics: the agent's ensemble.

    Keyword Args:
        **kwargs: passed to :class:`~torchrl_otc.objectives.trpo.TRPOLoss` (``max_kl``, ``loss_critic_type``, ...).

    Examples:
        >>> actor = gaussian_policy(3, 1, hidden_sizes=(8,))
        >>> critic = ValueOperator(MLP(in_features=3, out_features=1, num_cells=[8]), in_keys=["observation"])
        >>> loss = BREMENLoss(actor, critic, DynamicsEnsemble(3, 1, hidden_sizes=(8,)), max_kl=0.01)
        >>> loss.dynamics_loss.dynamics.ensemble_size, loss.loss_function
        (5, 'l2')
    """

    dynamics_loss: DynamicsEnsembleLoss
    target_critic_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: ProbabilisticActor,
        critic_network: TensorDictModule,
        dynamics: DynamicsEnsemble,
        **kwargs,
    ) -> None:
        super().__init__(actor_network, critic_network, **kwargs)
        self.dynamics_loss = DynamicsEnsembleLoss(dynamics)
        self.target_critic_network_params = TensorDictParams(
            self.critic_network_params.data.clone(), no_convert=True
        )

    @property
    def loss_function(self) -> str:
        """The value regression's loss (PPOLoss's ``loss_critic_type``), under the config's name."""
        return self.loss_critic_type


class BREMEN(Algorithm):
    r"""BREMEN for one agent (OTC section 4.4; BREMEN's Algorithm 1 at the loop's update granularity).

    Parts (one Adam each, built by the base class): ``"model"`` (the :class:`DynamicsEnsemble`, ``model_lr``),
    ``"actor"`` (the Gaussian policy; its Adam, at ``actor_lr``, is the one the behaviour cloning of
    :meth:`bc_initialise` uses: ``bc_init`` builds it afresh at that rate; the TRPO steps move the policy without an
    optimiser) and ``"critic"`` (the value network, ``critic_lr``).

    One :meth:`update` (see the module docstring): one model step on the batch, each member on its own bootstrap
    resample; every ``policy_every``-th update also imagined rollouts from the batch's states, GAE, value
    regression and one TRPO step whose mean KL to the pre-step policy over the rollouts' states is at most
    ``max_kl``. The model's standardisation statistics are fitted once on the offline data
    (:meth:`bc_initialise`) and kept: refitting them would move every member's inputs under its optimiser.

    Imagined rollouts have no terminal states (the model predicts none): GAE bootstraps from ``V`` at every step,
    the last included. Actions are sampled from the unsquashed Gaussian; the model sees them clamped into the
    action bounds, the policy's log-probability the sampled ones.

    The value distance ``d_q`` cannot serve BREMEN: :meth:`q_value` and :meth:`state_value` raise.

    Args:
        observation_spec: the agent's observation spec, shape ``[obs_dim]``.
        action_spec: the agent's :class:`~torchrl.data.Bounded` action spec, shape ``[act_dim]``.
        config: a :class:`~torchrl_otc.configs.algorithms.BREMENConfig`; its defaults when omitted.
        device: where to build the parameters. Defaults to the CPU.

    Keyword Args:
        seed: seed of the parameter initialisation (the global random state is left untouched).

    Examples:
        >>> from torchrl.data import Unbounded
        >>> from torchrl_otc.configs.algorithms import BREMENConfig
        >>> cfg = BREMENConfig(hidden_sizes=(16,), policy_every=2, rollout_horizon=3, bc_steps=5)
        >>> algo = BREMEN(Unbounded(shape=(4,)), Bounded(-1.0, 1.0, (2,)), cfg, seed=0)
        >>> sorted(algo.optimizers)
        ['actor', 'critic', 'model']
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDict({
        ...     "observation": torch.randn(64, 4, generator=g), "action": torch.rand(64, 2, generator=g) * 2 - 1,
        ...     ("next", "observation"): torch.randn(64, 4, generator=g),
        ...     ("next", "reward"): torch.randn(64, 1, generator=g),
        ... }, [64])
        >>> algo.bc_initialise(data)["bc_steps"]
        5.0
        >>> sorted(algo.update(data[:32]))  # a model step
        ['loss_dynamics', 'mse_reward', 'mse_state']
        >>> "trpo_kl" in algo.update(data[32:])  # a model step and a policy step
        True
        >>> action = algo.act(TensorDict({"observation": 100 * torch.randn(5, 4)}, [5]))["action"]
        >>> bool((action.abs() <= 1).all())
        True
    """

    name = "bremen"
    loss: BREMENLoss

    def __init__(
        self,
        observation_spec: TensorSpec,
        action_spec: TensorSpec,
        config: AlgorithmConfig | None = None,
        device: torch.device | str | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        with warnings.catch_warnings():
            # tau = 1 (the default: no target network) is eps = 0 for TorchRL's SoftUpdate, which warns below 0.5
            warnings.filterwarnings("ignore", message="Found an eps value", category=UserWarning)
            super().__init__(observation_spec, action_spec, config, device, seed=seed)
        # GAE on the imagined rollouts (the base class installed TD(0), the critics' estimator of the others)
        self.loss.make_value_estimator(
            ValueEstimators.GAE, gamma=self.config.discount, lmbda=self.config.gae_lambda
        )

    # ------------------------------------------------------------------------------------------- build
    def _build(
        self,
        cfg: BREMENConfig,
        obs_dim: int,
        act_dim: int,
        action_spec: Bounded,
        low: Tensor,
        high: Tensor,
        device: torch.device,
    ) -> tuple[BREMENLoss, TensorDictModule, Parts]:
        activation = cfg.activation_class
        model_seed = int(torch.randint(2**31 - 1, ()))  # from the seeded (forked) global stream
        dynamics = DynamicsEnsemble(
            obs_dim,
            act_dim,
            ensemble_size=cfg.ensemble_size,
            hidden_sizes=cfg.model_hidden_sizes or cfg.hidden_sizes,
            activation=activation,
            seed=model_seed,
            device=device,
        )
        actor = gaussian_policy(
            obs_dim, act_dim, hidden_sizes=cfg.hidden_sizes, activation=activation
        ).to(device)
        critic = ValueOperator(
            MLP(
                in_features=obs_dim,
                out_features=1,
                num_cells=list(cfg.hidden_sizes),
                activation_class=activation,
            ),
            in_keys=[OBSERVATION_KEY],
        ).to(device)
        loss = BREMENLoss(
            actor, critic, dynamics, max_kl=cfg.max_kl, loss_critic_type=cfg.loss_function
        )
        gaussian = actor.module[0].module  # the StateIndependentGaussian
        policy = TensorDictModule(
            ClampedMean(gaussian.mean, low, high),
            in_keys=[OBSERVATION_KEY],
            out_keys=[ACTION_KEY],
        )
        parts: Parts = {
            "model": (list(dynamics.parameters()), cfg.model_lr),
            "actor": (loss.actor_parameters(), cfg.actor_lr),
            "critic": (list(loss.critic_network_params.values(True, True)), cfg.critic_lr),
        }
        self._low, self._high = low, high
        return loss, policy, parts

    @property
    def dynamics(self) -> DynamicsEnsemble:
        """The agent's dynamics ensemble."""
        return self.loss.dynamics_loss.dynamics

    # ---------------------------------------------------------------------------------------------- BC
    def bc_initialise(self, data: TensorDictBase) -> dict[str, float]:
        """Fits the models' standardisation to ``data`` and clones the policy on it (BREMEN, Algorithm 1).

        ``config.bc_steps`` Adam steps at ``config.actor_lr`` of the Gaussian policy's log-likelihood of the data's
        actions, ``config.batch_size`` rows drawn with replacement per step
        (:func:`~torchrl_otc.objectives.bc.bc_init`; the global random stream, the agent's inside
        ``AgentLearner``). ``AgentLearner.add_offline`` calls it with the agent's offline data.

        Args:
            data: the agent's transitions (``observation``, its own ``action``, ``("next", "observation")``,
                ``("next", "reward")``).

        Returns:
            ``bc_steps`` and the last step's ``loss_bc`` (NaN without steps).
        """
        cfg = self.config
        data = data.to(self.device)
        self.dynamics.fit(data)
        losses = bc_init(
            self.loss.actor_network,
            data.select(OBSERVATION_KEY, ACTION_KEY),
            cfg.bc_steps,
            batch_size=cfg.batch_size,
            lr=cfg.actor_lr,
        )
        last = float(losses[-1]) if losses.numel() else float("nan")
        return {"bc_steps": float(losses.numel()), "loss_bc": last}

    # ------------------------------------------------------------------------------------------ update
    def _update(self, batch: TensorDictBase) -> dict[str, Tensor]:
        model_loss = self.loss.dynamics_loss
        rows = batch.select(*model_loss.in_keys)
        # each member on its own bootstrap resample of the sampler's batch: [K, B]
        idx = bootstrap_indices(len(rows), self.dynamics.ensemble_size, device=rows.device)
        out = model_loss(rows[idx])
        self._step("model", out["loss_dynamics"])
        metrics = {k: out[k] for k in ("loss_dynamics", "mse_state", "mse_reward")}
        if (self.num_updates + 1) % self.config.policy_every == 0:
            metrics.update(self._policy_step(batch.get(OBSERVATION_KEY)))
        return metrics

    @torch.no_grad()
    def imagine(self, start: Tensor) -> TensorDict:
        """Imagined rollouts of ``rollout_horizon`` steps from ``start`` ``[N, obs_dim]``, one member per rollout.

        Returns:
            ``[N, H]`` transitions (time last, as TorchRL's GAE expects): ``observation``, the sampled ``action``
            and its ``action_log_prob``, ``("next", "observation" | "reward" | "done" | "terminated")``.
        """
        model = self.dynamics
        n = start.shape[0]
        members = torch.randint(model.ensemble_size, (n,), device=start.device)
        flags = torch.zeros(n, 1, dtype=torch.bool, device=start.device)
        obs, steps = start, []
        with set_interaction_type(InteractionType.RANDOM):
            for _ in range(self.config.rollout_horizon):
                td = self.loss.actor_network(TensorDict({OBSERVATION_KEY: obs}, [n]))
                action = td.get(ACTION_KEY)
                clamped = torch.maximum(torch.minimum(action, self._high), self._low)
                nxt, reward = model.predict(obs, clamped, member=members)
                td.set(
                    "next",
                    TensorDict(
                        {
                            OBSERVATION_KEY: nxt,
                            "reward": reward,
                            "done": flags,
                            "terminated": flags,
                        },
                        [n],
                    ),
                )
                steps.append(td.exclude("loc", "scale"))
                obs = nxt
        return torch.stack(steps, dim=1)

    def _policy_step(self, start: Tensor) -> dict[str, Tensor]:
        loss = self.loss
        rollout = self.imagine(start)
        with torch.no_grad():
            loss.value_estimator(
                rollout,
                params=loss.critic_network_params.detach(),
                target_params=loss.target_critic_network_params,
            )
        for _ in range(self.config.value_steps):
            loss_critic = loss.loss_critic(rollout)[0].mean()
            self._step("critic", loss_critic)
        self.target_updater.step()
        info = loss.step(rollout)
        return {
            "loss_critic": loss_critic.detach(),
            "imagined_reward": rollout.get(("next", "reward")).mean(),
            "trpo_kl": info["kl"],
            "trpo_accepted": info["accepted"].float(),
            "trpo_improvement": info["improvement"],
        }

    # --------------------------------------------------------------------------------- values (d_q)
    def check_state_value(self, actions: str) -> None:
        """Raises ``ValueError``: BREMEN has no ``Q(s, a)`` for the value distance."""
        raise ValueError(_NO_CRITIC)

    def q_value(self, observation: Tensor, action: Tensor, reduction: str = "mean") -> Tensor:
        """Raises ``ValueError``: BREMEN has no critic over actions (its value network is a GAE baseline)."""
        raise ValueError(_NO_CRITIC)

    def state_value(
        self,
        observation: Tensor,
        actions: str = "policy",
        num_samples: int = 10,
        reduction: str = "mean",
    ) -> Tensor:
        """Raises ``ValueError``: d_q reads ``E_a Q(s, a)``, which BREMEN does not learn."""
        raise ValueError(_NO_CRITIC)
