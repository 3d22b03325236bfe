"""Generates the patches of upstream/patches/ that are built from this package's sources.

    python upstream/make_patches.py            # (re)writes every patch of PATCHES
    python upstream/make_patches.py --check    # exit 1, naming the patch, if a committed one differs

Standard library only, and no TorchRL checkout is needed: a patch is assembled from

* modules *generated* from the package (:class:`GeneratedModule`): the top-level definitions a TorchRL module
  needs (and the ones they use, found with :mod:`ast`) are copied from the package source as they are. Only three
  things change: the module docstring and the licence header are TorchRL's, the import lines are rewritten
  (``torchrl_otc.*`` to the TorchRL modules the patch creates, names of ``torchrl.objectives`` to the submodules
  that define them so that the package ``__init__`` does not import itself, unused names dropped), and every
  dotted path ``torchrl_otc.X`` in the copied text (docstring cross-references and ``>>>`` import lines) is
  replaced by the same table :data:`MODULE_MAP`. :func:`generated_module` verifies that each copied definition
  is the package's text under that replacement and that nothing names ``torchrl_otc`` any more;
* a package module's ``TorchRL section`` (between two marker comments) taken whole as a TorchRL module
  (:func:`torchrl_section`: the MaMuJoCo wrapper/env pair of ``torchrl_otc/envs/mamujoco.py``, which the package
  runs itself);
* TorchRL-only new files kept under ``upstream/src/`` at their TorchRL path (tests, sota scripts);
* ``-U0`` hunks that edit existing TorchRL files, kept as ``upstream/src/<path>.diff`` (``git diff -U0`` against
  the commit of ``upstream/patches/BASE``).

Each patch of :data:`PATCHES` is the list of its files; new files become ``new file mode 100644`` diffs, and the
whole is sorted by path, as ``git diff`` writes it. The result applies with ``git apply --unidiff-zero``
(``upstream/check.sh``). Another patch is one more entry in :data:`PATCHES`.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = HERE / "src"
PATCH_DIR = HERE / "patches"

LICENSE_HEADER = """\
# Copyright (c) Meta Platforms, Inc. and affiliates.
#
# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""

#: Where each package module lands in TorchRL (longest prefix first when applied).
MODULE_MAP: dict[str, str] = {
    "torchrl_otc.objectives.bcq": "torchrl.objectives.bcq",
    "torchrl_otc.objectives.awac": "torchrl.objectives.awac",
    "torchrl_otc.objectives.utils": "torchrl.objectives._twin_critic",
    "torchrl_otc.modules.models.vae": "torchrl.modules.models.vae",
    "torchrl_otc.objectives": "torchrl.objectives",
}

#: Names that generated modules import from a TorchRL package ``__init__`` but must take from the defining
#: submodule (the generated modules are imported by that ``__init__``).
IMPORT_FROM_SUBMODULE: dict[tuple[str, str], str] = {
    ("torchrl.objectives", "LossModule"): "torchrl.objectives.common",
    ("torchrl.objectives", "SoftUpdate"): "torchrl.objectives.utils",
}

LINE_LENGTH = 100  # the package's ruff line length: the copied code keeps its formatting


def map_paths(text: str) -> str:
    """Replaces every dotted ``torchrl_otc.*`` path of :data:`MODULE_MAP` (longest first)."""
    for old in sorted(MODULE_MAP, key=len, reverse=True):
        text = text.replace(old, MODULE_MAP[old])
    return text


def map_module(module: str) -> str:
    if module in MODULE_MAP:
        return MODULE_MAP[module]
    if module == "torchrl_otc" or module.startswith("torchrl_otc."):
        raise ValueError(f"{module} has no TorchRL counterpart in MODULE_MAP")
    return module


# --------------------------------------------------------------------------------- generated modules
@dataclass
class GeneratedModule:
    """A TorchRL module made of top-level definitions of one package module.

    Attributes:
        source: the package file, relative to the repository root.
        docstring: the TorchRL module docstring.
        roots: the definitions to take; ``None`` takes all of them. The definitions they use are added.
        extra_roots_from: generated modules (TorchRL paths) whose imports from this one add roots.
    """

    source: str
    docstring: str
    roots: list[str] | None = None
    extra_roots_from: list[str] = field(default_factory=list)


