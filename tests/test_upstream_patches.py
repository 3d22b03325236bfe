"""The TorchRL patches generated from the package (upstream/make_patches.py) are up to date.

``upstream/patches/bcq-awac-losses.patch`` carries the package's ``BCQLoss`` and ``AWACLoss`` (and the helpers they
use) as TorchRL modules, generated from ``torchrl_otc``; ``upstream/patches/mamujoco-env.patch`` carries the TorchRL
section of ``torchrl_otc/envs/mamujoco.py``. A change of those package sources must be followed by

    python upstream/make_patches.py

and the regenerated patch committed; these tests fail otherwise. They need no TorchRL checkout.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "upstream" / "make_patches.py"


def test_committed_patches_are_what_the_generator_writes():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr


@pytest.fixture
def make_patches():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import make_patches

        yield make_patches
    finally:
        sys.path.remove(str(SCRIPT.parent))
        sys.modules.pop("make_patches", None)


def test_check_names_a_stale_patch(make_patches, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(make_patches, "PATCH_DIR", tmp_path)
    name = next(iter(make_patches.PATCHES))
    assert make_patches.main(["--check"]) == 1  # no committed patch at all
    assert name in capsys.readouterr().err
    assert make_patches.main([]) == 0  # writes them
    assert make_patches.main(["--check"]) == 0
    (tmp_path / name).write_text((tmp_path / name).read_text().replace("+", "-", 1))
    assert make_patches.main(["--check"]) == 1
    assert name in capsys.readouterr().err


def test_generated_modules_keep_the_package_code(make_patches):
    # every class and function copied to TorchRL is the package's text up to the module paths, and none of
    # the generated modules imports (or names) torchrl_otc
    texts = make_patches.generate_modules(make_patches.LOSS_MODULES)
    assert set(texts) >= {"torchrl/objectives/bcq.py", "torchrl/objectives/awac.py"}
    for text in texts.values():
        assert "torchrl_otc" not in text
        compile(text, "generated", "exec")
    for name in ("class BCQLoss(TwinCriticLoss):", "class AWACLoss(TwinCriticLoss):"):
        assert sum(name in text for text in texts.values()) == 1


def test_a_package_change_not_regenerated_fails_the_check(
    make_patches, tmp_path, monkeypatch, capsys
):
    source = tmp_path / "torchrl_otc" / "objectives" / "awac.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        (ROOT / "torchrl_otc/objectives/awac.py")
        .read_text()
        .replace("max_weight: float = 100.0", "max_weight: float = 50.0")
    )
    for rel in (
        "torchrl_otc/objectives/bcq.py",
        "torchrl_otc/objectives/utils.py",
        "torchrl_otc/modules/models/vae.py",
        "torchrl_otc/envs/mamujoco.py",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    monkeypatch.setattr(make_patches, "ROOT", tmp_path)
    texts = make_patches.generate_modules(make_patches.LOSS_MODULES)
    assert "max_weight: float = 50.0" in texts["torchrl/objectives/awac.py"]
    assert make_patches.main(["--check"]) == 1
    assert "bcq-awac-losses.patch" in capsys.readouterr().err


def test_the_mamujoco_library_is_the_packages_torchrl_section(make_patches):
    text = make_patches.torchrl_section((ROOT / make_patches.MAMUJOCO_SOURCE).read_text())
    assert "torchrl_otc" not in text
    assert "class MaMuJoCoWrapper(_EnvWrapper):" in text
    assert "class MaMuJoCoEnv(MaMuJoCoWrapper):" in text  # the package's _MaMuJoCoEnv, renamed
    assert (
        "class _MaMuJoCoEnv" not in text
        and "layout" not in text.split("class MaMuJoCoEnv")[1][:200]
    )
    compile(text, "torchrl/envs/libs/mamujoco.py", "exec")
    with pytest.raises(RuntimeError, match="TorchRL section"):
        make_patches.torchrl_section("no markers here\n")
