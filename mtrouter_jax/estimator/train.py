"""Training the outcome estimator, one loop for one member or an ensemble of K.

A jit-compiled pure epoch (``lax.scan`` over minibatches; for K > 1 the step is the ``jax.vmap``
of one member's update, so one compile trains every member), data parallel over devices in both
cases, and one host loop: validation split by episode, early stopping, best weights kept per
member, a labelled progress bar, the steady-state throughput.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mtrouter_jax.core.pool import Pool
from mtrouter_jax.estimator.config import TrainConfig, TrainResult
from mtrouter_jax.estimator.dataset import TrainingData, split_by_episode
from mtrouter_jax.estimator.members import bootstrap_weights, init_member, member_keys, select_members
from mtrouter_jax.estimator.model import (EstimatorConfig, make_estimator, model_attribute_matrix,
                                          normalise_attributes)
from mtrouter_jax.estimator.optim import (MIN_STEPS_PER_EPOCH, default_cost_weight, effective_batch_size,
                                          estimator_loss, make_optimizer, per_model_mean_loss)
from mtrouter_jax.estimator.pairs import paired_advantages
from mtrouter_jax.estimator.progress import EpochBar

log = logging.getLogger("mtrouter_jax.train")


def make_train_epoch(graphdef, cfg: TrainConfig, n_batches: int, mesh: Mesh | None, cost_weight: float,
                     k: int = 1) -> Callable:
    """A jit-compiled pure epoch: ``(state, data, key[, (K, N) weights]) -> (state, mean loss)``.

    K = 1: plain state and a scalar loss; K > 1: state stacked on a leading member axis, (K,) losses.
    One minibatch order serves every member, gathered once (vmapping the gather would copy it K
    times); members still differ by initialisation and bootstrap weights."""
    bs = cfg.batch_size

    def shard(x, spec=P("data")):
        # data parallel: each device gets a slice of the minibatch; params stay replicated
        return x if mesh is None else jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    def member_step(state, batch, w=None):
        model, opt = nnx.merge(graphdef, state)
        if w is not None:
            batch = {**batch, "w": batch["w"] * w}
        (_, mse), grads = nnx.value_and_grad(estimator_loss, has_aux=True)(model, batch, cfg, cost_weight)
        opt.update(model, grads)
        return nnx.state((model, opt)), mse

    step_all = jax.vmap(member_step, in_axes=(0, None, 0))

    @jax.jit
    def train_epoch(state, data, key, weights=None):
        data = dict(data)
        pairs = data.pop("pairs", None)  # executed-counterfactual pairs: their own minibatches
        perm = jax.random.permutation(key, data["a"].shape[0])[: n_batches * bs].reshape(n_batches, bs)
        if pairs is not None:
            n_pairs = pairs["d"].shape[0]
            pick = jax.random.randint(jax.random.fold_in(key, 1), (n_batches, min(bs, n_pairs)), 0, n_pairs)
        else:
            pick = jnp.zeros((n_batches, 0), jnp.int32)

        def body(state, xs):
            idx, pidx = xs
            batch = jax.tree_util.tree_map(lambda v: shard(v[idx]), data)
            if pairs is not None:
                batch["pair"] = jax.tree_util.tree_map(lambda v: v[pidx], pairs)
            if k == 1:
                return member_step(state, batch)
            return step_all(state, batch, shard(weights[:, idx], P(None, "data")))

        state, losses = jax.lax.scan(body, state, (perm, pick))
        return state, jnp.mean(losses, axis=0)

    return train_epoch


def make_eval_losses(graphdef, graphdef_eval, cfg: TrainConfig, cost_weight: float, k: int = 1) -> Callable:
    """Jitted ``(state, data) -> ((K,) validation MSE, eval-mode params)`` for every member."""
    def one(s, data):
        model, _ = nnx.merge(graphdef, s)
        params = nnx.state(model)
        return estimator_loss(nnx.merge(graphdef_eval, params), data, cfg, cost_weight)[1], params

    if k == 1:
        return jax.jit(lambda s, data: (lambda out: (out[0][None], out[1]))(one(s, data)))
    return jax.jit(jax.vmap(one, in_axes=(0, None)))


def subset(data: TrainingData, idx: np.ndarray, with_pairs: bool = False) -> dict:
    """The rows ``idx`` of ``data`` as the arrays one epoch reads; ``with_pairs``: plus the
    executed-counterfactual pairs whose two rows are both in ``idx`` (shared history, the two
    served models, the paired advantage label), when there are any."""
    out = {"x": data.features[idx], "a": data.model[idx], "ys": data.score_target[idx],
           "yc": data.cost_target[idx], "w": data.weight[idx]}
    if with_pairs and data.pairs is not None and len(data.pairs):
        inside = np.zeros(data.n, bool)
        inside[idx] = True
        rows = data.pairs[inside[data.pairs[:, 0]] & inside[data.pairs[:, 1]]]
        if len(rows):
            out["pairs"] = {"x": data.features[rows[:, 0]], "a": data.model[rows[:, 0]], "b": data.model[rows[:, 1]],
                            "d": np.asarray(paired_advantages(data.score_target, rows), np.float32)}
    return out


def _initial_state(ecfg: EstimatorConfig, attrs, tx, seed: int, k: int):
    """(graphdef, eval graphdef, state, epoch key): one member from ``seed`` as a single fit has
    always been seeded, or K members stacked from ``member_keys``."""
    if k == 1:
        model = make_estimator(ecfg, attrs, seed)
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        model.train()
        graphdef, state = nnx.split((model, optimizer))
        model.eval()
        graphdef_eval, _ = nnx.split(model)
        return graphdef, graphdef_eval, state, jax.random.PRNGKey(seed)
    attrs = jnp.asarray(attrs, jnp.float32)
    keys = member_keys(seed, k)
    template, template_opt = init_member(ecfg, attrs, tx, keys[0])
    graphdef, _ = nnx.split((template, template_opt))
    template.eval()
    graphdef_eval, _ = nnx.split(template)
    state = jax.vmap(lambda key: nnx.state(init_member(ecfg, attrs, tx, key)))(keys)
    return graphdef, graphdef_eval, state, keys[0]


def fit(data: TrainingData, pool: Pool, cfg: TrainConfig = TrainConfig(), k: int = 1, *, progress: bool = True,
        devices: list | None = None, estimator_overrides: dict | None = None, label: str = "train") -> TrainResult:
    """Train ``k`` estimators on ``data`` (one jitted epoch for all); validation split by episode;
    early stopping on the members' validation losses (each keeps its own best epoch).

    ``devices``: train data-parallel over these devices (default: all local devices if > 1).
    ``label`` names the fit on its progress bar.
    """
    if k < 1:
        raise ValueError(f"ensemble size must be >= 1, got {k}")
    devices = devices if devices is not None else jax.devices()
    mesh = Mesh(np.array(devices), ("data",)) if len(devices) > 1 else None
    if mesh is not None and cfg.batch_size % len(devices):
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {len(devices)} devices")

    raw_attrs, attr_names = model_attribute_matrix(pool)
    attrs, attr_mean, attr_std = normalise_attributes(raw_attrs)
    ecfg = EstimatorConfig(n_features=data.features.shape[1], n_models=len(pool), n_attributes=attrs.shape[1],
                           **(estimator_overrides or {}))
    train_idx, val_idx = split_by_episode(data, cfg.val_frac, cfg.seed)
    batch = effective_batch_size(len(train_idx), cfg.batch_size, len(devices))
    if batch != cfg.batch_size:
        log.info("%d training turns: batch size %d instead of %d (at least %d steps per epoch)",
                 len(train_idx), batch, cfg.batch_size, MIN_STEPS_PER_EPOCH)
        cfg = dataclasses.replace(cfg, batch_size=batch)
    train, val = subset(data, train_idx, with_pairs=cfg.pair_weight > 0), subset(data, val_idx)
    n_batches = len(train_idx) // cfg.batch_size
    tx = make_optimizer(cfg, n_batches * cfg.max_epochs)
    graphdef, graphdef_eval, state, key = _initial_state(ecfg, attrs, tx, cfg.seed, k)
    cost_weight = cfg.cost_weight if cfg.cost_weight is not None else default_cost_weight(train)
    train_epoch = make_train_epoch(graphdef, cfg, n_batches, mesh, cost_weight, k)
    eval_losses = make_eval_losses(graphdef, graphdef_eval, cfg, cost_weight, k)

    put = (lambda x: jax.device_put(x, NamedSharding(mesh, P()))) if mesh is not None else jnp.asarray
    train_dev = jax.tree_util.tree_map(put, train)
    val_dev = jax.tree_util.tree_map(put, val) if len(val_idx) else None
    state = jax.tree_util.tree_map(put, state)
    weights = None if k == 1 else put(bootstrap_weights(data, k, cfg.seed)[:, train_idx])
    baseline = per_model_mean_loss(train, val, len(pool), cost_weight) if len(val_idx) else float("nan")

    best, best_epoch, best_params, bad, history = np.full(k, np.inf), np.full(k, -1), None, 0, []
    t_start = time.perf_counter()
    bar = EpochBar(progress, cfg.max_epochs, label)
    try:
        for epoch in range(cfg.max_epochs):
            t0 = time.perf_counter()
            state, tl = train_epoch(state, train_dev, jax.random.fold_in(key, epoch), weights)
            tl = np.atleast_1d(np.asarray(tl))
            if val_dev is None and k == 1:  # no validation split: a single fit tracks its train loss
                vl, params = eval_losses(state, train_dev)
                vl = tl
            else:
                vl, params = eval_losses(state, val_dev if val_dev is not None else train_dev)
                vl = np.asarray(vl)
            better = vl < best - 1e-6
            if best_params is None or (k == 1 and better[0]):
                best_params = params
            elif better.any():
                best_params = select_members(jnp.asarray(better), params, best_params)
            best = np.where(better, vl, best)
            best_epoch = np.where(better, epoch, best_epoch)
            bad = 0 if better.any() else bad + 1
            row = {"epoch": epoch, "train_loss": float(tl.mean()), "val_loss": float(vl.mean())}
            if k > 1:
                row["member_val_loss"] = vl.tolist()
            history.append({**row, "seconds": time.perf_counter() - t0})
            bar.update(epoch, float(tl.mean()), float(vl.mean()), float(best.mean()))
            if bad >= cfg.patience:
                break
            if cfg.max_seconds is not None and time.perf_counter() - t_start > cfg.max_seconds:
                break
    finally:
        bar.close()
    best_params = jax.device_get(best_params)
    first = nnx.merge(graphdef_eval, best_params if k == 1 else jax.tree_util.tree_map(lambda x: x[0], best_params))
    first.eval()
    # throughput without the first epoch (it carries the jit compile) when there is more than one
    steady = history[1:] or history
    rate = n_batches * cfg.batch_size * k * len(steady) / max(sum(h["seconds"] for h in steady), 1e-9)
    ensemble = {} if k == 1 else {"members": best_params, "graphdef": graphdef_eval, "member_val_loss": best.tolist()}
    return TrainResult(first, history, int(np.median(best_epoch)), float(best.mean()), baseline, attr_mean, attr_std,
                       attr_names, rate, cost_weight, **ensemble)


__all__ = ["TrainConfig", "TrainResult", "fit", "make_train_epoch", "make_eval_losses", "subset"]
