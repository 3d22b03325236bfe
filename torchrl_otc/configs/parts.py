"""The parts of a :class:`~torchrl_otc.configs.tune.TuneConfig`: task, data, sampler (with its distance) and run.

Each part is a dataclass whose fields are the arguments of what it configures: :class:`TaskConfig` the task and its
collection (:func:`~torchrl_otc.envs.registry.get_task`, sequential exploration), :class:`DataConfig` the offline
dataset ``B^0`` (:func:`~torchrl_otc.data.datasets.builders.build_dataset`), :class:`SamplerConfig` the sampler of
online tuning (:class:`~torchrl_otc.OTCSampler`, :class:`~torchrl_otc.MixSampler`, ...) with its
:class:`DistanceConfig` (:class:`~torchrl_otc.FeatureDistance`, :class:`~torchrl_otc.EmbeddingDistance`,
:class:`~torchrl_otc.ValueDistance`), and :class:`RunConfig` the loop of Algorithm 1 and its run folder. The base
algorithm's part is one of :mod:`torchrl_otc.configs.algorithms`.

Every part checks its own fields in ``validate()``; the messages name the field by its dotted path
(``sampler.alpha``), as typed on the command line, the value and what to do. They raise :class:`ConfigError`, a
:class:`ValueError` that the ``otc`` command answers with that one line (exit code 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = [
    "ADAPTIVE_FRACTION",
    "ALGORITHMS",
    "DATASET_KINDS",
    "DISTANCES",
    "LOGGERS",
    "MATCHED_FRACTION",
    "MIX_SOURCES",
    "STRATEGIES",
    "ConfigError",
    "DataConfig",
    "DistanceConfig",
    "RunConfig",
    "SamplerConfig",
    "TaskConfig",
]

STRATEGIES = ("otc", "uniform", "online-only", "balanced-replay", "mix")
MIX_SOURCES = ("all", "latest")
#: ``sampler.online_fraction=adaptive``: decomposed OTC's online share set per deployment from eq. (4)'s ``D_k``.
ADAPTIVE_FRACTION = "adaptive"
#: ``sampler.mix_fraction=matched`` / ``sampler.online_fraction=matched``: per agent and deployment, the online
#: share that the paired coupled-OTC run (``sampler.mix_pair``) measured.
MATCHED_FRACTION = "matched"
DISTANCES = ("feature", "embedding", "value", "likelihood")
ALGORITHMS = ("bcq", "awac", "cql", "td3bc")
DATASET_KINDS = ("random", "medium", "medium-replay")
LOGGERS = ("csv", "tensorboard", "wandb")


class ConfigError(ValueError):
    """A meaningless or malformed setting: in a config, a ``config=`` file, a recipe or a run's ``config.yaml``.

    The message is one line that names the field or file, the value and what to do; the ``otc`` command logs it
    and exits with code 2 (the traceback only with ``otc -v``). A :class:`ValueError`, so code that catches
    those keeps working.

    Examples:
        >>> try:
        ...     DataConfig(size=0).validate()
        ... except ConfigError as err:
        ...     print(err)
        data.size must be >= 1; got 0.
    """


def _choice(path: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"Unknown {path} {value!r}; valid values: {', '.join(valid)}.")


def _at_least(path: str, value: int | float | None, low: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or isinstance(value, bool) or value < low:
        tail = " or None" if optional else ""
        raise ConfigError(f"{path} must be >= {low}{tail}; got {value}.")


def _finite(path: str, value: float) -> None:
    """Refuses NaN and infinities, which pass every ``<`` check unnoticed."""
    if not math.isfinite(value):
        raise ConfigError(f"{path} must be a finite number; got {value}.")


@dataclass
class TaskConfig:
    """The task and how deployments collect on it (``task.*``).

    Attributes:
        name: registered task name (``torchrl_otc.envs.registry``), e.g. ``"mpe/navigation-3"``. Shortcut:
            ``task=``.
        sequential_exploration: collect agent by agent with an exploration policy for the collecting agent
            (section 4.6). Shortcut: ``sequential_exploration=``.
        exploration_noise: std of the Gaussian noise of the exploration policy, as a fraction of the action
            half-range (sequential exploration). Shortcut: ``exploration_noise=``.

    Examples:
        >>> TaskConfig(name="nav/nonstationary").validate().name
        'nav/nonstationary'
    """

    name: str = "mpe/navigation-3"
    sequential_exploration: bool = False
    exploration_noise: float = 0.1

    def validate(self) -> TaskConfig:
        """Checks the fields; raises :class:`ValueError` saying what was wrong."""
        if not self.name:
            raise ConfigError("task.name must name a registered task, e.g. task=mpe/navigation-3.")
        _finite("task.exploration_noise", self.exploration_noise)
        if self.exploration_noise < 0:
            raise ConfigError(
                f"task.exploration_noise must be >= 0 (a std in action half-ranges); got {self.exploration_noise}."
            )
        return self


@dataclass
class DataConfig:
    """The offline dataset ``B^0`` and the cache shared by runs (``data.*``).

    Attributes:
        kind: dataset kind: ``"random"``, ``"medium"`` or ``"medium-replay"`` (section 4.1). Shortcut:
            ``dataset=``.
        size: joint transitions in ``B^0``. Shortcut: ``dataset_size=``.
        path: a dataset folder to load instead of building one (``otc data build`` writes them). Shortcut:
            ``dataset_path=``.
        cache_dir: folder for datasets and offline-trained agents shared by runs. Shortcut: ``cache_dir=``.

    Examples:
        >>> DataConfig(kind="medium", size=50_000).validate().size
        50000
    """

    kind: str = "random"
    size: int = 10_000
    path: str | None = None
    cache_dir: str = ".otc_cache"

    def validate(self) -> DataConfig:
        """Checks the fields; raises :class:`ValueError` saying what was wrong."""
        _choice("data.kind", self.kind, DATASET_KINDS)
        _at_least("data.size", self.size, 1)
        if not str(self.cache_dir).strip():
            raise ConfigError(
                "data.cache_dir must name a folder; got ''. Use cache_dir=.otc_cache (the default)."
            )
        return self


@dataclass
class DistanceConfig:
    """OTC's transition distance (``sampler.distance.*``, section 3.3).

    ``name`` picks the class; the other fields are its arguments: ``next_state`` of
    :class:`~torchrl_otc.FeatureDistance`, ``reconstruct`` and ``update_every`` of
    :class:`~torchrl_otc.EmbeddingDistance`, ``value_actions`` of :class:`~torchrl_otc.ValueDistance`, ``compile``
    of the first two, ``ensemble_*`` and ``fit_*`` of :class:`~torchrl_otc.modules.likelihood.LikelihoodDistance`.

    Attributes:
        name: ``"feature"`` (standardised L1), ``"embedding"`` (d_e), ``"value"`` (d_q) or ``"likelihood"`` (the
            dynamics-likelihood selector: offline rows ranked by their likelihood under a Gaussian ensemble fitted
            to the latest deployment; decomposed OTC only, i.e. with ``sampler.online_fraction`` a number or
            ``"matched"``, not ``"adaptive"``).
            Shortcut: ``distance=``.
        next_state: what ``d(s', s'*)`` compares for the feature distance: ``"displacement"`` (``s' - s``) or
            ``"next_state"``. Shortcut: ``next_state=``.
        reconstruct: what d_e's CVAE decodes: ``"action"`` (the paper's ``D(a_i | s, s', z)``) or ``"next_state"``
            (``D(s' | s, a_i, z)``). Shortcut: ``embedding_reconstruct=``.
        update_every: d_e's CVAE makes one gradient step every this many agent updates. Shortcut:
            ``embedding_update_every=``.
        value_actions: how d_q computes ``V(s') = E_a Q(s', a)``: ``"policy"`` (the policy's action) or
            ``"sample"`` (mean over sampled actions; not for TD3+BC). Shortcut: ``value_actions=``.
        compile: compile the distance's pairwise step (:func:`torch.compile`; feature and embedding distances).
            Shortcut: ``compile=``.
        refresh_every: d_q only: its values are treated as current for this many updates of the critic (an
            approximation; ``1``, the default, is exact), taking effect through ``sampler.score_every``, which
            must then be equal (see :class:`~torchrl_otc.ValueDistance`'s "Stale values"). Shortcut:
            ``value_refresh_every=``.
        ensemble_size: ``distance=likelihood``: members of the ensemble (``sampler.distance.ensemble_size``).
        ensemble_hidden_sizes: ``distance=likelihood``: hidden widths of each member.
        fit_steps: ``distance=likelihood``: Adam steps of each refit on a deployment's data.
        fit_batch_size: ``distance=likelihood``: rows per member and step of a refit.

    Examples:
        >>> DistanceConfig(name="embedding", reconstruct="next_state").validate().reconstruct
        'next_state'
    """

    name: str = "feature"
    next_state: str = "displacement"
    reconstruct: str = "action"
    update_every: int = 1
    value_actions: str = "policy"
    compile: bool = False
    refresh_every: int = 1
    ensemble_size: int = 5
    ensemble_hidden_sizes: tuple[int, ...] = (64, 64)
    fit_steps: int = 200
    fit_batch_size: int = 256

    def validate(self) -> DistanceConfig:
        """Checks the fields; raises :class:`ValueError` saying what was wrong."""
        _choice("sampler.distance.name", self.name, DISTANCES)
        _choice("sampler.distance.next_state", self.next_state, ("displacement", "next_state"))
        _choice("sampler.distance.reconstruct", self.reconstruct, ("action", "next_state"))
        _choice("sampler.distance.value_actions", self.value_actions, ("policy", "sample"))
        _at_least("sampler.distance.update_every", self.update_every, 1)
        _at_least("sampler.distance.refresh_every", self.refresh_every, 1)
        if self.refresh_every > 1 and self.name != "value":
            raise ConfigError(
                f"sampler.distance.refresh_every={self.refresh_every} reuses d_q's critic values; "
                f"distance={self.name} has none. Use distance=value, or value_refresh_every=1."
            )
        for name in ("ensemble_size", "fit_steps", "fit_batch_size"):
            _at_least(f"sampler.distance.{name}", getattr(self, name), 1)
        if not self.ensemble_hidden_sizes or min(self.ensemble_hidden_sizes) < 1:
            raise ConfigError(
                f"sampler.distance.ensemble_hidden_sizes must be positive widths; got {self.ensemble_hidden_sizes}."
            )
        return self


@dataclass
class SamplerConfig:
    """How online tuning samples each agent's batches (``sampler.*``).

    ``name`` picks the sampler; ``alpha``, ``adaptive_alpha``, ``num_candidates``, ``num_online`` and
    ``self_match`` are the arguments of :class:`~torchrl_otc.OTCSampler` (``num_candidates`` also of
    :class:`~torchrl_otc.BalancedReplaySampler`), ``mix_*`` those of :class:`~torchrl_otc.MixSampler`.

    Attributes:
        name: ``"otc"``, ``"uniform"`` (merged data), ``"online-only"``, ``"balanced-replay"`` (Lee et al. 2021) or
            ``"mix"`` (a fixed share of online rows, :class:`~torchrl_otc.MixSampler`). Shortcut: ``strategy=``.
        alpha: initial exponent alpha^0 of eq. (3) (section 4.3 uses 1.0). Shortcut: ``alpha=`` (TD3+BC's own
            alpha is ``algorithm.alpha``).
        adaptive_alpha: adapt alpha per deployment by eq. (4). Shortcut: ``adaptive_alpha=``.
        num_candidates: ``|B|`` (Table 3: 512). Shortcut: ``num_candidates=``.
        num_online: ``|D|`` (Table 3: 2000). Shortcut: ``num_online=``.
        self_match: whether online candidates may match their own copies (the paper's procedure). Shortcut:
            ``self_match=``.
        score_every: ``k``, consecutive batches served by one scoring of ``k |B|`` candidates against one draw
            of ``|D|`` online rows (:class:`~torchrl_otc.OTCSampler`'s "scoring ahead"; each batch keeps the
            per-update distribution, consecutive batches share their ``|D|`` draw). ``1`` (default) is the
            paper's procedure. Shortcut: ``score_every=``.
        mix_fraction: ``name=mix``: the share of online rows per batch, in (0, 1), or ``"matched"``: per agent and
            deployment, the online share that the paired OTC run (``mix_pair``) measured. Shortcut:
            ``mix_fraction=``.
        mix_source: ``name=mix`` and decomposed OTC (``online_fraction`` set): online rows from ``"all"``
            deployments so far or the ``"latest"`` one only. Shortcut: ``mix_source=``.
        mix_pair: ``mix_fraction=matched`` or ``online_fraction=matched``: the run folder of the paired
            (coupled) OTC run (same task, data, algorithm, seed and sizes; finished). In a recipe, the *label* of
            the OTC variant (the sweep fills in its folder).
            Shortcut: ``mix_pair=``.
        online_fraction: ``name=otc`` only: ``None`` (default) is the paper's coupled sampler; a number in
            ``[0, 1)`` is *decomposed* OTC, that share of every batch drawn uniformly from the online rows and the
            rest by eq. (3) among offline rows only; ``"adaptive"`` sets the share per deployment from eq. (4)'s
            ``D_k`` (:func:`~torchrl_otc.data.samplers.decomposed.adaptive_online_fraction`); ``"matched"``, per
            agent and deployment the share the paired coupled-OTC run (``mix_pair``) measured. Shortcut:
            ``online_fraction=``.
        distance: OTC's transition distance, a :class:`DistanceConfig`.

    Examples:
        >>> cfg = SamplerConfig(name="mix", mix_fraction="0.25").validate()
        >>> cfg.mix_fraction, cfg.distance.name
        (0.25, 'feature')
    """

    name: str = "otc"
    alpha: float = 1.0
    adaptive_alpha: bool = True
    num_candidates: int = 512
    num_online: int = 2000
    self_match: bool = True
    score_every: int = 1
    mix_fraction: float | str = 0.5
    mix_source: str = "all"
    mix_pair: str | None = None
    online_fraction: float | str | None = None
    distance: DistanceConfig = field(default_factory=DistanceConfig)

    def validate(self) -> SamplerConfig:
        """Checks the fields (and the distance's); raises :class:`ValueError` saying what was wrong."""
        _choice("sampler.name", self.name, STRATEGIES)
        _choice("sampler.mix_source", self.mix_source, MIX_SOURCES)
        _at_least("sampler.num_candidates", self.num_candidates, 1)
        _at_least("sampler.num_online", self.num_online, 1)
        _at_least("sampler.score_every", self.score_every, 1)
        _finite("sampler.alpha", self.alpha)
        if self.alpha < 0:
            raise ConfigError(f"sampler.alpha must be >= 0; got {self.alpha}.")
        if self.mix_fraction != "matched":
            try:
                fraction = float(self.mix_fraction)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"sampler.mix_fraction must be a number in (0, 1) or 'matched'; got {self.mix_fraction!r}."
                ) from None
            if not 0.0 < fraction < 1.0:
                raise ConfigError(
                    f"sampler.mix_fraction must lie strictly between 0 and 1 (or be 'matched'); got {fraction}. "
                    f"Use strategy=online-only for 1 and strategy=uniform for the merged data as it comes."
                )
            self.mix_fraction = fraction
        elif self.name == "mix" and not self.mix_pair:
            raise ConfigError(
                "mix_fraction=matched takes its online share from a paired OTC run: set mix_pair=<that run's "
                "folder> (in a recipe: mix_pair=<label of the OTC variant>)."
            )
        self._validate_online_fraction()
        self.distance.validate()
        if self.distance.refresh_every > 1 and self.score_every != self.distance.refresh_every:
            raise ConfigError(
                f"value_refresh_every={self.distance.refresh_every} takes effect through scoring ahead: one "
                f"scoring serves score_every batches. Set score_every={self.distance.refresh_every} too (got "
                f"score_every={self.score_every})."
            )
        if self.name == "otc" and self.distance.name == "likelihood":
            if self.online_fraction is None or self.online_fraction == ADAPTIVE_FRACTION:
                raise ConfigError(
                    f"distance=likelihood ranks offline rows by a model fitted to the online rows; it needs "
                    f"decomposed OTC with a fixed or matched share (online_fraction=0.3, say); got "
                    f"online_fraction={self.online_fraction}."
                )
        return self

    def _validate_online_fraction(self) -> None:
        value = self.online_fraction
        if value is None:
            return
        if self.name != "otc":
            raise ConfigError(
                f"sampler.online_fraction={value} splits OTC's batch into online rows and an eq. (3) selection of "
                f"offline rows; strategy={self.name} has no offline selection. Use strategy=otc, or unset "
                f"online_fraction (strategy=mix takes mix_fraction)."
            )
        if value == ADAPTIVE_FRACTION:
            return
        # the paired coupled-OTC run's share per deployment (trainers/matched_mix.py)
        if value == MATCHED_FRACTION:
            if not self.mix_pair:
                raise ConfigError(
                    "online_fraction=matched takes its online share from a paired (coupled) OTC run: set "
                    "mix_pair=<that run's folder> (in a recipe: mix_pair=<label of the OTC variant>)."
                )
            return
        try:
            fraction = float(value)
        except (TypeError, ValueError):
            fraction = float("nan")
        if isinstance(value, bool) or not 0.0 <= fraction < 1.0:
            raise ConfigError(
                f"sampler.online_fraction must be a number in [0, 1) or 'adaptive'; got {value!r}. Use "
                f"strategy=online-only for online rows only, 'matched' with mix_pair=, or unset it for the paper's "
                f"coupled sampler."
            )
        self.online_fraction = fraction


@dataclass
class RunConfig:
    """The loop of Algorithm 1, its compute and its run folder (``run.*``).

    Attributes:
        offline_updates: gradient steps of offline training on ``B_i^0``. Shortcut: ``offline_updates=``.
        deployments: K (section 4.1: 10). Shortcut: ``deployments=``.
        steps_per_deployment: M, environment steps per deployment; ``None`` means 1 % of ``data.size``
            (section 4.1). Shortcut: ``steps_per_deployment=``.
        updates_per_deployment: L; ``None`` means the algorithm's ``finetune_updates`` (Table 3: 4000 BCQ, 2000
            others). Shortcut: ``updates_per_deployment=``.
        eval_episodes: episodes per evaluation (after offline training and after every deployment). Shortcut:
            ``eval_episodes=``.
        seed: random seed of the run. Shortcut: ``seed=``.
        threads: intra-op threads of the run (:func:`torch.set_num_threads`); ``None`` keeps torch's default.
            Returns at small sizes change with the thread count (floating-point sums in another order), so runs
            that are compared or regenerated pin it; sweeps default to 1. Shortcut: ``threads=``.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Shortcut: ``device=``.
        runs_root: folder under which run folders are created. Shortcut: ``runs_root=``.
        run_name: name of the run folder; ``None`` derives one from the config. Shortcut: ``run_name=``.
        logger: ``"csv"``, ``"tensorboard"`` or ``"wandb"`` (TorchRL loggers; ``metrics.csv`` is always written).
            Shortcut: ``logger=``.
        checkpoint_every: gradient steps between checkpoints inside an update phase. Shortcut:
            ``checkpoint_every=``.

    Examples:
        >>> RunConfig(deployments=10, threads=1).validate().deployments
        10
    """

    offline_updates: int = 1000
    deployments: int = 3
    steps_per_deployment: int | None = None
    updates_per_deployment: int | None = 300
    eval_episodes: int = 5
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    runs_root: str = "runs"
    run_name: str | None = None
    logger: str = "csv"
    checkpoint_every: int = 500

    def validate(self) -> RunConfig:
        """Checks the fields; raises :class:`ValueError` saying what was wrong."""
        _choice("run.logger", self.logger, LOGGERS)
        if not str(self.device).startswith("cuda:"):
            _choice("run.device", self.device, ("auto", "cpu", "cuda"))
        for name in ("deployments", "eval_episodes", "checkpoint_every"):
            _at_least(f"run.{name}", getattr(self, name), 1)
        _at_least("run.offline_updates", self.offline_updates, 0)
        _at_least("run.seed", self.seed, 0)  # environments take non-negative seeds only
        for name in ("steps_per_deployment", "updates_per_deployment"):
            _at_least(f"run.{name}", getattr(self, name), 1, optional=True)
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ConfigError(
                f"run.threads must be an integer >= 1 (or none); got {self.threads!r}."
            )
        index = str(self.device).partition(":")[2]
        if str(self.device).startswith("cuda:") and not (index.isdigit() and index.isascii()):
            raise ConfigError(
                f"run.device={self.device!r}: a GPU is named cuda:N with N its index (cuda:0, cuda:1, ...); or "
                f"use device=cuda, device=cpu or device=auto."
            )
        if not str(self.runs_root).strip():
            raise ConfigError(
                "run.runs_root must name a folder; got ''. Use runs_root=runs (the default)."
            )
        if self.run_name is not None and (
            not str(self.run_name).strip()
            or "/" in str(self.run_name)
            or "\\" in str(self.run_name)
            or str(self.run_name) in (".", "..")
        ):
            raise ConfigError(
                f"run.run_name must be a folder name under runs_root, without '/'; got {self.run_name!r}. Put the "
                f"parent folders in runs_root=, or leave run_name unset for a name derived from the config."
            )
        return self
