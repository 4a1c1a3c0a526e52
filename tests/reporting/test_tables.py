import csv
import json
import math

import pytest
from rich.console import Console

from mtrouter_jax.reporting import tables as report
POOL = ["gpt-5", "deepseek-v3.2", "minimax-m2", "kimi-k2-0905", "gemini-2.5-flash-lite", "gpt-oss-120b"]
TOOLS = ["search", "python", "browse"]
BUDGETS = [0.1, 0.2, 0.4, 0.8]


def _pt(budget, score, cost, *, switches=2.0, stay=0.9, orr=None, ci=1.5, lam=None, ob=0.0):
    return {
        "budget": budget, "lam": lam, "score": score, "score_ci": ci, "cost": cost, "cost_ci": cost * 0.05,
        "cache_miss_cost": cost * 0.02, "switches": switches, "stay_after_error": stay,
        "over_budget_rate": ob, "budget_truncated_rate": 0.01,
        "tool_model_share": {t: {m: 1 / len(POOL) for m in POOL} for t in TOOLS},
        "model_share": {m: 1 / len(POOL) for m in POOL},
        "over_representation": orr if orr is not None else {t: {m: 1.0 for m in POOL} for t in TOOLS},
    }


def _single(score, cost):
    return {"kind": "single", "points": [_pt(None, score, cost, switches=0.0, stay=1.0)]}


def make_results(learned_scores=(30.0, 40.0, 60.0, 70.0), heuristic_scores=(35.0, 45.0, 55.0, 60.0)):
    """Hand-made sweep: best single gpt-5 = 50 at $1.00; learned costs 0.1/0.2/0.4/0.6."""
    orr = {t: {m: 1.0 for m in POOL} for t in TOOLS}
    orr["search"]["deepseek-v3.2"] = 1.66
    orr["python"]["gpt-5"] = 1.51
    orr["browse"]["kimi-k2-0905"] = 0.4
    orr["browse"]["minimax-m2"] = float("nan")
    l_costs = (0.1, 0.2, 0.4, 0.6)
    return {
        "meta": {"n_episodes": 200, "seed": 0, "pool": POOL, "tools": TOOLS, "budgets": BUDGETS,
                 "currency": "USD"},
        "routers": {
            "gpt-5": _single(50.0, 1.0),
            "deepseek-v3.2": _single(13.1, 0.2),
            "gpt-oss-120b": _single(26.6, 0.03),
            "gemini-2.5-flash-lite": _single(4.2, 0.02),
            "random": {"kind": "baseline", "points": [_pt(b, s, c, switches=18.0, stay=0.17)
                                                      for b, s, c in zip(BUDGETS, (10, 15, 20, 21), (0.09, 0.18, 0.3, 0.35))]},
            "error-escalation": {"kind": "heuristic", "points": [
                _pt(b, s, c, switches=10.0, stay=0.1) for b, s, c in zip(BUDGETS, (20, 30, 45, 52), (0.1, 0.19, 0.38, 0.7))]},
            "tool-heuristic": {"kind": "heuristic", "points": [
                _pt(b, s, c, switches=6.0, stay=0.5) for b, s, c in zip(BUDGETS, heuristic_scores, (0.1, 0.2, 0.39, 0.75))]},
            "oracle": {"kind": "oracle", "points": [
                _pt(b, s, c, switches=4.0, stay=0.8) for b, s, c in zip(BUDGETS, (45, 60, 75, 80), (0.09, 0.18, 0.35, 0.55))]},
            "mtrouter": {"kind": "learned", "points": [
                _pt(b, s, c, switches=2.5, stay=0.902, orr=orr, lam=1.0)
                for b, s, c in zip(BUDGETS, learned_scores, l_costs)]},
        },
    }


@pytest.fixture
def results():
    return make_results()


def test_table_renders(results):
    con = Console(record=True, width=220)
    report.print_results(results, console=con)
    text = con.export_text()
    for name in results["routers"]:
        assert name in text
    assert "70.0 ± 1.5" in text and "$0.600" in text and "90.2%" in text and "no cap" in text
    assert "AIQ" in text
    # learned router listed before baselines and singles
    assert text.index("mtrouter") < text.index("random") < text.index("gpt-oss-120b")
    assert report.ordered_routers(results)[0] == "mtrouter"
    sub = report.results_table(results, routers=["gpt-5", "nope"])
    assert sub.row_count == 1


def test_aiq_common_max_cost(results):
    a = report.aiq_by_router(results)
    from mtrouter_jax.reporting.curves import aiq
    pts = results["routers"]["mtrouter"]["points"]
    assert a["mtrouter"] == pytest.approx(aiq([p["cost"] for p in pts], [p["score"] for p in pts], max_cost=1.0))
    assert "gpt-5" not in a and "gpt-oss-120b" not in a  # single points: AIQ needs a curve


