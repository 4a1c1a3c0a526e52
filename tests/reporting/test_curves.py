import math

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from mtrouter_jax.reporting.curves import aiq, first_cost_reaching, upper_convex_hull

PROPS = settings(max_examples=60, deadline=None)
points = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        hnp.arrays(np.float64, (n,), elements=st.floats(0, 100).map(lambda x: round(x, 1))),
        hnp.arrays(np.float64, (n,), elements=st.floats(-1, 1).map(lambda x: round(x, 2))),
    )
)


def test_single_point():
    hc, hs = upper_convex_hull([2.0], [0.4])
    np.testing.assert_array_equal(hc, [2.0])
    np.testing.assert_array_equal(hs, [0.4])
    assert aiq([2.0], [0.4]) == 0.0  # no width between c_min and max_cost
    assert aiq([2.0], [0.4], max_cost=4.0) == pytest.approx(0.4 * 2 / 4)


def test_dominated_and_interior_points_dropped():
    c = [1.0, 2.0, 3.0, 4.0, 2.5, 5.0, 1.0]
    s = [0.2, 0.6, 0.7, 0.9, 0.3, 0.5, 0.1]
    hc, hs = upper_convex_hull(c, s)
    # (3, 0.7) lies below the segment (2, 0.6)-(4, 0.9); (5, 0.5) is dearer and worse than (4, 0.9).
    np.testing.assert_array_equal(hc, [1.0, 2.0, 4.0])
    np.testing.assert_array_equal(hs, [0.2, 0.6, 0.9])


def test_collinear_and_flat_points():
    hc, hs = upper_convex_hull([0, 1, 2, 3, 4], [0, 0.5, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(hc, [0.0, 2.0])
    np.testing.assert_array_equal(hs, [0.0, 1.0])


def test_known_areas():
    # Triangle under (0, 0)-(2, 1); the dominated (1, 0.2) changes nothing: area 1 over cost 2.
    assert aiq([0, 2, 1], [0, 1, 0.2]) == pytest.approx(0.5)
    # Rise to (1, 1) then flat to max cost 2: (0.5 + 1) / 2.
    assert aiq([0, 1, 2], [0, 1, 1]) == pytest.approx(0.75)
    # c_min > 0: nothing left of 1; trapezoid 2 * 0.75 on [1, 3], flat 1 on [3, 4]; / 4.
    assert aiq([1, 3], [0.5, 1.0], max_cost=4) == pytest.approx(2.5 / 4)
    # max_cost inside the hull cuts it: trapezoid on [1, 2] = 0.625, / 2.
    assert aiq([1, 3], [0.5, 1.0], max_cost=2) == pytest.approx(0.625 / 2)
    assert aiq([1, 3], [0.5, 1.0], max_cost=0.5) == 0.0
    with pytest.raises(ValueError):
        aiq([0.0], [1.0])


@PROPS
@given(points)
def test_hull_is_nondecreasing_envelope_of_input_points(pts):
    c, s = pts
    hc, hs = upper_convex_hull(c, s)
    assert np.all(np.diff(hc) > 0) and np.all(np.diff(hs) > 0)
    # Hull vertices are input points.
    for x, y in zip(hc, hs):
        assert np.any((c == x) & (s == y))
    # Concave: slopes non-increasing.
    slopes = np.diff(hs) / np.diff(hc)
    assert np.all(np.diff(slopes) <= 1e-9)
    # Envelope: every point is on or below the flat-extended hull, and the hull starts at the
    # cheapest cost with the best score there and ends at the best score overall.
    assert hc[0] == c.min() and hs[0] == s[c == c.min()].max() and hs[-1] == s.max()
    assert np.all(np.interp(c, hc, hs) >= s - 1e-9)


@PROPS
@given(points, st.randoms(use_true_random=False))
def test_invariant_to_point_order(pts, rnd):
    c, s = pts
    perm = np.arange(c.size)
    rnd.shuffle(perm)
    for a, b in zip(upper_convex_hull(c, s), upper_convex_hull(c[perm], s[perm])):
        np.testing.assert_array_equal(a, b)
    if c.max() > 0:
        assert aiq(c, s) == pytest.approx(aiq(c[perm], s[perm]))
    t = float(np.median(s))
    assert first_cost_reaching(c, s, t) == pytest.approx(first_cost_reaching(c[perm], s[perm], t))


@PROPS
@given(points)
def test_aiq_bounded_and_monotone_in_added_points(pts):
    c, s = pts
    if c.max() <= 0:
        return
    a = aiq(c, s)
    # A weighted mean of hull scores and the zeros left of c_min.
    assert min(0.0, s.min()) - 1e-9 <= a <= max(0.0, s.max()) + 1e-9
    # Adding a point can only raise the hull (same max cost). Needs scores >= 0: a new cheaper
    # point with a negative score replaces the implicit 0 left of c_min by something lower.
    s = np.abs(s)
    a = aiq(c, s)
    extra_c, extra_s = np.append(c, c.max() / 2), np.append(s, s.max())
    assert aiq(extra_c, extra_s, max_cost=c.max()) >= a - 1e-9


def test_first_cost_reaching_interpolates():
    c = [3.0, 1.0, 2.0]  # unsorted on purpose
    s = [0.9, 0.1, 0.5]
    assert first_cost_reaching(c, s, 0.05) == 1.0  # cheapest point already reaches it
    assert first_cost_reaching(c, s, 0.3) == pytest.approx(1.5)
    assert first_cost_reaching(c, s, 0.5) == pytest.approx(2.0)
    assert first_cost_reaching(c, s, 0.7) == pytest.approx(2.5)
    assert math.isnan(first_cost_reaching(c, s, 0.95))
    assert math.isnan(first_cost_reaching([], [], 0.1))


def test_first_cost_reaching_uses_first_crossing_of_raw_curve():
    # Not the hull: the curve dips after the first crossing, which stays the answer.
    c = [0.0, 1.0, 2.0, 3.0]
    s = [0.0, 1.0, 0.0, 2.0]
    assert first_cost_reaching(c, s, 0.5) == pytest.approx(0.5)
    assert first_cost_reaching(c, s, 1.5) == pytest.approx(2.75)
    # Tied costs: the better score at that cost counts at once.
    assert first_cost_reaching([1.0, 1.0], [0.0, 1.0], 0.5) == 1.0
