"""The documentation builds with warnings as errors (the command of README.md and ``.ci/run``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx", reason="the docs need the docs extra: pip install -e '.[docs]'")
    pytest.importorskip(
        "sphinx_rtd_theme", reason="the docs need the docs extra: pip install -e '.[docs]'"
    )
    out = tmp_path / "html"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            "docs",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    # Every group of the reference and every page of the guide was written, with the objects in it.
    for page in (
        "index.html",
        "theory.html",
        "metrics.html",
        "benchmarks.html",
        "results.html",
        "tutorials/otc_sampler_in_your_buffer.html",
        "tutorials/offline_to_online_navigation.html",
        "tutorials/bring_your_own_dataset.html",
        "reference/data.html",
        "reference/modules.html",
        "reference/objectives.html",
        "reference/envs.html",
        "reference/trainers.html",
        "reference/configs.html",
    ):
        assert (out / page).exists(), page
    sampler_page = (
        out / "reference" / "generated" / "torchrl_otc.data.OTCSampler.html"
    ).read_text()
    assert "adapt_alpha" in sampler_page
    assert "make_buffers" in (out / "tutorials" / "otc_sampler_in_your_buffer.html").read_text()


def _inventory_names(path: Path) -> set[str]:
    import zlib

    data = path.read_bytes()
    body = data.split(b"\n", 4)[4]  # four header lines, then the zlib-compressed entries
    return {line.split(" ", 1)[0] for line in zlib.decompress(body).decode().splitlines() if line}


def test_every_referenced_torch_torchrl_tensordict_object_is_in_the_shipped_inventories():
    # intersphinx reads docs/inventories/*.inv (no network); a new reference needs
    # `python docs/inventories/make_inventories.py` or it renders as plain text
    sys.path.insert(0, str(ROOT / "docs" / "inventories"))
    try:
        import make_inventories
    finally:
        sys.path.pop(0)
    known = set().union(
        *(
            _inventory_names(ROOT / "docs" / "inventories" / f"{p}.inv")
            for p in make_inventories.PROJECTS
        )
    )
    missing = sorted(set(make_inventories.references()) - known)
    assert not missing, (
        f"run python docs/inventories/make_inventories.py; not in the inventories: {missing}"
    )
    assert "torchrl.data.ReplayBuffer" in known and "torch.nn.Module" in known
