"""Budget-sweep speed: one vmapped ``evaluate_budgets`` call vs the same policy stepped through the
Gymnasium env in a Python loop, plus per-decision routing latency on CPU.

* (a) ``evaluate.evaluate_budgets`` over ``--budgets`` budgets x ``--episodes`` episodes (one
  ``jit(vmap(vmap(rollout)))``); the first call compiles, the second is timed.
* (b) the *same* policy (same params, same lambda, same budgets cycled) stepped turn by turn through
  ``envs.routing_env.MultiTurnRoutingEnv``: each turn is one jitted call of the policy's pure
  ``apply(key, env.state, env.sim, params) -> (model, propensity)`` on the env's internal JAX state, then
  ``env.step(action)``. ``--loop-episodes`` episodes are timed after a warm-up and the
  per-episode cost is extrapolated to budgets x episodes; the ratio is taken within this one run.
* (c) per-decision latency for one history: ``LoadedEstimator.predict(features)`` on one feature
  vector + the decision rule (numpy), the jitted per-step policy decision used in (b), and the live
  router's ``LiveEpisode.decide`` (features + predict + ranking + budget caps), p50/p99.

Routers: the learned MTRouter (a small checkpoint trained here: ``--train-episodes`` simulated
episodes, ``--train-epochs`` epochs) and the privileged oracle. Usage:

    python scripts/bench_sweep.py [--budgets 64] [--episodes 256] [--loop-episodes 64]
        [--latency-calls 2000] [--json out.json]

(the smallest run, as the test suite runs it: ``--budgets 2 --episodes 4 --loop-episodes 1
--latency-calls 3 --latency-warmup 1 --checkpoint CKPT``)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from rich.console import Console
from rich.table import Table

from envs.routing_env import MultiTurnRoutingEnv
from mtrouter_jax import jobs as workflow
from mtrouter_jax.sim.sweep import evaluate_budgets
from mtrouter_jax.sim.policies import SimPolicy, learned_policy, oracle_policy
from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.sim.params import WorldConfig, make_sim_params, sim_feature_layout
from mtrouter_jax.estimator.train import TrainConfig


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def vmapped(policy: SimPolicy, sim, budgets, n_episodes: int, seed: int) -> dict:
    """(a): compile+run, then run again (timed)."""
    key = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    evaluate_budgets(key, policy, sim, budgets, n_episodes)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = evaluate_budgets(key, policy, sim, budgets, n_episodes)
    second = time.perf_counter() - t0
    n = len(budgets) * n_episodes
    turns = float(np.sum(res["turns"]) * n_episodes)
    return {"first_call_s": first, "run_s": second, "compile_s": max(first - second, 0.0),
            "episodes": n, "turns": turns, "episodes_per_s": n / second, "turns_per_s": turns / second,
            "mean_score": float(np.mean(res["score"])), "mean_cost": float(np.mean(res["cost"])),
            "mean_turns": float(np.mean(res["turns"]))}


def model_of(out) -> int:
    """The model index of a policy's ``apply`` output: ``(model, propensity)`` or, for policies
    without a distribution (the oracle), the bare model (as ``sim/rollout.py`` reads it)."""
    return int(out[0] if isinstance(out, tuple) else out)


def python_loop(policy: SimPolicy, env: MultiTurnRoutingEnv, budgets, n_episodes: int, seed: int,
                warmup: int = 2) -> dict:
    """(b): the same policy, one jitted decision + one ``env.step`` per turn, in Python."""
    decide_jit = jax.jit(policy.apply)
    base = jax.random.PRNGKey(seed + 1)

    def run(i):
        env.reset(seed=seed * 100_003 + i, options={"budget": float(budgets[i % len(budgets)])})
        k_ep = jax.random.fold_in(base, i)
        turns = 0
        while True:
            a = model_of(decide_jit(jax.random.fold_in(k_ep, turns), env.state, env.sim, policy.params))
            _, _, term, trunc, info = env.step(a)
            turns += 1
            if term or trunc:
                return turns, info["score"], info["episode_cost"]

    for i in range(warmup):  # compile env._reset/_step and the decision
        run(n_episodes + i)
    t0 = time.perf_counter()
    out = [run(i) for i in range(n_episodes)]
    dt = time.perf_counter() - t0
    steps = sum(o[0] for o in out)
    return {"episodes": n_episodes, "seconds": dt, "per_episode_s": dt / n_episodes, "steps": steps,
            "per_step_ms": 1e3 * dt / steps, "mean_score": float(np.mean([o[1] for o in out])),
            "mean_cost": float(np.mean([o[2] for o in out])), "mean_steps": steps / n_episodes}


def percentiles(fn, calls: int, warmup: int = 50) -> dict:
    for _ in range(warmup):
        fn()
    ts = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        fn()
        ts[i] = time.perf_counter() - t0
    ts *= 1e3
    return {"p50_ms": float(np.percentile(ts, 50)), "p99_ms": float(np.percentile(ts, 99)),
            "mean_ms": float(ts.mean()), "calls": calls}


def latency(est, learned: SimPolicy, env: MultiTurnRoutingEnv, calls: int, seed: int, warmup: int = 50) -> dict:
    """(c): single-history decision latency on CPU."""
    from mtrouter_jax.live.router import Router

    router = Router(est)  # the checkpoint's pool and prices; no upstream calls are made
    ep = router.start_episode(task_type=est.layout.task_types[0], budget=5.0, context_tokens=2000)
    usage = {"prompt_tokens": 3000, "completion_tokens": 400, "prompt_tokens_details": {"cached_tokens": 0}}
    for t, tool in enumerate(("web_search", "read_file", "python")):  # a short, non-trivial history
        model = ep.choose(input_tokens_hi=4000 + 1000 * t)
        ep.record(model, {**usage, "prompt_tokens": 3000 + 1000 * t}, tool_name=tool)
    feats = ep.features()
    worst = ep.worst_costs(8000.0)
    remaining = ep.remaining
    lam, scale = router.lam, router.cost_scale

    def predict_and_rule():
        score, cost = est.predict(feats)
        v = score - lam * cost / scale
        ok = worst <= remaining
        return int(np.argmax(np.where(ok, v, -np.inf))) if ok.any() else int(np.argmin(worst))

    env.reset(seed=seed, options={"budget": 1.0})
    for _ in range(3):
        env.step(0)
    decide_jit = jax.jit(learned.apply)
    key = jax.random.PRNGKey(0)
    state, sim, params = env.state, env.sim, learned.params

    return {
        "predict_plus_rule": percentiles(predict_and_rule, calls, warmup),
        "predict_only": percentiles(lambda: est.predict(feats), calls, warmup),
        "policy_apply_jit": percentiles(lambda: model_of(decide_jit(key, state, sim, params)), calls, warmup),
        "live_decide": percentiles(lambda: ep.decide(input_tokens_hi=8000), calls, warmup),
        "n_features": int(feats.shape[0]),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=int, default=64)
    p.add_argument("--episodes", type=int, default=256, help="episodes per budget in the vmapped sweep")
    p.add_argument("--loop-episodes", type=int, default=64, help="episodes timed in the Python env loop")
    p.add_argument("--latency-calls", type=int, default=2000)
    p.add_argument("--latency-warmup", type=int, default=50, help="untimed calls before the latency timing")
    p.add_argument("--train-episodes", type=int, default=512)
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--lam", type=float, default=1.0, help="cost weight of both routers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="use this checkpoint instead of training one")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    pool, world = default_pool(), WorldConfig()
    sim = make_sim_params(pool, world)
    from mtrouter_jax.estimator.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    if a.checkpoint:
        est = load_checkpoint(a.checkpoint)
        train_info = {"checkpoint": a.checkpoint}
    else:
        eps = workflow.simulate_dataset(a.seed, a.train_episodes, pool, world, progress=False, with_features=False)
        ckpt = Path(tempfile.mkdtemp(prefix="bench_sweep_")) / "ckpt"
        est, res = workflow.train_checkpoint(eps, pool, ckpt, TrainConfig(max_epochs=a.train_epochs, patience=10**9),
                                             progress=False)
        train_info = {"episodes": a.train_episodes, "epochs": a.train_epochs, "turns": int(est.meta["data"]["n_turns"]), "val_loss": res.val_loss,
                      "baseline_val_loss": res.baseline_val_loss, "checkpoint": str(ckpt)}
    train_info["seconds"] = time.perf_counter() - t0
    layout = sim_feature_layout(pool, world)
    budgets = workflow.default_budgets(pool, world, a.budgets, a.seed)
    policies = [learned_policy(est, layout, lam=a.lam), oracle_policy(a.lam, est.cost_scale)]
    env = MultiTurnRoutingEnv(pool, world)

    results: dict = {"train": train_info, "budgets": [float(b) for b in budgets], "routers": {}}
    for pol in policies:
        v = vmapped(pol, sim, budgets, a.episodes, a.seed)
        loop = python_loop(pol, env, budgets, a.loop_episodes, a.seed)
        extrap = loop["per_episode_s"] * v["episodes"]
        results["routers"][pol.name] = {"vmapped": v, "python_loop": loop,
                                        "python_loop_extrapolated_s": extrap, "speedup": extrap / v["run_s"]}
    results["latency"] = latency(est, policies[0], env, a.latency_calls, a.seed, a.latency_warmup)
    results["machine"] = {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "jax": jax.__version__,
                          "loadavg_end": os.getloadavg(),
                          "backend": jax.default_backend(), "python": platform.python_version()}

    con = Console(width=140)
    t = Table(title=f"bench_sweep: {a.budgets} budgets x {a.episodes} episodes "
                    f"({a.budgets * a.episodes:,} episodes, lam={a.lam:g})")
    for c in ("router", "vmapped compile (s)", "vmapped run (s)", "episodes/s (vmapped)",
              f"python loop: {a.loop_episodes} eps (s)", "ms / step (loop)", "loop extrapolated (s)", "speed-up"):
        t.add_column(c, justify="right")
    for name, r in results["routers"].items():
        v, lp = r["vmapped"], r["python_loop"]
        t.add_row(name, f"{v['compile_s']:.1f}", f"{v['run_s']:.2f}", f"{v['episodes_per_s']:,.0f}",
                  f"{lp['seconds']:.1f}", f"{lp['per_step_ms']:.2f}", f"{r['python_loop_extrapolated_s']:,.0f}",
                  f"{r['speedup']:,.0f}x")
    con.print(t)
    s = Table(title="sanity: same policy, same budgets (different random draws)")
    for c in ("router", "mean score vmapped / loop", "mean cost $ vmapped / loop", "mean turns vmapped / loop"):
        s.add_column(c, justify="right")
    for name, r in results["routers"].items():
        v, lp = r["vmapped"], r["python_loop"]
        s.add_row(name, f"{v['mean_score']:.1f} / {lp['mean_score']:.1f}",
                  f"{v['mean_cost']:.4f} / {lp['mean_cost']:.4f}", f"{v['mean_turns']:.1f} / {lp['mean_steps']:.1f}")
    con.print(s)
    L = results["latency"]
    u = Table(title=f"per-decision latency, one history, CPU ({a.latency_calls} calls after warm-up)")
    for c in ("call", "p50 (ms)", "p99 (ms)", "mean (ms)"):
        u.add_column(c, justify="right")
    for key, label in (("predict_only", "LoadedEstimator.predict(features)"),
                       ("predict_plus_rule", "predict + decision rule (numpy)"),
                       ("policy_apply_jit", "jitted policy apply on env state (loop's decision)"),
                       ("live_decide", "LiveEpisode.decide (features+predict+rank+caps)")):
        u.add_row(label, f"{L[key]['p50_ms']:.3f}", f"{L[key]['p99_ms']:.3f}", f"{L[key]['mean_ms']:.3f}")
    con.print(u)
    m = results["machine"]
    print(f"checkpoint: {train_info}\nmachine: {m['cpus']} CPUs, {m['cpu_model']}, jax {m['jax']} ({m['backend']}), load average at end {m['loadavg_end'][0]:.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
