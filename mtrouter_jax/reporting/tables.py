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
shown as "—" (tables) or omitted (summary sentences).

This module renders tables (rich) and writes the result files; the pieces live in their own
modules and are re-exported here: pure metrics in ``metrics``, number formatting in ``fmt``,
plots in ``plots`` (matplotlib, imported only when plotting), the markdown summary in ``summary``
and ``to_jsonable`` in ``jsonable``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Iterable

from mtrouter_jax.reporting.fmt import DASH, budget_str, fixed, pct, score_ci, usd
from mtrouter_jax.core.jsonable import to_jsonable
from mtrouter_jax.reporting.results import (AIQ_NEEDS_A_CURVE, CURVE_KINDS, KIND_ORDER, aiq_by_router, best_point, budget_key, max_cost, num,
                                  ordered_routers, points_of, routers_of, specialisations)
# _cost_score_figure: re-exported because callers (tests) built the figure through this module
from mtrouter_jax.reporting.plots import _cost_score_figure, cost_axis_scale, plot_behaviour, plot_cost_score  # noqa: F401
from mtrouter_jax.reporting.summary import summary_markdown

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
    rs = routers_of(results)
    names = ordered_routers(results, routers)
    prev_kind = None
    for name in names:
        r = rs[name]
        kind = r.get("kind", "?")
        pts = sorted(points_of(r), key=lambda p: (budget_key(p.get("budget")), num(p.get("cost")) or 0.0))
        if prev_kind is not None and kind != prev_kind:
            t.add_section()
        prev_kind = kind
        if not pts:
            t.add_row(name, kind, *([DASH] * 7))
            continue
        for i, p in enumerate(pts):
            ob = num(p.get("over_budget_rate"))
            ob_s = pct(ob)
            if ob is not None and ob > 0:
                ob_s = f"[red]{ob_s}[/red]"
            t.add_row(
                name if i == 0 else "",
                kind if i == 0 else "",
                budget_str(p.get("budget")),
                score_ci(p),
                usd(p.get("cost")),
                usd(p.get("cache_miss_cost")),
                fixed(p.get("switches"), 2),
                pct(p.get("stay_after_error")),
                ob_s,
            )
    return t


def aiq_table(results: dict):
    """Compact rich Table: AIQ per router over the common max cost, plus its best point."""
    from rich.table import Table

    mc = max_cost(results)
    cur = (results.get("meta") or {}).get("currency", "USD")
    t = Table(title=f"AIQ (mean achievable score over budgets in [0, {usd(mc)}])", header_style="bold")
    t.add_column("router", style="bold")
    t.add_column("kind", style="dim")
    t.add_column("AIQ", justify="right")
    t.add_column("best score", justify="right")
    t.add_column(f"at {cur}/episode", justify="right")
    rs = routers_of(results)
    a = aiq_by_router(results)
    if any(n not in a for n in rs):
        t.caption = f"{DASH} = {AIQ_NEEDS_A_CURVE}"
    for name in ordered_routers(results):
        bp = best_point(rs[name])
        t.add_row(
            name,
            rs[name].get("kind", "?"),
            fixed(a.get(name), 2),
            fixed(bp.get("score") if bp else None),
            usd(bp.get("cost") if bp else None),
        )
    return t


def print_results(results: dict, console=None) -> None:
    """Print :func:`results_table` and :func:`aiq_table` to ``console`` (a new rich Console if None)."""
    if console is None:
        import sys

        from rich.console import Console

        # as `mtrouter run` does: wide tables even when stdout is a pipe or a CI log (not cut to 80 columns)
        console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(results_table(results))
    console.print(aiq_table(results))



# --------------------------------------------------------------------------- files


CSV_COLUMNS = [
    "router", "kind", "budget", "lam", "score", "score_ci", "cost", "cost_ci", "cache_miss_cost",
    "switches", "stay_after_error", "over_budget_rate", "budget_truncated_rate", "aiq",
    "model_share", "top_over_representation",
]


def _csv_rows(results: dict) -> list[dict]:
    rs = routers_of(results)
    a = aiq_by_router(results)
    rows = []
    for n in ordered_routers(results):
        r = rs[n]
        for p in points_of(r):
            row = {"router": n, "kind": r.get("kind", "")}
            for k in CSV_COLUMNS[2:13]:
                v = num(p.get(k))
                row[k] = "" if v is None else repr(v)
            row["aiq"] = "" if a.get(n) is None else repr(a[n])
            ms = p.get("model_share")
            row["model_share"] = json.dumps(to_jsonable(ms), allow_nan=False, sort_keys=True) if ms else ""
            spec = specialisations(p, min_ratio=-math.inf, top=5)
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
