"""Writes the offline intersphinx inventories of torch, TorchRL and tensordict that ``docs/conf.py`` uses.

The docs build has no network, so Sphinx cannot download ``objects.inv`` from the three projects' sites. This
script writes one inventory per project (``torch.inv``, ``torchrl.inv``, ``tensordict.inv``, Sphinx's format
version 2) holding every object the package's docs and docstrings reference explicitly (``:class:`torchrl...```,
``:func:`torch...```, ...), resolved against the installed packages to find each object's kind, and pointed at the
page where that project's documentation has it. Run it again after adding such a reference
(``tests/test_docs.py`` fails until then):

    python docs/inventories/make_inventories.py

The URLs follow each project's layout of generated pages (``generated/<name>.html#<name>``; methods and
attributes on their class's page), with the exceptions listed in ``_SPECIAL``; they were not checked online.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

#: project -> (documentation root, page of a generated object relative to it)
PROJECTS = {
    "torch": ("https://docs.pytorch.org/docs/stable/", "generated/{page}.html#{name}"),
    "torchrl": ("https://docs.pytorch.org/rl/stable/", "reference/generated/{page}.html#{name}"),
    "tensordict": (
        "https://docs.pytorch.org/tensordict/stable/",
        "reference/generated/{page}.html#{name}",
    ),
}
#: objects whose page is not the generated one
_SPECIAL = {
    "torch.device": "tensor_attributes.html#torch.device",
    "torch.distributions": "distributions.html#module-torch.distributions",
    "torch.distributions.Normal": "distributions.html#torch.distributions.normal.Normal",
    "torch.nn.Parameter": "generated/torch.nn.parameter.Parameter.html#torch.nn.parameter.Parameter",
    "torch.no_grad": "generated/torch.no_grad.html#torch.no_grad",
    "torch.random.fork_rng": "random.html#torch.random.fork_rng",
    "torchrl.data.replay_buffers.samplers": "reference/data.html#replay-buffers",
    "torchrl.trainers.algorithms.configs": "reference/trainers.html",
}
_REFERENCE = re.compile(
    r":(class|func|meth|attr|mod|data|exc|obj):`~?((?:torchrl|tensordict|torch)\.[A-Za-z0-9_.]+)`"
)
_ROLES = {
    "class": "py:class",
    "function": "py:function",
    "method": "py:method",
    "module": "py:module",
}
_BY_ROLE = {"mod": "module", "class": "class", "meth": "method", "attr": "method"}


def references() -> dict[str, str]:
    """Every explicitly referenced object of the three projects, with the role it was referenced by."""
    found: dict[str, str] = {}
    files = [*ROOT.glob("docs/**/*.rst"), *ROOT.glob("torchrl_otc/**/*.py")]
    for file in sorted(files):
        for role, name in _REFERENCE.findall(file.read_text(encoding="utf-8")):
            found.setdefault(name, role)
    return found


def resolve(name: str) -> tuple[str, str]:
    """``(kind, page)``: the object's kind (class, function, method, module) and the object whose page holds it."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        owner = None
        for attr in parts[split:]:
            owner, obj = obj, getattr(obj, attr)
        if inspect.ismodule(obj):
            return "module", name
        if inspect.isclass(obj):
            return "class", name
        if inspect.isclass(owner):
            return "method", name.rsplit(".", 1)[0]
        return "function", name
    raise ValueError(f"{name} is not importable from the installed packages.")


def write(project: str, entries: list[tuple[str, str, str]]) -> Path:
    """Writes ``<project>.inv`` (Sphinx inventory version 2) with ``(name, role, uri)`` entries."""
    version = importlib.import_module(project).__version__
    header = (
        f"# Sphinx inventory version 2\n# Project: {project}\n# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    body = "".join(f"{name} {role} 1 {uri} -\n" for name, role, uri in sorted(entries))
    path = HERE / f"{project}.inv"
    path.write_bytes(header.encode() + zlib.compress(body.encode()))
    return path


def main() -> int:
    by_project: dict[str, list[tuple[str, str, str]]] = {p: [] for p in PROJECTS}
    for name, role in references().items():
        project = name.split(".", 1)[0]
        if (
            name in _SPECIAL
        ):  # not resolved: some need optional packages (TorchRL's configs need OmegaConf)
            kind, page = _BY_ROLE.get(role, "function"), name
        else:
            kind, page = resolve(name)
        uri = _SPECIAL.get(name) or PROJECTS[project][1].format(page=page, name=name)
        by_project[project].append((name, _ROLES[kind], uri))
    for project, entries in by_project.items():
        path = write(project, entries)
        sys.stdout.write(f"{path.relative_to(ROOT)}: {len(entries)} objects\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
