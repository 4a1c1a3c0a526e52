"""Unknown fields (kept, round-tripped, one warning per file), strict mode, schema v1/v2, null scores."""

from __future__ import annotations

import json
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrouter_jax.logs.io import (SCHEMA_V1, SCHEMA_VERSION, Episode, LogFormatError, Turn, TurnError,
                               UnknownFieldsWarning, drop_unscored, iter_episodes, parse_episode,
                               read_episodes, write_episodes)
from test_logs import ep_dict, expect_problem, turn_dict, write_lines


def caught(fn, *a, **kw):
    """(result, [UnknownFieldsWarning messages]) of ``fn(*a, **kw)``, every warning recorded."""
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        out = fn(*a, **kw)
    return out, [str(w.message) for w in ws if issubclass(w.category, UnknownFieldsWarning)]


def users_log(path, n=900):
    """A user's log: every line has extra episode keys, every turn and error an extra key."""
    turns = [turn_dict(thought="hmm", error={"kind": "x", "severity": "low", "message": "boom"}),
             turn_dict(thought="ok")]
    return write_lines(path, *[ep_dict(f"e{i}", turns=turns, variation=i, steps=[1, {"a": None}])
                               for i in range(n)])


def test_unknown_fields_are_kept_with_one_warning_per_file(tmp_path):
    p = users_log(tmp_path / "u.jsonl")
    eps, msgs = caught(read_episodes, p)
    assert len(eps) == 900 and len(msgs) == 1
    msg = msgs[0]
    assert msg.startswith(f"{p}: kept 4 unknown field(s)") and "strict=True" in msg
    for part in ("variation (900 of 900 line(s))", "steps (900 of 900 line(s))",
                 "turns[].thought (900 of 900 line(s), 1800 occurrences)",
                 "turns[].error.message (900 of 900 line(s))"):
        assert part in msg, (part, msg)
    e = eps[7]
    assert e.extra == {"variation": 7, "steps": [1, {"a": None}]}
    assert e.turns[0].extra == {"thought": "hmm"} and e.turns[0].error.extra == {"message": "boom"}
    assert e.turns[0].error == TurnError("x", "low", {"message": "boom"})


def test_unknown_fields_round_trip_losslessly_at_their_place(tmp_path):
    src = users_log(tmp_path / "u.jsonl", n=3)
    eps, _ = caught(read_episodes, src)
    out = tmp_path / "out.jsonl"
    write_episodes(out, eps)
    for a, b in zip(src.read_text().splitlines(), out.read_text().splitlines(), strict=True):
        a, b = json.loads(a), json.loads(b)
        a["schema"] = SCHEMA_VERSION  # the only change: writers write v2
        assert a == b
    assert caught(read_episodes, out)[0] == eps


def test_one_warning_per_file_and_none_for_clean_files(tmp_path):
    a = users_log(tmp_path / "a.jsonl", n=2)
    b = write_lines(tmp_path / "b.jsonl", ep_dict("b1"))
    c = write_lines(tmp_path / "c.jsonl", ep_dict("c1", x=1))
    eps, msgs = caught(read_episodes, [a, b, c])
    assert len(eps) == 4 and len(msgs) == 2
    assert msgs[0].startswith(f"{a}:") and msgs[1].startswith(f"{c}:") and "x (1 of 1 line(s))" in msgs[1]
    assert caught(read_episodes, b)[1] == []


