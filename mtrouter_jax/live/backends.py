"""Upstream OpenAI-compatible endpoints of the pool: the official ``openai`` clients, one per endpoint.

Calls go through the client (its timeout and retries), with the request body passed through as
is (``tools``, ``response_format`` and any other field travel untouched). A call that still fails
with a timeout, a refused connection, 408/409/429 or a 5xx is *retryable on another model*:
:func:`call_with_fallback` (or :func:`acall_with_fallback`) then tries the next model of the
decision's ranking. Keys are read from the environment variables the pool names and are never logged.

The proxy uses the ``async`` methods (``achat``, ``aopen_stream``: ``openai.AsyncOpenAI`` on the
server's event loop, so an in-flight upstream call costs a socket, not a thread); library callers
(ScienceWorld runs) use the blocking ``chat``/``open_stream``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Sequence

import httpx
import openai

from mtrouter_jax.core import jsonfast
from mtrouter_jax.core.pool import Pool

log = logging.getLogger("mtrouter_jax.live")

EMPTY_KEY = "EMPTY"  # what local OpenAI-compatible servers (vLLM, llama.cpp) accept
_FALLBACK_STATUS = {408, 409, 429}
# Upstream connection pool of the async clients: openai's default keeps only 100 idle connections,
# so more concurrent conversations than that would reconnect on every call. An idle connection
# is dropped after 4 s, before common servers' 5 s keep-alive timeout closes it under our feet.
UPSTREAM_LIMITS = httpx.Limits(max_connections=2048, max_keepalive_connections=1024, keepalive_expiry=4.0)


def async_http_client():
    """The async clients' transport: aiohttp when installed (``openai[aiohttp]``), else httpx.

    Measured on 2 cores (docs/benchmarks.md): per upstream call the httpx pool cost 1.0 ms of CPU
    with one call in flight and 1.9-3.8 ms with 200 (it scans every pooled connection per request);
    the aiohttp transport 0.9-1.0 ms at both.
    """
    try:
        return openai.DefaultAioHttpClient(limits=UPSTREAM_LIMITS)
    except (AttributeError, RuntimeError):  # openai without the aiohttp extra
        return openai.DefaultAsyncHttpxClient(limits=UPSTREAM_LIMITS)


class BackendConfigError(ValueError):
    """A pool model cannot be called (no endpoint, missing API key variable)."""


class UpstreamError(Exception):
    """An upstream call failed after the client's retries.

    ``retryable`` errors (timeout, connection, 408/409/429/5xx) make the router try the next model;
    others (e.g. 400 for a bad request) are returned to the caller with ``status`` and ``body``.
    """

    def __init__(self, model: str, kind: str, message: str, status: int | None = None,
                 body: Any = None, retryable: bool = True):
        super().__init__(f"{model}: {kind}: {message}")
        self.model, self.kind, self.message = model, kind, message
        self.status, self.body, self.retryable = status, body, retryable


def _wrap(model: str, e: Exception) -> UpstreamError:
    if isinstance(e, openai.APITimeoutError):
        return UpstreamError(model, "timeout", "upstream timed out")
    if isinstance(e, openai.APIConnectionError):
        return UpstreamError(model, "connection", f"connection failed ({type(e.__cause__).__name__})")
    if isinstance(e, openai.APIStatusError):
        st = e.response.status_code
        try:
            body = e.response.json()
        except Exception:  # noqa: BLE001 - non-JSON error pages
            body = None
        return UpstreamError(model, f"http_{st}", f"upstream returned HTTP {st}", st, body,
                             retryable=st in _FALLBACK_STATUS or st >= 500)
    if isinstance(e, (json.JSONDecodeError, ValueError)):
        return UpstreamError(model, "bad_response", f"upstream sent an unreadable response ({e})")
    raise e


SSE_DONE = object()  # the end-of-stream marker (``data: [DONE]``)


def sse_payload(line: str, model: str) -> Any:
    """The decoded ``data:`` payload of one server-sent-events line: a dict, ``SSE_DONE`` at the end,
    or None for lines to skip (comments, blanks, malformed JSON — logged)."""
    if not line or not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return SSE_DONE
    try:
        return json.loads(data)
    except json.JSONDecodeError:
        log.warning("skipping malformed SSE line from %s", model)
        return None


@dataclass
class StreamCall:
    """An open upstream SSE stream: iterate ``events()`` for decoded chunks, then ``close()``."""

    model: str
    _cm: Any
    _resp: Any
    _lines: Iterator[str] = field(init=False)

    def __post_init__(self):
        self._lines = self._resp.iter_lines()

    def events(self) -> Iterator[dict]:
        """Decoded ``data:`` payloads until ``[DONE]`` (malformed lines are skipped)."""
        for line in self._lines:
            event = sse_payload(line, self.model)
            if event is SSE_DONE:
                return
            if event is not None:
                yield event

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


@dataclass
class AsyncStreamCall:
    """An open upstream SSE stream on the event loop: ``async for ch in events()``, then ``await aclose()``."""

    model: str
    _cm: Any
    _resp: Any

    async def events(self) -> AsyncIterator[dict]:
        """Decoded ``data:`` payloads until ``[DONE]`` (malformed lines are skipped)."""
        async for line in self._resp.iter_lines():
            event = sse_payload(line, self.model)
            if event is SSE_DONE:
                return
            if event is not None:
                yield event

    async def aclose(self) -> None:
        await self._cm.__aexit__(None, None, None)


class Backends:
    """One ``openai.OpenAI`` client per pool model's endpoint (clients are shared by endpoint)."""

    def __init__(self, pool: Pool, *, timeout: float = 120.0, max_retries: int = 2,
                 allow_missing_keys: bool = False, models: Sequence[str] | None = None):
        """Args:
            pool: pool whose models have ``endpoint`` tables.
            timeout, max_retries: passed to each client.
            allow_missing_keys: use ``"EMPTY"`` when a key variable is unset (local servers);
                otherwise a missing variable is a BackendConfigError naming model and variable.
            models: only set up these models (default: all).
        """
        self.pool = pool
        self.timeout, self.max_retries = timeout, max_retries
        self.clients: dict[str, openai.OpenAI] = {}
        self.aclients: dict[str, openai.AsyncOpenAI] = {}  # made on first use, on the running loop
        try:  # non-streaming async calls go straight over aiohttp when it is installed (live/aiochat.py)
            from mtrouter_jax.live import aiochat
            self._direct_mod, self._direct = aiochat, aiochat.DirectCalls(timeout, max_retries, aiochat.ssl_context,
                                                                             UPSTREAM_LIMITS)
        except ImportError:
            self._direct_mod, self._direct = None, None
        self.model_ids: dict[str, str] = {}
        self.base_urls: dict[str, str] = {}
        shared: dict[tuple[str, str], openai.OpenAI] = {}
        self._keys: dict[str, tuple[str, str]] = {}  # model -> (base_url, key) of its endpoint
        problems = []
        for spec in pool.models:
            if models is not None and spec.name not in models:
                continue
            ep = spec.endpoint
            if ep is None:
                problems.append(f"model {spec.name!r} has no [model.endpoint] in pool {pool.name!r}")
                continue
            if ep.api_key_env is None:
                key = EMPTY_KEY
            else:
                key = os.environ.get(ep.api_key_env)
                if not key:
                    if not allow_missing_keys:
                        problems.append(f"model {spec.name!r}: environment variable {ep.api_key_env} "
                                        f"(its API key) is not set")
                        continue
                    key = EMPTY_KEY
            ck = (ep.base_url, key)
            if ck not in shared:
                shared[ck] = openai.OpenAI(base_url=ep.base_url, api_key=key, timeout=timeout,
                                           max_retries=max_retries)
            self.clients[spec.name] = shared[ck]
            self._keys[spec.name] = ck
            self.model_ids[spec.name] = ep.model_id
            self.base_urls[spec.name] = ep.base_url
        if problems:
            raise BackendConfigError("cannot set up upstream endpoints:\n  " + "\n  ".join(problems)
                                     + "\n(set the variables, or pass allow_missing_keys / "
                                     "--allow-missing-keys for local servers)")

    def _args(self, model: str, body: dict) -> dict:
        rest = {k: v for k, v in body.items() if k not in ("model", "messages", "stream")}
        return {"model": self.model_ids[model], "messages": body["messages"], "extra_body": rest}

    def chat(self, model: str, body: dict) -> dict:
        """Non-streaming call; returns the upstream's JSON response (raises UpstreamError)."""
        client = self.clients[model]
        try:
            raw = client.chat.completions.with_raw_response.create(**self._args(model, body))
            return raw.http_response.json()
        except (openai.APIError, ValueError) as e:
            raise _wrap(model, e) from None

    def open_stream(self, model: str, body: dict) -> StreamCall:
        """Start a streaming call (``stream_options.include_usage`` forced on); errors raised
        here (before any chunk) can still fall back to another model."""
        client = self.clients[model]
        args = self._args(model, body)
        opts = dict(args["extra_body"].get("stream_options") or {})
        opts["include_usage"] = True
        args["extra_body"] = {**args["extra_body"], "stream_options": opts}
        cm = client.chat.completions.with_streaming_response.create(stream=True, **args)
        try:
            resp = cm.__enter__()
        except (openai.APIError, ValueError) as e:
            raise _wrap(model, e) from None
        return StreamCall(model, cm, resp)

    # ------------------------------------------------------------------ async (the proxy)
    def _aclient(self, model: str) -> openai.AsyncOpenAI:
        client = self.aclients.get(model)
        if client is None:
            ck = self._keys[model]
            client = next((c for m, c in self.aclients.items() if self._keys[m] == ck), None)
            if client is None:
                client = openai.AsyncOpenAI(base_url=ck[0], api_key=ck[1], timeout=self.timeout,
                                            max_retries=self.max_retries,
                                            http_client=async_http_client())
            self.aclients[model] = client
        return client

    async def achat(self, model: str, body: dict, finite: bool = False) -> dict:
        """Non-streaming call on the event loop; returns the upstream's JSON response (raises UpstreamError).

        With aiohttp installed the body goes out over it directly (``live/aiochat.py``: the openai
        client's timeouts, retries and errors, without its ~0.7 ms of request building); without,
        through the client's low-level ``post`` (never ``chat.completions.create``, whose
        re-validation of every message and tool schema cost more than the rest of the proxy).
        ``finite``: the body holds no NaN/Infinity (the proxy's, decoded by ``parse_json``).
        """
        payload = {k: v for k, v in body.items() if k != "stream"}
        payload["model"] = self.model_ids[model]
        if self._direct is not None:
            return await self._achat_direct(model, payload, finite)
        try:
            resp = await self._aclient(model).post("/chat/completions", cast_to=httpx.Response, body=payload)
            return resp.json()
        except (openai.APIError, ValueError) as e:
            raise _wrap(model, e) from None

    async def _achat_direct(self, model: str, payload: dict, finite: bool = False) -> dict:
        """``achat`` over aiohttp: the errors (after the retries) are those the openai client raises."""
        m = self._direct_mod
        try:
            reply = await self._direct.post(self._keys[model], m.dumps_body(payload, finite))
        except m.CallTimeout:
            raise UpstreamError(model, "timeout", "upstream timed out") from None
        except m.CallConnectionError as e:
            raise UpstreamError(model, "connection", f"connection failed ({type(e.cause).__name__})") from None
        except ValueError as e:  # NaN in the body: as the openai client's encoder
            raise UpstreamError(model, "bad_response", f"upstream sent an unreadable response ({e})") from None
        if (st := reply.status) >= 400:
            raise UpstreamError(model, f"http_{st}", f"upstream returned HTTP {st}", st, m.json_or_none(reply.body),
                                retryable=st in _FALLBACK_STATUS or st >= 500)
        try:
            return jsonfast.loads(reply.body)  # (orjson where it decodes as json.loads does)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise UpstreamError(model, "bad_response", f"upstream sent an unreadable response ({e})") from None

    async def aopen_stream(self, model: str, body: dict) -> AsyncStreamCall:
        """Start a streaming call on the event loop (``stream_options.include_usage`` forced on);
        errors raised here (before any chunk) can still fall back to another model."""
        args = self._args(model, body)
        opts = dict(args["extra_body"].get("stream_options") or {})
        opts["include_usage"] = True
        args["extra_body"] = {**args["extra_body"], "stream_options": opts}
        cm = self._aclient(model).chat.completions.with_streaming_response.create(stream=True, **args)
        try:
            resp = await cm.__aenter__()
        except (openai.APIError, ValueError) as e:
            raise _wrap(model, e) from None
        return AsyncStreamCall(model, cm, resp)

    async def aclose(self) -> None:
        """Close the async clients' connection pools."""
        for client in {id(c): c for c in self.aclients.values()}.values():
            await client.close()
        self.aclients.clear()
        if self._direct is not None:
            await self._direct.aclose()


