"""Paired comparisons of an `mtrouter eval scienceworld` run: every router at every budget against
the best single model it can afford, against the tool heuristic at the same budget, and against
chosen single models — on the same test episodes (paired by ``meta.base_id``), with 95% CIs.

    python scripts/compare_scienceworld.py runs/sw_loop/eval [runs/sw_loop/eval_b ...] [--vs gpt-oss-120b gpt-5]
    python scripts/compare_scienceworld.py runs/dev_eval --split dev --lam 0   # an eval run on dev variations

Prints a markdown table; for an eval run with ``--match-cost ROUTER`` also a table of every row at
ROUTER's matched cap (its mean cost at a budget, rounded down) against ROUTER at that budget: the
comparison at equal or lower cost; and, for a learned row that spends more, the budget mix (one
budget with probability w, the next larger otherwise, per episode) that spends ROUTER's mean cost
on average, scored per episode as the same mix of its scores at the two budgets. "best single at budget" = the best of the single models held to that budget
(``capped:MODEL`` rows) where the run has them, else the single model with the best mean score among
those run without a budget whose mean cost per episode is at most the budget (a model under the
budget on average can still lose its longest episodes to the cap). A difference is significant
when its CI excludes 0.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

import numpy as np

from mtrouter_jax.core.stats import ci95
from mtrouter_jax.core.stats import paired_mean_ci
from mtrouter_jax.reporting.points import pair_key, paired_difference
from mtrouter_jax.logs.io import id_safe, iter_episodes


def load(dirs: list[str], split: str = "test", lam: float | None = None) -> dict[tuple[str, float | None], list]:
    """(router label, budget) -> episodes of ``split``; the label is the logged id after the base id.
    ``lam``: learned routers' episodes run with that λ only (on the calibration split, an eval on it
    also holds the calibration's other λ values, which would otherwise replace episodes of the same
    variation)."""
    groups: dict = collections.defaultdict(dict)
    for d in dirs:
        for e in iter_episodes(Path(d) / "episodes.jsonl"):
            meta = e.meta or {}
            base = meta.get("base_id")
            if base is None or meta.get("split") != split or e.score is None:
                continue
            label = e.episode_id[len(base) + 1:]
            budget = None
            if "-b" in label and label.rsplit("-b", 1)[1].replace(".", "", 1).replace("e-", "", 1).isdigit():
                label, b = label.rsplit("-b", 1)
                budget = float(b)
            m = re.search(r"-lam([0-9.e+-]+)$", label)
            if lam is not None and m and float(m.group(1)) != lam:
                continue
            label = re.sub(r"_[0-9a-f]{8}(-lam[0-9.e+-]+)?$", "", label)  # checkpoint tag and λ (per budget)
            groups[(label, budget)][base] = e  # later dirs win: one episode per base id
    return {k: list(v.values()) for k, v in groups.items()}


def fmt(d: float, ci: float) -> str:
    mark = "**" if abs(d) > ci else ""
    return f"{mark}{d:+.1f} ± {ci:.1f}{mark}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--vs", nargs="*", default=["gpt-oss-120b", "gpt-5"], help="single models to pair against")
    ap.add_argument("--heuristic", default="tool-heuristic")
    ap.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                    help="also print A - B at every budget (router labels as in the table)")
    ap.add_argument("--split", default="test", help="which split's episodes to compare (the eval's --split)")
    ap.add_argument("--lam", type=float, default=None,
                    help="learned routers' episodes of this λ only (needed with --split dev after --lam-grid)")
    a = ap.parse_args(argv)
    groups = load(a.dirs, a.split, a.lam)
    if not groups:
        print(f"no scored {a.split} episodes under {', '.join(a.dirs)} (an eval on another split? use --split)",
              file=sys.stderr)
        return 1
    singles = {lab: eps for (lab, b), eps in groups.items() if b is None}  # singles run uncapped
    mean = lambda eps: float(np.mean([e.score for e in eps]))  # noqa: E731
    cost = lambda eps: float(np.mean([sum(t.cost for t in e.turns) for e in eps]))  # noqa: E731
    ci = lambda x: ci95(np.asarray(x, float), ddof=1, single=float("nan"))  # noqa: E731
    print("| router | budget | n | score ± CI | $/episode | best single ≤ budget | Δ vs it | Δ vs heuristic (its $) | "
          + " | ".join(f"Δ vs {m}" for m in a.vs) + " |")
    print("|---" * (8 + len(a.vs)) + "|")
    for lab, eps in sorted(singles.items(), key=lambda kv: -mean(kv[1])):
        print(f"| {lab} | – | {len(eps)} | {mean(eps):.1f} ± {ci([e.score for e in eps]):.1f} | "
              f"${cost(eps):.4f} | | | | " + " | ".join("" for _ in a.vs) + " |")
    for (lab, b), eps in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        if b is None:
            continue
        capped = [(mean(s), lab_s) for (lab_s, b_s), s in groups.items() if b_s == b and lab_s.startswith("capped:")]
        afford = capped or [(mean(s), lab_s) for lab_s, s in singles.items() if cost(s) <= b]
        best = max(afford)[1] if afford else None
        row = [lab, f"${b:g}", str(len(eps)), f"{mean(eps):.1f} ± {ci([e.score for e in eps]):.1f}", f"${cost(eps):.4f}"]
        if best:
            d, c, _ = paired_difference(eps, groups[(best, b)] if capped else singles[best])
            row += [best, fmt(d, c)]
        else:
            row += ["–", ""]
        heur = groups.get((a.heuristic, b))
        if heur and lab != a.heuristic:
            d, c, _ = paired_difference(eps, heur)
            row.append(f"{fmt(d, c)} (${cost(heur):.4f})")
        else:
            row.append("")
        for m in a.vs:
            s = singles.get(m)
            row.append(fmt(*paired_difference(eps, s)[:2]) if s else "")
        print("| " + " | ".join(row) + " |")
    matched = [m for d in a.dirs if (Path(d) / "results.json").exists()
               for m in json.loads((Path(d) / "results.json").read_text())["meta"].get("cost_matched", [])
               if m.get("cap_usd")]
    if matched:
        print("\n| router | at the cost of | budget | its cap | score @ $/episode | it: score @ $/episode | Δ vs it | "
              "best single ≤ cap | Δ vs that |")
        print("|---" * 9 + "|")
    for m in matched:
        ref = groups.get((m["router"], m["budget"]))
        cap = m["cap_usd"]
        capped = [(mean(s), lab_s) for (lab_s, b_s), s in groups.items() if b_s == cap and lab_s.startswith("capped:")]
        best = max(capped)[1] if capped else None
        for (lab, b), eps in sorted(groups.items(), key=lambda kv: kv[0][0]):
            if b != cap or not ref or lab.startswith("capped:"):
                continue
            row = [lab, m["router"], f"${m['budget']:g}", f"${cap:g}", f"{mean(eps):.1f} @ ${cost(eps):.4f}",
                   f"{mean(ref):.1f} @ ${cost(ref):.4f}", fmt(*paired_difference(eps, ref)[:2])]
            row += [best, fmt(*paired_difference(eps, groups[(best, cap)])[:2])] if best else ["–", ""]
            print("| " + " | ".join(row) + " |")
    mixes = [(m, lab, mix) for m in matched for lab, mix in m.get("mix", {}).items()]
    if mixes:
        print("\n| router | at the cost of | budget | budget mix | score @ $/episode | it: score @ $/episode | Δ vs it |")
        print("|---" * 7 + "|")
    for m, name, mix in mixes:
        # the report name as episode ids spell it; a trailing "]" merged with the tag's "@" into one "_"
        lab = id_safe(name).rstrip("_")
        ref, lo, hi = groups.get((m["router"], m["budget"])), groups.get((lab, mix["lo"])), groups.get((lab, mix["hi"]))
        if not (ref and lo and hi):
            continue
        w = mix["w_lo"]
        s_lo, s_hi = ({pair_key(e): e.score for e in g} for g in (lo, hi))
        mixed = {k: w * s_lo[k] + (1 - w) * s_hi[k] for k in s_lo.keys() & s_hi.keys()}
        d, c, _ = paired_mean_ci(mixed, {pair_key(e): e.score for e in ref})
        mix_cost = w * mix["cost_lo"] + (1 - w) * mix["cost_hi"]
        print(f"| {lab} | {m['router']} | ${m['budget']:g} | ${mix['lo']:g} × {w:.2f} + ${mix['hi']:g} × {1 - w:.2f} | "
              f"{np.mean(list(mixed.values())):.1f} @ ${mix_cost:.4f} | {mean(ref):.1f} @ ${cost(ref):.4f} | {fmt(d, c)} |")
    for x, y in a.pair:
        budgets = sorted(b for (lab, b) in groups if lab == x and b is not None)
        cells = []
        for b in budgets:
            if (y, b) in groups:
                d, c, n = paired_difference(groups[(x, b)], groups[(y, b)])
                cells.append(f"${b:g}: {fmt(d, c)} (n={n})")
        print(f"\n{x} - {y}: " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
