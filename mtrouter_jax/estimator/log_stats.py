"""Whole-log statistics every training row shares, and length buckets for building big logs in
pieces (``dataset.build_training_data``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from mtrouter_jax.core.features import FeatureLayout, vocab_index
from mtrouter_jax.core.pool import Pool
from mtrouter_jax.estimator.targets import expected_steps_by_task
from mtrouter_jax.logs.io import Episode

if TYPE_CHECKING:  # dataset imports this module
    from mtrouter_jax.estimator.dataset import TargetConfig


def length_buckets(lengths: Sequence[int], max_cells: int) -> list[np.ndarray]:
    """Episode indices in groups whose padded grid (count x longest) stays within ``max_cells``
    (a longer episode alone is its own group); one group, in log order, when the whole log fits."""
    lengths = np.asarray(lengths, np.int64)
    if lengths.size * int(lengths.max(initial=0)) <= max_cells:
        return [np.arange(lengths.size)]
    out, cur, longest = [], [], 0
    for i in np.argsort(-lengths, kind="stable"):
        longest = longest or int(lengths[i])
        if cur and (len(cur) + 1) * longest > max_cells:
            out.append(np.sort(np.asarray(cur)))
            cur, longest = [], int(lengths[i])
        cur.append(int(i))
    out.append(np.sort(np.asarray(cur)))
    return out


def check_models(episodes: Sequence[Episode], pool: Pool) -> None:
    names = set(pool.names)
    for e in episodes:
        for name in set(e.models) | {t.model for t in e.turns}:
            if name not in names:
                raise ValueError(f"episode {e.episode_id}: model {name!r} is not in the pool ({', '.join(pool.names)})")


def score_norm(episodes: Sequence[Episode], config: TargetConfig) -> tuple[np.ndarray, np.ndarray]:
    ranges = np.array([e.score_range or config.default_score_range for e in episodes], np.float64)
    raw = np.array([e.score for e in episodes], np.float64)
    return ranges, ((raw - ranges[:, 0]) / (ranges[:, 1] - ranges[:, 0])).astype(np.float32)


def global_stats(episodes: Sequence[Episode], pool: Pool, config: TargetConfig, layout: FeatureLayout,
                  cost_scale: float) -> dict:
    """What every row's targets share, from the whole log: cost scale, expected steps N per task
    (configured, else the median successful length), per-model completion-token statistics."""
    _, norm = score_norm(episodes, config)
    lengths = np.array([len(e.turns) for e in episodes], np.int64)
    n_tasks = len(layout.task_types)
    task = vocab_index(layout.task_types, [e.task_type for e in episodes])
    med = expected_steps_by_task(lengths, norm, np.minimum(task, n_tasks - 1), n_tasks,
                                 success_threshold=config.success_threshold)
    n_by_task = {t: float(med[i]) for i, t in enumerate(layout.task_types)}
    if config.expected_steps:
        n_by_task.update({k: float(v) for k, v in config.expected_steps.items()})
    pos = {n: i for i, n in enumerate(pool.names)}
    out = np.array([t.output_tokens for e in episodes for t in e.turns], np.float32)
    served = np.array([pos[t.model] for e in episodes for t in e.turns], np.int64)
    M = len(pool)
    out_hi, out_mean = np.zeros(M, np.float32), np.zeros(M, np.float32)
    for m in range(M):
        sel = out[served == m]
        out_hi[m] = np.quantile(sel, 0.95) if sel.size else (np.quantile(out, 0.95) if out.size else 1000.0)
        out_mean[m] = sel.mean() if sel.size else (out.mean() if out.size else 1000.0)
    return {"cost_scale": cost_scale, "n_by_task": n_by_task, "median_length": float(np.median(lengths)),
            "out_hi": out_hi, "out_mean": out_mean}


__all__ = ["length_buckets", "check_models", "score_norm", "global_stats"]
