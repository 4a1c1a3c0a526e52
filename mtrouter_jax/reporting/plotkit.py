"""Plot helpers shared by the sweep plots: an Agg figure, dollar tick labels, score-range clipping and
point labels placed clear of markers, error bars and lines (matplotlib imported inside the functions)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["TICK_FONTSIZE", "new_figure", "usd_tick", "usd_ticks", "usd_formatter", "clip_errors",
           "score_limits", "place_labels"]

TICK_FONTSIZE = 8  # every tick label of every axis (major and minor alike)


def new_figure(figsize):
    """A matplotlib Figure on an Agg canvas (no pyplot state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=150)
    FigureCanvasAgg(fig)
    return fig


def _decimals(v: float) -> int:
    """Decimals that show ``v`` to 3 significant digits once trailing zeros are stripped."""
    if v == 0 or not math.isfinite(v):
        return 0
    d = max(0, 2 - math.floor(math.log10(abs(v))))
    text = f"{v:.{d}f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def usd_tick(v: float, decimals: int | None = None) -> str:
    """A dollar tick in plain decimal notation, never exponent notation: $0.0001, $0.02, $0.5, $10."""
    if not math.isfinite(v):
        return ""
    if abs(v) < 1e-12:
        return "$0"
    d = _decimals(v) if decimals is None else decimals
    sign = "−" if v < 0 else ""
    return f"{sign}${abs(v):.{d}f}"


def usd_ticks(values: Sequence[float], common: bool) -> list[str]:
    """Labels of one axis' ticks: each with its own decimals (log axes: $0.001, $0.01, $0.1), or,
    with ``common`` (linear axes), all with the decimals the finest one needs ($0.05, $0.10, $0.15)."""
    vals = [float(v) for v in values]
    if not common:
        return [usd_tick(v) for v in vals]
    d = max((_decimals(v) for v in vals if math.isfinite(v) and abs(v) >= 1e-12), default=0)
    return [usd_tick(v, d) for v in vals]


def usd_formatter(common: bool):
    """A matplotlib Formatter giving :func:`usd_ticks` labels (consistent across an axis' ticks)."""
    from matplotlib.ticker import Formatter

    class UsdFormatter(Formatter):
        def __call__(self, x, pos=None):
            return usd_tick(x)

        def format_ticks(self, values):
            return usd_ticks(values, common)

    return UsdFormatter()


def clip_errors(values, errors, lo: float | None, hi: float | None) -> np.ndarray:
    """Asymmetric (2, n) error bars of half-width ``errors`` cut at the possible range [lo, hi]: a
    whisker never claims a score that cannot happen."""
    v = np.asarray(values, np.float64)
    e = np.asarray(errors, np.float64)
    lower = e if lo is None else np.clip(np.minimum(e, v - lo), 0.0, None)
    upper = e if hi is None else np.clip(np.minimum(e, hi - v), 0.0, None)
    return np.vstack([lower, upper])


def score_limits(ymin: float, ymax: float, lo: float | None, hi: float | None, margin: float = 0.08
                 ) -> tuple[float, float]:
    """y limits of the data [ymin, ymax] with a margin, but never past the possible range [lo, hi]."""
    pad = margin * max(ymax - ymin, 1.0)
    a, b = ymin - pad, ymax + pad
    if lo is not None:
        a = max(a, lo)
    if hi is not None:
        b = min(b, hi)
    return (a, b) if b > a else (ymin - 1.0, ymax + 1.0)


def _overlap(a, b, pad: float = 2.0) -> bool:
    return not (a.x1 + pad < b.x0 or b.x1 + pad < a.x0 or a.y1 + pad < b.y0 or b.y1 + pad < a.y0)


def _obstacles(ax, marks, lines, px: float) -> list:
    """Display-space boxes of what labels must not cover: each marker with its error bars, and short
    pieces along every drawn line."""
    from matplotlib.transforms import Bbox

    out = []
    to = ax.transData.transform
    for x, y, xe, ye in marks:
        X, Y = to((x, y))
        out.append(Bbox.from_extents(X - 5 * px, Y - 5 * px, X + 5 * px, Y + 5 * px))
        if ye:
            (_, y0), (_, y1) = to((x, y - ye[0])), to((x, y + ye[1]))
            out.append(Bbox.from_extents(X - 2.5 * px, min(y0, y1), X + 2.5 * px, max(y0, y1)))
        if xe:
            (x0, _), (x1, _) = to((max(x - xe[0], 1e-300) if ax.get_xscale() == "log" else x - xe[0], y)), \
                to((x + xe[1], y))
            out.append(Bbox.from_extents(min(x0, x1), Y - 2.5 * px, max(x0, x1), Y + 2.5 * px))
    for xs, ys in lines:
        P = to(np.column_stack([xs, ys]))
        for (x0, y0), (x1, y1) in zip(P[:-1], P[1:]):
            n = max(1, int(math.hypot(x1 - x0, y1 - y0) / (6 * px)))
            for t in np.linspace(0.0, 1.0, n + 1):
                X, Y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
                out.append(Bbox.from_extents(X - 2 * px, Y - 2 * px, X + 2 * px, Y + 2 * px))
    return out


def place_labels(fig, ax, items, marks=(), lines=()) -> None:
    """Annotate (x, y, text) points, trying offsets of growing distance so that labels overlap
    neither each other nor ``marks`` ((x, y, (x_lo, x_hi) or None, (y_lo, y_hi) or None): markers
    and their error bars) nor ``lines`` ((xs, ys) polylines), greedy in display coordinates; a label
    moved away from its point gets a thin leader line."""
    renderer = fig.canvas.get_renderer()
    candidates = []
    for r in (1, 2, 3, 4, 5, 6):
        d = 7 * r
        candidates += [
            (d, 5 * r, "left", "bottom"), (d, -5 * r, "left", "top"),
            (-d, 5 * r, "right", "bottom"), (-d, -5 * r, "right", "top"),
            (0, 9 * r, "center", "bottom"), (0, -9 * r, "center", "top"),
            (d + 4, 0, "left", "center"), (-d - 4, 0, "right", "center"),
        ]
    px = fig.dpi / 72.0
    obstacles = _obstacles(ax, list(marks) + [(x, y, None, None) for x, y, _ in items], lines, px)
    axbox = ax.get_window_extent(renderer)
    style = dict(fontsize=8, color="0.15", bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    placed = []
    for x, y, text in sorted(items, key=lambda it: (-it[1], it[0])):
        best = None
        for k, (dx, dy, ha, va) in enumerate(candidates):
            far = k >= 8
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, **style,
                              arrowprops=dict(arrowstyle="-", color="0.55", lw=0.6, shrinkA=0, shrinkB=4) if far else None)
            bb = ann.get_window_extent(renderer)
            ann.remove()
            inside = axbox.x0 <= bb.x0 and bb.x1 <= axbox.x1 and axbox.y0 <= bb.y0 and bb.y1 <= axbox.y1
            clashes = sum(_overlap(bb, o) for o in placed + obstacles)
            if best is None or (not inside, clashes, k) < best[0]:
                best = ((not inside, clashes, k), k, bb)
            if inside and clashes == 0:
                break
        k = best[1]
        dx, dy, ha, va = candidates[k]
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, **style,
                    arrowprops=dict(arrowstyle="-", color="0.55", lw=0.6, shrinkA=0, shrinkB=4) if k >= 8 else None)
        placed.append(best[2])
