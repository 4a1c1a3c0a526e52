"""Canary vs control, and the shadow's paired view, from live logs (``mtrouter compare-arms``; issue 19).

``compare_arms(episodes)`` is pure: episodes in, one JSON-able report out.

* **Arms** — ``meta.arm`` (``serve --canary``), else ``checkpoint DIGEST`` (``meta.checkpoint``: a
  reload's before and after). Per arm over its scored episodes: n, mean score and mean cost with
  95 % CIs, score per USD (mean score / mean cost). The canary − control difference (else every
  later-started arm − the first) is **unpaired** (different conversations): Welch's interval.
* **Shadow** (``serve --shadow``: each routed turn's ``meta.shadow.model``) — paired on the same
  episodes: the per-turn agreement rate, the share of episodes where it agreed on every turn, and,
  where served turns were drawn with propensities < 1 (explore traffic), importance sampling of
  the shadow's mean score: per episode ``w = prod_t 1[shadow_t == served_t] / propensity_t``, the
  plain ``mean(w s)`` and self-normalised ``sum(w s) / sum(w)`` estimates and their paired
  differences to the served score, with CIs (the self-normalised one by its linearisation). With
  every propensity 1 the weights are 0 or 1: the shadow is valued only on the episodes where it
  agreed throughout, which is said, and the estimate is not given. An episode counts as complete
  (usable for the weights) when every turn has a shadow decision and a propensity.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from mtrouter_jax.core.errors import UsageError
from mtrouter_jax.core.stats import ci95, paired_mean_ci, unpaired_mean_ci
from mtrouter_jax.logs.io import Episode

NAN = float("nan")


class NoArmsError(UsageError):
    """A log with nothing to compare: no arm, no checkpoint digest, no shadow decision."""


def arm_label(ep: Episode) -> str | None:
    """The arm of a logged episode: ``meta.arm``, else ``checkpoint DIGEST``, else None."""
    m = ep.meta or {}
    if m.get("arm"):
        return str(m["arm"])
    return f"checkpoint {m['checkpoint']}" if m.get("checkpoint") else None


def shadow_model(turn) -> str | None:
    """The shadow's decision logged on a turn (None: none, missing or failed)."""
    sh = (turn.meta or {}).get("shadow")
    return sh.get("model") if isinstance(sh, dict) else None


def is_weight(steps: Iterable[tuple[str, str | None, float | None]]) -> float | None:
    """``prod 1[shadow == served] / propensity`` over an episode's (served, shadow, propensity) turns;
    None when a turn has no shadow decision or no (valid) propensity."""
    w = 1.0
    for served, shadow, prop in steps:
        if shadow is None or prop is None or not 0.0 < float(prop) <= 1.0:
            return None
        w = w / float(prop) if shadow == served else 0.0
    return w


def _mean_ci(x) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    return (float(x.mean()), ci95(x, 1, NAN)) if x.size else (NAN, NAN)


def _arm_row(name: str, eps: list[Episode]) -> dict:
    scored = [e for e in eps if e.score is not None]
    s = np.array([e.score for e in scored], np.float64)
    c = np.array([e.total_cost for e in scored], np.float64)
    score, score_ci = _mean_ci(s)
    cost, cost_ci = _mean_ci(c)
    return {"arm": name, "n": len(scored), "n_unscored": len(eps) - len(scored), "score": score,
            "score_ci": score_ci, "cost": cost, "cost_ci": cost_ci,
            "score_per_usd": score / cost if scored and cost > 0 else NAN,
            "checkpoints": sorted({str((e.meta or {}).get("checkpoint")) for e in eps}),
            "_scores": s, "_costs": c, "_started": min((float((e.meta or {}).get("started", math.inf)) for e in eps),
                                                        default=math.inf)}


def _difference(a: dict, b: dict) -> dict:
    ds, ds_ci = unpaired_mean_ci(a["_scores"], b["_scores"])
    dc, dc_ci = unpaired_mean_ci(a["_costs"], b["_costs"])
    return {"a": a["arm"], "b": b["arm"], "score": ds, "score_ci": ds_ci, "cost": dc, "cost_ci": dc_ci,
            "n_a": a["n"], "n_b": b["n"], "method": "welch (unpaired), 95% normal"}


