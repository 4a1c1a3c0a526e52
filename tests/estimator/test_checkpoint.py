"""Tests for mtrouter_jax.estimator.checkpoint: exact round trips, refusal of mismatched or damaged checkpoints.

Integrity digests (every file damaged in every way, legacy checkpoints): tests/test_checkpoint_integrity.py.
"""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from testing.artifacts import simulated_episodes, trained_checkpoint
from mtrouter_jax.estimator.checkpoint import (CHECKPOINT_SCHEMA, CheckpointError, LoadedEstimator, _write_manifest,
                                     load_checkpoint, read_meta, save_checkpoint)
from mtrouter_jax.core.features import FEATURE_CODE_VERSION

# orbax/tensorstore leave unclosed handles behind when a damaged checkpoint fails to restore
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning",
                                        "ignore::ResourceWarning")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return trained_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def est(ckpt):
    return load_checkpoint(ckpt)


@pytest.fixture(scope="module")
def x(est):
    return np.random.default_rng(0).uniform(0.0, 1.0, (7, est.n_features)).astype(np.float32)


@pytest.fixture
def copy(ckpt, tmp_path):
    dst = tmp_path / "ck"
    shutil.copytree(ckpt, dst)
    return dst


def _leaves(model):
    """Every variable of ``model`` as numpy (PRNG keys as their raw key data)."""
    out = []
    for v in jax.tree_util.tree_leaves(nnx.state(model)):
        if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            v = jax.random.key_data(v)
        out.append(np.asarray(v))
    return out


def _edit_meta(path, fn):
    """Edit the metadata and re-seal the digests: a consistent checkpoint made by other code."""
    f = path / "meta" / "metadata"
    meta = json.loads(f.read_text())
    fn(meta)
    f.write_text(json.dumps(meta))
    _write_manifest(path, meta)


def test_save_load_round_trip_is_bit_identical(est, x, tmp_path):
    out = tmp_path / "again"
    save_checkpoint(out, est.model, est.meta)
    again = load_checkpoint(out)
    for a, b in zip(_leaves(est.model), _leaves(again.model), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    s1, c1 = est.predict(x)
    s2, c2 = again.predict(x)
    assert np.array_equal(s1, s2) and np.array_equal(c1, c2)
    assert s1.shape == c1.shape == (7, len(est.pool))
    # single-vector call agrees with the batch call
    s0, c0 = est.predict(x[0])
    assert np.array_equal(s0, s1[0]) and np.array_equal(c0, c1[0])


def test_loaded_equals_the_trained_model(tmp_path_factory, ckpt, x):
    """The estimator that was trained and the one restored from disk predict the same bits."""
    from mtrouter_jax.core.pool import default_pool
    from mtrouter_jax.estimator.train import TrainConfig
    from mtrouter_jax.jobs import train_checkpoint

    est, res = train_checkpoint(simulated_episodes(tmp_path_factory), default_pool(),
                                tmp_path_factory.mktemp("fresh") / "ck",
                                TrainConfig(max_epochs=2, patience=2, batch_size=64), progress=False)
    live = LoadedEstimator(res.model, est.meta, est.path)
    for a, b in zip(live.predict(x), est.predict(x)):
        assert np.array_equal(a, b)
    # training is deterministic, so the shared checkpoint (same data and config) holds the same bits
    for a, b in zip(load_checkpoint(ckpt).predict(x), est.predict(x)):
        assert np.array_equal(a, b)


_PREDICT = textwrap.dedent("""
    import sys
    import numpy as np
    from mtrouter_jax.estimator.checkpoint import load_checkpoint
    est = load_checkpoint(sys.argv[1])
    score, cost = est.predict(np.load(sys.argv[2]))
    np.save(sys.argv[3], score)
    np.save(sys.argv[4], cost)
""")


def test_predictions_identical_in_a_fresh_process(ckpt, est, x, tmp_path):
    np.save(tmp_path / "x.npy", x)
    outs = [tmp_path / "score.npy", tmp_path / "cost.npy"]
    proc = subprocess.run([sys.executable, "-c", _PREDICT, str(ckpt), str(tmp_path / "x.npy"), *map(str, outs)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    score, cost = est.predict(x)
    assert np.array_equal(np.load(outs[0]), score)
    assert np.array_equal(np.load(outs[1]), cost)


def test_read_meta(ckpt, est):
    meta = read_meta(ckpt)
    assert meta["schema"] == CHECKPOINT_SCHEMA and meta["feature_code_version"] == FEATURE_CODE_VERSION
    assert [m["name"] for m in meta["pool"]["model"]] == list(est.pool.names)
    assert meta["layout_blocks"] == [list(b) for b in est.layout.blocks]
    assert meta["data"]["n_episodes"] > 0 and len(meta["data"]["fingerprint"]) == 16
    assert meta["training"]["max_epochs"] == 2 and len(meta["training"]["history"]) >= 1
    assert meta["cost_scale"] > 0 and meta["cost_target"] == "future"


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(schema="mtrouter-ckpt/0"), "schema"),
    (lambda m: m.pop("schema"), "schema"),
    (lambda m: m.update(feature_code_version=FEATURE_CODE_VERSION + 1), "feature layout code version"),
    (lambda m: m["layout_blocks"][0].__setitem__(1, 99), "does not match"),
    (lambda m: m["layout"]["tools"].append("teleport"), "does not match"),
    (lambda m: m.pop("layout"), "feature layout"),
    (lambda m: m["estimator"].update(n_features=3), "could not restore"),
    (lambda m: m.pop("estimator"), "estimator config"),
], ids=["schema", "no-schema", "feature-code", "blocks", "layout-vocab", "no-layout", "arch", "no-arch"])
def test_mismatched_metadata_is_refused(copy, edit, message):
    _edit_meta(copy, edit)
    with pytest.raises(CheckpointError, match=message) as e:
        load_checkpoint(copy)
    assert str(copy) in str(e.value)


