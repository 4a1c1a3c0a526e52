"""Fixed-length ``lax.scan`` rollouts of any policy in the simulator, batched with ``vmap``.

The terminal state is absorbing, so scanning ``max_steps`` steps is exact; per-turn
``TurnRecord``s come back stacked along a leading time axis for metrics and logging.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from flax import struct

from mtrouter_jax.core.features import HistorySummary
from mtrouter_jax.sim.core import EpisodeState, TurnRecord, reset, step
from mtrouter_jax.sim.params import SimParams


@struct.dataclass
class Decisions:
    """What the policy saw and how sure it was, per step (stacked along time by the scan)."""

    summary: HistorySummary  # observable summary before the step
    propensity: jnp.ndarray  # () probability the policy gave to its action (1.0 if deterministic)


def rollout(key, apply, policy_params, sim: SimParams, budget=jnp.inf):
    """One episode: ``(final_state, records, decisions)``, the last two stacked over max_steps.

    ``apply`` may return an action or ``(action, propensity)`` (stochastic behaviour policies).
    """
    k_reset, k_loop = jax.random.split(key)
    state = reset(k_reset, sim, budget)

    def body(state, k):
        k_pol, k_env = jax.random.split(k)
        out = apply(k_pol, state, sim, policy_params)
        action, prop = out if isinstance(out, tuple) else (out, jnp.float32(1.0))
        new_state, record, _ = step(k_env, state, action, sim)
        return new_state, (record, Decisions(state.summary, jnp.asarray(prop, jnp.float32)))

    final, (records, decisions) = jax.lax.scan(body, state, jax.random.split(k_loop, sim.max_steps))
    return final, records, decisions


def batch_rollout(key, apply, policy_params, sim: SimParams, budgets):
    """``len(budgets)`` independent episodes in one compiled call (budgets: (N,) USD, inf = none).

    Returns ``(final, records)``; use ``batch_rollout_with_decisions`` to also get what the policy saw.
    """
    final, records, _ = batch_rollout_with_decisions(key, apply, policy_params, sim, budgets)
    return final, records


def batch_rollout_with_decisions(key, apply, policy_params, sim: SimParams, budgets):
    """Like ``batch_rollout`` but returns ``(final, records, decisions)``."""
    # strong float32 budgets: a weak-typed array would compile a second variant
    return _batch_rollout(key, apply, policy_params, sim, jnp.asarray(budgets, jnp.float32))


@partial(jax.jit, static_argnums=(1,))
def _batch_rollout(key, apply, policy_params, sim: SimParams, budgets):
    keys = jax.random.split(key, budgets.shape[0])
    return jax.vmap(rollout, in_axes=(0, None, None, None, 0))(keys, apply, policy_params, sim, budgets)


def episode_outcomes(final: EpisodeState, rec: TurnRecord) -> dict[str, jax.Array]:
    """Per-episode metrics from a (batched) rollout; arrays have the batch shape of ``final``."""
    ex = rec.executed
    err = rec.severity >= 0
    # stay-after-error: turn t+1 served by the model of error turn t (both executed)
    after_err = err[..., :-1] & ex[..., 1:]
    stayed = after_err & (rec.model[..., 1:] == rec.model[..., :-1])
    return {
        "score": final.score,
        "cost": jnp.sum(rec.cost, axis=-1),
        "cache_miss_cost": jnp.sum(rec.cache_miss_cost, axis=-1),
        "turns": jnp.sum(ex, axis=-1),
        "switches": jnp.sum(rec.switched, axis=-1),
        "errors": jnp.sum(err, axis=-1),
        "after_error_turns": jnp.sum(after_err, axis=-1),
        "stayed_after_error": jnp.sum(stayed, axis=-1),
        "terminated": final.terminated,
        "budget_truncated": final.truncated & (final.summary.turn < 1_000_000) & (
            final.summary.cost + 1e-9 < final.summary.budget) & jnp.isfinite(final.summary.budget),
        "over_budget": final.summary.cost > final.summary.budget * (1 + 1e-6),
    }


def tool_model_counts(rec: TurnRecord, n_tools: int, n_models: int) -> jax.Array:
    """(n_tools, n_models) count of executed turns by tool type and serving model."""
    t = jnp.where(rec.executed, rec.tool, n_tools)
    m = jnp.where(rec.executed, rec.model, 0)
    flat = t.reshape(-1) * n_models + m.reshape(-1)
    counts = jnp.zeros(((n_tools + 1) * n_models,), jnp.float32).at[flat].add(1.0)
    return counts.reshape(n_tools + 1, n_models)[:n_tools]