def _shadow(eps: list[Episode]) -> dict | None:
    shadowed = [e for e in eps if any("shadow" in (t.meta or {}) for t in e.turns)]
    if not shadowed:
        return None
    agree, missing, complete, all_agree = [], 0, 0, 0
    w, s, ids, explored = [], [], [], False
    for e in shadowed:
        steps = [(t.model, shadow_model(t), t.propensity) for t in e.turns]
        decided = [(a, b) for a, b, _ in steps if b is not None]
        agree += [float(a == b) for a, b in decided]
        missing += len(steps) - len(decided)
        wi = is_weight(steps)
        if wi is None:
            continue
        complete += 1
        all_agree += all(a == b for a, b, _ in steps)
        if e.score is not None:
            w.append(wi)
            s.append(float(e.score))
            ids.append(e.episode_id)
            explored |= any(p < 1.0 - 1e-9 for _, _, p in steps)
    rate, rate_ci = _mean_ci(agree)
    digests = {str(t.meta["shadow"].get("digest")) for e in shadowed for t in e.turns
               if isinstance((t.meta or {}).get("shadow"), dict)}
    out = {"checkpoints": sorted(digests),
           "episodes": len(shadowed), "turns": len(agree), "turns_missing": missing, "agreement": rate,
           "agreement_ci": rate_ci, "complete_episodes": complete,
           "all_agree_share": all_agree / complete if complete else NAN, "scored_complete": len(s),
           "explored": explored}
    w_, s_ = np.array(w, np.float64), np.array(s, np.float64)
    agreed = s_[w_ > 0]
    out["agreed"] = dict(zip(("n", "score", "score_ci"), (int(agreed.size), *_mean_ci(agreed))))
    out["served"] = dict(zip(("n", "score", "score_ci"), (int(s_.size), *_mean_ci(s_))))
    if not explored:
        out["is"] = None
        out["note"] = ("no served turn of these episodes was drawn with a propensity < 1 (no explore traffic): the "
                       "shadow can only be valued on the episodes where it agreed on every turn ('agreed'), a "
                       "selected subset, not an estimate of its score")
        return out
    out["is"] = _importance(w_, s_, ids)
    out["note"] = ("importance-sampled from the served turns' propensities (explore traffic); trust it as far as "
                   "the effective sample size allows")
    return out


def _importance(w: np.ndarray, s: np.ndarray, ids: Sequence[str]) -> dict:
    """Plain and self-normalised IS estimates of the shadow's mean score, and their paired differences
    to the served score on the same episodes (CIs: ``ci95`` of per-episode terms)."""
    ws = w * s
    plain, plain_ci = _mean_ci(ws)
    d_plain, d_plain_ci, _ = paired_mean_ci(dict(zip(ids, ws)), dict(zip(ids, s)), ddof=1, single=NAN)
    tot = float(w.sum())
    out = {"n": int(w.size), "plain": plain, "plain_ci": plain_ci, "diff_plain": d_plain, "diff_plain_ci": d_plain_ci,
           "ess": tot * tot / float((w * w).sum()) if tot > 0 else 0.0, "mean_weight": float(w.mean())}
    if tot > 0:
        snis = float(ws.sum() / tot)
        infl = w * (s - snis) / w.mean()  # the estimator's linearisation, per episode
        out.update(snis=snis, snis_ci=ci95(infl, 1, NAN), diff_snis=snis - float(s.mean()),
                   diff_snis_ci=ci95(infl - (s - s.mean()), 1, NAN))
    else:
        out.update(snis=NAN, snis_ci=NAN, diff_snis=NAN, diff_snis_ci=NAN)
    return out


