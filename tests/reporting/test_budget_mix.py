"""``reporting.points.budget_mix``: the two budgets whose per-episode mix spends a target cost."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from mtrouter_jax.reporting.points import budget_mix

budgets = hs.dictionaries(hs.floats(1e-4, 1.0), hs.floats(0.0, 1.0), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(costs=budgets, target=hs.floats(0.0, 1.0))
def test_the_mix_spends_the_target_or_less(costs, target):
    mix = budget_mix(costs, target)
    if all(c > target for c in costs.values()):
        assert mix is None
        return
    lo, hi, w = mix
    assert costs[lo] <= target and 0.0 <= w <= 1.0
    assert all(costs[b] > target for b in costs if b > lo)  # lo: the largest budget within the target
    if hi == lo:
        assert w == 1.0 and not any(b > lo for b in costs)
    else:
        assert hi == min(b for b in costs if b > lo)
        assert w * costs[lo] + (1 - w) * costs[hi] == pytest.approx(target, abs=1e-12)


def test_a_worked_example():
    # $0.0026 at the cap, $0.006 at a budget of $0.005, $0.008 at $0.01: a third of $0.005's cost
    # above the target of $0.005 is bought back by a third of the episodes at the cap
    assert budget_mix({0.0026: 0.0026, 0.005: 0.006, 0.01: 0.008}, 0.005) == pytest.approx((0.0026, 0.005, 1 / 3.4))
    assert budget_mix({0.01: 0.004}, 0.005) == (0.01, 0.01, 1.0)
