"""Estimator checkpoints: orbax parameters + JSON metadata; restore on CPU with no training code.

A checkpoint directory holds ``state`` (the estimator's variables), ``meta`` (schema version,
pool, feature layout, encoder config, normalisation constants, training config, data
fingerprint, and an ``integrity`` section with a sha256 per parameter array) and
``integrity.json`` (written after orbax has committed: the sha256 and size of every file orbax
wrote and of the metadata). Loading verifies all of it and refuses damaged files, mismatched
schema/feature code and non-finite parameters with a ``CheckpointError`` naming what is wrong,
instead of crashing the caller or predicting NaN. Checkpoints written before the digests existed
still load, with a :class:`CheckpointIntegrityWarning`.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtrouter_jax.core.features import FEATURE_CODE_VERSION, FeatureLayout
from mtrouter_jax.estimator.model import EstimatorConfig, OutcomeEstimator, abstract_estimator
from mtrouter_jax.core.pool import Pool, pool_from_dict
from mtrouter_jax.estimator.integrity import (  # noqa: F401  (re-exported: one import for checkpoint users)
    INTEGRITY_FILE, INTEGRITY_SCHEMA, CheckpointError, CheckpointIntegrityWarning, _canonical, _file_sha256,
    _flat_arrays, _lines, _read_manifest, _sha256, _short, _verify_arrays, _write_manifest, array_digest,
    verify_files)

CHECKPOINT_SCHEMA = "mtrouter-ckpt/1"
def _ocp():
    import orbax.checkpoint as ocp  # imported lazily: slow import, only needed for save/load

    return ocp


def save_checkpoint(path: str | Path, model: OutcomeEstimator, meta: dict[str, Any], members: Any = None) -> Path:
    """Write ``model``'s variables (or, for an ensemble, ``members``: every member's params stacked
    along a leading axis) and ``meta`` to a fresh directory ``path`` (synchronously)."""
    ocp = _ocp()
    path = Path(path).absolute()
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"checkpoint directory {path} exists and is not empty")
    state = nnx.to_pure_dict(nnx.state(model) if members is None else members)
    k = 1 if members is None else int(jax.tree_util.tree_leaves(members)[0].shape[0])
    arrays = {name: array_digest(a) for name, a in _flat_arrays(state).items()}
    meta = {**meta, "schema": CHECKPOINT_SCHEMA, "feature_code_version": FEATURE_CODE_VERSION,
            "ensemble": {"k": k, "stacked": members is not None},
            "integrity": {"algorithm": "sha256", "arrays": arrays, "manifest": INTEGRITY_FILE}}
    # fail (NaN, non-JSON types) before writing anything; keep the key order, take the form read back
    meta = json.loads(json.dumps(meta, allow_nan=False))
    # Synchronous: orbax writes into "<path>.orbax-checkpoint-tmp*" and renames it to ``path`` on
    # commit, so once save() returns every file is final and can be digested.
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(path, ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(meta)))
    _write_manifest(path, meta)
    return path


def update_meta(path: str | Path, patch: dict[str, Any]) -> dict[str, Any]:
    """Merge ``patch`` into a checkpoint's metadata (top-level keys replaced) and re-seal its
    integrity manifest; the files are verified first, so a damaged checkpoint is never re-sealed."""
    path = Path(path).absolute()
    if verify_files(path) is None:
        raise CheckpointError(f"{path}: no integrity manifest; re-save the checkpoint before updating it")
    meta = read_meta(path)
    meta = json.loads(json.dumps({**meta, **patch}, allow_nan=False))
    f = path / "meta" / "metadata"
    fd, tmp = tempfile.mkstemp(dir=f.parent, prefix=".metadata.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(meta))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, f)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _write_manifest(path, meta)
    return meta


def write_lam_table(path: str | Path, env: str, table: dict) -> None:
    """Store a calibrated ``{budget (USD, None = uncapped): λ}`` table as the checkpoint's
    ``lam_tables[env]`` ("sim" from ``mtrouter sweep``, "scienceworld" from ``mtrouter eval``);
    the live router interpolates it per budget (``routers.lam_for_budget``)."""
    tables = dict(read_meta(path).get("lam_tables") or {})
    rows = sorted(table.items(), key=lambda kv: (kv[0] is None, kv[0] or 0.0))
    tables[env] = [{"budget": None if b is None else float(b), "lam": float(v)} for b, v in rows]
    update_meta(path, {"lam_tables": tables})


# ----------------------------------------------------------------------------- integrity

class LoadedEstimator:
    """A restored estimator ready for routing: ``predict(features) -> (score, remaining_cost_usd)``."""

    def __init__(self, model: OutcomeEstimator, meta: dict[str, Any], path: Path, members: Any = None):
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
        self.graphdef, params = nnx.split(model)
        # an ensemble keeps every member's params stacked on a leading axis (``k`` members)
        self.stacked = members is not None
        self.params = members if self.stacked else params
        self.k = int(jax.tree_util.tree_leaves(members)[0].shape[0]) if self.stacked else 1
        self._predict = _make_predict(self.graphdef, self.stacked)

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
        out = np.asarray(self._predict(self.params, x[None] if single else x)).mean(0)  # member mean
        score, cost = out[..., 0], out[..., 1] * self.cost_scale
        if self.cost_target == "future" and turn_cost is not None:
            cost = cost + np.asarray(turn_cost, np.float32)
        return (score[0], cost[0]) if single else (score, cost)


    def predict_members(self, features) -> np.ndarray:
        """Every member's raw outputs: (F,) -> (K, M, 2), (B, F) -> (K, B, M, 2) [score, cost / cost_scale]."""
        x = np.asarray(features, np.float32)
        out = np.asarray(self._predict(self.params, x[None] if x.ndim == 1 else x))
        return out[:, 0] if x.ndim == 1 else out


