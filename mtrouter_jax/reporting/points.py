"""Sweep points from logged episodes: the simulator's per-budget metrics, computed from trajectory lines.

``point_from_episodes`` returns the same dict ``evaluate.summarise_point`` builds from simulated
rollouts (score and cost with 95% CIs, switches, stay-after-error, tool specialisation, budget
truncations), so real episodes (ScienceWorld, live logs) go through the one reporting path
(``report.write_results``: table, cost–score and behaviour plots, results.json/csv, summary.md).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from mtrouter_jax.logs.io import Episode
from mtrouter_jax.core.pool import Pool
from mtrouter_jax.core.stats import ci95 as _ci, paired_mean_ci


def point_from_episodes(episodes: Sequence[Episode], budget: float | None, lam: float | None, pool: Pool,
                        tools: Sequence[str]) -> dict:
    """One sweep point (``evaluate.summarise_point``'s keys) from finished, scored episodes."""
    eps = [e for e in episodes if e.score is not None]
    if not eps:
        raise ValueError("no scored episodes for this point")
    names = pool.names
    score = np.array([e.score for e in eps], np.float64)
    cost = np.array([e.total_cost for e in eps], np.float64)
    counts = np.zeros((len(tools), len(names)))
    switches, after, stayed, turns, miss, truncated, over = [], 0, 0, [], [], 0, 0
    for e in eps:
        ms = [t.model for t in e.turns]
        switches.append(sum(a != b for a, b in zip(ms, ms[1:])))
        turns.append(len(ms))
        m_miss = 0.0
        for i, t in enumerate(e.turns):
            if t.tool in tools:
                counts[list(tools).index(t.tool), names.index(t.model)] += 1
            if i and ms[i] != ms[i - 1]:  # the previous prompt re-billed at the full input price
                spec = pool[t.model]
                m_miss += e.turns[i - 1].input_tokens * (spec.price_input - spec.price_cached_input) / 1e6
            if i + 1 < len(e.turns) and t.error is not None:
                after += 1
                stayed += ms[i + 1] == ms[i]
        miss.append(m_miss)
        ended = str((e.meta or {}).get("ended_by") or (e.meta or {}).get("ended") or "")
        truncated += ended.startswith("budget")
        over += budget is not None and e.total_cost > budget * (1 + 1e-9)
    total = counts.sum()
    model_share = counts.sum(0) / max(total, 1.0)
    tool_share = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)
    over_rep = np.where(model_share[None] > 0, tool_share / np.where(model_share[None] > 0, model_share[None], 1), 0)
    return {
        "budget": None if budget is None or not math.isfinite(budget) else float(budget),
        "lam": None if lam is None else float(lam),
        "score": float(score.mean()), "score_ci": _ci(score), "cost": float(cost.mean()), "cost_ci": _ci(cost),
        "cache_miss_cost": float(np.mean(miss)), "switches": float(np.mean(switches)),
        "stay_after_error": stayed / after if after else None,
        "over_budget_rate": over / len(eps), "budget_truncated_rate": truncated / len(eps),
        "turns": float(np.mean(turns)), "n_episodes": len(eps),
        "tool_model_share": {t: {m: float(tool_share[k, j]) for j, m in enumerate(names)}
                             for k, t in enumerate(tools) if counts[k].sum() > 0},
        "model_share": {m: float(model_share[j]) for j, m in enumerate(names)},
        "over_representation": {t: {m: float(over_rep[k, j]) for j, m in enumerate(names)}
                                for k, t in enumerate(tools) if counts[k].sum() > 0},
    }


def pair_key(e: Episode) -> str:
    """What pairs one router's episode with another's: the ``base`` id before the router label
    (``meta.base_id``), else the episode id."""
    return (e.meta or {}).get("base_id", e.episode_id)


def budget_mix(costs: Mapping[float, float], target: float) -> tuple[float, float, float] | None:
    """The two budgets ``(lo, hi, w_lo)`` whose per-episode mix spends ``target`` on average:
    draw budget ``lo`` with probability ``w_lo`` and ``hi`` otherwise. ``costs`` maps each budget a
    router ran at to its mean cost per episode.

    A router compared "at equal cost" with another need not be held to a hard cap at the other's
    *mean* cost (which cuts its long episodes while the other spends above its mean on some): a
    budget mix spends exactly the target on average and is a policy the router can run. ``lo`` is
    the largest budget spending at most ``target``, ``hi`` the smallest larger budget spending more;
    with no such ``hi`` (every larger budget spends at most the target) it is ``(lo, lo, 1.0)``.
    ``None`` when no budget spends at most ``target``."""
    under = [b for b, c in costs.items() if c <= target]
    if not under:
        return None
    lo = max(under)
    over = [b for b, c in costs.items() if b > lo and c > target]
    if not over:
        return lo, lo, 1.0
    hi = min(over)
    c_lo, c_hi = costs[lo], costs[hi]
    return lo, hi, float((c_hi - target) / (c_hi - c_lo))


def paired_difference(a: Sequence[Episode], b: Sequence[Episode]) -> tuple[float, float, int]:
    """Mean score difference a - b over the episodes both ran (matched by ``pair_key``), with its
    95% CI and the number of pairs."""
    return paired_mean_ci({pair_key(e): e.score for e in a if e.score is not None},
                          {pair_key(e): e.score for e in b if e.score is not None})


__all__ = ["point_from_episodes", "pair_key", "paired_difference", "budget_mix"]
