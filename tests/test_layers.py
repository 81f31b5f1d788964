"""Import contracts: the package layers of ARCHITECTURE.md, checked on the source (lazy imports too).

A lower layer never imports a higher one, so the engine stays usable headless and each layer can be
read, tested and replaced without the ones above it (napari keeps its Qt split the same way, with
import-linter contracts). "core never imports Qt" and "no import cycles" are in test_house_rules.py.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# lowest first; a module may import its own layer and the layers before it, never a later one
CORE_LAYERS: list[tuple[str, ...]] = [
    ("errors", "events", "files"),
    ("model",),
    # config validates a PruneConfig against the method registry (core/prune/methods), so it sits
    # with the pruning code, not at the very bottom: nothing below this layer reads settings
    ("config", "calib", "prune", "evaluate"),
    ("run",),
    ("experiment",),
    ("cli",),
]
GUI_LAYERS: list[tuple[str, ...]] = [
    ("settings", "logfile", "resources", "plotting", "widgets", "dialogs", "errors", "worker", "tasks",
     "estimates"),
    ("views",),
    ("state", "jobs", "recipes"),
    ("panels",),
    ("main_window", "selftest"),
    ("app", "__main__"),
]


def _imports(path: Path, package_parts: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line, absolute dotted module) of every prunestudio import in ``path``, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("prunestudio")]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("prunestudio"):
                    out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
                continue
            base = list(package_parts[: len(package_parts) - (node.level - 1)])
            mod = base + (node.module.split(".") if node.module else [])
            out += [(node.lineno, ".".join(mod + [a.name])) for a in node.names]
    return out


def _unit(dotted: str, top: str) -> str | None:
    """The layer unit (sub-package or top-level module) of ``prunestudio.<top>.<unit>...``."""
    parts = dotted.split(".")
    if parts[:2] != ["prunestudio", top] or len(parts) < 3:
        return None
    return parts[2]


def _layer_of(unit: str, layers: list[tuple[str, ...]]) -> int | None:
    for i, names in enumerate(layers):
        if unit in names:
            return i
    return None


def _files(top: str) -> list[Path]:
    return sorted(p for p in (REPO / top).rglob("*.py"))


def _unit_of_file(path: Path, top: str) -> str:
    rel = path.relative_to(REPO / top)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


@pytest.mark.parametrize("top, layers", [("core", CORE_LAYERS), ("gui", GUI_LAYERS)])
def test_every_module_has_a_layer(top, layers):
    units = {_unit_of_file(p, top) for p in _files(top)} - {"__init__"}
    missing = sorted(u for u in units if _layer_of(u, layers) is None)
    assert not missing, f"{top}/: give these a layer in tests/test_layers.py (and ARCHITECTURE.md): {missing}"


@pytest.mark.parametrize("top, layers", [("core", CORE_LAYERS), ("gui", GUI_LAYERS)])
def test_lower_layers_never_import_higher_ones(top, layers):
    offenders = []
    for path in _files(top):
        unit = _unit_of_file(path, top)
        if unit == "__init__":
            continue
        mine = _layer_of(unit, layers)
        rel = path.relative_to(REPO / top).with_suffix("")
        parts = ("prunestudio", top, *rel.parts[:-1])  # the package the module lives in
        for line, target in _imports(path, parts):
            other = _unit(target, top)
            if other is None or other == unit:
                continue
            theirs = _layer_of(other, layers)
            if theirs is not None and mine is not None and theirs > mine:
                offenders.append(f"{top}/{path.relative_to(REPO / top)}:{line} ({unit}) imports {target} ({other})")
    assert not offenders, "a lower layer imports a higher one:\n" + "\n".join(offenders)


def test_views_never_reach_into_the_panels_or_the_state():
    """A view shows what it is given; it never reaches for the window's state or a panel."""
    offenders = []
    for path in _files("gui"):
        if _unit_of_file(path, "gui") != "views":
            continue
        for line, target in _imports(path, ("prunestudio", "gui", "views")):
            if _unit(target, "gui") in ("state", "panels", "main_window", "app"):
                offenders.append(f"gui/{path.relative_to(REPO / 'gui')}:{line} imports {target}")
    assert not offenders, offenders


def test_every_package_folder_is_listed_in_pyproject():
    """A sub-package missing from pyproject.toml would be missing from the wheel."""
    conf = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(conf["tool"]["setuptools"]["packages"])
    found = set()
    for top in ("core", "gui"):
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO)
            found.add(".".join(("prunestudio", *rel.parts)))
    assert found == listed, f"not listed: {sorted(found - listed)}; listed but absent: {sorted(listed - found)}"
