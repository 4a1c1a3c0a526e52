"""Checkpoint integrity: every file of a checkpoint damaged in every way is refused with a precise
``CheckpointError``; arrays are checked against their digests; older checkpoints load with a warning."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings

import numpy as np
import pytest

from testing.artifacts import trained_checkpoint
from mtrouter_jax.estimator.checkpoint import (INTEGRITY_FILE, CheckpointError, CheckpointIntegrityWarning, _write_manifest,
                                     array_digest, load_checkpoint, read_meta, save_checkpoint, verify_files)
from mtrouter_jax.estimator.model import EstimatorConfig, make_estimator

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning",
                                        "ignore::ResourceWarning")


def _tiny(meta, seed):
    """A tiny estimator with the trained checkpoint's feature width, pool and attributes."""
    cfg = dataclasses.replace(EstimatorConfig(**meta["estimator"]), history_hidden=4, history_dim=4,
                              model_hidden=4, residual_dim=2, model_dim=4, joint_hidden=4)
    attrs = np.ones((cfg.n_models, cfg.n_attributes), np.float32)
    return make_estimator(cfg, attrs, seed), {**meta, "estimator": cfg.to_dict()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(path of a sealed tiny checkpoint, its predictions on x, x)."""
    meta = read_meta(trained_checkpoint(tmp_path_factory))
    path = save_checkpoint(tmp_path_factory.mktemp("tiny") / "ck", *_tiny(meta, 0))
    est = load_checkpoint(path)
    x = np.random.default_rng(0).uniform(0, 1, (3, est.n_features)).astype(np.float32)
    return path, est.predict(x), x


def _files(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def _flip(f):
    """XOR up to 64 bytes in the middle of the file."""
    b = bytearray(f.read_bytes())
    n = min(64, len(b))
    start = (len(b) - n) // 2
    b[start:start + n] = bytes(x ^ 0xFF for x in b[start:start + n])
    f.write_bytes(bytes(b))


def _truncate(f):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


DAMAGE = {"flip": _flip, "truncate": _truncate, "delete": lambda f: f.unlink()}


def test_manifest_covers_every_file_and_meta_every_array(tiny):
    path, _, _ = tiny
    doc = json.loads((path / INTEGRITY_FILE).read_text())
    assert sorted(doc["files"]) == [f for f in _files(path) if f != INTEGRITY_FILE]
    assert {"state/_METADATA", "meta/metadata", "_CHECKPOINT_METADATA", "state/manifest.ocdbt"} <= set(doc["files"])
    arrays = read_meta(path)["integrity"]["arrays"]
    assert {"hist1/kernel", "attributes", "drop/rngs/key"} <= set(arrays)
    assert arrays["hist1/kernel"]["shape"][1] == 4 and arrays["drop/rngs/key"]["dtype"].startswith("key<")
    assert verify_files(path) == doc


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_every_file_damaged_any_way_is_refused(tiny, tmp_path, how):
    """Each file in turn: flipped bytes, truncated or deleted -> CheckpointError naming it."""
    path, _, _ = tiny
    files = _files(path)
    assert len(files) >= 10
    for i, rel in enumerate(files):
        copy = tmp_path / f"c{i}"
        shutil.copytree(path, copy)
        DAMAGE[how](copy / rel)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(copy)
        msg = str(e.value)
        assert str(copy) in msg, msg
        if rel != INTEGRITY_FILE:
            assert rel in msg, (rel, msg)
            assert {"flip": "content altered: sha256", "truncate": "truncated:", "delete": "missing"}[how] in msg
        shutil.rmtree(copy)


def test_expected_and_got_are_named(tiny, tmp_path):
    path, _, _ = tiny
    copy = shutil.copytree(path, tmp_path / "c")
    want = json.loads((path / INTEGRITY_FILE).read_text())["files"]["meta/metadata"]
    _truncate(copy / "meta" / "metadata")
    with pytest.raises(CheckpointError, match=rf"meta/metadata: truncated: {want['size'] // 2} bytes, "
                                              rf"expected {want['size']}"):
        load_checkpoint(copy)


def test_deleted_manifest_of_a_sealed_checkpoint_is_refused(tiny, tmp_path):
    copy = shutil.copytree(tiny[0], tmp_path / "c")
    (copy / INTEGRITY_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{INTEGRITY_FILE} is missing"):
        load_checkpoint(copy)


def test_swapped_parameters_are_caught_by_the_array_digests(tiny, tmp_path_factory, tmp_path):
    """Parameters that orbax reads fine but that are not the ones saved (manifest re-sealed)."""
    path, _, _ = tiny
    meta = read_meta(path)
    other = save_checkpoint(tmp_path_factory.mktemp("other") / "ck", *_tiny(meta, 1))
    copy = shutil.copytree(path, tmp_path / "c")
    shutil.rmtree(copy / "state")
    shutil.copytree(other / "state", copy / "state")
    _write_manifest(copy, meta)
    with pytest.raises(CheckpointError, match=r"parameter array\(s\) differ from those saved:\n  array 'attr1/kernel': "
                                              r"sha256 \w{16}…, expected \w{16}…"):
        load_checkpoint(copy)


def test_edited_metadata_with_a_stale_manifest_is_refused(tiny, tmp_path):
    copy = shutil.copytree(tiny[0], tmp_path / "c")
    f = copy / "meta" / "metadata"
    f.write_text(f.read_text().replace('"cost_scale":', '"cost_scale": 0.0, "x":', 1))
    with pytest.raises(CheckpointError, match="meta/metadata: (grown|content altered)"):
        load_checkpoint(copy)


def test_checkpoint_without_digests_loads_with_a_warning(tiny, tmp_path):
    """A checkpoint saved before digests existed: no manifest, no integrity section."""
    path, (score, cost), x = tiny
    copy = shutil.copytree(path, tmp_path / "c")
    (copy / INTEGRITY_FILE).unlink()
    f = copy / "meta" / "metadata"
    meta = json.loads(f.read_text())
    del meta["integrity"]
    f.write_text(json.dumps(meta))
    with pytest.warns(CheckpointIntegrityWarning, match="cannot be verified"):
        est = load_checkpoint(copy)
    s, c = est.predict(x)
    assert np.array_equal(s, score) and np.array_equal(c, cost) and np.all(np.isfinite(s))
    # re-saving seals it
    again = save_checkpoint(tmp_path / "again", est.model, est.meta)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointIntegrityWarning)
        assert np.array_equal(load_checkpoint(again).predict(x)[0], score)


def test_damaged_manifest_structure(tiny, tmp_path):
    copy = shutil.copytree(tiny[0], tmp_path / "c")
    f = copy / INTEGRITY_FILE
    doc = json.loads(f.read_text())
    for bad in ({**doc, "files": []}, [1, 2], {**doc, "sha256": "0" * 64}):
        f.write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=f"{INTEGRITY_FILE}: (corrupted|integrity manifest damaged)"):
            load_checkpoint(copy)


def test_array_digest_covers_dtype_shape_and_bytes():
    a = np.arange(6, dtype=np.float32)
    d = array_digest(a)["sha256"]
    assert array_digest(a.reshape(2, 3))["sha256"] != d
    assert array_digest(a.view(np.int32))["sha256"] != d
    assert array_digest(a.copy())["sha256"] == d
    b = a.copy()
    b[3] = np.nan
    assert array_digest(b)["sha256"] != d
