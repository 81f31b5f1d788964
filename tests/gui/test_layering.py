"""The engine never imports Qt; the GUI reaches the engine only through prunestudio.core."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QT = ("PySide6", "PyQt5", "PyQt6", "PySide2", "pyqtgraph", "shiboken6", "qtpy")


def _imports(path: Path, module_level: bool = False) -> list[str]:
    """Imported module names; ``module_level``: only those run when the module is imported."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = ast.walk(tree)
    if module_level:
        nodes = [n for top in tree.body if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 for n in ast.walk(top)]
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append(("." * node.level) + (node.module or ""))
    return out


def test_core_has_no_qt():
    """Importing any engine module never loads Qt (the CLI and headless jobs run without it)."""
    bad = [(p.name, m) for p in (ROOT / "core").rglob("*.py")
           for m in _imports(p, module_level=True) if m.split(".")[0] in QT]
    assert bad == []


def test_gui_imports_the_engine_as_a_package():
    for p in (ROOT / "gui").glob("*.py"):
        for m in _imports(p):
            assert not m.startswith(("core", "gui")), f"{p.name} imports {m}: use relative imports"
