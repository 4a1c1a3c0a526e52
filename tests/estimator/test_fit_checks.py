"""A diverged fit writes no checkpoint; a fit no better than the baseline says so."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from testing.artifacts import simulated_episodes

from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.estimator.checkpoint import CheckpointError
from mtrouter_jax.estimator.train import TrainConfig
from mtrouter_jax.jobs import TrainingQualityWarning, train_checkpoint


def test_huge_scores_fail_before_a_checkpoint_is_written(tmp_path_factory, tmp_path):
    eps = [dataclasses.replace(e, score=1e300, score_range=None) for e in simulated_episodes(tmp_path_factory)[:32]]
    out = tmp_path / "ckpt"
    with pytest.raises(CheckpointError, match="diverged.*no checkpoint was written"):
        train_checkpoint(eps, default_pool(), out, TrainConfig(max_epochs=2, batch_size=64), progress=False)
    assert not out.exists()


def test_a_fit_below_the_baseline_warns(tmp_path_factory, tmp_path):
    rng = np.random.default_rng(0)  # outcomes that no history predicts: noise around one mean
    eps = [dataclasses.replace(e, score=float(rng.uniform())) for e in simulated_episodes(tmp_path_factory)[:32]]
    with pytest.warns(TrainingQualityWarning, match="no better than predicting each model's mean"):
        train_checkpoint(eps, default_pool(), tmp_path / "ck", TrainConfig(max_epochs=1, batch_size=64,
                                                                          learning_rate=1e-6), progress=False)
