"""core.stats: the Student-t interval the reference candidates are bounded with."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrouter_jax.core.stats import Z95, ci95, t_ci95


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=60))
def test_the_t_interval_is_never_narrower_than_the_normal_one(xs):
    x = np.asarray(xs)
    assert t_ci95(x) >= ci95(x, ddof=1) - 1e-12
    assert t_ci95(x) >= 0.0


def test_known_values_and_small_samples():
    # n = 2: t(0.975, 1) = 12.706; mean of [0, 1], sample std 0.7071
    assert math.isclose(t_ci95([0.0, 1.0]), 12.7062047 * math.sqrt(0.5) / math.sqrt(2), rel_tol=1e-6)
    # n = 8 (the reference's min_episodes): ~ 1.21 x the normal interval on the same sample std
    x = np.arange(8.0)
    assert math.isclose(t_ci95(x) / ci95(x, ddof=1), 2.364624 / Z95, rel_tol=1e-5)
    # large samples: the two agree
    y = np.random.default_rng(0).normal(size=5000)
    assert math.isclose(t_ci95(y), ci95(y, ddof=1), rel_tol=2e-3)
    assert t_ci95([1.0]) == math.inf and t_ci95([], single=0.5) == 0.5
