"""The outcome estimator Q(history, model): history encoder, model encoder, joint MLP, two heads.

Heads: the AEC-adjusted normalised terminal score S' and the remaining episode cost C~ (in units
of the training data's mean episode cost). Routing uses ``S' - lam * C~``, so lam is a runtime
knob instead of being baked in at training time as in the paper.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtrouter_jax.core.pool import Pool


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
    """Architecture (stored in checkpoints)."""

    n_features: int  # history feature width (structured + text part)
    n_models: int
    n_attributes: int  # model attribute vector width
    history_hidden: int = 128
    history_dim: int = 64
    model_hidden: int = 32
    residual_dim: int = 16  # learned per-model residual embedding (zero-init, L2-regularised)
    model_dim: int = 64
    joint_hidden: int = 256
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ModelAttributes(nnx.Variable):
    """Normalised per-model attribute table (not trained; part of the checkpoint)."""


def model_attribute_matrix(pool: Pool, attribute_names: tuple[str, ...] | None = None
                           ) -> tuple[np.ndarray, list[str]]:
    """Raw (M, A) attributes: log1p prices per 1M tokens, the price ratios, then pool attributes."""
    names = list(attribute_names) if attribute_names is not None else list(pool.attribute_names)
    rows = []
    for m in pool.models:
        row = [math.log1p(m.price_input), math.log1p(m.price_cached_input), math.log1p(m.price_output),
               math.log1p(m.price_output / max(m.price_input, 1e-9)),
               m.price_cached_input / max(m.price_input, 1e-9)]
        row += [float(m.attributes.get(k, 0.0)) for k in names]
        rows.append(row)
    cols = ["log_price_input", "log_price_cached", "log_price_output", "log_output_input_ratio",
            "cached_discount"] + names
    return np.asarray(rows, np.float32), cols


def normalise_attributes(raw: np.ndarray, mean: np.ndarray | None = None, std: np.ndarray | None = None):
    """z-score with stored statistics, so adding a model later does not move existing embeddings."""
    if mean is None:
        mean, std = raw.mean(0), raw.std(0)
    std = np.where(std > 1e-6, std, 1.0)
    return (raw - mean) / std, mean, std


class OutcomeEstimator(nnx.Module):
    """Q(history, model) with a score head and a remaining-cost head."""

    def __init__(self, cfg: EstimatorConfig, attributes: np.ndarray, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.attributes = ModelAttributes(jnp.asarray(attributes, jnp.float32))  # (M, A)
        self.hist1 = nnx.Linear(cfg.n_features, cfg.history_hidden, rngs=rngs)
        self.hist2 = nnx.Linear(cfg.history_hidden, cfg.history_dim, rngs=rngs)
        self.attr1 = nnx.Linear(cfg.n_attributes, cfg.model_hidden, rngs=rngs)
        self.attr2 = nnx.Linear(cfg.model_hidden, cfg.model_hidden, rngs=rngs)
        self.residual = nnx.Param(jnp.zeros((cfg.n_models, cfg.residual_dim), jnp.float32))
        self.model_proj = nnx.Linear(cfg.model_hidden + cfg.residual_dim, cfg.model_dim, rngs=rngs)
        self.model_norm = nnx.LayerNorm(cfg.model_dim, rngs=rngs)
        self.hist_proj = nnx.Linear(cfg.history_dim, cfg.model_dim, rngs=rngs)
        joint_in = cfg.history_dim + 2 * cfg.model_dim
        self.joint1 = nnx.Linear(joint_in, cfg.joint_hidden, rngs=rngs)
        self.joint2 = nnx.Linear(cfg.joint_hidden, cfg.joint_hidden, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.head = nnx.Linear(cfg.joint_hidden, 2, rngs=rngs)

    def encode_history(self, x):
        """(..., F) -> (..., history_dim)."""
        return self.hist2(nnx.relu(self.hist1(x)))

    def encode_models(self):
        """(M, model_dim): attribute MLP + per-model residual, projected and layer-normalised."""
        a = nnx.relu(self.attr2(nnx.relu(self.attr1(self.attributes[...]))))
        return self.model_norm(self.model_proj(jnp.concatenate([a, self.residual[...]], axis=-1)))

    def _joint(self, h, e):
        # concat + elementwise product of history and model embeddings
        z = jnp.concatenate([h, e, self.hist_proj(h) * e], axis=-1)
        z = self.drop(nnx.relu(self.joint1(z)))
        z = self.drop(nnx.relu(self.joint2(z)))
        return self.head(z)

    def __call__(self, x, model_idx):
        """Predictions for the served model only: (B, F), (B,) -> (B, 2) [score, cost]."""
        return self._joint(self.encode_history(x), self.encode_models()[model_idx])

    def score_all(self, x):
        """Every model for each history in one batched call: (B, F) -> (B, M, 2)."""
        h = self.encode_history(x)
        e = self.encode_models()
        hb = jnp.broadcast_to(h[:, None, :], (h.shape[0], e.shape[0], h.shape[-1]))
        eb = jnp.broadcast_to(e[None], (h.shape[0],) + e.shape)
        return self._joint(hb, eb)


def make_estimator(cfg: EstimatorConfig, attributes: np.ndarray, seed: int) -> OutcomeEstimator:
    """Initialise an estimator from an explicit seed (params and dropout streams)."""
    return OutcomeEstimator(cfg, attributes, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def abstract_estimator(cfg: EstimatorConfig) -> OutcomeEstimator:
    """Shape-only estimator used to restore checkpoints without allocating or training code."""
    attrs = np.zeros((cfg.n_models, cfg.n_attributes), np.float32)
    return nnx.eval_shape(lambda: make_estimator(cfg, attrs, 0))


__all__ = ["EstimatorConfig", "OutcomeEstimator", "ModelAttributes", "model_attribute_matrix",
           "normalise_attributes", "make_estimator", "abstract_estimator", "jax"]
