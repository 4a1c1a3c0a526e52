"""Ensembles of outcome estimators: K members trained in one compiled ``jax.vmap`` step.

Members differ by their initialisation seed and (for K > 1) a bootstrap resample of the training
*episodes* (Poisson(1) weights per episode, the online bootstrap), so
their disagreement measures how much the logs pin a prediction down. All members share the same
validation split (by episode); each keeps its own best epoch. Parameters are stored stacked along
a leading member axis; ``member_predictions`` evaluates every member in one call.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtrouter_jax.dataset import TrainingData, split_by_episode
from mtrouter_jax.model import EstimatorConfig, OutcomeEstimator, model_attribute_matrix, normalise_attributes
from mtrouter_jax.pool import Pool
from mtrouter_jax.train import (TrainConfig, TrainResult, _progress, _subset, effective_batch_size, estimator_loss,
                                make_optimizer, per_model_mean_loss)


@dataclasses.dataclass
class EnsembleResult(TrainResult):
    """A ``TrainResult`` whose ``model`` is member 0 and ``members`` the stacked member params."""

    members: Any = None  # nnx.State with a leading (K,) axis on every array
    graphdef: Any = None  # graphdef of one (eval-mode) member
    member_val_loss: list | None = None  # (K,) best validation loss per member

    @property
    def k(self) -> int:
        return int(jax.tree_util.tree_leaves(self.members)[0].shape[0])


def _member(ecfg: EstimatorConfig, attrs, tx, key):
    """One member's (model, optimizer) from a key (traceable: used under jax.vmap)."""
    k_params, k_drop = jax.random.split(key)
    model = OutcomeEstimator(ecfg, attrs, rngs=nnx.Rngs(params=k_params, dropout=k_drop))
    model.train()
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def member_keys(seed: int, k: int) -> jax.Array:
    """The (K,) member keys of an ensemble trained with ``seed``."""
    return jax.random.split(jax.random.PRNGKey(seed), k)


def abstract_members(ecfg: EstimatorConfig, k: int):
    """Shape-only stacked member params (to restore a checkpoint into)."""
    attrs = jnp.zeros((ecfg.n_models, ecfg.n_attributes), jnp.float32)

    def one(key):
        k_params, k_drop = jax.random.split(key)
        return nnx.state(OutcomeEstimator(ecfg, attrs, rngs=nnx.Rngs(params=k_params, dropout=k_drop)))

    return jax.eval_shape(jax.vmap(one), member_keys(0, k))


def member_predictions(graphdef, members, x) -> jax.Array:
    """(K, B, M, 2) predictions of every member for histories ``x`` (B, F) (traceable)."""
    return jax.vmap(lambda p: nnx.merge(graphdef, p).score_all(x))(members)


@jax.jit
def _select(mask, new, old):
    """Per member: ``new`` where ``mask`` else ``old`` (RNG key leaves: always ``new``)."""
    def pick(n, o):
        if jax.dtypes.issubdtype(n.dtype, jax.dtypes.prng_key):
            return n
        return jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
    return jax.tree_util.tree_map(pick, new, old)


def bootstrap_weights(data: TrainingData, k: int, seed: int) -> np.ndarray:
    """(K, N) per-turn weights: Poisson(1) counts per episode (all ones when k == 1)."""
    if k == 1:
        return np.ones((1, data.n), np.float32)
    rng = np.random.default_rng(seed + 7919)
    per_episode = rng.poisson(1.0, size=(k, data.n_episodes)).astype(np.float32)
    return per_episode[:, data.episode]


def make_ensemble_epoch(graphdef, cfg: TrainConfig, n_batches: int, cost_weight: float):
    """One jitted epoch for all K members: ``(stacked state, data, key, (K, N) weights) ->
    (stacked state, (K,) mean losses)`` — a ``lax.scan`` over minibatches whose step is the
    ``jax.vmap`` of one member's update, so one compile trains the whole ensemble."""
    bs = cfg.batch_size

    def member_step(state, batch, w):
        model, opt = nnx.merge(graphdef, state)
        batch = {**batch, "w": batch["w"] * w}
        (_, mse), grads = nnx.value_and_grad(estimator_loss, has_aux=True)(model, batch, cfg, cost_weight)
        opt.update(model, grads)
        return nnx.state((model, opt)), mse

    step_all = jax.vmap(member_step, in_axes=(0, None, 0))

    @jax.jit
    def epoch(state, data, key, weights):
        # one minibatch order for all members, gathered once: the members still differ by their
        # initialisation and their bootstrap weights (vmapping the gather would copy it K times)
        perm = jax.random.permutation(key, data["a"].shape[0])[: n_batches * bs].reshape(n_batches, bs)

        def body(state, idx):
            batch = jax.tree_util.tree_map(lambda v: v[idx], data)
            return step_all(state, batch, weights[:, idx])

        state, losses = jax.lax.scan(body, state, perm)
        return state, jnp.mean(losses, axis=0)

    return epoch


