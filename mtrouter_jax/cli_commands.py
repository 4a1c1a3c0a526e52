"""Pieces of the `mtrouter` commands that read and report (no argparse): the coverage table of the
training logs, the simulator-vocabulary check of a checkpoint, `mtrouter inspect`."""

from __future__ import annotations

import json
import sys


def _console():
    from rich.console import Console

    # wide tables even when stdout is a pipe or a CI log
    return Console(width=None if sys.stdout.isatty() else 160)


def print_coverage(episodes, pool) -> None:
    """Per-model turns, exploration and effective sample size of the training logs; warnings."""
    from rich.table import Table

    from mtrouter_jax.logs.coverage import coverage_warnings, exploration_report

    rep = exploration_report(episodes, pool.names)
    sources: dict[str, int] = {}
    for e in episodes:
        sources[e.source or "?"] = sources.get(e.source or "?", 0) + 1
    t = Table(title=f"training logs: {len(episodes)} episodes ("
                    + ", ".join(f"{n} {s}" for s, n in sorted(sources.items())) + ")")
    for col in ("model", "turns", "share", "with propensity", "explored (p<1)", "ESS of 1/p"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for c in rep:
        t.add_row(c.model, f"{c.turns:,}", f"{100 * c.share:.1f}%", f"{c.with_propensity:,}", f"{c.explored:,}",
                  f"{c.ess:,.0f}")
    console = _console()
    console.print(t)
    for w in coverage_warnings(rep):
        console.print(f"[yellow]warning:[/yellow] {w}")


def sim_incompatibility(est, world) -> str | None:
    """Why a checkpoint's layout cannot be evaluated in the simulator (None when it can): the
    simulator's task and tool types must all be in its vocabularies, else its features mean
    something else (e.g. a checkpoint trained on ScienceWorld logs)."""
    L = est.layout
    sim_tasks = [t.name for t in world.tasks]
    missing = {"task types": [t for t in sim_tasks if t not in L.task_types],
               "tool types": [t for t in world.tools if t not in L.tools]}
    missing = {k: v for k, v in missing.items() if v}
    if not missing:
        return None
    what = "; ".join(f"{k} {v} (it knows {list(L.task_types if k == 'task types' else L.tools)})"
                     for k, v in missing.items())
    sources = ", ".join((est.meta.get("data") or {}).get("sources") or ["unknown"])
    return (f"{est.path} was not trained on the simulator's vocabulary: it lacks the simulator's {what}. "
            f"Its logs came from: {sources}. A sweep here would route on features that mean something else. "
            f"Evaluate it where its logs came from, e.g. `mtrouter eval scienceworld --checkpoint {est.path}`, "
            "or retrain with simulated episodes (mtrouter train --simulate N).")


def cmd_inspect(a) -> int:
    from mtrouter_jax.estimator.checkpoint import read_meta

    meta = read_meta(a.ckpt)
    short = {k: meta[k] for k in ("schema", "feature_code_version", "cost_scale", "text_dim", "data") if k in meta}
    short["models"] = [m["name"] for m in meta["pool"]["model"]]
    short["layout"] = meta["layout"]
    t = meta.get("training", {})
    short["training"] = {k: t.get(k) for k in ("best_epoch", "val_loss", "baseline_val_loss", "turns_per_second")}
    short["ensemble_size"] = int((meta.get("ensemble") or {}).get("k", 1))
    ref = meta.get("reference") or {}
    short["reference_policy"] = ref.get("name")
    short["reference_candidates"] = ref.get("candidates")
    if ref:
        from mtrouter_jax.routing.reference import Reference

        short["reference_by_budget"] = Reference.from_meta(ref).by_budget()
    from mtrouter_jax.routing.meta import DEFAULT_LAM

    tables = meta.get("lam_tables") or {}
    short["lam_tables"] = tables or f"none: the learned router uses λ = {DEFAULT_LAM:g} unless --lam is given"
    print(json.dumps(short, indent=2))
    return 0


__all__ = ["print_coverage", "sim_incompatibility", "cmd_inspect"]
