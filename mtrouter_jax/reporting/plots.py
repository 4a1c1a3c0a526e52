"""Plots of a budget sweep (matplotlib, an optional dependency imported inside the functions).

``plot_cost_score``: score vs cost per router (the oracle's points as × with their dashed hull: a
privileged reference a router can beat, not an upper bound; single models as labelled diamonds). ``plot_behaviour``: switches and stay-after-error per router at one budget,
plus the learned router's tool-type x model over-representation heatmap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mtrouter_jax.reporting.curves import upper_convex_hull
from mtrouter_jax.reporting.fmt import DASH, budget_str
from mtrouter_jax.reporting.plotkit import (TICK_FONTSIZE, clip_errors, new_figure, place_labels, score_limits,
                                            usd_formatter)
from mtrouter_jax.reporting.results import (best_point, headline_router, nearest_point, num, ordered_routers, points_of,
                                           routers_of, valid_points)

__all__ = ["cost_axis_scale", "score_range", "plot_cost_score", "plot_behaviour"]


def cost_axis_scale(results: dict) -> str:
    """"log" when the positive mean costs span more than a factor of 10, else "linear"."""
    costs = [num(p.get("cost")) for r in routers_of(results).values() for p in points_of(r)]
    pos = [c for c in costs if c is not None and c > 0]
    if len(pos) >= 2 and max(pos) / min(pos) > 10:
        return "log"
    return "linear"


def score_range(results: dict) -> tuple[float, float] | None:
    """The possible score range of a sweep: ``meta["score_range"]``, else −100..100 (the simulator's and
    ScienceWorld's terminal score) unless a point lies outside it (then None: no clipping)."""
    meta = results.get("meta") or {}
    given = meta.get("score_range")
    if given is not None and len(given) == 2 and num(given[0]) is not None and num(given[1]) is not None:
        return float(given[0]), float(given[1])
    scores = [num(p.get("score")) for r in routers_of(results).values() for p in points_of(r)]
    if all(s is None or -100.0 <= s <= 100.0 for s in scores):
        return -100.0, 100.0
    return None


def _cost_score_figure(results: dict, title: str | None = None):
    """Build (not save) the cost–score figure; returns the matplotlib Figure."""
    from matplotlib.lines import Line2D

    fig = new_figure((9.5, 5.8))
    ax = fig.add_subplot(1, 1, 1)
    rs = routers_of(results)
    meta = results.get("meta") or {}
    cur = meta.get("currency", "USD")
    scale = cost_axis_scale(results)
    if scale == "log":
        ax.set_xscale("log")
    srange = score_range(results)
    lo, hi = srange if srange is not None else (None, None)

    def ok_cost(c):
        return c is not None and (scale != "log" or c > 0)

    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    markers = ["o", "s", "^", "v", "P", "X", "<", ">", "h"]
    ci = 0
    single_items, marks, lines, ys = [], [], [], []
    for name in ordered_routers(results):
        r = rs[name]
        kind = r.get("kind")
        pts = [p for p in valid_points(r) if ok_cost(num(p["cost"]))]
        if not pts:
            continue
        c = np.array([num(p["cost"]) for p in pts])
        s = np.array([num(p["score"]) for p in pts])
        sci = np.array([num(p.get("score_ci")) or 0.0 for p in pts])
        cci = np.array([num(p.get("cost_ci")) or 0.0 for p in pts])
        if scale == "log":  # keep error bars on the positive side of a log axis
            cci = np.minimum(cci, c * 0.999)
        yerr = clip_errors(s, sci, lo, hi)  # whiskers stop at the possible scores
        ys += list(s - yerr[0]) + list(s + yerr[1])
        marks += [(x, y, (e, e), (yl, yh)) for x, y, e, yl, yh in zip(c, s, cci, yerr[0], yerr[1])]
        if kind == "oracle":
            hc, hs = upper_convex_hull(c, s)
            ax.plot(c, s, linestyle="none", marker="x", color="0.35", markersize=5, alpha=0.7, zorder=2,
                    label=f"{name} at each budget")
            ax.plot(hc, hs, linestyle="--", color="black", linewidth=1.6, zorder=2,
                    label=f"{name}: hull of its points\n(privileged reference, beatable)")
            lines.append((hc, hs))
            continue
        if kind == "single":
            ax.errorbar(c, s, yerr=yerr, xerr=cci, fmt="D", color="0.3", markersize=6, ecolor="0.6",
                        elinewidth=0.8, capsize=2, zorder=3,
                        label="single models (uncapped)" if not single_items else None)
            for x, y in zip(c, s):
                single_items.append((float(x), float(y), name))
            continue
        color = palette[ci % len(palette)]
        marker = markers[ci % len(markers)]
        ci += 1
        lw = 2.4 if kind == "learned" else 1.5
        ax.errorbar(c, s, yerr=yerr, xerr=cci, fmt="-", marker=marker, color=color, linewidth=lw,
                    markersize=6 if kind == "learned" else 5, elinewidth=0.8, capsize=2, alpha=0.95,
                    zorder=4 if kind == "learned" else 3, label=f"{name} ({kind})")
        lines.append((c, s))
    ax.set_xlabel(f"mean cost per episode ({cur}{', log scale' if scale == 'log' else ''})")
    rng = f" ({lo:g} … {hi:g})".replace("-", "−") if srange is not None else ""
    ax.set_ylabel(f"mean terminal score{rng}")
    if title is None:
        n = meta.get("n_episodes")
        title = "Score vs cost per episode" + (f" ({n} episodes, 95% CI)" if n is not None else "")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.35)
    ax.xaxis.set_major_formatter(usd_formatter(common=scale != "log"))
    ax.margins(x=0.08, y=0.1)
    if ys:
        ax.set_ylim(*score_limits(min(ys), max(ys), lo, hi))
    if scale == "log":
        ax.grid(True, which="minor", alpha=0.12)
        from matplotlib.ticker import LogLocator, NullFormatter

        lo_x, hi_x = ax.get_xlim()
        if hi_x / lo_x < 200:  # few decades: label 2× and 5× too
            ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
            ax.xaxis.set_minor_formatter(usd_formatter(common=False))
            ax.tick_params(axis="x", which="minor", length=3.5)  # labels of both kinds on one baseline
        else:
            ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(left=0)
    ax.tick_params(axis="both", which="both", labelsize=TICK_FONTSIZE)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        handles.append(Line2D([], [], color="0.45", linewidth=0.8, marker="|", markersize=8, linestyle="-"))
        labels.append("bars: 95% CI of score\n(vertical) and cost (horizontal)")
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    if single_items:
        place_labels(fig, ax, single_items, marks, lines)
    return fig


