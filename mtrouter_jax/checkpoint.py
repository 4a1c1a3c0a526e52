"""Estimator checkpoints: orbax parameters + JSON metadata; restore on CPU with no training code.

A checkpoint directory holds ``state`` (the estimator's variables) and ``meta`` (schema version,
pool, feature layout, encoder config, normalisation constants, training config, data
fingerprint). Loading refuses mismatched schema/feature code and corrupted files with a clear
``CheckpointError`` instead of crashing the caller.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtrouter_jax.features import FEATURE_CODE_VERSION, FeatureLayout
from mtrouter_jax.model import EstimatorConfig, OutcomeEstimator, abstract_estimator
from mtrouter_jax.pool import Pool, pool_from_dict

CHECKPOINT_SCHEMA = "mtrouter-ckpt/1"


class CheckpointError(Exception):
    """The checkpoint cannot be used (missing, corrupted, or made by incompatible code)."""


def _ocp():
    import orbax.checkpoint as ocp  # imported lazily: slow import, only needed for save/load

    return ocp


def save_checkpoint(path: str | Path, model: OutcomeEstimator, meta: dict[str, Any]) -> Path:
    """Write ``model``'s variables and ``meta`` to a fresh directory ``path`` (synchronously)."""
    ocp = _ocp()
    path = Path(path).absolute()
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"checkpoint directory {path} exists and is not empty")
    meta = {**meta, "schema": CHECKPOINT_SCHEMA, "feature_code_version": FEATURE_CODE_VERSION}
    json.dumps(meta, allow_nan=False)  # fail before writing anything
    state = nnx.to_pure_dict(nnx.state(model))
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(path, ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(meta)))
    return path


class LoadedEstimator:
    """A restored estimator ready for routing: ``predict(features) -> (score, remaining_cost_usd)``."""

    def __init__(self, model: OutcomeEstimator, meta: dict[str, Any], path: Path):
        self.model = model
        self.meta = meta
        self.path = path
        self.layout = FeatureLayout.from_dict(meta["layout"])
        self.pool: Pool = pool_from_dict(meta["pool"], f"{path}:meta.pool")
        self.cost_scale = float(meta["cost_scale"])
        self.output_tokens_hi = np.asarray(meta["output_tokens_hi"], np.float32)
        self.output_tokens_mean = np.asarray(meta.get("output_tokens_mean", meta["output_tokens_hi"]), np.float32)
        # "future": the cost head excludes this turn, whose cost the caller computes from prices
        self.cost_target = meta.get("cost_target", "remaining")
        self.text_dim = int(meta.get("text_dim", 0))
        self.text_encoder_config = meta.get("text_encoder")
        self.graphdef, self.params = nnx.split(model)
        self._predict = _make_predict(self.graphdef)

    @property
    def n_features(self) -> int:
        return self.layout.n_features + self.text_dim

    def predict(self, features, turn_cost=None) -> tuple[np.ndarray, np.ndarray]:
        """features (F,) or (B, F) -> (score (..., M) normalised AEC score, remaining cost (..., M) USD).

        ``turn_cost`` (..., M) USD: expected cost of *this* turn per model. Checkpoints whose cost head
        predicts the cost after this turn (``cost_target == "future"``) need it to report the
        remaining cost including this turn; without it they return the future part only.
        """
        x = np.asarray(features, np.float32)
        single = x.ndim == 1
        if x.shape[-1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features (layout {self.layout.n_features} + text "
                             f"{self.text_dim}), got {x.shape[-1]}")
        out = np.asarray(self._predict(self.params, x[None] if single else x))
        score, cost = out[..., 0], out[..., 1] * self.cost_scale
        if self.cost_target == "future" and turn_cost is not None:
            cost = cost + np.asarray(turn_cost, np.float32)
        return (score[0], cost[0]) if single else (score, cost)


@functools.lru_cache(maxsize=16)
def _make_predict(graphdef):
    @jax.jit
    def predict(params, x):
        return nnx.merge(graphdef, params).score_all(x)

    return predict


def read_meta(path: str | Path) -> dict[str, Any]:
    """Checkpoint metadata only (cheap; no arrays restored)."""
    path = Path(path)
    f = path / "meta" / "metadata"
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not f.exists():
        raise CheckpointError(f"{path}: not an mtrouter checkpoint (missing meta/metadata)")
    try:
        return json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: corrupted metadata ({e})") from None


def check_compatible(meta: dict[str, Any], path: Path | str = "<checkpoint>") -> None:
    """Refuse checkpoints from another schema or feature code, with what differs and what to do."""
    if meta.get("schema") != CHECKPOINT_SCHEMA:
        raise CheckpointError(f"{path}: checkpoint schema {meta.get('schema')!r} is not supported by this "
                              f"mtrouter-jax (expects {CHECKPOINT_SCHEMA!r}); retrain with `mtrouter train`")
    if meta.get("feature_code_version") != FEATURE_CODE_VERSION:
        raise CheckpointError(f"{path}: feature layout code version {meta.get('feature_code_version')} differs "
                              f"from this code's {FEATURE_CODE_VERSION}; features would be misread — retrain")
    try:
        layout = FeatureLayout.from_dict(meta["layout"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: metadata has no valid feature layout ({e})") from None
    if [list(b) for b in layout.blocks] != [list(b) for b in meta.get("layout_blocks", [])]:
        raise CheckpointError(f"{path}: stored feature layout {meta.get('layout_blocks')} does not match the "
                              f"layout this code computes {layout.blocks}; retrain with this version")


def load_checkpoint(path: str | Path) -> LoadedEstimator:
    """Restore an estimator on CPU. Raises ``CheckpointError`` for anything unusable."""
    path = Path(path).absolute()
    meta = read_meta(path)
    check_compatible(meta, path)
    try:
        cfg = EstimatorConfig(**meta["estimator"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: metadata has no valid estimator config ({e})") from None
    ocp = _ocp()
    abstract = abstract_estimator(cfg)
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    target = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu),
                                    nnx.to_pure_dict(nnx.state(abstract)))
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            restored = ckptr.restore(path, ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        state = restored["state"]
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
        raise CheckpointError(f"{path}: could not restore parameters ({type(e).__name__}: {e})") from None
    graphdef, abstract_state = nnx.split(abstract)
    nnx.replace_by_pure_dict(abstract_state, state)
    leaves = jax.tree_util.tree_leaves(abstract_state)
    if any(not bool(jnp.all(jnp.isfinite(x))) for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)):
        raise CheckpointError(f"{path}: parameters contain NaN/inf (corrupted or diverged training)")
    model = nnx.merge(graphdef, abstract_state)
    model.eval()
    return LoadedEstimator(model, meta, path)
