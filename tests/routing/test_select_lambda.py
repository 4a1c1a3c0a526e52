"""routing.meta.select_lambda: the one λ-calibration rule of the simulator sweep and eval scienceworld."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrouter_jax.routing.meta import select_lambda

scores = st.lists(st.floats(-100, 100, allow_nan=False), min_size=2, max_size=40)
grids = st.lists(st.sampled_from([0.0, 0.02, 0.1, 0.4, 1.5]), min_size=1, max_size=5, unique=True)


@settings(max_examples=100, deadline=None)
@given(grids, scores)
def test_equal_scores_keep_the_smallest_lambda(grid, s):
    assert select_lambda({lam: dict(enumerate(s)) for lam in grid}) == min(grid)


@settings(max_examples=100, deadline=None)
@given(grids, scores, st.floats(0.5, 50))
def test_a_lambda_better_on_every_episode_is_chosen(grid, s, gain):
    # one λ beats every other by a constant on every episode: the paired CI has zero width
    win = max(grid)
    table = {lam: {i: v + (gain if lam == win else 0.0) for i, v in enumerate(s)} for lam in grid}
    assert select_lambda(table) == win


def test_a_noisy_lead_does_not_move_off_the_smallest_lambda():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 30, 64)
    noise = rng.normal(0, 30, 64)
    noise -= noise.mean() - 1.0  # mean lead +1 point, paired spread ~30: far inside the 95 % interval
    chosen = select_lambda({0.0: dict(enumerate(base)), 0.2: dict(enumerate(base + noise))})
    assert chosen == 0.0


def test_pairs_by_episode_key_not_position():
    # the same episodes in another order: the lead of 0.5 is exact on every pair
    a = {f"e{i}": float(i) for i in range(10)}
    b = {f"e{i}": float(i) + 0.5 for i in reversed(range(10))}
    assert select_lambda({0.0: a, 0.1: b}) == 0.1


def test_no_lambda_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        select_lambda({})
