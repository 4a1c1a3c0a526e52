"""Reporting of budget-sweep results: rich tables, cost–score / behaviour plots, files, markdown.

Everything here reads the sweep ``results`` dict produced by the evaluation module::

    {"meta": {"n_episodes", "seed", "pool", "tools", "budgets", "currency"},
     "routers": {name: {"kind": "learned"|"oracle"|"heuristic"|"baseline"|"single",
                        "points": [{"budget", "lam", "score", "score_ci", "cost", "cost_ci",
                                    "cache_miss_cost", "switches", "stay_after_error",
                                    "over_budget_rate", "budget_truncated_rate",
                                    "tool_model_share", "model_share",
                                    "over_representation"}, ...]}}}

Every number written is computed from that dict. Missing keys, ``None`` and NaN are tolerated and
shown as "—" (tables) or omitted (summary sentences). matplotlib is imported only by the plot
functions (it is an optional dependency).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from mtrouter_jax.curves import aiq, first_cost_reaching, upper_convex_hull

__all__ = [
    "KIND_ORDER",
    "CURVE_KINDS",
    "ordered_routers",
    "results_table",
    "aiq_table",
    "aiq_by_router",
    "print_results",
    "cost_axis_scale",
    "plot_cost_score",
    "plot_behaviour",
    "summary_markdown",
    "write_results",
    "to_jsonable",
]

KIND_ORDER = ("learned", "oracle", "heuristic", "baseline", "single")
CURVE_KINDS = ("learned", "oracle", "heuristic", "baseline")
DASH = "—"


# --------------------------------------------------------------------------- small helpers


def _num(x: Any) -> float | None:
    """A finite float, or None (for None / NaN / inf / non-numbers)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _usd(x: Any) -> str:
    v = _num(x)
    if v is None:
        return DASH
    if v == 0:
        return "$0"
    a = abs(v)
    if a < 1e-4:
        return f"${v:.2e}"
    decimals = max(2, 2 - math.floor(math.log10(a)))
    return f"${v:.{decimals}f}"


def _pct(x: Any, digits: int = 1) -> str:
    v = _num(x)
    return DASH if v is None else f"{100.0 * v:.{digits}f}%"


def _f(x: Any, digits: int = 1) -> str:
    v = _num(x)
    return DASH if v is None else f"{v:.{digits}f}"


def _score_ci(p: dict) -> str:
    s = _num(p.get("score"))
    if s is None:
        return DASH
    ci = _num(p.get("score_ci"))
    return f"{s:.1f}" if ci is None else f"{s:.1f} ± {ci:.1f}"


def _budget_str(b: Any) -> str:
    v = _num(b)
    return "no cap" if v is None else _usd(v)


def _same_budget(a: Any, b: Any) -> bool:
    va, vb = _num(a), _num(b)
    if va is None or vb is None:
        return va is None and vb is None
    return math.isclose(va, vb, rel_tol=1e-9, abs_tol=1e-12)


def _routers(results: dict) -> dict[str, dict]:
    return dict(results.get("routers") or {})


def _points(router: dict | None) -> list[dict]:
    if not router:
        return []
    return [p for p in (router.get("points") or []) if isinstance(p, dict)]


def _valid_points(router: dict | None) -> list[dict]:
    """Points with a finite score and cost, sorted by cost (ties by score)."""
    pts = [p for p in _points(router) if _num(p.get("score")) is not None and _num(p.get("cost")) is not None]
    return sorted(pts, key=lambda p: (_num(p["cost"]), _num(p["score"])))


def _best_point(router: dict | None) -> dict | None:
    """Highest-score point; ties go to the cheaper one."""
    pts = _valid_points(router)
    if not pts:
        return None
    return max(pts, key=lambda p: (_num(p["score"]), -_num(p["cost"])))


def _point_at_budget(router: dict | None, budget: Any) -> dict | None:
    for p in _points(router):
        if _same_budget(p.get("budget"), budget):
            return p
    return None


def _budget_key(b: Any) -> float:
    v = _num(b)
    return math.inf if v is None else v


