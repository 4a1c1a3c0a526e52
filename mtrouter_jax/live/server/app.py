"""OpenAI-compatible routing proxy (FastAPI): ``POST /v1/chat/completions`` with ``model="mtrouter"``.

Conversations are identified by the ``X-MTRouter-Conversation`` header, else by a hash of the
first system and first user message. The per-episode budget comes from ``model="mtrouter-0.50"``
or the ``X-MTRouter-Budget`` header (USD), fixed when the conversation starts. With ``--explore``,
``model="mtrouter-explore[-0.50]"`` (or ``X-MTRouter-Explore: true``) routes the conversation with
the exploration policy; every turn logs the exact propensity of its model. Tool results that
arrive with a request become the previous turn's observation (error detection). A pool model name
as ``model`` is passed through unrouted but still accounted. ``GET /metrics`` serves Prometheus
metrics. See docs/live.md.

This module wires the app (routes, auth, metrics, error shapes) and starts it; request handling
is ``live/proxy.py``, validation ``live/api.py``, conversations ``live/conversations.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import importlib.util
import logging
import time

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from mtrouter_jax.live.server.api import EXPLORE, ROUTED, ApiError, parse_budget  # noqa: F401  (parse_budget: re-export)
from mtrouter_jax.live.backends import Backends
from mtrouter_jax.live.server.conversations import conversation_key  # noqa: F401  (re-exported: docs/agents.md)
from mtrouter_jax.live.server.options import add_serve_args  # noqa: F401  (re-exported: mtrouter serve)
from mtrouter_jax.live.server.proxy import Proxy
from mtrouter_jax.live.router import Router, router_from_options

log = logging.getLogger("mtrouter_jax.live")

MAX_BODY_BYTES = 64 * 2**20  # a chat request larger than this is refused (413) before it is read
# uvicorn settings of ``mtrouter serve``. Idle client connections stay open longer than clients
# keep theirs (httpx: 5 s): a server that closes first races the client's next request on that
# connection, which the client sees as a reset (errors under load with uvicorn's 5 s default).
UVICORN_OPTIONS = {"timeout_keep_alive": 75, "backlog": 4096}
_ERROR_NAMES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
                405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error"}


class _Gate:
    """Pure ASGI middleware: bearer-token check on ``/v1/`` and request counts by route and status.

    (Starlette's ``BaseHTTPMiddleware`` re-streams every response through a task group, which cost
    a visible share of each request's CPU under load.)
    """

    def __init__(self, app, token: str | None, proxy: Proxy):
        self.app, self.token, self.proxy = app, token, proxy
        self.auth = None if token is None else token.encode("utf-8")

    def authorized(self, header: bytes | None) -> bool:
        """``Authorization: Bearer TOKEN``: the scheme in any case (RFC 7235), the token compared in
        constant time (no timing oracle on how much of it matched)."""
        scheme, _, cred = (header or b"").strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(cred.strip(), self.auth)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_status(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            if self.auth is not None and scope["path"].startswith("/v1/") and \
                    not self.authorized(dict(scope["headers"]).get(b"authorization")):
                err = ApiError(401, "missing or invalid bearer token (Authorization: Bearer ...)",
                               "authentication_error", "invalid_api_key")
                self.proxy.metrics.errors.labels("401", err.code).inc()
                return await err.response()(scope, receive, send_status)
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            # the route *template* (never the path: it holds conversation ids)
            self.proxy.metrics.requests.labels(getattr(route, "path", "unmatched"), str(status[0])).inc()


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes without reading them all."""
    n = request.headers.get("content-length")
    if n is not None and n.isdigit() and int(n) > limit:
        raise ApiError(413, f"request body of {n} bytes exceeds the proxy's limit of {limit}", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the proxy's limit of {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(router: Router, backends: Backends | None = None, *, token: str | None = None,
               log_text: bool = False, allow_missing_keys: bool = False, timeout: float = 120.0,
               max_retries: int = 2, max_open: int = 10_000, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The proxy app. ``backends`` default: clients for every pool model (keys from env)."""
    if backends is None:
        backends = Backends(router.pool, timeout=timeout, max_retries=max_retries,
                            allow_missing_keys=allow_missing_keys)
    proxy = Proxy(router, backends, log_text, max_open)
    metrics = proxy.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await anyio.to_thread.run_sync(proxy.store.close_all)  # log open conversations (unscored)
        await backends.aclose()

    app = FastAPI(title="mtrouter-jax proxy", lifespan=lifespan)
    app.state.proxy = proxy
    app.add_middleware(_Gate, token=token, proxy=proxy)

    def error_response(e: ApiError):
        metrics.errors.labels(str(e.status), e.code or e.type).inc()
        return e.response()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):  # unknown path, wrong method
        return error_response(ApiError(e.status_code, str(e.detail), _ERROR_NAMES.get(e.status_code, "api_error"),
                                       "not_found" if e.status_code == 404 else None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        return error_response(ApiError(400, f"invalid request: {e.errors()[:3]}"))

    async def guarded(coro):
        """Unexpected failures answer 500 in OpenAI's shape (and are logged with a traceback)."""
        try:
            return await coro
        except ApiError:
            raise
        except Exception:
            log.exception("internal error while handling a request")
            raise ApiError(500, "internal error in the routing proxy (logged)", "api_error", "internal_error") from None

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        t0 = time.perf_counter()
        raw = await _read_body(request, max_body_bytes)
        headers = {k.lower(): v for k, v in request.headers.items()}
        return await guarded(proxy.chat(raw, headers, t0))

    @app.get("/v1/models")
    async def models():
        ids = [ROUTED, f"{ROUTED}-0.50", f"{ROUTED}-greedy"]
        if router.explore_policy is not None:
            ids += [f"{ROUTED}-{EXPLORE}", f"{ROUTED}-{EXPLORE}-0.50"]
        ids += list(router.pool.names)
        return {"object": "list", "data": [{"id": i, "object": "model", "created": 0,
                                            "owned_by": "mtrouter" if i.startswith(ROUTED) else "pool"}
                                           for i in ids]}

    @app.get("/v1/mtrouter/conversations")
    async def conversations():
        """Open conversations (most recently used last): id, turns, spend — to find a derived id."""
        with proxy.store.lock:
            items = list(proxy.store.open.items())
        return {"object": "list", "data": [{"id": cid, "derived": c.derived, "turns": len(c.episode.turns),
                                            "spent": c.episode.spent, "last_used": c.last_used}
                                           for cid, c in items]}

    @app.get("/v1/mtrouter/conversations/{cid}")
    async def conversation(cid: str):
        conv = proxy.store.get(cid)
        if conv is not None:
            return conv.episode.info()
        if cid in proxy.store.done:
            return proxy.store.done[cid]
        raise ApiError(404, f"no conversation {cid!r}", code="conversation_not_found")

    @app.post("/v1/mtrouter/conversations/{cid}/finish")
    async def finish(cid: str, request: Request):
        raw = await _read_body(request, max_body_bytes)
        return await guarded(proxy.finish(cid, raw))

    @app.get("/v1/mtrouter/router")
    async def router_info():
        """The served policy, exploration, vocabularies and the effective tool-name mapping."""
        return router.describe()

    @app.get("/metrics")
    async def prometheus():
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/health")
    async def health():
        return {"status": "ok", "open_conversations": len(proxy.store.open)}

    return app


def serve(checkpoint=None, pool=None, host="127.0.0.1", port=8000, lam=None, log_path=None, log_text=False,
          token=None, allow_missing_keys=False, timeout=120.0, max_retries=2, strict_cache=False,
          router=None, explore=None, tool_map=None, seed=0, lam_table=None,
          keep_alive=UVICORN_OPTIONS["timeout_keep_alive"], max_body_mb=MAX_BODY_BYTES / 2**20) -> None:
    """Build the router and run the proxy with uvicorn (blocks)."""
    import uvicorn
    r = router_from_options(checkpoint, pool, router, explore, tool_map, lam, seed, log_path, log_text, strict_cache,
                     lam_table)
    info = r.describe()
    if checkpoint:
        log.info("λ: %s", info["lam"])
    log.info("routing with %s%s over %s", info["policy"], f" (explore: {info['explore']})" if info["explore"] else "",
             ", ".join(info["pool"]))
    log.info("tool-name mapping (name -> vocabulary entry): %s",
             ", ".join(f"{k}->{v}" for k, v in info["tool_mapping"].items()))
    if importlib.util.find_spec("aiohttp") is None:
        log.warning("aiohttp is not installed: upstream calls use httpx, whose connection pool costs ~2x "
                    "the proxy's CPU per request with hundreds of conversations in flight "
                    "(pip install 'openai[aiohttp]'; docs/live.md)")
    app = create_app(r, token=token, log_text=log_text, allow_missing_keys=allow_missing_keys,
                     timeout=timeout, max_retries=max_retries, max_body_bytes=int(max_body_mb * 2**20))
    uvicorn.run(app, host=host, port=port, log_level="info", **{**UVICORN_OPTIONS, "timeout_keep_alive": keep_alive})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="mtrouter serve", description=__doc__.splitlines()[0])
    add_serve_args(p)
    logging.basicConfig(level=logging.INFO)
    serve(**vars(p.parse_args(argv)))


if __name__ == "__main__":
    main()
