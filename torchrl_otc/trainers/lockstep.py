"""Several runs (the seeds and strategies of a grid cell) trained in one process, their updates batched: lockstep
tuning.

:class:`LockstepTuners` drives N :class:`~torchrl_otc.trainers.tuning.OnlineTuner` s whose configs differ in the
seed, the sampling strategy and the run folder. Each tuner's loop is a generator that asks for one update of its agents at a time
(:class:`~torchrl_otc.trainers.tuning.UpdateRequest`); everything else it does itself, one tuner after the other:
building its agents, loading the offline cache, collecting its deployments on its own environment, evaluating,
logging its ``metrics.csv``, writing its checkpoints and its ``DONE`` marker, at the same points as alone. The
driver answers the requests of the tuners at the same point of their schedule (the same ``(deployment, update)``)
with one batched update of all their agents (:class:`~torchrl_otc.trainers.batched.BatchedLearners`): each agent
still samples with its own sampler, generator and random stream, has its own parameters and Adam moments, and
trains its sampler's learned parts (d_e's CVAE, Balanced Replay's density-ratio network) on its own batch.
Tuners at different points (a group resumed from checkpoints written at different stages, a tuner whose offline
agents were cached) are answered smallest point first, so the ones behind catch up and join the others. Tuners that
share their offline agents (the strategies of a seed: one offline cache) train them once: the first trains them
(batched with the other seeds' first tuners), the others start when they are cached and load them, as separate
runs of a sweep do one after the other.

``otc tune`` and ``otc sweep`` run this way by default (:func:`lockstep_mode`); :meth:`OnlineTuner.run
<torchrl_otc.trainers.tuning.OnlineTuner.run>` and ``--separate`` update the agents one after the other.

Numbers: a batched update computes the same losses as the separate ones in another order of floating-point
operations (stacked ``bmm`` instead of one matmul per learner), so metrics equal those of separate runs to float
tolerance, not bit for bit; training amplifies the differences over many updates as any change of rounding does.
Batched runs therefore keep their own offline cache (the key ends in ``-batched``) and record ``"batched"`` in
``meta.json``. A learner's numbers do not depend on which other learners share its batch, for every batched
algorithm (bit for bit on one device at one intra-op thread, the sweeps' default; tested): a run batched alone
(``otc tune``), in a sweep's group of any size, or catching up after a resume computes the same numbers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchrl_otc.trainers.batched import BATCHED_ALGORITHMS, BatchedLearners
from torchrl_otc.trainers.learner import AgentLearner, RowLabels
from torchrl_otc.trainers.run import RunFolder
from torchrl_otc.trainers.tuning import OnlineTuner, Steps, UpdateRequest

__all__ = ["LockstepError", "LockstepTuners", "batchable", "lockstep_mode", "started_batched"]

logger = logging.getLogger(__name__)

#: The suffix of a batched run's offline cache key (its offline agents differ from separate ones by rounding).
OFFLINE_CACHE_TAG = "-batched"


def batchable(tuner_or_algorithm: OnlineTuner | str) -> str | None:
    """Why a run cannot be batched, or ``None`` when it can (its algorithm has a batched class).

    Examples:
        >>> batchable("bcq") is None
        True
        >>> batchable("sac")
        "algorithm 'sac' has no batched class (batched: bcq, awac, cql, td3bc)"
    """
    name = (
        tuner_or_algorithm
        if isinstance(tuner_or_algorithm, str)
        else tuner_or_algorithm.config.algorithm.name
    )
    if name not in BATCHED_ALGORITHMS:
        return f"algorithm {name!r} has no batched class (batched: {', '.join(BATCHED_ALGORITHMS)})"
    task = getattr(tuner_or_algorithm, "task", None)
    if task is not None and task.discrete:
        return f"{task.name} has discrete actions (the batched classes are for continuous actions)"
    return None


class LockstepError(RuntimeError):
    """Some runs of a lockstep group failed; the others finished.

    Attributes:
        results: the finished runs' summaries, in the tuners' order (``None`` for a failed run).
        errors: ``(run folder, exception)`` of each failed run.
    """

    def __init__(
        self, results: list[dict[str, Any] | None], errors: list[tuple[str, BaseException]]
    ) -> None:
        names = ", ".join(name for name, _ in errors)
        super().__init__(
            f"{len(errors)} run(s) of a lockstep group failed: {names} (the first error: {errors[0][1]!r}); the "
            f"group's other runs finished."
        )
        self.results = results
        self.errors = errors

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        # rebuilt from its attributes (its args hold only the message): a sweep's worker process sends it back
        return type(self), (self.results, self.errors)


class _Group(BatchedLearners):
    """:class:`BatchedLearners` whose :meth:`step` returns each learner's metrics as :meth:`AgentLearner.update`
    names and orders them (labels, online share, timings)."""

    def step(
        self, *, train_sampler: bool, labels: Sequence[RowLabels | None]
    ) -> list[dict[str, float]]:
        start = time.perf_counter()
        batches, stacked, noise, sample_ms = self._draw("Run them separately (--separate).")
        out = self.batched.update(stacked, noise)
        losses = {k: v.tolist() for k, v in out.items() if k.startswith("loss")}
        parts = []
        for learner, batch in zip(self.learners, batches):
            parts.append({})
            if train_sampler:
                with learner.random_stream():
                    parts[-1] = learner.sampler_update(batch)
            learner.num_updates += 1
        per_learner_ms = (time.perf_counter() - start) * 1e3 / self.num_agents
        metrics = []
        for i, (learner, batch) in enumerate(zip(self.learners, batches)):
            m = {k: v[i] for k, v in losses.items()}
            m.update(parts[i])
            m.update(_batch_shares(learner, batch, labels[i]))
            m["sample_ms"] = sample_ms[i]
            m["update_ms"] = per_learner_ms
            metrics.append(m)
        return metrics


def _batch_shares(learner: AgentLearner, batch: Any, labels: RowLabels | None) -> dict[str, float]:
    """``online_share`` and ``offline_right_dynamics_share`` of a batch, as :meth:`AgentLearner.update` computes
    them."""
    prefix = getattr(learner.sampler, "info_prefix", "otc_")
    keys = batch.keys()
    out: dict[str, float] = {}
    has_flags = learner.online_key is not None and learner.online_key in keys
    online = batch.get(learner.online_key) if has_flags else None
    share = prefix + "online_share"
    if share in keys:
        out["online_share"] = torch.stack([batch.get(share).float().mean()]).tolist()[0]
    elif online is not None:
        out["online_share"] = float(online.float().mean())
    right = None if labels is None else labels(batch)
    if right is not None:
        right = right.reshape(-1) if online is None else right.reshape(-1)[~online.reshape(-1)]
        if right.numel():
            out["offline_right_dynamics_share"] = float(right.float().mean())
    return out


@dataclass(eq=False)
class _Slot:
    """One tuner's loop, its pending request and the process-wide random states it left."""

    tuner: OnlineTuner
    steps: Steps | None = None
    request: UpdateRequest | None = None
    summary: dict[str, Any] | None = None
    error: BaseException | None = None
    rng: dict[str, Any] = field(default_factory=dict)


