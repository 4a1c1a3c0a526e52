"""Pure summaries of a budget-sweep ``results`` dict: point selection, AIQ, tool specialisation.

No plotting or terminal code here (tables, plots and the markdown summary live in ``report``,
``plots`` and ``summary``). Every function tolerates missing keys, ``None`` and NaN: a value that is
not a finite number reads as ``None`` and a point without a finite score and cost is not "valid".
The ``results`` layout is described in :mod:`mtrouter_jax.reporting.tables`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from mtrouter_jax.reporting.curves import aiq

__all__ = ["KIND_ORDER", "CURVE_KINDS", "num", "same_budget", "routers_of", "points_of", "valid_points",
           "best_point", "point_at_budget", "budget_key", "nearest_point", "ordered_routers", "max_cost",
           "aiq_by_router", "has_curve", "AIQ_NEEDS_A_CURVE", "specialisations", "headline_router"]

KIND_ORDER = ("learned", "oracle", "heuristic", "baseline", "single")
CURVE_KINDS = ("learned", "oracle", "heuristic", "baseline")


def num(x: Any) -> float | None:
    """A finite float, or None (for None / NaN / inf / non-numbers)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def same_budget(a: Any, b: Any) -> bool:
    """Equal budgets up to float noise; two uncapped (None) budgets are equal."""
    va, vb = num(a), num(b)
    if va is None or vb is None:
        return va is None and vb is None
    return math.isclose(va, vb, rel_tol=1e-9, abs_tol=1e-12)


def routers_of(results: dict) -> dict[str, dict]:
    """``results["routers"]`` (an empty dict when absent)."""
    return dict(results.get("routers") or {})


def points_of(router: dict | None) -> list[dict]:
    """A router's points that are dicts, in stored order."""
    if not router:
        return []
    return [p for p in (router.get("points") or []) if isinstance(p, dict)]


def valid_points(router: dict | None) -> list[dict]:
    """Points with a finite score and cost, sorted by cost (ties by score)."""
    pts = [p for p in points_of(router) if num(p.get("score")) is not None and num(p.get("cost")) is not None]
    return sorted(pts, key=lambda p: (num(p["cost"]), num(p["score"])))


def best_point(router: dict | None) -> dict | None:
    """Highest-score point; ties go to the cheaper one."""
    pts = valid_points(router)
    if not pts:
        return None
    return max(pts, key=lambda p: (num(p["score"]), -num(p["cost"])))


def point_at_budget(router: dict | None, budget: Any) -> dict | None:
    """The router's point at exactly ``budget`` (None = uncapped), or None."""
    for p in points_of(router):
        if same_budget(p.get("budget"), budget):
            return p
    return None


def budget_key(b: Any) -> float:
    """Sort key of a budget: an uncapped budget sorts last (inf)."""
    v = num(b)
    return math.inf if v is None else v


def nearest_point(router: dict | None, budget: Any) -> dict | None:
    """The point at ``budget`` if there is one, else the one with the nearest budget (an uncapped
    point counts as an infinite budget), else the best point."""
    p = point_at_budget(router, budget)
    if p is not None:
        return p
    pts = points_of(router)
    if not pts:
        return None
    if len(pts) == 1:
        return pts[0]
    target = budget_key(budget)

    def dist(q: dict) -> float:
        k = budget_key(q.get("budget"))
        if math.isinf(k) and math.isinf(target):
            return 0.0
        return abs(k - target) if not (math.isinf(k) or math.isinf(target)) else math.inf

    best = min(pts, key=dist)
    return best if math.isfinite(dist(best)) else (best_point(router) or pts[0])


def ordered_routers(results: dict, routers: Iterable[str] | None = None) -> list[str]:
    """Router names grouped by kind (learned, oracle, heuristic, baseline, single, other), keeping
    the dict order within a kind. ``routers`` restricts (unknown names are ignored)."""
    rs = routers_of(results)
    names = list(rs) if routers is None else [n for n in routers if n in rs]
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    return sorted(names, key=lambda n: (rank.get(rs[n].get("kind"), len(KIND_ORDER)), names.index(n)))


def headline_router(results: dict, default: str = "mtrouter") -> str:
    """The learned row a report speaks of: the one ``mtrouter serve`` would route the checkpoint with
    (``meta.serving_router``, set by the simulator's sweep: the safe row for an ensemble) where the
    results have it, else ``default``."""
    serving = (results.get("meta") or {}).get("serving_router")
    return serving if serving in routers_of(results) else default


def max_cost(results: dict) -> float | None:
    """The largest finite mean cost of any point of any router (the common AIQ range)."""
    costs = [num(p.get("cost")) for r in routers_of(results).values() for p in points_of(r)]
    costs = [c for c in costs if c is not None]
    return max(costs) if costs else None


AIQ_NEEDS_A_CURVE = "one point: AIQ needs a curve"  # the footnote of a router shown without an AIQ


def has_curve(router: dict | None) -> bool:
    """At least two valid points at different costs: what AIQ needs. A single point (a fixed model,
    or any router evaluated at one budget) has no curve to average along, and its AIQ over the
    common range would only say where that point lies (0 for the most expensive one)."""
    return len({num(p["cost"]) for p in valid_points(router)}) >= 2


def aiq_by_router(results: dict) -> dict[str, float]:
    """AIQ (:func:`curves.aiq`) of every router with a curve (:func:`has_curve`), over a common
    ``max_cost`` = the largest mean cost of any point of any router. Routers with one point are left
    out (tables show them as "—", footnoted :data:`AIQ_NEEDS_A_CURVE`)."""
    mc = max_cost(results)
    out: dict[str, float] = {}
    if mc is None or not mc > 0:
        return out
    rs = routers_of(results)
    for name in ordered_routers(results):
        if has_curve(rs[name]):
            pts = valid_points(rs[name])
            out[name] = aiq([p["cost"] for p in pts], [p["score"] for p in pts], max_cost=mc)
    return out


def specialisations(point: dict | None, min_ratio: float = 1.3, top: int = 5) -> list[tuple[str, str, float]]:
    """The ``top`` (tool, model, ratio) over-representations of a point with ratio >= ``min_ratio``,
    largest first."""
    orr = (point or {}).get("over_representation") or {}
    out = []
    for tool, row in orr.items():
        for model, v in (row or {}).items():
            r = num(v)
            if r is not None and r >= min_ratio:
                out.append((str(tool), str(model), r))
    out.sort(key=lambda e: -e[2])
    return out[:top]

