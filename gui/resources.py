"""Finding Prune Studio's resource files (icons, style sheets, the .desktop file).

One helper for every way the app runs:

* a PyInstaller bundle: ``sys._MEIPASS/resources`` (the spec lists ``resources`` in ``datas``);
* an installed wheel: ``<prefix>/share/prunestudio/resources`` (wheel data files) or
  ``prunestudio/gui/resources`` inside the package, whichever exists;
* a source checkout / editable install: ``<repo>/resources`` next to ``gui/``.

``PRUNESTUDIO_RESOURCES`` overrides all of them. Never the current working directory.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

_MARKER = "icons"


def _candidates() -> list[Path]:
    out: list[Path] = []
    env = os.environ.get("PRUNESTUDIO_RESOURCES")
    if env:
        out.append(Path(env))
    meipass = getattr(sys, "_MEIPASS", None)
    if meipass:
        out.append(Path(meipass) / "resources")
    here = Path(__file__).resolve().parent
    out.append(here / "resources")  # packaged inside prunestudio.gui
    out.append(Path(sys.prefix) / "share" / "prunestudio" / "resources")  # wheel data files
    out.append(here.parent / "resources")  # checkout: repo_root/gui -> repo_root/resources
    return out


@lru_cache(maxsize=1)
def resources_dir() -> Path | None:
    """The first candidate folder that holds Prune Studio's resources (None if none does)."""
    for c in _candidates():
        if (c / _MARKER).is_dir():
            return c
    return None


def resource_path(*parts: str) -> Path | None:
    """Path of a resource file, or None when it is missing (callers degrade gracefully)."""
    base = resources_dir()
    if base is None:
        return None
    p = base.joinpath(*parts)
    return p if p.exists() else None


def app_icon():
    """The application icon (SVG when QtSvg renders it, else the PNG), or an empty QIcon."""
    from PySide6.QtGui import QIcon

    icon = QIcon()
    for name in ("prunestudio.svg", "prunestudio-256.png", "prunestudio-64.png"):
        p = resource_path("icons", name)
        if p is not None:
            icon.addFile(str(p))
    return icon


def style_sheet() -> str:
    p = resource_path("style.qss")
    return p.read_text(encoding="utf-8") if p is not None else ""


def render_png(svg: Path, png: Path, size: int) -> None:
    """Render ``svg`` to a square ``size`` PNG with QSvgRenderer (needs a QGuiApplication)."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise ValueError(f"{svg} is not a valid SVG file")
    img = QImage(size, size, QImage.Format.Format_ARGB32)
    img.fill(Qt.GlobalColor.transparent)
    painter = QPainter(img)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    if not img.save(str(png)):
        raise OSError(f"could not write {png}")


def _render_icons() -> None:  # python -m prunestudio.gui.resources
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841
    svg = resource_path("icons", "prunestudio.svg")
    if svg is None:
        raise SystemExit("resources/icons/prunestudio.svg not found")
    for size in (64, 256):
        render_png(svg, svg.with_name(f"prunestudio-{size}.png"), size)


if __name__ == "__main__":
    _render_icons()
