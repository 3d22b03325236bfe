"""The package's import graph runs downward only, has no circles, and imports nothing inside functions but options.

The layers, bottom to top (as in TorchRL, and as ``docs/design.rst`` draws them):

====  =======================================================================
0     ``_version``, ``_random``, ``_paths``, ``stats`` (no package imports)
1     ``envs``, ``configs``, ``modules`` (independent of each other)
2     ``objectives``, ``data`` (above modules, independent of each other)
3     ``trainers``
4     ``report``
5     ``cli`` (the face: may use everything)
6     ``torchrl_otc/__init__.py`` (the exports)
====  =======================================================================

Every import is read from the source (``ast``), those inside functions included, so an import hidden in a
function to dodge a circle is caught.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "torchrl_otc"
LAYERS = {
    "_version": 0,
    "_random": 0,
    "_paths": 0,
    "stats": 0,
    "envs": 1,
    "configs": 1,
    "modules": 1,
    "objectives": 2,
    "data": 2,
    "trainers": 3,
    "report": 4,
    "cli": 5,
    "__init__": 6,
}
#: Optional dependencies, which may be imported inside the function that needs them (so that ``import
#: torchrl_otc`` works without them); each such import carries a comment naming the dependency.
OPTIONAL = {
    "h5py",
    "gymnasium_robotics",
    "vmas",
    "gymnasium",
    "mpe2",
    "pettingzoo",
    "matplotlib",
    "ray",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _group(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path, text: str | None = None) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of ``path`` (or of ``text`` placed there)."""
    module = _module_name(path)
    tree = ast.parse(path.read_text() if text is None else text)
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(sub) for sub in ast.walk(node) if sub is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [_resolve(module, node, path.name == "__init__.py")]
        else:
            continue
        found += [(name, node.lineno, id(node) in inside) for name in names if name]
    return found


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_group_has_a_layer():
    groups = {_group(_module_name(path)) for path in FILES}
    assert groups <= set(LAYERS), f"give {sorted(groups - set(LAYERS))} a layer in LAYERS"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_downward(path):
    source = _group(_module_name(path))
    wrong = []
    for name, line, _ in _imports(path):
        if not name.startswith("torchrl_otc"):
            continue
        target = _group(name)
        if target != source and LAYERS[target] >= LAYERS[source]:
            wrong.append(f"line {line}: {name} ({target}, layer {LAYERS[target]})")
    assert not wrong, (
        f"{path.name} ({source}, layer {LAYERS[source]}) imports upward or sideways: {wrong}"
    )


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_imports_inside_functions_but_optional_ones(path):
    hidden = [
        f"line {line}: {name}"
        for name, line, inner in _imports(path)
        if inner and name.split(".")[0] not in OPTIONAL
    ]
    assert not hidden, f"{path.name} imports inside functions: {hidden}"


def test_no_circles_between_files():
    """Module-level imports between the package's files form no cycle (imports inside functions are refused above)."""
    names = {_module_name(path): path for path in FILES}
    graph = {
        module: {
            target
            for name, _, inner in _imports(path)
            if not inner
            for target in (name, name.rsplit(".", 1)[0])
            if target in names and target != module
        }
        for module, path in names.items()
    }
    # A package's __init__ re-exporting its own submodules is not a circle of ideas; drop parent -> child edges.
    for module in graph:
        graph[module] = {t for t in graph[module] if not t.startswith(module + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import circles: {cycles[:5]}"


def test_the_checks_catch_what_they_should():
    """The reader sees an upward import hidden in a function, so the tests above can fail."""
    where = PACKAGE / "modules" / "distances.py"
    text = "import torch\n\n\ndef f():\n    from torchrl_otc.trainers.algorithms import make_algorithm\n"
    found = _imports(where, text)
    assert found == [("torch", 1, False), ("torchrl_otc.trainers.algorithms", 5, True)]
    assert LAYERS[_group(found[1][0])] > LAYERS[_group(_module_name(where))]
    relative = "from ..trainers import learner\n"
    assert _imports(where, relative) == [("torchrl_otc.trainers", 1, False)]
