"""Tests for mtrouter_jax.train: overfitting, reproducibility, baseline, data parallelism."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from _shared_artifacts import simulated_episodes
from mtrouter_jax.dataset import build_training_data
from mtrouter_jax.train import TrainConfig, fit

CFG = TrainConfig(max_epochs=3, patience=3, batch_size=64, seed=5)


@pytest.fixture(scope="module")
def data(tmp_path_factory, pool):
    return build_training_data(simulated_episodes(tmp_path_factory), pool)


@pytest.fixture(scope="module")
def two_fits(data, pool):
    return fit(data, pool, CFG, progress=False), fit(data, pool, CFG, progress=False)


def _params(model):
    return jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))


def test_overfits_a_tiny_batch(data, pool):
    n = 64
    tiny = dataclasses.replace(
        data, features=data.features[:n], model=data.model[:n], score_target=data.score_target[:n],
        cost_target=data.cost_target[:n], weight=data.weight[:n], episode=data.episode[:n],
        n_episodes=int(data.episode[n - 1]) + 1)
    cfg = TrainConfig(max_epochs=40, patience=1000, batch_size=n, val_frac=0.0, learning_rate=3e-3)
    res = fit(tiny, pool, cfg, progress=False, estimator_overrides={"dropout": 0.0})
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == 40 and np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses


def test_same_seed_gives_identical_params(two_fits):
    a, b = two_fits
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]
    for x, y in zip(_params(a.model), _params(b.model), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_validation_loss_beats_per_model_mean_baseline(two_fits):
    res = two_fits[0]
    assert len(res.history) == CFG.max_epochs
    assert np.isfinite(res.baseline_val_loss) and res.val_loss < res.baseline_val_loss
    assert res.val_loss == min(h["val_loss"] for h in res.history)
    assert res.history[res.best_epoch]["val_loss"] == res.val_loss
    assert res.cost_weight > 0 and res.turns_per_second > 0


def test_batch_larger_than_training_set_is_refused(data, pool):
    with pytest.raises(ValueError, match="training turns"):
        fit(data, pool, TrainConfig(batch_size=data.n + 1), progress=False)


_MULTI_DEVICE = textwrap.dedent("""
    import json, pickle, sys
    import jax
    import numpy as np
    from flax import nnx
    cache = sys.argv[2]
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    from mtrouter_jax.pool import default_pool
    from mtrouter_jax.train import TrainConfig, fit
    assert len(jax.devices()) == 4, jax.devices()
    data = pickle.load(open(sys.argv[1], "rb"))
    pool = default_pool()
    cfg = TrainConfig(**json.loads(sys.argv[3]))
    many = fit(data, pool, cfg, progress=False, devices=jax.devices())
    one = fit(data, pool, cfg, progress=False, devices=jax.devices()[:1])
    leaves = lambda r: [np.asarray(x) for x in jax.tree_util.tree_leaves(nnx.state(r.model, nnx.Param))]
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(many), leaves(one)))
    print("RESULT " + json.dumps({"val_many": [h["val_loss"] for h in many.history],
                                  "val_one": [h["val_loss"] for h in one.history], "max_param_diff": diff}))
""")


def test_data_parallel_over_four_devices_matches_one_device(data, tmp_path):
    pkl = tmp_path / "data.pkl"
    pkl.write_bytes(pickle.dumps(data))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    cache = jax.config.jax_compilation_cache_dir or ""
    cfg = json.dumps(dataclasses.asdict(CFG))  # the parent's config: its 1-device compile is cached
    proc = subprocess.run([sys.executable, "-c", _MULTI_DEVICE, str(pkl), cache, cfg], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    r = json.loads(line[len("RESULT "):])
    assert len(r["val_many"]) == len(r["val_one"]) == CFG.max_epochs
    np.testing.assert_allclose(r["val_many"], r["val_one"], rtol=1e-3)
    assert r["max_param_diff"] < 1e-3
