"""core/jsonfast.py gives the standard library's bytes and objects (errors included), orjson or not."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import example, given, settings, strategies as st

from mtrouter_jax.core import jsonfast
from mtrouter_jax.core.jsonfast import MAX_FAST_DEPTH, NOT_FAST, dumps_compact, loads, loads_fast

pytest.importorskip("orjson")  # (the live extra's; without it both functions are the standard library)


def _stdlib_dumps(obj, nonfinite="token"):
    """What the proxy wrote before core/jsonfast.py (``streams.dumps`` for "null")."""
    def plain(o, allow_nan):
        return json.dumps(o, ensure_ascii=False, separators=(",", ":"), allow_nan=allow_nan).encode("utf-8")
    if nonfinite != "null":
        return plain(obj, nonfinite == "token")
    try:
        return plain(obj, False)
    except ValueError:
        def nulls(o):
            if isinstance(o, float):
                return o if math.isfinite(o) else None
            if isinstance(o, dict):
                return {k: nulls(v) for k, v in o.items()}
            return [nulls(v) for v in o] if isinstance(o, (list, tuple)) else o
        return plain(nulls(obj), True)  # (a tuple's infinities too: JSON has no Infinity for a client)


def _finite(obj) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    return all(_finite(v) for v in obj) if isinstance(obj, (list, tuple)) else True


def _same(a, b) -> bool:
    """Equal with the types (1 == 1.0 == True in Python; not here), NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return a == b


numbers = st.one_of(st.integers(), st.integers(-2**70, 2**70), st.floats(), st.floats(-1e-3, 1e-3),
                    st.sampled_from([1e-5, 1e-6, 5e-324, 1e16, 1e22, -0.0, 2**63, -2**63 - 1, 2**64]))
texts = st.text(st.characters(codec="utf-8")) | st.sampled_from(["1e-5", "0.00001", "\u2028", "\x7f\x00\n\t\"\\"])
leaves = st.none() | st.booleans() | numbers | texts
json_like = st.recursive(leaves, lambda kids: st.lists(kids, max_size=4) | st.tuples(kids, kids)
                         | st.dictionaries(texts, kids, max_size=4), max_leaves=30)


def _outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except Exception as e:  # noqa: BLE001 - the exception type is what is compared
        return "raises", type(e)


@settings(max_examples=600, deadline=None)
@given(json_like, st.sampled_from(["token", "raise", "null"]))
@example((None, float("inf")), "null")  # a tuple's infinity: null on both paths (it was Infinity on the fallback)
def test_dumps_compact_is_the_standard_library_byte_for_byte(obj, nonfinite):
    assert _outcome(dumps_compact, obj, nonfinite) == _outcome(_stdlib_dumps, obj, nonfinite)
    if _finite(obj):  # what the caller may vouch for changes nothing
        assert _outcome(dumps_compact, obj, nonfinite, True) == _outcome(_stdlib_dumps, obj, nonfinite)


@settings(max_examples=600, deadline=None)
@given(json_like)
def test_loads_fast_decodes_as_the_standard_library_or_defers(obj):
    try:
        raw = _stdlib_dumps(obj)
    except (ValueError, TypeError):
        return
    got = loads_fast(raw)
    if got is not NOT_FAST:
        assert _same(got, json.loads(raw))
    assert _same(loads(raw), json.loads(raw))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40) | st.text(st.sampled_from('[]{}",:.-+eE0123456789 \\u\x00trufalsn'), max_size=40)
       .map(lambda s: s.encode()))
def test_loads_fast_never_accepts_what_the_standard_library_would_not(raw):
    got = loads_fast(raw)
    if got is not NOT_FAST:
        assert _same(got, json.loads(raw))
    ok, res = _outcome(loads, raw)  # loads: json.loads's result, or its exception
    ref_ok, ref = _outcome(json.loads, raw)
    assert ok == ref_ok and (_same(res, ref) if ok == "ok" else res is ref)


def test_where_the_two_codecs_differ_the_standard_library_answers():
    assert loads_fast(b"[123456789012345678901234567890]") is NOT_FAST  # orjson: a float
    assert loads_fast("[1]") is NOT_FAST and loads_fast(bytearray(b"[1]")) == [1]
    assert loads_fast(b"[-9223372036854775809]") is NOT_FAST
    for refused in (b"[NaN]", b"1e400", b'"\\ud800"', b"\xef\xbb\xbf{}", b"[1,]", b"\xff"):
        assert loads_fast(refused) is NOT_FAST
    deep = b"[" * (MAX_FAST_DEPTH + 1) + b"]" * (MAX_FAST_DEPTH + 1)
    assert loads_fast(deep) is NOT_FAST  # the standard library's recursion limit is the caller's rule
    assert loads_fast(b"[" * MAX_FAST_DEPTH + b"]" * MAX_FAST_DEPTH) is not NOT_FAST
    assert loads_fast(b"[[[]]]", max_depth=2) is NOT_FAST and loads_fast(b"[[]]", max_depth=2) == [[]]
    assert loads_fast(b"[" * 300 + b"]" * 300, max_depth=10**6) is NOT_FAST  # (never beyond MAX_FAST_DEPTH)
    assert loads_fast(b"[[[]]]", max_depth=2, containers=3) is NOT_FAST
    assert dumps_compact([1e-5, 1e-6, 0.5]) == b"[1e-05,1e-06,0.5]"  # Python's spelling, not orjson's
    assert dumps_compact([float("nan"), None]) == b"[NaN,null]"
    assert dumps_compact([float("nan"), None], "null") == b"[null,null]"
    with pytest.raises(ValueError):
        dumps_compact({"x": float("inf")}, "raise")
    assert dumps_compact({"t": (1, 2)}) == b'{"t":[1,2]}'
    assert dumps_compact({1: 2}) == b'{"1":2}'

    @dataclasses.dataclass
    class Point:
        x: int

    with pytest.raises(TypeError):  # orjson would encode a dataclass; the standard library refuses it
        dumps_compact(Point(1))

    class Name(str):
        def __str__(self):
            return "other"

    assert dumps_compact([Name("a")]) == _stdlib_dumps([Name("a")])


def test_without_orjson_both_are_the_standard_library(monkeypatch):
    monkeypatch.setattr(jsonfast, "orjson", None)
    assert loads_fast(b"[1]") is NOT_FAST and loads(b"[1]") == [1]
    assert dumps_compact({"a": [1, 0.5, None]}) == b'{"a":[1,0.5,null]}'
    with pytest.raises(ValueError):
        dumps_compact([float("nan")], "raise")
    assert dumps_compact([float("inf")], "null") == b"[null]"
