"""Budget sweeps: one ``jit(vmap(vmap(rollout)))`` over budgets x episodes for any policy, plus
per-budget lambda calibration and the behaviour metrics the MTRouter paper reports.

All routers share the same episode keys (common random numbers), so differences between routers
at one budget are not sampling noise of different task draws.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtrouter_jax.sim.policies import SimPolicy
from mtrouter_jax.routing.meta import select_lambda
from mtrouter_jax.routing.policies import set_lam
from mtrouter_jax.sim.rollout import episode_outcomes, rollout, tool_model_counts
from mtrouter_jax.sim.params import SimParams

LAMBDA_GRID = (0.0, 0.02, 0.04, 0.06, 0.08, 0.12, 0.2, 0.4, 0.8, 1.5, 3.0)


def _sweep_impl(key, apply, policy_params, sim: SimParams, budgets, n_episodes: int, params_batched: bool):
    keys = jax.random.split(key, n_episodes)  # identical episodes for every budget and router

    def one_budget(pp, budget):
        final, rec, _ = jax.vmap(rollout, in_axes=(0, None, None, None, None))(keys, apply, pp, sim, budget)
        m = episode_outcomes(final, rec)
        n = jnp.float32(n_episodes)
        sd = lambda x: jnp.std(x.astype(jnp.float32))  # noqa: E731
        return {
            "episode_score": m["score"],  # per episode, for paired comparisons (same keys everywhere)
            "score": jnp.mean(m["score"]), "score_ci": 1.96 * sd(m["score"]) / jnp.sqrt(n),
            "cost": jnp.mean(m["cost"]), "cost_ci": 1.96 * sd(m["cost"]) / jnp.sqrt(n),
            "cache_miss_cost": jnp.mean(m["cache_miss_cost"]),
            "switches": jnp.mean(m["switches"]),
            "after_error_turns": jnp.sum(m["after_error_turns"]),
            "stayed_after_error": jnp.sum(m["stayed_after_error"]),
            "over_budget_rate": jnp.mean(m["over_budget"]),
            "budget_truncated_rate": jnp.mean(m["budget_truncated"]),
            "max_cost_over_budget": jnp.max(m["cost"] - budget),
            "turns": jnp.mean(m["turns"]),
            "tool_model_counts": tool_model_counts(rec, sim.n_tools, sim.n_models),
        }

    return jax.vmap(one_budget, in_axes=(0 if params_batched else None, 0))(policy_params, budgets)


_sweep = jax.jit(_sweep_impl, static_argnums=(1, 5, 6))
# Rollouts without an estimator run in milliseconds but take seconds to compile; XLA's backend
# optimisations (LLVM -O0 here) cost ~2.4x the compile time for nothing they could save. Same
# episodes, same scores; sums may round differently in the last bit.
_sweep_quick_compile = jax.jit(_sweep_impl, static_argnums=(1, 5, 6),
                               compiler_options={"xla_backend_optimization_level": 0})


def evaluate_budgets(key, policy: SimPolicy, sim: SimParams, budgets, n_episodes: int,
                     per_budget_params=None, quick_compile: bool = False) -> dict[str, np.ndarray]:
    """Roll ``policy`` out for ``n_episodes`` at every budget (USD per episode; inf = no cap).

    ``per_budget_params``: the policy's params with a leading budget axis (e.g. calibrated lambdas).
    ``quick_compile``: compile without XLA's backend optimisations, for cheap policies (no
    estimator), whose compile time dwarfs their run time. Returns numpy arrays with a leading
    budget axis.
    """
    budgets = jnp.asarray(budgets, jnp.float32)
    params = policy.params if per_budget_params is None else per_budget_params
    run = _sweep_quick_compile if quick_compile else _sweep
    out = run(key, policy.apply, params, sim, budgets, int(n_episodes), per_budget_params is not None)
    return jax.device_get(out)


def with_lambdas(policy: SimPolicy, lams) -> dict:
    """SimPolicy params broadcast along a leading axis with one lambda per entry."""
    lams = jnp.asarray(lams, jnp.float32)
    p = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (lams.shape[0],) + jnp.shape(x)), policy.params)
    return set_lam(p, lams)


def calibrate_lambda(key, policy: SimPolicy, sim: SimParams, budgets, n_episodes: int,
                     grid: Sequence[float] = LAMBDA_GRID, quick_compile: bool = False) -> np.ndarray:
    """Per hard budget, the lambda of ``grid`` chosen by ``routing.meta.select_lambda`` on these
    calibration episodes: the smallest lambda unless another scores better by a paired 95 % lower
    bound above 0 (the rule of ``eval scienceworld`` too; the best mean alone is a winner's-curse pick).

    All (lambda, budget) pairs run as one vmapped computation on the same episode keys, so the
    differences between lambdas are paired. Under a hard per-episode cap the cap itself guarantees
    the spend, so the right lambda is the one that uses it best.
    """
    budgets = np.asarray(budgets, np.float32)
    G, B = len(grid), len(budgets)
    lam = np.repeat(np.asarray(grid, np.float32), B)
    bud = np.tile(budgets, G)
    res = evaluate_budgets(key, policy, sim, bud, n_episodes, with_lambdas(policy, lam), quick_compile)
    scores = np.asarray(res["episode_score"], np.float64).reshape(G, B, -1)
    return np.array([select_lambda({float(grid[g]): dict(enumerate(scores[g, b])) for g in range(G)})
                     for b in range(B)], np.float32)


def lambda_for_mean_cost(key, policy: SimPolicy, sim: SimParams, targets, n_episodes: int,
                         lo: float = 0.0, hi: float = 20.0, iters: int = 12) -> np.ndarray:
    """Bisection on lambda so the *mean* episode cost (no hard cap) meets each target in ``targets``.

    All targets are bisected together: each iteration is one vmapped sweep over targets.
    """
    targets = np.asarray(targets, np.float32)
    lo_v = np.full_like(targets, lo)
    hi_v = np.full_like(targets, hi)
    nocap = np.full_like(targets, np.inf)
    for _ in range(iters):
        mid = 0.5 * (lo_v + hi_v)
        cost = evaluate_budgets(key, policy, sim, nocap, n_episodes, with_lambdas(policy, mid))["cost"]
        too_expensive = cost > targets
        lo_v = np.where(too_expensive, mid, lo_v)
        hi_v = np.where(too_expensive, hi_v, mid)
    return hi_v  # the cheaper side: mean cost <= target (up to sampling noise)


def summarise_point(res: dict, i: int, budget: float | None, lam: float | None, pool_names, tools) -> dict:
    """One budget's metrics as the JSON-able point the reports consume."""
    counts = np.asarray(res["tool_model_counts"][i], np.float64)  # (K, M)
    total = counts.sum()
    model_share = counts.sum(0) / max(total, 1.0)
    tool_share = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)
    over = np.where(model_share[None] > 0, tool_share / np.where(model_share[None] > 0, model_share[None], 1.0), 0.0)
    after = float(res["after_error_turns"][i])
    f = lambda k: float(res[k][i])  # noqa: E731
    return {
        "budget": None if budget is None or not math.isfinite(budget) else float(budget),
        "lam": None if lam is None else float(lam),
        "score": f("score"), "score_ci": f("score_ci"), "cost": f("cost"), "cost_ci": f("cost_ci"),
        "cache_miss_cost": f("cache_miss_cost"), "switches": f("switches"),
        "stay_after_error": float(res["stayed_after_error"][i]) / after if after > 0 else None,
        "over_budget_rate": f("over_budget_rate"), "budget_truncated_rate": f("budget_truncated_rate"),
        "turns": f("turns"),
        "tool_model_share": {t: {m: float(tool_share[k, j]) for j, m in enumerate(pool_names)}
                             for k, t in enumerate(tools) if counts[k].sum() > 0},
        "model_share": {m: float(model_share[j]) for j, m in enumerate(pool_names)},
        "over_representation": {t: {m: float(over[k, j]) for j, m in enumerate(pool_names)}
                                for k, t in enumerate(tools) if counts[k].sum() > 0},
    }
