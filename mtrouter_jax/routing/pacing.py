"""Budget pacing: what finishing the episode at a model's pace would cost, which models the budget
can carry to the end (``budget_allowed``) and what share of the rest each could pay for
(``affordable_fraction``). Pure functions, used by the routing policies (``routing.policies``) and
the bootstrapped training targets (``estimator.bootstrap``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtrouter_jax.core.features import HistorySummary

PACE_SWITCH_SLACK = 0.8  # a model other than the current one must pace within 80% of what is left


def pace_costs(expected_turn_cost, context_tokens, turn, turns_left, price_cached, price_output, output_tokens):
    """(M,) USD to finish the episode on each model at its pace: this turn's expected cost plus
    ``turns_left`` more turns billed at the cached input price (the context keeps growing at its
    average rate so far, ``context_tokens / (turn + 1)`` per turn) and the mean completion length."""
    n = jnp.maximum(jnp.asarray(turns_left, jnp.float32), 0.0)
    ctx = jnp.asarray(context_tokens, jnp.float32)
    growth = ctx / (jnp.asarray(turn, jnp.float32) + 1.0)
    future_input = n * ctx + growth * n * (n + 1.0) / 2.0
    return jnp.asarray(expected_turn_cost) + future_input * price_cached + n * output_tokens * price_output


def budget_allowed(worst_turn_cost, remaining, pace_cost=None, prev_model=-1, fits=None):
    """(M,) models the budget allows this turn: the worst case of this turn fits ``remaining``
    (the hard rule: the budget is never exceeded; ``fits`` overrides it with a precomputed mask).
    With ``pace_cost`` (budget pacing), only the models that could also finish the episode at
    their pace, unless none could: a model that would exhaust the budget halfway is a poor choice
    even when its next turn fits. Switching to a model needs ``PACE_SWITCH_SLACK`` of the
    remaining budget to cover its pace, staying needs all of it — without this hysteresis a model
    whose pace sits at the limit is dropped and re-picked turn after turn."""
    worst_turn_cost = jnp.asarray(worst_turn_cost)
    fits = worst_turn_cost <= remaining if fits is None else fits
    if pace_cost is None:
        return fits
    prev_model = jnp.asarray(prev_model)
    stays = jnp.arange(worst_turn_cost.shape[-1]) == jnp.expand_dims(prev_model, -1)
    limit = jnp.where(stays, 1.0, PACE_SWITCH_SLACK) * jnp.asarray(remaining)
    paced = fits & (jnp.asarray(pace_cost) <= limit)
    return jnp.where(paced.any(-1, keepdims=True), paced, fits)


def learned_pace(summary: HistorySummary, inputs, p) -> jax.Array:
    """(M,) ``pace_costs`` of the learned router's turn: the task's expected length from ``p``
    (``expected_steps``, prices, mean completion lengths) minus the turns taken."""
    s = summary
    turns_left = p["expected_steps"][jnp.clip(s.task, 0, p["expected_steps"].shape[0] - 1)] - s.turn - 1
    return pace_costs(inputs.expected_cost, s.context_tokens, s.turn, turns_left, p["price_cached"],
                      p["price_output"], p["out_mean"])


def affordable_fraction(summary: HistorySummary, inputs, p) -> jax.Array:
    """(M,) the share of the episode's rest each model could pay for at its pace (``learned_pace``),
    ``min(1, remaining / pace)``; 1 everywhere without ``p["pacing"]``."""
    pace = learned_pace(summary, inputs, p)
    frac = jnp.where(pace > 0, jnp.clip(inputs.remaining / jnp.where(pace > 0, pace, 1.0), 0.0, 1.0), 1.0)
    return jnp.where(p["pacing"], frac, 1.0)


__all__ = ["PACE_SWITCH_SLACK", "pace_costs", "budget_allowed", "learned_pace", "affordable_fraction"]
