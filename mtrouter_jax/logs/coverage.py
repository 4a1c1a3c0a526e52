"""How well logged data covers each model: turns, exploration and effective sample size.

The estimator learns Q(history, m) only where the logs show m serving turns; a model the logging
policy (almost) never chose stochastically is an extrapolation. ``exploration_report`` counts, per
model, the turns it served, those with a logged propensity, the *explored* ones (chosen with
propensity < 1, i.e. by a stochastic choice) and the Kish effective sample size of their
inverse-propensity weights, ``(sum w)^2 / sum w^2`` with ``w = 1/p``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from mtrouter_jax.logs.io import Episode

EXPLORED_BELOW = 1.0 - 1e-6  # a propensity below this was a stochastic choice


@dataclass(frozen=True)
class ModelCoverage:
    """Coverage of one model in a set of logged episodes."""

    model: str
    turns: int  # turns the model served
    share: float  # of all turns
    with_propensity: int  # turns whose propensity was logged (not null)
    explored: int  # turns chosen with propensity < 1
    ess: float  # Kish effective sample size of 1/propensity over the turns with a propensity

    def to_dict(self) -> dict:
        return asdict(self)


def exploration_report(episodes: Iterable[Episode], models: Sequence[str]) -> list[ModelCoverage]:
    """Per-model coverage of ``episodes`` (models in ``models`` order)."""
    props: dict[str, list[float]] = {m: [] for m in models}
    turns = {m: 0 for m in models}
    total = 0
    for ep in episodes:
        for t in ep.turns:
            total += 1
            turns[t.model] = turns.get(t.model, 0) + 1
            if t.propensity is not None:
                props.setdefault(t.model, []).append(float(t.propensity))
    out = []
    for m in models:
        p = np.asarray(props.get(m, []), np.float64)
        w = 1.0 / np.clip(p, 1e-6, 1.0)
        ess = float(w.sum() ** 2 / (w ** 2).sum()) if len(w) else 0.0
        out.append(ModelCoverage(m, turns[m], turns[m] / max(total, 1), len(p), int((p < EXPLORED_BELOW).sum()), ess))
    return out


def coverage_warnings(report: Sequence[ModelCoverage], min_explored: int = 20,
                      min_share_of_uniform: float = 0.2) -> list[str]:
    """One line per model the logs (almost) never explored: fewer than ``min_explored`` explored
    turns, or a turn share below ``min_share_of_uniform`` of a uniform share."""
    n = len(report)
    out = []
    for c in report:
        if c.turns == 0:
            out.append(f"{c.model}: never served a logged turn; its predictions are pure extrapolation")
        elif c.share < min_share_of_uniform / n:
            out.append(f"{c.model}: served only {c.turns} turns ({100 * c.share:.1f}% of all); "
                       "its predictions rest on very little data")
        elif c.explored < min_explored:
            out.append(f"{c.model}: only {c.explored} turns chosen by exploration (propensity < 1); log with "
                       "--explore (e.g. sticky:0.9) so its value is measured, not inferred from one policy")
    return out


__all__ = ["ModelCoverage", "exploration_report", "coverage_warnings"]
