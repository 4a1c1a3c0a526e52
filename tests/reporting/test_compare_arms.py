"""``mtrouter compare-arms`` (issue 19, ``reporting/arms.py``) on synthetic logs whose numbers are
worked out by hand here: per-arm means and CIs, the Welch canary − control interval, the shadow's
agreement and importance-sampling estimates, and the CLI (tables, ``--json``, errors)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from mtrouter_jax.cli import main
from mtrouter_jax.core.jsonable import to_jsonable
from mtrouter_jax.logs.io import Episode, Turn, write_episodes
from mtrouter_jax.reporting.arms import NoArmsError, compare_arms, is_weight

Z = 1.96
MODELS = ("a", "b")


def _ep(eid, score, costs, meta, served=None, shadow=None, props=None):
    served = served or ["a"] * len(costs)
    turns = []
    for i, c in enumerate(costs):
        m = {} if shadow is None else {"shadow": {"model": shadow[i], "digest": "cand"}}
        turns.append(Turn(served[i], 100, 0, 10, c, None, None, None if props is None else props[i], meta=m or None))
    return Episode(eid, "qa", score, None, MODELS, tuple(turns), (0.0, 1.0), "live", meta)


def _canary_log():
    canary = [_ep(f"k{i}", s, [c], {"arm": "canary", "checkpoint": "new"})
              for i, (s, c) in enumerate([(1, 0.1), (0, 0.2), (1, 0.3)])]
    control = [_ep(f"c{i}", s, [c], {"arm": "control", "checkpoint": "old"})
               for i, (s, c) in enumerate([(0, 0.1), (0, 0.1), (1, 0.2), (1, 0.2)])]
    return canary + control + [_ep("u", None, [0.5], {"arm": "control"})]


def test_arms_means_cis_and_the_welch_difference_by_hand():
    rep = compare_arms(_canary_log())
    arms = {r["arm"]: r for r in rep["arms"]}
    assert [r["arm"] for r in rep["arms"]] == ["control", "canary"]
    k, c = arms["canary"], arms["control"]
    # canary scores 1, 0, 1: mean 2/3, sample variance 1/3; control 0, 0, 1, 1: mean 1/2, variance 1/3
    assert (k["n"], c["n"], c["n_unscored"]) == (3, 4, 1)
    assert k["score"] == pytest.approx(2 / 3) and k["score_ci"] == pytest.approx(Z * math.sqrt(1 / 9))
    assert c["score"] == pytest.approx(0.5) and c["score_ci"] == pytest.approx(Z * math.sqrt(1 / 12))
    # costs 0.1, 0.2, 0.3 (variance 0.01) and 0.1, 0.1, 0.2, 0.2 (variance 1/300)
    assert k["cost"] == pytest.approx(0.2) and k["cost_ci"] == pytest.approx(Z * math.sqrt(0.01 / 3))
    assert k["score_per_usd"] == pytest.approx((2 / 3) / 0.2) and c["score_per_usd"] == pytest.approx(0.5 / 0.15)
    (d,) = rep["differences"]
    assert (d["a"], d["b"]) == ("canary", "control")
    assert d["score"] == pytest.approx(1 / 6) and d["score_ci"] == pytest.approx(Z * math.sqrt(1 / 9 + 1 / 12))
    assert d["cost"] == pytest.approx(0.05) and d["cost_ci"] == pytest.approx(Z * math.sqrt(0.01 / 3 + 1 / 1200))
    assert rep["shadow"] is None


def test_without_arms_the_checkpoints_are_the_arms_later_minus_earlier():
    eps = [_ep("x1", 1, [0.1], {"checkpoint": "d2", "started": 20.0}),
           _ep("x2", 0, [0.1], {"checkpoint": "d1", "started": 10.0}),
           _ep("x3", 1, [0.1], {"checkpoint": "d1", "started": 11.0})]
    rep = compare_arms(eps)
    (d,) = rep["differences"]
    assert (d["a"], d["b"]) == ("checkpoint d2", "checkpoint d1") and d["score"] == pytest.approx(0.5)
    assert math.isnan(d["score_ci"])  # one episode on a side: no interval
    with pytest.raises(NoArmsError, match="meta.arm"):
        compare_arms([_ep("n", 1, [0.1], {"policy": "tool-heuristic"})])


def _shadow_log():
    return [
        # agreed on both turns, each drawn with p 1/2: weight 4
        _ep("s1", 1.0, [0.1, 0.1], {"arm": "control"}, ["a", "b"], ["a", "b"], [0.5, 0.5]),
        # disagreed: weight 0
        _ep("s2", 0.0, [0.1], {"arm": "control"}, ["a"], ["b"], [0.5]),
        # agreed, deterministic turns: weight 1
        _ep("s3", 0.5, [0.1, 0.1], {"arm": "control"}, ["a", "a"], ["a", "a"], [1.0, 1.0]),
        # a turn without a shadow decision: not complete
        _ep("s4", 1.0, [0.1, 0.1], {"arm": "control"}, ["a", "a"], ["a", None], [1.0, 1.0]),
    ]


def test_shadow_agreement_and_importance_sampling_by_hand():
    sh = compare_arms(_shadow_log())["shadow"]
    assert sh["episodes"] == 4 and sh["turns"] == 6 and sh["turns_missing"] == 1
    assert sh["agreement"] == pytest.approx(5 / 6)
    assert sh["complete_episodes"] == 3 and sh["all_agree_share"] == pytest.approx(2 / 3) and sh["explored"]
    i = sh["is"]
    w, s = [4.0, 0.0, 1.0], [1.0, 0.0, 0.5]
    ws = [a * b for a, b in zip(w, s)]  # 4, 0, 0.5
    assert i["n"] == 3 and i["plain"] == pytest.approx(1.5) and i["snis"] == pytest.approx(4.5 / 5)
    assert i["diff_plain"] == pytest.approx(1.5 - 0.5) and i["diff_snis"] == pytest.approx(0.9 - 0.5)
    assert i["ess"] == pytest.approx(25 / 17)

    def ci(x):
        m = sum(x) / len(x)
        return Z * math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1) / len(x))
    assert i["plain_ci"] == pytest.approx(ci(ws))
    assert i["diff_plain_ci"] == pytest.approx(ci([a - b for a, b in zip(ws, s)]))
    infl = [a * (b - 0.9) / (5 / 3) for a, b in zip(w, s)]
    assert i["snis_ci"] == pytest.approx(ci(infl))
    assert i["diff_snis_ci"] == pytest.approx(ci([f - (b - 0.5) for f, b in zip(infl, s)]))
    assert sh["agreed"]["n"] == 2 and sh["agreed"]["score"] == pytest.approx(0.75)


def test_without_propensities_below_one_the_shadow_is_valued_only_where_it_agreed():
    eps = [_ep("d1", 1.0, [0.1], {"arm": "control"}, ["a"], ["a"], [1.0]),
           _ep("d2", 0.0, [0.1], {"arm": "control"}, ["a"], ["b"], [1.0])]
    sh = compare_arms(eps)["shadow"]
    assert sh["is"] is None and not sh["explored"] and "only be valued on the episodes where it agreed" in sh["note"]
    assert sh["agreed"] == {"n": 1, "score": 1.0, "score_ci": sh["agreed"]["score_ci"]}


_steps = hs.lists(hs.tuples(hs.sampled_from("abc"), hs.floats(0.05, 1.0)), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(_steps)
def test_is_weight_is_one_over_the_propensities_when_all_agree(steps):
    assert is_weight([(m, m, 1.0) for m, _ in steps]) == 1.0
    assert is_weight([(m, m, p) for m, p in steps]) == pytest.approx(math.prod(1 / p for _, p in steps))


@settings(max_examples=200, deadline=None)
@given(_steps, hs.data())
def test_is_weight_is_zero_after_any_disagreement(steps, data):
    k = data.draw(hs.integers(0, len(steps) - 1))
    turns = [(m, m if i != k else m + "x", p) for i, (m, p) in enumerate(steps)]
    assert is_weight(turns) == 0.0
    assert is_weight(turns[:k] + [(turns[k][0], None, 1.0)] + turns[k + 1:]) is None  # no decision: unusable


def _cli(capsys, argv):
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, [x for x in out.err.splitlines() if x.strip()]


def test_cli_tables_json_and_errors(tmp_path, capsys):
    log = tmp_path / "arms.jsonl"
    write_episodes(log, _canary_log() + _shadow_log())
    rc, out, _ = _cli(capsys, ["compare-arms", str(log)])
    assert rc == 0 and "canary − control" in out and "per-turn agreement" in out and "self-normalised" in out
    rc, out, _ = _cli(capsys, ["compare-arms", str(log), "--json"])
    rep = json.loads(out)
    assert rc == 0 and rep == to_jsonable(compare_arms(_canary_log() + _shadow_log()))
    assert rep["shadow"]["is"]["plain"] == pytest.approx(1.5) and rep["differences"][0]["a"] == "canary"
    plain = tmp_path / "plain.jsonl"
    write_episodes(plain, [_ep("n", 1, [0.1], {"policy": "tool-heuristic"})])
    for argv, needle in ((["compare-arms", str(plain)], "carries an arm"),
                         (["compare-arms", str(tmp_path / "nope.jsonl")], "no log file"),
                         (["compare-arms"], "required: LOG")):
        rc, _, err = _cli(capsys, argv)
        assert rc == 2 and len(err) == 1 and needle in err[0] and "Traceback" not in err[0], (argv, err)
