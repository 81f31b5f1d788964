"""Structural rules that keep the engine usable headless."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QT = ("PySide6", "PyQt5", "PyQt6", "pyqtgraph", "superqt", "qtpy", "shiboken6")


def _core_files():
    return sorted((REPO / "core").rglob("*.py"))


def test_core_never_imports_qt():
    offenders = []
    for path in _core_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level > 0 and node.module and "gui" in node.module.split("."):
                names = ["prunestudio.gui"]
            if any(n.split(".")[0] in QT or n.startswith("prunestudio.gui") for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"core/ imports Qt or the GUI: {offenders}"


def test_core_does_not_print():
    offenders = []
    for path in _core_files():
        if path.parent.name == "cli":
            continue  # the command line's own output
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"print() in the library: {offenders}"


def test_no_hard_coded_cuda_device_or_layer_path():
    offenders = []
    for path in _core_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if node.value.startswith("cuda:0"):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} cuda:0")
            if isinstance(node, ast.Attribute) and ast.unparse(node).endswith("model.layers") \
                    and ast.unparse(node).count(".") >= 2:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(node)}")
    assert not offenders, offenders


def test_trust_remote_code_is_off_by_default():
    import inspect

    from prunestudio.core.config import Recipe
    from prunestudio.core.model.loading import load_model

    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False
    assert Recipe().trust_remote_code is False


def _local_imports(package: str) -> dict[str, set[str]]:
    """Module -> modules of the same package it imports, at any depth (lazy imports count too;
    imports under ``if TYPE_CHECKING:`` do not: they are annotations, never run).

    Modules are paths relative to the package root without ``.py`` (``methods/sparsegpt``;
    a package is its ``__init__``)."""
    root = REPO / package
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        name = str(rel.parent) if rel.name == "__init__" else str(rel)
        here = rel.parent.parts  # the package the module lives in
        deps: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level == 0 or id(node) in typing_only:
                continue
            base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
            if node.level - 1 > len(here):
                continue  # above the package (core -> gui is checked elsewhere)
            parts = list(base) + (node.module.split(".") if node.module else [])
            targets = ["/".join(parts + [a.name]) for a in node.names] + ["/".join(parts)]
            for t in targets:
                if (root / f"{t}.py").exists() or (root / t / "__init__.py").exists():
                    deps.add(t or ".")
        graph[name] = deps - {name}
    return graph


def test_no_import_cycles():
    """Modules import downward only: no file imports a file that (indirectly) imports it back."""
    for package in ("core", "gui"):
        graph = _local_imports(package)
        state: dict[str, int] = {}
        cycles: list[list[str]] = []

        def visit(node: str, stack: list[str]) -> None:
            state[node] = 1
            for dep in sorted(graph.get(node, ())):
                if state.get(dep) == 1:
                    cycles.append(stack[stack.index(dep):] + [dep] if dep in stack else [node, dep])
                elif dep not in state:
                    visit(dep, stack + [dep])
            state[node] = 2

        for node in sorted(graph):
            if node not in state:
                visit(node, [node])
        assert not cycles, f"{package}/: import cycles {cycles}"