def _nearest_point(router: dict | None, budget: Any) -> dict | None:
    """The point at ``budget`` if there is one, else the one with the nearest budget (an uncapped
    point counts as an infinite budget), else the best point."""
    p = _point_at_budget(router, budget)
    if p is not None:
        return p
    pts = _points(router)
    if not pts:
        return None
    if len(pts) == 1:
        return pts[0]
    target = _budget_key(budget)

    def dist(q: dict) -> float:
        k = _budget_key(q.get("budget"))
        if math.isinf(k) and math.isinf(target):
            return 0.0
        return abs(k - target) if not (math.isinf(k) or math.isinf(target)) else math.inf

    best = min(pts, key=dist)
    return best if math.isfinite(dist(best)) else (_best_point(router) or pts[0])


def ordered_routers(results: dict, routers: Iterable[str] | None = None) -> list[str]:
    """Router names grouped by kind (learned, oracle, heuristic, baseline, single, other), keeping
    the dict order within a kind. ``routers`` restricts (unknown names are ignored)."""
    rs = _routers(results)
    names = list(rs) if routers is None else [n for n in routers if n in rs]
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    return sorted(names, key=lambda n: (rank.get(rs[n].get("kind"), len(KIND_ORDER)), names.index(n)))


def _max_cost(results: dict) -> float | None:
    costs = [_num(p.get("cost")) for r in _routers(results).values() for p in _points(r)]
    costs = [c for c in costs if c is not None]
    return max(costs) if costs else None


def aiq_by_router(results: dict) -> dict[str, float]:
    """AIQ (:func:`curves.aiq`) of every router with at least one valid point, over a common
    ``max_cost`` = the largest mean cost of any point of any router."""
    mc = _max_cost(results)
    out: dict[str, float] = {}
    if mc is None or not mc > 0:
        return out
    rs = _routers(results)
    for name in ordered_routers(results):
        pts = _valid_points(rs[name])
        if pts:
            out[name] = aiq([p["cost"] for p in pts], [p["score"] for p in pts], max_cost=mc)
    return out


# --------------------------------------------------------------------------- tables


def results_table(results: dict, routers: Iterable[str] | None = None):
    """A rich Table, one row per router × point (curve routers' points in budget order)."""
    from rich.table import Table

    meta = results.get("meta") or {}
    cur = meta.get("currency", "USD")
    title = "Budget sweep"
    if meta.get("n_episodes") is not None:
        title += f" — {meta['n_episodes']} episodes"
    if meta.get("seed") is not None:
        title += f", seed {meta['seed']}"
    t = Table(title=title, header_style="bold", show_lines=False)
    t.add_column("router", style="bold")
    t.add_column("kind", style="dim")
    t.add_column(f"budget ({cur})", justify="right")
    t.add_column("score ± 95% CI", justify="right")
    t.add_column(f"{cur}/episode", justify="right")
    t.add_column("cache-miss", justify="right")
    t.add_column("switches", justify="right")
    t.add_column("stay-after-error", justify="right")
    t.add_column("over-budget", justify="right")
    rs = _routers(results)
    names = ordered_routers(results, routers)
    prev_kind = None
    for name in names:
        r = rs[name]
        kind = r.get("kind", "?")
        pts = sorted(_points(r), key=lambda p: (_budget_key(p.get("budget")), _num(p.get("cost")) or 0.0))
        if prev_kind is not None and kind != prev_kind:
            t.add_section()
        prev_kind = kind
        if not pts:
            t.add_row(name, kind, *([DASH] * 7))
            continue
        for i, p in enumerate(pts):
            ob = _num(p.get("over_budget_rate"))
            ob_s = _pct(ob)
            if ob is not None and ob > 0:
                ob_s = f"[red]{ob_s}[/red]"
            t.add_row(
                name if i == 0 else "",
                kind if i == 0 else "",
                _budget_str(p.get("budget")),
                _score_ci(p),
                _usd(p.get("cost")),
                _usd(p.get("cache_miss_cost")),
                _f(p.get("switches"), 2),
                _pct(p.get("stay_after_error")),
                ob_s,
            )
    return t


