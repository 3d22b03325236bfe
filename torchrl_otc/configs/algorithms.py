"""Typed configurations of the base algorithms, with the OTC paper's Table 3 as defaults.

Table 3 (OTC paper, appendix 6) fixes, for every algorithm: discount 0.99, batch size 128, ReLU, hidden sizes
(64, 64) for BCQ (all of its networks, its VAE included) and (256, 256) for the others, the actor and critic
learning rates (x 1e-4: BCQ 1 / 1, AWAC 1 / 5, CQL 1 / 1, TD3+BC 3 / 3) and the finetuning updates per deployment
L (4000 for BCQ, 2000 otherwise). Everything else follows the algorithm's own paper or reference implementation;
each field says where its default comes from. :class:`BREMENConfig` is the model-based baseline of section 4.4
(Table 3's BREMEN column).

Every field is read: by the algorithm classes of :mod:`torchrl_otc.trainers.algorithms` (built by
:func:`~torchrl_otc.trainers.algorithms.make_algorithm`: networks, losses, optimisers, target updater, and their
update step: ``max_grad_norm``, ``policy_delay``) or by :class:`torchrl_otc.trainers.learner.AgentLearner`
(``batch_size``, ``finetune_updates``). In a run's :class:`~torchrl_otc.configs.tune.TuneConfig` the config is the
``algorithm`` part: ``algo=`` (``algorithm.name``) picks the class, ``algorithm.<field>=`` sets a field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

__all__ = [
    "ACTIVATIONS",
    "ALGORITHM_CONFIGS",
    "AlgorithmConfig",
    "AWACConfig",
    "BCQConfig",
    "BREMENConfig",
    "CQLConfig",
    "TD3BCConfig",
    "make_config",
]

#: Activation names accepted by :attr:`AlgorithmConfig.activation`.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}

LOSS_FUNCTIONS = ("l2", "l1", "smooth_l1")


@dataclass
class AlgorithmConfig:
    """Fields shared by every algorithm (OTC paper, Table 3).

    Attributes:
        discount: gamma of the TD target. Table 3: 0.99.
        batch_size: transitions per gradient step. Table 3: 128.
        hidden_sizes: hidden widths of every actor and critic. Table 3: (256, 256) except BCQ (64, 64).
        activation: activation of every hidden layer, a key of :data:`ACTIVATIONS`. Table 3: ``"relu"``.
        actor_lr: Adam learning rate of the actor. Table 3.
        critic_lr: Adam learning rate of the critics. Table 3.
        tau: Polyak rate of the target networks, :math:`\\theta' \\leftarrow (1 - \\tau)\\theta' + \\tau\\theta`
            (TorchRL's ``SoftUpdate(loss, tau=tau)``). 0.005 in the BCQ, TD3+BC, AWAC (CORL) and CQL references.
        finetune_updates: L, gradient steps after each deployment. Table 3: 4000 BCQ, 2000 otherwise.
        max_grad_norm: if set, each part's gradient (actor, critic, ...) is clipped to this norm, per agent and
            per part; ``None`` (the references) clips nothing.
        loss_function: critic regression loss: ``"l2"`` (the references' MSE), ``"l1"`` or ``"smooth_l1"``
            (TorchRL's default).

    Examples:
        >>> cfg = AlgorithmConfig()
        >>> cfg.discount, cfg.batch_size, cfg.hidden_sizes
        (0.99, 128, (256, 256))
    """

    name: ClassVar[str] = ""

    discount: float = 0.99
    batch_size: int = 128
    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    actor_lr: float = 1e-4
    critic_lr: float = 1e-4
    tau: float = 0.005
    finetune_updates: int = 2000
    max_grad_norm: float | None = None
    loss_function: str = "l2"

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        self.validate()

    def validate(self) -> AlgorithmConfig:
        """Checks every field; raises :class:`ValueError` saying what was wrong.

        Examples:
            >>> AlgorithmConfig(discount=1.5)
            Traceback (most recent call last):
            ...
            ValueError: discount must be in [0, 1]; got 1.5.
        """
        if not 0.0 <= self.discount <= 1.0:
            raise ValueError(f"discount must be in [0, 1]; got {self.discount}.")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1]; got {self.tau}.")
        for field in ("batch_size", "finetune_updates"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field} must be an int >= 1; got {value!r}.")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be positive widths; got {self.hidden_sizes}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {self.activation!r}; valid values: {', '.join(ACTIVATIONS)}."
            )
        if self.loss_function not in LOSS_FUNCTIONS:
            raise ValueError(
                f"Unknown loss_function {self.loss_function!r}; valid values: {', '.join(LOSS_FUNCTIONS)}."
            )
        for field in dataclasses.fields(self):
            if field.name.endswith("_lr") and not getattr(self, field.name) > 0:
                raise ValueError(f"{field.name} must be > 0; got {getattr(self, field.name)}.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None; got {self.max_grad_norm}.")
        return self

    @property
    def activation_class(self) -> type[nn.Module]:
        """The :class:`torch.nn.Module` class named by :attr:`activation`."""
        return ACTIVATIONS[self.activation]

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (``hidden_sizes`` as a list), with ``algo`` set to the algorithm name."""
        out = dataclasses.asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        return {"algo": self.name, **out}


@dataclass
class BCQConfig(AlgorithmConfig):
    """BCQ (Fujimoto, Meger and Precup 2019) with the OTC paper's Table 3 sizes and rates.

    Attributes:
        vae_lr: Adam learning rate of the action VAE. Table 3 gives none; BCQ's code trains its three networks
            with one rate, so the default is Table 3's BCQ actor/critic rate, 1e-4.
        vae_hidden_sizes: hidden widths of the VAE's encoder and decoder; ``None`` means :attr:`hidden_sizes`
            (Table 3: (64, 64) for all of BCQ's networks; the original BCQ uses (750, 750)).
        latent_dim: VAE latent width; ``None`` means twice the action width (BCQ).
        max_perturbation: Phi, the perturbation bound as a fraction of the action half-range (BCQ: 0.05).
        lmbda: lambda mixing min and max of the target critics (BCQ: 0.75).
        num_samples: VAE actions per next state in the critic target (BCQ: 10).
        deploy_num_samples: VAE actions per state for the greedy deployment action (BCQ's ``select_action``: 100).
        kl_weight: weight of the VAE's KL term (BCQ's code: 0.5).
        target_selection: ``"mixed"`` (BCQ: maximise the mixed target value over the sampled actions) or
            ``"q1"`` (choose the action by the first target critic).
        discrete_threshold: tau of discrete BCQ (:class:`~torchrl_otc.trainers.algorithms.DiscreteBCQ`, for
            one-hot actions): the target and the greedy action keep only the actions whose behaviour probability
            is above this fraction of the most likely one's, in [0, 1) (0 keeps every action: double DQN).
            Fujimoto et al. 2019, "Benchmarking Batch Deep RL Algorithms": 0.3. Continuous BCQ does not read it.

    Examples:
        >>> cfg = BCQConfig()
        >>> cfg.hidden_sizes, cfg.vae_hidden_sizes, (cfg.actor_lr, cfg.critic_lr), cfg.finetune_updates
        ((64, 64), None, (0.0001, 0.0001), 4000)
    """

    name: ClassVar[str] = "bcq"

    hidden_sizes: tuple[int, ...] = (64, 64)
    actor_lr: float = 1e-4
    critic_lr: float = 1e-4
    finetune_updates: int = 4000
    vae_lr: float = 1e-4
    vae_hidden_sizes: tuple[int, ...] | None = None
    latent_dim: int | None = None
    max_perturbation: float = 0.05
    lmbda: float = 0.75
    num_samples: int = 10
    deploy_num_samples: int = 100
    kl_weight: float = 0.5
    target_selection: str = "mixed"
    discrete_threshold: float = 0.3

    def __post_init__(self) -> None:
        if self.vae_hidden_sizes is not None:
            self.vae_hidden_sizes = tuple(int(h) for h in self.vae_hidden_sizes)
        super().__post_init__()

    def validate(self) -> BCQConfig:
        super().validate()
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"lmbda must be in [0, 1]; got {self.lmbda}.")
        if self.max_perturbation < 0:
            raise ValueError(f"max_perturbation must be >= 0; got {self.max_perturbation}.")
        for field in ("num_samples", "deploy_num_samples"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1; got {getattr(self, field)}.")
        if self.latent_dim is not None and self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1 or None; got {self.latent_dim}.")
        if self.vae_hidden_sizes is not None and (
            not self.vae_hidden_sizes or min(self.vae_hidden_sizes) < 1
        ):
            raise ValueError(
                f"vae_hidden_sizes must be positive widths or None; got {self.vae_hidden_sizes}."
            )
        if not 0.0 <= self.discrete_threshold < 1.0:
            raise ValueError(
                f"discrete_threshold must be in [0, 1) (the most likely action has ratio 1, so 1 would keep "
                f"none); got {self.discrete_threshold}."
            )
        if self.target_selection not in ("mixed", "q1"):
            raise ValueError(
                f"Unknown target_selection {self.target_selection!r}; valid values: mixed, q1."
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.vae_hidden_sizes is not None:
            out["vae_hidden_sizes"] = list(self.vae_hidden_sizes)
        return out


@dataclass
class AWACConfig(AlgorithmConfig):
    """AWAC (Nair et al. 2020) with the OTC paper's Table 3 sizes and rates.

    Attributes:
        temperature: lambda of the advantage weights exp(A / lambda) (AWAC paper and CORL: 1.0).
        max_weight: clip of the advantage weights (CORL's ``exp_adv_max``: 100).
        num_value_samples: policy actions averaged in V(s) = E_{a~pi} Q(s, a) (1, as CORL).

    Examples:
        >>> cfg = AWACConfig()
        >>> cfg.hidden_sizes, (cfg.actor_lr, cfg.critic_lr), cfg.temperature, cfg.finetune_updates
        ((256, 256), (0.0001, 0.0005), 1.0, 2000)
    """

    name: ClassVar[str] = "awac"

    actor_lr: float = 1e-4
    critic_lr: float = 5e-4
    temperature: float = 1.0
    max_weight: float = 100.0
    num_value_samples: int = 1

    def validate(self) -> AWACConfig:
        super().validate()
        if not self.temperature > 0 or not self.max_weight > 0:
            raise ValueError(
                f"temperature and max_weight must be > 0; got {self.temperature}, {self.max_weight}."
            )
        if self.num_value_samples < 1:
            raise ValueError(f"num_value_samples must be >= 1; got {self.num_value_samples}.")
        return self


@dataclass
class CQLConfig(AlgorithmConfig):
    """CQL (Kumar et al. 2020) through :class:`~torchrl_otc.objectives.BoundedCQLLoss` (TorchRL's CQLLoss with its random actions in the task's bounds), Table 3 sizes and rates.

    Attributes:
        alpha_lr: Adam rate of the entropy temperature (and of the Lagrange multiplier with
            :attr:`with_lagrange`); CQL's SAC base: 3e-4.
        alpha_init: initial entropy temperature (TorchRL: 1.0).
        fixed_alpha: keep the entropy temperature at :attr:`alpha_init`.
        min_q_weight: weight of the conservative term (TorchRL's default 1.0; CQL's MuJoCo runs use 5.0).
        cql_temperature: temperature of the log-sum-exp of the conservative term (1.0).
        num_random: sampled actions per state in the conservative term (CQL: 10).
        with_lagrange: tune the conservative weight by dual descent (CQL-Lagrange).
        lagrange_thresh: the action gap tau of CQL-Lagrange.
        deterministic_backup: drop the entropy bonus from the TD target (TorchRL's default; CQL's code for MuJoCo).
        max_q_backup: back up the max over sampled next actions instead of one sample.

    Examples:
        >>> cfg = CQLConfig()
        >>> cfg.hidden_sizes, (cfg.actor_lr, cfg.critic_lr), cfg.min_q_weight
        ((256, 256), (0.0001, 0.0001), 1.0)
    """

    name: ClassVar[str] = "cql"

    actor_lr: float = 1e-4
    critic_lr: float = 1e-4
    alpha_lr: float = 3e-4
    alpha_init: float = 1.0
    fixed_alpha: bool = False
    min_q_weight: float = 1.0
    cql_temperature: float = 1.0
    num_random: int = 10
    with_lagrange: bool = False
    lagrange_thresh: float = 0.0
    deterministic_backup: bool = True
    max_q_backup: bool = False

    def validate(self) -> CQLConfig:
        super().validate()
        if not self.alpha_init > 0 or not self.cql_temperature > 0:
            raise ValueError(
                f"alpha_init and cql_temperature must be > 0; got {self.alpha_init}, {self.cql_temperature}."
            )
        if self.num_random < 1:
            raise ValueError(f"num_random must be >= 1; got {self.num_random}.")
        if self.min_q_weight < 0:
            raise ValueError(f"min_q_weight must be >= 0; got {self.min_q_weight}.")
        return self


@dataclass
class TD3BCConfig(AlgorithmConfig):
    """TD3+BC (Fujimoto and Gu 2021) through TorchRL's :class:`~torchrl.objectives.TD3BCLoss`, Table 3 sizes/rates.

    Attributes:
        alpha: weight of the Q term, lambda = alpha / mean|Q| (TD3+BC: 2.5).
        policy_noise: std of the target-policy smoothing noise, as a fraction of the action half-range
            (TD3: 0.2).
        noise_clip: clip of that noise, same unit (TD3: 0.5).
        policy_delay: critic updates per actor and target update (TD3: 2).

    Examples:
        >>> cfg = TD3BCConfig()
        >>> cfg.hidden_sizes, (cfg.actor_lr, cfg.critic_lr), cfg.alpha, cfg.policy_delay
        ((256, 256), (0.0003, 0.0003), 2.5, 2)
    """

    name: ClassVar[str] = "td3bc"

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha: float = 2.5
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_delay: int = 2

    def validate(self) -> TD3BCConfig:
        super().validate()
        if self.alpha < 0 or self.policy_noise < 0 or self.noise_clip < 0:
            raise ValueError(
                "alpha, policy_noise and noise_clip must be >= 0; got "
                f"{self.alpha}, {self.policy_noise}, {self.noise_clip}."
            )
        if self.policy_delay < 1:
            raise ValueError(f"policy_delay must be >= 1; got {self.policy_delay}.")
        return self


@dataclass
class BREMENConfig(AlgorithmConfig):
    """BREMEN (Matsushima et al. 2021), decentralised as in the OTC paper (section 4.4, Table 3's BREMEN column).

    Each agent fits an ensemble of dynamics models of ``(s' - s, r)`` given ``(s, a_i)`` and improves a Gaussian
    policy, cloned from its offline data, by TRPO steps on imagined rollouts of the ensemble
    (:class:`~torchrl_otc.trainers.algorithms.BREMEN`). Table 3 gives the discount (0.99), batch size (128),
    hidden sizes ((256, 256)), ReLU, actor and critic rates (1e-4, 5e-4) and L (2000); the rest follows BREMEN's
    configurations where they fit the loop's update granularity.

    Attributes:
        actor_lr: Adam rate of the behaviour-cloning initialisation of the policy (Table 3: 1e-4). The TRPO steps
            have no learning rate (their size is set by :attr:`max_kl`).
        critic_lr: Adam rate of the value network, the GAE baseline (Table 3: 5e-4).
        tau: rate of the value network's target copy, moved after every value regression; GAE reads the copy.
            1.0 (default): the copy *is* the value network after each regression, i.e. no target network, as
            BREMEN.
        loss_function: the value regression's loss (``"l2"``: BREMEN's MSE).
        hidden_sizes: hidden widths of the policy's mean network and of the value network, and of the dynamics
            models unless :attr:`model_hidden_sizes` is set (Table 3: (256, 256)).
        ensemble_size: K, dynamics models per agent (BREMEN: 5); at least 1.
        model_hidden_sizes: hidden widths of each dynamics model; ``None`` means :attr:`hidden_sizes` (Table 3;
            BREMEN's own models have (1024, 1024)).
        model_lr: Adam rate of the dynamics ensemble (BREMEN: 1e-3).
        max_kl: delta, the KL bound of each TRPO step to the policy it starts from (BREMEN's ``target_kl``: 0.05);
            must be > 0.
        rollout_horizon: steps of each imagined rollout (BREMEN: 250 in MuJoCo; 10 here, below MPE's 25-step
            episodes, since models fitted one minibatch at a time compound their errors).
        policy_every: updates (model steps) per policy step; every ``policy_every``-th update also rolls out,
            fits the value network and takes one TRPO step (50: 40 policy steps per L = 2000).
        gae_lambda: lambda of GAE on the imagined rollouts (BREMEN, TRPO: 0.95).
        value_steps: Adam steps of the value network on each set of rollouts (5).
        bc_steps: behaviour-cloning steps on the agent's offline data before offline training (2000, of
            ``batch_size`` rows; BREMEN: 3e5 on 1e6 rows); 0 keeps the random initial policy.

    Examples:
        >>> cfg = BREMENConfig()
        >>> cfg.hidden_sizes, (cfg.actor_lr, cfg.critic_lr), cfg.ensemble_size, cfg.max_kl, cfg.finetune_updates
        ((256, 256), (0.0001, 0.0005), 5, 0.05, 2000)
        >>> BREMENConfig(ensemble_size=0)
        Traceback (most recent call last):
        ...
        ValueError: ensemble_size must be an int >= 1 (dynamics models per agent); got 0.
        >>> BREMENConfig(max_kl=0.0)
        Traceback (most recent call last):
        ...
        ValueError: max_kl must be > 0 (the KL bound of each TRPO step); got 0.0.
    """

    name: ClassVar[str] = "bremen"

    actor_lr: float = 1e-4
    critic_lr: float = 5e-4
    tau: float = 1.0
    ensemble_size: int = 5
    model_hidden_sizes: tuple[int, ...] | None = None
    model_lr: float = 1e-3
    max_kl: float = 0.05
    rollout_horizon: int = 10
    policy_every: int = 50
    gae_lambda: float = 0.95
    value_steps: int = 5
    bc_steps: int = 2000

    def __post_init__(self) -> None:
        if self.model_hidden_sizes is not None:
            self.model_hidden_sizes = tuple(int(h) for h in self.model_hidden_sizes)
        super().__post_init__()

    def validate(self) -> BREMENConfig:
        super().validate()
        what = {
            "ensemble_size": "dynamics models per agent",
            "rollout_horizon": "steps of each imagined rollout",
            "policy_every": "updates per policy step",
            "value_steps": "value-network steps per policy step",
        }
        for field, meaning in what.items():
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field} must be an int >= 1 ({meaning}); got {value!r}.")
        if (
            not isinstance(self.bc_steps, int)
            or isinstance(self.bc_steps, bool)
            or self.bc_steps < 0
        ):
            raise ValueError(f"bc_steps must be an int >= 0; got {self.bc_steps!r}.")
        if not self.max_kl > 0:
            raise ValueError(
                f"max_kl must be > 0 (the KL bound of each TRPO step); got {self.max_kl}."
            )
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must be in [0, 1]; got {self.gae_lambda}.")
        if self.model_hidden_sizes is not None and (
            not self.model_hidden_sizes or min(self.model_hidden_sizes) < 1
        ):
            raise ValueError(
                f"model_hidden_sizes must be positive widths or None; got {self.model_hidden_sizes}."
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.model_hidden_sizes is not None:
            out["model_hidden_sizes"] = list(self.model_hidden_sizes)
        return out


#: Algorithm name -> config class (the values of ``algorithm.name``, shortcut ``algo``, of a TuneConfig).
ALGORITHM_CONFIGS: dict[str, type[AlgorithmConfig]] = {
    cls.name: cls for cls in (BCQConfig, AWACConfig, CQLConfig, TD3BCConfig, BREMENConfig)
}


def make_config(name: str, **overrides: Any) -> AlgorithmConfig:
    """The config of algorithm ``name`` with Table 3's defaults and ``overrides`` applied.

    Args:
        name: ``"bcq"``, ``"awac"``, ``"cql"``, ``"td3bc"`` or ``"bremen"``.
        **overrides: field values (``algo`` is accepted and must equal ``name``, so that
            ``make_config(**cfg.to_dict())``-style round trips work).

    Examples:
        >>> cfg = make_config("bcq", batch_size=64)
        >>> cfg.hidden_sizes, cfg.batch_size, cfg.finetune_updates
        ((64, 64), 64, 4000)
        >>> make_config("sac")
        Traceback (most recent call last):
        ...
        ValueError: Unknown algorithm 'sac'; valid algorithms: bcq, awac, cql, td3bc, bremen.
    """
    key = name.lower().replace("+", "").replace("-", "").replace("_", "")
    if key not in ALGORITHM_CONFIGS:
        raise ValueError(
            f"Unknown algorithm {name!r}; valid algorithms: {', '.join(ALGORITHM_CONFIGS)}."
        )
    algo = overrides.pop("algo", key)
    if algo != key:
        raise ValueError(f"make_config({name!r}) got algo={algo!r}.")
    cls = ALGORITHM_CONFIGS[key]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(
            f"Unknown {cls.__name__} fields {unknown}; valid fields: {', '.join(sorted(names))}."
        )
    return cls(**overrides)
