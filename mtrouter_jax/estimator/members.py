"""Ensemble members: keys, initialisation under ``vmap``, bootstrap weights, stacked prediction.

Members differ by their initialisation seed and (for K > 1) a bootstrap resample of the training
*episodes* (Poisson(1) weights per episode, the online bootstrap), so their disagreement measures
how much the logs pin a prediction down. Parameters are stored stacked along a leading member axis.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtrouter_jax.estimator.config import TrainResult
from mtrouter_jax.estimator.dataset import TrainingData
from mtrouter_jax.estimator.model import EstimatorConfig, OutcomeEstimator


def member_keys(seed: int, k: int) -> jax.Array:
    """The (K,) member keys of an ensemble trained with ``seed``."""
    return jax.random.split(jax.random.PRNGKey(seed), k)


def init_member(ecfg: EstimatorConfig, attrs, tx, key):
    """One member's (model, optimizer) from a key (traceable: used under jax.vmap)."""
    k_params, k_drop = jax.random.split(key)
    model = OutcomeEstimator(ecfg, attrs, rngs=nnx.Rngs(params=k_params, dropout=k_drop))
    model.train()
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


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
def select_members(mask, new, old):
    """Per member: ``new`` where ``mask`` else ``old`` (RNG key leaves: always ``new``)."""
    def pick(n, o):
        if jax.dtypes.issubdtype(n.dtype, jax.dtypes.prng_key):
            return n
        return jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
    return jax.tree_util.tree_map(pick, new, old)


def pool_fits(results: list[TrainResult]) -> TrainResult:
    """One ensemble of every member of several fits of the same architecture (a snapshot ensemble
    of fitted-Q iterates: their spread is how far the bootstrap chain still moves a prediction, so
    the safe rule trusts a departure only where consecutive fits agree). The last fit gives the
    module, history and losses; the members are stacked last fit first."""
    if len(results) == 1:
        return results[0]
    last = results[-1]

    def stacked(r: TrainResult):
        if r.members is not None:
            return r.members
        return jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], nnx.state(r.model))

    members = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *[stacked(r) for r in reversed(results)])
    graphdef = last.graphdef if last.graphdef is not None else nnx.split(last.model)[0]
    losses = [v for r in reversed(results) for v in (r.member_val_loss or [r.val_loss])]
    return dataclasses.replace(last, members=jax.device_get(members), graphdef=graphdef, member_val_loss=losses)


def bootstrap_weights(data: TrainingData, k: int, seed: int) -> np.ndarray:
    """(K, N) per-turn weights: Poisson(1) counts per episode (all ones when k == 1)."""
    if k == 1:
        return np.ones((1, data.n), np.float32)
    rng = np.random.default_rng(seed + 7919)
    per_episode = rng.poisson(1.0, size=(k, data.n_episodes)).astype(np.float32)
    return per_episode[:, data.episode]


__all__ = ["member_keys", "init_member", "abstract_members", "member_predictions", "select_members",
           "pool_fits", "bootstrap_weights"]