def aiq_table(results: dict):
    """Compact rich Table: AIQ per router over the common max cost, plus its best point."""
    from rich.table import Table

    mc = _max_cost(results)
    cur = (results.get("meta") or {}).get("currency", "USD")
    t = Table(title=f"AIQ (mean achievable score over budgets in [0, {_usd(mc)}])", header_style="bold")
    t.add_column("router", style="bold")
    t.add_column("kind", style="dim")
    t.add_column("AIQ", justify="right")
    t.add_column("best score", justify="right")
    t.add_column(f"at {cur}/episode", justify="right")
    rs = _routers(results)
    a = aiq_by_router(results)
    for name in ordered_routers(results):
        bp = _best_point(rs[name])
        t.add_row(
            name,
            rs[name].get("kind", "?"),
            _f(a.get(name), 2),
            _f(bp.get("score") if bp else None),
            _usd(bp.get("cost") if bp else None),
        )
    return t


def print_results(results: dict, console=None) -> None:
    """Print :func:`results_table` and :func:`aiq_table` to ``console`` (a new rich Console if None)."""
    if console is None:
        from rich.console import Console

        console = Console()
    console.print(results_table(results))
    console.print(aiq_table(results))


# --------------------------------------------------------------------------- plots


def cost_axis_scale(results: dict) -> str:
    """"log" when the positive mean costs span more than a factor of 10, else "linear"."""
    costs = [_num(p.get("cost")) for r in _routers(results).values() for p in _points(r)]
    pos = [c for c in costs if c is not None and c > 0]
    if len(pos) >= 2 and max(pos) / min(pos) > 10:
        return "log"
    return "linear"


def _usd_tick(v: float) -> str:
    if v <= 0:
        return "$0"
    return f"${v:.4g}" if v >= 0.001 else f"${v:.0e}"


def _new_figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=150)
    FigureCanvasAgg(fig)
    return fig


def _overlap(a, b, pad: float = 2.0) -> bool:
    return not (a.x1 + pad < b.x0 or b.x1 + pad < a.x0 or a.y1 + pad < b.y0 or b.y1 + pad < a.y0)


