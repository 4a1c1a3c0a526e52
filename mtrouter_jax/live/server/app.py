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
import asyncio
import contextlib
import importlib.util
import logging
import signal
import threading
import sys
import time
from typing import Mapping

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from mtrouter_jax.core.errors import UsageError
from mtrouter_jax.live.server.arms import Arms, check_flags, setup_arms
from mtrouter_jax.live.server.api import EXPLORE, ROUTED, ApiError, parse_budget, parse_json  # noqa: F401  (parse_budget: re-export)
from mtrouter_jax.live.backends import Backends
from mtrouter_jax.live.draft import describe_draft, why_not_drafting
from mtrouter_jax.routing.draft import resolve_draft
from mtrouter_jax.live.server.conversations import conversation_key  # noqa: F401  (re-exported: docs/agents.md)
from mtrouter_jax.live.server.limits import (MAX_BODY_BYTES, Limits, LogPathError, check_log_writable,  # noqa: F401
                                             parse_score_range)
from mtrouter_jax.live.server.options import add_serve_args  # noqa: F401  (re-exported: mtrouter serve)
from mtrouter_jax.live.server.proxy import Proxy
from mtrouter_jax.live.server.control import POLL_S, FleetReloads
from mtrouter_jax.live.server.gate import Gate, request_tenant
from mtrouter_jax.live.server.heap import freeze_heap
from mtrouter_jax.live.server.reload import Reloader, stamp
from mtrouter_jax.live.server.startup import arms_lines, startup_lines
from mtrouter_jax.live.server.streams import dumps
from mtrouter_jax.live.server.tenancy import KeyRing, Tenant, load_keys
from mtrouter_jax.live.router import Router, router_from_options
from mtrouter_jax.live.store import StateStore, StoreUnavailable, open_store

log = logging.getLogger("mtrouter_jax.live")

# uvicorn settings of ``mtrouter serve``. Idle client connections stay open longer than clients
# keep theirs (httpx: 5 s): a server that closes first races the client's next request on that
# connection, which the client sees as a reset (errors under load with uvicorn's 5 s default).
UVICORN_OPTIONS = {"timeout_keep_alive": 75, "backlog": 4096}
_ERROR_NAMES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
                405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error"}
class ProxyApp(FastAPI):
    """FastAPI behind the proxy's gate: every request meets the gate first, which serves the chat and
    finish routes itself, before FastAPI's own middleware stack (body limit, exception telemetry,
    server errors: ~0.1 ms of CPU a request at 200 in flight), and hands everything else (other
    routes, lifespan) to FastAPI."""

    gate: Gate | None = None  # create_app sets it

    async def __call__(self, scope, receive, send):
        if self.gate is None:
            return await super().__call__(scope, receive, send)
        scope["app"] = self
        await self.gate(scope, receive, send)

    async def behind_gate(self, scope, receive, send):
        """FastAPI's own handling (the gate's inner app)."""
        await super().__call__(scope, receive, send)


FINISH_ROUTE = "/v1/mtrouter/conversations/{cid}/finish"
FINISH_PATH = ("/v1/mtrouter/conversations/", "/finish")  # what surrounds the id in the path


