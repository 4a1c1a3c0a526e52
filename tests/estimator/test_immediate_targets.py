"""One-turn ("immediate") score targets: a turn's own gain minus its own penalty; they telescope to
the dense Monte-Carlo target of the first turn."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.estimator.dataset import TargetConfig, build_training_data
from mtrouter_jax.logs.records import Episode, Turn, TurnError

POOL = default_pool()


@st.composite
def episodes(draw):
    n = draw(st.integers(1, 4))
    out = []
    for i in range(n):
        T = draw(st.integers(1, 8))
        prog = draw(st.lists(st.integers(-100, 100), min_size=T, max_size=T))
        errs = draw(st.lists(st.booleans(), min_size=T, max_size=T))
        turns = tuple(Turn(draw(st.sampled_from(POOL.names)), 100, 0, 10, 0.001, "act",
                           TurnError("invalid_action", "medium") if e else None, None, progress=float(p))
                      for p, e in zip(prog, errs))
        out.append(Episode(f"e{i}", "t", float(prog[-1]), None, POOL.names, turns, (-100.0, 100.0), "test",
                           {"initial_score": draw(st.integers(-100, 100))}))
    return out


@settings(max_examples=30, deadline=None)
@given(episodes())
def test_immediate_targets_telescope_to_the_dense_target(eps):
    dense = build_training_data(eps, POOL, TargetConfig(dense_progress=True))
    imm = build_training_data(eps, POOL, TargetConfig(immediate=True))
    for e in range(len(eps)):
        rows = np.flatnonzero(imm.episode == e)
        # the sum of what each turn did is the score gained over the whole episode, penalties included
        np.testing.assert_allclose(imm.score_target[rows].sum(), dense.score_target[rows[0]], atol=1e-5)


def test_an_error_free_turn_scores_its_own_progress():
    turns = tuple(Turn("gpt-5", 100, 0, 10, 0.001, "act", None, None, progress=p) for p in (0.0, 20.0, 20.0, -100.0))
    ep = Episode("e", "t", -100.0, None, POOL.names, turns, (-100.0, 100.0), "test", {"initial_score": 0})
    d = build_training_data([ep], POOL, TargetConfig(immediate=True))
    np.testing.assert_allclose(d.score_target, [0.0, 0.1, 0.0, -0.6], atol=1e-6)  # a fall to -100 from 20
