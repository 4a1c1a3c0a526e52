"""Tests for mtrouter_jax.estimator.train: overfitting, reproducibility, baseline, data parallelism."""

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

from testing.artifacts import simulated_episodes
from mtrouter_jax.estimator.dataset import build_training_data
from mtrouter_jax.estimator.train import TrainConfig, fit

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


def test_small_logs_shrink_the_batch_and_too_few_turns_are_refused():
    from mtrouter_jax.estimator.optim import MIN_STEPS_PER_EPOCH, effective_batch_size

    assert effective_batch_size(100_000, 1024) == 1024
    assert effective_batch_size(1000, 1024) == 64 and 1000 // 64 >= MIN_STEPS_PER_EPOCH
    assert effective_batch_size(100, 1024) == 8  # never below 8 per device
    assert effective_batch_size(1000, 1024, n_devices=3) % 3 == 0
    with pytest.raises(ValueError, match="training turns"):
        effective_batch_size(5, 1024)


_MULTI_DEVICE = textwrap.dedent("""
    import json, pickle, sys
    import jax
    import numpy as np
    from flax import nnx
    cache = sys.argv[2]
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    from mtrouter_jax.core.pool import default_pool
    from mtrouter_jax.estimator.train import TrainConfig, fit
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


def test_fitted_q_refits_on_bootstrapped_targets(data, pool):
    from mtrouter_jax.estimator.bootstrap import fit_bootstrapped

    cfg = TrainConfig(max_epochs=1, patience=1, batch_size=64, seed=5)
    mc_before = data.score_target.copy()
    res, log = fit_bootstrapped(data, pool, cfg, n_steps=3, iterations=2, progress=False)
    assert [f["iteration"] for f in log] == [0, 1, 2]
    assert log[0]["targets"] == "monte-carlo" and log[2]["targets"] == "3-step bootstrapped"
    assert all(np.isfinite(f["val_loss"]) for f in log)
    assert np.isfinite(log[1]["mean_target_shift"]) and log[1]["mean_target_shift"] != 0.0
    np.testing.assert_array_equal(data.score_target, mc_before)  # the caller's data is left as it was


def test_an_ensemble_last_on_a_one_member_chain(data, pool):
    """``target_ensemble=1``: the target-making fits are the one-member chain's, only the last fit
    has ``ensemble`` members."""
    from mtrouter_jax.estimator.bootstrap import fit_bootstrapped

    cfg = TrainConfig(max_epochs=1, patience=1, batch_size=64, seed=5)
    one, log_one = fit_bootstrapped(data, pool, cfg, n_steps=3, iterations=1, progress=False)
    two, log_two = fit_bootstrapped(data, pool, cfg, n_steps=3, iterations=1, progress=False, ensemble=2,
                                    target_ensemble=1)
    assert [f["members"] for f in log_one] == [1, 1] and [f["members"] for f in log_two] == [1, 2]
    assert one.k == 1 and two.k == 2
    # the same first fit, so the same bootstrapped targets for the last one
    assert log_two[0]["val_loss"] == log_one[0]["val_loss"]
    assert log_two[1]["mean_target_shift"] == log_one[1]["mean_target_shift"]
    with pytest.raises(ValueError, match="target_ensemble"):
        fit_bootstrapped(data, pool, cfg, n_steps=3, iterations=1, progress=False, target_ensemble=0)


def test_snapshot_pools_the_last_fits_members(data, pool, tmp_path_factory, capsys):
    """``snapshot=2``: the same chain of fits, and the checkpoint's ensemble is the last fit (member
    0, the module) and the one before it; it saves, verifies and predicts their mean."""
    from mtrouter_jax.estimator.bootstrap import fit_bootstrapped
    from mtrouter_jax.estimator.dataset import TargetConfig
    from mtrouter_jax.estimator.members import member_predictions, pool_fits
    from mtrouter_jax.jobs import train_checkpoint

    cfg = TrainConfig(max_epochs=1, patience=1, batch_size=64, seed=5)
    last, log_last = fit_bootstrapped(data, pool, cfg, n_steps=3, iterations=1, progress=False)
    snap, log_snap = fit_bootstrapped(data, pool, cfg, n_steps=3, iterations=1, progress=False, snapshot=2)
    first, _ = fit_bootstrapped(data, pool, cfg, n_steps=3, iterations=0, progress=False)
    assert last.k == 1 and snap.k == 2 and log_snap[-1]["snapshot_of"] == [0, 1]
    assert "snapshot_of" not in log_last[-1] and log_snap[-1]["val_loss"] == log_last[-1]["val_loss"]
    x = data.features[:7]
    pred = np.asarray(member_predictions(snap.graphdef, snap.members, x))[..., 0]  # (2, 7, M)
    np.testing.assert_array_equal(pred[0], np.asarray(last.model.score_all(x))[..., 0])
    np.testing.assert_array_equal(pred[1], np.asarray(first.model.score_all(x))[..., 0])
    # an ensemble fit pools with a single one: K + 1 members, the later fit's first
    ens = fit(data, pool, cfg, k=2, progress=False)
    assert pool_fits([last, ens]).k == 3 and len(pool_fits([last, ens]).member_val_loss) == 3
    with pytest.raises(ValueError, match="snapshot"):
        fit_bootstrapped(data, pool, cfg, n_steps=3, iterations=1, progress=False, snapshot=0)
    # the pooled ensemble is saved, verified and reloaded as any ensemble checkpoint
    ck = tmp_path_factory.mktemp("snap") / "ck"
    est, res = train_checkpoint(simulated_episodes(tmp_path_factory), pool, ck, cfg,
                                TargetConfig(bootstrap_steps=3, bootstrap_iterations=1), progress=False, snapshot=2)
    assert est.k == 2 and est.meta["targets"]["fits"][-1]["snapshot_of"] == [0, 1]
    from mtrouter_jax.cli import main

    capsys.readouterr()
    assert main(["inspect", str(ck)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ensemble_size"] == 2 and info["ensemble_of_fits"] == [0, 1]
    both = np.asarray(member_predictions(res.graphdef, res.members, x))[..., 0]
    np.testing.assert_allclose(np.asarray(est.predict(x))[0], both.mean(0), rtol=1e-5, atol=1e-6)


def test_training_data_carries_budget_and_worst_case_turn_costs(data, pool):
    assert data.turn_cost_hi.shape == (data.n, len(pool))
    assert np.all(data.turn_cost_hi > 0)
    first = np.r_[True, data.episode[1:] != data.episode[:-1]]
    # before an episode's first turn nothing is spent: remaining = budget (inf when none)
    assert np.all(data.remaining_budget[first] > 0)
    finite = np.isfinite(data.remaining_budget)
    same_ep = ~first[1:] & finite[1:]
    left = np.where(finite, data.remaining_budget, 0.0)
    assert same_ep.any() and np.all(np.diff(left)[same_ep] <= 1e-7)  # spending only goes down
