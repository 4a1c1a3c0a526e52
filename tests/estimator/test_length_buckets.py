"""Big logs are built in length buckets (issue 18: one very long episode must not pad every other
to its length): the same rows and numbers as one padded grid, and every bucket within its bound."""

from __future__ import annotations

import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.estimator.dataset import TargetConfig, build_training_data
from mtrouter_jax.estimator.log_stats import length_buckets
from mtrouter_jax.logs.records import Episode, Turn, TurnError

POOL = default_pool()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=60), st.integers(1, 2000))
def test_buckets_partition_the_log_within_their_bound(lengths, cells):
    buckets = length_buckets(lengths, cells)
    assert sorted(np.concatenate(buckets).tolist()) == list(range(len(lengths)))
    for b in buckets:
        longest = max(lengths[i] for i in b)
        assert len(b) * longest <= cells or len(b) == 1
    if len(lengths) * max(lengths) <= cells:
        assert len(buckets) == 1 and buckets[0].tolist() == list(range(len(lengths)))


def _log(seed=0):
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(40):
        T = 400 if i == 7 else int(rng.integers(1, 12))
        turns = tuple(Turn(str(rng.choice(POOL.names)), int(rng.integers(50, 500)), 0, int(rng.integers(5, 90)),
                           float(rng.random() * 1e-3), str(rng.choice(["act", "explore"])),
                           TurnError("invalid_action", "low") if rng.random() < 0.2 else None, None,
                           progress=float(rng.integers(-100, 100))) for _ in range(T))
        meta = {"branch_of": "e3", "branch_turn": 1} if i == 5 else None
        if i == 5:  # a branch of e3: same first turn
            turns = (eps[3].turns[0], *turns[1:]) if len(turns) > 1 else (eps[3].turns[0], eps[3].turns[0])
        eps.append(Episode(f"e{i}", "t", float(rng.integers(-100, 100)), None, POOL.names, turns,
                           (-100.0, 100.0), "test", meta))
    return eps


def test_bucketed_build_gives_the_same_rows_and_targets():
    eps = _log()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = build_training_data(eps, POOL, TargetConfig(dense_progress=True))
        parts = build_training_data(eps, POOL, TargetConfig(dense_progress=True), max_padded_cells=800)
    assert one.n == parts.n == sum(len(e.turns) for e in eps) - 1  # the branch's replayed turn is dropped
    for f in ("features", "model", "weight", "episode", "turn_cost_hi", "remaining_budget", "pace_cost", "pairs",
              "group"):
        np.testing.assert_array_equal(getattr(one, f), getattr(parts, f), err_msg=f)
    for f in ("score_target", "cost_target"):  # suffix sums over another padded length: float32 rounding
        np.testing.assert_allclose(getattr(one, f), getattr(parts, f), atol=1e-6, err_msg=f)
    assert one.expected_steps == parts.expected_steps and one.fingerprint == parts.fingerprint
    np.testing.assert_array_equal(one.output_tokens_hi, parts.output_tokens_hi)