def test_plots_are_png(results, tmp_path):
    p1 = report.plot_cost_score(results, tmp_path / "a" / "cs.png", title="t")
    p2 = report.plot_behaviour(results, tmp_path / "b.png")
    for p in (p1, p2):
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_log_scale_switch(results):
    assert report.cost_axis_scale(results) == "log"  # 0.02 .. 1.0
    assert report._cost_score_figure(results).axes[0].get_xscale() == "log"
    narrow = make_results()
    narrow["routers"] = {k: v for k, v in narrow["routers"].items()
                         if k in ("mtrouter", "oracle", "gpt-5")}
    narrow["routers"]["oracle"]["points"][0]["cost"] = 0.1
    assert report.cost_axis_scale(narrow) == "linear"  # 0.1 .. 1.0: ratio exactly 10
    assert report._cost_score_figure(narrow).axes[0].get_xscale() == "linear"


def test_write_results_roundtrip(results, tmp_path):
    results["routers"]["mtrouter"]["points"][0]["stay_after_error"] = None
    results["routers"]["random"]["points"][0]["score_ci"] = float("nan")
    paths = report.write_results(results, tmp_path / "out")
    assert set(paths) == {"json", "csv", "cost_score", "behaviour", "summary"}
    raw = paths["json"].read_text()
    assert "NaN" not in raw and "Infinity" not in raw
    back = json.loads(raw)
    assert back["meta"]["pool"] == POOL
    assert back["routers"]["random"]["points"][0]["score_ci"] is None
    assert back["routers"]["mtrouter"]["points"][2]["score"] == 60.0
    assert back["routers"]["mtrouter"]["points"][0]["over_representation"]["browse"]["minimax-m2"] is None
    with paths["csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    n_points = sum(len(r["points"]) for r in results["routers"].values())
    assert len(rows) == n_points
    top = json.loads(next(r for r in rows if r["router"] == "mtrouter")["top_over_representation"])
    assert top[0] == ["search", "deepseek-v3.2", 1.66]
    assert paths["summary"].read_text().startswith("# ")


def test_summary_numbers(results):
    md = report.summary_markdown(results)
    assert "Best single model: **gpt-5**, score 50.0 at $1.00/episode" in md
    # 50 lies halfway between (0.2, 40) and (0.4, 60): reached at $0.300 = 30% of gpt-5's cost
    assert "reaches gpt-5's 50.0 at $0.300/episode = 30% of gpt-5's cost" in md
    assert "smallest budget whose point reaches it is $0.400" in md
    # heuristic 60 at budget 0.8 vs learned 70 and single 50 -> 50%
    assert "recovers 50% of mtrouter's gain" in md and "at the same budget ($0.800)" in md
    assert "2.50 model switches per episode — 4.0× fewer than **error-escalation** (10.00" in md
    assert "90.2% of the next turns" in md
    assert "70.0 vs 80.0, **mtrouter** is 10.0 points (12.5% of its score) below it" in md
    assert "upper envelope" not in md and "not an upper bound" in md
    assert "deepseek-v3.2 over-represented 1.66× on search turns; gpt-5 over-represented 1.51× on python turns" in md
    assert "kimi-k2-0905" not in md.split("specialisation")[1].split("\n")[0]
    assert "AIQ over [0, $1.00]: mtrouter" in md
    assert "| mtrouter | learned | $0.800 | 70.0 ± 1.5 |" in md
    assert "No episode of any router exceeded its budget." in md


def test_summary_flags_a_match_inside_the_ci():
    assert "inside that point's 95% CI" not in report.summary_markdown(make_results())  # 60 vs 50, CI 1.5
    r = make_results(learned_scores=(30.0, 40.0, 51.0, 52.0))  # first reaching point beats 50 by 1 < CI 1.5
    md = report.summary_markdown(r)
    assert "The margin (+1.0) is inside that point's 95% CI (±1.5)" in md and "--episodes 1024" in md


def test_summary_never_matches_and_no_gain():
    r = make_results(learned_scores=(20.0, 30.0, 40.0, 45.0))
    md = report.summary_markdown(r)
    assert "never matches gpt-5's 50.0" in md
    assert "largest budget ($0.800) it scores 45.0" in md and "5.0 points below" in md
    assert "no gain over gpt-5" in md and "no gain for **tool-heuristic** to recover" in md
    assert "tool-heuristic scores 60.0 at the same budget ($0.800), 10.0 above gpt-5's 50.0" in md
    assert "recovers" not in md and "%" not in md.split("tool-heuristic")[1].split("\n")[0]


def test_summary_missing_routers_and_heuristic_fallback():
    r = make_results()
    for k in ("oracle", "error-escalation"):
        del r["routers"][k]
    # heuristic at other budgets: compared at its best point
    for p, b in zip(r["routers"]["tool-heuristic"]["points"], (0.15, 0.3, 0.5, 1.0)):
        p["budget"] = b
    md = report.summary_markdown(r)
    assert "oracle" not in md and "error-escalation" not in md
    assert "recovers 50% of mtrouter's gain" in md and "at its best point ($1.00" in md
    assert "makes 2.50 model switches per episode" in md
    empty = report.summary_markdown({"meta": {}, "routers": {}})
    assert empty.startswith("# ")


def test_over_budget_flagged(tmp_path):
    r = make_results()
    r["routers"]["mtrouter"]["points"][1]["over_budget_rate"] = 0.02
    md = report.summary_markdown(r)
    assert "**Over budget**: mtrouter at $0.200 (2.0%)" in md
    con = Console(record=True, width=220)
    report.print_results(r, console=con)
    assert "2.0%" in con.export_text()
    assert math.isfinite(report.aiq_by_router(r)["mtrouter"])
