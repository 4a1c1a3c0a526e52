"""Routing policies in the simulator: ``apply(key, state, sim_params, policy_params) -> (model, propensity)``.

Every routing policy is defined once, in ``routing.py``, as a distribution over the pool given the
router-visible summary and the turn's inputs; ``simulated`` wraps it for the simulator (this turn's
costs from the simulator's prices, the learned policy's estimator evaluated in the same compiled
call) so the same rollout evaluates all of them and the live router applies the very same
functions. Only the oracle, which reads the hidden phase and true capabilities by design, is
defined here. Policy parameters are pytrees so budgets and lambdas can be traced, vmapped axes.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from mtrouter_jax.routing import policies as routing
from mtrouter_jax.core.features import NO_VALUE, FeatureLayout, history_features, remap_summary, vocab_index
from mtrouter_jax.core.pool import Pool
from mtrouter_jax.routing.specs import DEFAULT_CLASS_MODELS, DEFAULT_LADDER, DEFAULT_TOOL_CLASSES, ToolModelMap, tool_table
from mtrouter_jax.routing.policies import (DEFAULT_SWITCH_MARGIN, PACE_SWITCH_SLACK, budget_allowed, decision_values,
                                  masked_argmax, pace_costs, route_decision)
from mtrouter_jax.routing.meta import DEFAULT_LAM, expected_steps_for
from mtrouter_jax.sim.core import EpisodeState, expected_turn_costs, turn_cost
from mtrouter_jax.sim.params import TOOLS, SimParams


class SimPolicy(NamedTuple):
    """A policy as the simulator runs it: a module-level pure ``apply`` (static under jit) and its params."""

    name: str
    apply: Callable[..., Any]
    params: Any


def affordable_mask(state: EpisodeState, sim: SimParams) -> jax.Array:
    """(M,) models whose worst-case cost for this turn fits the remaining budget."""
    s = state.summary
    return s.cost + expected_turn_costs(sim, state, upper=True) <= s.budget


def cheapest_now(state: EpisodeState, sim: SimParams) -> jax.Array:
    """Model with the lowest expected cost for this turn (cache hits included)."""
    return jnp.argmin(expected_turn_costs(sim, state)).astype(jnp.int32)


def sim_turn_inputs(state: EpisodeState, sim: SimParams) -> routing.TurnInputs:
    """This turn's ``TurnInputs`` in the simulator: costs at the pool's prices and the simulator's
    completion lengths (mean and worst case), the hard budget rule as the allowed mask."""
    s = state.summary
    return routing.turn_inputs(expected_turn_costs(sim, state, upper=True), expected_turn_costs(sim, state),
                               s.budget - s.cost)


@functools.lru_cache(maxsize=None)
def _apply_for(dist: Callable, head: Callable | None) -> Callable:
    # one static apply per (policy, estimator head): params stay traced, so no recompiles
    def apply(key, state, sim, p):
        inputs = sim_turn_inputs(state, sim)
        if head is not None:
            inputs = head(state, sim, p["q"], inputs)
        return routing.sample(key, dist(state.summary, inputs, p["policy"]))

    return apply


def simulated(policy: routing.RoutingPolicy, head: Callable | None = None, head_params: Any = None) -> SimPolicy:
    """A ``routing`` policy as the simulator runs it; ``head(state, sim, head_params, inputs)``
    fills the estimator's outputs for policies that use them."""
    if policy.uses_estimator and head is None:
        raise ValueError(f"policy {policy.name!r} needs an estimator (use learned_policy)")
    return SimPolicy(policy.name, _apply_for(policy.dist, head), {"policy": policy.params, "q": head_params or {}})


# --- baselines -------------------------------------------------------------------------------

def fixed_policy(pool: Pool, name: str) -> SimPolicy:
    """Always call one model."""
    return simulated(routing.fixed(pool.index(name), name))


def random_policy() -> SimPolicy:
    """Uniform per-turn choice among affordable models (the paper's 'roulette' logging policy)."""
    return simulated(routing.roulette(0.0))