@dataclass
class _Stmt:
    node: ast.stmt
    text: str  # the statement with the comments and blank lines that precede it
    defines: set[str]
    uses: set[str]


def _statements(source: str) -> tuple[ast.Module, list[_Stmt]]:
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    out: list[_Stmt] = []
    previous_end = 0
    for node in tree.body:
        end = node.end_lineno
        text = "".join(lines[previous_end:end])
        previous_end = end
        defines: set[str] = set()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defines.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                defines |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            defines |= {(a.asname or a.name).split(".")[0] for a in node.names}
        uses = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        out.append(_Stmt(node, text, defines, uses - defines))
    return tree, out


def _is_docstring(stmt: _Stmt) -> bool:
    node = stmt.node
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _render_import(module: str, names: list[tuple[str, str | None]]) -> str:
    if not names:
        return f"import {module}\n"
    parts = [name if alias is None else f"{name} as {alias}" for name, alias in names]
    line = f"from {module} import {', '.join(parts)}"
    if len(line) <= LINE_LENGTH:
        return line + "\n"
    return f"from {module} import (\n" + "".join(f"    {p},\n" for p in parts) + ")\n"


_STDLIB = set(sys.stdlib_module_names)


def _import_block(imports: list[tuple[str, list[tuple[str, str | None]]]]) -> str:
    """``from __future__``, stdlib, third-party and torchrl imports, one blank line between the groups."""
    groups: dict[int, list[tuple[str, list[tuple[str, str | None]]]]] = {0: [], 1: [], 2: [], 3: []}
    for module, names in imports:
        top = module.split(".")[0]
        if module == "__future__":
            group = 0
        elif top in _STDLIB:
            group = 1
        elif top == "torchrl":
            group = 3
        else:
            group = 2
        groups[group].append((module, names))
    blocks = []
    for group in range(4):
        merged: dict[tuple[bool, str], list[tuple[str, str | None]]] = {}
        for module, names in groups[group]:
            key = (bool(names), module)  # plain imports (no names) first, as isort writes them
            merged.setdefault(key, [])
            merged[key] += [n for n in names if n not in merged[key]]
        if merged:
            keys = sorted(merged, key=lambda k: (k[0], k[1].lower()))
            blocks.append("".join(_render_import(k[1], merged[k]) for k in keys))
    return "\n".join(blocks)


