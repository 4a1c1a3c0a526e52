"""The reference policy the logs can vouch for, and the support counts of the safe router.

Candidates: every single model, the best single model per task type, the tool-type heuristic
(``routers.DEFAULT_TOOL_CLASSES``) and a last-tool-type → model table fitted from the logs. Each is
a table ``model[task index, last tool index]`` over the checkpoint layout (plus "other" buckets and
the first turn). A candidate's value is estimated from the logged episodes that *followed* it —
at least ``agreement`` of their turns served by the model the table names — as the mean
normalised score, with a Student-t 95% CI (a candidate may be vouched for by as few as
``min_episodes`` episodes, where the normal interval is too narrow); the reference is the candidate with the best lower bound among
those with at least ``min_episodes`` such episodes (the agreement is relaxed step by step when
none has). Sticky logging makes single models easy to vouch for (long single-model stretches);
heuristic-with-exploration logs (docs/live_loop.md) vouch for the heuristic.

Followers are mostly short episodes, and a mixed table (any candidate but a single model) is
followed closely only in some task types, so its followers' mean flatters it. In the budget tiers a
mixed table's lower bound is therefore capped at that of the best single model it can afford plus
its mean gain over that model *within* the task types both are followed in (weighted by the task
types' shares of the log): it displaces the single model only where it is better task for task.

A router that drafts (``routing/draft.py``) does not get what a reference's followers got: its
drafts of the escalated types are re-served. So the tiers are also priced under drafting
(``draft_tiers``): at budgets b of a log-spaced grid, each follower's score with the turns the live
gate would re-serve under b replaced by the re-serving model's mean gain
(``draft.drafted_value_change``), as an entry affordable from max(b, the tier's cost) up. A drafting
router picks among the logged tiers and these entries by the same rule: a cheap model whose only
weakness drafting repairs can then be the reference where, as logged, an expensive one looked
better (docs/live.md, "Which reference a drafting router keeps to").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np

from mtrouter_jax.core.features import FeatureLayout, vocab_index
from mtrouter_jax.logs.io import Episode
from mtrouter_jax.core.pool import Pool
from mtrouter_jax.core.pricing import call_cost
from mtrouter_jax.core.stats import t_ci95

AGREEMENTS = (0.8, 0.6, 0.5)


@dataclass(frozen=True)
class Reference:
    """The chosen reference table and what the logs say about every candidate."""

    name: str
    table: np.ndarray  # (T+1, K+2) int32 model index
    support: np.ndarray  # (T+1, K+2, M) logged turns per (task, last tool, model)
    seen: np.ndarray  # (T+1,) bool: task types with logged episodes
    candidates: list[dict]  # name, mean, ci, n, agreement, cost / turns / task_types (of the followers), replayed_cost
    tiers: tuple = ()  # (names, tables (R, T+1, K+2), costs (R,), lcbs (R,)): every vouched candidate
    draft_tiers: tuple = ()  # (tier index (R2,), costs (R2,), lcbs (R2,), {"test", "n_min"}): tiers priced under drafting

    def to_meta(self) -> dict:
        d = {"name": self.name, "table": self.table.tolist(), "support": self.support.tolist(),
             "seen": self.seen.tolist(), "candidates": self.candidates}
        if self.tiers:
            names, tables, costs, lcbs = self.tiers
            d["tiers"] = {"names": list(names), "tables": np.asarray(tables).tolist(),
                          "costs": np.asarray(costs).tolist(), "lcbs": np.asarray(lcbs).tolist()}
        if self.draft_tiers:
            index, costs, lcbs, fit = self.draft_tiers
            d["draft_tiers"] = {"index": np.asarray(index).tolist(), "costs": np.asarray(costs).tolist(),
                                "lcbs": np.asarray(lcbs).tolist(), **fit}
        return d

    @classmethod
    def from_meta(cls, d: dict) -> "Reference":
        t = d.get("tiers")
        tiers = () if not t else (tuple(t["names"]), np.asarray(t["tables"], np.int32),
                                  np.asarray(t["costs"], np.float32), np.asarray(t["lcbs"], np.float32))
        dt = d.get("draft_tiers")
        draft_tiers = () if not dt or not tiers else (
            np.asarray(dt["index"], np.int32), np.asarray(dt["costs"], np.float32), np.asarray(dt["lcbs"], np.float32),
            {k: v for k, v in dt.items() if k not in ("index", "costs", "lcbs")})
        return cls(d["name"], np.asarray(d["table"], np.int32), np.asarray(d["support"], np.float32),
                   np.asarray(d["seen"], bool), list(d.get("candidates", [])), tiers, draft_tiers)

    @property
    def draft_fit(self) -> tuple[str, float] | None:
        """(escalation test, n_min) the tiers were priced under drafting for (``budget_tiers``), or None."""
        if not self.draft_tiers:
            return None
        fit = self.draft_tiers[-1]
        return fit["test"], float(fit["n_min"])

    def _priced(self, drafting: tuple[str, float] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tier indices, costs, lcbs) for a router that drafts with (test, n_min), or None: the logged
        tiers, plus those priced under drafting when they were priced for those settings."""
        names, _, costs, lcbs = self.tiers
        if drafting is not None and self.draft_fit == (drafting[0], float(drafting[1])):
            index, d_costs, d_lcbs, _ = self.draft_tiers
            return (np.r_[np.arange(len(names)), index].astype(np.int32), np.r_[costs, d_costs].astype(np.float32),
                    np.r_[lcbs, d_lcbs].astype(np.float32))
        return np.arange(len(names), dtype=np.int32), costs, lcbs

    def by_budget(self, drafting: tuple[str, float] | None = None) -> list[dict]:
        """Which reference serves which budgets: ``[{"from_usd": c, "reference": name}, ...]``
        (ascending; below the first threshold the cheapest tier serves); ``drafting``: (test, n_min)
        of a drafting router (``budget_tiers``)."""
        if not self.tiers:
            return [{"from_usd": 0.0, "reference": self.name}]
        from mtrouter_jax.routing.policies import reference_tier  # the rule the safe router applies per episode

        index, costs, lcbs = self._priced(drafting)
        names = [self.tiers[0][i] + ("+draft" if k >= len(self.tiers[0]) else "") for k, i in enumerate(index)]
        out: list[dict] = []
        for c in sorted(set(float(x) for x in costs)):
            best = names[int(reference_tier(np.float32(c), costs, lcbs))]
            if not out or out[-1]["reference"] != best:
                out.append({"from_usd": round(c, 6), "reference": best})
        return out

    def budget_tiers(self, drafting: tuple[str, float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tables (R, T+1, K+2), USD per episode (R,), lower bounds (R,)) for ``routing.safe``: per
        episode budget, the vouched candidate with the best lower bound whose cost (``replayed_cost``)
        fits the budget. ``drafting``: (escalation test, n_min) of a router that drafts; its costs and
        bounds are the ones priced under drafting where they were fitted for those settings. A
        checkpoint from before tiers: its one table, at any budget."""
        if self.tiers:
            index, costs, lcbs = self._priced(drafting)
            return self.tiers[1][index], costs, lcbs
        return self.table[None], np.zeros(1, np.float32), np.zeros(1, np.float32)


def _starts(episode: np.ndarray) -> np.ndarray:
    return np.concatenate([[True], episode[1:] != episode[:-1]]) if episode.size else np.zeros(0, bool)


class LoggedTurns(NamedTuple):
    """Every turn of the scored logged episodes, flat, in log order (indices over the checkpoint layout)."""

    episode: np.ndarray  # (N,) int: the turn's episode, 0..n_episodes-1
    task: np.ndarray  # (N,) int: its episode's task index
    last: np.ndarray  # (N,) int: the last tool index before the turn (K+1 = first turn, K = "other")
    model: np.ndarray  # (N,) int: the model that served it
    prompt: np.ndarray  # (N,) float: its input tokens
    completion: np.ndarray  # (N,) float: its output tokens
    n_episodes: int

    @classmethod
    def of(cls, episodes: Sequence[Episode], layout: FeatureLayout) -> "LoggedTurns":
        k = len(layout.tools)
        task = vocab_index(layout.task_types, [e.task_type for e in episodes]).astype(np.int64)
        lengths = np.array([len(e.turns) for e in episodes], np.int64)
        turns = [t for e in episodes for t in e.turns]
        tools = vocab_index(layout.tools, [t.tool for t in turns]) if turns else np.zeros(0, np.int64)
        tools = np.where(tools < 0, k, tools)  # a turn with no tool type counts as "other"
        episode = np.repeat(np.arange(len(episodes)), lengths)
        last = np.where(_starts(episode), k + 1, np.concatenate([[k + 1], tools[:-1]])).astype(np.int64)
        pos = {n: i for i, n in enumerate(layout.models)}
        model = np.array([pos[t.model] for t in turns], np.int64)
        prompt = np.array([t.input_tokens for t in turns], np.float64)
        completion = np.array([t.output_tokens for t in turns], np.float64)
        return cls(episode, np.repeat(task, lengths), last, model, prompt, completion, len(episodes))

    @property
    def first(self) -> np.ndarray:
        """(N,) bool: the turn opens its episode."""
        return _starts(self.episode)

    def agreement(self, table: np.ndarray) -> np.ndarray:
        """(n_episodes,) share of each episode's turns served by the model ``table`` names there."""
        agree = (self.model == table[self.task, self.last]).astype(np.float64)
        return np.bincount(self.episode, agree, self.n_episodes) / np.bincount(self.episode, minlength=self.n_episodes)


def normalised(ep: Episode, default_range: Sequence[float]) -> float:
    lo, hi = ep.score_range or default_range
    return (float(ep.score) - lo) / (hi - lo)


def replayed_cost(table: np.ndarray, log: LoggedTurns, prices: np.ndarray, out_mean: np.ndarray) -> float:
    """Mean USD per episode of following ``table`` along every logged episode's turns: each turn's
    logged prompt billed on the model the table names there (the previous turn's prompt counts as
    cached when the table named the same model then: a switch starts a cold cache) with that
    model's mean logged completion length (``prices``: (M, 3) USD/token, input, cached, output).
    The followers' own cost is biased low — a mixed table is followed closely only by short
    episodes — so a tier is priced on all histories instead."""
    if not log.n_episodes:
        return float("nan")
    m = table[log.task, log.last]
    warm = ~log.first & np.concatenate([[False], m[1:] == m[:-1]])
    prev = np.concatenate([[0.0], log.prompt[:-1]])
    cached = np.where(warm, np.minimum(prev, log.prompt), 0.0)
    return float(call_cost(log.prompt, cached, out_mean[m], prices[m, 0], prices[m, 1], prices[m, 2]).sum()) / log.n_episodes


def _within_task_difference(value, task, share, a, b) -> float:
    """Mean of ``value`` over followers ``a`` minus over ``b`` (boolean masks over episodes), per
    task type both have followers in, weighted by ``share`` (each task type's episodes in the log;
    ``task``: each episode's task row, >= 0); NaN when they share none."""
    n_tasks = share.size
    na, nb = np.bincount(task[a], minlength=n_tasks), np.bincount(task[b], minlength=n_tasks)
    both = (na > 0) & (nb > 0)
    if not both.any():
        return float("nan")
    ma = np.bincount(task[a], value[a], minlength=n_tasks) / np.maximum(na, 1)
    mb = np.bincount(task[b], value[b], minlength=n_tasks) / np.maximum(nb, 1)
    w = np.where(both, share, 0.0)
    return float((w * (ma - mb)).sum() / w.sum())


class DraftPricing(NamedTuple):
    """How drafting changes what the logs show (``routing/draft.py``): ``value_change(episode,
    budget)`` (``drafted_value_change``: what re-serving the escalated turns that fit ``budget``
    changes in the episode's normalised score) and the escalation settings it was computed for."""

    value_change: Callable[[Episode, float], float]
    test: str
    n_min: float
    budget_hi: float = 0.0  # a budget at which every logged turn that drafting re-serves fits


DRAFT_GRID = 24  # budgets at which the tiers are priced under drafting, log-spaced over the tiers' costs


def _tier_lcbs(vouched: list[dict], value: np.ndarray, costs: Sequence[float], follows: dict, agreement: float,
               task_row: np.ndarray, share: np.ndarray) -> tuple[list[float], dict[int, dict]]:
    """Each vouched tier's lower bound on ``value`` over its followers; a mixed table's capped at the
    best single model it can afford (by ``costs``) plus its within-task gain over it (module docstring).
    Also, per capped tier, what capped it (``inspect``'s ``within_task_gain``)."""
    sels = [follows[r["name"]] >= agreement for r in vouched]
    lcbs = [float(value[sel].mean() - t_ci95(value[sel])) for sel in sels]
    single = [r["name"].startswith("single:") for r in vouched]
    caps: dict[int, dict] = {}
    for i, r in enumerate(vouched):
        if single[i]:
            continue
        # a mixed table is followed mostly in some task types (short episodes): it may displace
        # the best single model it can afford only where it beats that model in the task types
        # both are followed in (task-share weighted), not by its followers' task mix
        affordable = [k for k in range(len(vouched)) if single[k] and costs[k] <= costs[i]]
        if not affordable:
            continue
        k = max(affordable, key=lambda k: lcbs[k])
        d = _within_task_difference(value, task_row, share, sels[i], sels[k])
        gain = d if math.isfinite(d) else None  # no task type in common: nothing shows it better
        lcbs[i] = min(lcbs[i], lcbs[k] + (gain or 0.0))
        caps[i] = {"vs": vouched[k]["name"], "gain": gain, "tier_lcb": lcbs[i]}
    return lcbs, caps


def _draft_tiers(drafting: DraftPricing, eps, value, vouched, costs, lcbs, follows, agreement, task_row, share
                 ) -> tuple:
    """The tiers priced under drafting (module docstring): at each budget b of a log-spaced grid from
    the cheapest tier to where every re-served turn fits, each follower's score with the re-served turns that fit b
    (``drafting.value_change``), as a tier affordable from max(b, the tier's own cost) up; only
    entries whose bound beats the tier's logged one are kept. (indices into the tiers (R2,), costs
    (R2,), bounds (R2,), the settings)."""
    index, d_costs, d_lcbs = [], [], []
    lo, hi = min(costs), max(*costs, drafting.budget_hi)
    for b in np.geomspace(lo, hi, DRAFT_GRID) if 0 < lo < hi else [hi]:
        # (no score leaves its range: a re-served turn whose episode reached the top anyway adds nothing)
        drafted = np.clip(value + np.array([drafting.value_change(e, float(b)) for e in eps]), 0.0, 1.0)
        at = [max(float(b), c) for c in costs]
        for i, x in enumerate(_tier_lcbs(vouched, drafted, at, follows, agreement, task_row, share)[0]):
            if x > lcbs[i] + 1e-9:
                index.append(i)
                d_costs.append(at[i])
                d_lcbs.append(x)
                sel = follows[vouched[i]["name"]] >= agreement
                vouched[i]["drafted"] = {"budget": float(b), "mean": float(drafted[sel].mean()), "tier_lcb": x}
    return (np.array(index, np.int32), np.array(d_costs, np.float32), np.array(d_lcbs, np.float32),
            {"test": drafting.test, "n_min": float(drafting.n_min)})


def fit_reference(episodes: Sequence[Episode], layout: FeatureLayout, pool: Pool,
                  default_range: Sequence[float] = (-100.0, 100.0), min_episodes: int = 8,
                  drafting: DraftPricing | None = None) -> Reference:
    """Pick the reference policy from the logs (see the module docstring); with ``drafting``, also
    price the tiers under drafting (``Reference.draft_tiers``)."""
    from mtrouter_jax.routing.specs import tool_table

    eps = [e for e in episodes if e.score is not None and e.turns]
    spent = np.array([sum(t.cost for t in e.turns) for e in eps])
    t_rows, k_cols, m = len(layout.task_types) + 1, len(layout.tools) + 2, len(layout.models)
    log = LoggedTurns.of(eps, layout)
    ep_task = log.task[log.first]  # one entry per episode
    value = np.array([normalised(e, default_range) for e in eps])
    support = np.zeros((t_rows, k_cols, m), np.float32)
    np.add.at(support, (log.task, log.last, log.model), 1.0)
    seen = np.zeros(t_rows, bool)
    seen[ep_task] = True
    seen[-1] = False  # the "other" bucket: task types never seen in training
    # (episode, last tool, model): the episode has a turn of that model after that tool type
    used = np.zeros((len(eps), k_cols, m), bool)
    used[log.episode, log.last, log.model] = True

    prices = np.array([[pool[n].price_input, pool[n].price_cached_input, pool[n].price_output]
                       for n in layout.models], np.float64) / 1e6
    fallback_out = float(log.completion.mean()) if log.completion.size else 0.0
    out_mean = np.array([log.completion[log.model == j].mean() if (log.model == j).any() else fallback_out
                         for j in range(m)])

    cands: dict[str, np.ndarray] = {}
    for j, name in enumerate(layout.models):
        cands[f"single:{name}"] = np.full((t_rows, k_cols), j, np.int32)
    heur = tool_table(pool.subset(list(layout.models)), layout.tools)
    cands["tool-heuristic"] = np.tile(heur[None, :], (t_rows, 1)).astype(np.int32)
    # a last-tool table fitted from the logs: after each tool type, the model whose turns there
    # belong to the best-scoring episodes on average (ties and empty cells: the heuristic's choice)
    fitted = heur.copy()
    for c in range(k_cols):
        best, best_v = None, -math.inf
        for j in range(m):
            v = value[used[:, c, j]]
            if len(v) >= min_episodes and np.mean(v) > best_v:
                best, best_v = j, float(np.mean(v))
        if best is not None:
            fitted[c] = best
    cands["fitted-last-tool"] = np.tile(fitted[None, :], (t_rows, 1)).astype(np.int32)
    follows = {name: log.agreement(table) for name, table in cands.items()}

    n_turns = np.bincount(log.episode, minlength=len(eps))

    def row(name: str, sel: np.ndarray, agreement: float) -> dict:
        n = int(sel.sum())
        nan = float("nan")
        # what the followers are: their mean length and how many task types they span, beside the
        # log's (``inspect``) — followers are mostly short episodes (docs/benchmarks.md, "More logs")
        return {"name": name, "mean": float(value[sel].mean()) if n else nan, "ci": t_ci95(value[sel]), "n": n,
                "agreement": agreement, "cost": float(spent[sel].mean()) if n else nan,
                "turns": float(n_turns[sel].mean()) if n else nan, "task_types": int(np.unique(ep_task[sel]).size)}

    rows = []
    for agreement in AGREEMENTS:
        rows = [row(name, follows[name] >= agreement, agreement) for name in cands]
        if any(r["n"] >= min_episodes for r in rows):
            break
    ok = [r for r in rows if r["n"] >= min_episodes]
    if ok:
        best = max(ok, key=lambda r: r["mean"] - r["ci"])["name"]
    else:  # nothing is vouched for: the model that served the most logged turns
        best = f"single:{layout.models[int(support.sum((0, 1)).argmax())]}"
    table = cands[best].copy()
    # per task type: the best single model where that task's own followers vouch for it better
    per_task = table.copy()
    single_follows = [follows[f"single:{n}"] >= rows[0]["agreement"] for n in layout.models]
    for t in range(t_rows - 1):
        sel_t = ep_task == t
        best_j, best_lcb = None, -math.inf
        for j in range(m):
            sel = sel_t & single_follows[j]
            if sel.sum() >= min_episodes:
                lcb = value[sel].mean() - t_ci95(value[sel])
                if lcb > best_lcb:
                    best_j, best_lcb = j, lcb
        if best_j is not None:
            per_task[t, :] = best_j
    if (per_task != table).any():
        agree = log.agreement(per_task)
        r = row("best-single-per-task", agree >= rows[0]["agreement"], rows[0]["agreement"])
        if r["n"] >= min_episodes:  # (vouched, so it is a tier: the tiers below choose the reference)
            rows.append(r)
            cands["best-single-per-task"], follows["best-single-per-task"] = per_task, agree
    # budget tiers: every vouched candidate priced along all logged histories (``replayed_cost``),
    # so that a budget below the chosen reference's cost gets the best reference it can pay for (and
    # one above it the best overall); without any vouched candidate, the one fallback table at every budget
    for r in rows:
        r["replayed_cost"] = replayed_cost(cands[r["name"]], log, prices, out_mean)
    vouched = [r for r in rows if r["n"] >= min_episodes and math.isfinite(r["replayed_cost"])]
    tiers: tuple = ()
    draft_tiers: tuple = ()
    if vouched:
        agreement = rows[0]["agreement"]
        task_row = np.where(ep_task < 0, t_rows - 1, ep_task)  # no task type (NO_VALUE): the "other" row, as tables index it
        share = np.bincount(task_row, minlength=t_rows).astype(np.float64)
        costs = [r["replayed_cost"] for r in vouched]
        lcbs, capped = _tier_lcbs(vouched, value, costs, follows, agreement, task_row, share)
        for i, c in capped.items():
            vouched[i]["within_task_gain"] = c
        tiers = (tuple(r["name"] for r in vouched), np.stack([cands[r["name"]] for r in vouched]).astype(np.int32),
                 np.array(costs, np.float32), np.array(lcbs, np.float32))
        best = tiers[0][int(np.argmax(tiers[3]))]  # the reference where money is no object, by the same bounds
        table = cands[best]
        if drafting is not None:
            draft_tiers = _draft_tiers(drafting, eps, value, vouched, costs, lcbs, follows, agreement, task_row, share)
    return Reference(best, table.astype(np.int32), support, seen, rows, tiers, draft_tiers)


__all__ = ["Reference", "LoggedTurns", "DraftPricing", "fit_reference", "replayed_cost", "AGREEMENTS"]
