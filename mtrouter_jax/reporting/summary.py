"""Markdown summary of a budget sweep: the headline comparisons, every number from ``results``."""

from __future__ import annotations

import math

from mtrouter_jax.reporting.curves import first_cost_reaching
from mtrouter_jax.reporting.fmt import budget_str, fixed, pct, score_ci, usd
from mtrouter_jax.reporting.results import (CURVE_KINDS, aiq_by_router, best_point, budget_key, max_cost, nearest_point,
                                  num, ordered_routers, point_at_budget, points_of, routers_of, specialisations,
                                  valid_points)

__all__ = ["summary_markdown"]


def summary_markdown(results: dict, learned: str = "mtrouter", heuristic: str = "tool-heuristic",
                     oracle: str = "oracle", escalation: str = "error-escalation") -> str:
    """Short markdown report of the headline comparisons; every number comes from ``results``.
    Sentences whose routers are missing are left out."""
    rs = routers_of(results)
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

    # Tool-type heuristic: share of the learned router's gain it recovers.
    H_router = rs.get(heuristic)
    if l_best is not None and S is not None and valid_points(H_router):
        hp = point_at_budget(H_router, b_star)
        where = f"at the same budget ({budget_str(b_star)})"
        if hp is None or num(hp.get("score")) is None:
            hp = best_point(H_router)
            where = f"at its best point ({budget_str(hp.get('budget'))}, vs {learned}'s best at {budget_str(b_star)})"
        H = num(hp["score"])
        ci = (num(l_best.get("score_ci")) or 0.0) if l_best is not None else 0.0
        if 0 < L - S <= ci:
            findings.append(
                f"**{learned}**'s gain over {best_single} ({L:.1f} vs {S:.1f}) is within its 95% CI "
                f"(±{ci:.1f}), so the share of it recovered by **{heuristic}** is not meaningful; "
                f"{heuristic} scores {H:.1f} {where}.")
        elif L - S <= 0:
            findings.append(
                f"**{learned}** has no gain over {best_single} (best {L:.1f} vs {S:.1f}), so the share of "
                f"its gain recovered by **{heuristic}** is undefined; {heuristic} scores {H:.1f} {where}.")
        else:
            frac = (H - S) / (L - S)
            findings.append(
                f"The zero-training **{heuristic}** recovers {100.0 * frac:.0f}% of {learned}'s gain over "
                f"{best_single}: {heuristic} {H:.1f}, {learned} {L:.1f}, {best_single} {S:.1f}, {where}.")

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

    # Oracle gap.
    if l_best is not None and valid_points(rs.get(oracle)):
        op = point_at_budget(rs.get(oracle), b_star)
        same = op is not None and num(op.get("score")) is not None
        if not same:
            op = nearest_point(rs.get(oracle), b_star)
        O = num(op.get("score")) if op else None
        if O is not None:
            where = "at equal budget" if same else f"(oracle at its nearest budget {budget_str(op.get('budget'))})"
            if O != 0:
                gap = 100.0 * (O - L) / abs(O)
                findings.append(
                    f"Against the **{oracle}** {where} ({budget_str(b_star)}): {L:.1f} vs {O:.1f}, "
                    f"a relative gap of {gap:.1f}%.")
            else:
                findings.append(f"Against the **{oracle}** {where} ({budget_str(b_star)}): {L:.1f} vs {O:.1f}.")

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
    if l_best is not None:
        lines += ["", f"Curve routers are shown at {learned}'s best-score budget ({budget_str(b_star)}) where they "
                      "have a point there, else at their best-score point."]
    return "\n".join(lines) + "\n"
