"""Trajectory record schema (``mtrouter-traj/2``, reads ``/1``): the validating parser (records: ``logs.records``).

Strict about the fields it knows (every problem a precise ``file:line: field: problem``); unknown
episode, turn and error keys are kept in the records' ``extra`` dicts and written back unchanged
(``strict=True`` makes them errors). An unknown key that looks like a misspelt *missing required*
field is always an error. Files: :mod:`mtrouter_jax.logs.io`; format: ``docs/formats_logs.md``.
"""

from __future__ import annotations

import difflib
import json
import math
from collections import Counter
from typing import Any

from mtrouter_jax.core.vocab import SEVERITIES
from mtrouter_jax.logs.records import (  # noqa: F401  (re-exported: the schema's public names)
    _ALLOWED, _ERROR_KEYS, _EPISODE_REQUIRED, _EPISODE_OPTIONAL, _FIELDS, _TURN_OPTIONAL, _TURN_REQUIRED, KNOWN_SCHEMAS, LEVELS, SCHEMA_V1, SCHEMA_VERSION, Episode, LogFormatError, Turn, TurnError, UnknownFieldsWarning, _check_extra)


# ----------------------------------------------------------------------------- validation

class _Checker:
    """Collects the problems and the kept unknown keys of one record."""

    def __init__(self, where: str, line: int, strict: bool):
        self.where, self.line, self.strict = where, line, strict
        self.problems: list[str] = []
        self.unknown: Counter = Counter()  # (level, key) -> occurrences in this record

    def bad(self, field: str, problem: str) -> None:
        self.problems.append(f"{self.where}:{self.line}: {field}: {problem}")

    def keys(self, obj: dict, prefix: str, level: str) -> dict | None:
        """Check required keys; return the unknown ones (kept), or report them (strict)."""
        allowed = _ALLOWED[level]
        unknown = [k for k in obj if k not in allowed]
        missing = [k for k in _FIELDS[level][0] if k not in obj]
        if not (unknown or missing):  # the common case, once per turn: keep it cheap
            return None
        for k in [k for k in unknown if not isinstance(k, str)]:  # only from Python dicts, not JSON
            self.bad(prefix + str(k), f"field name must be a string, got {_typename(k)}")
            unknown.remove(k)
        for k in missing:
            # A misspelt required field must never become "extra + missing": say what it is.
            hint = difflib.get_close_matches(k, unknown, n=1)
            if hint:
                unknown.remove(hint[0])
                self.bad(prefix + hint[0], f"unknown field {hint[0]!r} (did you mean {k!r}? "
                                           f"{k!r} is required and missing)")
            else:
                self.bad(prefix + k, "missing required field")
        if not unknown:
            return None
        if self.strict:
            for k in unknown:
                hint = difflib.get_close_matches(k, LEVELS[level], n=1)
                msg = f"unknown field {k!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                self.bad(prefix + k, msg + f"; allowed: {', '.join(LEVELS[level])}")
            return None
        for k in unknown:
            self.unknown[(level, k)] += 1
        return {k: self.json_value(obj[k], prefix + k) for k in unknown}

    def json_value(self, v: Any, field: str) -> Any:
        try:  # free-form, but must survive a strict re-serialisation (no NaN/Infinity)
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError) as e:
            self.bad(field, f"not strictly JSON-serialisable ({e})")
            return None
        return v

    def string(self, v: Any, field: str, nonempty: bool = True) -> str | None:
        if not isinstance(v, str):
            self.bad(field, f"expected a string, got {_typename(v)}")
            return None
        if nonempty and not v:
            self.bad(field, "must be a non-empty string")
            return None
        return v

    def number(self, v: Any, field: str) -> float | None:
        # bool is a subclass of int in Python: `true` must never pass as a number.
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.bad(field, f"expected a number, got {_typename(v)}")
            return None
        if not math.isfinite(v):
            self.bad(field, f"not a finite number ({v!r})")
            return None
        return float(v)

    def integer(self, v: Any, field: str) -> int | None:
        if isinstance(v, bool) or not isinstance(v, int):
            self.bad(field, f"expected an integer, got {_typename(v)}")
            return None
        if v < 0:
            self.bad(field, f"must be >= 0, got {v}")
            return None
        return v

    def meta(self, v: Any, field: str) -> dict | None:
        if not isinstance(v, dict):
            self.bad(field, f"expected an object, got {_typename(v)}")
            return None
        return self.json_value(v, field)


