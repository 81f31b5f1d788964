"""The GUI reaches the engine only through the ``prunestudio`` package (relative imports), never
through the checkout's folder names ``core`` or ``gui`` (they are not packages when installed).

"core never imports Qt" is in tests/test_house_rules.py; the layers inside gui/ in tests/test_layers.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append(("." * node.level) + (node.module or ""))
    return out


def test_gui_imports_the_engine_as_a_package():
    paths = sorted((ROOT / "gui").rglob("*.py"))
    assert len(paths) > 20  # gui/, gui/panels/ and gui/views/
    for p in paths:
        for m in _imports(p):
            assert not m.startswith(("core", "gui")), f"{p.relative_to(ROOT)} imports {m}: use relative imports"
