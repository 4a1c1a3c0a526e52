"""Routing policies, defined once: pure functions from what a router sees to a distribution over the pool.

Every policy is ``dist(summary, inputs, params) -> (M,) probabilities``:

* ``summary`` — the episode's ``HistorySummary`` (what the router observed so far), in the
  vocabulary of whoever runs it (the simulator's, or the live router's layout);
* ``inputs`` — a ``TurnInputs``: this turn's worst-case and expected cost per model, the money
  left, the models the budget allows (the hard rule; live: minus models that just failed) and,
  for the learned policy, the estimator's predictions;
* ``params`` — a pytree (budgets, λ, tables stay traced: one compile serves all values).

A deterministic policy returns a one-hot. ``sample(key, probs)`` draws the model and its exact
propensity ``probs[a]``. The simulator's rollouts (``policy.simulated``) and the live router
(``LiveEpisode.decide``) call these same functions; only the oracle, which reads hidden state,
lives in ``policy.py``.

Budget semantics: exploration (uniform, sticky, ε/β mixtures) draws only among allowed models.
The deterministic bases decide themselves: ``fixed`` keeps its model (a single-model run ends
when its model no longer fits); ``tool_heuristic`` and ``error_escalation`` fall back to the
cheapest allowed model; ``learned`` maximises its decision value over the allowed (and paced)
models. When no model is allowed the shells end the episode.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from mtrouter_jax.core.features import HistorySummary
from mtrouter_jax.routing.pacing import PACE_SWITCH_SLACK, affordable_fraction, budget_allowed, learned_pace, pace_costs


@struct.dataclass
class TurnInputs:
    """Per-turn inputs of a routing decision (M = pool size)."""

    worst_cost: jnp.ndarray  # (M,) USD, worst case of this turn on each model
    expected_cost: jnp.ndarray  # (M,) USD, expected cost of this turn on each model
    remaining: jnp.ndarray  # () USD left in the episode's budget, +inf when none
    allowed: jnp.ndarray  # (M,) bool, models this turn may use (worst case fits; not excluded)
    score: jnp.ndarray  # (M,) estimator's normalised predicted score (ensemble mean; zeros when no estimator)
    cost_norm: jnp.ndarray  # (M,) estimator's predicted remaining cost / cost_scale (zeros when none)
    member_score: jnp.ndarray  # (K, M) every ensemble member's predicted score (K = 1: ``score``)


def turn_inputs(worst_cost, expected_cost, remaining, allowed=None, score=None, cost_norm=None,
                member_score=None) -> TurnInputs:
    """``TurnInputs`` with defaults: ``allowed`` = worst case fits ``remaining``; no estimator outputs."""
    worst_cost = jnp.asarray(worst_cost, jnp.float32)
    remaining = jnp.asarray(remaining, jnp.float32)
    zeros = jnp.zeros_like(worst_cost)
    score = zeros if score is None else jnp.asarray(score, jnp.float32)
    return TurnInputs(worst_cost=worst_cost, expected_cost=jnp.asarray(expected_cost, jnp.float32),
                      remaining=remaining,
                      allowed=worst_cost <= remaining if allowed is None else jnp.asarray(allowed, bool),
                      score=score, cost_norm=zeros if cost_norm is None else jnp.asarray(cost_norm, jnp.float32),
                      member_score=score[None] if member_score is None else jnp.asarray(member_score, jnp.float32))


class RoutingPolicy(NamedTuple):
    """A routing policy: a module-level pure ``dist`` (static under jit) and its param pytree.

    ``uses_estimator``: the shell must fill ``TurnInputs.score/cost_norm`` (the learned policy
    and mixtures around it). ``spec``: the string that rebuilds it (logged with live episodes).
    """

    name: str
    dist: Callable[[HistorySummary, TurnInputs, Any], jax.Array]
    params: Any
    uses_estimator: bool = False
    spec: str = ""


def sample(key: jax.Array, probs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Draw a model from ``probs``; returns ``(index int32, its probability float32)``.

    Zero-probability models are never drawn (categorical over log-probabilities)."""
    probs = jnp.asarray(probs, jnp.float32)
    a = jax.random.categorical(key, jnp.log(probs)).astype(jnp.int32)
    return a, probs[a]