def _imported_names(text: str, module: str) -> set[str]:
    """Names that the Python source ``text`` imports from ``module``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.module == module:
            names |= {a.name for a in node.names}
    return names


def generated_module(
    spec: GeneratedModule, extra_roots: set[str] = frozenset()
) -> tuple[str, set[str]]:
    """The TorchRL module's text and the names it defines.

    Raises:
        RuntimeError: a copied definition differs from the package's text (beyond :func:`map_paths`), or
            the result still names ``torchrl_otc``.
    """
    source = (ROOT / spec.source).read_text()
    _, stmts = _statements(source)
    definitions = {
        name: i
        for i, s in enumerate(stmts)
        if not isinstance(s.node, ast.Import | ast.ImportFrom)
        for name in s.defines
    }
    if spec.roots is None:
        wanted = {name for name in definitions if name != "__all__"}
    else:
        wanted = set(spec.roots)
    wanted |= set(extra_roots)
    unknown = wanted - set(definitions)
    if unknown:
        raise RuntimeError(f"{spec.source} defines no {sorted(unknown)}")
    keep: set[int] = set()
    todo = [definitions[name] for name in wanted]
    while todo:
        i = todo.pop()
        if i in keep:
            continue
        keep.add(i)
        todo += [definitions[n] for n in stmts[i].uses if n in definitions and n != "__all__"]
    defined = {name for i in keep for name in stmts[i].defines}
    used = set().union(*(stmts[i].uses for i in keep))

    imports: list[tuple[str, list[tuple[str, str | None]]]] = []
    body: list[str] = []
    for i, stmt in enumerate(stmts):
        node = stmt.node
        if _is_docstring(stmt) and i == 0:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname is not None:
                    raise RuntimeError(
                        f"{spec.source}: 'import {alias.name} as ...' is not handled"
                    )
                if alias.name.split(".")[0] in used:
                    imports.append((map_module(alias.name), []))
            continue
        if isinstance(node, ast.ImportFrom):
            module = map_module(node.module or "")
            for alias in node.names:
                if module == "__future__" or (alias.asname or alias.name) in used:
                    target = IMPORT_FROM_SUBMODULE.get((module, alias.name), module)
                    imports.append((target, [(alias.name, alias.asname)]))
            continue
        if isinstance(node, ast.Assign) and stmt.defines == {"__all__"}:
            public = [
                elt.value
                for elt in node.value.elts
                if isinstance(elt, ast.Constant) and elt.value in defined
            ]
            one_line = "__all__ = [" + ", ".join(f'"{name}"' for name in public) + "]"
            body.append(
                one_line + "\n"
                if len(one_line) <= LINE_LENGTH
                else "__all__ = [\n" + "".join(f'    "{n}",\n' for n in public) + "]\n"
            )
            continue
        if i in keep:  # verbatim, with the comments and blank lines before it
            body.append(map_paths(stmt.text))
    header_imports = _import_block(imports)
    text = (
        LICENSE_HEADER
        + '"""'
        + spec.docstring.strip("\n")
        + '\n"""\n\n'
        + header_imports
        + "\n"
        + "".join(body).lstrip("\n")
    )
    _verify(spec, stmts, keep, text)
    return text, defined


def _verify(spec: GeneratedModule, stmts: list[_Stmt], keep: set[int], text: str) -> None:
    """Each kept definition is the package's text up to :func:`map_paths`; nothing names torchrl_otc."""
    if "torchrl_otc" in text:
        line = next(li for li in text.splitlines() if "torchrl_otc" in li)
        raise RuntimeError(f"generated from {spec.source}, still names torchrl_otc: {line!r}")
    _, new_stmts = _statements(text)
    new_defs = {
        name: s.text
        for s in new_stmts
        if isinstance(s.node, ast.ClassDef | ast.FunctionDef)
        for name in s.defines
    }
    for i in keep:
        stmt = stmts[i]
        if not isinstance(stmt.node, ast.ClassDef | ast.FunctionDef):
            continue
        ours = map_paths(stmt.text).strip("\n")
        theirs = new_defs[stmt.node.name].strip("\n")
        if ours != theirs:
            diff = "".join(
                difflib.unified_diff(ours.splitlines(True), theirs.splitlines(True), n=0)
            )
            raise RuntimeError(f"{stmt.node.name} differs from {spec.source}:\n{diff}")


def _blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def new_file_diff(path: str, content: str) -> str:
    """A ``git diff`` of a new file (mode 100644)."""
    if content and not content.endswith("\n"):
        raise ValueError(f"{path}: a new file must end with a newline")
    lines = content.splitlines(keepends=True)
    return (
        f"diff --git a/{path} b/{path}\n"
        "new file mode 100644\n"
        f"index 0000000000..{_blob_id(content.encode())[:10]}\n"
        "--- /dev/null\n"
        f"+++ b/{path}\n"
        f"@@ -0,0 +1,{len(lines)} @@\n" + "".join("+" + line for line in lines)
    )


def _fragment(path: str) -> str:
    """The ``-U0`` diff of an existing TorchRL file, kept as ``upstream/src/<path>.diff``."""
    text = (SRC / f"{path}.diff").read_text()
    if not text.startswith(f"diff --git a/{path} b/{path}\n"):
        raise RuntimeError(f"upstream/src/{path}.diff is not a git diff of {path}")
    return text


# ------------------------------------------------------------------------------- the patches
BCQ_DOC = """\
Batch-Constrained deep Q-learning (BCQ) for continuous actions.

Fujimoto, Meger and Precup (2019), "Off-Policy Deep Reinforcement Learning without Exploration" (ICML),
https://arxiv.org/abs/1812.02900, Algorithm 1.
"""