def cheapest_policy() -> SimPolicy:
    """The affordable model that is cheapest for this turn, counting prompt-cache hits."""
    return simulated(routing.cheapest())


def escalation_policy(pool: Pool, ladder: Sequence[str] | None = None, down_after: int = 3) -> SimPolicy:
    """Move one rung up the ladder after an error; back down after ``down_after`` clean turns."""
    if ladder is None:
        ladder = [n for n in DEFAULT_LADDER if n in pool.names] or sorted(
            pool.names, key=lambda n: pool[n].price_input + pool[n].price_output)
    return simulated(routing.error_escalation([pool.index(n) for n in ladder], len(pool), down_after))


def tool_heuristic_policy(pool: Pool, tools: Sequence[str] = TOOLS,
                          tool_classes: Mapping[str, str] | None = None,
                          class_models: Mapping[str, str] | None = None) -> SimPolicy:
    """Zero-training router: the last turn's tool type (a proxy for the phase) -> model class -> model.

    Defaults (``routers.DEFAULT_TOOL_CLASSES``): search/file turns -> a cheap model,
    python/reasoning/answer -> the strong model; a model that does not fit -> the cheapest that does.
    """
    tmap = ToolModelMap(dict(tool_classes or {}), dict(class_models or {}), "tool_heuristic_policy")
    return simulated(routing.tool_heuristic(tool_table(pool, tools, tmap)))


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


def oracle_policy(lam: float = 0.0, cost_scale: float = 1.0) -> SimPolicy:
    """Privileged router: sees the hidden phase and true capabilities; maximises expected progress
    this turn minus ``lam`` x expected cost (in units of ``cost_scale`` USD)."""
    return SimPolicy("oracle", _oracle_apply, {"lam": jnp.float32(lam), "cost_scale": jnp.float32(cost_scale)})


# --- the learned router ------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _estimator_head_for(graphdef, layout: FeatureLayout, text_dim: int, future_cost: bool,
                        stacked: bool = False) -> Callable:
    # one static head per (architecture, layout, ensemble or not): params and vocab maps stay traced
    def head(state, sim, q, inputs):
        s = remap_summary(state.summary, q["task_map"], q["tool_map"], q["kind_map"], q["model_map"])
        x = history_features(s, layout)
        if text_dim:
            x = jnp.concatenate([x, jnp.zeros((text_dim,), x.dtype)])  # simulated turns carry no text
        if stacked:  # (K, M, 2): every ensemble member
            members = jax.vmap(lambda p: nnx.merge(graphdef, p).score_all(x[None])[0])(q["params"])
        else:
            members = nnx.merge(graphdef, q["params"]).score_all(x[None])  # (1, M, 2)
        members = members[:, q["sim_to_ckpt"]]  # checkpoint model order -> simulator model order
        out = members.mean(0)
        # the router knows completion lengths from its training logs, not the simulator's hidden ones
        costs = jax.vmap(lambda m, o: turn_cost(sim, state.summary, state.last_input_tokens, m, o)[0],
                         in_axes=(0, 1))(jnp.arange(sim.n_models), jnp.stack([q["out_mean"], q["out_hi"]]))
        expected, worst = costs[:, 0], costs[:, 1]
        cost_norm = out[:, 1] + (expected / q["cost_scale"] if future_cost else 0.0)
        summ = state.summary
        return routing.turn_inputs(worst, expected, summ.budget - summ.cost, score=out[:, 0], cost_norm=cost_norm,
                                   member_score=members[..., 0])

    return head