def one_hot(i, n: int) -> jax.Array:
    """(n,) float32 distribution with all mass on ``i``."""
    return (jnp.arange(n) == i).astype(jnp.float32)


def uniform_over(mask: jax.Array) -> jax.Array:
    """Uniform distribution over ``mask`` (over everything when the mask is empty)."""
    m = jnp.where(mask.any(), mask, True).astype(jnp.float32)
    return m / m.sum()


def masked_argmax(values: jax.Array, mask: jax.Array, fallback: jax.Array) -> jax.Array:
    """Deterministic argmax over allowed entries (ties -> lowest index); ``fallback`` if none allowed."""
    best = jnp.argmax(jnp.where(mask, values, -jnp.inf))
    return jnp.where(mask.any(), best, fallback).astype(jnp.int32)


def cheapest_allowed(inputs: TurnInputs) -> jax.Array:
    """The allowed model with the lowest expected cost this turn (the cheapest overall if none is)."""
    return masked_argmax(-inputs.expected_cost, inputs.allowed, jnp.argmin(inputs.expected_cost))


def _keep_or_cheapest(choice, inputs: TurnInputs) -> jax.Array:
    """One-hot on ``choice`` if allowed, else on the cheapest allowed model."""
    choice = jnp.asarray(choice, jnp.int32)
    pick = jnp.where(inputs.allowed[choice], choice, cheapest_allowed(inputs))
    return one_hot(pick, inputs.allowed.shape[-1])


# --- deterministic bases -----------------------------------------------------------------------

def _fixed_dist(summary, inputs, p):
    return one_hot(p["model"], inputs.allowed.shape[-1])


def fixed(model_index: int, name: str = "fixed") -> RoutingPolicy:
    """Always the same model (the run ends when it no longer fits the budget)."""
    return RoutingPolicy(name, _fixed_dist, {"model": jnp.int32(model_index)}, spec=f"fixed:{name}")


def _cheapest_dist(summary, inputs, p):
    return one_hot(cheapest_allowed(inputs), inputs.allowed.shape[-1])


def cheapest() -> RoutingPolicy:
    """The allowed model with the lowest expected cost this turn (prompt-cache hits counted)."""
    return RoutingPolicy("cheapest", _cheapest_dist, {}, spec="cheapest")


START = "<start>"  # the tool-heuristic table's entry for the first turn (no tool seen yet)


def _heuristic_dist(summary, inputs, p):
    table = p["table"]  # (K + 1,): model per tool index, last entry for the first turn
    n = table.shape[0]
    last = jnp.where(summary.turn > 0, summary.recent_tools[0], n - 1)
    # indices outside the vocabulary (the layout's "other" bucket) take the table's other entry
    return _keep_or_cheapest(table[jnp.clip(last, 0, n - 1)], inputs)


def tool_heuristic(table, spec: str = "tool-heuristic") -> RoutingPolicy:
    """Zero-training router: the last turn's tool type -> model (``table``: one model index per tool
    index of the summary's vocabulary, then the "other" bucket, then the first turn). Build tables
    with ``heuristic.tool_table``."""
    return RoutingPolicy("tool-heuristic", _heuristic_dist, {"table": jnp.asarray(table, jnp.int32)}, spec=spec)


def _escalation_dist(summary, inputs, p):
    ladder, rung_of = p["ladder"], p["rung_of"]
    top = ladder.shape[0] - 1
    s = summary
    rung = jnp.where(s.prev_model >= 0, rung_of[jnp.maximum(s.prev_model, 0)], 0)
    last_error = s.recent_severities[0] >= 0
    calm = (s.turns_since_error >= p["down_after"]) & (s.model_streak >= p["down_after"])
    new_rung = jnp.where(s.turn == 0, 0,
                         jnp.where(last_error, jnp.minimum(rung + 1, top),
                                   jnp.where(calm, jnp.maximum(rung - 1, 0), rung)))
    return _keep_or_cheapest(ladder[new_rung], inputs)


