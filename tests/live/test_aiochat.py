"""The direct aiohttp upstream call (live/aiochat.py): openai's retry rule, its errors, its body encoding."""

from __future__ import annotations

import asyncio
import json

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from mtrouter_jax.core.pool import Pool  # noqa: E402
from mtrouter_jax.live import aiochat  # noqa: E402
from mtrouter_jax.live.backends import Backends, UpstreamError  # noqa: E402
from testing.live import make_pool  # noqa: E402


def test_retry_rule_is_openais():
    assert aiochat.should_retry(500, {}) and aiochat.should_retry(429, {}) and aiochat.should_retry(409, {})
    assert not aiochat.should_retry(400, {}) and not aiochat.should_retry(404, {})
    assert aiochat.should_retry(400, {"x-should-retry": "true"})
    assert not aiochat.should_retry(503, {"x-should-retry": "false"})
    assert not aiochat.should_retry(429, {"retry-after": "121"})  # longer than openai waits: not retried
    assert aiochat.retry_delay(0, {"retry-after-ms": "1500"}) == 1.5
    assert aiochat.retry_delay(0, {"retry-after": "3"}) == 3.0
    for n, most in ((0, 0.5), (1, 1.0), (5, 8.0)):
        assert 0.75 * most <= aiochat.retry_delay(n, {}) <= most


async def _serve(handler):
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}/v1"


def _backends(base: str, **kw) -> Backends:
    pool = make_pool(base, key_env=None)
    return Backends(Pool(pool.name, pool.models[:1]), **kw)


def test_achat_retries_then_answers_and_sends_the_body_as_openai_does(monkeypatch):
    monkeypatch.setattr(aiochat, "retry_delay", lambda taken, headers: 0.0)
    seen = []

    async def handler(request):
        seen.append((await request.read(), request.headers.get("authorization")))
        if len(seen) == 1:
            return web.json_response({"error": {"message": "busy"}}, status=503)
        return web.json_response({"choices": [], "usage": None})

    async def main():
        runner, base = await _serve(handler)
        b = _backends(base, max_retries=1, timeout=5.0)
        try:
            name = b.pool.names[0]
            out = await b.achat(name, {"model": "mtrouter", "messages": [{"role": "user", "content": "é"}],
                                       "stream": False})
            return out, b.model_ids[name]
        finally:
            await b.aclose()
            await runner.cleanup()

    out, model_id = asyncio.run(main())
    assert out == {"choices": [], "usage": None} and len(seen) == 2
    body = json.dumps({"model": model_id, "messages": [{"role": "user", "content": "é"}]}, ensure_ascii=False,
                      separators=(",", ":")).encode()
    assert json.loads(seen[1][0]) == json.loads(body) and "é".encode() in seen[1][0]
    assert seen[1][1] == "Bearer EMPTY"


@pytest.mark.parametrize("status,retryable", [(400, False), (502, True)])
def test_achat_errors_are_the_clients(status, retryable):
    async def handler(request):
        return web.json_response({"error": {"message": "no"}}, status=status)

    async def main():
        runner, base = await _serve(handler)
        b = _backends(base, max_retries=0, timeout=5.0)
        try:
            with pytest.raises(UpstreamError) as e:
                await b.achat(b.pool.names[0], {"messages": [{"role": "user", "content": "x"}]})
            return e.value
        finally:
            await b.aclose()
            await runner.cleanup()

    e = asyncio.run(main())
    assert (e.kind, e.status, e.retryable, e.body) == (f"http_{status}", status, retryable, {"error": {"message": "no"}})


def test_achat_timeout_and_refused_connection():
    async def slow(request):
        await asyncio.sleep(2.0)
        return web.json_response({})

    async def main():
        runner, base = await _serve(slow)
        b = _backends(base, max_retries=0, timeout=0.2)
        try:
            with pytest.raises(UpstreamError) as t:
                await b.achat(b.pool.names[0], {"messages": [{"role": "user", "content": "x"}]})
        finally:
            await b.aclose()
            await runner.cleanup()
        b = _backends(base, max_retries=0, timeout=1.0)  # the server is gone: refused
        try:
            with pytest.raises(UpstreamError) as c:
                await b.achat(b.pool.names[0], {"messages": [{"role": "user", "content": "x"}]})
        finally:
            await b.aclose()
        return t.value, c.value

    t, c = asyncio.run(main())
    assert t.kind == "timeout" and t.retryable
    assert c.kind == "connection" and c.retryable

