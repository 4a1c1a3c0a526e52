"""Cost–score curve summaries (host-side numpy): non-decreasing upper hull, AIQ, cost-to-target."""

from __future__ import annotations

import numpy as np


def _as_points(costs, scores) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(costs, np.float64).reshape(-1)
    s = np.asarray(scores, np.float64).reshape(-1)
    if c.shape != s.shape:
        raise ValueError(f"costs and scores differ in length: {c.size} vs {s.size}")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(s))):
        raise ValueError("costs and scores must be finite")
    return c, s


def upper_convex_hull(costs, scores) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing upper concave envelope of (cost, score) operating points.

    RouterBench's AIQ convention (arXiv 2403.12031): a router can mix two policies at random, so
    every point on a segment between two operating points is achievable, and paying more to score
    less is never necessary. Hence: keep the best score per cost, take the upper hull, and cut it
    at its (cheapest) maximum score. Points strictly inside the hull, on it collinearly, or
    dominated are dropped.

    Returns:
        ``(hull_costs, hull_scores)``, float64, costs strictly increasing and scores strictly
        increasing (a single point when the cheapest point is also the best).
    """
    c, s = _as_points(costs, scores)
    if c.size == 0:
        raise ValueError("upper_convex_hull needs at least one point")
    # Best score at each distinct cost (a vertical hull edge would never be used).
    order = np.lexsort((s, c))
    c, s = c[order], s[order]
    last_of_cost = np.append(c[1:] != c[:-1], True)
    c, s = c[last_of_cost], s[last_of_cost]

    # Andrew's monotone chain, upper part: drop the middle point unless it turns right.
    hc: list[float] = []
    hs: list[float] = []
    for x, y in zip(c, s):
        while len(hc) >= 2:
            cross = (hc[-1] - hc[-2]) * (y - hs[-2]) - (hs[-1] - hs[-2]) * (x - hc[-2])
            if cross < 0:
                break
            hc.pop()
            hs.pop()
        hc.append(float(x))
        hs.append(float(y))
    # A concave hull rises then falls; the falling part is dominated by its peak.
    peak = int(np.argmax(hs))
    return np.asarray(hc[: peak + 1]), np.asarray(hs[: peak + 1])


def aiq(costs, scores, max_cost: float | None = None) -> float:
    """Average improvement in quality (AIQ) of a set of operating points.

    Exact definition used here: with ``h`` the :func:`upper_convex_hull`, extended flat at its
    last (highest) score up to ``max_cost`` and taken as 0 below the cheapest point ``c_min``,

        ``AIQ = (1 / max_cost) * integral_{c_min}^{max_cost} h(c) dc``,

    i.e. the mean achievable score over budgets uniformly drawn from ``[0, max_cost]``, where a
    budget below the cheapest operating point scores 0. ``max_cost`` defaults to the largest
    cost among the points; if it is below some hull points, the hull is cut at ``max_cost``.
    Note this differs from RouterBench's normalisation by ``c_max - c_min``: ours rewards being
    cheap at the low end and is defined for a single point (whose AIQ is then 0 with the default
    ``max_cost``).
    """
    hc, hs = upper_convex_hull(costs, scores)
    if max_cost is None:
        max_cost = float(np.max(np.asarray(costs, np.float64)))
    max_cost = float(max_cost)
    if not max_cost > 0:
        raise ValueError(f"aiq needs max_cost > 0, got {max_cost}")
    if max_cost <= hc[0]:
        return 0.0
    # Piecewise-linear h on [c_min, max_cost]: append the flat extension, then cut at max_cost.
    xs = np.append(hc, max(max_cost, hc[-1]))
    ys = np.append(hs, hs[-1])
    keep = xs < max_cost
    x_cut = np.append(xs[keep], max_cost)
    y_cut = np.append(ys[keep], np.interp(max_cost, xs, ys))
    area = float(np.sum((x_cut[1:] - x_cut[:-1]) * (y_cut[1:] + y_cut[:-1]) / 2.0))
    return area / max_cost


def first_cost_reaching(costs, scores, target_score: float) -> float:
    """Smallest cost at which the curve through the points (sorted by cost) reaches a target.

    The curve is the piecewise-linear interpolation of the raw points sorted by cost (ties by
    score), not the hull. Returns ``nan`` if no point reaches ``target_score`` (or no points).
    """
    c, s = _as_points(costs, scores)
    if c.size == 0:
        return float("nan")
    order = np.lexsort((s, c))
    c, s = c[order], s[order]
    if s[0] >= target_score:
        return float(c[0])
    for i in range(1, c.size):
        if s[i] >= target_score:
            # s[i-1] < target <= s[i] here, so the slope is positive.
            frac = (target_score - s[i - 1]) / (s[i] - s[i - 1])
            return float(c[i - 1] + frac * (c[i] - c[i - 1]))
    return float("nan")