def error_escalation(ladder: Sequence[int], n_models: int, down_after: int = 3,
                     spec: str = "error-escalation") -> RoutingPolicy:
    """Move one rung up ``ladder`` (model indices, cheap to strong) after an error; one rung down
    after ``down_after`` clean turns on the same model. Models off the ladder count as the bottom rung."""
    rung_of = [0] * n_models
    for r, i in enumerate(ladder):
        rung_of[int(i)] = r
    return RoutingPolicy("error-escalation", _escalation_dist,
                         {"ladder": jnp.asarray(list(ladder), jnp.int32), "rung_of": jnp.asarray(rung_of, jnp.int32),
                          "down_after": jnp.int32(down_after)}, spec=spec)


# --- exploration -------------------------------------------------------------------------------

def _sticky_weight(summary, inputs, rho):
    """rho where the previous model exists and is allowed, else 0 (then a fresh draw)."""
    prev = summary.prev_model
    ok = (prev >= 0) & inputs.allowed[jnp.maximum(prev, 0)]
    return jnp.where(ok, rho, 0.0), one_hot(prev, inputs.allowed.shape[-1])


def _roulette_dist(summary, inputs, p):
    r, stay = _sticky_weight(summary, inputs, p["rho"])
    return r * stay + (1.0 - r) * uniform_over(inputs.allowed)


def roulette(rho: float = 0.0) -> RoutingPolicy:
    """Sticky roulette: keep the previous model with probability ``rho`` (if allowed), else a uniform
    allowed model. ``rho = 0`` is the paper's uniform roulette (propensity 1/|allowed|)."""
    name = "uniform" if rho == 0 else f"sticky{rho:g}"
    return RoutingPolicy(name, _roulette_dist, {"rho": jnp.float32(rho)},
                         spec="uniform" if rho == 0 else f"sticky:{rho:g}")


@functools.lru_cache(maxsize=None)
def _explore_dist_for(base_dist: Callable) -> Callable:
    # cached so one base always yields the same (static, hashable) function: no recompiles
    def dist(summary, inputs, p):
        base = base_dist(summary, inputs, p["base"])
        fresh = (1.0 - p["eps"]) * base + p["eps"] * uniform_over(inputs.allowed)
        r, stay = _sticky_weight(summary, inputs, p["rho"])
        r = r * (1.0 - base[jnp.maximum(summary.prev_model, 0)])  # never hold back what base would pick anyway
        return r * stay + (1.0 - r) * fresh

    return dist


def explore(base: RoutingPolicy, eps: float = 0.0, rho: float = 0.0, spec: str | None = None) -> RoutingPolicy:
    """Exploration around ``base``. A fresh draw is a uniform allowed model with probability
    ``eps``, else ``base``'s choice; with ``rho > 0`` the previous model is kept with probability
    ``rho`` where ``base`` would not pick it, so an exploratory pick lasts ~1/(1-rho) turns::

        P(a) = r [a = prev] + (1 - r) ((1 - eps) base(a) + eps [a allowed] / |allowed|)
        r    = rho (1 - base(prev))   if the previous model is allowed, else 0

    ``eps = 1 - beta`` with ``rho = 0`` is the paper's β-mixed stage-B policy. Exact propensities
    follow from the formula; the uniform part draws only among allowed models.
    """
    for n, v in (("eps", eps), ("rho", rho)):
        if isinstance(v, bool) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{n} must be in [0, 1], got {v!r}")
    label = spec or (f"eps:{eps:g}" if rho == 0 else f"sticky:{rho:g}:{eps:g}")
    return RoutingPolicy(f"{base.name}+{label}", _explore_dist_for(base.dist),
                         {"base": base.params, "eps": jnp.float32(eps), "rho": jnp.float32(rho)},
                         base.uses_estimator, f"{base.spec}|{label}")


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


def route_decision(score, cost_norm, lam, worst_turn_cost, remaining, fallback, prev_model=-1, switch_margin=0.0,
                   pace_cost=None):
    """MTRouter's rule with a budget: argmax of ``decision_values`` over ``budget_allowed`` models.
    Ties -> lowest index; nothing fits -> ``fallback``. ``switch_margin=0`` and ``pace_cost=None``
    give the paper's plain rule."""
    return masked_argmax(decision_values(score, cost_norm, lam, prev_model, switch_margin),
                         budget_allowed(worst_turn_cost, remaining, pace_cost, prev_model), fallback)


