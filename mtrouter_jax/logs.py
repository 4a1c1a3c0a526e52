"""Trajectory JSONL format (``mtrouter-traj/1``): schema, validating reader, atomic writers.

One episode per line. This is the single interchange format for simulated, logged (imported)
and live episodes, so the reader is deliberately strict: unknown keys (typos), booleans used as
numbers, NaN/Infinity and inconsistent token counts are all rejected with a precise
``file:line: field: problem`` message, and a dataset is either fully valid or not returned at all.
See ``docs/formats_logs.md`` for the field-by-field description.
"""

from __future__ import annotations

import difflib
import fcntl
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

SCHEMA_VERSION = "mtrouter-traj/1"
KNOWN_SCHEMAS = (SCHEMA_VERSION,)
SEVERITIES = ("low", "medium", "high")

_EPISODE_REQUIRED = ("schema", "episode_id", "task_type", "score", "budget", "models", "turns")
_EPISODE_OPTIONAL = ("score_range", "source", "meta")
_TURN_REQUIRED = ("model", "input_tokens", "cached_tokens", "output_tokens", "cost", "tool",
                  "error", "propensity")
_TURN_OPTIONAL = ("observation", "action", "features", "meta")
_ERROR_KEYS = ("kind", "severity")


class LogFormatError(ValueError):
    """A trajectory log (or an in-memory episode) violates the schema.

    ``problems`` holds one ``{file}:{line}: {field}: {problem}`` string per problem; the
    exception message lists them (one per line).
    """

    def __init__(self, problems: Sequence[str], extra: int = 0):
        self.problems = list(problems)
        lines = list(self.problems)
        if extra > 0:
            lines.append(f"... and {extra} more")
        n = len(self.problems) + max(extra, 0)
        super().__init__(f"{n} problem(s) in trajectory log:\n" + "\n".join(lines))


@dataclass(frozen=True)
class TurnError:
    """An error detected in the observation that a turn produced."""

    kind: str
    severity: str  # one of SEVERITIES

    def to_dict(self) -> dict:
        return {"kind": self.kind, "severity": self.severity}


@dataclass(frozen=True)
class Turn:
    """One model call. ``features`` is stored as a tuple so that equality is structural."""

    model: str
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    cost: float
    tool: str | None
    error: TurnError | None
    propensity: float | None
    observation: str | None = None
    action: str | None = None
    features: tuple[float, ...] | None = None
    meta: dict | None = None

    def __post_init__(self):
        if self.features is not None and not isinstance(self.features, tuple):
            object.__setattr__(self, "features", tuple(self.features))

    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "model": self.model, "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens, "output_tokens": self.output_tokens,
            "cost": self.cost, "tool": self.tool,
            "error": None if self.error is None else self.error.to_dict(),
            "propensity": self.propensity,
        }
        for k in _TURN_OPTIONAL:
            v = getattr(self, k)
            if v is not None:
                d[k] = list(v) if k == "features" else v
        return d


@dataclass(frozen=True)
class Episode:
    """One episode. ``models`` / ``turns`` / ``score_range`` are normalised to tuples."""

    episode_id: str
    task_type: str
    score: float
    budget: float | None
    models: tuple[str, ...]
    turns: tuple[Turn, ...]
    score_range: tuple[float, float] | None = None
    source: str | None = None
    meta: dict | None = None

    def __post_init__(self):
        for k in ("models", "turns", "score_range"):
            v = getattr(self, k)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, k, tuple(v))

    @property
    def total_cost(self) -> float:
        """Sum of the per-turn costs (USD)."""
        return float(sum(t.cost for t in self.turns))

    def to_dict(self) -> dict:
        """JSON-ready dict (the on-disk record); optional fields that are None are omitted."""
        d: dict[str, Any] = {
            "schema": SCHEMA_VERSION, "episode_id": self.episode_id, "task_type": self.task_type,
            "score": self.score, "budget": self.budget, "models": list(self.models),
            "turns": [t.to_dict() for t in self.turns],
        }
        if self.score_range is not None:
            d["score_range"] = list(self.score_range)
        if self.source is not None:
            d["source"] = self.source
        if self.meta is not None:
            d["meta"] = self.meta
        return d


