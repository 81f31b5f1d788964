"""plots.png for an experiment summary: one panel per metric, grouped bars with std error bars.

Rendered with Qt's QPainter on an offscreen QImage. Why Qt and not matplotlib: matplotlib and
Pillow are not dependencies of Prune Studio, while PySide6 already is (the ``gui`` extra), renders
headless with the ``offscreen`` platform, and writes PNG itself. It lives in the GUI package so
the engine stays free of Qt; ``prunestudio experiment`` writes the tables and

    python -m prunestudio.gui.views.experiment_plot GRID.json OUT

draws ``OUT/plots.png`` from the same run history.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]


class PlotUnavailable(Exception):
    pass


def _qt() -> Any:
    try:
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        from PySide6 import QtCore, QtGui
    except ImportError as e:
        raise PlotUnavailable("rendering PNG plots needs PySide6 (pip install 'prunestudio[gui]')") from e
    from PySide6 import QtWidgets

    # a QApplication (not a bare QGuiApplication): widgets may be created later in this process
    if QtGui.QGuiApplication.instance() is None:
        _qt.app = QtWidgets.QApplication([])  # type: ignore[attr-defined]
    return QtCore, QtGui


def write_plot(spec: Any, rows: Sequence[Any], path: str | Path) -> Path:
    """Draw the summary ``rows`` (see :func:`experiment.summarize`) into ``path`` (PNG)."""
    QtCore, QtGui = _qt()
    metrics = [f"ppl:{s}" for s in spec.eval.ppl] + (["zeroshot"] if spec.eval.tasks else [])
    dense = next((r for r in rows if r.method == "dense"), None)
    pruned = [r for r in rows if r.method != "dense"]
    groups: list[tuple[str, str]] = []
    for r in pruned:
        if (r.method, r.setting) not in groups:
            groups.append((r.method, r.setting))
    sources = []
    for r in pruned:
        if r.source not in sources:
            sources.append(r.source)
    colors = {s: QtGui.QColor(PALETTE[i % len(PALETTE)]) for i, s in enumerate(sources)}

    pw, ph, top, legend_h = max(760, 90 + 70 * len(groups) * max(1, len(sources)) // 2), 300, 64, 28
    width = pw
    font = QtGui.QFont()
    font.setPixelSize(12)
    title = QtGui.QFont(font)
    title.setPixelSize(15)
    title.setBold(True)
    # the grid's name on as many lines as it needs (up to three; a longer one is cut at the third)
    tm = QtGui.QFontMetrics(title)
    wrap = QtCore.Qt.AlignmentFlag.AlignHCenter | QtCore.Qt.TextFlag.TextWordWrap
    title_h = min(tm.boundingRect(QtCore.QRect(0, 0, width - 20, 10_000), wrap, spec.name).height(),
                  3 * tm.lineSpacing())
    extra = max(0, title_h - 20)
    top += extra
    height = top + legend_h + len(metrics) * ph + 10
    img = QtGui.QImage(width, height, QtGui.QImage.Format.Format_ARGB32)
    img.fill(QtGui.QColor("white"))
    p = QtGui.QPainter(img)
    p.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    p.setFont(title)
    p.drawText(QtCore.QRectF(10, 4, width - 20, max(20, title_h)), wrap, spec.name)
    p.setFont(font)
    p.drawText(QtCore.QRectF(10, 26 + extra, width - 20, 16), QtCore.Qt.AlignmentFlag.AlignHCenter,
               "mean ± sample std over seeds (error bars when more than one seed)"
               + ("; dashed line: dense model" if dense else ""))
    p.setFont(font)
    # legend
    x = 60.0
    for s in sources:
        p.fillRect(QtCore.QRectF(x, top - 8, 12, 12), colors[s])
        p.setPen(QtGui.QColor("black"))
        p.drawText(QtCore.QPointF(x + 16, top + 3), s)
        x += 28 + QtGui.QFontMetrics(font).horizontalAdvance(s)
    y0 = top + legend_h
    for mi, metric in enumerate(metrics):
        _panel(p, QtCore, QtGui, font, QtCore.QRectF(0, y0 + mi * ph, width, ph), metric, spec,
               groups, sources, colors, pruned, dense)
    p.end()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    if not img.save(str(tmp), "PNG"):
        raise PlotUnavailable(f"Qt could not write {tmp}")
    tmp.replace(path)
    return path


def _label(metric: str, spec: Any) -> str:
    if metric == "zeroshot":
        lim = spec.eval.limit
        return f"zero-shot accuracy, mean of {len(spec.eval.tasks)} tasks ({lim or 'all'} items each), %"
    suite = metric[4:]
    name = {"wikitext2": "WikiText-2", "c4": "C4"}.get(suite, suite)
    return f"{name} perplexity (log scale)"


def _panel(p: Any, QtCore: Any, QtGui: Any, font: Any, rect: Any, metric: str, spec: Any,
           groups: list[tuple[str, str]], sources: list[str], colors: dict[str, Any],
           rows: Sequence[Any], dense: Any) -> None:
    left, right, top, bottom = rect.left() + 60, rect.right() - 14, rect.top() + 22, rect.bottom() - 40
    is_acc = metric == "zeroshot"
    vals: dict[tuple[str, str, str], tuple[float, float]] = {}
    for r in rows:
        m, s = r.mean.get(metric), r.std.get(metric)
        if m is not None:
            vals[(r.method, r.setting, r.source)] = (m * 100 if is_acc else m, (s or 0) * (100 if is_acc else 1))
    dval = dense.mean.get(metric) if dense is not None else None
    if dval is not None and is_acc:
        dval *= 100
    allv = [m + s for m, s in vals.values()] + [max(m - s, 1e-9) for m, s in vals.values()]
    if dval is not None:
        allv.append(dval)
    p.setPen(QtGui.QColor("black"))
    p.drawText(QtCore.QRectF(rect.left(), rect.top() + 2, rect.width(), 18),
               QtCore.Qt.AlignmentFlag.AlignHCenter, _label(metric, spec))
    if not allv:
        return
    if is_acc:
        lo, hi = 0.0, max(allv) * 1.1
        ticks = _nice_ticks(lo, hi)
        hi = max(hi, ticks[-1])

        def fy(v: float) -> float:
            return bottom - (v - lo) / (hi - lo) * (bottom - top)
    else:
        lo, hi = math.log10(min(allv)) - 0.05, math.log10(max(allv)) + 0.05
        lo, hi = math.floor(lo * 10) / 10, math.ceil(hi * 10) / 10
        ticks = _log_ticks(lo, hi)

        def fy(v: float) -> float:
            return bottom - (math.log10(max(v, 1e-9)) - lo) / (hi - lo) * (bottom - top)
    grid_pen = QtGui.QPen(QtGui.QColor("#dddddd"))
    for t in ticks:
        y = fy(t)
        if top - 1 <= y <= bottom + 1:
            p.setPen(grid_pen)
            p.drawLine(QtCore.QPointF(left, y), QtCore.QPointF(right, y))
            p.setPen(QtGui.QColor("black"))
            p.drawText(QtCore.QRectF(rect.left(), y - 8, 54, 16),
                       QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter, f"{t:g}")
    p.setPen(QtGui.QColor("black"))
    p.drawLine(QtCore.QPointF(left, bottom), QtCore.QPointF(right, bottom))
    p.drawLine(QtCore.QPointF(left, top), QtCore.QPointF(left, bottom))
    n = max(1, len(groups))
    gw = (right - left) / n
    bw = gw * 0.8 / max(1, len(sources))
    for gi, (method, setting) in enumerate(groups):
        gx = left + gi * gw + gw * 0.1
        for si, src in enumerate(sources):
            v = vals.get((method, setting, src))
            if v is None:
                continue
            m, s = v
            x = gx + si * bw
            y = fy(m)
            p.fillRect(QtCore.QRectF(x + 1, y, bw - 2, bottom - y), colors[src])
            small = QtGui.QFont(font)
            small.setPixelSize(10)
            p.setFont(small)
            p.setPen(QtGui.QColor("black"))
            p.drawText(QtCore.QRectF(x - 6, y - 14, bw + 12, 12), QtCore.Qt.AlignmentFlag.AlignHCenter,
                       f"{m:.1f}" if is_acc or m < 1000 else f"{m:.3g}")
            p.setFont(font)
            if s > 0:
                cx = x + bw / 2
                p.setPen(QtGui.QPen(QtGui.QColor("black"), 1.2))
                p.drawLine(QtCore.QPointF(cx, fy(max(m - s, 1e-9))), QtCore.QPointF(cx, fy(m + s)))
                p.drawLine(QtCore.QPointF(cx - 3, fy(m + s)), QtCore.QPointF(cx + 3, fy(m + s)))
                p.drawLine(QtCore.QPointF(cx - 3, fy(max(m - s, 1e-9))), QtCore.QPointF(cx + 3, fy(max(m - s, 1e-9))))
        p.setPen(QtGui.QColor("black"))
        p.drawText(QtCore.QRectF(left + gi * gw, bottom + 4, gw, 16), QtCore.Qt.AlignmentFlag.AlignHCenter,
                   f"{method} {setting}")
    if dval is not None:
        pen = QtGui.QPen(QtGui.QColor("#333333"), 1.4, QtCore.Qt.PenStyle.DashLine)
        p.setPen(pen)
        p.drawLine(QtCore.QPointF(left, fy(dval)), QtCore.QPointF(right, fy(dval)))
        p.setPen(QtGui.QColor("black"))
        p.drawText(QtCore.QPointF(right - 90, fy(dval) - 3), f"dense {dval:.1f}")


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = max(hi - lo, 1e-9)
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    t = math.floor(lo / step) * step
    out = []
    while t <= hi + 1e-9:
        out.append(round(t, 10))
        t += step
    return out


def _log_ticks(lo: float, hi: float) -> list[float]:
    out = []
    for e in range(math.floor(lo), math.ceil(hi) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if lo <= math.log10(v) <= hi:
                out.append(float(v))
    if len(out) < 3:  # a narrow range: round linear ticks inside it
        out = [t for t in _nice_ticks(10 ** lo, 10 ** hi) if lo <= math.log10(max(t, 1e-12)) <= hi]
    return out


def plot_experiment(grid: str | Path, out_dir: str | Path, db: str | Path | None = None) -> Path:
    """Draw ``OUT/plots.png`` for a grid from its run history (see :mod:`prunestudio.core.experiment`)."""
    from ...core.experiment import GridSpec, collect, default_db, summarize
    from ...core.run.history import History

    spec = GridSpec.load(grid)
    rows = summarize(spec, collect(spec, History(db or default_db(out_dir))))
    if not rows:
        raise PlotUnavailable("no finished cells to plot yet")
    return write_plot(spec, rows, Path(out_dir) / "plots.png")


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m prunestudio.gui.views.experiment_plot",
                                 description="Render plots.png of an experiment grid.")
    ap.add_argument("grid")
    ap.add_argument("out")
    ap.add_argument("--db", default=None)
    a = ap.parse_args(argv)
    print(plot_experiment(a.grid, a.out, a.db))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
