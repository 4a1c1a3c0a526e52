"""Logged-data collection in the simulator: behaviour policies with propensities -> JSONL episodes.

The paper collects "roulette" data (uniform model per turn, propensity 1/M) and then a second
round with a beta-mixed policy (greedy w.r.t. the current estimator with probability beta, else
uniform). ``sticky_behaviour`` generalises the roulette (keep the last model with probability rho;
rho = 0 is the paper's uniform) and ``mixed_policy`` mixes any base policy with it; both log the
exact probability of the chosen model.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from mtrouter_jax.features import history_features
from mtrouter_jax.logs import Episode, Turn, TurnError
from mtrouter_jax.policy import Policy, random_policy
from mtrouter_jax.pool import Pool
from mtrouter_jax.rollout import batch_rollout_with_decisions
from mtrouter_jax.sim.params import SimParams, WorldConfig, sim_feature_layout

SEVERITY_NAMES = ("low", "medium", "high")


def _explore_prob(action, prev, rho, n_models):
    """P(action) under sticky roulette (rho = 0: uniform)."""
    rho = jnp.where(prev >= 0, rho, 0.0)
    return rho * (action == prev) + (1.0 - rho) / n_models


@functools.lru_cache(maxsize=None)
def _mixed_apply_for(base_apply: Callable) -> Callable:
    # cached so the same base policy always yields the same (static, hashable) apply function
    def apply(key, state, sim, p):
        k_base, k_coin, k_explore = jax.random.split(key, 3)
        base = base_apply(k_base, state, sim, p["base"])
        base = base[0] if isinstance(base, tuple) else base
        explore = jax.random.uniform(k_coin) < p["eps"]
        other, _ = _sticky_apply(k_explore, state, sim, {"rho": p["rho"]})
        action = jnp.where(explore, other, base).astype(jnp.int32)
        prev = state.summary.prev_model
        prop = p["eps"] * _explore_prob(action, prev, p["rho"], sim.n_models) + (1.0 - p["eps"]) * (action == base)
        return action, prop

    return apply


def mixed_policy(base: Policy, eps: float, rho: float = 0.0) -> Policy:
    """Behaviour policy: ``base`` with probability ``1 - eps``, else sticky roulette (``rho``;
    0 = a uniform model). Logs the exact probability of the chosen model."""
    return Policy(f"{base.name}+eps{eps:g}", _mixed_apply_for(base.apply),
                  {"base": base.params, "eps": jnp.float32(eps), "rho": jnp.float32(rho)})


def _sticky_apply(key, state, sim, p):
    k_stay, k_unif = jax.random.split(key)
    prev = state.summary.prev_model
    unif = jax.random.randint(k_unif, (), 0, sim.n_models, dtype=jnp.int32)
    stay = (prev >= 0) & (jax.random.uniform(k_stay) < p["rho"])
    action = jnp.where(stay, prev, unif).astype(jnp.int32)
    return action, _explore_prob(action, prev, p["rho"], sim.n_models)


def uniform_behaviour() -> Policy:
    """The paper's roulette logging policy: a uniform model every turn, propensity 1/M."""
    return Policy("uniform", _sticky_apply, {"rho": jnp.float32(0.0)})


def sticky_behaviour(rho: float = 0.9) -> Policy:
    """'Sticky roulette': keep the previous model with probability ``rho``, else a uniform model.

    Per-turn uniform logging makes every turn's model matter for one turn only, so the returns it
    logs differ between models by a point or two against an outcome noise of ~40 points (see
    docs/benchmarks.md). A sticky logging policy keeps each choice for ~1/(1-rho) turns, so the
    return of choosing m reflects a stretch of m — the decision a low-switching router actually makes.
    Propensities are exact: rho*[a == prev] + (1 - rho)/M.
    """
    return Policy(f"sticky{rho:g}", _sticky_apply, {"rho": jnp.float32(rho)})


