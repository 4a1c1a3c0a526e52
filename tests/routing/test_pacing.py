"""routing.pacing.affordable_fraction, the safe rule's fallback when the hard rule rules out the reference, and
paced departures."""

from __future__ import annotations

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrouter_jax.core.features import initial_summary
from mtrouter_jax.routing import policies as routing
from mtrouter_jax.routing.pacing import affordable_fraction, pace_costs

M, T, K = 3, 1, 5
STEPS = 40.0
PRICE = np.array([1e-6, 1e-7, 3e-8], np.float32)  # cached input USD/token: expensive, middle, cheap


def _learned(pacing=True):
    return routing.learned(np.full(T + 1, STEPS), PRICE, np.full(M, 1e-8), np.full(M, 100.0), lam=0.0,
                           switch_margin=0.0, pacing=pacing)


def _inputs(remaining, score):
    score = np.asarray(score, np.float32)
    return routing.turn_inputs(np.full(M, 1e-5), np.full(M, 5e-6), remaining, score=score,
                               member_score=np.tile(score, (K, 1)))


def _pace(context, turn):
    return np.asarray(pace_costs(np.full(M, 5e-6), context, turn, STEPS - turn - 1, PRICE, np.full(M, 1e-8),
                                 np.full(M, 100.0)))


_frac = jax.jit(affordable_fraction)
_choice = jax.jit(routing.safe_choice)


@settings(max_examples=60, deadline=None)
@given(st.floats(1e-6, 10.0), st.integers(0, 30), st.floats(10.0, 5000.0))
def test_the_fraction_is_what_the_budget_pays_of_the_pace(remaining, turn, context):
    s = initial_summary(0, context, remaining).replace(turn=np.int32(turn))
    frac = np.asarray(_frac(s, _inputs(remaining, [0.5] * M), _learned().params))
    np.testing.assert_allclose(frac, np.minimum(1.0, remaining / _pace(context, turn)), rtol=1e-4)
    assert ((0 <= frac) & (frac <= 1)).all()
    np.testing.assert_array_equal(np.asarray(_frac(s, _inputs(remaining, [0.5] * M), _learned(False).params)), 1.0)


def _inputs_worst(remaining, score, worst):
    score = np.asarray(score, np.float32)
    return routing.turn_inputs(np.asarray(worst, np.float32), np.full(M, 5e-6), remaining, score=score,
                               member_score=np.tile(score, (K, 1)))


def test_a_reference_the_hard_rule_rules_out_hands_over_by_discounted_value():
    """The reference (the expensive model) cannot finish the episode at its pace; the middle model
    pays for ~90 % of it and predicts far better than the cheap one, the only model that can finish.
    While the reference's next turn fits, it stays the reference (pacing binds departures, not the
    reference: its tier was priced along the logged histories). Once its worst-case turn no longer
    fits, the turn goes to the middle model by discounted value, not to the cheap model that can
    finish (which the paced mask alone would have left)."""
    pace = _pace(2000.0, 0)
    remaining = float(0.9 * pace[1])
    s = initial_summary(0, 2000.0, remaining)
    pol = routing.safe(_learned(), np.zeros((T + 1, 6), np.int32), np.full((T + 1, 6, M), 10.0), np.full(T + 1, True),
                       0.0, 1.0)
    inputs = _inputs(remaining, [0.95, 0.6, 0.2])
    frac = np.asarray(_frac(s, inputs, pol.params))
    assert frac[2] == 1.0 and 0.85 < frac[1] < 0.95 and frac[0] < 0.2
    choice, ref, _ = _choice(s, inputs, pol.params)
    assert int(ref) == 0 and int(choice) == 0  # paced out, but its next turn fits: the reference stays
    out = _inputs_worst(remaining, [0.95, 0.6, 0.2], [2 * remaining, 1e-5, 1e-5])
    choice, ref, _ = _choice(s, out, pol.params)
    assert int(ref) == 1 and int(choice) == 1
    rich = _inputs(float(2 * pace[0]), [0.95, 0.6, 0.2])
    assert int(_choice(initial_summary(0, 2000.0, float(2 * pace[0])), rich, pol.params)[1]) == 0


def test_departures_stay_paced():
    """A departure must pace: the reference (cheap) can finish, the expensive model predicts better
    and its next turn fits but it cannot finish at its pace, so the rule keeps the reference; with
    the budget to finish at its pace, it departs."""
    pace = _pace(2000.0, 0)
    pol = routing.safe(_learned(), np.full((T + 1, 6), 2, np.int32), np.full((T + 1, 6, M), 10.0),
                       np.full(T + 1, True), 0.0, 1.0)
    score = [0.95, 0.1, 0.2]
    member = np.stack([np.asarray(score, np.float32) + d for d in np.linspace(-0.01, 0.01, K)])
    def inp(remaining):
        return routing.turn_inputs(np.full(M, 1e-5), np.full(M, 5e-6), remaining, score=np.asarray(score, np.float32),
                                   member_score=member.astype(np.float32))
    short = float(0.5 * pace[0])
    assert int(_choice(initial_summary(0, 2000.0, short), inp(short), pol.params)[0]) == 2
    rich = float(2 * pace[0])
    assert int(_choice(initial_summary(0, 2000.0, rich), inp(rich), pol.params)[0]) == 0
