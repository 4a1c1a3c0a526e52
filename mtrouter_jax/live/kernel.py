"""The jitted pieces of a live decision, compiled once per layout/policy and cached.

``decision_kernel`` does a whole routing decision in one jitted call: the summary's features, the
checkpoint's forward pass (every ensemble member), the member mean, the cost normalisation and
the policy's distribution, draw and decision values. It replaces the host path's four dispatches
(features, ``predict``, ``predict_members``, policy) and performs the same float32 operations in
the same order, so its outputs are bit-for-bit those of the host path
(``tests/test_live_fastpath.py``). Estimators without a JAX forward pass (test fakes) keep the
host path.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtrouter_jax.routing import policies as routing
from mtrouter_jax.core.features import FeatureLayout, history_features
from mtrouter_jax.live.summary_words import unpack_traced, word_layout


@lru_cache(maxsize=None)
def compiled_features(layout: FeatureLayout):
    """One jitted ``history_features`` per layout (layout is hashable, hence static)."""
    return jax.jit(lambda s: history_features(s, layout))


def lam_ok(lam) -> bool:
    """λ is finite and >= 0 in float32, the policy's dtype (1e39 is finite in float64, inf in float32)."""
    return bool(np.isfinite(lam)) and 0 <= float(lam) <= float(np.finfo(np.float32).max)


def _key(seed, turn, attempt):
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), turn), attempt)


def _policy_outputs(dist, with_values, summary, inputs, params, learned_params, seed, turn, attempt):
    """(distribution, drawn model, its propensity, decision values) — the policy part of a decision,
    traced into both the policy-only call and the fused kernel."""
    probs = dist(summary, inputs, params)
    a, p = routing.sample(_key(seed, turn, attempt), probs)
    values = routing.learned_values(summary, inputs, learned_params)[0] if with_values else probs
    return probs, a, p, values


@lru_cache(maxsize=None)
def policy_fn(dist, with_values: bool):
    """One jitted call per policy: distribution, the draw and its propensity (and the learned
    rule's decision values for the ranking) — eager jnp ops on 6-element arrays would cost more
    than the estimator itself."""
    def decide(summary, inputs, params, learned_params, seed, turn, attempt):
        return _policy_outputs(dist, with_values, summary, inputs, params, learned_params, seed, turn, attempt)

    return jax.jit(decide)


def estimator_forward(estimator: Any) -> tuple[Callable, Any] | None:
    """(forward(params, x (B, F)) -> (K, B, M, 2), params) of an estimator, or None (host path).

    Uses ``estimator.jax_forward()`` when the estimator offers it, else the jitted forward pass
    and parameters that ``checkpoint.LoadedEstimator`` keeps.
    """
    if estimator is None:
        return None
    if hasattr(estimator, "jax_forward"):
        return estimator.jax_forward()
    fn, params = getattr(estimator, "_predict", None), getattr(estimator, "params", None)
    if callable(fn) and params is not None and hasattr(estimator, "graphdef"):
        return fn, params
    return None