def _typename(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, str):
        return f"string {v[:40]!r}"
    return {dict: "object", list: "array", int: "integer", float: "number"}.get(
        type(v), type(v).__name__)


def _parse_error(c: _Checker, e: Any, p: str) -> TurnError | None:
    if not isinstance(e, dict):
        c.bad(p + "error", f"expected null or an object, got {_typename(e)}")
        return None
    extra = c.keys(e, p + "error.", "turns[].error.")
    kind = c.string(e.get("kind"), p + "error.kind") if "kind" in e else None
    sev = e.get("severity")
    if "severity" in e and sev not in SEVERITIES:
        c.bad(p + "error.severity",
              f"unknown severity {sev!r} (expected one of {', '.join(SEVERITIES)})")
        return None
    return None if kind is None else TurnError(kind, sev, extra)


_NUMBER_TYPES = frozenset((int, float))


def finite_numbers(values: list) -> tuple[float, ...] | None:
    """``values`` as floats when every one is a finite int or float (not a bool), else None — what
    ``_Checker.number`` accepts, checked a whole list at a time (a log's feature vectors are most of
    its numbers); None sends the caller to the per-element check, which names the bad element."""
    if not set(map(type, values)) <= _NUMBER_TYPES:  # (exact types: bool, numpy scalars and
        return None                                     # subclasses take the per-element path)
    try:
        out = tuple(map(float, values))
    except OverflowError:  # an int too large for a float
        return None
    return out if all(map(math.isfinite, out)) else None


def _parse_turn(c: _Checker, t: Any, i: int, models: set[str] | None) -> Turn | None:
    p = f"turns[{i}]."
    if not isinstance(t, dict):
        c.bad(f"turns[{i}]", f"expected an object, got {_typename(t)}")
        return None
    n0 = len(c.problems)
    extra = c.keys(t, p, "turns[].")
    model = c.string(t.get("model"), p + "model") if "model" in t else None
    if model is not None and models is not None and model not in models:
        c.bad(p + "model", f"unknown model {model!r} (episode models: {', '.join(sorted(models))})")
    tok = {k: c.integer(t[k], p + k) if k in t else None
           for k in ("input_tokens", "cached_tokens", "output_tokens")}
    if tok["input_tokens"] is not None and tok["cached_tokens"] is not None \
            and tok["cached_tokens"] > tok["input_tokens"]:
        c.bad(p + "cached_tokens",
              f"cached_tokens ({tok['cached_tokens']}) > input_tokens ({tok['input_tokens']})")
    cost = c.number(t["cost"], p + "cost") if "cost" in t else None
    if cost is not None and cost < 0:
        c.bad(p + "cost", f"must be >= 0, got {cost}")
    tool = t.get("tool")
    if tool is not None:
        tool = c.string(tool, p + "tool")
    err = _parse_error(c, t["error"], p) if t.get("error") is not None else None
    prop = t.get("propensity")
    if prop is not None:
        prop = c.number(prop, p + "propensity")
        if prop is not None and not 0.0 < prop <= 1.0:
            c.bad(p + "propensity", f"must be in (0, 1], got {prop}")
    opt: dict[str, Any] = {}
    for k in ("observation", "action"):
        if t.get(k) is not None:
            opt[k] = c.string(t[k], p + k, nonempty=False)
    if t.get("features") is not None:
        f = t["features"]
        if not isinstance(f, list):
            c.bad(p + "features", f"expected an array of numbers, got {_typename(f)}")
        else:
            fast = finite_numbers(f)
            opt["features"] = fast if fast is not None else tuple(
                c.number(x, f"{p}features[{j}]") for j, x in enumerate(f))
    if t.get("meta") is not None:
        opt["meta"] = c.meta(t["meta"], p + "meta")
    if t.get("progress") is not None:
        opt["progress"] = c.number(t["progress"], p + "progress")
    if len(c.problems) > n0:
        return None
    return Turn(model, tok["input_tokens"], tok["cached_tokens"], tok["output_tokens"], cost,
                tool, err, prop, **opt, extra=extra)


