"""Training targets: annealed-error-cost (AEC) score targets and remaining-cost targets.

Episodes arrive as padded arrays of E episodes x T max turns:

* ``mask``      (E, T) bool    True on real turns (a prefix of each row)
* ``severity``  (E, T) int32   -1 = no error, 0 = low, 1 = medium, 2 = high
* ``costs``     (E, T) float32 cost of each call
* ``score``     (E,)   float   terminal score (normalise with :func:`normalize_score`)
* ``expected_steps`` (E,) float  N for the episode's task type

Everything except :func:`expected_steps_by_task` is pure ``jax.numpy`` and jit/vmap-safe; numpy
inputs are accepted and converted.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import numpy as np
from flax import struct

# Severity codes used in the ``severity`` arrays.
NO_ERROR = -1
LOW = 0
MEDIUM = 1
HIGH = 2


@struct.dataclass
class AECConfig:
    """Annealed-error-cost hyper-parameters (defaults from the MTRouter paper).

    All fields are static (not pytree leaves), so the config is hashable and a change of value
    means a recompile rather than a silent trace of Python floats.
    """

    w_low: float = struct.field(pytree_node=False, default=0.3)
    w_high: float = struct.field(pytree_node=False, default=1.0)
    p_low: float = struct.field(pytree_node=False, default=0.3)
    p_high: float = struct.field(pytree_node=False, default=0.7)
    # Indexed by severity code: (low, medium, high).
    severity_multipliers: tuple[float, float, float] = struct.field(
        pytree_node=False, default=(0.2, 0.8, 1.0)
    )
    min_penalty_frac: float = struct.field(pytree_node=False, default=0.2)


def normalize_score(score, lo: float, hi: float):
    """Map a raw terminal score from ``[lo, hi]`` to ``[0, 1]``: ``(score - lo) / (hi - lo)``.

    E.g. ScienceWorld ``lo=-100, hi=100``; 0/1 accuracy ``lo=0, hi=1``. Plain arithmetic, so it
    works on Python floats, numpy and jax arrays alike.
    """
    if hi == lo:
        raise ValueError(f"normalize_score needs hi != lo, got lo=hi={lo}")
    return (score - lo) / (hi - lo)


def progress_weight(p, cfg: AECConfig = AECConfig()):
    """Progress weight ``w(p)``: ``w_low`` for ``p <= p_low``, ``w_high`` for ``p >= p_high``,
    linear in between."""
    p = jnp.asarray(p, jnp.float32)
    if cfg.p_high <= cfg.p_low:  # degenerate ramp: a step at p_high
        return jnp.where(p >= cfg.p_high, cfg.w_high, cfg.w_low).astype(jnp.float32)
    frac = jnp.clip((p - cfg.p_low) / (cfg.p_high - cfg.p_low), 0.0, 1.0)
    return cfg.w_low + (cfg.w_high - cfg.w_low) * frac


def _per_episode_n(expected_steps, n_episodes: int):
    n = jnp.broadcast_to(jnp.asarray(expected_steps, jnp.float32), (n_episodes,))
    # A task type cannot need fewer than one step; this also keeps base = 1/N finite.
    return jnp.maximum(n, 1.0)[:, None]  # (E, 1)


def aec_penalties(severity, mask, expected_steps, cfg: AECConfig = AECConfig()):
    """Per-step AEC penalties, shape (E, T).

    With step t (0-based), ``p = min((t + 1) / N, 1)`` and ``base = 1 / N``:
    ``pen_t = max(base * m(severity_t) * w(p), min_penalty_frac * base)`` on real steps with an
    error (``severity >= 0``), else 0. ``N`` is clipped to at least 1.

    Args:
        severity: (E, T) int, -1 = no error, 0/1/2 = low/medium/high.
        mask: (E, T) bool, True on real turns.
        expected_steps: (E,) (or scalar) expected steps N per episode.
        cfg: AEC hyper-parameters.
    """
    severity = jnp.asarray(severity, jnp.int32)
    mask = jnp.asarray(mask, bool)
    n_ep, n_t = severity.shape
    n = _per_episode_n(expected_steps, n_ep)
    base = 1.0 / n  # (E, 1)
    t = jnp.arange(n_t, dtype=jnp.float32)[None, :]
    p = jnp.minimum((t + 1.0) / n, 1.0)
    mults = jnp.asarray(cfg.severity_multipliers, jnp.float32)
    m = mults[jnp.clip(severity, 0, mults.shape[0] - 1)]
    pen = jnp.maximum(base * m * progress_weight(p, cfg), cfg.min_penalty_frac * base)
    is_error = mask & (severity >= 0)
    return jnp.where(is_error, pen, 0.0).astype(jnp.float32)


def _suffix_sum(x):
    """Inclusive sum from t to the end along the last axis."""
    return jnp.flip(jnp.cumsum(jnp.flip(x, axis=-1), axis=-1), axis=-1)


def annealed_error_targets(score_norm, severity, mask, expected_steps, cfg: AECConfig = AECConfig()):
    """AEC score targets ``S'_t = S - sum_{j >= t} pen_j`` (not clipped), 0 at padding. (E, T).

    ``S'_t`` is non-decreasing in t: fewer future penalties remain as the episode advances.
    """
    mask = jnp.asarray(mask, bool)
    pen = aec_penalties(severity, mask, expected_steps, cfg)
    s = jnp.asarray(score_norm, jnp.float32)[:, None]
    return jnp.where(mask, s - _suffix_sum(pen), 0.0)


def mean_episode_cost(costs, mask):
    """Mean total cost per episode, over episodes with at least one real turn (0 if none)."""
    costs = jnp.asarray(costs, jnp.float32)
    mask = jnp.asarray(mask, bool)
    totals = jnp.sum(jnp.where(mask, costs, 0.0), axis=-1)
    n = jnp.sum(jnp.any(mask, axis=-1))
    return jnp.where(n > 0, jnp.sum(totals) / jnp.maximum(n, 1), 0.0)


def remaining_cost_targets(costs, mask, mean_episode_cost):
    """Cost from step t (inclusive) to the episode end divided by ``mean_episode_cost``. (E, T).

    0 at padding. A non-positive mean (all-free data) divides by 1 instead, which leaves the
    (then all-zero) targets at 0 rather than NaN.
    """
    costs = jnp.asarray(costs, jnp.float32)
    mask = jnp.asarray(mask, bool)
    mean = jnp.asarray(mean_episode_cost, jnp.float32)
    denom = jnp.where(mean > 0, mean, 1.0)
    remaining = _suffix_sum(jnp.where(mask, costs, 0.0))
    return jnp.where(mask, remaining / denom, 0.0)


def expected_steps_by_task(
    lengths,
    score_norm,
    task_ids,
    n_tasks: int,
    success_threshold: float = 0.5,
    default: Optional[float] = None,
) -> np.ndarray:
    """Expected steps N per task type (host-side numpy), shape (n_tasks,) float32.

    Per task: the median length of its successful episodes (``score_norm >= success_threshold``);
    if none succeeded, the median length of all its episodes; if it has no episodes, ``default``
    (or, when ``default`` is None, the median length of all episodes).
    """
    lengths = np.asarray(lengths, np.float64).reshape(-1)
    score_norm = np.asarray(score_norm, np.float64).reshape(-1)
    task_ids = np.asarray(task_ids, np.int64).reshape(-1)
    if not (lengths.shape == score_norm.shape == task_ids.shape):
        raise ValueError("lengths, score_norm and task_ids must have the same length")
    if task_ids.size and (task_ids.min() < 0 or task_ids.max() >= n_tasks):
        raise ValueError(f"task_ids must lie in [0, {n_tasks})")
    if default is None:
        if lengths.size == 0:
            raise ValueError("no episodes and no default: cannot pick expected steps")
        default = float(np.median(lengths))
    out = np.full(n_tasks, float(default), np.float64)
    success = score_norm >= success_threshold
    for k in range(n_tasks):
        in_task = task_ids == k
        good = in_task & success
        if good.any():
            out[k] = np.median(lengths[good])
        elif in_task.any():
            out[k] = np.median(lengths[in_task])
    return out.astype(np.float32)


# --- bootstrapped (fitted-Q) score targets ---------------------------------------------------
# Monte-Carlo AEC targets carry the whole future's randomness: in the simulator one turn's model
# moves the final score by ~1 point while outcomes spread ~40 points (docs/benchmarks.md). An
# n-step bootstrapped target keeps the logged penalties of the next n turns and replaces the rest
# of the logged future by the estimator's own value of the state n turns later, under the router's
# greedy choice: lower variance, and it evaluates the router's future rather than the logger's.

def nstep_successors(episode, n: int):
    """For flat per-turn rows ordered by (episode, turn): the row ``n`` turns later in the same
    episode and whether it exists. Returns ``(index (N,) int32, valid (N,) bool)``; invalid rows
    point at themselves."""
    episode = jnp.asarray(episode, jnp.int32)
    if n < 1:
        raise ValueError(f"n-step horizon must be >= 1, got {n}")
    N = episode.shape[0]
    rows = jnp.arange(N, dtype=jnp.int32)
    succ = rows + n
    inside = succ < N
    valid = inside & (episode[jnp.minimum(succ, N - 1)] == episode)
    return jnp.where(valid, succ, rows), valid


def greedy_state_values(score, allowed):
    """V(h) = max over allowed models of the predicted score, (N, M) -> (N,). Rows with no allowed
    model fall back to the max over all models."""
    score = jnp.asarray(score, jnp.float32)
    allowed = jnp.asarray(allowed, bool)
    allowed = jnp.where(allowed.any(-1, keepdims=True), allowed, True)
    return jnp.max(jnp.where(allowed, score, -jnp.inf), axis=-1)


def bootstrapped_score_targets(mc_targets, successor, has_successor, successor_values):
    """n-step targets ``S'_t - S'_{t+n} + V(h_{t+n})`` where a successor exists, else ``S'_t``.

    ``S'_t - S'_{t+n}`` is minus the AEC penalties of turns t..t+n-1, so those stay as logged;
    ``successor_values`` (N,) is V at every row (only rows that are someone's successor matter).
    With V equal to the Monte-Carlo targets the result is the Monte-Carlo targets.
    """
    mc = jnp.asarray(mc_targets, jnp.float32)
    v = jnp.asarray(successor_values, jnp.float32)
    return jnp.where(has_successor, mc - mc[successor] + v[successor], mc)
