"""What can *any* router reach in this simulator? Upper bounds from privileged policies.

A "phase table" policy sees the hidden task type and phase and calls one fixed model per
(task type, phase). Coordinate descent over the tables (every cell, every model; two sweeps;
objective score - lam * cost for a few lam) finds the best ones; they, the privileged oracle
(lambda calibrated per budget) and gpt-5 alone are then rolled out under hard budgets. If nothing
privileged reaches gpt-5's score at a budget, no router that sees less can.

    python scripts/bench_reachability.py [--episodes 2048] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

from mtrouter_jax.sim.sweep import calibrate_lambda, evaluate_budgets, with_lambdas
from mtrouter_jax.sim.policies import SimPolicy, fixed_policy, oracle_policy
from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.sim import WorldConfig, make_sim_params


def _phase_table_apply(key, state, sim, p):
    return p["table"][state.summary.task, state.phase].astype(jnp.int32)


def phase_table_policy(table) -> SimPolicy:
    """Privileged: model ``table[task, hidden phase]``."""
    return SimPolicy("phase-table", _phase_table_apply, {"table": jnp.asarray(table, jnp.int32)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=2048)
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.15, 0.20, 0.27, 0.35, 0.46])
    ap.add_argument("--lams", type=float, nargs="+", default=[0.0, 40.0, 80.0],
                    help="objectives score - lam * USD for the table search")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    pool, world = default_pool(), WorldConfig()
    sim = make_sim_params(pool, world)
    key = jax.random.PRNGKey(a.seed)
    budgets = list(a.budgets) + [np.inf]
    g5 = pool.index("gpt-5")
    T, P = sim.phase_required.shape

    def uncapped(table):
        r = evaluate_budgets(key, phase_table_policy(table), sim, [np.inf], a.episodes)
        return float(r["score"][0]), float(r["cost"][0])

    rows: dict[str, dict] = {}
    for lam in a.lams:  # coordinate descent from "gpt-5 everywhere"
        table = np.full((T, P), g5)
        score, cost = uncapped(table)
        best = score - lam * cost
        for _ in range(2):
            for t in range(T):
                for ph in range(P):
                    for m in range(sim.n_models):
                        if m == table[t, ph]:
                            continue
                        cand = table.copy()
                        cand[t, ph] = m
                        s, c = uncapped(cand)
                        if s - lam * c > best:
                            best, table = s - lam * c, cand
        desc = "; ".join(f"{world.tasks[t].name}: " + " → ".join(pool.names[m] for m in table[t, :len(world.tasks[t].phases)])
                         for t in range(T))
        rows[f"best phase table (λ = {lam:g} per USD)"] = {"table": desc, "policy": phase_table_policy(table)}
    oracle = oracle_policy(0.0, 0.25)
    lams = calibrate_lambda(jax.random.PRNGKey(a.seed + 1), oracle, sim, budgets, a.episodes // 4)
    res = {name: evaluate_budgets(key, r["policy"], sim, budgets, a.episodes) for name, r in rows.items()}
    res["oracle (λ per budget)"] = evaluate_budgets(key, oracle, sim, budgets, a.episodes, with_lambdas(oracle, lams))
    res["gpt-5 alone"] = evaluate_budgets(key, fixed_policy(pool, "gpt-5"), sim, budgets, a.episodes)

    ref = float(res["gpt-5 alone"]["cost"][-1])
    t = Table(title=f"score (USD/episode) under hard budgets, {a.episodes} episodes; gpt-5 alone uncapped: "
                    f"{float(res['gpt-5 alone']['score'][-1]):.1f} at ${ref:.3f}")
    t.add_column("router")
    for b in budgets:
        t.add_column("no cap" if not np.isfinite(b) else f"${b:.2f} ({100 * b / ref:.0f}% of gpt-5)", justify="right")
    out = {}
    for name, r in res.items():
        t.add_row(name, *[f"{r['score'][i]:.1f} (${r['cost'][i]:.3f})" for i in range(len(budgets))])
        out[name] = {"score": [float(x) for x in r["score"]], "cost": [float(x) for x in r["cost"]]}
    con = Console(width=200)
    con.print(t)
    for name, r in rows.items():
        con.print(f"{name}: {r['table']}")
    if a.json:
        Path(a.json).write_text(json.dumps({"budgets": [None if not np.isfinite(b) else b for b in budgets],
                                            "routers": out, "tables": {k: v["table"] for k, v in rows.items()}},
                                           indent=2))


if __name__ == "__main__":
    main()