AWAC_DOC = """\
Advantage-Weighted Actor-Critic (AWAC).

Nair, Dalal, Gupta and Levine (2020), "Accelerating Online Reinforcement Learning with Offline Datasets",
https://arxiv.org/abs/2006.09359, Algorithm 1 and eq. (7)-(8).
"""

TWIN_CRITIC_DOC = """\
What :class:`~torchrl.objectives.BCQLoss` and :class:`~torchrl.objectives.AWACLoss` share.

A base class for losses with stacked twin critics and their target copies whose critic target is TD(0), TD(1)
or TD(lambda) over next-state values the loss computes itself, and fast paths around the TensorDict calls of
their networks: a batched matmul per layer for an ensemble of :class:`~torchrl.modules.MLP` critics
(:class:`StackedMLP`), and direct module calls when the parameters are the module's own. The fast paths give
the same values as ``vmap`` over a :class:`~tensordict.nn.TensorDictModule` (the tests compare them).
"""

VAE_DOC = """\
Conditional variational auto-encoders (Kingma and Welling 2013, https://arxiv.org/abs/1312.6114).

:class:`ActionVAE` is BCQ's state-conditioned generative model of the behaviour policy's actions (Fujimoto,
Meger and Precup 2019, https://arxiv.org/abs/1812.02900, section 4), used by :class:`~torchrl.objectives.BCQLoss`.
"""

#: The generated TorchRL modules of the BCQ/AWAC patch, by TorchRL path.
LOSS_MODULES: dict[str, GeneratedModule] = {
    "torchrl/objectives/bcq.py": GeneratedModule("torchrl_otc/objectives/bcq.py", BCQ_DOC),
    "torchrl/objectives/awac.py": GeneratedModule("torchrl_otc/objectives/awac.py", AWAC_DOC),
    "torchrl/objectives/_twin_critic.py": GeneratedModule(
        "torchrl_otc/objectives/utils.py",
        TWIN_CRITIC_DOC,
        roots=[],
        extra_roots_from=["torchrl/objectives/bcq.py", "torchrl/objectives/awac.py"],
    ),
    "torchrl/modules/models/vae.py": GeneratedModule(
        "torchrl_otc/modules/models/vae.py",
        VAE_DOC,
        roots=["ActionVAE"],
        extra_roots_from=["torchrl/objectives/bcq.py", "torchrl/objectives/awac.py"],
    ),
}


def generate_modules(modules: dict[str, GeneratedModule]) -> dict[str, str]:
    """The text of each generated module; modules are built after those they take roots from."""
    texts: dict[str, str] = {}
    pending = dict(modules)
    while pending:
        ready = [p for p, s in pending.items() if all(d in texts for d in s.extra_roots_from)]
        if not ready:
            raise RuntimeError(f"circular extra_roots_from among {sorted(pending)}")
        for path in ready:
            spec = pending.pop(path)
            module = path[: -len(".py")].replace("/", ".")
            extra: set[str] = set()
            for dependant in spec.extra_roots_from:
                extra |= _imported_names(texts[dependant], module)
            texts[path], _ = generated_module(spec, extra)
    return texts


def bcq_awac_losses() -> dict[str, str]:
    """``BCQLoss`` and ``AWACLoss`` in ``torchrl/objectives``, with tests, docs and sota scripts."""
    files = {
        path: new_file_diff(path, text) for path, text in generate_modules(LOSS_MODULES).items()
    }
    for new in [
        "test/objectives/test_awac.py",
        "test/objectives/test_bcq.py",
        "sota-implementations/awac/awac.py",
        "sota-implementations/awac/config.yaml",
        "sota-implementations/awac/utils.py",
        "sota-implementations/bcq/bcq.py",
        "sota-implementations/bcq/config.yaml",
        "sota-implementations/bcq/utils.py",
    ]:
        files[new] = new_file_diff(new, (SRC / new).read_text())
    for edited in [
        "torchrl/objectives/__init__.py",
        "torchrl/modules/__init__.py",
        "torchrl/modules/models/__init__.py",
        "docs/source/reference/objectives_offline.rst",
        "docs/source/reference/modules_models.rst",
        ".github/unittest/linux_sota/scripts/test_sota.py",
    ]:
        files[edited] = _fragment(edited)
    return files