# ----------------------------------------------------------------------------- validation

class _Checker:
    """Collects problems for one record; each check returns the cleaned value or None."""

    def __init__(self, where: str, line: int):
        self.where, self.line, self.problems = where, line, []

    def bad(self, field: str, problem: str) -> None:
        self.problems.append(f"{self.where}:{self.line}: {field}: {problem}")

    def keys(self, obj: dict, prefix: str, required: Sequence[str], optional: Sequence[str]) -> None:
        allowed = tuple(required) + tuple(optional)
        for k in required:
            if k not in obj:
                self.bad(prefix + k, "missing required field")
        for k in obj:
            if k not in allowed:
                hint = difflib.get_close_matches(str(k), allowed, n=1)
                msg = f"unknown field {k!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                self.bad(prefix + str(k), msg + f"; allowed: {', '.join(allowed)}")

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
        try:  # free-form, but must survive a strict re-serialisation (no NaN, no sets...)
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError) as e:
            self.bad(field, f"not strictly JSON-serialisable ({e})")
            return None
        return v


def _typename(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, str):
        return f"string {v[:40]!r}"
    return {dict: "object", list: "array", int: "integer", float: "number"}.get(
        type(v), type(v).__name__)


def _parse_turn(c: _Checker, t: Any, i: int, models: set[str] | None) -> Turn | None:
    p = f"turns[{i}]."
    if not isinstance(t, dict):
        c.bad(f"turns[{i}]", f"expected an object, got {_typename(t)}")
        return None
    n0 = len(c.problems)
    c.keys(t, p, _TURN_REQUIRED, _TURN_OPTIONAL)
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
    err = None
    e = t.get("error")
    if e is not None:
        if not isinstance(e, dict):
            c.bad(p + "error", f"expected null or an object, got {_typename(e)}")
        else:
            c.keys(e, p + "error.", _ERROR_KEYS, ())
            kind = c.string(e.get("kind"), p + "error.kind") if "kind" in e else None
            sev = e.get("severity")
            if "severity" in e and sev not in SEVERITIES:
                c.bad(p + "error.severity",
                      f"unknown severity {sev!r} (expected one of {', '.join(SEVERITIES)})")
            elif kind is not None:
                err = TurnError(kind, sev)
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
            opt["features"] = tuple(c.number(x, f"{p}features[{j}]") for j, x in enumerate(f))
    if t.get("meta") is not None:
        opt["meta"] = c.meta(t["meta"], p + "meta")
    if len(c.problems) > n0:
        return None
    return Turn(model, tok["input_tokens"], tok["cached_tokens"], tok["output_tokens"], cost,
                tool, err, prop, **opt)


