"""Trajectory JSONL logs (``mtrouter-traj/2``; ``/1`` is read too): reading, atomic writing.

One episode per line. This is the single interchange format for simulated, logged (imported)
and live episodes. Fields the schema knows are validated strictly (``file:line: field: problem``;
a dataset is either fully valid or not returned at all); fields it does not know are kept in the
records' ``extra`` and written back, with one :class:`UnknownFieldsWarning` per file
(``strict=True`` rejects them). Records and the parser live in :mod:`mtrouter_jax.logs.schema`
and are re-exported here. See ``docs/formats_logs.md``.
"""

from __future__ import annotations

import difflib
import fcntl
import json
import os
import re
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from mtrouter_jax.core.jsonfast import dumps_compact
from mtrouter_jax.logs.schema import (KNOWN_SCHEMAS, LEVELS, SCHEMA_V1, SCHEMA_VERSION, SEVERITIES, Episode,
                                      LogFormatError, Turn, TurnError, UnknownFieldsWarning, parse_record)
from mtrouter_jax.logs.records import DuplicateEpisodesWarning


def parse_episode(obj: Any, where: str = "<input>", line: int = 0,
                  pool_models: set[str] | None = None, strict: bool = False) -> Episode:
    """Validate one decoded JSON record and build an :class:`Episode`.

    All problems of the record are collected and raised together as :class:`LogFormatError`.
    With ``pool_models``, every entry of ``models`` must belong to that pool. Unknown keys are
    kept in ``extra`` (one :class:`UnknownFieldsWarning`), or are errors with ``strict=True``.
    """
    ep, unknown = parse_record(obj, where, line, pool_models, strict)
    if unknown:
        warnings.warn(unknown_fields_message(where, {k: 1 for k in unknown}, unknown, 1),
                      UnknownFieldsWarning, stacklevel=2)
    return ep


def unknown_fields_message(where: str, lines: dict, occurrences: dict, n_records: int,
                           max_keys: int = 20) -> str:
    """One summary line for the unknown keys kept from ``n_records`` lines of ``where``.

    ``lines`` / ``occurrences`` map ``(level, key)`` to the number of lines carrying it / its count.
    """
    items = sorted(lines, key=lambda k: (-lines[k], k))
    parts = []
    for level, key in items[:max_keys]:
        hint = difflib.get_close_matches(key, LEVELS[level], n=1)
        n_occ = occurrences[(level, key)]
        per = f", {n_occ} occurrences" if n_occ != lines[(level, key)] else ""
        parts.append(f"{level}{key} ({lines[(level, key)]} of {n_records} line(s){per}"
                     + (f"; did you mean {hint[0]!r}?)" if hint else ")"))
    if len(items) > max_keys:
        parts.append(f"... and {len(items) - max_keys} more")
    return (f"{where}: kept {len(items)} unknown field(s), written back unchanged "
            f"(Episode.extra / Turn.extra / TurnError.extra; strict=True rejects them): "
            + ", ".join(parts))


class _UnknownTally:
    """Unknown keys kept from one file, for its single summary warning."""

    def __init__(self, where: str):
        self.where, self.n_lines = where, 0
        self.lines: Counter = Counter()  # (level, key) -> lines carrying it
        self.occurrences: Counter = Counter()

    def add(self, unknown: Counter) -> None:
        self.n_lines += 1
        for k, n in unknown.items():
            self.lines[k] += 1
            self.occurrences[k] += n

    def warn(self, stacklevel: int) -> None:
        if self.lines:
            warnings.warn(unknown_fields_message(self.where, self.lines, self.occurrences, self.n_lines),
                          UnknownFieldsWarning, stacklevel=stacklevel + 1)


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


def _decode_line(raw: bytes, where: str, lineno: int, pool: set[str] | None,
                 strict: bool) -> tuple[Episode, Counter]:
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
    return parse_record(obj, where, lineno, pool, strict)


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if raw.strip():
                yield lineno, raw


