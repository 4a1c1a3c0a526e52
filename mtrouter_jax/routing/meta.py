"""What a router reads from a checkpoint's metadata: λ per budget and expected episode lengths."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from mtrouter_jax.core.stats import paired_mean_ci
from mtrouter_jax.routing.specs import RouterSpecError


# λ of a checkpoint without a calibrated table: the middle of the 0-0.2 range the simulator's
# calibration picks for checkpoints trained here (docs/benchmarks.md); the paper's 1.0 sends almost
# every turn to the cheapest capable model.
DEFAULT_LAM = 0.1


def lam_for_budget(table: Sequence[Mapping] | None, budget: float | None, default: float = DEFAULT_LAM) -> float:
    """λ for a per-episode ``budget`` from a calibrated ``[{"budget": USD, "lam": λ}, ...]`` table:
    linear in log(budget) between entries, clamped at the ends; no budget -> the largest budget's
    entry (or an explicit ``budget: null`` one); no table -> ``default``."""
    rows = [r for r in (table or []) if r.get("lam") is not None]
    if not rows:
        return float(default)
    capped = sorted((float(r["budget"]), float(r["lam"])) for r in rows if r.get("budget") is not None)
    uncapped = [float(r["lam"]) for r in rows if r.get("budget") is None]
    if budget is None or not math.isfinite(budget):
        return uncapped[0] if uncapped else capped[-1][1]
    if not capped:
        return uncapped[0]
    xs = np.log([b for b, _ in capped])
    return float(np.interp(math.log(budget), xs, [l for _, l in capped]))


def select_lambda(scores_by_lam: Mapping[float, Mapping]) -> float:
    """The λ a router runs at under one budget, from its per-episode calibration scores
    (``{λ: {episode key: score}}``, the same episodes for every λ): the smallest λ (the most
    score-seeking) unless the λ with the best mean beats it by a paired difference whose 95 % lower
    bound is above 0. The best mean alone over a grid of λ is a winner's-curse pick: most of its
    margin is the noise of the calibration episodes (docs/benchmarks.md, "Real episodes")."""
    grid = sorted(float(k) for k in scores_by_lam)
    if not grid:
        raise ValueError("select_lambda needs at least one λ")
    by = {float(k): v for k, v in scores_by_lam.items()}
    means = {lam: float(np.mean(list(by[lam].values()))) if by[lam] else -np.inf for lam in grid}
    base = grid[0]
    best = max(grid, key=lambda lam: (means[lam], -lam))  # a tie keeps the smaller λ
    if best == base:
        return base
    d, ci, n = paired_mean_ci(by[best], by[base])
    return best if n > 1 and d - ci > 0 else base


def lam_table_of(meta: Mapping | None, env: str | None = None) -> tuple[str | None, list]:
    """(environment, table) of a checkpoint's ``lam_tables`` metadata: ``env`` if given, else the only
    one, else "scienceworld" before "sim"."""
    tables = dict((meta or {}).get("lam_tables") or {})
    if env is not None:
        if env not in tables:
            raise RouterSpecError(f"the checkpoint has no λ table for {env!r} (it has: {', '.join(tables) or 'none'})",
                                  "--lam-table")
        return env, tables[env]
    for name in ([next(iter(tables))] if len(tables) == 1 else ["live", "scienceworld", "sim"]):
        if name in tables:
            return name, tables[name]
    return None, []


def expected_steps_for(meta: Mapping | None, task_types: Sequence[str]) -> np.ndarray:
    """Expected episode length per task type from checkpoint metadata (``targets.expected_steps``);
    task types it does not know get the median of the known ones (30 when there are none)."""
    known = dict(((meta or {}).get("targets") or {}).get("expected_steps") or {})
    default = float(np.median(list(known.values()))) if known else 30.0
    return np.array([float(known.get(t, default)) for t in task_types], np.float32)


def serves_safe(estimator) -> bool:
    """Whether a checkpoint is served by the safe rule by default: it needs an ensemble (one estimator
    has no spread to be safe with, so the rule would be the greedy one) and a fitted reference.
    On real episodes the safe rule was never significantly worse than the greedy one and sometimes
    much better; in the simulator about equal (docs/benchmarks.md). ``mtrouter serve`` and the
    simulator's sweep both decide by this."""
    if estimator is None:
        return False
    return _safe_rule(getattr(estimator, "k", 1), getattr(estimator, "meta", None))


def serves_safe_meta(meta: dict | None) -> bool:
    """``serves_safe`` read from a checkpoint's metadata alone (no weights loaded): ``mtrouter eval
    scienceworld`` picks its default learned row by it, so that row is the router ``serve`` serves."""
    return _safe_rule(((meta or {}).get("ensemble") or {}).get("k", 1), meta)


def _safe_rule(k, meta: dict | None) -> bool:
    return int(k or 1) > 1 and bool((meta or {}).get("reference"))


__all__ = ["serves_safe", "serves_safe_meta", "DEFAULT_LAM", "lam_for_budget", "select_lambda", "lam_table_of", "expected_steps_for"]