def _owner(request: Request, tenant: Tenant) -> str:
    """Whose conversation a read/finish addresses: the caller's own; an admin's ``?tenant=NAME`` another's."""
    other = request.query_params.get("tenant")
    if other is not None and tenant.admin:
        return other
    return tenant.name


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
               keys: KeyRing | Mapping[str, Tenant] | None = None, public_metrics: bool = False,
               log_text: bool = False, allow_missing_keys: bool = False, timeout: float = 120.0,
               max_retries: int = 2, limits: Limits | None = None, max_open: int | None = None,
               max_body_bytes: int | None = None, state: StateStore | None = None,
               lease_ms: int | None = None, reload_build=None, sighup: bool = False,
               arms: Arms | None = None, reload_poll_s: float = POLL_S) -> FastAPI:
    """The proxy app. ``backends`` default: clients for every pool model (keys from env). ``keys``:
    API keys with their tenants (``tenancy.py``), ``token`` one more admin key; ``limits``: the
    resource limits (``max_open``/``max_body_bytes`` override theirs); ``state``: a store shared
    with other replicas (``server/shared.py``; None: this process only, as before); ``reload_build``:
    checkpoint path -> Router for reloads (``server/reload.py``); ``sighup``: SIGHUP reloads too;
    ``arms``: ``--canary`` / ``--shadow`` candidates (``server/arms.py``); ``reload_poll_s``: with
    ``state``, how often this replica looks for a reload made on another (``server/control.py``)."""
    if backends is None:
        backends = Backends(router.pool, timeout=timeout, max_retries=max_retries,
                            allow_missing_keys=allow_missing_keys)
    limits = limits or Limits()
    over = {k: v for k, v in (("max_open", max_open), ("max_body_bytes", max_body_bytes)) if v is not None}
    if over:
        limits = Limits(**{**limits.__dict__, **over})
    ring = keys if isinstance(keys, KeyRing) else KeyRing(keys)
    if token is not None:
        ring = KeyRing({**{k.decode(): t for k, t in ring.keys}, token: Tenant("admin", admin=True)})
    if arms is not None:
        for cand in (arms.canary, arms.shadow):
            if cand is not None:
                stamp(cand)
        if arms.canary is not None and arms.canary.digest is None:
            raise ValueError("a canary router needs a checkpoint (its digest names it across replicas and reloads)")
    proxy = Proxy(stamp(router), backends, log_text, limits, state, lease_ms, arms)
    reloader = proxy.reloader = Reloader(proxy, reload_build)
    if state is not None:  # one reload reaches every replica
        reloader.fleet = FleetReloads(state, reloader, reload_poll_s)
    metrics = proxy.metrics

    async def sweep_idle():
        every = min(max(limits.idle_timeout / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(every)
            await proxy.store.expire_idle()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(sweep_idle())] if limits.idle_timeout else []
        if proxy.writer is not None:
            tasks.append(loop.create_task(proxy.writer.run()))
        if reloader.fleet is not None:
            tasks.append(loop.create_task(reloader.fleet.run()))
        # signal handlers exist only in the main thread: an app served from another thread (tests,
        # an embedding program) reloads through the admin endpoint only
        hup = sighup and threading.current_thread() is threading.main_thread()
        if hup:
            def on_hup():
                t = loop.create_task(reloader.reload())
                t.add_done_callback(lambda t: t.cancelled() or t.exception() is None or log.error(
                    "SIGHUP reload failed: %s", getattr(t.exception(), "message", t.exception())))
            loop.add_signal_handler(signal.SIGHUP, on_hup)
        yield
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)
        for t in tasks:
            t.cancel()
        await anyio.to_thread.run_sync(proxy.store.close_all)  # log open conversations (unscored)
        if proxy.writer is not None:
            with contextlib.suppress(StoreUnavailable, OSError):
                await proxy.writer.drain_once()  # what this replica's finishes committed last
        await backends.aclose()

    app = ProxyApp(title="mtrouter-jax proxy", lifespan=lifespan)
    app.state.proxy, app.state.reloader = proxy, reloader
    fast: dict = {}  # the routes the gate serves itself: filled below, once they exist
    app.gate = Gate(app.behind_gate, keys=ring, proxy=proxy, public_metrics=public_metrics, fast=fast)

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
        except StoreUnavailable as e:  # --state: no silent fallback to per-replica state
            from mtrouter_jax.live.server.shared import unavailable
            raise unavailable(e) from None
        except Exception:
            log.exception("internal error while handling a request")
            raise ApiError(500, "internal error in the routing proxy (logged)", "api_error", "internal_error") from None

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        t0 = time.perf_counter()
        raw = await _read_body(request, limits.max_body_bytes)
        headers = {k.lower(): v for k, v in request.headers.items()}
        return await guarded(proxy.chat(raw, headers, t0, request_tenant(request)))

    async def chat_asgi(scope, receive, send):
        """The chat route as the gate calls it, past FastAPI's routing, dependency solving and
        exception middleware (~0.3 ms of CPU a request at 200 in flight); the same handler, and
        its errors answered as ``api_error`` answers them."""
        try:
            response = await chat(Request(scope, receive))
        except ApiError as e:
            response = error_response(e)
        await response(scope, receive, send)
    fast["/v1/chat/completions"] = (next(r for r in app.routes if getattr(r, "path", None) == "/v1/chat/completions"),
                                    chat_asgi)

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
    async def conversations(request: Request):
        """Open conversations (most recently used last): id, turns, spend — to find a derived id. A
        tenant sees its own; an admin key every tenant's."""
        tenant = request_tenant(request)
        return {"object": "list", "data": [{"id": cid, "derived": c.derived, "turns": len(c.episode.turns),
                                            "spent": c.episode.spent, "last_used": c.last_used,
                                            **({"tenant": owner} if tenant.admin and ring.enabled else {})}
                                           for (owner, cid), c in proxy.store.items(tenant)]}

    @app.get("/v1/mtrouter/conversations/{cid}")
    async def conversation(cid: str, request: Request):
        owner = _owner(request, request_tenant(request))
        if proxy.shared is not None:  # the store's version, whichever replica served the last turn
            got = await proxy.shared.info(cid, owner)
            if got is not None:
                return got
        conv = proxy.store.get(cid, owner)
        if conv is not None and proxy.shared is None:
            return conv.episode.info()
        if (owner, cid) in proxy.store.done:
            return proxy.store.done[(owner, cid)]
        raise ApiError(404, f"no conversation {cid!r}", code="conversation_not_found")

    @app.post(FINISH_ROUTE)
    async def finish(cid: str, request: Request):
        raw = await _read_body(request, limits.max_body_bytes)
        owner = _owner(request, request_tenant(request))
        info = await guarded(proxy.finish(cid, raw, Tenant(owner)))
        # a plain dict of JSON types: encoded directly (FastAPI's jsonable_encoder walk of it cost
        # more CPU than the finish itself)
        return Response(dumps(info), media_type="application/json")

    async def finish_asgi(scope, receive, send):
        """The finish route as the gate calls it (one a conversation: ~0.5 ms of FastAPI each)."""
        cid = scope["path"][len(FINISH_PATH[0]):-len(FINISH_PATH[1])]
        scope["path_params"] = {"cid": cid}
        try:
            response = await finish(cid, Request(scope, receive))
        except ApiError as e:
            response = error_response(e)
        await response(scope, receive, send)
    fast[FINISH_PATH] = (next(r for r in app.routes if getattr(r, "path", None) == FINISH_ROUTE), finish_asgi)

    @app.get("/v1/mtrouter/router")
    async def router_info():
        """The served policy, exploration, vocabularies and the effective tool-name mapping."""
        return {**proxy.router.describe(), "checkpoint_digest": proxy.router.digest, **proxy.arms.describe(),
                "decision_batching": proxy.batcher.describe(), "draft": describe_draft(proxy.router),
                **({"fleet": reloader.fleet.describe()} if reloader.fleet is not None else {})}

    @app.post("/v1/mtrouter/admin/reload")
    async def reload(request: Request):
        """Load, verify and swap in a checkpoint (body ``{"checkpoint": PATH}``, optional) for new
        conversations; open ones keep theirs. Admin key."""
        if not request_tenant(request).admin:
            raise ApiError(403, "reload needs an admin key", "permission_error", "admin_required")
        raw = await _read_body(request, 65_536)
        body = parse_json(raw, "reload body") if raw.strip() else {}
        if not isinstance(body, dict) or set(body) - {"checkpoint"} or not isinstance(body.get("checkpoint", ""), str):
            raise ApiError(400, 'reload body: expected {"checkpoint": "PATH"} (optional)', param="checkpoint")
        return await guarded(reloader.reload(body.get("checkpoint")))

    @app.get("/metrics")
    async def prometheus():
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/health")
    async def health():
        if proxy.state is not None:
            try:
                await proxy.state.ping()
            except StoreUnavailable as e:
                return ApiError(503, str(e), "api_error", "state_unavailable").response()
        return {"status": "ok", "open_conversations": len(proxy.store.open),
                **({"state": "shared"} if proxy.state is not None else {})}

    return app