def expand_paths(paths: str | os.PathLike | Sequence, suffix: str, *, recursive: bool = False,
                 empty_dir_ok: bool = False, missing: str = "trajectory log not found") -> list[Path]:
    """The files named in ``paths``; a directory stands for its files ending in ``suffix`` (below it
    with ``recursive``), by name. FileNotFoundError (``missing``: PATH) for a path that is not there,
    and, unless ``empty_dir_ok``, for a directory without such a file."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in (p.rglob if recursive else p.glob)("*" + suffix) if f.is_file())
            if not found and not empty_dir_ok:
                raise FileNotFoundError(f"no trajectory logs (*{suffix}) in the directory {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:  # an input the user named that is not there is a usage error, not data
            raise FileNotFoundError(f"{missing}: {p}")
    return out


def _as_paths(paths: str | os.PathLike | Sequence, dirs: bool = True) -> list[Path]:
    """The log files named; with ``dirs``, a directory stands for its ``*.jsonl`` files, by name
    (per-replica logs: ``mtrouter train --data logs/``)."""
    if dirs:
        return expand_paths(paths, ".jsonl")
    out = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    for p in out:
        if not p.is_file():
            raise FileNotFoundError(f"trajectory log not found: {p}")
    return out


def read_episodes(paths: str | os.PathLike | Sequence, pool_models: set[str] | None = None,
                  max_problems: int = 50, strict: bool = False) -> list[Episode]:
    """Read and validate every line of every file; all-or-nothing.

    Blank lines are skipped. If any line is bad, one :class:`LogFormatError` lists up to
    ``max_problems`` problems. An ``episode_id`` that repeats (a restarted proxy, two logs of the
    same run) keeps its first record, with one :class:`DuplicateEpisodesWarning` naming where;
    ``strict=True`` makes a repeat a problem instead.
    A directory stands for its ``*.jsonl`` files, in name order (so a repeat keeps the record of
    the file first by name). Raises FileNotFoundError (naming the path) before reading anything if
    a file is missing.
    Unknown fields are kept (``extra``) with one :class:`UnknownFieldsWarning` per file that has
    them; ``strict=True`` reports them as problems instead.
    """
    files = _as_paths(paths)
    episodes: list[Episode] = []
    problems: list[str] = []
    first_seen: dict[str, str] = {}
    duplicates: list[str] = []
    tallies = []
    for path in files:
        tally = _UnknownTally(str(path))
        tallies.append(tally)
        for lineno, raw in _iter_lines(path):
            try:
                ep, unknown = _decode_line(raw, str(path), lineno, pool_models, strict)
            except LogFormatError as e:
                problems.extend(e.problems)
                continue
            tally.add(unknown)
            if ep.episode_id in first_seen:
                dup = (f"{path}:{lineno}: episode_id: duplicate episode id "
                       f"{ep.episode_id!r} (first seen at {first_seen[ep.episode_id]})")
                (problems if strict else duplicates).append(dup)
                continue
            first_seen[ep.episode_id] = f"{path}:{lineno}"
            episodes.append(ep)
    if problems:
        raise LogFormatError(problems[:max_problems], extra=len(problems) - max_problems)
    for tally in tallies:  # only once the data is usable: with problems, those come first
        tally.warn(stacklevel=2)
    _warn_duplicates(duplicates)
    return episodes


def _warn_duplicates(duplicates: list[str]) -> None:
    if duplicates:
        more = f" (and {len(duplicates) - 3} more)" if len(duplicates) > 3 else ""
        warnings.warn(f"{len(duplicates)} repeated episode id(s) skipped, the first record of each kept: "
                      + "; ".join(duplicates[:3]) + more + " — pass --strict to refuse such logs",
                      DuplicateEpisodesWarning, stacklevel=3)


def iter_episodes(path: str | os.PathLike, pool_models: set[str] | None = None,
                  strict: bool = False) -> Iterator[Episode]:
    """Stream episodes from one file; raises LogFormatError at the first bad line.

    Memory stays bounded by one line plus the set of episode ids seen (for the duplicate check).
    The file's :class:`UnknownFieldsWarning` (if any) comes when the iteration ends or is closed.
    """
    (p,) = _as_paths(path, dirs=False)
    first_seen: dict[str, int] = {}
    duplicates: list[str] = []
    tally = _UnknownTally(str(p))
    try:
        for lineno, raw in _iter_lines(p):
            ep, unknown = _decode_line(raw, str(p), lineno, pool_models, strict)
            if ep.episode_id in first_seen:
                dup = (f"{p}:{lineno}: episode_id: duplicate episode id "
                       f"{ep.episode_id!r} (first seen at {p}:{first_seen[ep.episode_id]})")
                if strict:
                    raise LogFormatError([dup])
                duplicates.append(dup)
                continue
            first_seen[ep.episode_id] = lineno
            tally.add(unknown)
            yield ep
    except GeneratorExit:  # the consumer stopped early: still report what was kept so far
        tally.warn(stacklevel=2)
        _warn_duplicates(duplicates)
        raise
    tally.warn(stacklevel=2)
    _warn_duplicates(duplicates)


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
            parse_record(d, where, i)  # unknown keys here are the episodes' own extras
        except LogFormatError as e:
            problems.extend(e.problems)
            continue
        lines.append(dumps_compact(d, "raise"))
    if problems:  # nothing is written if any episode of the batch is invalid
        raise LogFormatError(problems)
    return b"".join(line + b"\n" for line in lines)


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


def id_safe(text: str) -> str:
    """``text`` as episode ids spell it: every run of characters outside ``[A-Za-z0-9.+:_-]`` becomes
    one ``_`` (a router name such as ``safe[ckpt]@1a2b3c4d`` in a ScienceWorld run's ids)."""
    return re.sub(r"[^A-Za-z0-9.+:_-]+", "_", text)


def episode_line(episode: Episode) -> bytes:
    """``episode`` validated and encoded as one log line (without its newline), the bytes
    ``append_episodes`` writes for it (raises ``LogFormatError``)."""
    return _serialise(episode, f"<episode {episode.episode_id!r}>")[:-1]


def append_episodes(path: str | os.PathLike, episodes: Iterable[Episode] | Episode) -> None:
    """Append episodes to a JSONL log, safe under concurrent writers.

    Everything is validated first (nothing is written if any episode is invalid); the batch is
    then written with one ``os.write`` on an ``O_APPEND`` fd held under an exclusive ``flock``
    (so threads/processes never interleave lines) and fsync'ed.
    """
    path = Path(path)
    append_lines(path, _serialise(episodes, f"<append to {path}>"))


def append_lines(path: str | os.PathLike, data: bytes) -> None:
    """Append ``data`` (whole lines: ``episode_line`` bytes, each ending in a newline) to a JSONL log
    the way ``append_episodes`` does: one write under an exclusive ``flock``, fsync'ed."""
    if not data:
        return
    path = Path(path)
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


def episode_from_dict(obj: dict, strict: bool = False) -> Episode:
    """Convenience: validate a dict (e.g. from ``Episode.to_dict``) into an Episode."""
    return parse_episode(obj, strict=strict)


def drop_unscored(episodes: Iterable[Episode]) -> tuple[list[Episode], int]:
    """Episodes whose terminal score is known, and how many were dropped.

    Unscored episodes have ``score=None`` (``mtrouter-traj/2``; ``/1`` files mark them with
    ``meta.unscored = true``, mapped to None on read). Episodes that still carry that legacy flag
    with a placeholder score (writers that predate v2) are dropped too: training on them would
    teach the estimator a fake outcome.
    """
    kept, dropped = [], 0
    for e in episodes:
        if e.score is None or (isinstance(e.meta, dict) and e.meta.get("unscored") is True):
            dropped += 1
        else:
            kept.append(e)
    return kept, dropped


__all__ = ["SCHEMA_VERSION", "SCHEMA_V1", "KNOWN_SCHEMAS", "SEVERITIES", "LogFormatError", "DuplicateEpisodesWarning",
           "UnknownFieldsWarning", "TurnError", "Turn", "Episode", "parse_episode", "read_episodes",
           "iter_episodes", "append_episodes", "append_lines", "episode_line", "write_episodes", "episode_from_dict",
           "drop_unscored", "expand_paths", "id_safe"]