def plot_cost_score(results: dict, path, title: str | None = None) -> Path:
    """Cost–score plot (PNG, dpi 150): curve routers as lines, the oracle's points and their dashed
    upper convex hull, single models as labelled diamonds; y within the possible score range (whiskers
    cut there too). Returns ``Path(path)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _cost_score_figure(results, title)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def _default_behaviour_budget(results: dict, learned: str) -> Any:
    bp = best_point(routers_of(results).get(learned))
    if bp is not None:
        return bp.get("budget")
    budgets = [b for b in ((results.get("meta") or {}).get("budgets") or []) if num(b) is not None]
    return max(budgets) if budgets else None


def _behaviour_figure(results: dict, budget: Any = "auto", learned: str | None = None):
    from matplotlib.colors import LogNorm

    learned = learned or headline_router(results)

    if isinstance(budget, str) and budget == "auto":
        budget = _default_behaviour_budget(results, learned)
    rs = routers_of(results)
    names, pts = [], []
    for n in ordered_routers(results):
        p = nearest_point(rs[n], budget)
        if p is not None:
            names.append(n)
            pts.append(p)

    fig = new_figure((12, 9.5))
    gs = fig.add_gridspec(2, 2, height_ratios=[1, 1.15])
    ax_sw = fig.add_subplot(gs[0, 0])
    ax_st = fig.add_subplot(gs[0, 1])
    ax_hm = fig.add_subplot(gs[1, :])
    kind_color = {"learned": "#1f77b4", "oracle": "0.25", "heuristic": "#2ca02c", "baseline": "#ff7f0e",
                  "single": "0.65"}
    colors = [kind_color.get(rs[n].get("kind"), "#9467bd") for n in names]
    x = np.arange(len(names))
    bstr = budget_str(budget)

    for ax, key, scale, ylabel, fmt in (
        (ax_sw, "switches", 1.0, "model switches per episode", "{:.1f}"),
        (ax_st, "stay_after_error", 100.0, "stay with same model after error (%)", "{:.0f}"),
    ):
        vals = [num(p.get(key)) for p in pts]
        h = [0.0 if v is None else v * scale for v in vals]
        bars = ax.bar(x, h, color=colors, edgecolor="white")
        labels = [DASH if v is None else fmt.format(v * scale) for v in vals]
        ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=35, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel.split(' (')[0]} — budget {bstr}", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        top = max(h) if h and max(h) > 0 else 1.0
        ax.set_ylim(0, top * 1.15)

    lp = nearest_point(rs.get(learned), budget)
    orr = (lp or {}).get("over_representation") or {}
    meta = results.get("meta") or {}
    tools = [t for t in (meta.get("tools") or []) if t in orr] + [t for t in orr if t not in (meta.get("tools") or [])]
    models_seen = {m for t in tools for m in (orr.get(t) or {})}
    models = [m for m in (meta.get("pool") or []) if m in models_seen] + sorted(models_seen - set(meta.get("pool") or []))
    if tools and models:
        mat = np.full((len(tools), len(models)), np.nan)
        for i, t in enumerate(tools):
            for j, m in enumerate(models):
                v = num((orr.get(t) or {}).get(m))
                if v is not None and v > 0:
                    mat[i, j] = v
        finite = mat[np.isfinite(mat)]
        span = max(2.0, float(np.max(np.abs(np.log(finite))))) if finite.size else 2.0
        span = min(span, math.log(10.0))
        norm = LogNorm(vmin=math.exp(-span), vmax=math.exp(span))
        im = ax_hm.imshow(np.ma.masked_invalid(mat), cmap="RdBu_r", norm=norm, aspect="auto")
        ax_hm.set_xticks(np.arange(len(models)))
        ax_hm.set_xticklabels(models, rotation=20, ha="right")
        ax_hm.set_yticks(np.arange(len(tools)))
        ax_hm.set_yticklabels(tools)
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
        lb = budget_str(lp.get("budget")) if lp else bstr
        ax_hm.set_title(f"{learned}: model over-representation by tool type (budget {lb})", fontsize=10)
    else:
        ax_hm.axis("off")
        ax_hm.text(0.5, 0.5, f"no tool × model over-representation data for '{learned}'",
                   ha="center", va="center", transform=ax_hm.transAxes, color="0.4")
    for a in fig.axes:  # one tick font size everywhere (the colorbar's too)
        a.tick_params(axis="both", which="both", labelsize=TICK_FONTSIZE)
    from matplotlib.patches import Patch

    kinds = [k for k in (*kind_color, "other") if any(rs[n].get("kind", "other") == k or
                                                      (k == "other" and rs[n].get("kind") not in kind_color)
                                                      for n in names)]
    if kinds:  # what the bar colours mean
        fig.legend([Patch(color=kind_color.get(k, "#9467bd")) for k in kinds],
                   [{"single": "single model"}.get(k, k) for k in kinds], loc="upper center", ncol=len(kinds),
                   fontsize=8, frameon=False, title="bar colour = router kind", title_fontsize=8,
                   bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.95) if kinds else None)
    return fig


def plot_behaviour(results: dict, path, budget: Any = "auto", learned: str | None = None) -> Path:
    """Behaviour figure (PNG): bars of switches/episode and stay-after-error per router at
    ``budget`` (default "auto" = the learned router's best-score budget; routers without a point
    at that budget use their nearest one), plus a heatmap of the learned router's tool-type ×
    model over-representation; ``learned`` defaults to ``headline_router``. Returns ``Path(path)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _behaviour_figure(results, budget, learned)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path

