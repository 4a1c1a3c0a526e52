"""Pure sweep metrics (mtrouter_jax.reporting.results) and the module boundaries of the report split."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

from mtrouter_jax.reporting import results as metrics
def _router(*points):
    return {"kind": "learned", "points": [{"budget": b, "score": s, "cost": c} for b, s, c in points]}


def test_point_selection_tolerates_missing_and_nan():
    r = _router((0.1, 10.0, 0.1), (0.2, float("nan"), 0.2), (None, 30.0, 0.5), (0.4, 30.0, 0.3))
    assert [p["budget"] for p in metrics.valid_points(r)] == [0.1, 0.4, None]
    assert metrics.best_point(r)["budget"] == 0.4  # equal scores: the cheaper one
    assert metrics.point_at_budget(r, 0.2 + 1e-15)["budget"] == 0.2
    assert metrics.nearest_point(r, 0.25)["budget"] == 0.2
    assert metrics.nearest_point(r, None)["budget"] is None
    assert metrics.best_point(None) is None and metrics.points_of({"points": [1, None]}) == []
    assert metrics.num(True) is None and metrics.num("2") == 2.0 and metrics.num(math.inf) is None


def test_aiq_uses_a_common_max_cost_and_kind_order():
    res = {"routers": {"b": {"kind": "single", "points": [{"budget": None, "score": 5.0, "cost": 1.0}]},
                       "c": {"kind": "single", "points": [{"budget": None, "score": 5.0, "cost": 0.5}]},
                       "a": _router((0.1, 10.0, 0.5), (0.2, 12.0, 0.8))}}
    assert metrics.ordered_routers(res) == ["a", "b", "c"] and metrics.max_cost(res) == 1.0
    a = metrics.aiq_by_router(res)
    # one point is no curve: no AIQ (not 0 for the point at the range's end, not 2.5 for the other)
    assert set(a) == {"a"} and a["a"] > 0
    assert not metrics.has_curve(res["routers"]["b"]) and metrics.has_curve(res["routers"]["a"])
    assert not metrics.has_curve(_router((0.1, 10.0, 0.5), (0.2, 12.0, 0.5)))  # two points, one cost
    assert metrics.aiq_by_router({"routers": {}}) == {}


def test_specialisations_sorted_and_thresholded():
    p = {"over_representation": {"search": {"m1": 1.6, "m2": 0.4}, "python": {"m2": 2.0, "m3": None}}}
    assert metrics.specialisations(p) == [("python", "m2", 2.0), ("search", "m1", 1.6)]
    assert metrics.specialisations(p, top=1) == [("python", "m2", 2.0)]


def test_pure_modules_import_no_rendering_and_checkpoints_no_reporting():
    code = textwrap.dedent("""
        import sys
        import mtrouter_jax.reporting.results, mtrouter_jax.reporting.fmt, mtrouter_jax.reporting.summary, mtrouter_jax.core.jsonable
        bad = [m for m in ("matplotlib", "rich", "mtrouter_jax.reporting.tables", "mtrouter_jax.reporting.plots") if m in sys.modules]
        assert not bad, bad
        import mtrouter_jax.estimator.checkpoint  # (flax itself imports rich)
        bad = [m for m in ("matplotlib", "mtrouter_jax.reporting.tables", "mtrouter_jax.reporting.plots") if m in sys.modules]
        assert not bad, bad
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_report_keeps_every_public_name():
    from mtrouter_jax.reporting import tables as report
    for name in report.__all__ + ["CSV_COLUMNS", "DASH", "_cost_score_figure"]:
        assert hasattr(report, name), name
