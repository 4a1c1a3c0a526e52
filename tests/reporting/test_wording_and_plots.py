"""Issue 20: summaries that say what they show (no negative "recovers", a beatable oracle, no AIQ for a
single point) and plots whose axes, ticks and legends are honest (assertions on the matplotlib Axes)."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
from test_tables import make_results

from mtrouter_jax.reporting import tables as report
from mtrouter_jax.reporting.plotkit import clip_errors, score_limits, usd_tick, usd_ticks
from mtrouter_jax.reporting.plots import _behaviour_figure, score_range


def _finding(md: str, word: str) -> str:
    return next(line for line in md.splitlines() if line.startswith("- ") and word in line)


# --------------------------------------------------------------------------- summary wording


def test_negative_recovery_is_said_plainly():
    md = report.summary_markdown(make_results(heuristic_scores=(20.0, 20.0, 20.0, 30.0)))
    line = _finding(md, "tool-heuristic")
    assert "recovers none of **mtrouter**'s gain" in line
    assert "20.0 below gpt-5's 50.0" in line and "mtrouter's gain over gpt-5 is +20.0 (70.0 vs 50.0)" in line
    assert not re.search(r"-\d+%", md)  # never "recovers -71%"


def test_heuristic_above_the_learned_router():
    line = _finding(report.summary_markdown(make_results(heuristic_scores=(35.0, 45.0, 55.0, 75.0))), "tool-heuristic")
    assert "scores 75.0 at the same budget ($0.800), 5.0 above **mtrouter**'s 70.0" in line
    assert "%" not in line


def test_learned_below_best_single_with_the_heuristic_above_it():
    md = report.summary_markdown(make_results(learned_scores=(20.0, 30.0, 40.0, 45.0),
                                              heuristic_scores=(35.0, 45.0, 55.0, 54.0)))
    line = _finding(md, "tool-heuristic")
    assert "**mtrouter** has no gain over gpt-5 (best 45.0 vs 50.0)" in line
    assert "tool-heuristic scores 54.0 at the same budget ($0.800), 4.0 above gpt-5's 50.0" in line


def test_a_beaten_oracle_reads_as_beaten():
    r = make_results()
    r["routers"]["oracle"]["points"][-1]["score"] = 63.0
    line = _finding(report.summary_markdown(r), "Against the **oracle**")
    assert "70.0 vs 63.0, **mtrouter** beats it by 7.0 points (11.1% of its score)" in line
    assert "gap of -" not in line and "upper envelope" not in line
    assert "privileged router" in line and "a router can beat it" in line


def test_the_oracle_is_found_by_kind():
    r = make_results()
    r["routers"]["privileged-bound"] = r["routers"].pop("oracle")
    line = _finding(report.summary_markdown(r), "Against the")
    assert line.startswith("- Against the **privileged-bound** at equal budget ($0.800): 70.0 vs 80.0")


def test_the_summary_speaks_for_the_router_serve_would_use():
    """A sweep of an ensemble checkpoint names its serving row (the safe one): the summary's
    findings are about that row; without ``serving_router`` (or naming a row it lacks) they are
    about ``mtrouter``."""
    r = make_results()
    r["routers"]["mtrouter-safe"] = copy.deepcopy(r["routers"]["mtrouter"])
    r["routers"]["mtrouter-safe"]["points"][-1]["score"] = 72.0
    plain = report.summary_markdown(r)
    r["meta"]["serving_router"] = "mtrouter-safe"
    safe = report.summary_markdown(r)
    assert "70.0 vs 80.0, **mtrouter** is" in _finding(plain, "Against the **oracle**")
    assert "72.0 vs 80.0, **mtrouter-safe** is" in _finding(safe, "Against the **oracle**")
    r["meta"]["serving_router"] = "mtrouter-nope"
    assert report.summary_markdown(r) == plain


def test_single_point_aiq_is_not_defined(tmp_path):
    r = make_results()
    md = report.summary_markdown(r)
    row = next(line for line in md.splitlines() if line.startswith("| gpt-5 |"))
    assert row.endswith("| — |")
    assert "AIQ —: one point: AIQ needs a curve" in md
    assert "gpt-5" not in _finding(md, "AIQ over")
    from rich.console import Console

    con = Console(record=True, width=200)
    con.print(report.aiq_table(r))
    text = con.export_text()
    gpt5 = next(line for line in text.splitlines() if " gpt-5 " in line)
    assert "0.00" not in gpt5 and "—" in gpt5
    assert "— = one point: AIQ needs a curve" in text
    paths = report.write_results(r, tmp_path)
    import csv

    rows = {row["router"]: row for row in csv.DictReader(paths["csv"].open())}
    assert rows["gpt-5"]["aiq"] == "" and rows["mtrouter"]["aiq"] != ""


def test_print_results_is_wide_when_piped(capsys):
    report.print_results(make_results())  # pytest's captured stdout is no terminal, like a pipe
    out = capsys.readouterr().out
    assert "…" not in out and max(len(line) for line in out.splitlines()) > 80
    assert "stay-after-error" in out


# --------------------------------------------------------------------------- plots


def test_usd_ticks_never_use_exponents():
    assert usd_ticks([1e-4, 1e-3, 1e-2, 0.1, 1.0], common=False) == ["$0.0001", "$0.001", "$0.01", "$0.1", "$1"]
    assert usd_ticks([0.0, 0.05, 0.1, 0.15], common=True) == ["$0", "$0.05", "$0.10", "$0.15"]
    assert usd_ticks([2e-4, 5e-4], common=False) == ["$0.0002", "$0.0005"]
    assert usd_tick(0.000125) == "$0.000125" and usd_tick(12.5) == "$12.5" and usd_tick(-0.5) == "−$0.5"


def _tick_texts(ax, which="major"):
    ax.figure.canvas.draw()
    ticks = ax.xaxis.get_major_ticks() if which == "major" else ax.xaxis.get_minor_ticks()
    lo, hi = sorted(ax.get_xlim())
    return [t.label1.get_text() for t in ticks if t.label1.get_visible() and t.label1.get_text()
            and lo <= t.get_loc() <= hi]


def _cheap(results: dict, factor: float) -> dict:
    r = copy.deepcopy(results)
    for router in r["routers"].values():
        for p in router["points"]:
            p["cost"] *= factor
            p["cost_ci"] *= factor
    return r


@pytest.mark.parametrize("factor", [1.0, 0.01, 0.001])
def test_cost_ticks_are_uniform_dollars(factor):
    fig = report._cost_score_figure(_cheap(make_results(), factor))
    ax = fig.axes[0]
    labels = _tick_texts(ax) + _tick_texts(ax, "minor")
    assert labels and all(re.fullmatch(r"\$\d+(\.\d+)?", t) for t in labels), labels
    sizes = {t.get_fontsize() for t in ax.get_xticklabels(which="both") + ax.get_yticklabels(which="both")}
    assert len(sizes) == 1, sizes  # one tick font size (major "$0.1" is no bigger than minor "$0.2")


def test_linear_cost_ticks_share_their_decimals():
    r = make_results()
    r["routers"] = {k: v for k, v in r["routers"].items() if k in ("mtrouter", "oracle", "gpt-5")}
    r["routers"]["oracle"]["points"][0]["cost"] = 0.1
    ax = report._cost_score_figure(r).axes[0]
    assert ax.get_xscale() == "linear"
    labels = _tick_texts(ax)
    decimals = {len(t.split(".")[1]) if "." in t else None for t in labels if t != "$0"}
    assert len(decimals) == 1, labels


def test_y_axis_and_whiskers_stay_in_the_score_range():
    r = make_results()
    r["routers"]["gpt-5"]["points"][0].update(score=90.0, score_ci=30.0)  # CI would reach 120
    r["routers"]["gemini-2.5-flash-lite"]["points"][0].update(score=-85.0, score_ci=40.0)  # and -125
    assert score_range(r) == (-100.0, 100.0)
    ax = report._cost_score_figure(r).axes[0]
    lo, hi = ax.get_ylim()
    assert -100.0 <= lo < -85.0 and 90.0 < hi <= 100.0
    ys = np.concatenate([np.asarray(seg)[:, 1] for coll in ax.collections for seg in coll.get_segments()])
    assert ys.max() <= 100.0 + 1e-9 and ys.min() >= -100.0 - 1e-9 and ys.max() == pytest.approx(100.0)
    assert "−100 … 100" in ax.get_ylabel()


def test_a_given_score_range_is_used():
    r = make_results()
    r["meta"]["score_range"] = [0, 100]
    assert score_range(r) == (0.0, 100.0)
    ax = report._cost_score_figure(r).axes[0]
    assert ax.get_ylim()[0] >= 0.0 and "(0 … 100)" in ax.get_ylabel()
    r["meta"].pop("score_range")
    r["routers"]["gpt-5"]["points"][0]["score"] = 150.0  # outside the default: no clipping, no claim
    assert score_range(r) is None
    ax = report._cost_score_figure(r).axes[0]
    assert ax.get_ylim()[1] > 150.0 and "…" not in ax.get_ylabel()


def test_clip_helpers():
    e = clip_errors([90.0, 0.0, -95.0], [20.0, 20.0, 20.0], -100.0, 100.0)
    assert e.tolist() == [[20.0, 20.0, 5.0], [10.0, 20.0, 20.0]]
    assert score_limits(-50.0, 99.0, -100.0, 100.0) == (pytest.approx(-50.0 - 0.08 * 149.0), 100.0)


def test_legend_names_every_mark_and_no_upper_envelope():
    ax = report._cost_score_figure(make_results()).axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "oracle at each budget" in texts  # the grey × markers
    assert any(t.startswith("oracle: hull of its points") and "beatable" in t for t in texts)
    assert not any("upper envelope" in t for t in texts)
    assert any(t.startswith("bars: 95% CI") for t in texts) and "single models (uncapped)" in texts


def test_single_model_labels_avoid_error_bars_and_each_other():
    fig = report._cost_score_figure(make_results())
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    anns = [c for c in ax.texts if c.get_text() in ("gpt-5", "deepseek-v3.2", "gpt-oss-120b", "gemini-2.5-flash-lite")]
    assert len(anns) == 4
    boxes = [a.get_window_extent(renderer) for a in anns]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b)
    segs = [np.asarray(s) for coll in ax.collections for s in coll.get_segments()]  # error-bar whiskers
    t = np.linspace(0.0, 1.0, 25)[:, None]
    pts = np.concatenate([ax.transData.transform(s[0] + t * (s[-1] - s[0])) for s in segs])
    for bb in boxes:
        inside = (pts[:, 0] > bb.x0) & (pts[:, 0] < bb.x1) & (pts[:, 1] > bb.y0) & (pts[:, 1] < bb.y1)
        assert not inside.any()


def test_behaviour_bars_have_a_kind_legend():
    fig = _behaviour_figure(make_results())
    texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert {"learned", "oracle", "heuristic", "baseline", "single model"} <= set(texts)
    sizes = {t.get_fontsize() for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels()}
    assert len(sizes) == 1, sizes