def fit_ensemble(data: TrainingData, pool: Pool, cfg: TrainConfig = TrainConfig(), k: int = 5, *,
                 progress: bool = True, estimator_overrides: dict | None = None) -> EnsembleResult:
    """Train ``k`` estimators at once (one jitted, vmapped epoch for all of them)."""
    if k < 1:
        raise ValueError(f"ensemble size must be >= 1, got {k}")
    raw_attrs, attr_names = model_attribute_matrix(pool)
    attrs, attr_mean, attr_std = normalise_attributes(raw_attrs)
    attrs = jnp.asarray(attrs, jnp.float32)
    ecfg = EstimatorConfig(n_features=data.features.shape[1], n_models=len(pool), n_attributes=attrs.shape[1],
                           **(estimator_overrides or {}))
    train_idx, val_idx = split_by_episode(data, cfg.val_frac, cfg.seed)
    cfg = dataclasses.replace(cfg, batch_size=effective_batch_size(len(train_idx), cfg.batch_size))
    train, val = _subset(data, train_idx), _subset(data, val_idx)
    n_batches = len(train_idx) // cfg.batch_size
    tx = make_optimizer(cfg, n_batches * cfg.max_epochs)
    keys = member_keys(cfg.seed, k)
    template, template_opt = _member(ecfg, attrs, tx, keys[0])
    graphdef, _ = nnx.split((template, template_opt))
    template.eval()
    graphdef_eval, _ = nnx.split(template)
    state = jax.vmap(lambda key: nnx.state(_member(ecfg, attrs, tx, key)))(keys)
    weights = jnp.asarray(bootstrap_weights(data, k, cfg.seed)[:, train_idx])
    cost_weight = cfg.cost_weight
    if cost_weight is None:
        cost_weight = float(np.var(train["ys"]) / max(np.var(train["yc"]), 1e-12))
    bs = cfg.batch_size
    train_epoch = make_ensemble_epoch(graphdef, cfg, n_batches, cost_weight)

    @jax.jit
    def eval_losses(state, data):
        def one(s):
            model, _ = nnx.merge(graphdef, s)
            params = nnx.state(model)
            return estimator_loss(nnx.merge(graphdef_eval, params), data, cfg, cost_weight)[1], params
        return jax.vmap(one)(state)

    train_dev = jax.tree_util.tree_map(jnp.asarray, train)
    val_dev = jax.tree_util.tree_map(jnp.asarray, val) if len(val_idx) else None
    baseline = per_model_mean_loss(train, val, len(pool), cost_weight) if len(val_idx) else float("nan")
    best = np.full(k, np.inf)
    best_epoch = np.full(k, -1)
    best_params = None
    bad, history = 0, []
    t_start = time.perf_counter()
    bar = _progress(progress, cfg.max_epochs)
    try:
        for epoch in range(cfg.max_epochs):
            t0 = time.perf_counter()
            state, tl = train_epoch(state, train_dev, jax.random.fold_in(keys[0], epoch), weights)
            vl, params = eval_losses(state, val_dev if val_dev is not None else train_dev)
            tl, vl = np.asarray(tl), np.asarray(vl)
            better = vl < best - 1e-6
            if best_params is None:
                best_params = params
            elif better.any():
                best_params = _select(jnp.asarray(better), params, best_params)
            best = np.where(better, vl, best)
            best_epoch = np.where(better, epoch, best_epoch)
            bad = 0 if better.any() else bad + 1
            history.append({"epoch": epoch, "train_loss": float(tl.mean()), "val_loss": float(vl.mean()),
                            "member_val_loss": vl.tolist(), "seconds": time.perf_counter() - t0})
            bar.update(epoch, float(tl.mean()), float(vl.mean()), float(best.mean()))
            if bad >= cfg.patience:
                break
            if cfg.max_seconds is not None and time.perf_counter() - t_start > cfg.max_seconds:
                break
    finally:
        bar.close()
    first = nnx.merge(graphdef_eval, jax.tree_util.tree_map(lambda x: x[0], best_params))
    steady = history[1:] or history
    rate = n_batches * bs * k * len(steady) / max(sum(h["seconds"] for h in steady), 1e-9)
    return EnsembleResult(first, history, int(np.median(best_epoch)), float(best.mean()), baseline, attr_mean,
                          attr_std, attr_names, rate, cost_weight, members=best_params, graphdef=graphdef_eval,
                          member_val_loss=best.tolist())


__all__ = ["EnsembleResult", "fit_ensemble", "make_ensemble_epoch", "member_predictions", "abstract_members", "bootstrap_weights",
           "member_keys"]