def serve(checkpoint=None, pool=None, host="127.0.0.1", port=8000, lam=None, log_path=None, log_text=False,
          token=None, allow_missing_keys=False, timeout=120.0, max_retries=2, strict_cache=False,
          router=None, explore=None, tool_map=None, seed=0, lam_table=None,
          keep_alive=UVICORN_OPTIONS["timeout_keep_alive"], max_body_mb=MAX_BODY_BYTES / 2**20, keys=None,
          public_metrics=False, max_open=10_000, tenant_max_open=None, max_turns=1000, turn_deadline=45.0,
          idle_timeout=3600.0, score_range=None, state=None, canary=None, shadow=None, draft="auto") -> None:
    """Build the router and run the proxy with uvicorn (blocks). Bad options raise a ``UsageError``
    subclass naming the flag (``LogPathError``, ``KeysFileError``, ``RouterSpecError``, ...)."""
    import uvicorn
    check_log_writable(log_path)
    arm_flags = check_flags(canary, shadow)
    ring = load_keys(keys, token)
    limits = Limits(max_open, tenant_max_open, max_turns, turn_deadline, idle_timeout, int(max_body_mb * 2**20),
                    parse_score_range(score_range))
    draft_mode = resolve_draft(draft)[0]

    def build(ckpt):  # a reload: the same options, another checkpoint
        return router_from_options(ckpt, pool, router, explore, tool_map, lam, seed, log_path, log_text, strict_cache,
                                   lam_table, draft)
    r = build(checkpoint)

    def build_candidate(ckpt):  # a --canary / --shadow checkpoint routes as a checkpoint does
        spec = router if router is not None and router.strip() in ("learned", "safe") else None
        return router_from_options(ckpt, pool, spec, explore, tool_map, lam, seed, log_path, log_text, strict_cache,
                                   lam_table, "off" if draft_mode == "off" else "auto")
    arms = setup_arms(*arm_flags, build_candidate, r)
    for line in arms_lines(arms, r):
        log.info("%s", line)
    for line in startup_lines(r, ring, limits, public_metrics):
        log.info("%s", line)
    if r.draft_table is not None:
        log.info("draft routing: on (%s test; escalations %s; a streamed turn whose draft could be re-served "
                 "is held back and sent whole once decided)",
                 r.draft_test, describe_draft(r)["escalations"])
    else:
        log.info("draft routing: off%s", "" if draft_mode == "off" else f" ({why_not_drafting(r)})")
    if importlib.util.find_spec("aiohttp") is None:
        log.warning("aiohttp is not installed: upstream calls use httpx, whose connection pool costs ~2x "
                    "the proxy's CPU per request with hundreds of conversations in flight "
                    "(pip install 'openai[aiohttp]'; docs/live.md)")
    store = None if state in (None, "memory") else open_store(state)
    app = create_app(r, keys=ring, public_metrics=public_metrics, log_text=log_text,
                     allow_missing_keys=allow_missing_keys, timeout=timeout, max_retries=max_retries, limits=limits,
                     state=store, reload_build=build, sighup=True, arms=arms)
    log.info("state: %s", "this process (memory)" if store is None else
             f"shared: {getattr(store, 'url', state).split('@')[-1]} (replicas share conversations, budgets, finishes)")
    freeze_heap()  # (live/server/heap.py: full collections skip what startup built)
    uvicorn.run(app, host=host, port=port, log_level="info", **{**UVICORN_OPTIONS, "timeout_keep_alive": keep_alive})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="mtrouter serve", description=__doc__.splitlines()[0])
    add_serve_args(p)
    logging.basicConfig(level=logging.INFO)
    try:
        serve(**vars(p.parse_args(argv)))
    except UsageError as e:  # LogPathError, KeysFileError, ...: one line, exit status 2, as the CLI does
        print(f"mtrouter serve: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