def _data_files(path):
    files = sorted((p for p in (path / "state").rglob("*") if p.is_file() and "/d/" in p.as_posix()),
                   key=lambda p: p.stat().st_size)
    assert files
    return files


def _truncate(path):
    for f in _data_files(path):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _nan_fill(path):
    f = _data_files(path)[-1]  # the largest array chunk: overwrite its middle with 0xFF (NaN as float32)
    b = bytearray(f.read_bytes())
    n = len(b)
    b[n // 4: 3 * n // 4] = b"\xff" * (3 * n // 4 - n // 4)
    f.write_bytes(bytes(b))


def _garble_metadata(path):
    f = path / "state" / "_METADATA"
    f.write_bytes(b"\x9a\x00garbage" + f.read_bytes()[10:])


@pytest.mark.parametrize("damage", [
    lambda p: shutil.rmtree(p / "state"),
    lambda p: shutil.rmtree(p / "state" / "ocdbt.process_0"),
    _truncate,
    _nan_fill,
    _garble_metadata,
    lambda p: (p / "state" / "manifest.ocdbt").write_bytes(b""),
    lambda p: (p / "meta" / "metadata").write_text("{not json"),
    lambda p: (p / "meta" / "metadata").unlink(),
    lambda p: ((p / "meta" / "metadata").write_text("[1]"), (p / "integrity.json").unlink()),
], ids=["no-state", "no-data", "truncated", "nan-filled", "garbled-metadata", "empty-manifest",
        "garbled-meta", "no-meta", "meta-not-an-object"])
def test_damaged_checkpoint_raises_checkpoint_error(copy, damage):
    damage(copy)
    with pytest.raises(CheckpointError):
        load_checkpoint(copy)
    gc.collect()  # orbax's abandoned restore coroutines warn when collected: let them do it here


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_meta(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an mtrouter checkpoint"):
        load_checkpoint(tmp_path / "empty")


def test_save_refuses_a_non_empty_directory(est, tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        save_checkpoint(tmp_path, est.model, est.meta)
    assert (tmp_path / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_save_refuses_non_finite_metadata(est, tmp_path):
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "ck", est.model, {**est.meta, "cost_scale": float("nan")})
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


def test_predict_rejects_wrong_feature_width(est):
    with pytest.raises(ValueError, match=f"expected {est.n_features} features"):
        est.predict(np.zeros((2, est.n_features + 1), np.float32))
    with pytest.raises(ValueError):
        est.predict(np.zeros(est.n_features - 1, np.float32))


def test_future_cost_checkpoint_adds_this_turns_cost(est, x):
    assert est.cost_target == "future"
    turn = np.full((7, len(est.pool)), 0.01, np.float32)
    s1, c1 = est.predict(x)
    s2, c2 = est.predict(x, turn_cost=turn)
    assert np.array_equal(s1, s2)
    np.testing.assert_allclose(c2, c1 + 0.01, rtol=1e-6, atol=1e-7)