def started_batched(folder: RunFolder | str | Path) -> bool | None:
    """How the run a folder holds was started: ``True`` batched (``meta.json`` records ``"batched"``), ``False``
    separately, ``None`` when the folder holds no run yet (or its ``meta.json`` cannot be read). A resumed run
    keeps the mode it started in, so that its numbers come from one mode.

    Examples:
        >>> import tempfile
        >>> started_batched(tempfile.mkdtemp()) is None
        True
    """
    folder = folder if isinstance(folder, RunFolder) else RunFolder(folder)
    meta = folder.path / "meta.json"
    if not folder.holds_run() or not meta.exists():
        return None
    try:
        return "batched" in json.loads(meta.read_text())
    except (OSError, ValueError):
        return None


def lockstep_mode(tuner: OnlineTuner, batched: bool | None = None) -> bool:
    """Whether a run trains batched (its agents' updates in one :class:`LockstepTuners`), as ``otc tune`` and
    ``otc sweep`` decide it.

    A resumed run keeps the mode it started in (:func:`started_batched`; logged when ``batched`` asks for the
    other), so that its numbers come from one mode. A new run follows ``batched``; ``None`` (the default of
    ``otc tune``) trains it batched when its algorithm has a batched class (:func:`batchable`), else agent by
    agent.

    Args:
        tuner: the run.
        batched: ``True`` batched, ``False`` agent by agent (:meth:`OnlineTuner.run
            <torchrl_otc.trainers.tuning.OnlineTuner.run>`), ``None`` batched when it can be.

    Examples:
        >>> from torchrl_otc.configs.tune import parse_overrides
        >>> import tempfile; root = tempfile.mkdtemp()
        >>> cfg = parse_overrides(["task=nav/nonstationary", f"runs_root={root}"])
        >>> lockstep_mode(OnlineTuner(cfg, progress=False)), lockstep_mode(OnlineTuner(cfg), False)
        (True, False)
    """
    started = started_batched(tuner.folder)
    if started is not None:
        if batched is not None and batched != started:
            logger.info(
                "%s resumes %s, the mode it started in.",
                tuner.folder.path,
                "batched" if started else "agent by agent",
            )
        return started
    return batchable(tuner) is None if batched is None else batched


