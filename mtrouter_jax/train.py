"""Training the outcome estimator: a jit-compiled pure epoch (lax.scan over minibatches), a host
loop with validation split by episode and early stopping, optional data parallelism over devices.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mtrouter_jax.dataset import TrainingData, split_by_episode
from mtrouter_jax.model import (EstimatorConfig, OutcomeEstimator, make_estimator, model_attribute_matrix,
                                normalise_attributes)
from mtrouter_jax.policy import budget_allowed
from mtrouter_jax.pool import Pool
from mtrouter_jax.targets import bootstrapped_score_targets, greedy_state_values, nstep_successors

log = logging.getLogger("mtrouter_jax.train")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (paper defaults except batch size, raised for CPU throughput)."""

    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-5
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    batch_size: int = 256
    max_epochs: int = 100
    patience: int = 3
    val_frac: float = 0.1
    l2_residual: float = 1e-4  # L2 on the per-model residual embeddings
    # weight of the cost head's MSE; None = var(score target) / var(cost target), so neither head's
    # scale dominates the shared trunk (cost targets vary ~10x more than scores)
    cost_weight: float | None = None
    seed: int = 0
    max_seconds: float | None = None  # stop early (best weights kept) after this much wall time


@dataclasses.dataclass
class TrainResult:
    model: OutcomeEstimator
    history: list[dict]  # per epoch: train_loss, val_loss, seconds
    best_epoch: int
    val_loss: float
    baseline_val_loss: float  # per-model-mean predictor on the same validation split
    attr_mean: np.ndarray
    attr_std: np.ndarray
    attr_names: list[str]
    turns_per_second: float  # steady-state (first epoch excluded when possible)
    cost_weight: float


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
    return mse + cfg.l2_residual * jnp.sum(model.residual[...] ** 2), mse


def make_train_epoch(graphdef, cfg: TrainConfig, n_batches: int, mesh: Mesh | None, cost_weight: float) -> Callable:
    """A jit-compiled pure function: (state, data, key) -> (state, mean train loss) for one epoch."""
    bs = cfg.batch_size

    def shard(x):
        # data parallel: each device gets a slice of the minibatch; params stay replicated
        return x if mesh is None else jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P("data")))

    @jax.jit
    def train_epoch(state, data, key):
        perm = jax.random.permutation(key, data["a"].shape[0])[: n_batches * bs].reshape(n_batches, bs)

        def body(state, idx):
            model, opt = nnx.merge(graphdef, state)
            batch = jax.tree_util.tree_map(lambda v: shard(v[idx]), data)
            (_, mse), grads = nnx.value_and_grad(estimator_loss, has_aux=True)(model, batch, cfg, cost_weight)
            opt.update(model, grads)
            return nnx.state((model, opt)), mse

        state, losses = jax.lax.scan(body, state, perm)
        return state, jnp.mean(losses)

    return train_epoch


def make_eval_loss(graphdef_eval, cfg: TrainConfig, cost_weight: float) -> Callable:
    @jax.jit
    def eval_loss(params, data):
        model = nnx.merge(graphdef_eval, params)
        return estimator_loss(model, data, cfg, cost_weight)[1]

    return eval_loss