def _place_labels(fig, ax, items) -> None:
    """Annotate (x, y, text) points, trying offsets of growing distance so that labels overlap
    neither each other nor the labelled markers (greedy, in display coordinates); a label moved
    away from its point gets a thin leader line."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    candidates = []
    for r in (1, 2, 3, 4):
        d = 6 * r
        candidates += [
            (d, 5 * r, "left", "bottom"), (d, -5 * r, "left", "top"),
            (-d, 5 * r, "right", "bottom"), (-d, -5 * r, "right", "top"),
            (0, 9 * r, "center", "bottom"), (0, -9 * r, "center", "top"),
        ]
    px = fig.dpi / 72.0
    obstacles = []
    for x, y, _ in items:
        X, Y = ax.transData.transform((x, y))
        obstacles.append(Bbox.from_extents(X - 5 * px, Y - 5 * px, X + 5 * px, Y + 5 * px))
    axbox = ax.get_window_extent(renderer)
    placed = []
    for x, y, text in sorted(items, key=lambda it: (-it[1], it[0])):
        ann, best = None, None
        for k, (dx, dy, ha, va) in enumerate(candidates):
            if ann is not None:
                ann.remove()
            far = k >= 4
            ann = ax.annotate(
                text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8,
                color="0.15", bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75),
                arrowprops=dict(arrowstyle="-", color="0.55", lw=0.6, shrinkA=0, shrinkB=4) if far else None,
            )
            bb = ann.get_window_extent(renderer)
            inside = axbox.x0 <= bb.x0 and bb.x1 <= axbox.x1 and axbox.y0 <= bb.y0 and bb.y1 <= axbox.y1
            clashes = sum(_overlap(bb, o) for o in placed + obstacles)
            if best is None or (not inside, clashes) < best[0]:
                best = ((not inside, clashes), k)
            if inside and clashes == 0:
                break
        else:  # nothing clean: fall back to the least bad candidate
            ann.remove()
            dx, dy, ha, va = candidates[best[1]]
            ann = ax.annotate(
                text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8,
                color="0.15", bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75),
                arrowprops=dict(arrowstyle="-", color="0.55", lw=0.6, shrinkA=0, shrinkB=4),
            )
        placed.append(ann.get_window_extent(renderer))


def _cost_score_figure(results: dict, title: str | None = None):
    """Build (not save) the cost–score figure; returns the matplotlib Figure."""
    fig = _new_figure((9.5, 5.8))
    ax = fig.add_subplot(1, 1, 1)
    rs = _routers(results)
    meta = results.get("meta") or {}
    cur = meta.get("currency", "USD")
    scale = cost_axis_scale(results)
    if scale == "log":
        ax.set_xscale("log")

    def ok_cost(c):
        return c is not None and (scale != "log" or c > 0)

    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    markers = ["o", "s", "^", "v", "P", "X", "<", ">", "h"]
    ci = 0
    single_items = []
    for name in ordered_routers(results):
        r = rs[name]
        kind = r.get("kind")
        pts = [p for p in _valid_points(r) if ok_cost(_num(p["cost"]))]
        if not pts:
            continue
        c = np.array([_num(p["cost"]) for p in pts])
        s = np.array([_num(p["score"]) for p in pts])
        sci = np.array([_num(p.get("score_ci")) or 0.0 for p in pts])
        cci = np.array([_num(p.get("cost_ci")) or 0.0 for p in pts])
        if scale == "log":  # keep error bars on the positive side of a log axis
            cci = np.minimum(cci, c * 0.999)
        if kind == "oracle":
            hc, hs = upper_convex_hull(c, s)
            ax.plot(c, s, linestyle="none", marker="x", color="0.35", markersize=5, alpha=0.7, zorder=2)
            ax.plot(hc, hs, linestyle="--", color="black", linewidth=1.6, zorder=2,
                    label=f"{name} (upper envelope)")
            continue
        if kind == "single":
            ax.errorbar(c, s, yerr=sci, xerr=cci, fmt="D", color="0.3", markersize=6, ecolor="0.6",
                        elinewidth=0.8, capsize=2, zorder=3,
                        label="single models" if not single_items else None)
            for x, y in zip(c, s):
                single_items.append((float(x), float(y), name))
            continue
        color = palette[ci % len(palette)]
        marker = markers[ci % len(markers)]
        ci += 1
        lw = 2.4 if kind == "learned" else 1.5
        ax.errorbar(c, s, yerr=sci, xerr=cci, fmt="-", marker=marker, color=color, linewidth=lw,
                    markersize=6 if kind == "learned" else 5, elinewidth=0.8, capsize=2, alpha=0.95,
                    zorder=4 if kind == "learned" else 3, label=f"{name} ({kind})")
    ax.set_xlabel(f"mean cost per episode ({cur}{', log scale' if scale == 'log' else ''})")
    ax.set_ylabel("mean terminal score (−100 … 100)")
    if title is None:
        n = meta.get("n_episodes")
        title = "Score vs cost per episode" + (f" ({n} episodes, 95% CI)" if n is not None else "")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.35)
    from matplotlib.ticker import FuncFormatter

    dollars = FuncFormatter(lambda v, _pos: _usd_tick(v))
    ax.xaxis.set_major_formatter(dollars)
    if scale == "log":
        ax.grid(True, which="minor", alpha=0.12)
        from matplotlib.ticker import LogLocator, NullFormatter

        lo, hi = ax.get_xlim()
        if hi / lo < 200:  # few decades: label 2× and 5× too
            ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
            ax.xaxis.set_minor_formatter(dollars)
            ax.tick_params(axis="x", which="minor", labelsize=8)
        else:
            ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(left=0)
    ax.margins(x=0.08, y=0.1)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    if single_items:
        _place_labels(fig, ax, single_items)
    return fig


def plot_cost_score(results: dict, path, title: str | None = None) -> Path:
    """Cost–score plot (PNG, dpi 150): curve routers as lines, the oracle as its dashed upper
    convex hull, single models as labelled diamonds. Returns ``Path(path)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _cost_score_figure(results, title)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def _default_behaviour_budget(results: dict, learned: str) -> Any:
    bp = _best_point(_routers(results).get(learned))
    if bp is not None:
        return bp.get("budget")
    budgets = [b for b in ((results.get("meta") or {}).get("budgets") or []) if _num(b) is not None]
    return max(budgets) if budgets else None


