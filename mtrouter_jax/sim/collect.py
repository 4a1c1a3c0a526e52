"""Logged-data collection in the simulator: behaviour policies with propensities -> JSONL episodes.

The paper collects "roulette" data (uniform model per turn, propensity 1/M) and then a second
round with a beta-mixed policy (greedy w.r.t. the current estimator with probability beta, else
uniform). Both, and every other behaviour, are ``routing`` policies (``routing.roulette``,
``routing.explore``) — the same definitions the live router serves — so the logged propensity is
the exact probability of the chosen model given the models the budget allowed.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from mtrouter_jax.routing import policies as routing
from mtrouter_jax.core.features import history_features
from mtrouter_jax.core.vocab import SEVERITIES
from mtrouter_jax.logs.io import Episode, Turn, TurnError
from mtrouter_jax.sim.policies import SimPolicy, random_policy, simulated
from mtrouter_jax.core.pool import Pool
from mtrouter_jax.sim.rollout import batch_rollout_with_decisions
from mtrouter_jax.sim.params import SimParams, WorldConfig, sim_feature_layout



def uniform_behaviour() -> SimPolicy:
    """The paper's roulette logging policy: a uniform affordable model every turn."""
    return simulated(routing.roulette(0.0))


def sticky_behaviour(rho: float = 0.9) -> SimPolicy:
    """'Sticky roulette': keep the previous model with probability ``rho``, else a uniform model.

    Per-turn uniform logging makes every turn's model matter for one turn only, so the returns it
    logs differ between models by a point or two against an outcome noise of ~40 points (see
    docs/benchmarks.md). A sticky logging policy keeps each choice for ~1/(1-rho) turns, so the
    return of choosing m reflects a stretch of m — the decision a low-switching router actually makes.
    Propensities are exact: rho*[a == prev] + (1 - rho)/|allowed|.
    """
    return simulated(routing.roulette(rho))


def behaviour_policy(router: str, pool: Pool, world: WorldConfig, explore: str | None = None) -> SimPolicy:
    """A behaviour policy by spec (``routers.build_router`` + ``with_exploration``) for the simulator."""
    from mtrouter_jax.routing.specs import build_router, with_exploration

    rp = with_exploration(build_router(router, pool, world.tools, flag="--router"), explore)
    return simulated(rp)


def sample_budgets(key, n: int, low: float | None, high: float | None, p_none: float = 0.25) -> jax.Array:
    """Per-episode budgets, log-uniform in [low, high] USD; a share ``p_none`` without budget.

    Logging under varied budgets teaches the estimator what the remaining-budget feature means.
    """
    if low is None or high is None:
        return jnp.full((n,), jnp.inf, jnp.float32)
    k1, k2 = jax.random.split(key)
    b = jnp.exp(jax.random.uniform(k1, (n,), minval=math.log(low), maxval=math.log(high)))
    return jnp.where(jax.random.uniform(k2, (n,)) < p_none, jnp.inf, b).astype(jnp.float32)


def simulate_batches(key, behaviour: SimPolicy, sim: SimParams, budgets: jax.Array, batch_size: int = 4096
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
        # float64 is exact for float32 values, and ``tolist`` + ``map(round, ...)`` gives the same
        # numbers as rounding each ``float(x)`` without a Python-level loop per element
        feats = np.asarray(_features_fn(layout)(dec.summary)).astype(np.float64)
    episodes = []
    for i in range(n):
        turns = []
        for t in np.flatnonzero(rec.executed[i]):
            sev = int(rec.severity[i, t])
            err = None if sev < 0 else TurnError(world.error_kinds[int(rec.error_kind[i, t])], SEVERITIES[sev])
            turns.append(Turn(
                model=names[int(rec.model[i, t])], input_tokens=int(rec.input_tokens[i, t]),
                cached_tokens=int(rec.cached_tokens[i, t]), output_tokens=int(rec.output_tokens[i, t]),
                cost=float(rec.cost[i, t]), tool=tools[int(rec.tool[i, t])], error=err,
                propensity=float(min(max(dec.propensity[i, t], 1e-6), 1.0)),
                features=tuple(map(round, feats[i, t].tolist(), _FIVES)) if feats is not None else None,
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


_FIVES = itertools.repeat(5)  # decimals kept of each logged feature (map stops at the shorter input)


@functools.lru_cache(maxsize=8)
def _features_fn(layout):
    return jax.jit(jax.vmap(jax.vmap(lambda s: history_features(s, layout))))


__all__ = ["behaviour_policy", "uniform_behaviour", "sticky_behaviour", "random_policy", "sample_budgets", "simulate_batches", "to_episodes"]
