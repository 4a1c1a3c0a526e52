"""What a router sees: the observable history summary and its flat float32 feature layout.

The same ``HistorySummary`` is maintained by the simulator, rebuilt from logged turns, and kept by
the live router, so a checkpoint trained in simulation routes live traffic. Vocabularies (task
types, tool types, error kinds) belong to a ``FeatureLayout`` built from training data and stored in
the checkpoint; unseen values fall into an "other" bucket. Layout is documented in docs/features.md.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from flax import struct

WINDOW = 4  # recent turns summarised (tool types, errors)
# Bump whenever history_features() changes meaning: checkpoints made with another value are refused.
FEATURE_CODE_VERSION = 1
NO_VALUE = -1  # padding index: no turn yet / no error / no previous model


@struct.dataclass
class HistorySummary:
    """Observable state of an episode prefix (indices are into a FeatureLayout's vocabularies)."""

    task: jnp.ndarray  # () int32, task-type index
    turn: jnp.ndarray  # () int32, turns taken so far
    recent_tools: jnp.ndarray  # (WINDOW,) int32, most recent first, NO_VALUE = none
    recent_error_kinds: jnp.ndarray  # (WINDOW,) int32, NO_VALUE = no error
    recent_severities: jnp.ndarray  # (WINDOW,) int32, 0 low / 1 medium / 2 high, NO_VALUE = none
    prev_model: jnp.ndarray  # () int32, model that served the last turn, NO_VALUE = none
    model_streak: jnp.ndarray  # () int32, consecutive turns served by prev_model
    turns_since_error: jnp.ndarray  # () int32, turns since the last error (turn count if none)
    n_errors: jnp.ndarray  # () int32
    context_tokens: jnp.ndarray  # () float32, tokens the next call will send as input
    billed_tokens: jnp.ndarray  # () float32, input + output tokens billed so far
    cost: jnp.ndarray  # () float32, USD spent so far
    budget: jnp.ndarray  # () float32, USD per-episode budget, +inf when none


def initial_summary(task, context_tokens, budget) -> HistorySummary:
    """Summary before the first turn."""
    i32 = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
    none = jnp.full((WINDOW,), NO_VALUE, jnp.int32)
    return HistorySummary(
        task=i32(task), turn=i32(0), recent_tools=none, recent_error_kinds=none,
        recent_severities=none, prev_model=i32(NO_VALUE), model_streak=i32(0),
        turns_since_error=i32(0), n_errors=i32(0),
        context_tokens=jnp.asarray(context_tokens, jnp.float32),
        billed_tokens=jnp.float32(0.0), cost=jnp.float32(0.0),
        budget=jnp.asarray(budget, jnp.float32),
    )


def advance_summary(s: HistorySummary, model, tool, error_kind, severity, input_tokens,
                    output_tokens, cost, next_context_tokens) -> HistorySummary:
    """Summary after one executed turn (pure; used by the simulator, log replay and live router)."""
    model = jnp.asarray(model, jnp.int32)
    is_err = jnp.asarray(severity, jnp.int32) >= 0
    shift = lambda w, x: jnp.concatenate([jnp.asarray(x, jnp.int32)[None], w[:-1]])  # noqa: E731
    return s.replace(
        turn=s.turn + 1,
        recent_tools=shift(s.recent_tools, tool),
        recent_error_kinds=shift(s.recent_error_kinds, jnp.where(is_err, error_kind, NO_VALUE)),
        recent_severities=shift(s.recent_severities, jnp.where(is_err, severity, NO_VALUE)),
        prev_model=model,
        model_streak=jnp.where(model == s.prev_model, s.model_streak + 1, 1),
        turns_since_error=jnp.where(is_err, 0, s.turns_since_error + 1),
        n_errors=s.n_errors + is_err.astype(jnp.int32),
        context_tokens=jnp.asarray(next_context_tokens, jnp.float32),
        billed_tokens=s.billed_tokens + jnp.asarray(input_tokens + output_tokens, jnp.float32),
        cost=s.cost + jnp.asarray(cost, jnp.float32),
    )


@dataclasses.dataclass(frozen=True)
class FeatureLayout:
    """Vocabularies and scales that define the flat feature vector (hashable: a static jit arg)."""

    task_types: tuple[str, ...]
    tools: tuple[str, ...]
    error_kinds: tuple[str, ...]
    models: tuple[str, ...]
    max_steps: float = 50.0  # turn-count scale
    cost_scale: float = 1.0  # USD; the training data's mean episode cost
    version: int = 1

    @functools.cached_property  # read on every live decision; a frozen dataclass, so computed once
    def blocks(self) -> tuple[tuple[str, int], ...]:
        """(name, width) of each feature block, in order."""
        nt, nk, ne, nm = len(self.task_types) + 1, len(self.tools) + 1, len(self.error_kinds) + 1, len(self.models)
        return (
            ("task_type_onehot", nt), ("turn_progress", 1),
            ("last_tool_onehot", nk + 1),  # + "no turn yet"
            ("recent_tool_share", nk),
            ("last_error_flag", 1), ("last_severity_onehot", 3), ("last_error_kind_onehot", ne),
            ("recent_error_share", 1), ("recent_severity_mean", 1),
            ("turns_since_error", 1), ("error_rate_so_far", 1),
            ("prev_model_onehot", nm + 1),  # + "none"
            ("model_streak", 1),
            ("log_context_tokens", 1), ("log_billed_tokens", 1),
            ("cost_spent", 1), ("has_budget", 1), ("budget_remaining", 1), ("budget_remaining_frac", 1),
        )

    @functools.cached_property
    def n_features(self) -> int:
        return sum(w for _, w in self.blocks)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureLayout":
        d = dict(d)
        for k in ("task_types", "tools", "error_kinds", "models"):
            d[k] = tuple(d[k])
        return cls(**d)

    def describe(self) -> list[dict]:
        """Human-readable layout: offset, width and meaning of each block."""
        out, off = [], 0
        for name, w in self.blocks:
            out.append({"block": name, "offset": off, "width": w})
            off += w
        return out


def vocab_index(vocab: Sequence[str], names: Sequence[str | None]) -> np.ndarray:
    """Map names to vocabulary indices; unknown -> len(vocab) ("other"), None -> NO_VALUE."""
    pos = {v: i for i, v in enumerate(vocab)}
    return np.array([NO_VALUE if n is None else pos.get(n, len(vocab)) for n in names], np.int32)


def _onehot(idx, n):
    """One-hot of width n; NO_VALUE (-1) gives all zeros."""
    return (jnp.arange(n) == idx).astype(jnp.float32)


def history_features(s: HistorySummary, layout: FeatureLayout) -> jnp.ndarray:
    """Flat float32 feature vector of one summary (vmap for batches). Layout: ``layout.blocks``."""
    nt, nk, ne, nm = len(layout.task_types) + 1, len(layout.tools) + 1, len(layout.error_kinds) + 1, len(layout.models)
    seen = jnp.arange(WINDOW) < s.turn  # window slots that hold a real turn
    n_seen = jnp.maximum(jnp.sum(seen), 1)
    tools = jnp.clip(s.recent_tools, NO_VALUE, nk - 1)
    last_tool = jnp.where(s.turn > 0, tools[0], nk)  # index nk = "no turn yet"
    tool_share = jnp.sum(jax_onehot_rows(tools, nk) * seen[:, None], axis=0) / n_seen
    sev = s.recent_severities
    err = (sev >= 0) & seen
    sev_weight = jnp.array([0.2, 0.8, 1.0])[jnp.clip(sev, 0, 2)] * err
    turn_f = s.turn.astype(jnp.float32)
    has_budget = jnp.isfinite(s.budget)
    remaining = jnp.where(has_budget, s.budget - s.cost, 0.0)
    frac = jnp.where(has_budget, remaining / jnp.maximum(s.budget, 1e-9), 1.0)
    parts = [
        _onehot(jnp.clip(s.task, NO_VALUE, nt - 1), nt),
        jnp.array([jnp.minimum(turn_f / layout.max_steps, 2.0)]),
        _onehot(last_tool, nk + 1),
        tool_share,
        jnp.array([err[0]], jnp.float32),
        _onehot(jnp.where(err[0], sev[0], NO_VALUE), 3),
        _onehot(jnp.where(err[0], jnp.clip(s.recent_error_kinds[0], 0, ne - 1), NO_VALUE), ne),
        jnp.array([jnp.sum(err) / n_seen]),
        jnp.array([jnp.sum(sev_weight) / n_seen]),
        jnp.array([jnp.minimum(s.turns_since_error.astype(jnp.float32), 10.0) / 10.0]),
        jnp.array([s.n_errors / jnp.maximum(turn_f, 1.0)]),
        _onehot(jnp.where(s.prev_model >= 0, s.prev_model, nm), nm + 1),
        jnp.array([jnp.minimum(s.model_streak.astype(jnp.float32), 10.0) / 10.0]),
        jnp.array([jnp.log1p(s.context_tokens) / 12.0]),
        jnp.array([jnp.log1p(s.billed_tokens) / 15.0]),
        jnp.array([jnp.minimum(s.cost / layout.cost_scale, 10.0)]),
        jnp.array([has_budget], jnp.float32),
        jnp.array([jnp.clip(remaining / layout.cost_scale, 0.0, 10.0)]),
        jnp.array([jnp.clip(frac, 0.0, 1.0)]),
    ]
    return jnp.concatenate(parts).astype(jnp.float32)


def jax_onehot_rows(idx, n):
    """Row-wise one-hot of an index vector; NO_VALUE rows are zero."""
    return (idx[:, None] == jnp.arange(n)[None, :]).astype(jnp.float32)


def remap_summary(s: HistorySummary, task_map, tool_map, kind_map, model_map) -> HistorySummary:
    """Re-index a summary from one vocabulary (e.g. the simulator's) into a layout's.

    Each map is an int array: source index -> target index; NO_VALUE entries stay NO_VALUE.
    """
    take = lambda m, x: jnp.where(x >= 0, jnp.asarray(m)[jnp.maximum(x, 0)], NO_VALUE)  # noqa: E731
    return s.replace(
        task=take(task_map, s.task),
        recent_tools=take(tool_map, s.recent_tools),
        recent_error_kinds=take(kind_map, s.recent_error_kinds),
        prev_model=take(model_map, s.prev_model),
    )