def sample_budgets(key, n: int, low: float | None, high: float | None, p_none: float = 0.25) -> jax.Array:
    """Per-episode budgets, log-uniform in [low, high] USD; a share ``p_none`` without budget.

    Logging under varied budgets teaches the estimator what the remaining-budget feature means.
    """
    if low is None or high is None:
        return jnp.full((n,), jnp.inf, jnp.float32)
    k1, k2 = jax.random.split(key)
    b = jnp.exp(jax.random.uniform(k1, (n,), minval=math.log(low), maxval=math.log(high)))
    return jnp.where(jax.random.uniform(k2, (n,)) < p_none, jnp.inf, b).astype(jnp.float32)


def simulate_batches(key, behaviour: Policy, sim: SimParams, budgets: jax.Array, batch_size: int = 4096
                     ) -> Iterator[tuple[dict, int]]:
    """Yield host-side numpy rollout batches ``(arrays, n)`` covering ``len(budgets)`` episodes."""
    n = budgets.shape[0]
    for start in range(0, n, batch_size):
        b = budgets[start:start + batch_size]
        pad = batch_size - b.shape[0]
        if pad:  # keep one compiled shape
            b = jnp.concatenate([b, jnp.full((pad,), jnp.inf, jnp.float32)])
        final, rec, dec = batch_rollout_with_decisions(jax.random.fold_in(key, start), behaviour.apply,
                                                       behaviour.params, sim, b)
        host = jax.device_get({"final": final, "records": rec, "decisions": dec})
        yield host, batch_size - pad


def to_episodes(host: dict, n: int, pool: Pool, world: WorldConfig, start_id: int = 0,
                with_features: bool = True, id_prefix: str = "sim") -> list[Episode]:
    """Convert one host batch of rollouts into ``Episode`` records (the JSONL interchange format)."""
    final, rec, dec = host["final"], host["records"], host["decisions"]
    names = pool.names
    tools = world.tools
    tasks = [t.name for t in world.tasks]
    feats = None
    if with_features:
        layout = sim_feature_layout(pool, world)
        feats = np.asarray(_features_fn(layout)(dec.summary))
    episodes = []
    for i in range(n):
        turns = []
        for t in np.flatnonzero(rec.executed[i]):
            sev = int(rec.severity[i, t])
            err = None if sev < 0 else TurnError(world.error_kinds[int(rec.error_kind[i, t])], SEVERITY_NAMES[sev])
            turns.append(Turn(
                model=names[int(rec.model[i, t])], input_tokens=int(rec.input_tokens[i, t]),
                cached_tokens=int(rec.cached_tokens[i, t]), output_tokens=int(rec.output_tokens[i, t]),
                cost=float(rec.cost[i, t]), tool=tools[int(rec.tool[i, t])], error=err,
                propensity=float(min(max(dec.propensity[i, t], 1e-6), 1.0)),
                features=tuple(round(float(x), 5) for x in feats[i, t]) if feats is not None else None,
            ))
        if not turns:  # budget too small for even one turn: nothing to learn from
            continue
        budget = float(final.summary.budget[i])
        episodes.append(Episode(
            episode_id=f"{id_prefix}-{start_id + i:07d}", task_type=tasks[int(final.summary.task[i])],
            score=float(final.credit[i]) * 100.0, budget=budget if math.isfinite(budget) else None,
            models=names, turns=tuple(turns), score_range=(-100.0, 100.0), source="sim",
            meta={"terminated": bool(final.terminated[i]), "cache_miss_cost": float(final.cache_miss_cost[i])},
        ))
    return episodes


@functools.lru_cache(maxsize=8)
def _features_fn(layout):
    return jax.jit(jax.vmap(jax.vmap(lambda s: history_features(s, layout))))


__all__ = ["mixed_policy", "uniform_behaviour", "sticky_behaviour", "random_policy", "sample_budgets", "simulate_batches", "to_episodes"]