#: The package module whose ``TorchRL section`` is TorchRL's ``torchrl/envs/libs/mamujoco.py``.
MAMUJOCO_SOURCE = "torchrl_otc/envs/mamujoco.py"
SECTION_BEGIN, SECTION_END = "# ---- TorchRL section begins", "# ---- TorchRL section ends"
#: Package names and module paths in that section, rewritten to TorchRL's (regular expression, replacement): the
#: package's scenario-building env is ``_MaMuJoCoEnv`` (its public ``MaMuJoCoEnv`` adds the dataset layout).
MAMUJOCO_RENAMES = [
    (r"\btorchrl_otc\.envs\.mamujoco\b", "torchrl.envs.libs.mamujoco"),
    (r"(?<![\w.])_MaMuJoCoEnv\b", "MaMuJoCoEnv"),
]


def torchrl_section(text: str) -> str:
    """The lines between the ``TorchRL section`` comments of a package module, as a TorchRL module (licence
    header, ``from __future__ import annotations``, :data:`MAMUJOCO_RENAMES` applied)."""
    lines = text.splitlines(keepends=True)
    begin = [i for i, line in enumerate(lines) if line.startswith(SECTION_BEGIN)]
    end = [i for i, line in enumerate(lines) if line.startswith(SECTION_END)]
    if len(begin) != 1 or len(end) != 1 or begin[0] > end[0]:
        raise RuntimeError(
            f"expected one {SECTION_BEGIN!r} line and, after it, one {SECTION_END!r} line"
        )
    body = "".join(lines[begin[0] + 1 : end[0]]).strip("\n") + "\n"
    for pattern, replacement in MAMUJOCO_RENAMES:
        body = re.sub(pattern, replacement, body)
    if "torchrl_otc" in body:
        raise RuntimeError("the TorchRL section still names torchrl_otc after the renames")
    return LICENSE_HEADER + "from __future__ import annotations\n\n" + body


def mamujoco_env() -> dict[str, str]:
    """``MaMuJoCoWrapper`` / ``MaMuJoCoEnv`` in ``torchrl/envs/libs``, with tests, exports and docs."""
    library = "torchrl/envs/libs/mamujoco.py"
    files = {library: new_file_diff(library, torchrl_section((ROOT / MAMUJOCO_SOURCE).read_text()))}
    test = "test/libs/test_mamujoco.py"
    files[test] = new_file_diff(test, (SRC / test).read_text())
    for edited in [
        "torchrl/envs/__init__.py",
        "torchrl/envs/libs/__init__.py",
        "docs/source/reference/envs_libraries.rst",
    ]:
        files[edited] = _fragment(edited)
    return files


#: Every patch this script writes, by file name in upstream/patches/. The one place to add a patch.
PATCHES = {
    "bcq-awac-losses.patch": bcq_awac_losses,
    "mamujoco-env.patch": mamujoco_env,
}


def render(files: dict[str, str]) -> str:
    """The patch: the files' diffs sorted by path, as ``git diff`` orders them."""
    return "".join(files[path] for path in sorted(files))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed patches; write nothing"
    )
    parser.add_argument("patches", nargs="*", help=f"patch names (default: all of {list(PATCHES)})")
    args = parser.parse_args(argv)
    names = args.patches or list(PATCHES)
    unknown = [n for n in names if n not in PATCHES]
    if unknown:
        parser.error(f"unknown patch {unknown}; known: {list(PATCHES)}")
    stale = []
    for name in names:
        text = render(PATCHES[name]())
        path = PATCH_DIR / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
                sys.stderr.write(
                    f"upstream/patches/{name} differs from what upstream/make_patches.py generates: "
                    f"run `python upstream/make_patches.py {name}`\n"
                )
        else:
            path.write_text(text)
            sys.stdout.write(f"wrote upstream/patches/{name}\n")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