@dataclass
class Attempt:
    """Outcome of :func:`call_with_fallback`."""

    model: str
    result: Any
    fallbacks: list[dict]  # [{"model", "error"}] of models that failed before ``model``
    upstream_seconds: float  # time spent inside upstream calls (all attempts)


class _FallbackLoop:
    """The bookkeeping of one call down a ranking, shared by the sync and async callers: which
    model next, what failed (and why), time spent upstream."""

    def __init__(self, ranking: Sequence[str], on_fail):
        self.queue, self.on_fail = list(ranking), on_fail
        self.tried: set[str] = set()
        self.fallbacks: list[dict] = []
        self.up = 0.0
        self.last: UpstreamError | None = None

    def next_model(self) -> str | None:
        while self.queue:
            model = self.queue.pop(0)
            if model not in self.tried:
                self.tried.add(model)
                return model
        return None

    def failed(self, model: str, e: UpstreamError, seconds: float) -> None:
        """Record a failure; a non-retryable one is raised again."""
        self.up += seconds
        if not e.retryable:
            raise e
        self.last = e
        self.fallbacks.append({"model": model, "error": e.kind})
        log.warning("upstream %s failed (%s); falling back", model, e.kind)
        if self.on_fail is not None:
            self.queue = [m for m in self.on_fail(model, e) if m not in self.tried]

    def succeeded(self, model: str, result: Any, seconds: float) -> Attempt:
        return Attempt(model, result, self.fallbacks, self.up + seconds)

    def exhausted(self) -> UpstreamError:
        assert self.last is not None
        self.last.fallbacks = self.fallbacks  # type: ignore[attr-defined]
        return self.last


