"""Batch predictions of a fit over many rows (fixed-size jitted chunks): single models and ensembles."""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from mtrouter_jax.estimator.config import TrainResult
from mtrouter_jax.estimator.members import member_predictions
from mtrouter_jax.estimator.model import OutcomeEstimator

AGGREGATES = ("mean", "min", "lcb")  # how an ensemble's members make one bootstrap value


def chunked(fn, features: np.ndarray, chunk: int = 32768, axis: int = 0) -> np.ndarray:
    """``fn(x)`` over fixed-size row chunks of ``features`` (the last one zero-padded, so one
    compiled shape serves every size), concatenated along the output's row ``axis``."""
    n = features.shape[0]
    chunk = min(chunk, max(n, 1))
    out = []
    for s in range(0, n, chunk):
        x = features[s:s + chunk]
        k = x.shape[0]
        if k < chunk:  # pad to the one compiled shape
            x = np.concatenate([x, np.zeros((chunk - k, x.shape[1]), x.dtype)])
        out.append(np.take(np.asarray(fn(x)), np.arange(k), axis=axis))
    return np.concatenate(out, axis=axis)


def predict_scores(model: OutcomeEstimator, features: np.ndarray, chunk: int = 32768) -> np.ndarray:
    """Score head for every model at every row: (N, F) -> (N, M), in fixed-size jitted chunks."""
    if features.shape[0] == 0:
        return np.zeros((0, model.cfg.n_models), np.float32)
    graphdef, params = nnx.split(model)
    fn = _score_fn(graphdef)
    return chunked(lambda x: fn(params, x), features, chunk)


@functools.lru_cache(maxsize=8)
def _score_fn(graphdef):
    return jax.jit(lambda params, x: nnx.merge(graphdef, params).score_all(x)[..., 0])


def ensemble_scores(result: TrainResult, features: np.ndarray, aggregate: str = "mean", chunk: int = 32768
                    ) -> np.ndarray:
    """(N, M) score predictions of a fit for bootstrapping: a single model's, or an ensemble's
    members aggregated — ``mean``, ``min`` (ensemble-min: the clipped double-Q remedy for the
    optimism of a max over noisy estimates) or ``lcb`` (mean - one member std)."""
    members = getattr(result, "members", None)
    if members is None:
        return predict_scores(result.model, features, chunk)
    fn = _members_fn(result.graphdef)
    pred = chunked(lambda x: fn(members, x), features, chunk, axis=1)  # (K, N, M)
    if aggregate == "min":
        return pred.min(0)
    if aggregate == "lcb":
        return pred.mean(0) - pred.std(0)
    return pred.mean(0)


@functools.lru_cache(maxsize=8)
def _members_fn(graphdef):
    return jax.jit(lambda members, x: member_predictions(graphdef, members, x)[..., 0])


__all__ = ["AGGREGATES", "chunked", "predict_scores", "ensemble_scores"]