def test_no_warning_when_the_file_is_rejected(tmp_path):
    p = write_lines(tmp_path / "r.jsonl", ep_dict("e1", x=1), ep_dict("e2", score="bad"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownFieldsWarning)
        with pytest.raises(LogFormatError, match="score: expected a number"):
            read_episodes(p)


def test_iter_episodes_warns_once_at_the_end_or_on_close(tmp_path):
    p = users_log(tmp_path / "u.jsonl", n=5)
    eps, msgs = caught(lambda: list(iter_episodes(p)))
    assert len(eps) == 5 and len(msgs) == 1 and "variation (5 of 5 line(s))" in msgs[0]
    it = iter_episodes(p)
    (_, msgs) = caught(lambda: (next(it), next(it), it.close()))
    assert len(msgs) == 1 and "variation (2 of 2 line(s))" in msgs[0]


def test_strict_rejects_unknown_fields_everywhere(tmp_path):
    p = users_log(tmp_path / "u.jsonl", n=2)
    with pytest.raises(LogFormatError) as ei:
        read_episodes(p, strict=True)
    fields = {x.split(": ")[1] for x in ei.value.problems}
    assert fields == {"variation", "steps", "turns[0].thought", "turns[1].thought", "turns[0].error.message"}
    with pytest.raises(LogFormatError, match=":1: variation: unknown field 'variation'"):
        next(iter_episodes(p, strict=True))
    with pytest.raises(LogFormatError, match="<input>:0: x: unknown field"):
        parse_episode(ep_dict("e", x=1), strict=True)


@pytest.mark.parametrize("record, field, wanted", [
    (ep_dict("e2", turns=[{k: v for k, v in turn_dict(propensty=0.5).items() if k != "propensity"}]),
     "turns[0].propensty", "propensity"),
    ({k: v for k, v in ep_dict("e2", scor=1.0).items() if k != "score"}, "scor", "score"),
    (ep_dict("e2", turns=[turn_dict(error={"kind": "x", "severty": "low"})]), "turns[0].error.severty", "severity"),
    ({k: v for k, v in ep_dict("e2", episodeid="x").items() if k != "episode_id"}, "episodeid", "episode_id"),
], ids=["turn", "episode", "error", "episode-id"])
@pytest.mark.parametrize("strict", [False, True])
def test_misspelt_missing_required_field_stays_an_error(tmp_path, record, field, wanted, strict):
    probs = expect_problem(tmp_path, record, field, f"did you mean {wanted!r}? {wanted!r} is required and "
                                                    "missing", strict=strict)
    assert len(probs) == 1  # one problem, not also "missing required field"


def test_unknown_key_far_from_a_missing_field_is_kept_and_the_field_reported(tmp_path):
    rec = {k: v for k, v in ep_dict("e2", variation=3).items() if k != "score"}
    probs = expect_problem(tmp_path, rec, "score", "missing required field")
    assert len(probs) == 1


@pytest.mark.parametrize("lit", ["NaN", "Infinity"])
def test_non_finite_unknown_value_is_an_error(tmp_path, lit):
    rec = json.dumps(ep_dict("e2", turns=[turn_dict(thought=123.5)])).replace("123.5", lit)
    expect_problem(tmp_path, rec, "turns[0].thought", "not strictly JSON-serialisable")


def test_non_string_field_name_is_an_error():
    with pytest.raises(LogFormatError, match="<input>:0: turns\\[0\\].3: field name must be a string, got integer"):
        parse_episode(ep_dict("e", turns=[{**turn_dict(), 3: 1}]))


def test_schema_key_inside_a_turn_is_just_an_unknown_field():
    ep, msgs = caught(parse_episode, ep_dict("e", turns=[turn_dict(schema="mine")]))
    assert ep.turns[0].extra == {"schema": "mine"} and "turns[].schema" in msgs[0]


def test_parse_episode_warns_and_keeps():
    ep, msgs = caught(parse_episode, ep_dict("e", variaton=1), "here", 3)
    assert ep.extra == {"variaton": 1} and len(msgs) == 1
    assert msgs[0].startswith("here: kept 1 unknown field(s)")
    assert caught(parse_episode, ep_dict("e"))[1] == []


@pytest.mark.parametrize("make, message", [
    (lambda: Turn("a", 1, 0, 1, 0.0, None, None, None, extra={"cost": 1}), r"\['cost'\] are schema fields"),
    (lambda: Episode("e", "t", 1.0, None, ("a",), (), extra={"schema": "x"}), r"\['schema'\] are schema"),
    (lambda: TurnError("k", "low", extra={"kind": 1}), "schema fields"),
    (lambda: Episode("e", "t", 1.0, None, ("a",), (), extra=[1]), "extra must be a dict"),
], ids=["turn", "episode-schema", "error", "not-a-dict"])
def test_extra_may_not_shadow_schema_fields(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_empty_extra_is_none_and_extras_do_not_break_hashing():
    t = Turn("a", 1, 0, 1, 0.0, None, None, None, extra={})
    assert t.extra is None and t == Turn("a", 1, 0, 1, 0.0, None, None, None)
    assert hash(TurnError("k", "low", {"m": [1]})) == hash(TurnError("k", "low"))


# ------------------------------------------------------------------ schema versions, null scores

def test_v2_null_score_round_trips_and_is_dropped(tmp_path):
    p = write_lines(tmp_path / "v2.jsonl", ep_dict("a", score=None, score_range=[0, 1]), ep_dict("b"))
    a, b = read_episodes(p)
    assert a.score is None and a.score_range == (0.0, 1.0) and b.score == 1.0
    assert a.to_dict()["score"] is None and a.to_dict()["schema"] == SCHEMA_VERSION == "mtrouter-traj/2"
    assert drop_unscored([a, b]) == ([b], 1)


def test_v1_is_read_and_its_unscored_flag_means_a_null_score(tmp_path):
    p = write_lines(tmp_path / "v1.jsonl", ep_dict("s", schema=SCHEMA_V1),
                    ep_dict("u", schema=SCHEMA_V1, score=0, meta={"unscored": True, "lam": 1.0}),
                    ep_dict("f", schema=SCHEMA_V1, score=0, meta={"unscored": False}))
    s, u, f = read_episodes(p)
    assert s.score == 1.0 and f.score == 0.0
    assert u.score is None and u.meta == {"unscored": True, "lam": 1.0}  # the flag itself is kept
    out = tmp_path / "v2.jsonl"
    write_episodes(out, [s, u, f])
    assert [json.loads(x)["score"] for x in out.read_text().splitlines()] == [1.0, None, 0.0]
    assert read_episodes(out) == [s, u, f]


def test_v1_null_score_is_an_error(tmp_path):
    expect_problem(tmp_path, ep_dict("e2", schema=SCHEMA_V1, score=None), "score",
                   "a null score needs schema 'mtrouter-traj/2'")


def test_drop_unscored_also_drops_the_legacy_flag():
    t = Turn("a", 10, 0, 5, 0.1, "search", None, None)
    scored = Episode("1", "x", 1.0, None, ("a",), (t,), meta={"unscored": False})
    legacy = Episode("2", "x", 0.0, None, ("a",), (t,), meta={"unscored": True})  # pre-v2 writers
    null = Episode("3", "x", None, None, ("a",), (t,))
    assert drop_unscored([scored, legacy, null]) == ([scored], 2)


# ------------------------------------------------------------------ parsing never crashes

keys = st.sampled_from(["schema", "episode_id", "task_type", "score", "budget", "models", "turns",
                        "score_range", "source", "meta", "x", "scor"])
values = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True)
                      | st.sampled_from([SCHEMA_V1, SCHEMA_VERSION, "a", ""]),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                          st.sampled_from(list(turn_dict()) + ["kind", "severity", "y", "schema"]), inner,
                          max_size=8),
                      max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from([ep_dict("e"), ep_dict("e", schema=SCHEMA_V1)]),
       edits=st.dictionaries(keys, values, max_size=4), strict=st.booleans())