def _behaviour_figure(results: dict, budget: Any = "auto", learned: str = "mtrouter"):
    from matplotlib.colors import LogNorm

    if isinstance(budget, str) and budget == "auto":
        budget = _default_behaviour_budget(results, learned)
    rs = _routers(results)
    names, pts = [], []
    for n in ordered_routers(results):
        p = _nearest_point(rs[n], budget)
        if p is not None:
            names.append(n)
            pts.append(p)

    fig = _new_figure((12, 9.5))
    gs = fig.add_gridspec(2, 2, height_ratios=[1, 1.15])
    ax_sw = fig.add_subplot(gs[0, 0])
    ax_st = fig.add_subplot(gs[0, 1])
    ax_hm = fig.add_subplot(gs[1, :])
    kind_color = {"learned": "#1f77b4", "oracle": "0.25", "heuristic": "#2ca02c", "baseline": "#ff7f0e",
                  "single": "0.65"}
    colors = [kind_color.get(rs[n].get("kind"), "#9467bd") for n in names]
    x = np.arange(len(names))
    bstr = _budget_str(budget)

    for ax, key, scale, ylabel, fmt in (
        (ax_sw, "switches", 1.0, "model switches per episode", "{:.1f}"),
        (ax_st, "stay_after_error", 100.0, "stay with same model after error (%)", "{:.0f}"),
    ):
        vals = [_num(p.get(key)) for p in pts]
        h = [0.0 if v is None else v * scale for v in vals]
        bars = ax.bar(x, h, color=colors, edgecolor="white")
        labels = [DASH if v is None else fmt.format(v * scale) for v in vals]
        ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel.split(' (')[0]} — budget {bstr}", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        top = max(h) if h and max(h) > 0 else 1.0
        ax.set_ylim(0, top * 1.15)

    lp = _nearest_point(rs.get(learned), budget)
    orr = (lp or {}).get("over_representation") or {}
    meta = results.get("meta") or {}
    tools = [t for t in (meta.get("tools") or []) if t in orr] + [t for t in orr if t not in (meta.get("tools") or [])]
    models_seen = {m for t in tools for m in (orr.get(t) or {})}
    models = [m for m in (meta.get("pool") or []) if m in models_seen] + sorted(models_seen - set(meta.get("pool") or []))
    if tools and models:
        mat = np.full((len(tools), len(models)), np.nan)
        for i, t in enumerate(tools):
            for j, m in enumerate(models):
                v = _num((orr.get(t) or {}).get(m))
                if v is not None and v > 0:
                    mat[i, j] = v
        finite = mat[np.isfinite(mat)]
        span = max(2.0, float(np.max(np.abs(np.log(finite))))) if finite.size else 2.0
        span = min(span, math.log(10.0))
        norm = LogNorm(vmin=math.exp(-span), vmax=math.exp(span))
        im = ax_hm.imshow(np.ma.masked_invalid(mat), cmap="RdBu_r", norm=norm, aspect="auto")
        ax_hm.set_xticks(np.arange(len(models)))
        ax_hm.set_xticklabels(models, rotation=20, ha="right", fontsize=8)
        ax_hm.set_yticks(np.arange(len(tools)))
        ax_hm.set_yticklabels(tools, fontsize=9)
        for i in range(len(tools)):
            for j in range(len(models)):
                v = mat[i, j]
                if np.isfinite(v):
                    dark = abs(math.log(v)) > 0.6 * span
                    ax_hm.text(j, i, f"{v:.2f}×", ha="center", va="center", fontsize=8,
                               color="white" if dark else "black")
                else:
                    ax_hm.text(j, i, DASH, ha="center", va="center", fontsize=8, color="0.5")
        cb = fig.colorbar(im, ax=ax_hm, fraction=0.035, pad=0.02)
        ticks = [t for t in (0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 10.0)
                 if norm.vmin <= t <= norm.vmax and t not in ((0.2, 5.0) if span > math.log(4.5) else (0.1, 10.0))]
        cb.set_ticks(ticks)
        cb.set_ticklabels([f"{t:g}×" for t in ticks])
        cb.ax.minorticks_off()
        cb.set_label("tool share / overall share", fontsize=8)
        ax_hm.set_xlabel("model")
        ax_hm.set_ylabel("tool type of the turn")
        lb = _budget_str(lp.get("budget")) if lp else bstr
        ax_hm.set_title(f"{learned}: model over-representation by tool type (budget {lb})", fontsize=10)
    else:
        ax_hm.axis("off")
        ax_hm.text(0.5, 0.5, f"no tool × model over-representation data for '{learned}'",
                   ha="center", va="center", transform=ax_hm.transAxes, color="0.4")
    fig.tight_layout()
    return fig