def compare_arms(episodes: Sequence[Episode], source: str = "the log") -> dict:
    """The arms' report (module docstring); NoArmsError when ``episodes`` hold nothing to compare."""
    groups: dict[str, list[Episode]] = defaultdict(list)
    unlabelled = 0
    for e in episodes:
        label = arm_label(e)
        if label is None:
            unlabelled += 1
        else:
            groups[label].append(e)
    shadow = _shadow(list(episodes))
    if not groups and shadow is None:
        raise NoArmsError(f"{source}: none of its {len(episodes)} episodes carries an arm (meta.arm: serve --canary), "
                          "a checkpoint digest (meta.checkpoint: serve --checkpoint) or a shadow decision "
                          "(meta.shadow: serve --shadow); log with those to compare arms")
    rows = [_arm_row(k, v) for k, v in groups.items()]
    by = {r["arm"]: r for r in rows}
    if "canary" in by and "control" in by:
        diffs = [_difference(by["canary"], by["control"])]
    else:
        rows.sort(key=lambda r: r["_started"])
        diffs = [_difference(r, rows[0]) for r in rows[1:]]
    rows.sort(key=lambda r: ({"control": 0, "canary": 1}.get(r["arm"], 2), r["_started"]))
    return {"episodes": len(episodes), "unlabelled": unlabelled,
            "arms": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
            "differences": diffs, "shadow": shadow}


def _f(x, spec: str = ".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _pm(x, ci, spec: str = ".3f") -> str:
    return _f(x, spec) if ci is None or not math.isfinite(ci) else f"{_f(x, spec)} ± {_f(ci, spec)}"


def arms_tables(report: dict) -> tuple[list, list[str]]:
    """(rich tables, note lines) of a ``compare_arms`` report."""
    from rich.table import Table

    tables, notes = [], []
    t = Table(title=f"arms ({report['episodes']} episodes)")
    for col in ("arm", "n", "unscored", "score ± 95% CI", "cost USD ± 95% CI", "score / USD"):
        t.add_column(col, justify="left" if col == "arm" else "right")
    for r in report["arms"]:
        t.add_row(r["arm"], str(r["n"]), str(r["n_unscored"]), _pm(r["score"], r["score_ci"]),
                  _pm(r["cost"], r["cost_ci"], ".6f"), _f(r["score_per_usd"], ".1f"))
    tables.append(t)
    if report["differences"]:
        t = Table(title="difference (unpaired: Welch's 95% interval)")
        for col in ("arms", "score", "cost USD", "n"):
            t.add_column(col, justify="left" if col == "arms" else "right")
        for d in report["differences"]:
            t.add_row(f"{d['a']} − {d['b']}", _pm(d["score"], d["score_ci"]), _pm(d["cost"], d["cost_ci"], ".6f"),
                      f"{d['n_a']} vs {d['n_b']}")
        tables.append(t)
    elif report["arms"]:
        notes.append("one arm only: nothing to compare it with")
    if report["unlabelled"]:
        notes.append(f"{report['unlabelled']} episodes carry no arm nor checkpoint digest (left out of the arms)")
    sh = report["shadow"]
    if sh is not None:
        t = Table(title=f"shadow {', '.join(sh['checkpoints'])} (paired, on {sh['episodes']} shadowed episodes)")
        t.add_column("measure")
        t.add_column("value", justify="right")
        t.add_row("per-turn agreement", f"{_pm(sh['agreement'], sh['agreement_ci'])} of {sh['turns']} turns"
                  + (f" ({sh['turns_missing']} without a shadow decision)" if sh["turns_missing"] else ""))
        t.add_row("episodes agreeing on every turn", f"{_f(sh['all_agree_share'], '.1%')} of {sh['complete_episodes']}")
        t.add_row("served score (scored, complete)", f"{_pm(sh['served']['score'], sh['served']['score_ci'])} "
                                                      f"(n {sh['served']['n']})")
        t.add_row("served score where it agreed throughout",
                  f"{_pm(sh['agreed']['score'], sh['agreed']['score_ci'])} (n {sh['agreed']['n']})")
        if sh["is"] is not None:
            i = sh["is"]
            t.add_row("shadow score, IS (plain)", f"{_pm(i['plain'], i['plain_ci'])}; − served {_pm(i['diff_plain'], i['diff_plain_ci'])}")
            t.add_row("shadow score, IS (self-normalised)",
                      f"{_pm(i['snis'], i['snis_ci'])}; − served {_pm(i['diff_snis'], i['diff_snis_ci'])}")
            t.add_row("effective sample size", f"{i['ess']:.1f} of {i['n']}")
        tables.append(t)
        notes.append(sh["note"])
    return tables, notes


__all__ = ["compare_arms", "arms_tables", "arm_label", "shadow_model", "is_weight", "NoArmsError"]
