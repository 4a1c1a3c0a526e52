"""Pure-JAX episode dynamics: ``reset(key, params, budget)`` / ``step(key, state, action, params)``.

One step = one model call. The terminal state is absorbing (stepping it changes nothing and
records a non-executed turn), so a fixed-length ``lax.scan`` rollout is exact and ``jax.vmap``
runs thousands of episodes at once. Dynamics are described in docs/simulator.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from mtrouter_jax.core.features import NO_VALUE, HistorySummary, advance_summary, initial_summary
from mtrouter_jax.core.pricing import call_cost
from mtrouter_jax.sim.params import SimParams


@struct.dataclass
class EpisodeState:
    """Full simulator state: the router-visible ``summary`` plus hidden progress."""

    summary: HistorySummary  # what a router may observe
    phase: jnp.ndarray  # () int32, hidden current phase
    phase_progress: jnp.ndarray  # () int32, hidden successes within the phase
    credit: jnp.ndarray  # () float32, fraction of the task completed (score / 100)
    last_input_tokens: jnp.ndarray  # () float32, prompt of the previous call (the cacheable prefix)
    cache_miss_cost: jnp.ndarray  # () float32, USD lost to re-billing history after switches
    terminated: jnp.ndarray  # () bool, answered (correctly or not) or failed fatally
    truncated: jnp.ndarray  # () bool, step limit or budget exhausted

    @property
    def done(self):
        return self.terminated | self.truncated

    @property
    def score(self):
        """Terminal score in [-100, 100]: partial credit, minus a penalty for a wrong answer (ScienceWorld-like)."""
        return 100.0 * self.credit


@struct.dataclass
class TurnRecord:
    """What happened in one step (all zeros / NO_VALUE when not executed)."""

    executed: jnp.ndarray  # () bool
    model: jnp.ndarray  # () int32
    tool: jnp.ndarray  # () int32
    error_kind: jnp.ndarray  # () int32, NO_VALUE if no error
    severity: jnp.ndarray  # () int32, NO_VALUE if no error
    success: jnp.ndarray  # () bool, advanced the task (or answered correctly)
    switched: jnp.ndarray  # () bool, a different model than the previous turn
    premature: jnp.ndarray  # () bool, answered before the answer phase
    input_tokens: jnp.ndarray  # () float32
    cached_tokens: jnp.ndarray  # () float32
    output_tokens: jnp.ndarray  # () float32
    cost: jnp.ndarray  # () float32, USD
    cache_miss_cost: jnp.ndarray  # () float32, USD paid over the cached price because of a switch
    phase: jnp.ndarray  # () int32, hidden phase the turn was in (for analysis only)


def reset(key: jax.Array, params: SimParams, budget=jnp.inf) -> EpisodeState:
    """Sample a task type and return the initial state. ``budget`` in USD (inf = none)."""
    task = jax.random.choice(key, params.task_weights.shape[0], p=params.task_weights / params.task_weights.sum())
    return EpisodeState(
        summary=initial_summary(task, params.system_tokens[task], budget),
        phase=jnp.int32(0), phase_progress=jnp.int32(0), credit=jnp.float32(0.0),
        last_input_tokens=jnp.float32(0.0), cache_miss_cost=jnp.float32(0.0),
        terminated=jnp.bool_(False), truncated=jnp.bool_(False),
    )


def turn_cost(params: SimParams, summary: HistorySummary, last_input_tokens, model, output_tokens):
    """(cost, cached_tokens, cache_miss_cost) of calling ``model`` now with ``output_tokens``."""
    same = summary.prev_model == model
    cached = jnp.where(same, last_input_tokens, 0.0)
    cost = call_cost(summary.context_tokens, cached, output_tokens, params.price_input[model],
                     params.price_cached[model], params.price_output[model])
    switched = (summary.prev_model >= 0) & ~same
    miss = jnp.where(switched, last_input_tokens * (params.price_input[model] - params.price_cached[model]), 0.0)
    return cost, cached, miss


def expected_turn_costs(params: SimParams, state: EpisodeState, upper: bool = False) -> jnp.ndarray:
    """(M,) cost of this turn for every model at mean (or, with ``upper``, maximum) output length."""
    models = jnp.arange(params.n_models)
    # ceil: sampled output tokens are rounded, so the worst case must round up too
    out = jnp.where(upper, jnp.ceil(params.output_tokens * (1.0 + params.output_token_spread)), params.output_tokens)
    cost, _, _ = jax.vmap(lambda m, o: turn_cost(params, state.summary, state.last_input_tokens, m, o))(models, out)
    return cost


def step(key: jax.Array, state: EpisodeState, action, params: SimParams):
    """Advance one turn with model ``action``; returns ``(state, record, reward)``.

    ``reward`` is the score gained this turn. A turn whose cost exceeds the remaining budget is not
    executed and truncates the episode; terminal states are absorbing.
    """
    m = jnp.asarray(action, jnp.int32)
    s = state.summary
    k_tool, k_early, k_out, k_err, k_sev, k_succ = jax.random.split(key, 6)
    task, phase = s.task, state.phase
    last_phase = phase >= params.n_phases[task] - 1
    premature = ~last_phase & (jax.random.uniform(k_early) < params.early_submit[m])
    phase_tool = jax.random.choice(k_tool, params.n_tools, p=params.phase_tool_probs[task, phase])
    tool = jnp.where(premature, params.answer_tool, phase_tool)

    out_tokens = jnp.round(params.output_tokens[m] * (
        1.0 + params.output_token_spread * jax.random.uniform(k_out, minval=-1.0, maxval=1.0)))
    cost, cached, miss = turn_cost(params, s, state.last_input_tokens, m, out_tokens)
    affordable = s.cost + cost <= s.budget
    executed = ~state.done & affordable

    switched = (s.prev_model >= 0) & (s.prev_model != m)
    # Two error sources, both drawn fresh every turn (transient: no dependence on past errors).
    # 1) format violations: a per-model rate, raised on the first turn after a switch (prompt drift)
    p_fmt = jnp.clip(params.error_rate[m] + params.switch_error_bump * switched, 0.0, 1.0)
    fmt_err = jax.random.uniform(k_err) < p_fmt
    # 2) a failed tool action surfaces as an invalid action (traceback, HTTP error, unknown command)
    #    with probability visible_failure; the rest fail silently. A wrong answer is only seen at the end.
    is_answer = tool == params.answer_tool
    p_succ = params.success[m, tool] * jnp.where(premature, params.premature_answer_success, 1.0)
    k_succ, k_vis, k_fatal = jax.random.split(k_succ, 3)
    attempt_ok = jax.random.uniform(k_succ) < p_succ
    visible_fail = ~fmt_err & ~attempt_ok & ~is_answer & (jax.random.uniform(k_vis) < params.visible_failure)
    is_err = fmt_err | visible_fail
    fmt_sev = jax.random.choice(k_sev, 3, p=params.severity_mix[m])
    severity = jnp.where(fmt_err, fmt_sev, jnp.where(visible_fail, params.failure_severity[tool], NO_VALUE))
    kind = jnp.where(fmt_err, 0, jnp.where(visible_fail, 1, NO_VALUE))
    success = ~fmt_err & attempt_ok
    # a high-severity failed action is sometimes irreversible (ScienceWorld: a wrong "focus on"
    # ends the task at -100; a destructive command): the episode ends with the fatal score
    fatal = visible_fail & (severity == 2) & (jax.random.uniform(k_fatal) < params.fatal_rate)

    # Task progress: successes fill the phase; a high-severity format violation (a malformed,
    # destructive action) undoes one unit.
    setback = fmt_err & (fmt_sev == 2) & params.high_error_setback
    progress = jnp.where(success & ~is_answer, state.phase_progress + 1,
                         jnp.maximum(state.phase_progress - setback.astype(jnp.int32), 0))
    phase_done = progress >= params.phase_required[task, phase]
    final_credit = params.phase_credit[task, params.n_phases[task] - 1]
    wrong = ~is_err & ~success  # an accepted but wrong answer ends the task with a penalty
    gain = jnp.where(is_answer, jnp.where(success, final_credit, jnp.where(wrong, -params.wrong_answer_penalty, 0.0)),
                     jnp.where(phase_done, params.phase_credit[task, phase], 0.0))
    new_phase = jnp.where(~is_answer & phase_done, phase + 1, phase)
    new_progress = jnp.where(~is_answer & phase_done, 0, progress)
    gain = jnp.where(fatal, params.fatal_credit - state.credit, gain)
    answered = (is_answer & ~is_err) | fatal  # an answer with a format error is not accepted

    next_context = s.context_tokens + out_tokens + params.observation_tokens[tool]
    new_summary = advance_summary(s, m, tool, kind, severity, s.context_tokens, out_tokens, cost, next_context)
    turn_limit = new_summary.turn >= params.max_steps

    sel = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(executed, a, b), new, old)  # noqa: E731
    new_state = EpisodeState(
        summary=sel(new_summary, s),
        phase=sel(new_phase, phase), phase_progress=sel(new_progress, state.phase_progress),
        credit=sel(state.credit + gain, state.credit),
        last_input_tokens=sel(s.context_tokens, state.last_input_tokens),
        cache_miss_cost=sel(state.cache_miss_cost + miss, state.cache_miss_cost),
        terminated=state.terminated | (executed & answered),
        truncated=state.truncated | (~state.done & ~affordable) | (executed & ~answered & turn_limit),
    )
    f = jnp.float32
    record = TurnRecord(
        executed=executed,
        model=jnp.where(executed, m, NO_VALUE), tool=jnp.where(executed, tool, NO_VALUE),
        error_kind=jnp.where(executed, kind, NO_VALUE), severity=jnp.where(executed, severity, NO_VALUE),
        success=executed & success, switched=executed & switched, premature=executed & premature,
        input_tokens=jnp.where(executed, s.context_tokens, f(0)), cached_tokens=jnp.where(executed, cached, f(0)),
        output_tokens=jnp.where(executed, out_tokens, f(0)), cost=jnp.where(executed, cost, f(0)),
        cache_miss_cost=jnp.where(executed, miss, f(0)), phase=jnp.where(executed, phase, NO_VALUE),
    )
    reward = 100.0 * (new_state.credit - state.credit)
    return new_state, record, reward