def _rounded(x, zero):
    """``x`` itself, but opaque to LLVM's multiply-add contraction: XLA:CPU would otherwise fuse
    ``x * c + e`` into one FMA (one rounding), where numpy rounds the product and the sum
    separately (an optimization barrier does not survive to code generation; XOR with a runtime
    zero does)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.int32) ^ zero
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


@lru_cache(maxsize=None)
def row_fn(layout: FeatureLayout, dist, with_values: bool, forward: Callable | None, treedef, future_cost: bool,
           m: int):
    """One decision from one row: ``(params leaves, cost_scale, zero (int32 0), policy params, learned
    params, row) -> one float32 vector`` packing features (F,), score (M,), cost_norm (M,), probs (M,),
    values (M,), the model index, its propensity and member scores (K*M) — one device-to-host copy
    instead of eight (``unpack_decision`` splits it). The row is ``pack_row``'s: the text embedding,
    one float32 vector (worst, expected, remaining, λ, allowed as 0/1) and one int32 vector (the
    summary's words, seed, turn, attempt); λ is set in the policy params here."""
    one = decision_fn(layout, dist, with_values, forward, treedef, future_cost)
    n_words = word_layout()[1]

    def row(leaves, cost_scale, zero, params, lparams, r):
        text, f, i = r
        lam = f[2 * m + 1]
        return one(unpack_traced(i[:n_words]), text, leaves, cost_scale, zero, f[:m], f[m:2 * m], f[2 * m],
                   f[2 * m + 2:] > 0.5, routing.set_lam(params, lam), routing.set_lam(lparams, lam),
                   i[n_words], i[n_words + 1], i[n_words + 2])

    return row


@lru_cache(maxsize=None)
def decision_kernel(layout: FeatureLayout, dist, with_values: bool, forward: Callable | None, treedef,
                    future_cost: bool, m: int):
    """The jitted decision of one row (``row_fn``): features, the checkpoint's forward pass (every
    ensemble member), the member mean, the cost normalisation and the policy's distribution, draw
    and decision values in one call."""
    return jax.jit(row_fn(layout, dist, with_values, forward, treedef, future_cost, m))


# the sizes a batch of decisions is cut into (each compiled once, on first use); a single one
# takes ``decision_kernel``
BATCH_SIZES = (16, 8, 4, 2)


@lru_cache(maxsize=None)
def batch_kernel(layout: FeatureLayout, dist, with_values: bool, forward: Callable | None, treedef,
                 future_cost: bool, m: int):
    """Several conversations' decisions in one jitted call: ``(params leaves, cost_scale, zero, policy
    params, learned params, rows) -> (B, D)``, the rows stacked by ``stack_rows``. The rows run one
    after the other (``lax.map``) through the very function ``decision_kernel`` compiles, so each
    row's output is bit-for-bit that of a single call (a ``vmap`` would batch the matrix products,
    which rounds differently; ``tests/live/test_live_batching.py``); what the batch saves is the
    per-call cost of dispatch, argument handling and a cold cache, about half of a single call's CPU."""
    row = row_fn(layout, dist, with_values, forward, treedef, future_cost, m)

    def batched(leaves, cost_scale, zero, params, lparams, rows):
        return jax.lax.map(lambda r: row(leaves, cost_scale, zero, params, lparams, r), rows)

    return jax.jit(batched)


def pack_row(words, text, worst, expected, remaining, allowed, lam, seed, turn, attempt) -> tuple:
    """One decision's inputs as a row: the text embedding, one float32 vector (worst, expected,
    remaining, λ, allowed as 0/1) and one int32 vector (the summary's words, seed, turn, attempt)."""
    m = len(worst)
    f = np.empty(3 * m + 2, np.float32)
    f[:m], f[m:2 * m], f[2 * m], f[2 * m + 1], f[2 * m + 2:] = worst, expected, remaining, lam, allowed
    n = len(words)
    i = np.empty(n + 3, np.int32)
    i[:n], i[n], i[n + 1], i[n + 2] = words, seed, turn, attempt
    return text, f, i


def stack_rows(rows) -> tuple:
    """Rows stacked on the host into three (B, ...) arrays (three kernel arguments, not 3·B)."""
    return tuple(np.stack(x) for x in zip(*rows))


@lru_cache(maxsize=None)
def decision_fn(layout: FeatureLayout, dist, with_values: bool, forward: Callable | None, treedef,
                future_cost: bool):
    """The traced decision of one summary, behind ``row_fn`` and so both ``decision_kernel`` and
    ``batch_kernel`` (one home for both)."""

    def kernel(summary, text, leaves, cost_scale, zero, worst, expected, remaining, allowed, params, lparams,
               seed, turn, attempt):
        x = history_features(summary, layout)
        if text.shape[0]:
            x = jnp.concatenate([x, text])
        m = allowed.shape[0]
        if forward is None:
            score = cost_norm = jnp.zeros(m, jnp.float32)
            member = score[None]
        else:
            out = forward(jax.tree_util.tree_unflatten(treedef, leaves), x[None])[:, 0]  # (K, M, 2)
            acc = out[0]
            for k in range(1, out.shape[0]):  # numpy's mean over members: a sequential sum, then / K
                acc = acc + out[k]
            # XLA turns a division by a broadcast scalar into a multiplication by its reciprocal,
            # which rounds differently; a full divisor behind a barrier stays a true division
            mean = acc / jax.lax.optimization_barrier(jnp.full(acc.shape, out.shape[0], jnp.float32))
            score = mean[:, 0]
            cost = mean[:, 1] * cost_scale  # LoadedEstimator.predict: remaining cost in USD
            if future_cost:
                cost = _rounded(cost, zero) + expected
            cost_norm = cost / jax.lax.optimization_barrier(jnp.full(cost.shape, cost_scale))  # (same reason)
            member = out[..., 0]
        inputs = routing.TurnInputs(worst_cost=worst, expected_cost=expected, remaining=remaining, allowed=allowed,
                                    score=score, cost_norm=cost_norm, member_score=member)
        probs, a, p, values = _policy_outputs(dist, with_values, summary, inputs, params, lparams, seed, turn, attempt)
        f32 = jnp.float32  # the model index is exact in float32 (< 2^24)
        return jnp.concatenate([x, score, cost_norm, probs, values, a.astype(f32)[None], p.astype(f32)[None],
                                member.reshape(-1)])

    return kernel


def unpack_decision(out, n_features: int, m: int):
    """(features, score, cost_norm, member (K, M), probs, model index, propensity, values) of a kernel output."""
    out = np.asarray(out)
    x, rest = out[:n_features], out[n_features:]
    score, cost_norm, probs, values = (rest[i * m:(i + 1) * m] for i in range(4))
    a, p = int(rest[4 * m]), rest[4 * m + 1]
    return x, score, cost_norm, rest[4 * m + 2:].reshape(-1, m), probs, a, p, values


def evaluate_on_host(ep, worst, expected, remaining, allowed, params, lparams, turn):
    """``LiveEpisode``'s evaluation through the estimator's numpy ``predict`` (estimators without a JAX
    forward pass, e.g. test fakes): four dispatches instead of one."""
    r = ep.router
    feats = ep.features()
    score = cost_norm = np.zeros(len(r.pool), np.float32)
    member = score[None]
    if r.estimator is not None:
        if r.future_cost:
            score, rem_cost = r.estimator.predict(feats, turn_cost=expected)
        else:
            score, rem_cost = r.estimator.predict(feats)
        score = np.asarray(score, np.float32)
        cost_norm = np.asarray(rem_cost, np.float32) / r.cost_scale
        members = getattr(r.estimator, "predict_members", None)
        member = np.asarray(members(feats)[..., 0], np.float32) if members is not None else score[None]
    if not (np.isfinite(score).all() and np.isfinite(cost_norm).all() and np.isfinite(member).all()):
        return feats, score, cost_norm, member, None  # decide() takes the safe choice
    inputs = routing.TurnInputs(worst_cost=worst, expected_cost=expected, remaining=remaining, allowed=allowed,
                                score=score, cost_norm=cost_norm, member_score=member)
    return feats, score, cost_norm, member, ep._decide(ep.summary, inputs, params, lparams, *turn)


__all__ = ["compiled_features", "policy_fn", "estimator_forward", "decision_kernel",
           "decision_fn", "row_fn", "batch_kernel", "lam_ok", "pack_row", "stack_rows", "BATCH_SIZES", "unpack_decision",
           "evaluate_on_host"]