def learned_values(summary: HistorySummary, inputs: TurnInputs, p) -> tuple[jax.Array, jax.Array]:
    """``(decision values, allowed mask)`` of the learned router: ``decision_values`` of the
    estimator's outputs over the models ``budget_allowed`` permits (paced when ``p["pacing"]``)."""
    s = summary
    pace = jnp.where(p["pacing"], learned_pace(s, inputs, p), 0.0)  # a zero pace always fits: only the hard rule binds
    values = decision_values(inputs.score, inputs.cost_norm, p["lam"], s.prev_model, p["switch_margin"])
    return values, budget_allowed(inputs.worst_cost, inputs.remaining, pace, s.prev_model, fits=inputs.allowed)


def _learned_dist(summary, inputs, p):
    values, allowed = learned_values(summary, inputs, p)
    return one_hot(masked_argmax(values, allowed, cheapest_allowed(inputs)), values.shape[-1])


def learned(expected_steps, price_cached, price_output, out_mean, lam: float = 0.0,
            switch_margin: float = DEFAULT_SWITCH_MARGIN, pacing: bool = True, name: str = "mtrouter") -> RoutingPolicy:
    """Greedy MTRouter policy over the estimator's outputs (``TurnInputs.score/cost_norm``).

    ``expected_steps``: expected episode length per task index of the summary's vocabulary (+ its
    "other" bucket); prices (USD/token) and mean completion tokens per model drive the pacing.
    """
    f = jnp.float32
    return RoutingPolicy(name, _learned_dist, {
        "lam": f(lam), "switch_margin": f(switch_margin), "pacing": jnp.bool_(pacing),
        "expected_steps": jnp.asarray(expected_steps, f), "price_cached": jnp.asarray(price_cached, f),
        "price_output": jnp.asarray(price_output, f), "out_mean": jnp.asarray(out_mean, f)},
        uses_estimator=True, spec="learned")


# --- the safe learned router --------------------------------------------------------------------

DEFAULT_KAPPA = 1.0  # LCB width, in ensemble standard deviations of the gain (docs/benchmarks.md)
DEFAULT_N_MIN = 5.0  # logged turns of a model after the same tool in the same task type (SPIBB's threshold)


