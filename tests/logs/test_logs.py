"""Tests for the trajectory JSONL format (mtrouter_jax.logs.io): validation, atomic writers, round trips.

Unknown fields, schema versions and unscored episodes: tests/test_logs_schema.py.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtrouter_jax.logs.io import (SCHEMA_VERSION, Episode, LogFormatError, Turn, TurnError,
                               append_episodes, append_lines, episode_line, iter_episodes, parse_episode,
                               read_episodes, write_episodes)
from mtrouter_jax.logs.records import DuplicateEpisodesWarning
from mtrouter_jax.logs.schema import LEVELS


def turn_dict(**kw):
    d = {"model": "a", "input_tokens": 100, "cached_tokens": 10, "output_tokens": 20,
         "cost": 0.01, "tool": "search", "error": None, "propensity": 0.5}
    d.update(kw)
    return d


def ep_dict(eid="e1", turns=None, **kw):
    d = {"schema": SCHEMA_VERSION, "episode_id": eid, "task_type": "t", "score": 1.0,
         "budget": None, "models": ["a", "b"], "turns": turns or [turn_dict()]}
    d.update(kw)
    return d


def write_lines(path, *records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def problems_of(path, **kw):
    with pytest.raises(LogFormatError) as ei:
        read_episodes(path, **kw)
    return ei.value.problems, str(ei.value)


def expect_problem(tmp_path, record, field, needle, line=2, **kw):
    """Line 1 is always valid, line 2 is the bad record: check file:line: field: problem."""
    p = write_lines(tmp_path / "log.jsonl", ep_dict("ok"), record)
    probs, msg = problems_of(p, **kw)
    prefix = f"{p}:{line}: {field}: "
    hits = [x for x in probs if x.startswith(prefix)]
    assert hits, f"no problem starting with {prefix!r} in {probs}"
    assert any(needle in h for h in hits), hits
    assert prefix in msg
    return probs


def test_valid_roundtrip_and_total_cost(tmp_path):
    p = write_lines(tmp_path / "x.jsonl", ep_dict("e1"), "", ep_dict("e2", score_range=[0, 1],
                                                                      source="sim", meta={"k": [1]}))
    eps = read_episodes(p)
    assert [e.episode_id for e in eps] == ["e1", "e2"]
    assert eps[1].score_range == (0.0, 1.0) and eps[1].meta == {"k": [1]}
    assert eps[0].total_cost == pytest.approx(0.01)
    assert "score_range" not in eps[0].to_dict() and "observation" not in eps[0].to_dict()["turns"][0]
    assert parse_episode(eps[1].to_dict()) == eps[1]


def test_truncated_line(tmp_path):
    p = tmp_path / "log.jsonl"
    good = json.dumps(ep_dict("ok"))
    p.write_text(good + "\n" + json.dumps(ep_dict("e2"))[:40])  # writer died mid-line
    probs, _ = problems_of(p)
    assert len(probs) == 1 and probs[0].startswith(f"{p}:2: <root>: truncated line")


def test_invalid_json(tmp_path):
    probs = expect_problem(tmp_path, "{not json}", "<root>", "invalid JSON")
    assert len(probs) == 1


def test_non_object_line(tmp_path):
    expect_problem(tmp_path, "[1, 2]", "<root>", "expected a JSON object")


def test_duplicate_json_key(tmp_path):
    rec = json.dumps(ep_dict("e2"))[:-1] + ', "score": 2.0}'
    expect_problem(tmp_path, rec, "<root>", "duplicate key 'score'")


def test_string_tokens(tmp_path):
    expect_problem(tmp_path, ep_dict("e2", turns=[turn_dict(input_tokens="100")]),
                   "turns[0].input_tokens", "expected an integer, got string")


def test_bool_tokens(tmp_path):
    expect_problem(tmp_path, ep_dict("e2", turns=[turn_dict(), turn_dict(output_tokens=True)]),
                   "turns[1].output_tokens", "got boolean")


def test_bool_score_and_float_tokens(tmp_path):
    expect_problem(tmp_path, ep_dict("e2", score=False), "score", "got boolean")
    expect_problem(tmp_path, ep_dict("e2", turns=[turn_dict(input_tokens=1.5)]),
                   "turns[0].input_tokens", "expected an integer")


def test_unknown_model_not_in_episode(tmp_path):
    expect_problem(tmp_path, ep_dict("e2", turns=[turn_dict(model="zz")]),
                   "turns[0].model", "unknown model 'zz'")


def test_unknown_model_not_in_pool(tmp_path):
    probs = expect_problem(tmp_path, ep_dict("e2", models=["a", "c"]), "models[1]",
                           "unknown model 'c' (pool has: a, b)", pool_models={"a", "b"})
    assert len(probs) == 1


def test_duplicate_and_empty_models(tmp_path):
    expect_problem(tmp_path, ep_dict("e2", models=["a", "a"]), "models[1]", "duplicate model")
    expect_problem(tmp_path, ep_dict("e2", models=[]), "models", "must not be empty")


def test_negative_tokens(tmp_path):
    expect_problem(tmp_path, ep_dict("e2", turns=[turn_dict(output_tokens=-1)]),
                   "turns[0].output_tokens", "must be >= 0")


def test_cached_more_than_input(tmp_path):
    expect_problem(tmp_path, ep_dict("e2", turns=[turn_dict(input_tokens=5, cached_tokens=6)]),
                   "turns[0].cached_tokens", "cached_tokens (6) > input_tokens (5)")


@pytest.mark.parametrize("lit", ["NaN", "Infinity", "-Infinity"])
def test_nan_inf_cost(tmp_path, lit):
    rec = json.dumps(ep_dict("e2", turns=[turn_dict(cost=123.5)])).replace("123.5", lit)
    expect_problem(tmp_path, rec, "turns[0].cost", "not a finite number")


def test_negative_cost_and_bad_propensity_and_budget(tmp_path):
    expect_problem(tmp_path, ep_dict("e2", turns=[turn_dict(cost=-0.1)]), "turns[0].cost", ">= 0")
    expect_problem(tmp_path, ep_dict("e2", turns=[turn_dict(propensity=0)]),
                   "turns[0].propensity", "(0, 1]")
    expect_problem(tmp_path, ep_dict("e2", budget=0), "budget", "> 0")


def test_bad_severity(tmp_path):
    expect_problem(tmp_path, ep_dict("e2", turns=[turn_dict(error={"kind": "x", "severity": "fatal"})]),
                   "turns[0].error.severity", "unknown severity 'fatal'")


def test_missing_required_field(tmp_path):
    rec = ep_dict("e2")
    del rec["score"]
    del rec["turns"][0]["propensity"]
    probs = expect_problem(tmp_path, rec, "score", "missing required field")
    assert f"{tmp_path / 'log.jsonl'}:2: turns[0].propensity: missing required field" in probs


def test_unknown_extra_field_strict(tmp_path):
    rec = ep_dict("e2", turns=[turn_dict(costt=1.0)], scor=1)
    probs = expect_problem(tmp_path, rec, "turns[0].costt", "did you mean 'cost'?", strict=True)
    assert any(x.startswith(f"{tmp_path / 'log.jsonl'}:2: scor: unknown field") for x in probs)
    # ...but anything goes inside meta
    ok = ep_dict("e3", meta={"anything": {"x": 1}}, turns=[turn_dict(meta={"fallbacks": 2})])
    assert parse_episode(ok).turns[0].meta == {"fallbacks": 2}


def test_bad_schema_version(tmp_path):
    expect_problem(tmp_path, ep_dict("e2", schema="mtrouter-traj/3"), "schema",
                   "unknown schema version")
    rec = ep_dict("e2")
    del rec["schema"]
    expect_problem(tmp_path, rec, "schema", "missing required field")


def test_score_range_checks(tmp_path):
    expect_problem(tmp_path, ep_dict("e2", score_range=[1, 0]), "score_range", "lo < hi")
    expect_problem(tmp_path, ep_dict("e2", score=5.0, score_range=[0, 1]), "score", "outside")


def test_duplicate_episode_ids_across_files(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", ep_dict("e1"))
    b = write_lines(tmp_path / "b.jsonl", ep_dict("e2"), ep_dict("e1", score=0.25))
    probs, _ = problems_of([a, b], strict=True)
    assert probs == [f"{b}:2: episode_id: duplicate episode id 'e1' (first seen at {a}:1)"]
    c = write_lines(tmp_path / "c.jsonl", ep_dict("x"), ep_dict("x", score=0.25))
    with pytest.raises(LogFormatError, match="duplicate episode id"):
        list(iter_episodes(c, strict=True))


def test_duplicate_episode_ids_keep_the_first_with_a_warning(tmp_path):
    from mtrouter_jax.logs.records import DuplicateEpisodesWarning

    a = write_lines(tmp_path / "a.jsonl", ep_dict("e1"))
    b = write_lines(tmp_path / "b.jsonl", ep_dict("e2"), ep_dict("e1", score=0.25))
    with pytest.warns(DuplicateEpisodesWarning, match=rf"{b}:2: .*first seen at {a}:1.*--strict"):
        eps = read_episodes([a, b])
    assert [e.episode_id for e in eps] == ["e1", "e2"] and eps[0].score != 0.25
    c = write_lines(tmp_path / "c.jsonl", ep_dict("x"), ep_dict("x", score=0.25))
    with pytest.warns(DuplicateEpisodesWarning):
        assert [e.score for e in iter_episodes(c)] == [eps[0].score]


def test_all_or_nothing_and_max_problems(tmp_path):
    p = write_lines(tmp_path / "m.jsonl", *[ep_dict(f"e{i}", score="bad") for i in range(7)])
    with pytest.raises(LogFormatError) as ei:
        read_episodes(p, max_problems=3)
    assert len(ei.value.problems) == 3 and "... and 4 more" in str(ei.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_episodes([tmp_path / "nope.jsonl"])


def test_a_directory_reads_its_jsonl_files_by_name_and_repeats_are_kept_once(tmp_path):
    logs = tmp_path / "replicas"
    logs.mkdir()
    write_lines(logs / "replica-b.jsonl", ep_dict("e2"), ep_dict("e1", score=0.0))  # e1 repeated
    write_lines(logs / "replica-a.jsonl", ep_dict("e1", score=1.0))
    (logs / "notes.txt").write_text("not a log")
    with pytest.warns(DuplicateEpisodesWarning, match="replica-b.jsonl:2"):
        eps = read_episodes(logs)
    assert [(e.episode_id, e.score) for e in eps] == [("e1", 1.0), ("e2", 1.0)]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no trajectory logs .* in the directory .*empty"):
        read_episodes([empty])


def test_iter_episodes_stops_at_first_bad_line(tmp_path):
    p = write_lines(tmp_path / "s.jsonl", ep_dict("e1"), "{bad", ep_dict("e3"))
    it = iter_episodes(p)
    assert next(it).episode_id == "e1"
    with pytest.raises(LogFormatError, match=":2: <root>: invalid JSON"):
        next(it)


def _episode(eid: str, n_turns: int = 2) -> Episode:
    t = Turn("a", 10, 0, 5, 0.001, None, TurnError("invalid_action", "high"), 1 / 6,
             observation="x" * 50, features=[0.5, -1.0])
    return Episode(eid, "t", 0.5, 2.0, ["a", "b"], [t] * n_turns, score_range=[0, 1])


def test_append_validates_before_writing(tmp_path):
    p = tmp_path / "sub" / "log.jsonl"
    bad = Episode("b", "t", float("nan"), None, ["a"], [_episode("x").turns[0]])
    with pytest.raises(LogFormatError, match="score: not a finite number"):
        append_episodes(p, [_episode("ok"), bad])
    assert not p.exists() or p.read_text() == ""
    append_episodes(p, _episode("ok"))
    assert read_episodes(p) == [_episode("ok")]


def test_episode_lines_appended_are_the_bytes_append_episodes_writes(tmp_path):
    """``episode_line`` (a finishing replica, shared state) + ``append_lines`` (the one log writer)
    write what ``append_episodes`` writes; an invalid episode has no line."""
    eps = [_episode(f"e{i}", i + 1) for i in range(3)]
    append_episodes(tmp_path / "a.jsonl", eps)
    append_lines(tmp_path / "b.jsonl", b"".join(episode_line(e) + b"\n" for e in eps))
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert read_episodes(tmp_path / "b.jsonl") == eps
    with pytest.raises(LogFormatError, match="score: not a finite number"):
        episode_line(Episode("b", "t", float("nan"), None, ["a"], [_episode("x").turns[0]]))


def test_append_after_truncated_tail_keeps_new_record_intact(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text(json.dumps(ep_dict("e1"))[:30])  # crash left a partial last line
    append_episodes(p, _episode("e2"))
    probs, _ = problems_of(p)
    assert len(probs) == 1 and probs[0].startswith(f"{p}:1: <root>:")
    assert p.read_text().splitlines()[1] == json.dumps(_episode("e2").to_dict(),
                                                       separators=(",", ":"))


def test_write_episodes_atomic_replace(tmp_path):
    p = tmp_path / "w.jsonl"
    write_episodes(p, [_episode("e1")])
    write_episodes(p, [_episode("e2"), _episode("e3")])
    assert [e.episode_id for e in read_episodes(p)] == ["e2", "e3"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["w.jsonl"]  # no tmp leftovers


def test_concurrent_thread_appends_whole_lines(tmp_path):
    p = tmp_path / "c.jsonl"

    def worker(k):
        for j in range(10):
            append_episodes(p, [_episode(f"t{k}-{j}", n_turns=40)])
    ths = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert len(read_episodes(p)) == 60


def _proc_worker(path, k):
    for j in range(8):
        append_episodes(path, [_episode(f"p{k}-{j}", n_turns=60), _episode(f"q{k}-{j}")])


@pytest.mark.filterwarnings("ignore:os.fork")  # JAX (if imported by other tests) warns on fork
def test_concurrent_process_appends_whole_lines(tmp_path):
    p = str(tmp_path / "c.jsonl")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_proc_worker, args=(p, k)) for k in range(4)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join()
        assert pr.exitcode == 0
    eps = read_episodes(p)
    assert len(eps) == 64 and len({e.episode_id for e in eps}) == 64


# ------------------------------------------------------------------ property-based round trip

finite = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e12, max_value=1e12)
text = st.text(max_size=20)
name = st.text(min_size=1, max_size=8)
json_value = st.recursive(st.none() | st.booleans() | st.integers() | finite | text,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                          max_leaves=6)


def extras(known):
    """Unknown keys (never a schema field's name) with arbitrary JSON values, or None."""
    return st.none() | st.dictionaries(name.filter(lambda k: k not in known and k != "schema"),
                                       json_value, max_size=3)


@st.composite
def episodes(draw, eid):
    models = draw(st.lists(name, min_size=1, max_size=4, unique=True))
    turns = []
    for _ in range(draw(st.integers(1, 4))):
        inp = draw(st.integers(0, 10**7))
        err = draw(st.none() | st.builds(TurnError, name, st.sampled_from(["low", "medium", "high"]),
                                         extras(LEVELS["turns[].error."])))
        turns.append(Turn(
            model=draw(st.sampled_from(models)), input_tokens=inp,
            cached_tokens=draw(st.integers(0, inp)), output_tokens=draw(st.integers(0, 10**6)),
            cost=draw(st.floats(0, 1e3)), tool=draw(st.none() | name), error=err,
            propensity=draw(st.none() | st.floats(1e-9, 1.0)),
            observation=draw(st.none() | text), action=draw(st.none() | text),
            features=draw(st.none() | st.lists(finite, max_size=5)),
            meta=draw(st.none() | st.dictionaries(name, st.integers() | text, max_size=2)),
            extra=draw(extras(LEVELS["turns[]."]))))
    lo = draw(finite)
    has_range = draw(st.booleans())
    score = draw(st.floats(lo, lo + 10.0)) if has_range else draw(finite)
    return Episode(episode_id=eid, task_type=draw(name), score=draw(st.none() | st.just(score)),
                   budget=draw(st.none() | st.floats(1e-6, 1e6)), models=models, turns=turns,
                   score_range=(lo, lo + 10.0) if has_range else None,
                   source=draw(st.none() | st.sampled_from(["sim", "live", "import"])),
                   meta=draw(st.none() | st.dictionaries(name, text, max_size=2)),
                   extra=draw(extras(LEVELS[""])))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.filterwarnings("ignore::mtrouter_jax.logs.io.UnknownFieldsWarning")
def test_roundtrip_property(tmp_path, data):
    """Any valid episodes (unknown fields and null scores included) survive write -> read."""
    eps = [data.draw(episodes(f"ep{i}")) for i in range(data.draw(st.integers(1, 3)))]
    p = tmp_path / f"rt-{data.draw(st.integers(0, 10**9))}.jsonl"
    append_episodes(p, eps[:1])
    append_episodes(p, eps[1:])
    assert read_episodes(p) == eps
    assert list(iter_episodes(p)) == eps
    p.unlink()