def _parse_models(c: _Checker, m: Any, pool_models: set[str] | None) -> list[str] | None:
    if not isinstance(m, list) or not m:
        c.bad("models", f"expected a non-empty array of strings, got {_typename(m)}"
              if not isinstance(m, list) else "must not be empty")
        return None
    models = [c.string(x, f"models[{j}]") for j, x in enumerate(m)]
    seen: set[str] = set()
    for j, x in enumerate(models):
        if x is None:
            continue
        if x in seen:
            c.bad(f"models[{j}]", f"duplicate model {x!r}")
        seen.add(x)
        if pool_models is not None and x not in pool_models:
            c.bad(f"models[{j}]", f"unknown model {x!r} (pool has: {', '.join(sorted(pool_models))})")
    return None if any(x is None for x in models) else models


def _parse_score_range(c: _Checker, srange: Any, score: float | None) -> tuple[float, float] | None:
    if not isinstance(srange, list) or len(srange) != 2:
        c.bad("score_range", f"expected [lo, hi], got {_typename(srange)}")
        return None
    lo, hi = (c.number(x, f"score_range[{j}]") for j, x in enumerate(srange))
    if lo is None or hi is None:
        return None
    if lo >= hi:
        c.bad("score_range", f"needs lo < hi, got [{lo}, {hi}]")
        return None
    if score is not None and not lo <= score <= hi:
        c.bad("score", f"{score} outside score_range [{lo}, {hi}]")
    return lo, hi


def parse_record(obj: Any, where: str = "<input>", line: int = 0, pool_models: set[str] | None = None,
                 strict: bool = False) -> tuple[Episode, Counter]:
    """Validate one decoded record (see :func:`mtrouter_jax.logs.io.parse_episode`), warning about nothing.

    Returns the episode and the unknown keys it kept, ``(level, key) -> occurrences`` (level ``""``,
    ``"turns[]."`` or ``"turns[].error."``); with ``strict=True`` unknown keys are problems instead.
    """
    c = _Checker(where, line, strict)
    if not isinstance(obj, dict):
        c.bad("<root>", f"expected a JSON object, got {_typename(obj)}")
        raise LogFormatError(c.problems)
    extra = c.keys(obj, "", "")
    if "schema" in obj and obj["schema"] not in KNOWN_SCHEMAS:
        c.bad("schema", f"unknown schema version {obj['schema']!r} "
                        f"(supported: {', '.join(KNOWN_SCHEMAS)})")
    eid = c.string(obj["episode_id"], "episode_id") if "episode_id" in obj else None
    task = c.string(obj["task_type"], "task_type") if "task_type" in obj else None
    score = obj.get("score")
    if score is not None:
        score = c.number(score, "score")
    elif "score" in obj and obj.get("schema") == SCHEMA_V1:
        c.bad("score", f"expected a number, got null (a null score needs schema {SCHEMA_VERSION!r})")
    budget = obj.get("budget")
    if budget is not None:
        budget = c.number(budget, "budget")
        if budget is not None and budget <= 0:
            c.bad("budget", f"must be > 0 or null, got {budget}")
    srange = _parse_score_range(c, obj["score_range"], score) if obj.get("score_range") is not None else None
    models = _parse_models(c, obj["models"], pool_models) if "models" in obj else None
    turns: list[Turn | None] = []
    if "turns" in obj:
        ts = obj["turns"]
        if not isinstance(ts, list):
            c.bad("turns", f"expected an array, got {_typename(ts)}")
        elif not ts:
            c.bad("turns", "must contain at least one turn")
        else:
            mset = set(models) if models is not None else None
            turns = [_parse_turn(c, t, i, mset) for i, t in enumerate(ts)]
    source = obj.get("source")
    if source is not None:
        source = c.string(source, "source")
    meta = c.meta(obj["meta"], "meta") if obj.get("meta") is not None else None
    if c.problems:
        raise LogFormatError(c.problems)
    if obj["schema"] == SCHEMA_V1 and isinstance(meta, dict) and meta.get("unscored") is True:
        score = None  # v1 had no null score: unscored episodes carried a placeholder and this flag
    ep = Episode(eid, task, score, budget, tuple(models), tuple(turns), srange, source, meta, extra)
    return ep, c.unknown


__all__ = ["SCHEMA_V1", "SCHEMA_VERSION", "KNOWN_SCHEMAS", "SEVERITIES", "LEVELS", "LogFormatError",
           "UnknownFieldsWarning", "TurnError", "Turn", "Episode", "parse_record"]