def plot_behaviour(results: dict, path, budget: Any = "auto", learned: str = "mtrouter") -> Path:
    """Behaviour figure (PNG): bars of switches/episode and stay-after-error per router at
    ``budget`` (default "auto" = the learned router's best-score budget; routers without a point
    at that budget use their nearest one), plus a heatmap of the learned router's tool-type ×
    model over-representation. Returns ``Path(path)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _behaviour_figure(results, budget, learned)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


# --------------------------------------------------------------------------- summary


def _specialisations(point: dict | None, min_ratio: float = 1.3, top: int = 5) -> list[tuple[str, str, float]]:
    orr = (point or {}).get("over_representation") or {}
    out = []
    for tool, row in orr.items():
        for model, v in (row or {}).items():
            r = _num(v)
            if r is not None and r >= min_ratio:
                out.append((str(tool), str(model), r))
    out.sort(key=lambda e: -e[2])
    return out[:top]


def summary_markdown(results: dict, learned: str = "mtrouter", heuristic: str = "tool-heuristic",
                     oracle: str = "oracle", escalation: str = "error-escalation") -> str:
    """Short markdown report of the headline comparisons; every number comes from ``results``.
    Sentences whose routers are missing are left out."""
    rs = _routers(results)
    meta = results.get("meta") or {}
    cur = meta.get("currency", "USD")
    lines: list[str] = ["# MTRouter budget sweep — summary", ""]
    bits = []
    if meta.get("n_episodes") is not None:
        bits.append(f"{meta['n_episodes']} episodes per point")
    if meta.get("seed") is not None:
        bits.append(f"seed {meta['seed']}")
    if meta.get("pool"):
        bits.append("pool: " + ", ".join(map(str, meta["pool"])))
    if meta.get("budgets"):
        bits.append("budgets (" + cur + "/episode): " + ", ".join(_usd(b) for b in meta["budgets"]))
    if bits:
        lines += ["; ".join(bits) + ".", ""]

    findings: list[str] = []
    # Best single model.
    best_single, bs_pt = None, None
    for n in ordered_routers(results):
        if rs[n].get("kind") != "single":
            continue
        p = _best_point(rs[n])
        if p is not None and (bs_pt is None or (_num(p["score"]), -_num(p["cost"])) > (_num(bs_pt["score"]), -_num(bs_pt["cost"]))):
            best_single, bs_pt = n, p
    S = _num(bs_pt["score"]) if bs_pt else None
    S_cost = _num(bs_pt["cost"]) if bs_pt else None
    if best_single is not None:
        findings.append(f"Best single model: **{best_single}**, score {S:.1f} at {_usd(S_cost)}/episode.")

    L_router = rs.get(learned)
    l_pts = _valid_points(L_router)
    l_best = _best_point(L_router)
    b_star = l_best.get("budget") if l_best else None
    L = _num(l_best["score"]) if l_best else None

    # Where the learned router first matches the best single model.
    if l_pts and S is not None:
        c_hit = first_cost_reaching([p["cost"] for p in l_pts], [p["score"] for p in l_pts], S)
        if math.isfinite(c_hit):
            first = next(p for p in l_pts if _num(p["score"]) >= S)
            rel = f" = {100.0 * c_hit / S_cost:.0f}% of {best_single}'s cost" if S_cost and S_cost > 0 else ""
            fb = _num(first.get("budget"))
            budget_txt = (f"; the smallest budget whose point reaches it is {_usd(fb)}/episode "
                          f"(score {_num(first['score']):.1f} at {_usd(first['cost'])})") if fb is not None else ""
            ci = _num(first.get("score_ci")) if first.get("score_ci") is not None else None
            noisy = (f" The margin ({_num(first['score']) - S:+.1f}) is inside that point's 95% CI (±{ci:.1f}): "
                     f"re-sweep with more episodes (`mtrouter sweep --episodes 1024`) before relying on it."
                     if ci is not None and _num(first["score"]) - S < ci else "")
            findings.append(
                f"**{learned}** reaches {best_single}'s {S:.1f} at {_usd(c_hit)}/episode{rel} "
                f"(interpolated along its cost-sorted points){budget_txt}.{noisy}")
        else:
            last = max(l_pts, key=lambda p: (_budget_key(p.get("budget")), _num(p["cost"])))
            gap = _num(last["score"]) - S
            findings.append(
                f"**{learned}** never matches {best_single}'s {S:.1f} at any budget: at its largest "
                f"budget ({_budget_str(last.get('budget'))}) it scores {_num(last['score']):.1f} at "
                f"{_usd(last['cost'])}/episode, {abs(gap):.1f} points below.")

    # Tool-type heuristic: share of the learned router's gain it recovers.
    H_router = rs.get(heuristic)
    if l_best is not None and S is not None and _valid_points(H_router):
        hp = _point_at_budget(H_router, b_star)
        where = f"at the same budget ({_budget_str(b_star)})"
        if hp is None or _num(hp.get("score")) is None:
            hp = _best_point(H_router)
            where = f"at its best point ({_budget_str(hp.get('budget'))}, vs {learned}'s best at {_budget_str(b_star)})"
        H = _num(hp["score"])
        ci = (_num(l_best.get("score_ci")) or 0.0) if l_best is not None else 0.0
        if 0 < L - S <= ci:
            findings.append(
                f"**{learned}**'s gain over {best_single} ({L:.1f} vs {S:.1f}) is within its 95% CI "
                f"(±{ci:.1f}), so the share of it recovered by **{heuristic}** is not meaningful; "
                f"{heuristic} scores {H:.1f} {where}.")
        elif L - S <= 0:
            findings.append(
                f"**{learned}** has no gain over {best_single} (best {L:.1f} vs {S:.1f}), so the share of "
                f"its gain recovered by **{heuristic}** is undefined; {heuristic} scores {H:.1f} {where}.")
        else:
            frac = (H - S) / (L - S)
            findings.append(
                f"The zero-training **{heuristic}** recovers {100.0 * frac:.0f}% of {learned}'s gain over "
                f"{best_single}: {heuristic} {H:.1f}, {learned} {L:.1f}, {best_single} {S:.1f}, {where}.")

    # Switching behaviour.
    if l_best is not None:
        sw = _num(l_best.get("switches"))
        ep = _nearest_point(rs.get(escalation), b_star)
        esw = _num(ep.get("switches")) if ep else None
        if sw is not None and esw is not None:
            if sw > 0 and esw > 0:
                ratio = esw / sw
                cmp_ = f"{ratio:.1f}× fewer" if ratio >= 1 else f"{1 / ratio:.1f}× more"
                rel = f" — {cmp_} than"
            else:
                rel = " vs"
            findings.append(
                f"Switching at {_budget_str(b_star)}: **{learned}** makes {sw:.2f} model switches per episode{rel} "
                f"**{escalation}** ({esw:.2f} at {_budget_str(ep.get('budget'))}).")
        elif sw is not None:
            findings.append(f"**{learned}** makes {sw:.2f} model switches per episode at {_budget_str(b_star)}.")
        sae = _num(l_best.get("stay_after_error"))
        if sae is not None:
            findings.append(f"After an error, **{learned}** keeps the same model on {100.0 * sae:.1f}% of the next turns.")

    # Oracle gap.
    if l_best is not None and _valid_points(rs.get(oracle)):
        op = _point_at_budget(rs.get(oracle), b_star)
        same = op is not None and _num(op.get("score")) is not None
        if not same:
            op = _nearest_point(rs.get(oracle), b_star)
        O = _num(op.get("score")) if op else None
        if O is not None:
            where = "at equal budget" if same else f"(oracle at its nearest budget {_budget_str(op.get('budget'))})"
            if O != 0:
                gap = 100.0 * (O - L) / abs(O)
                findings.append(
                    f"Against the **{oracle}** {where} ({_budget_str(b_star)}): {L:.1f} vs {O:.1f}, "
                    f"a relative gap of {gap:.1f}%.")
            else:
                findings.append(f"Against the **{oracle}** {where} ({_budget_str(b_star)}): {L:.1f} vs {O:.1f}.")

    # Tool specialisation.
    if l_best is not None and (l_best.get("over_representation") or {}):
        spec = _specialisations(l_best)
        if spec:
            txt = "; ".join(f"{m} over-represented {r:.2f}× on {t} turns" for t, m, r in spec)
            findings.append(f"Tool-type specialisation of **{learned}** at {_budget_str(b_star)}: {txt}.")
        else:
            findings.append(f"No model is over-represented ≥ 1.3× on any tool type for **{learned}** at {_budget_str(b_star)}.")

    # Budget compliance.
    viol = []
    for n in ordered_routers(results):
        for p in _points(rs[n]):
            ob = _num(p.get("over_budget_rate"))
            if ob is not None and ob > 0:
                viol.append(f"{n} at {_budget_str(p.get('budget'))} ({100.0 * ob:.1f}%)")
    if viol:
        findings.append("**Over budget**: " + ", ".join(viol) + " of episodes exceeded the budget.")
    elif rs:
        findings.append("No episode of any router exceeded its budget.")

    # AIQ.
    a = aiq_by_router(results)
    curve_aiq = [(n, a[n]) for n in ordered_routers(results) if rs[n].get("kind") in CURVE_KINDS and n in a]
    if curve_aiq:
        findings.append(
            f"AIQ over [0, {_usd(_max_cost(results))}]: " + ", ".join(f"{n} {v:.2f}" for n, v in curve_aiq) + ".")

    lines += [f"- {f}" for f in findings]
    lines += ["", "## Main numbers", ""]
    lines.append(f"| router | kind | budget | score ± CI | {cur}/episode | cache-miss | switches | stay-after-error | over-budget | AIQ |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for n in ordered_routers(results):
        r = rs[n]
        p = _point_at_budget(r, b_star) if r.get("kind") in CURVE_KINDS and l_best is not None else None
        if p is None or _num(p.get("score")) is None:
            p = _best_point(r)
        if p is None:
            continue
        lines.append(
            f"| {n} | {r.get('kind', '?')} | {_budget_str(p.get('budget'))} | {_score_ci(p)} | {_usd(p.get('cost'))} | "
            f"{_usd(p.get('cache_miss_cost'))} | {_f(p.get('switches'), 2)} | {_pct(p.get('stay_after_error'))} | "
            f"{_pct(p.get('over_budget_rate'))} | {_f(a.get(n), 2)} |")
    if l_best is not None:
        lines += ["", f"Curve routers are shown at {learned}'s best-score budget ({_budget_str(b_star)}) where they "
                      "have a point there, else at their best-score point."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- files


def to_jsonable(x: Any) -> Any:
    """Recursively convert to plain JSON types: NaN/inf → None, numpy scalars/arrays → Python,
    tuples → lists, Paths → str, keys → str."""
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    return str(x)


CSV_COLUMNS = [
    "router", "kind", "budget", "lam", "score", "score_ci", "cost", "cost_ci", "cache_miss_cost",
    "switches", "stay_after_error", "over_budget_rate", "budget_truncated_rate", "aiq",
    "model_share", "top_over_representation",
]


def _csv_rows(results: dict) -> list[dict]:
    rs = _routers(results)
    a = aiq_by_router(results)
    rows = []
    for n in ordered_routers(results):
        r = rs[n]
        for p in _points(r):
            row = {"router": n, "kind": r.get("kind", "")}
            for k in CSV_COLUMNS[2:13]:
                v = _num(p.get(k))
                row[k] = "" if v is None else repr(v)
            row["aiq"] = "" if a.get(n) is None else repr(a[n])
            ms = p.get("model_share")
            row["model_share"] = json.dumps(to_jsonable(ms), allow_nan=False, sort_keys=True) if ms else ""
            spec = _specialisations(p, min_ratio=-math.inf, top=5)
            row["top_over_representation"] = (
                json.dumps([[t, m, round(v, 4)] for t, m, v in spec], allow_nan=False) if spec else "")
            rows.append(row)
    return rows


def write_results(results: dict, out_dir) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv``, ``cost_score.png``, ``behaviour.png`` and
    ``summary.md`` into ``out_dir`` (created). Returns {"json", "csv", "cost_score", "behaviour",
    "summary"} → Path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    p = out / "results.json"
    p.write_text(json.dumps(to_jsonable(results), indent=2, allow_nan=False) + "\n")
    paths["json"] = p
    p = out / "results.csv"
    with p.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows(_csv_rows(results))
    paths["csv"] = p
    paths["cost_score"] = plot_cost_score(results, out / "cost_score.png")
    paths["behaviour"] = plot_behaviour(results, out / "behaviour.png")
    p = out / "summary.md"
    p.write_text(summary_markdown(results))
    paths["summary"] = p
    return paths
