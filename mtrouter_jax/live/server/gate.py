"""The proxy's ASGI gate: who is calling (``tenancy.KeyRing``), request counts by route and status,
and the chat route served past FastAPI's routing (``create_app`` fills ``fast``)."""

from __future__ import annotations

from fastapi import Request

from mtrouter_jax.live.server.api import ApiError
from mtrouter_jax.live.server.proxy import Proxy
from mtrouter_jax.live.server.tenancy import ANONYMOUS, KeyRing, Tenant

TENANT_SCOPE = "mtrouter.tenant"  # the ASGI scope key the gate puts the caller's Tenant under
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
OPEN_PATHS = ("/health",)


class Gate:
    """Pure ASGI middleware: who is calling (``tenancy.KeyRing``) and request counts by route and status.

    With keys configured every path but ``/health`` needs one (``/metrics`` an admin key), except
    ``/metrics`` and the docs pages with ``public_metrics``. (Starlette's ``BaseHTTPMiddleware``
    re-streams every response through a task group, which cost a visible share of each request's
    CPU under load.)
    """

    def __init__(self, app, keys: KeyRing, proxy: Proxy, public_metrics: bool = False, fast: dict | None = None):
        self.app, self.keys, self.proxy = app, keys, proxy
        self.public = OPEN_PATHS + (("/metrics",) + DOCS_PATHS if public_metrics else ())
        # POST path -> (route, ASGI handler), and (prefix, suffix) -> (route, handler) for the routes
        # with one path parameter between them: see create_app
        self.fast = fast if fast is not None else {}

    def fast_route(self, scope) -> tuple | None:
        """(route, ASGI handler) of a request the gate serves past FastAPI's routing, else None."""
        if scope["method"] != "POST" or scope.get("root_path"):
            return None
        path = scope["path"]
        got = self.fast.get(path)
        if got is None:
            for key, value in self.fast.items():
                if type(key) is tuple and path.startswith(key[0]) and path.endswith(key[1]) \
                        and len(path) > len(key[0]) + len(key[1]) and "/" not in path[len(key[0]):-len(key[1])]:
                    return value
        return got

    def _refusal(self, scope) -> ApiError | None:
        path = scope["path"]
        if not self.keys.enabled or path in self.public:
            scope[TENANT_SCOPE] = ANONYMOUS if not self.keys.enabled else None
            return None
        tenant = self.keys.tenant_of(dict(scope["headers"]).get(b"authorization"))
        if tenant is None:
            return ApiError(401, "missing or invalid API key (Authorization: Bearer ...)", "authentication_error",
                            "invalid_api_key")
        if path == "/metrics" and not tenant.admin:
            return ApiError(403, "/metrics needs an admin key (or start the server with --public-metrics)",
                            "permission_error", "admin_required")
        scope[TENANT_SCOPE] = tenant
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_status(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            err = self._refusal(scope)
            if err is not None:
                self.proxy.metrics.errors.labels(str(err.status), err.code).inc()
                return await err.response()(scope, receive, send_status)
            fast = self.fast_route(scope)
            if fast is not None:
                scope["route"] = fast[0]
                return await fast[1](scope, receive, send_status)
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            # the route *template* (never the path: it holds conversation ids)
            self.proxy.metrics.requests_of(getattr(route, "path", "unmatched"), str(status[0])).inc()


def request_tenant(request: Request) -> Tenant:
    return request.scope.get(TENANT_SCOPE) or ANONYMOUS


__all__ = ["Gate", "request_tenant", "TENANT_SCOPE", "DOCS_PATHS", "OPEN_PATHS"]