def learned_policy(estimator, sim_layout: FeatureLayout, lam: float = DEFAULT_LAM, name: str = "mtrouter",
                   switch_margin: float | None = None, pacing: bool = True, explore: str | None = None,
                   safe: bool = False, kappa: float = routing.DEFAULT_KAPPA,
                   n_min: float = routing.DEFAULT_N_MIN) -> SimPolicy:
    """The MTRouter policy from a ``LoadedEstimator`` (or anything with graphdef/params/layout/meta),
    run inside the simulator whose vocabularies are ``sim_layout``. ``pacing``: budget pacing
    (``budget_allowed``), using the checkpoint's expected episode lengths. ``explore``: an
    exploration spec (``routers.with_exploration``), e.g. ``beta:0.5`` for the paper's stage B."""
    from mtrouter_jax.routing.specs import with_exploration

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
    head = _estimator_head_for(estimator.graphdef, L, int(estimator.text_dim), estimator.cost_target == "future",
                               bool(getattr(estimator, "stacked", False)))
    q = {**maps, "sim_to_ckpt": sim_to_ckpt, "out_hi": out_hi, "out_mean": out_mean,
         "cost_scale": jnp.float32(estimator.cost_scale), "params": estimator.params}
    pool = estimator.pool
    per_tok = lambda attr: np.array([getattr(pool[m], attr) for m in sim_layout.models], np.float32) / 1e6  # noqa: E731
    steps = expected_steps_for(getattr(estimator, "meta", None), list(sim_layout.task_types) + ["<other>"])
    rp = routing.learned(steps, per_tok("price_cached_input"), per_tok("price_output"), out_mean, lam,
                         DEFAULT_SWITCH_MARGIN if switch_margin is None else switch_margin, pacing, name)
    if safe:
        tables, support, seen, costs, lcbs = _reference_in(estimator, sim_layout, maps)
        rp = routing.safe(rp, tables, support, seen, n_min=n_min, kappa=kappa, name=name, ref_cost=costs, ref_lcb=lcbs)
    rp = with_exploration(rp, explore)
    return SimPolicy(name if not explore else f"{name}+{explore}", _apply_for(rp.dist, head), {"policy": rp.params, "q": q})


def _reference_in(estimator, sim_layout: FeatureLayout, maps: dict) -> tuple[np.ndarray, ...]:
    """The checkpoint's reference policy (budget-tier tables, support, seen, tier costs, tier lower
    bounds) re-indexed into the simulator's vocabularies: rows by task, columns by last tool
    (+ other, first turn), models in sim order."""
    from mtrouter_jax.routing.reference import Reference

    ref = (getattr(estimator, "meta", None) or {}).get("reference")
    if not ref:
        raise ValueError("this checkpoint has no reference policy (train it with this version of mtrouter train)")
    r = Reference.from_meta(ref)
    L = estimator.layout
    n_tc, n_kc = len(L.task_types), len(L.tools)
    rows = np.r_[np.asarray(maps["task_map"]), n_tc]  # sim task -> ckpt row; the other bucket last
    cols = np.r_[np.asarray(maps["tool_map"]), n_kc, n_kc + 1]  # sim tool -> ckpt column; other; first turn
    sim_of_ckpt = np.argsort(np.asarray(maps["model_map"]))  # ckpt model index -> sim model index
    tables, costs, lcbs = r.budget_tiers()
    tables = sim_of_ckpt[tables[:, rows][:, :, cols]]
    support = r.support[np.ix_(rows, cols)][..., np.asarray(maps["model_map"])]
    return tables, support, r.seen[rows], costs, lcbs


def baseline_policies(pool: Pool) -> list[SimPolicy]:
    """Every baseline router: single models, random, cheapest, error-escalation, tool heuristic."""
    return ([fixed_policy(pool, n) for n in pool.names]
            + [random_policy(), cheapest_policy(), escalation_policy(pool), tool_heuristic_policy(pool)])


__all__ = [
    "SimPolicy", "simulated", "sim_turn_inputs", "affordable_mask", "masked_argmax", "cheapest_now", "fixed_policy",
    "random_policy", "cheapest_policy", "escalation_policy", "tool_heuristic_policy", "oracle_policy",
    "baseline_policies", "route_decision", "decision_values", "budget_allowed", "PACE_SWITCH_SLACK", "pace_costs",
    "learned_policy", "DEFAULT_SWITCH_MARGIN", "DEFAULT_TOOL_CLASSES", "DEFAULT_CLASS_MODELS",
    "DEFAULT_LADDER", "NO_VALUE",
]
