"""The proxy's resource limits (one ``Limits`` per app), the start-up check of the log path, and
request bodies decoded off the event loop.

Every limit has a ``mtrouter serve`` flag (``live/server/options.py``) and is documented in
docs/live.md ("Limits"). They bound what one client can make the proxy hold: bytes and JSON
objects per body, open conversations (in all and per tenant), turns per conversation, the time a
turn may take (all fallbacks and retries together) and how long an idle conversation stays open.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from mtrouter_jax.core.errors import UsageError
from mtrouter_jax.live.server.api import ApiError, json_containers, parse_json

MAX_BODY_BYTES = 64 * 2**20
# Bodies up to this size are decoded inline (a thread hop costs more than decoding them); larger
# ones in a worker thread, so the event loop keeps serving other requests meanwhile.
INLINE_BODY_BYTES = 256 * 2**10
# JSON containers ({ and [) a body may hold: 1M empty objects already take ~100 MB as Python
# objects (60 MB of "{}," took 1.5 GB). Counted on the bytes, before decoding (braces inside
# strings count too, so the count is an upper bound and never lets a bigger body through).
MAX_JSON_CONTAINERS = 1_000_000


@dataclass(frozen=True)
class Limits:
    """``max_open``: open conversations in all (a new one beyond is refused with 429, nothing is
    evicted); ``tenant_max_open``: per tenant (a key's own ``max_open`` wins); ``max_turns`` per
    conversation (409 beyond); ``turn_deadline`` seconds for a whole turn, fallbacks and retries
    included (504 beyond; 0 = none); ``idle_timeout`` seconds after which an idle conversation is
    logged unscored and dropped (0 = never); ``score_range``: the range finish scores must lie in
    when the client sends none (None: a scored finish must send its ``score_range``)."""

    max_open: int = 10_000
    tenant_max_open: int | None = None
    max_turns: int = 1000
    turn_deadline: float = 45.0
    idle_timeout: float = 3600.0
    max_body_bytes: int = MAX_BODY_BYTES
    score_range: tuple[float, float] | None = None

    def __post_init__(self):
        if self.max_open < 1 or (self.tenant_max_open is not None and self.tenant_max_open < 1):
            raise UsageError(f"--max-open and --tenant-max-open must be >= 1, got {self.max_open}, "
                             f"{self.tenant_max_open}")
        if self.max_turns < 1:
            raise UsageError(f"--max-turns must be >= 1, got {self.max_turns}")
        for flag, v in (("--turn-deadline", self.turn_deadline), ("--idle-timeout", self.idle_timeout)):
            if not math.isfinite(v) or v < 0:
                raise UsageError(f"{flag} must be a finite number of seconds >= 0 (0: none), got {v}")
        if self.max_body_bytes < 1:
            raise UsageError(f"--max-body-mb must be > 0, got {self.max_body_bytes / 2**20:g}")


def parse_score_range(text: str | None) -> tuple[float, float] | None:
    """``--score-range LO:HI`` (finite, lo < hi); raises UsageError naming the flag."""
    if text is None:
        return None
    try:
        lo, hi = (float(x) for x in text.replace(",", ":").split(":"))
    except ValueError:
        raise UsageError(f"--score-range: expected LO:HI (e.g. 0:1 or -100:100), got {text!r}") from None
    from mtrouter_jax.live.server.api import MAX_SCORE_ABS
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi and max(abs(lo), abs(hi)) <= MAX_SCORE_ABS):
        raise UsageError(f"--score-range: expected finite LO < HI within ±{MAX_SCORE_ABS:g}, got {text!r}")
    return lo, hi


class LogPathError(UsageError):
    """The episode log cannot be appended to (said at start-up, before any turn is served)."""


def check_log_writable(path: str | Path | None) -> None:
    """Raise LogPathError unless ``path`` (the ``--log`` file) can be created or appended to."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise LogPathError(f"--log {p}: is a directory, expected a JSONL file")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise LogPathError(f"--log {p}: its directory {parent} does not exist")
    try:
        existed = p.exists()
        with open(p, "a", encoding="utf-8"):
            pass
        if not existed:
            os.unlink(p)
    except OSError as e:
        raise LogPathError(f"--log {p}: cannot append to it ({e.strerror or e}); finished episodes would be "
                           "lost") from None


def _decode(raw: bytes, what: str) -> Any:
    containers = json_containers(raw)
    if containers > MAX_JSON_CONTAINERS:
        raise ApiError(413, f"{what} holds up to {containers} JSON objects/arrays, more than the proxy's limit of "
                            f"{MAX_JSON_CONTAINERS}", code="request_too_large")
    return parse_json(raw, what, containers)


async def decode_body(raw: bytes, what: str = "request body") -> Any:
    """``parse_json(raw)`` with the container guard; bodies over ``INLINE_BODY_BYTES`` are decoded in
    a worker thread (the event loop keeps answering other requests)."""
    if len(raw) <= INLINE_BODY_BYTES:
        return _decode(raw, what)
    return await anyio.to_thread.run_sync(_decode, raw, what)


__all__ = ["Limits", "LogPathError", "check_log_writable", "decode_body", "parse_score_range", "MAX_BODY_BYTES",
           "MAX_JSON_CONTAINERS", "INLINE_BODY_BYTES"]
