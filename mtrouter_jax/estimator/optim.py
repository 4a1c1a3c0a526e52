"""The pieces of one optimisation step: optimiser, loss, batch size, the baseline loss to beat."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from mtrouter_jax.estimator.config import TrainConfig
from mtrouter_jax.estimator.model import OutcomeEstimator

MIN_STEPS_PER_EPOCH = 8  # small logs (a few hundred episodes) still get real optimisation steps


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW with a cosine schedule down to ``min_learning_rate``."""
    schedule = optax.cosine_decay_schedule(cfg.learning_rate, max(total_steps, 1),
                                           alpha=cfg.min_learning_rate / cfg.learning_rate)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.adamw(schedule, weight_decay=cfg.weight_decay))


def estimator_loss(model: OutcomeEstimator, batch: dict, cfg: TrainConfig, cost_weight):
    """Weighted MSE on both heads plus L2 on the residual model embeddings."""
    pred = model(batch["x"], batch["a"])
    w = batch["w"]
    se_score = (pred[:, 0] - batch["ys"]) ** 2
    se_cost = (pred[:, 1] - batch["yc"]) ** 2
    denom = jnp.maximum(jnp.sum(w), 1e-9)
    mse = jnp.sum(w * (se_score + cost_weight * se_cost)) / denom
    loss = mse + cfg.l2_residual * jnp.sum(model.residual[...] ** 2)
    if "pair" in batch:  # executed counterfactuals: fit the score difference of the two models directly
        loss = loss + cfg.pair_weight * pair_loss(model, batch["pair"])
    return loss, mse


def pair_loss(model: OutcomeEstimator, pair: dict):
    """Mean squared error of the predicted score difference ``Q(h, b) - Q(h, a)`` against the
    paired advantage label ``d`` (``estimator.pairs``): a per-turn label with the continuation's
    noise mostly cancelled, where the Monte-Carlo targets carry all of it."""
    diff = model(pair["x"], pair["b"])[:, 0] - model(pair["x"], pair["a"])[:, 0]
    return jnp.mean((diff - pair["d"]) ** 2)


def default_cost_weight(train: dict) -> float:
    """var(score target) / var(cost target): neither head's scale dominates the shared trunk."""
    return float(np.var(train["ys"]) / max(np.var(train["yc"]), 1e-12))


def per_model_mean_loss(train: dict, val: dict, n_models: int, cost_weight: float) -> float:
    """Validation MSE of predicting each model's mean training targets (the baseline to beat)."""
    loss = 0.0
    w = val["w"]
    for m in range(n_models):
        sel_t, sel_v = train["a"] == m, val["a"] == m
        if not sel_v.any():
            continue
        ms = train["ys"][sel_t].mean() if sel_t.any() else train["ys"].mean()
        mc = train["yc"][sel_t].mean() if sel_t.any() else train["yc"].mean()
        loss += float(np.sum(w[sel_v] * ((val["ys"][sel_v] - ms) ** 2 + cost_weight * (val["yc"][sel_v] - mc) ** 2)))
    return loss / max(float(w.sum()), 1e-9)


def effective_batch_size(n_train: int, requested: int, n_devices: int = 1) -> int:
    """``requested``, or a power of two small enough for ``MIN_STEPS_PER_EPOCH`` steps per epoch
    on ``n_train`` turns (never below 8 per device). Raises when there is not one batch of data."""
    b = requested
    while b > 8 * n_devices and n_train // b < MIN_STEPS_PER_EPOCH:
        b //= 2
    b = max(b - b % n_devices, n_devices)
    if n_train < b:
        raise ValueError(f"only {n_train} training turns; need at least one batch of {b}")
    return b


__all__ = ["MIN_STEPS_PER_EPOCH", "make_optimizer", "estimator_loss", "pair_loss", "default_cost_weight", "per_model_mean_loss",
           "effective_batch_size"]
