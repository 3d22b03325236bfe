"""Matched online shares: a run whose online share per agent and deployment is the one a finished OTC run measured.

Two kinds of run are *matched* to a paired, coupled OTC run (``mix_pair``; the paper's procedure,
``online_fraction`` unset):

- the matched mix (``strategy=mix mix_fraction=matched``) draws that share uniformly, and the rest offline rows
  uniformly; so a return difference between the two runs is what OTC's choice of rows adds beyond how many online
  rows it draws;
- matched decomposed OTC (``strategy=otc online_fraction=matched``) draws that share uniformly from the online
  rows and the rest by eq. (3) among offline rows only; so its difference to the matched mix is what its selector
  adds at the same share.

Both read the share from ``agent{i}/online_share`` in the pair's ``metrics.csv``. :func:`matched_option` says
whether (and how) a config is matched, :func:`check_pair` refuses a pair that is missing, unfinished, not a coupled
OTC run or run with other settings, and :func:`matched_fraction` reads the share.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torchrl_otc.configs.parts import MATCHED_FRACTION, SamplerConfig
from torchrl_otc.configs.tune import TuneConfig
from torchrl_otc.trainers.run import RunFolder

__all__ = ["PAIRED_FIELDS", "check_pair", "matched_fraction", "matched_option"]

#: Fields (flat names) a matched mix must share with its paired OTC run, besides every ``algorithm.<field>``.
PAIRED_FIELDS = (
    "task",
    "dataset",
    "dataset_size",
    "dataset_path",
    "algo",
    "seed",
    "offline_updates",
    "deployments",
    "steps_per_deployment",
    "updates_per_deployment",
    "sequential_exploration",
    "eval_episodes",
    "threads",
)


def matched_option(sampler: Mapping[str, Any] | SamplerConfig) -> str | None:
    """Which option makes a sampler config *matched*: ``"mix_fraction"`` (a matched mix), ``"online_fraction"``
    (matched decomposed OTC), or ``None`` (not matched).

    Args:
        sampler: a :class:`~torchrl_otc.configs.SamplerConfig` or its nested dict (a sweep's payload).

    Examples:
        >>> matched_option({"name": "mix", "mix_fraction": "matched", "online_fraction": None})
        'mix_fraction'
        >>> matched_option(SamplerConfig(online_fraction="matched", mix_pair="runs/otc"))
        'online_fraction'
        >>> matched_option(SamplerConfig()) is None
        True
    """
    get = sampler.get if isinstance(sampler, Mapping) else lambda k: getattr(sampler, k)
    if get("name") == "mix" and get("mix_fraction") == MATCHED_FRACTION:
        return "mix_fraction"
    if get("name") == "otc" and get("online_fraction") == MATCHED_FRACTION:
        return "online_fraction"
    return None


def check_pair(config: TuneConfig) -> None:
    """Checks that the paired OTC run (``config.sampler.mix_pair``) exists, finished, is a coupled OTC run
    (``online_fraction`` unset) and has this run's settings.

    Args:
        config: the matched run's config (``mix_fraction=matched`` or ``online_fraction=matched``).

    Raises:
        ValueError: the pair has no ``config.yaml`` or no ``DONE`` marker, is not a coupled OTC run, or differs in
            one of :data:`PAIRED_FIELDS` or ``algorithm.*`` (the message names the fields and values).

    Examples:
        >>> from torchrl_otc.configs.tune import parse_overrides
        >>> cfg = parse_overrides(["strategy=mix", "mix_fraction=matched", "mix_pair=/nonexistent"])
        >>> check_pair(cfg)
        Traceback (most recent call last):
        ...
        ValueError: mix_fraction=matched: the paired OTC run /nonexistent does not exist (no config.yaml there). ...
    """
    option = matched_option(config.sampler) or "mix_fraction"
    what = "matched mix" if option == "mix_fraction" else "matched decomposed OTC run"
    pair = Path(str(config.sampler.mix_pair))
    if not (pair / "config.yaml").exists():
        raise ValueError(
            f"{option}=matched: the paired OTC run {pair} does not exist (no config.yaml there). Run the OTC "
            f"run first (a sweep orders it before the {what}), or point mix_pair= at its folder."
        )
    if not (pair / "DONE").exists():
        raise ValueError(
            f"{option}=matched: the paired OTC run {pair} has not finished (no DONE marker). Finish it "
            f"first: otc tune resume={pair}."
        )
    # flat views (shortcut names, algorithm.<field>), whichever form the pair's config.yaml has
    held = TuneConfig.from_dict(RunFolder(pair).read_config(), validate=False).to_flat()
    if held["strategy"] != "otc":
        raise ValueError(
            f"{option}=matched: {pair} is a strategy={held['strategy']} run; the pair must be an OTC run."
        )
    if held.get("online_fraction") is not None:
        raise ValueError(
            f"{option}=matched: {pair} is a decomposed OTC run (online_fraction={held['online_fraction']}); the "
            f"pair must be a coupled OTC run (online_fraction unset), whose online share OTC chose itself."
        )
    mine = config.to_flat()
    paired = [*PAIRED_FIELDS, *(k for k in mine if k.startswith("algorithm."))]
    differ = [k for k in paired if held.get(k) != mine[k]]
    if differ:
        raise ValueError(
            f"{option}=matched: the paired OTC run {pair} differs in {differ} (e.g. {differ[0]}="
            f"{held.get(differ[0])!r} there, {mine[differ[0]]!r} here): a {what} must share its pair's "
            f"task, data, seed and sizes."
        )


def matched_fraction(
    rows: list[dict[str, str]],
    agent: int,
    deployment: int,
    pair: str | Path,
    option: str = "mix_fraction",
) -> float:
    """The online share agent ``agent``'s batches had in deployment ``deployment`` of the paired OTC run.

    The mean of the run's ``agent{i}/online_share`` rows of that deployment (one row per ``checkpoint_every``
    updates, each a mean over its updates), kept inside ``[1/512, 1 - 1/512]`` so that a mix stays a mix (and
    decomposed OTC keeps an offline part).

    Args:
        rows: the pair's ``metrics.csv`` rows (:meth:`RunFolder.read_metrics
            <torchrl_otc.trainers.RunFolder.read_metrics>`).
        agent: the agent's index.
        deployment: ``k``.
        pair: the pair's folder (for the error message).
        option: the matched option (:func:`matched_option`; for the error message).

    Returns:
        The share.

    Raises:
        ValueError: the pair logged no share for that agent and deployment.

    Examples:
        >>> rows = [{"name": "agent0/online_share", "phase": "online", "deployment": "1", "value": v}
        ...         for v in ("0.25", "0.35")]
        >>> round(matched_fraction(rows, 0, 1, "runs/otc"), 6), matched_fraction(
        ...     [{**rows[0], "value": "1.0"}], 0, 1, "runs/otc") == 1 - 1 / 512
        (0.3, True)
    """
    shares = [
        float(r["value"])
        for r in rows
        if r["name"] == f"agent{agent}/online_share"
        and r["phase"] == "online"
        and int(r["deployment"]) == deployment
    ]
    if not shares:
        raise ValueError(
            f"{option}=matched: the paired OTC run {pair} has no agent{agent}/online_share "
            f"for deployment {deployment} in its metrics.csv; re-run it."
        )
    eps = 1.0 / 512
    return min(max(statistics.fmean(shares), eps), 1.0 - eps)
