"""Non-streaming upstream chat calls straight over one aiohttp session (the proxy's hot path).

``openai.AsyncOpenAI.post`` builds an httpx request (URL parsing, header merging, auth hooks) on
top of its aiohttp transport: at 200 conversations in flight that cost ~1.0 ms of CPU per call
against ~0.3 ms for the same POST on aiohttp alone (docs/benchmarks.md, "Proxy CPU per request").
This module does that POST itself and keeps the client's contract: one JSON body, the bearer key,
the same timeouts (connect, pool and per-read, as the openai aiohttp transport maps them) and the
same retry rule as ``openai`` (timeouts, refused connections, 408/409/429/5xx; ``x-should-retry``
obeyed; ``Retry-After``/``retry-after-ms`` up to 120 s honoured, longer ones not retried;
otherwise 0.5 s x 2^n backoff, at most 8 s, minus up to 25 % jitter). Streams still go through
the openai client (``backends.aopen_stream``).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import time
from dataclasses import dataclass

import aiohttp

from mtrouter_jax.core.jsonfast import dumps_compact

log = logging.getLogger("mtrouter_jax.live")

INITIAL_RETRY_DELAY, MAX_RETRY_DELAY, MAX_RETRY_AFTER_DELAY = 0.5, 8.0, 120.0  # openai's constants
_RETRY_STATUS = {408, 409, 429}


class CallTimeout(Exception):
    """The upstream did not connect or answer within the timeout (after the retries)."""


class CallConnectionError(Exception):
    """The connection failed (refused, reset, DNS) after the retries; ``cause`` names why."""

    def __init__(self, cause: BaseException):
        super().__init__(f"connection failed ({type(cause).__name__})")
        self.cause = cause


@dataclass
class Reply:
    status: int
    headers: dict  # lower-case names
    body: bytes


def ssl_context():
    """The TLS context the openai aiohttp transport uses (httpx's: certifi and SSL_CERT_FILE/DIR)."""
    try:
        import httpx
        return httpx.create_ssl_context()
    except (ImportError, AttributeError):  # an httpx without it: aiohttp's default verification
        return True


def dumps_body(payload: dict, finite: bool = False) -> bytes:
    """The request body as the openai client encodes it (compact, UTF-8, no NaN; ``finite``: the
    caller knows it holds none, ``jsonfast.dumps_compact``)."""
    return dumps_compact(payload, "raise", finite)


def json_or_none(body: bytes):
    """An error reply's JSON body, None for a non-JSON error page."""
    try:
        return json.loads(body)
    except Exception:  # noqa: BLE001
        return None


def retry_after(headers: dict) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms``, then ``retry-after`` as seconds or a date)."""
    for name, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            delay = float(value)
        except ValueError:
            continue
        if delay == math.inf and value.strip().lower() not in ("inf", "+inf", "infinity", "+infinity"):
            return MAX_RETRY_AFTER_DELAY + 1  # an overflowing number: an excessive delay, not retried
        return delay / divisor
    try:
        when = email.utils.parsedate_tz(headers.get("retry-after"))
        return None if when is None else email.utils.mktime_tz(when) - time.time()
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def should_retry(status: int, headers: dict) -> bool:
    after = retry_after(headers)
    if after is not None and math.isfinite(after) and after > MAX_RETRY_AFTER_DELAY:
        return False
    explicit = headers.get("x-should-retry")
    if explicit in ("true", "false"):
        return explicit == "true"
    return status in _RETRY_STATUS or status >= 500


def retry_delay(retries_taken: int, headers: dict | None) -> float:
    after = retry_after(headers) if headers is not None else None
    if after is not None and math.isfinite(after) and 0 < after <= MAX_RETRY_AFTER_DELAY:
        return after
    return min(INITIAL_RETRY_DELAY * 2.0 ** min(retries_taken, 1000), MAX_RETRY_DELAY) * (1 - 0.25 * random.random())


class AioChat:
    """POSTs to ``{base_url}/chat/completions`` of one endpoint; the session is made on first use
    (on the running loop) and shared by every endpoint of a ``Backends``."""

    def __init__(self, session_factory, base_url: str, key: str, timeout: float, max_retries: int):
        self._session_factory = session_factory
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                        "Accept": "application/json", "User-Agent": "mtrouter-jax"}
        self.timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout, sock_read=timeout)
        self.max_retries = max(int(max_retries), 0)

    async def post(self, body: bytes) -> Reply:
        """The final reply (any status: a 4xx/5xx left after the retries is returned, not raised);
        raises ``CallTimeout`` / ``CallConnectionError`` when no reply came."""
        session = self._session_factory()
        for taken in range(self.max_retries + 1):
            left = self.max_retries - taken
            try:
                async with session.post(self.url, data=body, headers=self.headers, timeout=self.timeout,
                                        allow_redirects=False) as r:
                    reply = Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read())
            except asyncio.TimeoutError:
                if left > 0:
                    await self._sleep(taken, None)
                    continue
                raise CallTimeout() from None
            except aiohttp.ClientError as e:
                if left > 0:
                    await self._sleep(taken, None)
                    continue
                raise CallConnectionError(e) from None
            if reply.status >= 400 and left > 0 and should_retry(reply.status, reply.headers):
                await self._sleep(taken, reply.headers)
                continue
            return reply
        raise AssertionError("unreachable")  # the last attempt returns or raises

    async def _sleep(self, taken: int, headers: dict | None) -> None:
        delay = retry_delay(taken, headers)
        log.info("retrying upstream %s in %.2f s (retry %d of %d)", self.url, delay, taken + 1, self.max_retries)
        await asyncio.sleep(delay)


class DirectCalls:
    """The callers of a ``Backends``: one ``AioChat`` per (base URL, key), one session for all of
    them, made on first use on the running loop (its pool: ``backends.UPSTREAM_LIMITS``)."""

    def __init__(self, timeout: float, max_retries: int, ssl_context, limits):
        self.timeout, self.max_retries, self._ssl, self._limits = timeout, max_retries, ssl_context, limits
        self._callers: dict[tuple[str, str], AioChat] = {}
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                limit=self._limits.max_connections, keepalive_timeout=self._limits.keepalive_expiry, ssl=self._ssl()))
        return self._session

    async def post(self, endpoint: tuple[str, str], body: bytes) -> Reply:
        caller = self._callers.get(endpoint)
        if caller is None:
            caller = self._callers[endpoint] = AioChat(self.session, *endpoint, self.timeout, self.max_retries)
        return await caller.post(body)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


__all__ = ["AioChat", "DirectCalls", "Reply", "CallTimeout", "CallConnectionError", "dumps_body", "should_retry", "retry_delay"]
