"""A streamed turn whose client goes away mid-stream is still billed, logged and frees its conversation."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from testing.live import FakeEstimator, ServerThread, make_pool
from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server.app import create_app
from mtrouter_jax.logs.io import read_episodes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def slow_upstream() -> FastAPI:
    """An OpenAI-compatible upstream whose SSE stream takes a second (one word per 0.1 s)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        if not body.get("stream"):
            return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "done"},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 2}}

        async def gen():
            for i in range(10):
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(0.1)
            yield "data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    return app


def test_client_gone_mid_stream_is_billed_and_the_conversation_moves_on(tmp_path):
    with ServerThread(slow_upstream()) as up:
        log = tmp_path / "live.jsonl"
        router = Router(FakeEstimator(make_pool(up.url + "/v1", key_env=None)), log_path=log)
        with ServerThread(create_app(router, timeout=5.0, max_retries=0)) as srv:
            body = {"model": "mtrouter", "stream": True, "messages": [{"role": "user", "content": "stream"}]}
            hdr = {"X-MTRouter-Conversation": "gone"}
            with httpx.Client(base_url=srv.url, timeout=10) as http:
                with http.stream("POST", "/v1/chat/completions", json=body, headers=hdr) as r:
                    assert r.status_code == 200
                    next(r.iter_lines())  # one chunk, then hang up
                for _ in range(100):  # the proxy notices, records the turn, releases the conversation
                    if http.get("/v1/mtrouter/conversations/gone").json()["turns"] == 1:
                        break
                    time.sleep(0.05)
                t0 = time.monotonic()
                r = http.post("/v1/chat/completions", json={**body, "stream": False}, headers=hdr)
                assert r.status_code == 200 and time.monotonic() - t0 < 5  # not stuck behind a held lock
                assert http.post("/v1/mtrouter/conversations/gone/finish", json={"score": 1, "score_range": [0, 1]}).status_code == 200
    (ep,) = read_episodes(log)
    first = ep.turns[0]
    assert len(ep.turns) == 2 and first.cost > 0  # billed conservatively (no usage chunk arrived)
    assert first.meta["usage_estimated"] and first.meta["stream_error"] == "client_disconnected"
