"""Compact JSON at C speed, the same bytes and values as the standard library's.

The proxy encodes and decodes JSON several times a turn (the request, its input bound, the
upstream body and reply, the reply to the client, the log line); with the standard library that
was the largest single item of its own CPU (docs/benchmarks.md, run E). ``orjson`` is 3-10x
faster but not the same codec everywhere, so it is used only where its answer is provably the
standard library's, and the standard library answers the rest (the same result, errors
included, at the old speed):

- decoding: orjson turns integers beyond 64 bits into floats (the standard library keeps them
  exact), so bodies with a run of 19 or more digits take the standard library; anything orjson
  refuses (NaN, ``1e400``, lone surrogates, a BOM, deep nesting, invalid UTF-8) does too, so the
  caller's own error messages and rules apply unchanged.
- encoding: orjson's output is taken only when it holds no ``null`` that is not a None (orjson
  writes NaN and Infinity as null: an output with a null must decode back to an equal object,
  unless the caller knows the object finite) and none of the float spellings where the two
  differ (orjson writes ``1e-6`` and ``0.00001`` where Python writes ``1e-06`` and ``1e-05``;
  elsewhere both write the shortest round-trip digits the same way); subclasses and non-JSON
  types take the standard library, which encodes or refuses them as before.

Without orjson installed (it comes with the ``live`` extra) every call is the standard library's.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - exercised by the fallback tests through monkeypatching
    orjson = None

# every byte that is not an ASCII digit becomes a space, every digit "0": a run of 19 digits (the
# shortest integer orjson may turn into a float is -2**63 - 1) is then a substring search
_DIGITS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))  # "0" for 0-9, else " "
_RUN_19 = b"0" * 19
# orjson's spellings of floats that Python spells otherwise, 1e-6 (1e-06) and 0.00001 (1e-05); a
# string that holds one only costs speed
_SHORT_NEG_EXPONENT = re.compile(rb"e-[0-9](?![0-9])")
_PASSTHROUGH = 0 if orjson is None else (orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME
                                         | orjson.OPT_PASSTHROUGH_DATACLASS)
NOT_FAST = object()  # ``loads_fast``'s answer when the standard library has to decide
# nesting that the standard library decodes whatever the caller's stack (its recursion limit is 1,000
# frames) and orjson encodes (its limit is 254 levels)
MAX_FAST_DEPTH = 200


def _refuse(obj: Any):
    raise TypeError  # (orjson: not a type it may encode on its own -> the standard library)


def deeper_than(obj: Any, limit: int) -> bool:
    """Whether the dict/list ``obj`` nests deeper than ``limit`` levels (the walk stops at ``limit``)."""
    if limit <= 0:
        return True
    for c in obj.values() if type(obj) is dict else obj:
        if (type(c) is dict or type(c) is list) and deeper_than(c, limit - 1):
            return True
    return False


def loads_fast(raw: bytes | bytearray | memoryview, max_depth: int = MAX_FAST_DEPTH,
               containers: int | None = None) -> Any:
    """``json.loads(raw)``'s object where orjson provably gives the same, else ``NOT_FAST`` (the
    caller then decodes with the standard library and its own options and errors). Objects
    nested deeper than ``max_depth`` (at most ``MAX_FAST_DEPTH``) are the standard library's too:
    it may run out of recursion on them where orjson does not, and callers rely on what it does;
    a caller that refuses deeper objects anyway passes its own limit and need not walk again.
    ``containers``: the count of ``{`` and ``[`` in ``raw``, when the caller has it already."""
    if orjson is None or not isinstance(raw, (bytes, bytearray, memoryview)):  # (a str: json.loads's)
        return NOT_FAST
    raw = bytes(raw)
    if _RUN_19 in raw.translate(_DIGITS):
        return NOT_FAST
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return NOT_FAST
    max_depth = min(max_depth, MAX_FAST_DEPTH)
    if containers is None:
        containers = raw.count(b"[") + raw.count(b"{")
    # (no more brackets than levels allowed: the nesting cannot exceed them, no walk)
    if containers > max_depth and type(obj) in (dict, list) and deeper_than(obj, max_depth):
        return NOT_FAST
    return obj


def loads(raw: bytes | bytearray | memoryview | str) -> Any:
    """``json.loads(raw)`` (its result and its errors), through orjson where that is the same."""
    obj = loads_fast(raw)
    return json.loads(raw) if obj is NOT_FAST else obj


def _finite_or_null(obj: Any) -> Any:
    """``obj`` with NaN/Infinity as None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):  # (a tuple is written as a list: its infinities are nulls too)
        return [_finite_or_null(v) for v in obj]
    return obj


def _stdlib(obj: Any, nonfinite: str) -> bytes:
    if nonfinite == "null":
        try:
            return _stdlib(obj, "raise")
        except ValueError:
            obj = _finite_or_null(obj)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=nonfinite != "raise").encode("utf-8")


def _other_float_spelling(out: bytes) -> bool:
    return (b"e-" in out and _SHORT_NEG_EXPONENT.search(out) is not None) or b"0.0000" in out


def dumps_compact(obj: Any, nonfinite: str = "token", finite: bool = False) -> bytes:
    """``json.dumps(obj, ensure_ascii=False, separators=(",", ":"))`` as UTF-8 bytes, byte for byte,
    NaN and Infinity written as such (``nonfinite="token"``, ``allow_nan=True``), refused with
    json's ValueError (``"raise"``, ``allow_nan=False``) or written as null (``"null"``: what a
    client can read; tuples and lists nested as plain JSON). ``finite``: the caller knows ``obj``
    holds no NaN or Infinity (``parse_json`` refuses them), which spares the check that orjson did
    not write one of them as null."""
    if orjson is not None:
        try:
            out = orjson.dumps(obj, default=_refuse, option=_PASSTHROUGH)
        except (orjson.JSONEncodeError, TypeError):
            pass
        else:
            # (tuples: both write a list; a null that is not a None can only be a NaN or an Infinity,
            # and orjson's null for those is what "null" asks for)
            if not _other_float_spelling(out) and (finite or nonfinite == "null" or b"null" not in out
                                                   or orjson.loads(out) == obj):
                return out
    return _stdlib(obj, nonfinite)


__all__ = ["loads", "loads_fast", "dumps_compact", "deeper_than", "NOT_FAST", "MAX_FAST_DEPTH"]
