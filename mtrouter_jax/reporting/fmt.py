"""Display formatting of sweep numbers (tables, plots, summaries); a missing value prints as "—"."""

from __future__ import annotations

import math
from typing import Any

from mtrouter_jax.reporting.results import num

__all__ = ["DASH", "usd", "pct", "fixed", "score_ci", "budget_str", "duration"]

DASH = "—"


def usd(x: Any) -> str:
    """Dollars with enough decimals to show 3 significant digits of small amounts."""
    v = num(x)
    if v is None:
        return DASH
    if v == 0:
        return "$0"
    a = abs(v)
    if a < 1e-4:
        return f"${v:.2e}"
    decimals = max(2, 2 - math.floor(math.log10(a)))
    return f"${v:.{decimals}f}"


def pct(x: Any, digits: int = 1) -> str:
    """A fraction as a percentage."""
    v = num(x)
    return DASH if v is None else f"{100.0 * v:.{digits}f}%"


def fixed(x: Any, digits: int = 1) -> str:
    """A number with ``digits`` decimals."""
    v = num(x)
    return DASH if v is None else f"{v:.{digits}f}"


def score_ci(p: dict) -> str:
    """A point's "score ± 95% CI"."""
    s = num(p.get("score"))
    if s is None:
        return DASH
    ci = num(p.get("score_ci"))
    return f"{s:.1f}" if ci is None else f"{s:.1f} ± {ci:.1f}"


def budget_str(b: Any) -> str:
    """A budget in dollars, or "no cap"."""
    v = num(b)
    return "no cap" if v is None else usd(v)


def duration(seconds: float) -> str:
    """Wall time as people read it: ``0.8 s``, ``42 s``, ``3 min 35 s``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"