def parse_episode(obj: Any, where: str = "<input>", line: int = 0,
                  pool_models: set[str] | None = None) -> Episode:
    """Validate one decoded JSON record and build an :class:`Episode`.

    All problems of the record are collected and raised together as :class:`LogFormatError`.
    With ``pool_models``, every entry of ``models`` must belong to that pool.
    """
    c = _Checker(where, line)
    if not isinstance(obj, dict):
        c.bad("<root>", f"expected a JSON object, got {_typename(obj)}")
        raise LogFormatError(c.problems)
    c.keys(obj, "", _EPISODE_REQUIRED, _EPISODE_OPTIONAL)
    if "schema" in obj and obj["schema"] not in KNOWN_SCHEMAS:
        c.bad("schema", f"unknown schema version {obj['schema']!r} "
                        f"(supported: {', '.join(KNOWN_SCHEMAS)})")
    eid = c.string(obj["episode_id"], "episode_id") if "episode_id" in obj else None
    task = c.string(obj["task_type"], "task_type") if "task_type" in obj else None
    score = c.number(obj["score"], "score") if "score" in obj else None
    budget = obj.get("budget")
    if budget is not None:
        budget = c.number(budget, "budget")
        if budget is not None and budget <= 0:
            c.bad("budget", f"must be > 0 or null, got {budget}")
    srange = obj.get("score_range")
    if srange is not None:
        if not isinstance(srange, list) or len(srange) != 2:
            c.bad("score_range", f"expected [lo, hi], got {_typename(srange)}")
            srange = None
        else:
            lo, hi = (c.number(x, f"score_range[{j}]") for j, x in enumerate(srange))
            srange = None
            if lo is not None and hi is not None:
                if lo >= hi:
                    c.bad("score_range", f"needs lo < hi, got [{lo}, {hi}]")
                else:
                    srange = (lo, hi)
                    if score is not None and not lo <= score <= hi:
                        c.bad("score", f"{score} outside score_range [{lo}, {hi}]")
    models: list[str] | None = None
    m = obj.get("models")
    if "models" in obj:
        if not isinstance(m, list) or not m:
            c.bad("models", f"expected a non-empty array of strings, got {_typename(m)}"
                  if not isinstance(m, list) else "must not be empty")
        else:
            models = [c.string(x, f"models[{j}]") for j, x in enumerate(m)]
            seen: set[str] = set()
            for j, x in enumerate(models):
                if x is None:
                    continue
                if x in seen:
                    c.bad(f"models[{j}]", f"duplicate model {x!r}")
                seen.add(x)
                if pool_models is not None and x not in pool_models:
                    c.bad(f"models[{j}]", f"unknown model {x!r} "
                                          f"(pool has: {', '.join(sorted(pool_models))})")
            if any(x is None for x in models):
                models = None
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
    return Episode(eid, task, score, budget, tuple(models), tuple(turns), srange, source, meta)


# ----------------------------------------------------------------------------- reading

class _DuplicateKey(ValueError):
    pass


def _no_dup_pairs(pairs: list[tuple[str, Any]]) -> dict:
    # json silently keeps the last of duplicated keys; a duplicated key is almost always a bug.
    d: dict = {}
    for k, v in pairs:
        if k in d:
            raise _DuplicateKey(f"duplicate key {k!r}")
        d[k] = v
    return d


