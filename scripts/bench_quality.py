"""How good is the learned router, per logging policy and data size? (measurements, not tests)

For each (behaviour, episodes): simulate logs, train, then report
- validation loss vs the per-model-mean baseline,
- how often the estimator's greedy model (lambda = 0) equals the oracle's on held-out states
  visited by a uniform-random rollout (chance = 1/M),
- uncapped rollouts at a few lambdas: score, $/episode, switches, stay-after-error,
next to gpt-5 alone and the oracle.

    python scripts/bench_quality.py --behaviour uniform sticky --episodes 8192
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

from mtrouter_jax.sim.collect import sticky_behaviour
from mtrouter_jax.sim.sweep import evaluate_budgets, with_lambdas
from mtrouter_jax.sim.policies import _oracle_apply, fixed_policy, learned_policy, oracle_policy
from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.sim.rollout import batch_rollout_with_decisions
from mtrouter_jax.sim import WorldConfig, make_sim_params, sim_feature_layout
from mtrouter_jax.estimator.train import TrainConfig
from mtrouter_jax.jobs import simulate_dataset, train_checkpoint


def oracle_agreement(est, sim, layout, n_states: int = 4096, seed: int = 123) -> float:
    """Share of held-out states where argmax_m S'(h, m) equals the oracle's (lambda = 0) choice."""
    n_ep = max(n_states // 16, 1)  # ~16+ decisions per episode
    learned = learned_policy(est, layout, lam=0.0, switch_margin=0.0)

    def both(key, state, sim_, p):
        return _oracle_apply(key, state, sim_, p["oracle"]), learned.apply(key, state, sim_, p["learned"])

    def agree_apply(key, state, sim_, p):
        o, l = both(key, state, sim_, p)
        a = jax.random.randint(key, (), 0, sim_.n_models, dtype=jnp.int32)  # random behaviour
        return a, (o == l).astype(jnp.float32)  # "propensity" slot carries agreement

    params = {"oracle": oracle_policy(0.0).params, "learned": learned.params}
    _, rec, dec = batch_rollout_with_decisions(jax.random.PRNGKey(seed + 1), agree_apply, params, sim,
                                               jnp.full((n_ep,), jnp.inf, jnp.float32))
    ex = np.asarray(rec.executed)
    return float(np.asarray(dec.propensity)[ex].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--behaviour", nargs="+", default=["uniform", "sticky"], choices=["uniform", "sticky"])
    ap.add_argument("--episodes", type=int, nargs="+", default=[8192])
    ap.add_argument("--rho", type=float, default=0.9)
    ap.add_argument("--eval-episodes", type=int, default=512)
    ap.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.03, 0.1])
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    pool, world = default_pool(), WorldConfig()
    sim, layout = make_sim_params(pool, world), sim_feature_layout(pool, world)
    key = jax.random.PRNGKey(99)
    inf = [np.inf]
    ref = {"gpt-5": evaluate_budgets(key, fixed_policy(pool, "gpt-5"), sim, inf, a.eval_episodes),
           "oracle": evaluate_budgets(key, oracle_policy(0.0), sim, inf, a.eval_episodes)}
    rows = [{"router": k, "score": float(v["score"][0]), "cost": float(v["cost"][0]),
             "switches": float(v["switches"][0])} for k, v in ref.items()]
    for beh in a.behaviour:
        for n in a.episodes:
            t0 = time.perf_counter()
            behaviour = sticky_behaviour(a.rho) if beh == "sticky" else None
            eps = simulate_dataset(0, n, pool, world, behaviour=behaviour, progress=False, with_features=False)
            with tempfile.TemporaryDirectory() as d:
                est, res = train_checkpoint(eps, pool, Path(d) / "ck", TrainConfig(max_epochs=10, patience=10,
                                                                                 batch_size=1024), progress=False)
                agree = oracle_agreement(est, sim, layout)
                pol = learned_policy(est, layout, lam=1.0)  # the λ the documented table was measured at
                r = evaluate_budgets(key, pol, sim, [np.inf] * len(a.lams), a.eval_episodes,
                                     with_lambdas(pol, a.lams))
            for i, lam in enumerate(a.lams):
                after = float(r["after_error_turns"][i])
                rows.append({"router": f"mtrouter {beh} n={n} lam={lam:g}", "score": float(r["score"][i]),
                             "cost": float(r["cost"][i]), "switches": float(r["switches"][i]),
                             "stay_after_error": float(r["stayed_after_error"][i]) / after if after else None,
                             "val_loss": res.val_loss, "baseline_val_loss": res.baseline_val_loss,
                             "oracle_agreement": agree, "seconds": time.perf_counter() - t0})
    t = Table(title=f"learned router quality ({a.eval_episodes} eval episodes, uncapped; chance agreement "
                    f"{1 / len(pool):.2f})")
    for c in ("router", "score", "$/ep", "switches", "stay-after-error", "val / baseline", "oracle agree"):
        t.add_column(c, justify="left" if c == "router" else "right")
    for r_ in rows:
        t.add_row(r_["router"], f"{r_['score']:.1f}", f"{r_['cost']:.3f}", f"{r_['switches']:.2f}",
                  "—" if r_.get("stay_after_error") is None else f"{100 * r_['stay_after_error']:.0f}%",
                  f"{r_['val_loss']:.4f} / {r_['baseline_val_loss']:.4f}" if "val_loss" in r_ else "—",
                  f"{r_['oracle_agreement']:.2f}" if "oracle_agreement" in r_ else "—")
    Console(width=160).print(t)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
