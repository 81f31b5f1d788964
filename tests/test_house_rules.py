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
        if path.name in ("cli.py",) or path.name.startswith("cli_"):
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
    from prunestudio.core.models import load_model

    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False
    assert Recipe().trust_remote_code is False
