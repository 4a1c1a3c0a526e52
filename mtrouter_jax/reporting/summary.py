"""Markdown summary of a budget sweep: the headline comparisons, every number from ``results``."""

from __future__ import annotations

import math

from mtrouter_jax.reporting.curves import first_cost_reaching
from mtrouter_jax.reporting.fmt import DASH, budget_str, fixed, pct, score_ci, usd
from mtrouter_jax.reporting.results import (AIQ_NEEDS_A_CURVE, CURVE_KINDS, aiq_by_router, best_point, budget_key,
                                           headline_router, max_cost, nearest_point, num, ordered_routers,
                                           point_at_budget, points_of, routers_of, specialisations, valid_points)

__all__ = ["summary_markdown"]


def summary_markdown(results: dict, learned: str | None = None, heuristic: str = "tool-heuristic",
                     oracle: str = "oracle", escalation: str = "error-escalation") -> str:
    """Short markdown report of the headline comparisons; every number comes from ``results``.
    ``learned``: the router it speaks for (default ``headline_router``: the one serve would use).
    Sentences whose routers are missing are left out."""
    rs = routers_of(results)
    learned = learned or headline_router(results)
    meta = results.get("meta") or {}
    cur = meta.get("currency", "USD")
    lines: list[str] = ["# MTRouter budget sweep — summary", ""]
    bits = []
    if meta.get("n_episodes") is not None:
        bits.append(f"{meta['n_episodes']} episodes per point")
    if meta.get("seed") is not None:
        bits.append(f"seed {meta['seed']}")
    if meta.get("pool"):
        bits.append("pool: " + ", ".join(map(str, meta["pool"])))
    if meta.get("budgets"):
        bits.append("budgets (" + cur + "/episode): " + ", ".join(usd(b) for b in meta["budgets"]))
    if bits:
        lines += ["; ".join(bits) + ".", ""]

    findings: list[str] = []
    # Best single model.
    best_single, bs_pt = None, None
    for n in ordered_routers(results):
        if rs[n].get("kind") != "single":
            continue
        p = best_point(rs[n])
        if p is not None and (bs_pt is None or (num(p["score"]), -num(p["cost"])) > (num(bs_pt["score"]), -num(bs_pt["cost"]))):
            best_single, bs_pt = n, p
    S = num(bs_pt["score"]) if bs_pt else None
    S_cost = num(bs_pt["cost"]) if bs_pt else None
    if best_single is not None:
        findings.append(f"Best single model: **{best_single}**, score {S:.1f} at {usd(S_cost)}/episode.")

    L_router = rs.get(learned)
    l_pts = valid_points(L_router)
    l_best = best_point(L_router)
    b_star = l_best.get("budget") if l_best else None
    L = num(l_best["score"]) if l_best else None

    # Where the learned router first matches the best single model.
    if l_pts and S is not None:
        c_hit = first_cost_reaching([p["cost"] for p in l_pts], [p["score"] for p in l_pts], S)
        if math.isfinite(c_hit):
            first = next(p for p in l_pts if num(p["score"]) >= S)
            rel = f" = {100.0 * c_hit / S_cost:.0f}% of {best_single}'s cost" if S_cost and S_cost > 0 else ""
            fb = num(first.get("budget"))
            budget_txt = (f"; the smallest budget whose point reaches it is {usd(fb)}/episode "
                          f"(score {num(first['score']):.1f} at {usd(first['cost'])})") if fb is not None else ""
            ci = num(first.get("score_ci")) if first.get("score_ci") is not None else None
            noisy = (f" The margin ({num(first['score']) - S:+.1f}) is inside that point's 95% CI (±{ci:.1f}): "
                     f"re-sweep with more episodes (`mtrouter sweep --episodes 1024`) before relying on it."
                     if ci is not None and num(first["score"]) - S < ci else "")
            findings.append(
                f"**{learned}** reaches {best_single}'s {S:.1f} at {usd(c_hit)}/episode{rel} "
                f"(interpolated along its cost-sorted points){budget_txt}.{noisy}")
        else:
            last = max(l_pts, key=lambda p: (budget_key(p.get("budget")), num(p["cost"])))
            gap = num(last["score"]) - S
            findings.append(
                f"**{learned}** never matches {best_single}'s {S:.1f} at any budget: at its largest "
                f"budget ({budget_str(last.get('budget'))}) it scores {num(last['score']):.1f} at "
                f"{usd(last['cost'])}/episode, {abs(gap):.1f} points below.")

    # Tool-type heuristic: share of the learned router's gain it recovers (said plainly when there is none).
    H_router = rs.get(heuristic)
    if l_best is not None and S is not None and valid_points(H_router):
        findings.append(_heuristic_sentence(H_router, l_best, b_star, S, best_single, learned, heuristic))

    # Switching behaviour.
    if l_best is not None:
        sw = num(l_best.get("switches"))
        ep = nearest_point(rs.get(escalation), b_star)
        esw = num(ep.get("switches")) if ep else None
        if sw is not None and esw is not None:
            if sw > 0 and esw > 0:
                ratio = esw / sw
                cmp_ = f"{ratio:.1f}× fewer" if ratio >= 1 else f"{1 / ratio:.1f}× more"
                rel = f" — {cmp_} than"
            else:
                rel = " vs"
            findings.append(
                f"Switching at {budget_str(b_star)}: **{learned}** makes {sw:.2f} model switches per episode{rel} "
                f"**{escalation}** ({esw:.2f} at {budget_str(ep.get('budget'))}).")
        elif sw is not None:
            findings.append(f"**{learned}** makes {sw:.2f} model switches per episode at {budget_str(b_star)}.")
        sae = num(l_best.get("stay_after_error"))
        if sae is not None:
            findings.append(f"After an error, **{learned}** keeps the same model on {100.0 * sae:.1f}% of the next turns.")

    # Oracle gap (a reference, not a ceiling: it can be beaten).
    oracle = oracle if oracle in rs else next((n for n in ordered_routers(results) if rs[n].get("kind") == "oracle"),
                                              oracle)
    if l_best is not None and valid_points(rs.get(oracle)):
        s_ = _oracle_sentence(rs[oracle], b_star, L, learned, oracle)
        if s_:
            findings.append(s_)

    # Tool specialisation.
    if l_best is not None and (l_best.get("over_representation") or {}):
        spec = specialisations(l_best)
        if spec:
            txt = "; ".join(f"{m} over-represented {r:.2f}× on {t} turns" for t, m, r in spec)
            findings.append(f"Tool-type specialisation of **{learned}** at {budget_str(b_star)}: {txt}.")
        else:
            findings.append(f"No model is over-represented ≥ 1.3× on any tool type for **{learned}** at {budget_str(b_star)}.")

    # Budget compliance.
    viol = []
    for n in ordered_routers(results):
        for p in points_of(rs[n]):
            ob = num(p.get("over_budget_rate"))
            if ob is not None and ob > 0:
                viol.append(f"{n} at {budget_str(p.get('budget'))} ({100.0 * ob:.1f}%)")
    if viol:
        findings.append("**Over budget**: " + ", ".join(viol) + " of episodes exceeded the budget.")
    elif rs:
        findings.append("No episode of any router exceeded its budget.")

    # AIQ.
    a = aiq_by_router(results)
    curve_aiq = [(n, a[n]) for n in ordered_routers(results) if rs[n].get("kind") in CURVE_KINDS and n in a]
    if curve_aiq:
        findings.append(
            f"AIQ over [0, {usd(max_cost(results))}]: " + ", ".join(f"{n} {v:.2f}" for n, v in curve_aiq) + ".")

    lines += [f"- {f}" for f in findings]
    lines += ["", "## Main numbers", ""]
    lines.append(f"| router | kind | budget | score ± CI | {cur}/episode | cache-miss | switches | stay-after-error | over-budget | AIQ |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for n in ordered_routers(results):
        r = rs[n]
        p = point_at_budget(r, b_star) if r.get("kind") in CURVE_KINDS and l_best is not None else None
        if p is None or num(p.get("score")) is None:
            p = best_point(r)
        if p is None:
            continue
        lines.append(
            f"| {n} | {r.get('kind', '?')} | {budget_str(p.get('budget'))} | {score_ci(p)} | {usd(p.get('cost'))} | "
            f"{usd(p.get('cache_miss_cost'))} | {fixed(p.get('switches'), 2)} | {pct(p.get('stay_after_error'))} | "
            f"{pct(p.get('over_budget_rate'))} | {fixed(a.get(n), 2)} |")
    notes = []
    if l_best is not None:
        notes.append(f"Curve routers are shown at {learned}'s best-score budget ({budget_str(b_star)}) where they "
                     "have a point there, else at their best-score point.")
    if any(n not in a for n in rs):
        notes.append(f"AIQ {DASH}: {AIQ_NEEDS_A_CURVE} (a router with a single operating point).")
    for u in (results.get("meta") or {}).get("unplayable") or ():
        notes.append(f"{u['router']} at {budget_str(u['budget'])}: no point ({u['why']}).")
    for note in notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _heuristic_sentence(H_router: dict, l_best: dict, b_star, S: float, best_single: str, learned: str,
                        heuristic: str) -> str:
    """The tool heuristic against the learned router's gain over the best single model: a share only
    when there is a gain beyond noise and the heuristic lies between the two; otherwise the plain numbers."""
    L = num(l_best["score"])
    hp = point_at_budget(H_router, b_star)
    where = f"at the same budget ({budget_str(b_star)})"
    if hp is None or num(hp.get("score")) is None:
        hp = best_point(H_router)
        where = f"at its best point ({budget_str(hp.get('budget'))}, vs {learned}'s best at {budget_str(b_star)})"
    H = num(hp["score"])
    ci = num(l_best.get("score_ci")) or 0.0
    vs_single = (f"{H - S:.1f} above {best_single}'s {S:.1f}" if H > S else
                 f"{S - H:.1f} below {best_single}'s {S:.1f}" if H < S else f"level with {best_single}'s {S:.1f}")
    if L - S <= 0:
        return (f"**{learned}** has no gain over {best_single} (best {L:.1f} vs {S:.1f}), so there is no gain for "
                f"**{heuristic}** to recover; {heuristic} scores {H:.1f} {where}, {vs_single}.")
    if L - S <= ci:
        return (f"**{learned}**'s gain over {best_single} ({L:.1f} vs {S:.1f}) is within its 95% CI "
                f"(±{ci:.1f}), so the share of it recovered by **{heuristic}** is not meaningful; "
                f"{heuristic} scores {H:.1f} {where}, {vs_single}.")
    gain = f"{learned}'s gain over {best_single} is {L - S:+.1f} ({L:.1f} vs {S:.1f})"
    if H <= S:
        return (f"The zero-training **{heuristic}** recovers none of **{learned}**'s gain: it scores {H:.1f} "
                f"{where}, {vs_single}; {gain}.")
    if H >= L:
        return (f"The zero-training **{heuristic}** scores {H:.1f} {where}, {H - L:.1f} above **{learned}**'s "
                f"{L:.1f}: it matches all of {learned}'s gain over {best_single} ({S:.1f}) and more.")
    return (f"The zero-training **{heuristic}** recovers {100.0 * (H - S) / (L - S):.0f}% of {learned}'s gain over "
            f"{best_single}: {heuristic} {H:.1f}, {learned} {L:.1f}, {best_single} {S:.1f}, {where}.")


ORACLE_IS = ("a privileged router: it reads what no real router can see (the hidden phase and true success rates "
             "in the simulator, the type of the next gold action in ScienceWorld) but picks one turn at a time, so it "
             "is a reference, not an upper bound; a router can beat it")


def _oracle_sentence(O_router: dict, b_star, L: float, learned: str, oracle: str) -> str | None:
    """The learned router's best point against the oracle at the same (else the nearest) budget, worded
    by the sign of the difference."""
    op = point_at_budget(O_router, b_star)
    same = op is not None and num(op.get("score")) is not None
    if not same:
        op = nearest_point(O_router, b_star)
    O = num(op.get("score")) if op else None
    if O is None:
        return None
    where = f"at equal budget ({budget_str(b_star)})" if same else (
        f"at {learned}'s best budget {budget_str(b_star)} ({oracle} at its nearest, {budget_str(op.get('budget'))})")
    d = L - O
    rel = f" ({100.0 * abs(d) / abs(O):.1f}% of its score)" if O != 0 else ""
    if d > 0:
        cmp_ = f"**{learned}** beats it by {d:.1f} points{rel}"
    elif d < 0:
        cmp_ = f"**{learned}** is {-d:.1f} points{rel} below it"
    else:
        cmp_ = f"**{learned}** ties it"
    return f"Against the **{oracle}** {where}: {L:.1f} vs {O:.1f}, {cmp_}. The {oracle} is {ORACLE_IS}."