def call_with_fallback(ranking: Sequence[str], call: Callable[[str], Any],
                       on_fail: Callable[[str, UpstreamError], Sequence[str]] | None = None) -> Attempt:
    """Call ``call(model)`` down ``ranking`` until one succeeds.

    Non-retryable errors are raised at once. ``on_fail(model, err)`` may return a fresh ranking
    (e.g. re-decided without the failed models); by default the next entry is tried. Raises the
    last UpstreamError when every model failed.
    """
    loop = _FallbackLoop(ranking, on_fail)
    while (model := loop.next_model()) is not None:
        t0 = time.perf_counter()
        try:
            result = call(model)
        except UpstreamError as e:
            loop.failed(model, e, time.perf_counter() - t0)
            continue
        return loop.succeeded(model, result, time.perf_counter() - t0)
    raise loop.exhausted()


async def acall_with_fallback(ranking: Sequence[str], call: Callable[[str], Awaitable[Any]],
                              on_fail: Callable[[str, UpstreamError], Sequence[str]] | None = None) -> Attempt:
    """:func:`call_with_fallback` for an ``async`` ``call``."""
    loop = _FallbackLoop(ranking, on_fail)
    while (model := loop.next_model()) is not None:
        t0 = time.perf_counter()
        try:
            result = await call(model)
        except UpstreamError as e:
            loop.failed(model, e, time.perf_counter() - t0)
            continue
        return loop.succeeded(model, result, time.perf_counter() - t0)
    raise loop.exhausted()


__all__ = ["Backends", "BackendConfigError", "UpstreamError", "StreamCall", "AsyncStreamCall", "Attempt",
           "call_with_fallback", "acall_with_fallback", "async_http_client", "EMPTY_KEY", "UPSTREAM_LIMITS"]
