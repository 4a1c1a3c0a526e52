"""Routing policies as pure functions ``apply(key, state, sim_params, policy_params) -> model index``.

Every policy (baselines, oracle, the learned router) has this signature so the same compiled
rollout evaluates all of them. Policies read only ``state.summary`` (what a router observes),
except the oracle, which also reads the hidden phase and the true capabilities by design.
Policy parameters are pytrees so budgets and lambdas can be traced, vmapped axes.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from mtrouter_jax.features import NO_VALUE, FeatureLayout, history_features, remap_summary, vocab_index
from mtrouter_jax.pool import Pool
from mtrouter_jax.sim.core import EpisodeState, expected_turn_costs, turn_cost
from mtrouter_jax.sim.params import TOOLS, SimParams


class Policy(NamedTuple):
    """A routing policy: a module-level pure ``apply`` (static under jit) and its param pytree."""

    name: str
    apply: Callable[..., jax.Array]
    params: Any


def affordable_mask(state: EpisodeState, sim: SimParams) -> jax.Array:
    """(M,) models whose worst-case cost for this turn fits the remaining budget."""
    s = state.summary
    return s.cost + expected_turn_costs(sim, state, upper=True) <= s.budget


def masked_argmax(values: jax.Array, mask: jax.Array, fallback: jax.Array) -> jax.Array:
    """Deterministic argmax over allowed entries (ties -> lowest index); ``fallback`` if none allowed."""
    best = jnp.argmax(jnp.where(mask, values, -jnp.inf))
    return jnp.where(mask.any(), best, fallback).astype(jnp.int32)


def cheapest_now(state: EpisodeState, sim: SimParams) -> jax.Array:
    """Model with the lowest expected cost for this turn (cache hits included)."""
    return jnp.argmin(expected_turn_costs(sim, state)).astype(jnp.int32)


# --- baselines -------------------------------------------------------------------------------

def _fixed_apply(key, state, sim, p):
    return jnp.asarray(p["model"], jnp.int32)


def fixed_policy(pool: Pool, name: str) -> Policy:
    """Always call one model."""
    return Policy(name, _fixed_apply, {"model": jnp.int32(pool.index(name))})


def _random_apply(key, state, sim, p):
    return jax.random.randint(key, (), 0, sim.n_models, dtype=jnp.int32)


def random_policy() -> Policy:
    """Uniform per-turn choice (the paper's 'roulette' logging policy, propensity 1/M)."""
    return Policy("random", _random_apply, {})


def _cheapest_apply(key, state, sim, p):
    return cheapest_now(state, sim)


def cheapest_policy() -> Policy:
    """The model that is cheapest for this turn, counting prompt-cache hits."""
    return Policy("cheapest", _cheapest_apply, {})


def _escalation_apply(key, state, sim, p):
    s = state.summary
    ladder, rung_of = p["ladder"], p["rung_of"]
    top = ladder.shape[0] - 1
    rung = jnp.where(s.prev_model >= 0, rung_of[jnp.maximum(s.prev_model, 0)], 0)
    last_error = s.recent_severities[0] >= 0
    calm = (s.turns_since_error >= p["down_after"]) & (s.model_streak >= p["down_after"])
    new_rung = jnp.where(s.turn == 0, 0,
                         jnp.where(last_error, jnp.minimum(rung + 1, top),
                                   jnp.where(calm, jnp.maximum(rung - 1, 0), rung)))
    return ladder[new_rung].astype(jnp.int32)


DEFAULT_LADDER = ("gpt-oss-120b", "deepseek-v3.2", "gpt-5")


def escalation_policy(pool: Pool, ladder: Sequence[str] | None = None, down_after: int = 3) -> Policy:
    """Move one rung up the ladder after an error; back down after ``down_after`` clean turns."""
    if ladder is None:
        ladder = [n for n in DEFAULT_LADDER if n in pool.names] or sorted(
            pool.names, key=lambda n: pool[n].price_input + pool[n].price_output)
    idx = [pool.index(n) for n in ladder]
    rung_of = np.zeros(len(pool), np.int32)  # models off the ladder count as the bottom rung
    for r, i in enumerate(idx):
        rung_of[i] = r
    return Policy("error-escalation", _escalation_apply,
                  {"ladder": jnp.asarray(idx, jnp.int32), "rung_of": jnp.asarray(rung_of),
                   "down_after": jnp.int32(down_after)})


def _tool_heuristic_apply(key, state, sim, p):
    s = state.summary
    last = jnp.where(s.turn > 0, s.recent_tools[0], p["table"].shape[0] - 1)
    return p["table"][jnp.clip(last, 0, p["table"].shape[0] - 1)].astype(jnp.int32)


DEFAULT_TOOL_CLASSES = {"search": "cheap", "file": "cheap", "python": "strong",
                        "reasoning": "strong", "answer": "strong", "<start>": "cheap"}
DEFAULT_CLASS_MODELS = {"cheap": "gpt-oss-120b", "strong": "gpt-5"}


def tool_heuristic_policy(pool: Pool, tools: Sequence[str] = TOOLS,
                          tool_classes: Mapping[str, str] | None = None,
                          class_models: Mapping[str, str] | None = None) -> Policy:
    """Zero-training router: the last turn's tool type (a proxy for the phase) -> model class -> model.

    Defaults: search/file turns -> a cheap model, python/reasoning/answer -> the strong model.
    """
    tool_classes = {**DEFAULT_TOOL_CLASSES, **(tool_classes or {})}
    class_models = dict(class_models or {})
    for cls, name in DEFAULT_CLASS_MODELS.items():
        class_models.setdefault(cls, name if name in pool.names else (
            min(pool.names, key=lambda n: pool[n].price_input) if cls == "cheap"
            else max(pool.names, key=lambda n: pool[n].price_output)))
    table = []
    for t in list(tools) + ["<start>"]:
        cls = tool_classes.get(t, "strong")
        if cls not in class_models:
            raise ValueError(f"tool {t!r} maps to class {cls!r} with no model (classes: {sorted(class_models)})")
        table.append(pool.index(class_models[cls]))
    return Policy("tool-heuristic", _tool_heuristic_apply, {"table": jnp.asarray(table, jnp.int32)})


def _oracle_apply(key, state, sim, p):
    s = state.summary
    task, phase = s.task, state.phase
    n_ph = sim.n_phases[task]
    final_credit = sim.phase_credit[task, n_ph - 1]
    switched = (s.prev_model >= 0) & (jnp.arange(sim.n_models) != s.prev_model)
    p_ok = 1.0 - jnp.clip(sim.error_rate + sim.switch_error_bump * switched, 0.0, 1.0)
    in_answer = phase >= n_ph - 1
    per_success = jnp.where(in_answer, final_credit,
                            sim.phase_credit[task, phase] / jnp.maximum(sim.phase_required[task, phase], 1))
    mix = sim.phase_tool_probs[task, phase]
    p_succ = sim.success @ mix  # (M,) P(progress | no error) in this phase
    s_ans = sim.success[:, sim.answer_tool]
    pen = sim.wrong_answer_penalty
    answer_value = s_ans * final_credit - (1.0 - s_ans) * pen
    s_early = s_ans * sim.premature_answer_success
    early_value = s_early * final_credit - (1.0 - s_early) * pen
    early = jnp.where(in_answer, 0.0, sim.early_submit)
    work_value = jnp.where(in_answer, answer_value, p_succ * per_success)
    setback = (1.0 - p_ok) * sim.severity_mix[:, 2] * jnp.where(in_answer, 0.0, per_success)
    # irreversible mistakes: failed high-severity actions end the task at the fatal score; the
    # loss is what was earned plus (roughly) half of what is left to earn
    high = (sim.failure_severity == 2).astype(jnp.float32)
    p_fatal = (1.0 - sim.success) @ (mix * high) * sim.visible_failure * sim.fatal_rate
    fatal_loss = state.credit - sim.fatal_credit + 0.5 * (1.0 - state.credit)
    value = (p_ok * ((1.0 - early) * (work_value - jnp.where(in_answer, 0.0, p_fatal * fatal_loss))
                     + early * early_value) - setback)
    cost = expected_turn_costs(sim, state) / p["cost_scale"]
    return masked_argmax(value - p["lam"] * cost, affordable_mask(state, sim), cheapest_now(state, sim))


def oracle_policy(lam: float = 0.0, cost_scale: float = 1.0) -> Policy:
    """Privileged router: sees the hidden phase and true capabilities; maximises expected progress
    this turn minus ``lam`` x expected cost (in units of ``cost_scale`` USD)."""
    return Policy("oracle", _oracle_apply, {"lam": jnp.float32(lam), "cost_scale": jnp.float32(cost_scale)})


# --- the learned router ------------------------------------------------------------------------

DEFAULT_SWITCH_MARGIN = 0.03  # 6 points on a -100..100 scale; see decision_values (docs/benchmarks.md)


def decision_values(score, cost_norm, lam, prev_model=-1, switch_margin=0.0):
    """MTRouter's decision value ``score - lam * cost`` per model, plus ``switch_margin`` on the
    previous model (normalised score units): a switch must beat staying by more than the
    estimator's noise on per-model differences, otherwise argmax over near-equal noisy estimates
    flips models turn after turn (each flip re-bills the prompt and risks a drift error)."""
    score = jnp.asarray(score, jnp.float32)
    prev_model = jnp.asarray(prev_model)
    bonus = jnp.where((jnp.arange(score.shape[-1]) == prev_model) & (prev_model >= 0), switch_margin, 0.0)
    return score + bonus - lam * jnp.asarray(cost_norm, jnp.float32)


def pace_costs(expected_turn_cost, context_tokens, turn, turns_left, price_cached, price_output, output_tokens):
    """(M,) USD to finish the episode on each model at its pace: this turn's expected cost plus
    ``turns_left`` more turns billed at the cached input price (the context keeps growing at its
    average rate so far, ``context_tokens / (turn + 1)`` per turn) and the mean completion length."""
    n = jnp.maximum(jnp.asarray(turns_left, jnp.float32), 0.0)
    ctx = jnp.asarray(context_tokens, jnp.float32)
    growth = ctx / (jnp.asarray(turn, jnp.float32) + 1.0)
    future_input = n * ctx + growth * n * (n + 1.0) / 2.0
    return jnp.asarray(expected_turn_cost) + future_input * price_cached + n * output_tokens * price_output


PACE_SWITCH_SLACK = 0.8  # a model other than the current one must pace within 80% of what is left


def budget_allowed(worst_turn_cost, remaining, pace_cost=None, prev_model=-1):
    """(M,) models the budget allows this turn: the worst case of this turn fits ``remaining``
    (the hard rule: the budget is never exceeded). With ``pace_cost`` (budget pacing), only the
    models that could also finish the episode at their pace, unless none could: a model that
    would exhaust the budget halfway is a poor choice even when its next turn fits. Switching to a
    model needs ``PACE_SWITCH_SLACK`` of the remaining budget to cover its pace, staying needs all
    of it — without this hysteresis a model whose pace sits at the limit is dropped and re-picked
    turn after turn."""
    worst_turn_cost = jnp.asarray(worst_turn_cost)
    fits = worst_turn_cost <= remaining
    if pace_cost is None:
        return fits
    prev_model = jnp.asarray(prev_model)
    stays = jnp.arange(worst_turn_cost.shape[-1]) == jnp.expand_dims(prev_model, -1)
    limit = jnp.where(stays, 1.0, PACE_SWITCH_SLACK) * jnp.asarray(remaining)
    paced = fits & (jnp.asarray(pace_cost) <= limit)
    return jnp.where(paced.any(-1, keepdims=True), paced, fits)


def route_decision(score, cost_norm, lam, worst_turn_cost, remaining, fallback, prev_model=-1, switch_margin=0.0,
                   pace_cost=None):
    """MTRouter's rule with a budget: argmax of ``decision_values`` over ``budget_allowed`` models.
    Ties -> lowest index; nothing fits -> ``fallback``. ``switch_margin=0`` and ``pace_cost=None``
    give the paper's plain rule."""
    return masked_argmax(decision_values(score, cost_norm, lam, prev_model, switch_margin),
                         budget_allowed(worst_turn_cost, remaining, pace_cost, prev_model), fallback)


def learned_rule(score, cost_norm, lam, prev_model, switch_margin, worst_turn_cost, expected_turn_cost, remaining,
                 context_tokens, turn, turns_left, price_cached, price_output, output_tokens, pacing):
    """``(decision values, allowed mask)`` of the learned router from the estimator's outputs and the
    episode's state — the one rule the simulated policy and the live router both apply. ``pacing``
    (traceable bool) switches budget pacing; off, only the hard rule binds."""
    pace = pace_costs(expected_turn_cost, context_tokens, turn, turns_left, price_cached, price_output, output_tokens)
    pace = jnp.where(pacing, pace, 0.0)  # a zero pace always fits: budget_allowed reduces to the hard rule
    return (decision_values(score, cost_norm, lam, prev_model, switch_margin),
            budget_allowed(worst_turn_cost, remaining, pace, prev_model))


@functools.lru_cache(maxsize=32)
def _learned_apply_for(graphdef, layout: FeatureLayout, text_dim: int, future_cost: bool) -> Callable:
    # one static apply per (architecture, layout): params, lambda and vocab maps stay traced
    def apply(key, state, sim, p):
        s = remap_summary(state.summary, p["task_map"], p["tool_map"], p["kind_map"], p["model_map"])
        x = history_features(s, layout)
        if text_dim:
            x = jnp.concatenate([x, jnp.zeros((text_dim,), x.dtype)])  # simulated turns carry no text
        out = nnx.merge(graphdef, p["params"]).score_all(x[None])[0]  # (M, 2) in checkpoint model order
        out = out[p["sim_to_ckpt"]]  # -> simulator model order
        costs = jax.vmap(lambda m, o: turn_cost(sim, state.summary, state.last_input_tokens, m, o)[0],
                         in_axes=(0, 1))(jnp.arange(sim.n_models), jnp.stack([p["out_mean"], p["out_hi"]]))
        expected, worst = costs[:, 0], costs[:, 1]
        cost_norm = out[:, 1] + (expected / p["cost_scale"] if future_cost else 0.0)
        summ = state.summary
        values, allowed = learned_rule(
            out[:, 0], cost_norm, p["lam"], summ.prev_model, p["switch_margin"], worst, expected,
            summ.budget - summ.cost, summ.context_tokens, summ.turn, p["expected_steps"][summ.task] - summ.turn - 1,
            sim.price_cached, sim.price_output, p["out_mean"], p["pacing"])
        return masked_argmax(values, allowed, cheapest_now(state, sim))

    return apply


def expected_steps_for(meta: Mapping | None, task_types: Sequence[str]) -> np.ndarray:
    """Expected episode length per task type from checkpoint metadata (``targets.expected_steps``);
    task types it does not know get the median of the known ones (30 when there are none)."""
    known = dict(((meta or {}).get("targets") or {}).get("expected_steps") or {})
    default = float(np.median(list(known.values()))) if known else 30.0
    return np.array([float(known.get(t, default)) for t in task_types], np.float32)


def learned_policy(estimator, sim_layout: FeatureLayout, lam: float = 1.0, name: str = "mtrouter",
                   switch_margin: float | None = None, pacing: bool = True) -> Policy:
    """The MTRouter policy from a ``LoadedEstimator`` (or anything with graphdef/params/layout/meta),
    run inside the simulator whose vocabularies are ``sim_layout``. ``pacing``: budget pacing
    (``budget_allowed``), using the checkpoint's expected episode lengths."""
    L = estimator.layout
    missing = [m for m in sim_layout.models if m not in L.models]
    if missing:
        raise ValueError(f"checkpoint has no model(s) {missing}; it knows {list(L.models)}")
    maps = {
        "task_map": jnp.asarray(vocab_index(L.task_types, sim_layout.task_types)),
        "tool_map": jnp.asarray(vocab_index(L.tools, sim_layout.tools)),
        "kind_map": jnp.asarray(vocab_index(L.error_kinds, sim_layout.error_kinds)),
        "model_map": jnp.asarray(vocab_index(L.models, sim_layout.models)),
    }
    sim_to_ckpt = maps["model_map"]
    order = np.asarray(sim_to_ckpt)
    out_hi = jnp.asarray(np.asarray(estimator.output_tokens_hi)[order], jnp.float32)
    out_mean = jnp.asarray(np.asarray(estimator.output_tokens_mean)[order], jnp.float32)
    apply = _learned_apply_for(estimator.graphdef, L, int(estimator.text_dim), estimator.cost_target == "future")
    return Policy(name, apply, {**maps, "sim_to_ckpt": sim_to_ckpt, "out_hi": out_hi, "out_mean": out_mean,
                                "cost_scale": jnp.float32(estimator.cost_scale),
                                "params": estimator.params, "lam": jnp.float32(lam),
                                "switch_margin": jnp.float32(DEFAULT_SWITCH_MARGIN if switch_margin is None
                                                             else switch_margin),
                                "pacing": jnp.bool_(pacing),
                                "expected_steps": jnp.asarray(expected_steps_for(getattr(estimator, "meta", None),
                                                                                 sim_layout.task_types))})


def baseline_policies(pool: Pool) -> list[Policy]:
    """Every baseline router: single models, random, cheapest, error-escalation, tool heuristic."""
    return ([fixed_policy(pool, n) for n in pool.names]
            + [random_policy(), cheapest_policy(), escalation_policy(pool), tool_heuristic_policy(pool)])


__all__ = [
    "Policy", "affordable_mask", "masked_argmax", "cheapest_now", "fixed_policy", "random_policy",
    "cheapest_policy", "escalation_policy", "tool_heuristic_policy", "oracle_policy", "baseline_policies",
    "route_decision", "decision_values", "budget_allowed", "PACE_SWITCH_SLACK", "pace_costs", "learned_rule",
    "expected_steps_for", "learned_policy",
    "NO_VALUE",
]
