"""Results regenerate: the decomposition recipe's smoke size, re-run from scratch, gives the committed numbers.

Every run of a sweep pins one intra-op thread (``threads: 1``), so the same command on the same kind of machine
(CPU, BLAS, torch build; recorded in each run's ``meta.json``) gives the same bits. The committed copies hold every
metric row of the 16 smoke runs but the timings, one per mode: ``tests/golden/decomposition-smoke.csv`` for the
default (runs batched in lockstep) and ``decomposition-smoke-separate.csv`` for ``otc sweep --separate``, the
mode the published pages made before lockstep became the default were run in (the two modes' numbers equal to
float tolerance, not bit for bit).

When a change is *meant* to move the numbers (a fix, a new default), rewrite the copy and say why in the commit:

    OTC_WRITE_GOLDEN=1 pytest tests/test_regenerate.py
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from torchrl_otc.report import load_run
from torchrl_otc.trainers.run import compute_environment
from torchrl_otc.trainers.sweep import expand_recipe, load_recipe, run_sweep

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = {
    True: ROOT / "tests" / "golden" / "decomposition-smoke.csv",
    False: ROOT / "tests" / "golden" / "decomposition-smoke-separate.csv",
}
COLUMNS = ("run", "step", "phase", "deployment", "name", "value")
TIMINGS = ("/sample_ms", "/update_ms")


def _rows(tmp_path: Path, batched: bool) -> list[dict[str, str]]:
    recipe = load_recipe(ROOT / "examples" / "recipes" / "decomposition.yaml")
    configs = expand_recipe(recipe, "smoke", runs_root=tmp_path, cache_dir=str(tmp_path / "cache"))
    assert {c.threads for c in configs} == {1}
    rows = []
    for result in run_sweep(configs, progress=False, batched=batched):
        run = load_run(result["run_dir"])
        rows += [
            {"run": run.path.name, **{k: r[k] for k in COLUMNS[1:]}}
            for r in run.rows
            if not r["name"].endswith(TIMINGS)
        ]
    return rows


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "separate"])
def test_the_decomposition_smoke_sweep_regenerates_number_for_number(tmp_path, batched):
    rows = _rows(tmp_path, batched)
    golden_file = GOLDEN[batched]
    if os.environ.get("OTC_WRITE_GOLDEN"):
        with golden_file.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        pytest.skip(f"wrote {golden_file}")
    with golden_file.open(newline="") as fh:
        golden = list(csv.DictReader(fh))
    key = lambda r: (r["run"], int(r["step"]), r["name"])  # noqa: E731
    got, want = {key(r): r for r in rows}, {key(r): r for r in golden}
    assert sorted(got) == sorted(want), "the sweep wrote other metric rows than the committed copy"
    differ = [k for k in want if got[k]["value"] != want[k]["value"]]
    assert not differ, (
        f"{len(differ)} of {len(want)} numbers differ from {golden_file.name}, e.g. {differ[0]}: "
        f"{got[differ[0]]['value']} here, {want[differ[0]]['value']} committed. Same code, seed and thread count "
        f"give the same bits on the same kind of machine; this one: {compute_environment()}. If a change meant "
        f"to move the numbers, rewrite the copy with OTC_WRITE_GOLDEN=1 and say why in the commit."
    )
