"""What each change to the paper's recipe buys, on the same logs and the same evaluation episodes.

Trains on one set of simulated sticky-roulette logs (the main job's data and training defaults):
  - ``mc``: the paper's Monte-Carlo AEC targets,
  - ``boot``: n-step bootstrapped (fitted-Q) targets, ``--bootstrap-iterations`` refits,
then sweeps the main job's budgets for each checkpoint with budget pacing on and off (and, for
the bootstrapped one, the old 0.01 switch margin), next to the oracle, gpt-5 and error
escalation. Per budget: score, $/episode, switches, stay-after-error, score / oracle; per router:
AIQ over [0, gpt-5's cost]. Also uncapped points at a few lambdas.

    python scripts/bench_router_ablation.py --sweep-episodes 1024
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from rich.console import Console
from rich.table import Table

from mtrouter_jax.sim.collect import sticky_behaviour
from mtrouter_jax.reporting.curves import aiq
from mtrouter_jax.estimator.dataset import TargetConfig
from mtrouter_jax.sim.sweep import (calibrate_lambda, evaluate_budgets, summarise_point, with_lambdas)
from mtrouter_jax.sim.policies import escalation_policy, fixed_policy, learned_policy, oracle_policy
from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.sim import WorldConfig, make_sim_params, sim_feature_layout
from mtrouter_jax.estimator.train import TrainConfig
from mtrouter_jax.jobs import (default_budgets, logging_budget_range, reference_cost, simulate_dataset,
                                   train_checkpoint)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=16384, help="logged episodes (sticky roulette)")
    ap.add_argument("--rho", type=float, default=0.9)
    ap.add_argument("--bootstrap-steps", type=int, default=10)
    ap.add_argument("--bootstrap-iterations", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=8, help="epochs per fit")
    ap.add_argument("--sweep-episodes", type=int, default=1024)
    ap.add_argument("--n-budgets", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write all numbers here")
    ap.add_argument("--show", default=None, help="only print the tables of a --json file written earlier")
    a = ap.parse_args()
    if a.show:
        print_tables(json.loads(Path(a.show).read_text()))
        return

    pool, world = default_pool(), WorldConfig()
    sim, layout = make_sim_params(pool, world), sim_feature_layout(pool, world)
    t0 = time.perf_counter()
    ref = reference_cost(pool, world, a.seed)
    budgets = default_budgets(pool, world, a.n_budgets, a.seed, ref=ref)
    eps = simulate_dataset(a.seed, a.episodes, pool, world, behaviour=sticky_behaviour(a.rho), progress=False,
                           budget_range=logging_budget_range(ref))
    k_cal, k_eval = jax.random.split(jax.random.PRNGKey(a.seed + 1))
    n, n_cal = a.sweep_episodes, max(64, a.sweep_episodes // 2)
    cfg = TrainConfig(max_epochs=a.epochs, patience=a.epochs, batch_size=1024)
    variants = {"mc": TargetConfig(),
                "boot": TargetConfig(bootstrap_steps=a.bootstrap_steps, bootstrap_iterations=a.bootstrap_iterations)}
    routers: dict[str, list[dict]] = {}
    uncapped: dict[str, list[dict]] = {}
    lams_unc = [0.0, 0.02, 0.04, 0.08]

    def curve(name, pol, tune=True):
        lams = calibrate_lambda(k_cal, pol, sim, budgets, n_cal) if tune else None
        res = evaluate_budgets(k_eval, pol, sim, budgets, n, with_lambdas(pol, lams) if tune else None)
        routers[name] = [summarise_point(res, j, float(b), None if lams is None else float(lams[j]), pool.names,
                                         world.tools) for j, b in enumerate(budgets)]

    with tempfile.TemporaryDirectory() as d:
        for tag, tcfg in variants.items():
            est, _ = train_checkpoint(eps, pool, Path(d) / tag, cfg, tcfg, progress=False)
            # pacing on/off at the default switch margin; for the bootstrapped estimator also the
            # previous default margin (0.01, i.e. 2 points)
            for pacing, margin in [(True, None), (False, None)] + ([(True, 0.01)] if tag == "boot" else []):
                pol = learned_policy(est, layout, pacing=pacing, switch_margin=margin)
                name = f"mtrouter {tag}{'' if pacing else ' no-pacing'}{'' if margin is None else f' margin {margin:g}'}"
                curve(name, pol)
                r = evaluate_budgets(k_eval, pol, sim, [np.inf] * len(lams_unc), n, with_lambdas(pol, lams_unc))
                uncapped[name] = [{"lam": l, "score": float(r["score"][i]), "cost": float(r["cost"][i]),
                                   "switches": float(r["switches"][i])} for i, l in enumerate(lams_unc)]
    curve("oracle", oracle_policy(0.0, 0.25))
    curve("error-escalation", escalation_policy(pool), tune=False)
    g5 = evaluate_budgets(k_eval, fixed_policy(pool, "gpt-5"), sim, [np.inf], n)
    g5_score, g5_cost = float(g5["score"][0]), float(g5["cost"][0])

    data = {"budgets": [float(b) for b in budgets], "routers": routers, "uncapped": uncapped,
            "gpt5": {"score": g5_score, "cost": g5_cost}, "sweep_episodes": n, "seconds": time.perf_counter() - t0}
    print_tables(data)
    if a.json:
        Path(a.json).write_text(json.dumps(data, indent=2))


def print_tables(data: dict, console: Console | None = None) -> None:
    """Three compact router x budget tables (score, switches, cost) and the uncapped points."""
    con = console or Console(width=160)
    budgets, routers = data["budgets"], data["routers"]
    oracle, esc = routers["oracle"], routers["error-escalation"]
    g5 = data["gpt5"]

    def table(title, cell, extra=None):
        t = Table(title=title)
        t.add_column("router")
        for b in budgets:
            t.add_column(f"${b:.3f}", justify="right")
        if extra:
            t.add_column(extra[0], justify="right")
        for name, pts in routers.items():
            row = [cell(p, o, e) for p, o, e in zip(pts, oracle, esc)]
            t.add_row(name, *row, *([extra[1](pts)] if extra else []))
        con.print(t)

    n = data["sweep_episodes"]
    table(f"score (÷ oracle) under a hard budget, {n} episodes per point; gpt-5 alone {g5['score']:.1f} at "
          f"${g5['cost']:.3f}",
          lambda p, o, e: f"{p['score']:.1f} ({p['score'] / o['score']:.2f})" if o["score"] > 0 else f"{p['score']:.1f}",
          ("AIQ", lambda pts: f"{aiq([p['cost'] for p in pts], [p['score'] for p in pts], max_cost=g5['cost']):.2f}"))
    table("switches per episode (÷ error escalation's)",
          lambda p, o, e: f"{p['switches']:.2f} ({p['switches'] / max(e['switches'], 1e-9):.2f})")
    table("USD per episode · stay-after-error",
          lambda p, o, e: f"${p['cost']:.3f} · " + ("—" if p["stay_after_error"] is None
                                                     else f"{100 * p['stay_after_error']:.0f}%"))
    u = Table(title="uncapped, fixed λ: score @ USD/episode (switches)")
    u.add_column("router")
    lams = [p["lam"] for p in next(iter(data["uncapped"].values()))]
    for lam in lams:
        u.add_column(f"λ={lam:g}", justify="right")
    for name, pts in data["uncapped"].items():
        u.add_row(name, *[f"{p['score']:.1f} @ ${p['cost']:.3f} ({p['switches']:.1f})" for p in pts])
    con.print(u)
    con.print(f"{data.get('seconds', float('nan')):.0f} s in all")


if __name__ == "__main__":
    main()