def _trains_offline(slot: _Slot) -> bool:
    """Whether the slot's run is still training its offline agents (past that phase, they are cached; a run that
    failed or finished trains nothing)."""
    return slot.request is not None and slot.request.phase == "offline"


@contextlib.contextmanager
def _own_random_state(slot: _Slot):
    """Runs the block with the process-wide random states (torch, NumPy, ``random``) the slot's loop left, as
    if it ran alone; saves them back."""
    saved = _global_rng()
    if slot.rng:
        _set_global_rng(slot.rng)
    try:
        yield
    finally:
        slot.rng = _global_rng()
        _set_global_rng(saved)


def _global_rng() -> dict[str, Any]:
    state = {
        "torch": torch.random.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (the global state itself is what is kept)
        "random": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_global_rng(state: dict[str, Any]) -> None:
    torch.random.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["random"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class LockstepTuners:
    """Runs several :class:`~torchrl_otc.trainers.tuning.OnlineTuner` s in one process, their updates batched.

    Every tuner writes the run folder it writes alone (``config.yaml``, ``meta.json`` with ``"batched"``,
    ``metrics.csv``, checkpoints at the same points, ``DONE``), and resumes from its own checkpoint: tuners whose
    checkpoints are at different stages catch up one with the other (see the module's docstring). A tuner that
    fails (e.g. :class:`~torchrl_otc.trainers.tuning.DivergenceError`) leaves the group; the others finish, then
    :class:`LockstepError` names it. An interruption (``KeyboardInterrupt``) stops every tuner, as it would stop
    one process.

    Tuners that share an offline cache (the strategies of one seed: the same offline key) train
    their offline agents once: the first of them in ``tuners`` trains, the others wait until the cache is written
    (or until the first failed) and load it.

    Args:
        tuners: tuners of one algorithm with a batched class (:data:`~torchrl_otc.trainers.batched.
            BATCHED_ALGORITHMS`), identical algorithm configs, sizes and device, each with its own run folder; a
            single tuner batches its agents.

    Raises:
        ValueError: no tuners, an algorithm without a batched class, tuners of different algorithms or devices,
            or two tuners writing one run folder (one line saying which).

    Examples:
        >>> from torchrl_otc.configs.tune import parse_overrides
        >>> import tempfile; root = tempfile.mkdtemp()
        >>> def tuner(seed):
        ...     cfg = parse_overrides(["task=nav/nonstationary", "dataset_size=500", "offline_updates=4",
        ...         "deployments=1", "steps_per_deployment=20", "updates_per_deployment=4", "eval_episodes=1",
        ...         "num_candidates=16", "num_online=10", f"seed={seed}"])
        ...     cfg.run.runs_root, cfg.data.cache_dir = root, root + "/cache"
        ...     return OnlineTuner(cfg, progress=False)
        >>> summaries = LockstepTuners([tuner(0), tuner(1)]).run()
        >>> [sorted(s["returns"]) for s in summaries]
        [[0, 1], [0, 1]]
    """

    def __init__(self, tuners: Sequence[OnlineTuner]) -> None:
        self.tuners = list(tuners)
        if not self.tuners:
            raise ValueError("LockstepTuners needs at least one tuner.")
        for tuner in self.tuners:
            why = batchable(tuner)
            if why is not None:
                raise ValueError(
                    f"{tuner.folder.path} cannot run in lockstep: {why}; run it with --separate."
                )
        algos = sorted({t.config.algorithm.name for t in self.tuners})
        if len(algos) > 1:
            raise ValueError(
                f"Runs in lockstep share one algorithm; got {', '.join(algos)}: group them by algorithm."
            )
        devices = sorted({str(t.device) for t in self.tuners})
        if len(devices) > 1:
            raise ValueError(f"Runs in lockstep share one device; got {', '.join(devices)}.")
        folders = [str(t.folder.path.resolve()) for t in self.tuners]
        twice = sorted({f for f in folders if folders.count(f) > 1})
        if twice:
            raise ValueError(f"Two runs in lockstep would write one run folder: {twice[0]}.")
        names = [t.folder.path.name for t in self.tuners]
        for tuner in self.tuners:
            tuner.offline_cache_tag = OFFLINE_CACHE_TAG
            tuner.meta_extra = {"batched": {"runs": names}}
        self._batch: _Group | None = None
        self._members: tuple[int, ...] = ()
        self._dirty = False

    # ------------------------------------------------------------------------------------------- driving
    def run(self) -> list[dict[str, Any]]:
        """Runs (or resumes) every tuner to its end; returns their summaries, in order (as
        :meth:`OnlineTuner.run <torchrl_otc.trainers.tuning.OnlineTuner.run>`).

        Raises:
            LockstepError: some tuners failed (the others finished).
            RunLockedError: another process writes one of the folders (nothing ran).
        """
        slots = [_Slot(tuner) for tuner in self.tuners]
        with contextlib.ExitStack() as stack:
            for slot in slots:
                stack.enter_context(slot.tuner.folder.lock())
            # runs that share their offline agents (the strategies of a seed): the first trains them, the others
            # start once they are cached, and load them
            first: dict[Path, _Slot] = {}
            waiting: list[tuple[_Slot, _Slot]] = []
            for slot in slots:
                self._warn_mixed_mode(slot.tuner)
                cache = slot.tuner._offline_cache()
                if cache in first and not (cache / "COMPLETE").exists():
                    waiting.append((slot, first[cache]))
                    continue
                first.setdefault(cache, slot)
                self._start(slot)
            try:
                while True:
                    for pair in [p for p in waiting if not _trains_offline(p[1])]:
                        waiting.remove(pair)
                        self._start(pair[0])
                    pending = [s for s in slots if s.request is not None]
                    if not pending:
                        break
                    key = min(s.request.key for s in pending)  # type: ignore[union-attr]
                    members = [s for s in pending if s.request.key == key]  # type: ignore[union-attr]
                    answers = self._update(slots, members)
                    for slot, answer in zip(members, answers):
                        self._advance(slot, answer)
            finally:
                self._write_back()
                for slot in slots:
                    if slot.steps is not None:
                        slot.steps.close()
        errors = [(str(s.tuner.folder.path), s.error) for s in slots if s.error is not None]
        results = [s.summary for s in slots]
        if errors and len(slots) == 1:
            raise errors[0][1]  # one run (``otc tune --batched``): its own error
        if errors:
            raise LockstepError(results, errors)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    def _start(self, slot: _Slot) -> None:
        """Starts (or resumes) the slot's loop, up to its first request."""
        slot.steps = slot.tuner._steps()
        self._advance(slot, None)

    def _advance(self, slot: _Slot, answer: list[dict[str, float]] | None) -> None:
        """Runs the slot's loop, with its own process-wide random states, up to its next request or its end."""
        assert slot.steps is not None
        with _own_random_state(slot):
            try:
                slot.request = slot.steps.send(answer)  # type: ignore[arg-type]
            except StopIteration as stop:
                slot.request, slot.summary = None, stop.value
            except Exception as err:  # this run fails alone; the group goes on
                slot.request, slot.error = None, err
                if len(self.tuners) > 1:  # one run raises its own error, which says it
                    logger.error("lockstep: %s failed: %s", slot.tuner.folder.path, err)

    def _update(self, slots: list[_Slot], members: list[_Slot]) -> list[list[dict[str, float]]]:
        """One batched update of every agent of ``members``; their metrics, split by tuner."""
        ids = tuple(slots.index(m) for m in members)
        if ids != self._members or self._batch is None:
            self._write_back()
            learners = [a.learner for m in members for a in m.tuner.agents]
            self._batch, self._members = _Group(learners), ids
        requests = [m.request for m in members]
        labels = [r.labels for m, r in zip(members, requests) for _ in m.tuner.agents]  # type: ignore[union-attr]
        with torch.random.fork_rng(devices=[]):
            metrics = self._batch.step(
                train_sampler=requests[0].train_sampler,  # type: ignore[union-attr]
                labels=labels,
            )
        self._dirty = True
        # the loop reads the learners' algorithms next (checkpoint, end of phase), or the sampler reads them
        # while sampling (d_q's critic): the stacked parameters go back first
        if any(r.sync for r in requests) or self._reads_algorithm(members):  # type: ignore[union-attr]
            self._write_back()
        out, i = [], 0
        for m in members:
            out.append(metrics[i : i + len(m.tuner.agents)])
            i += len(m.tuner.agents)
        return out

    def _write_back(self) -> None:
        if self._batch is not None and self._dirty:
            self._batch.write_back()
        self._dirty = False

    @staticmethod
    def _reads_algorithm(members: list[_Slot]) -> bool:
        """Whether a sampler reads its learner's networks (a distance bound to them: d_q)."""
        return any(
            callable(getattr(a.learner.distance, "bind", None))
            for m in members
            for a in m.tuner.agents
        )

    @staticmethod
    def _warn_mixed_mode(tuner: OnlineTuner) -> None:
        """A run started separately and resumed in lockstep: its numbers mix both (logged)."""
        if started_batched(tuner.folder) is False:
            logger.warning(
                "%s was started separately and resumes batched: its numbers mix both modes (equal to float "
                "tolerance).",
                tuner.folder.path,
            )