def safe_choice(summary: HistorySummary, inputs: TurnInputs, p) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(model, reference model, lcb of the gain)`` of the conservative rule.

    The reference policy (``p["ref_table"]``: model by [task index, last tool index]; rows and
    columns past the vocabularies are the "other" buckets and the first turn) is what the logs can
    vouch for. The router departs from it only to a model whose ensemble lower confidence bound of
    the gain over the reference, ``mean_k(g_k) - kappa * std_k(g_k)`` with ``g_k`` = member k's
    decision value of the model minus that of the reference, is positive — and only where the logs
    support that model (at least ``p["n_min"]`` logged turns of it after the same last tool type in
    the same task type: SPIBB's bootstrapped set) and the task type was seen in training. The
    reference is held to the hard budget rule only; departures also to pacing (``budget_allowed``).
    """
    values, allowed = learned_values(summary, inputs, p)
    s = summary
    _, n_t, n_k = p["ref_table"].shape
    task = jnp.clip(s.task, 0, n_t - 1)
    last = jnp.clip(jnp.where(s.turn > 0, s.recent_tools[0], n_k - 1), 0, n_k - 1)
    tier = reference_tier(s.budget, p["ref_cost"], p["ref_lcb"])
    ref = p["ref_table"][tier, task, last]
    # The reference answers to the hard rule only: its tier was chosen because following it along
    # the logged histories fits the budget (``reference.replayed_cost``), and pacing it out as well
    # moved turns off the best affordable model early in long episodes (docs/benchmarks.md, "Tiers
    # priced along every history"). Departures stay paced. A reference the hard rule rules out
    # hands the turn to the best model by the learned values, each score scaled by the share of the
    # episode the model could pay for (over the hard rule's models; "Pacing fallback").
    soft = decision_values(affordable_fraction(s, inputs, p) * inputs.score, inputs.cost_norm, p["lam"],
                           s.prev_model, p["switch_margin"])
    ref = jnp.where(inputs.allowed[ref], ref, masked_argmax(soft, inputs.allowed, cheapest_allowed(inputs)))
    bonus = jnp.where((jnp.arange(values.shape[-1]) == s.prev_model) & (s.prev_model >= 0), p["switch_margin"], 0.0)
    member = inputs.member_score + bonus - p["lam"] * inputs.cost_norm  # (K, M)
    gain = member - member[:, ref][:, None]
    lcb = gain.mean(0) - p["kappa"] * gain.std(0)
    ok = allowed & (p["support"][task, last] >= p["n_min"]) & p["seen"][task]
    cand = masked_argmax(lcb, ok, ref)
    return jnp.where(lcb[cand] > 0, cand, ref).astype(jnp.int32), ref, lcb


def reference_tier(budget, ref_cost, ref_lcb) -> jax.Array:
    """Index of the reference table for an episode's budget: the best lower bound among the tables
    whose cost per episode (``ref_cost``: priced along the logged histories,
    ``reference.replayed_cost``) fits the budget; the cheapest one when none fits."""
    fits = ref_cost <= budget
    best = jnp.argmax(jnp.where(fits, ref_lcb, -jnp.inf))
    return jnp.where(fits.any(), best, jnp.argmin(ref_cost)).astype(jnp.int32)


def _safe_dist(summary, inputs, p):
    return one_hot(safe_choice(summary, inputs, p)[0], inputs.allowed.shape[-1])


def safe(learned_policy: RoutingPolicy, ref_table, support, seen, n_min: float = DEFAULT_N_MIN,
         kappa: float = DEFAULT_KAPPA, name: str = "mtrouter-safe", ref_cost=None, ref_lcb=None) -> RoutingPolicy:
    """The learned router made conservative (``safe_choice``): it keeps to a reference policy the logs
    vouch for and departs only on a confident, supported gain. ``ref_table`` (T+1, K+2) int32, or
    (R, T+1, K+2) budget tiers with ``ref_cost``/``ref_lcb`` (R,) (``Reference.budget_tiers``);
    ``support`` (T+1, K+2, M) logged turn counts; ``seen`` (T+1,) bool. With one member (zero
    spread), ``n_min = 0`` and a seen task type it is the greedy learned rule."""
    ref_table = jnp.asarray(ref_table, jnp.int32)
    if ref_table.ndim == 2:  # one table at every budget
        ref_table, ref_cost, ref_lcb = ref_table[None], jnp.zeros(1), jnp.zeros(1)
    p = dict(learned_policy.params)
    p.update(ref_table=ref_table, ref_cost=jnp.asarray(ref_cost, jnp.float32),
             ref_lcb=jnp.asarray(ref_lcb, jnp.float32), support=jnp.asarray(support, jnp.float32),
             seen=jnp.asarray(seen, bool), n_min=jnp.float32(n_min), kappa=jnp.float32(kappa))
    return RoutingPolicy(name, _safe_dist, p, uses_estimator=True, spec="safe")


@functools.lru_cache(maxsize=None)
def _is_mapping(t: type) -> bool:
    return issubclass(t, Mapping)  # (an ABC check, ~10 us: once per type, not per leaf)


def set_lam(params: Any, lam) -> Any:
    """``params`` with every ``"lam"`` entry (at any dict depth) replaced by ``lam``."""
    if _is_mapping(type(params)):
        return {k: (lam if k == "lam" else set_lam(v, lam)) for k, v in params.items()}
    return params


__all__ = ["TurnInputs", "turn_inputs", "RoutingPolicy", "sample", "one_hot", "uniform_over", "masked_argmax",
           "cheapest_allowed", "fixed", "cheapest", "tool_heuristic", "error_escalation", "roulette", "explore",
           "learned", "learned_values", "affordable_fraction", "safe", "safe_choice", "reference_tier", "DEFAULT_KAPPA", "DEFAULT_N_MIN", "decision_values", "pace_costs", "budget_allowed", "route_decision",
           "DEFAULT_SWITCH_MARGIN", "PACE_SWITCH_SLACK", "START", "set_lam"]
