"""Imports go one way: a module of the library imports only modules of its own layer or of layers below it.

The order is written out in docs/architecture.md. Config modules (``xmc/config.py``, ``xmc/experiment.py`` and
each package's ``config.py``) are plain dataclasses at the bottom: anything may import them, and they import
nothing but other config modules. Imports inside functions count as much as module-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

#: Layers from the bottom up; a module may import its own layer and those listed before it.
LAYERS = [
    ("config", ["xmc.config", "xmc.experiment", "xmc.*.config"]),
    ("foundation", ["xmc.io", "xmc.storage", "xmc.checkpoint", "xmc.distributed", "xmc.memory",
                    "xmc.cluster"]),
    ("data", ["xmc.data"]),
    ("components", ["xmc.models", "xmc.losses", "xmc.mining"]),
    ("scoring", ["xmc.scoring"]),
    ("evaluation", ["xmc.evaluation"]),
    ("index", ["xmc.index"]),
    ("training", ["xmc.training"]),
    ("tuning", ["xmc.tuning"]),
    ("entry points", ["xmc", "xmc.cli"]),
]


def layer_of(module: str) -> int:
    """The layer index of a dotted module name of the library (the most specific pattern wins)."""
    parts = module.split(".")
    best, best_length = None, -1
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            pieces = pattern.split(".")
            if pieces[-1] == "config" and len(parts) >= 2 and parts[-1] == "config" and \
                    (pieces[1:-1] == ["*"] or parts == pieces):
                return 0
            if parts[:len(pieces)] == pieces and len(pieces) > best_length:
                best, best_length = index, len(pieces)
    if best is None:
        raise ValueError(f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md")
    return best


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Every ``xmc`` module ``module`` imports, absolute or relative, at any depth of the code (``known``: the
    library's modules, to tell a module imported from its package from a name defined in the package)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            # `from xmc import checkpoint` imports the module xmc.checkpoint; `from xmc import Predictor`, xmc
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                         for alias in node.names)
    return {name for name in found if name == "xmc" or name.startswith("xmc.")}


def violations(root: Path) -> list[str]:
    """``module -> imported`` for every import that goes up a layer (or out of the config layer)."""
    known = {module_name(path, root) for path in root.rglob("*.py")}
    found = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        mine = layer_of(module)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for imported in sorted(imported_modules(tree, module, path.name == "__init__.py", known)):
            theirs = layer_of(imported)
            if theirs > mine or (mine == 0 and theirs != 0):
                found.append(f"{module} ({LAYERS[mine][0]}) -> {imported} ({LAYERS[theirs][0]})")
    return found


def test_the_library_imports_only_downwards():
    assert violations(REPO / "platform") == []


def test_serving_and_evaluation_never_import_training():
    root = REPO / "platform"
    known = {module_name(path, root) for path in root.rglob("*.py")}
    offenders = []
    for folder in (REPO / "platform" / "xmc" / "index", REPO / "platform" / "xmc" / "evaluation",
                   REPO / "serve"):
        for path in folder.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names = imported_modules(tree, "serve.app" if folder.name == "serve" else "xmc.x", False, known)
            offenders += [f"{path.relative_to(REPO)}: {name}" for name in names
                          if name.startswith("xmc.training")]
    assert offenders == []


@pytest.mark.parametrize("module, source, expected", [
    ("xmc/models/bad.py", "from xmc.training.trainer import Trainer\n",
     "xmc.models.bad (components) -> xmc.training.trainer (training)"),
    ("xmc/data/bad.py", "def f():\n    from ..evaluation import metrics\n",
     "xmc.data.bad (data) -> xmc.evaluation.metrics (evaluation)"),
    ("xmc/index/config.py", "import xmc.index.bundle\n",
     "xmc.index.config (config) -> xmc.index.bundle (index)"),
])
def test_a_planted_upward_import_is_caught(tmp_path, module, source, expected):
    root = tmp_path / "platform"
    for path in (REPO / "platform").rglob("*.py"):
        target = root / path.relative_to(REPO / "platform")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (root / module).write_text(source, encoding="utf-8")
    assert violations(root) == [expected]


def test_every_module_has_a_layer():
    root = REPO / "platform"
    for path in root.rglob("*.py"):
        layer_of(module_name(path, root))
