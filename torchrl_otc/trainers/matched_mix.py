"""The matched mix (``strategy=mix mix_fraction=matched``): a fixed-share sampler paired with a finished OTC run.

A matched mix draws, per agent and deployment, the online share that its paired OTC run's batches had
(``agent{i}/online_share`` in that run's ``metrics.csv``), uniformly; so a return difference between the two runs is
what OTC's choice of rows adds beyond how many online rows it draws. :func:`check_pair` refuses a pair that is
missing, unfinished, not an OTC run or run with other settings; :func:`matched_fraction` reads the share.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from torchrl_otc.configs.tune import TuneConfig
from torchrl_otc.trainers.run import RunFolder

__all__ = ["PAIRED_FIELDS", "check_pair", "matched_fraction"]

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


def check_pair(config: TuneConfig) -> None:
    """Checks that the paired OTC run (``config.sampler.mix_pair``) exists, finished, and has this run's settings.

    Args:
        config: the matched mix's config.

    Raises:
        ValueError: the pair has no ``config.yaml`` or no ``DONE`` marker, is not an OTC run, or differs in one of
            :data:`PAIRED_FIELDS` or ``algorithm.*`` (the message names the fields and values).

    Examples:
        >>> from torchrl_otc.configs.tune import parse_overrides
        >>> cfg = parse_overrides(["strategy=mix", "mix_fraction=matched", "mix_pair=/nonexistent"])
        >>> check_pair(cfg)
        Traceback (most recent call last):
        ...
        ValueError: mix_fraction=matched: the paired OTC run /nonexistent does not exist (no config.yaml there). ...
    """
    pair = Path(str(config.sampler.mix_pair))
    if not (pair / "config.yaml").exists():
        raise ValueError(
            f"mix_fraction=matched: the paired OTC run {pair} does not exist (no config.yaml there). Run the OTC "
            f"run first (a sweep orders it before the matched mix), or point mix_pair= at its folder."
        )
    if not (pair / "DONE").exists():
        raise ValueError(
            f"mix_fraction=matched: the paired OTC run {pair} has not finished (no DONE marker). Finish it "
            f"first: otc tune resume={pair}."
        )
    # flat views (shortcut names, algorithm.<field>), whichever form the pair's config.yaml has
    held = TuneConfig.from_dict(RunFolder(pair).read_config(), validate=False).to_flat()
    if held["strategy"] != "otc":
        raise ValueError(
            f"mix_fraction=matched: {pair} is a strategy={held['strategy']} run; the pair must be an OTC run."
        )
    mine = config.to_flat()
    paired = [*PAIRED_FIELDS, *(k for k in mine if k.startswith("algorithm."))]
    differ = [k for k in paired if held.get(k) != mine[k]]
    if differ:
        raise ValueError(
            f"mix_fraction=matched: the paired OTC run {pair} differs in {differ} (e.g. {differ[0]}="
            f"{held.get(differ[0])!r} there, {mine[differ[0]]!r} here): a matched mix must share its pair's "
            f"task, data, seed and sizes."
        )


def matched_fraction(
    rows: list[dict[str, str]], agent: int, deployment: int, pair: str | Path
) -> float:
    """The online share agent ``agent``'s batches had in deployment ``deployment`` of the paired OTC run.

    The mean of the run's ``agent{i}/online_share`` rows of that deployment (one row per ``checkpoint_every``
    updates, each a mean over its updates), kept inside ``[1/512, 1 - 1/512]`` so that a mix stays a mix.

    Args:
        rows: the pair's ``metrics.csv`` rows (:meth:`RunFolder.read_metrics
            <torchrl_otc.trainers.RunFolder.read_metrics>`).
        agent: the agent's index.
        deployment: ``k``.
        pair: the pair's folder (for the error message).

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
            f"mix_fraction=matched: the paired OTC run {pair} has no agent{agent}/online_share "
            f"for deployment {deployment} in its metrics.csv; re-run it."
        )
    eps = 1.0 / 512
    return min(max(statistics.fmean(shares), eps), 1.0 - eps)