@functools.lru_cache(maxsize=16)
def _make_predict(graphdef, stacked: bool = False):
    """(params, x) -> (K, B, M, 2) member predictions (K = 1 for a single estimator)."""
    @jax.jit
    def predict(params, x):
        if stacked:
            return jax.vmap(lambda p: nnx.merge(graphdef, p).score_all(x))(params)
        return nnx.merge(graphdef, params).score_all(x)[None]

    return predict


def read_meta(path: str | Path) -> dict[str, Any]:
    """Checkpoint metadata only (cheap; no arrays restored, nothing verified)."""
    path = Path(path)
    f = path / "meta" / "metadata"
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not f.exists():
        raise CheckpointError(f"{path}: not an mtrouter checkpoint (missing meta/metadata)")
    try:
        meta = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: corrupted metadata ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{f}: corrupted metadata (expected a JSON object, got {type(meta).__name__})")
    return meta


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
    """Restore an estimator on CPU, verifying every file and array against the digests saved with it.

    Raises ``CheckpointError`` for anything unusable (missing, truncated or altered files, arrays
    that differ from those saved, incompatible code, NaN parameters). A checkpoint saved before
    digests existed loads with a :class:`CheckpointIntegrityWarning`.
    """
    path = Path(path).absolute()
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    manifest = verify_files(path)  # before orbax reads a byte: damaged files never reach it
    meta = read_meta(path)
    sealed = meta.get("integrity")
    if manifest is None and sealed is not None:
        raise CheckpointError(f"{path}: {INTEGRITY_FILE} is missing (the metadata says it was written); "
                              "the checkpoint cannot be verified")
    if manifest is not None and manifest.get("meta_sha256") != _sha256(_canonical(meta)):
        raise CheckpointError(f"{path}: metadata sha256 {_short(_sha256(_canonical(meta)))}, expected "
                              f"{_short(manifest.get('meta_sha256'))}")
    if manifest is None:
        warnings.warn(f"{path}: checkpoint has no integrity digests (saved by an older mtrouter-jax): its "
                      "files cannot be verified; re-save it with save_checkpoint to add them",
                      CheckpointIntegrityWarning, stacklevel=2)
    check_compatible(meta, path)
    try:
        cfg = EstimatorConfig(**meta["estimator"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: metadata has no valid estimator config ({e})") from None
    ocp = _ocp()
    abstract = abstract_estimator(cfg)
    ens = meta.get("ensemble") or {}
    stacked = bool(ens.get("stacked"))
    if stacked:
        from mtrouter_jax.estimator.members import abstract_members

        abstract_stack = abstract_members(cfg, int(ens["k"]))
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    target = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu),
                                    nnx.to_pure_dict(abstract_stack if stacked else nnx.state(abstract)))
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            restored = ckptr.restore(path, ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        state = restored["state"]
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
        raise CheckpointError(f"{path}: could not restore parameters ({type(e).__name__}: {e})") from None
    if sealed is not None:
        _verify_arrays(path, state, sealed.get("arrays") if isinstance(sealed, dict) else None)
    graphdef, abstract_state = nnx.split(abstract)
    members = None
    if stacked:
        members = jax.tree_util.tree_map(lambda x: x, abstract_stack)
        nnx.replace_by_pure_dict(members, state)
        state = jax.tree_util.tree_map(lambda x: x[0], state)  # member 0 as the module (config, layout)
    nnx.replace_by_pure_dict(abstract_state, state)
    leaves = jax.tree_util.tree_leaves(members if stacked else abstract_state)
    if any(not bool(jnp.all(jnp.isfinite(x))) for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)):
        raise CheckpointError(f"{path}: parameters contain NaN/inf (corrupted or diverged training)")
    model = nnx.merge(graphdef, abstract_state)
    model.eval()
    return LoadedEstimator(model, meta, path, members)