def test_parse_never_crashes_and_accepted_records_round_trip(base, edits, strict):
    """Arbitrary damage to a valid record: a LogFormatError or an episode that survives to_dict."""
    rec = {**base, **edits}
    try:
        ep, _ = caught(parse_episode, rec, strict=strict)
    except LogFormatError as e:
        assert e.problems and all(x.startswith("<input>:0: ") for x in e.problems)
        return
    again, _ = caught(parse_episode, json.loads(json.dumps(ep.to_dict(), allow_nan=False)), strict=strict)
    assert again == ep


_ELEMENT = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6), st.booleans(),
                     st.none(), st.text(max_size=3), st.just(10**400))


@settings(max_examples=300, deadline=None)
@given(st.lists(_ELEMENT, max_size=12))
def test_feature_fast_path_agrees_with_the_per_element_check(values):
    """``finite_numbers`` accepts exactly the lists the per-element check passes, with the same
    floats; every other list goes to the per-element check (which names the bad element)."""
    import math

    from mtrouter_jax.logs.schema import _Checker, finite_numbers

    c = _Checker("<t>", 1, False)
    try:
        slow = tuple(c.number(x, f"features[{j}]") for j, x in enumerate(values))
    except OverflowError:  # the per-element check's own answer to a huge int (unchanged)
        slow = None
        c.problems.append("overflow")
    fast = finite_numbers(values)
    if c.problems:
        assert fast is None
    else:
        assert fast is not None and len(fast) == len(slow)
        assert all(type(a) is float and (a == b or math.isnan(a) and math.isnan(b)) for a, b in zip(fast, slow))


def test_features_with_a_bad_element_still_name_it(tmp_path):
    """A feature vector that fails the fast path is checked element by element: each bad one named."""
    rec = json.dumps(ep_dict("bad", turns=[turn_dict(features=[0.5, 1, 1.0, True])])).replace("1.0, true", "1e999, true")
    expect_problem(tmp_path, rec, "turns[0].features[2]", "not a finite number")
    expect_problem(tmp_path, rec, "turns[0].features[3]", "expected a number, got")
