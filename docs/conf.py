"""Sphinx configuration of the torchrl-otc documentation.

Build it (warnings are errors, as in CI) with::

    pip install -e ".[docs]"
    python -m sphinx -W -b html docs docs/_build/html

The build needs no network: intersphinx reads the inventories of torch, TorchRL and tensordict shipped in
``docs/inventories/`` (written by ``docs/inventories/make_inventories.py`` from the objects the docs reference), so
those references link to the projects' online documentation without downloading anything.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The build imports the package (and torch); one thread is enough.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torchrl_otc  # noqa: E402

# -- Project -------------------------------------------------------------------------------------------------
project = "torchrl-otc"
author = "torchrl-otc developers"
copyright = "torchrl-otc developers, MIT License"  # noqa: A001
version = release = torchrl_otc.__version__

# -- Extensions ----------------------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
]
try:  # benchmarks.rst includes benchmarks/README.md through MyST
    import myst_parser  # noqa: F401
except ImportError as err:
    raise ImportError(
        "The docs include benchmarks/README.md with myst-parser; install the docs extra: pip install -e '.[docs]'."
    ) from err
extensions.append("myst_parser")
myst_heading_anchors = 3
# Intersphinx from the shipped inventories only (the build has no network): see docs/inventories/.
_INVENTORIES = Path(__file__).resolve().parent / "inventories"
intersphinx_mapping = {
    "torch": ("https://docs.pytorch.org/docs/stable/", str(_INVENTORIES / "torch.inv")),
    "torchrl": ("https://docs.pytorch.org/rl/stable/", str(_INVENTORIES / "torchrl.inv")),
    "tensordict": (
        "https://docs.pytorch.org/tensordict/stable/",
        str(_INVENTORIES / "tensordict.inv"),
    ),
}
intersphinx_timeout = 1

source_suffix = {
    ".rst": "restructuredtext",
    ".md": "markdown",
}  # docs/results/*/report.md: `otc report` output
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
nitpicky = False
default_role = "py:obj"

# -- autodoc / autosummary / napoleon -------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_class_signature = "mixed"
# An override without a docstring (``OTCSampler.state_dict``) does not borrow TorchRL's or torch's docstring.
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_include_init_with_doc = False
napoleon_use_rtype = False
# "Attributes:" entries become attribute entries, which :attr: references can reach.
napoleon_use_ivar = False

# -- HTML ----------------------------------------------------------------------------------------------------
html_theme = "sphinx_rtd_theme"
html_title = f"torchrl-otc {release}"
html_theme_options = {"navigation_depth": 3, "collapse_navigation": False}
html_static_path: list[str] = []
# Constants whose value is too long to print on their page (the registry table is in the module docstring).
autosummary_context = {"otc_no_value": ["torchrl_otc.envs.registry.TASKS"]}
html_show_sourcelink = True


# -- Aliases: resolve re-exported names to the page that documents the object ------------------------------------
# The reference documents each object once, under the subpackage that exports it (``torchrl_otc.data.OTCSampler``),
# as TorchRL's reference does. Docstrings also name the top-level re-exports (``torchrl_otc.OTCSampler``) or the
# defining module (``torchrl_otc.data.samplers.OTCSampler``); this handler sends such references to the documented
# object instead of leaving them unlinked.
def _resolve_object(name: str):
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _missing_reference(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    candidates = [target]
    module = node.get("py:module")
    if module and not target.startswith("torchrl_otc"):
        candidates.append(f"{module}.{target}")
    domain = env.get_domain("py")
    documented = getattr(env, "_otc_documented", None)
    if documented is None:
        documented = {}
        for full, entry in domain.objects.items():
            if not full.startswith("torchrl_otc") or entry.objtype == "module":
                continue
            obj = _resolve_object(full)
            if obj is not None and (inspect.isclass(obj) or inspect.isroutine(obj)):
                documented.setdefault(id(obj), full)
        env._otc_documented = documented
    for name in candidates:
        if not name.startswith("torchrl_otc"):
            continue
        obj = _resolve_object(name)
        if obj is None:
            continue
        full = documented.get(id(obj))
        if full is None or full == name:
            continue
        return _xref(app, env, node, contnode, full)
    # A short name (``REQUIRED_KEYS``) used in a module that re-exports it, documented under its defining module.
    if module and module.startswith("torchrl_otc") and "." not in target:
        matches = [
            full
            for full in domain.objects
            if full.startswith(module + ".") and full.rsplit(".", 1)[-1] == target
        ]
        if len(matches) == 1:
            return _xref(app, env, node, contnode, matches[0])
    return None


def _xref(app, env, node, contnode, full):
    new = node.deepcopy()
    new["reftarget"] = full
    domain = env.get_domain("py")
    return domain.resolve_xref(
        env, node.get("refdoc", ""), app.builder, node.get("reftype"), full, new, contnode
    )


def _env_purge(app, env, docname):
    if hasattr(env, "_otc_documented"):
        del env._otc_documented


# -- Constants: no docstring inherited from their type ---------------------------------------------------------
# A module-level dict or tuple has no docstring of its own; autodoc would show ``dict.__doc__`` instead (and its RST
# breaks ``-W``). Constants are documented by their ``#:`` comment where the defining module has one.
def _drop_type_docstrings(app, what, name, obj, options, lines):
    if what not in ("data", "attribute") or inspect.isclass(obj) or inspect.isroutine(obj):
        return
    type_doc = type(obj).__doc__
    if lines and type_doc and "\n".join(lines).strip() == inspect.cleandoc(type_doc).strip():
        lines[:] = []


# -- Class signatures -----------------------------------------------------------------------------------------
# TorchRL's Sampler and EnvBase (and typing.Protocol) define ``__new__(cls, *args, **kwargs)``, which autodoc would
# show as the class signature; show the class's own ``__init__`` instead (none for a protocol).
def _class_signature(app, what, name, obj, options, signature, return_annotation):
    if what != "class" or signature not in ("(*args, **kwargs)", "(*args: Any, **kwargs: Any)"):
        return None
    init = next(
        (klass.__dict__["__init__"] for klass in obj.__mro__ if "__init__" in klass.__dict__), None
    )
    owner = getattr(init, "__module__", "") or ""
    if init is None or not owner.startswith("torchrl_otc"):
        return "", return_annotation
    from sphinx.util.inspect import signature, stringify_signature

    sig = signature(init, bound_method=True)  # annotations evaluated, ``self`` dropped
    return stringify_signature(
        sig, show_return_annotation=False, unqualified_typehints=True
    ), return_annotation


def setup(app):
    app.connect("autodoc-process-signature", _class_signature)
    app.connect("missing-reference", _missing_reference)
    app.connect("env-purge-doc", _env_purge)
    app.connect("autodoc-process-docstring", _drop_type_docstrings)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