def _decode_line(raw: bytes, where: str, lineno: int, pool: set[str] | None) -> Episode:
    def root(problem: str) -> LogFormatError:
        return LogFormatError([f"{where}:{lineno}: <root>: {problem}"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise root(f"invalid UTF-8 ({e})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_dup_pairs)
    except _DuplicateKey as e:
        raise root(str(e)) from None
    except json.JSONDecodeError as e:
        # Writers always end records with a newline, so an unparsable last line without one
        # is (almost surely) a record cut short by a crash: say so.
        trunc = not raw.endswith(b"\n")
        raise root(("truncated line (no trailing newline), " if trunc else "")
                   + f"invalid JSON: {e}") from None
    return parse_episode(obj, where, lineno, pool)


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if raw.strip():
                yield lineno, raw


def _as_paths(paths: str | os.PathLike | Sequence) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = [Path(p) for p in paths]
    for p in out:
        if not p.is_file():
            raise FileNotFoundError(f"trajectory log not found: {p}")
    return out


def read_episodes(paths: str | os.PathLike | Sequence, pool_models: set[str] | None = None,
                  max_problems: int = 50) -> list[Episode]:
    """Read and validate every line of every file; all-or-nothing.

    Blank lines are skipped. If any line is bad (or an ``episode_id`` repeats across the
    inputs), one :class:`LogFormatError` lists up to ``max_problems`` problems.
    Raises FileNotFoundError (naming the path) before reading anything if a file is missing.
    """
    files = _as_paths(paths)
    episodes: list[Episode] = []
    problems: list[str] = []
    first_seen: dict[str, str] = {}
    for path in files:
        for lineno, raw in _iter_lines(path):
            try:
                ep = _decode_line(raw, str(path), lineno, pool_models)
            except LogFormatError as e:
                problems.extend(e.problems)
                continue
            if ep.episode_id in first_seen:
                problems.append(f"{path}:{lineno}: episode_id: duplicate episode id "
                                f"{ep.episode_id!r} (first seen at {first_seen[ep.episode_id]})")
                continue
            first_seen[ep.episode_id] = f"{path}:{lineno}"
            episodes.append(ep)
    if problems:
        raise LogFormatError(problems[:max_problems], extra=len(problems) - max_problems)
    return episodes


def iter_episodes(path: str | os.PathLike, pool_models: set[str] | None = None) -> Iterator[Episode]:
    """Stream episodes from one file; raises LogFormatError at the first bad line."""
    (p,) = _as_paths(path)
    first_seen: dict[str, int] = {}
    for lineno, raw in _iter_lines(p):
        ep = _decode_line(raw, str(p), lineno, pool_models)
        if ep.episode_id in first_seen:
            raise LogFormatError([f"{p}:{lineno}: episode_id: duplicate episode id "
                                  f"{ep.episode_id!r} (first seen at {p}:{first_seen[ep.episode_id]})"])
        first_seen[ep.episode_id] = lineno
        yield ep


# ----------------------------------------------------------------------------- writing

def _serialise(episodes: Iterable[Episode] | Episode, where: str) -> bytes:
    """Validate every episode (via its own dict) and return the JSONL bytes."""
    if isinstance(episodes, Episode):
        episodes = [episodes]
    lines, problems = [], []
    for i, ep in enumerate(episodes):
        if not isinstance(ep, Episode):
            raise TypeError(f"expected Episode, got {type(ep).__name__}")
        d = ep.to_dict()
        try:
            parse_episode(d, where, i)
        except LogFormatError as e:
            problems.extend(e.problems)
            continue
        lines.append(json.dumps(d, allow_nan=False, separators=(",", ":"), ensure_ascii=False))
    if problems:  # nothing is written if any episode of the batch is invalid
        raise LogFormatError(problems)
    return "".join(line + "\n" for line in lines).encode("utf-8")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # a regular-file write is normally complete; loop only for safety
        n = os.write(fd, view)
        view = view[n:]


def _last_byte(path: Path) -> bytes | None:
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return None
        fh.seek(size - 1)
        return fh.read(1)


def append_episodes(path: str | os.PathLike, episodes: Iterable[Episode] | Episode) -> None:
    """Append episodes to a JSONL log, safe under concurrent writers.

    Everything is validated first (nothing is written if any episode is invalid); the batch is
    then written with one ``os.write`` on an ``O_APPEND`` fd held under an exclusive ``flock``
    (so threads/processes never interleave lines) and fsync'ed.
    """
    path = Path(path)
    data = _serialise(episodes, f"<append to {path}>")
    if not data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            # If a previous writer died mid-line, start on a fresh line so that only the old
            # partial line is bad (the reader reports it as truncated), not our record too.
            if _last_byte(path) not in (None, b"\n"):
                data = b"\n" + data
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def write_episodes(path: str | os.PathLike, episodes: Iterable[Episode]) -> None:
    """Write a fresh JSONL file atomically (temp file in the same dir + ``os.replace``)."""
    path = Path(path)
    data = _serialise(episodes, f"<write to {path}>")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _write_all(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise


def episode_from_dict(obj: dict) -> Episode:
    """Convenience: validate a dict (e.g. from ``Episode.to_dict``) into an Episode."""
    return parse_episode(obj)


__all__ = ["SCHEMA_VERSION", "SEVERITIES", "LogFormatError", "TurnError", "Turn", "Episode",
           "parse_episode", "read_episodes", "iter_episodes", "append_episodes", "write_episodes",
           "episode_from_dict"]


def drop_unscored(episodes: Iterable[Episode]) -> tuple[list[Episode], int]:
    """Episodes whose terminal score is known, and how many were dropped.

    Live episodes that ended without a reported score are logged with ``meta.unscored = true``
    (and a placeholder score); training on them would teach the estimator a fake outcome.
    """
    kept, dropped = [], 0
    for e in episodes:
        if isinstance(e.meta, dict) and e.meta.get("unscored"):
            dropped += 1
        else:
            kept.append(e)
    return kept, dropped
