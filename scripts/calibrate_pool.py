"""Compare single-model simulator runs of a pool with the MTRouter paper's ScienceWorld table.

    python scripts/calibrate_pool.py --episodes 8192 --seed 0 [--pool my_pool.toml] [--markdown]
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

from mtrouter_jax.sim import policies as P
from mtrouter_jax.core.pool import Pool, load_pool
from mtrouter_jax.sim.rollout import batch_rollout, episode_outcomes
from mtrouter_jax.sim import make_sim_params

# ScienceWorld test split (score in [-100, 100], total $ over the test set), PAPER.md.
PAPER = {"gpt-5": (48.4, 13.9), "deepseek-v3.2": (13.1, 2.9), "minimax-m2": (-0.5, 3.2), "kimi-k2": (5.2, 2.5),
         "gemini-2.5-flash-lite": (4.2, 0.3), "gpt-oss-120b": (26.6, 0.5), "random": (21.7, 3.9)}
REFERENCE = "gpt-5"


def evaluate(pool: Pool, policies: list[P.SimPolicy], episodes: int, seed: int) -> dict[str, dict[str, float]]:
    """Mean score, $/episode, switches and turns per policy; the same key for all (common random numbers)."""
    sim = make_sim_params(pool)
    budgets = jnp.full((episodes,), np.inf, jnp.float32)
    out = {}
    for pol in policies:
        final, rec = batch_rollout(jax.random.key(seed), pol.apply, pol.params, sim, budgets)
        m = jax.device_get(episode_outcomes(final, rec))
        out[pol.name] = {k: float(np.mean(m[k])) for k in ("score", "cost", "switches", "turns")}
    return out


def calibration_rows(pool: Pool, episodes: int, seed: int, oracle_lam: float = 0.0) -> list[dict]:
    """One row per single model, then the baseline routers and the oracle."""
    singles = [P.fixed_policy(pool, n) for n in pool.names]
    routers = [P.random_policy(), P.cheapest_policy(), P.escalation_policy(pool), P.tool_heuristic_policy(pool),
               P.oracle_policy(oracle_lam, cost_scale=0.25)]
    res = evaluate(pool, singles + routers, episodes, seed)
    ref = REFERENCE if REFERENCE in pool.names else pool.names[0]
    rows = []
    for name, r in res.items():
        paper_score, paper_cost = PAPER.get(name, (None, None))
        ratio = r["cost"] / res[ref]["cost"]
        paper_ratio = paper_cost / PAPER[ref][1] if paper_cost is not None and ref in PAPER else None
        rows.append({"name": name, "kind": "model" if name in pool.names else "router", **r,
                     "paper_score": paper_score, "ratio": ratio, "paper_ratio": paper_ratio,
                     "factor": ratio / paper_ratio if paper_ratio else None})
    return rows


COLUMNS = ["policy", "sim score", "paper score", "sim $/episode", f"cost ratio vs {REFERENCE}", "paper ratio",
           "factor", "switches/ep"]


def _cells(r: dict) -> list[str]:
    f = lambda x, fmt: "–" if x is None else format(x, fmt)  # noqa: E731
    return [r["name"], f(r["score"], ".1f"), f(r["paper_score"], ".1f"), f(r["cost"], ".4f"), f(r["ratio"], ".3f"),
            f(r["paper_ratio"], ".3f"), f(r["factor"], ".2f"), f(r["switches"], ".1f")]


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(_cells(r)) + " |" for r in rows])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=4096, help="episodes per policy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", default=None, help="pool file (default: the embedded pool)")
    ap.add_argument("--oracle-lam", type=float, default=0.0, help="cost weight of the oracle router")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table instead of a rich one")
    args = ap.parse_args(argv)
    rows = calibration_rows(load_pool(args.pool), args.episodes, args.seed, args.oracle_lam)
    if args.markdown:
        print(markdown(rows))
        return
    table = Table(title=f"Single-model calibration vs the paper's ScienceWorld table "
                        f"({args.episodes} episodes, seed {args.seed})")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c == "policy" else "right")
    for i, r in enumerate(rows):
        table.add_row(*_cells(r), end_section=i + 1 < len(rows) and r["kind"] != rows[i + 1]["kind"])
    Console(width=None if sys.stdout.isatty() else 150).print(table)  # no wrapping when piped


if __name__ == "__main__":
    main()