def _subset(data: TrainingData, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {"x": data.features[idx], "a": data.model[idx], "ys": data.score_target[idx],
            "yc": data.cost_target[idx], "w": data.weight[idx]}


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


MIN_STEPS_PER_EPOCH = 8  # small logs (a few hundred episodes) still get real optimisation steps


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


def fit(data: TrainingData, pool: Pool, cfg: TrainConfig = TrainConfig(), *, progress: bool = True,
        devices: list | None = None, estimator_overrides: dict | None = None) -> TrainResult:
    """Train an estimator on ``data``; validation split by episode; early stopping on val loss.

    ``devices``: train data-parallel over these devices (default: all local devices if > 1).
    """
    devices = devices if devices is not None else jax.devices()
    mesh = Mesh(np.array(devices), ("data",)) if len(devices) > 1 else None
    if mesh is not None and cfg.batch_size % len(devices):
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {len(devices)} devices")

    raw_attrs, attr_names = model_attribute_matrix(pool)
    attrs, attr_mean, attr_std = normalise_attributes(raw_attrs)
    ecfg = EstimatorConfig(n_features=data.features.shape[1], n_models=len(pool), n_attributes=attrs.shape[1],
                           **(estimator_overrides or {}))
    model = make_estimator(ecfg, attrs, cfg.seed)

    train_idx, val_idx = split_by_episode(data, cfg.val_frac, cfg.seed)
    batch = effective_batch_size(len(train_idx), cfg.batch_size, len(devices))
    if batch != cfg.batch_size:
        log.info("%d training turns: batch size %d instead of %d (at least %d steps per epoch)",
                 len(train_idx), batch, cfg.batch_size, MIN_STEPS_PER_EPOCH)
        cfg = dataclasses.replace(cfg, batch_size=batch)
    train, val = _subset(data, train_idx), _subset(data, val_idx)
    n_batches = len(train_idx) // cfg.batch_size
    tx = make_optimizer(cfg, n_batches * cfg.max_epochs)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    model.train()
    graphdef, state = nnx.split((model, optimizer))
    model.eval()
    graphdef_eval, _ = nnx.split(model)
    model.train()
    cost_weight = cfg.cost_weight
    if cost_weight is None:
        cost_weight = float(np.var(train["ys"]) / max(np.var(train["yc"]), 1e-12))
    train_epoch = make_train_epoch(graphdef, cfg, n_batches, mesh, cost_weight)
    eval_loss = make_eval_loss(graphdef_eval, cfg, cost_weight)

    put = (lambda x: jax.device_put(x, NamedSharding(mesh, P()))) if mesh is not None else jnp.asarray
    train_dev = jax.tree_util.tree_map(put, train)
    val_dev = jax.tree_util.tree_map(put, val) if len(val_idx) else None
    state = jax.tree_util.tree_map(put, state)
    baseline = per_model_mean_loss(train, val, len(pool), cost_weight) if len(val_idx) else float("nan")

    key = jax.random.PRNGKey(cfg.seed)
    history, best, best_epoch, best_state, bad = [], float("inf"), -1, None, 0
    t_start = time.perf_counter()
    bar = _progress(progress, cfg.max_epochs)
    try:
        for epoch in range(cfg.max_epochs):
            t0 = time.perf_counter()
            state, tl = train_epoch(state, train_dev, jax.random.fold_in(key, epoch))
            tl = float(tl)
            params = _model_params(graphdef, state)
            vl = float(eval_loss(params, val_dev)) if val_dev is not None else tl
            history.append({"epoch": epoch, "train_loss": tl, "val_loss": vl, "seconds": time.perf_counter() - t0})
            if vl < best - 1e-6:
                best, best_epoch, bad = vl, epoch, 0
                best_state = jax.device_get(params)
            else:
                bad += 1
            bar.update(epoch, tl, vl, best)
            if bad >= cfg.patience:
                break
            if cfg.max_seconds is not None and time.perf_counter() - t_start > cfg.max_seconds:
                break
    finally:
        bar.close()
    final = nnx.merge(graphdef_eval, best_state)
    final.eval()
    # throughput without the first epoch (it carries the jit compile) when there is more than one
    steady = history[1:] or history
    per_epoch = n_batches * cfg.batch_size
    rate = per_epoch * len(steady) / max(sum(h["seconds"] for h in steady), 1e-9) if steady else 0.0
    return TrainResult(final, history, best_epoch, best, baseline, attr_mean, attr_std, attr_names,
                       rate, cost_weight)


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


AGGREGATES = ("mean", "min", "lcb")  # how an ensemble's members make one bootstrap value


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
    from mtrouter_jax.ensemble import member_predictions

    return jax.jit(lambda members, x: member_predictions(graphdef, members, x)[..., 0])


def fit_bootstrapped(data: TrainingData, pool: Pool, cfg: TrainConfig = TrainConfig(), *, n_steps: int,
                     iterations: int, progress: bool = True, devices: list | None = None, ensemble: int = 1,
                     aggregate: str = "mean") -> tuple[TrainResult, list[dict]]:
    """Fitted-Q training: fit on the Monte-Carlo AEC targets, then ``iterations`` times refit on
    n-step targets bootstrapped from the previous fit (targets.bootstrapped_score_targets).

    The bootstrap value of a state is the previous fit's best score over the models the router's
    budget rule allows there (``policy.budget_allowed``, paced) — its own greedy choice at
    lambda = 0; with an ensemble (``ensemble > 1``) the members' predictions are aggregated by
    ``aggregate`` first (``ensemble_scores``). The cost head keeps its Monte-Carlo target. Returns
    the last fit and one summary dict per fit.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if data.turn_cost_hi is None or data.remaining_budget is None:
        raise ValueError("bootstrapping needs TrainingData.turn_cost_hi and remaining_budget "
                         "(build it with dataset.build_training_data)")

    def one_fit(d):
        if ensemble > 1:
            from mtrouter_jax.ensemble import fit_ensemble

            return fit_ensemble(d, pool, cfg, ensemble, progress=progress)
        return fit(d, pool, cfg, progress=progress, devices=devices)

    mc = np.asarray(data.score_target, np.float32)
    succ, valid = (np.asarray(a) for a in nstep_successors(data.episode, n_steps))
    first = np.r_[True, data.episode[1:] != data.episode[:-1]]
    prev = np.where(first, -1, np.r_[-1, data.model[:-1]])  # model of the turn before each row
    allowed = np.asarray(budget_allowed(data.turn_cost_hi, data.remaining_budget[:, None], data.pace_cost, prev))
    result = one_fit(data)
    log = [{"iteration": 0, "targets": "monte-carlo", "val_loss": result.val_loss,
            "baseline_val_loss": result.baseline_val_loss, "best_epoch": result.best_epoch}]
    for it in range(1, iterations + 1):
        values = greedy_state_values(ensemble_scores(result, data.features, aggregate), allowed)
        targets = np.asarray(bootstrapped_score_targets(mc, succ, valid, values), np.float32)
        result = one_fit(dataclasses.replace(data, score_target=targets))
        log.append({"iteration": it, "targets": f"{n_steps}-step bootstrapped", "val_loss": result.val_loss,
                    "baseline_val_loss": result.baseline_val_loss, "best_epoch": result.best_epoch,
                    "mean_target_shift": float(np.mean(targets - mc)), "aggregate": aggregate})
    return result, log


def _model_params(graphdef, state):
    model, _ = nnx.merge(graphdef, state)
    return nnx.state(model)


class _progress:
    """rich progress bar with train/val loss (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int):
        self.p = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.p = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("loss {task.fields[tl]:.4f}  val {task.fields[vl]:.4f}  best {task.fields[best]:.4f}"),
                              TimeElapsedColumn(), transient=False)
            self.task = self.p.add_task("epochs", total=total, tl=float("nan"), vl=float("nan"), best=float("nan"))
            self.p.start()

    def update(self, epoch, tl, vl, best):
        if self.p:
            self.p.update(self.task, completed=epoch + 1, tl=tl, vl=vl, best=best)

    def close(self):
        if self.p:
            self.p.stop()
