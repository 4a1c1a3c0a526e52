"""Test doubles for the live router: a fake estimator and a tiny OpenAI-compatible upstream.

The fake upstream (FastAPI on 127.0.0.1, background uvicorn thread) records every request body,
reports ``usage`` with prompt-cache hits (the previous prompt + completion when the same model
served the same conversation's previous call), can answer with tool calls, honours
``max_tokens``/``max_completion_tokens``, streams SSE, and fails with 429/500/timeouts on demand.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from mtrouter_jax.core.features import FeatureLayout
from mtrouter_jax.core.pool import Endpoint, ModelSpec, Pool

MODELS = ("cheap", "mid", "strong")
TOOLS = ("search", "file", "python", "reasoning", "answer")
KEY_ENV = "MTROUTER_FAKE_KEY"
# The fake estimator's preference: last tool type -> model (anything else -> "strong").
PREFERRED = {"search": "cheap", "file": "cheap", "python": "mid"}


def make_pool(base_url: str = "http://127.0.0.1:9/v1", key_env: str | None = KEY_ENV,
              names=MODELS, scale: float = 1.0) -> Pool:
    prices = {"cheap": (0.2, 0.02, 0.4), "mid": (1.0, 0.1, 2.0), "strong": (5.0, 0.5, 20.0)}
    models = []
    for n in names:
        pi, pc, po = prices.get(n, (1.0, 0.1, 2.0))
        models.append(ModelSpec(n, pi * scale, pc * scale, po * scale, {"max_output_k": 16},
                                endpoint=Endpoint(base_url, f"fake-{n}", key_env)))
    return Pool("fake-pool", tuple(models))


class FakeEstimator:
    """Deterministic stand-in for ``checkpoint.LoadedEstimator``: prefers the model that matches
    the last tool type (search/file -> cheap, python -> mid, else strong)."""

    def __init__(self, pool: Pool | None = None, output_hi: float = 200.0, cost_scale: float = 0.01):
        self.pool = pool or make_pool()
        self.layout = FeatureLayout(("qa", "science"), TOOLS, ("format_violation", "invalid_action"),
                                    self.pool.names, cost_scale=cost_scale)
        self.meta = {"fake": True}
        self.cost_scale = cost_scale
        self.output_tokens_hi = np.full(len(self.pool), output_hi)
        off = {b["block"]: (b["offset"], b["width"]) for b in self.layout.describe()}
        self._tool_off = off["last_tool_onehot"]
        self.calls = 0

    def last_tool(self, features: np.ndarray) -> str | None:
        o, w = self._tool_off
        i = int(np.argmax(features[o:o + w]))
        if features[o + i] == 0 or i >= len(TOOLS):
            return None
        return TOOLS[i]

    def predict(self, features):
        self.calls += 1
        f = np.asarray(features, np.float32)
        batch = f.reshape(-1, f.shape[-1])
        score = np.full((batch.shape[0], len(self.pool)), 0.5, np.float32)
        for b in range(batch.shape[0]):
            pref = PREFERRED.get(self.last_tool(batch[b]), "strong")
            score[b, self.pool.names.index(pref)] = 0.9
        rem = np.full_like(score, 1e-4)
        if f.ndim == 1:
            return score[0], rem[0]
        return score, rem


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """Run an ASGI app with uvicorn on a free loopback port in a daemon thread."""

    def __init__(self, app):
        self.port = free_port()
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                             lifespan="on", timeout_keep_alive=30)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > 10 or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def _nbytes(obj) -> int:
    return len(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


TOOL_CYCLE = ("web_search", "python", "python", "read_file", None, "browse_page", "bash")


def completion(body: dict, msg: dict, usage: dict | None, cid: str = "chatcmpl-fake", created: int = 0) -> dict:
    """A non-streamed chat completion answering ``body`` with ``msg`` (no ``usage`` key when None)."""
    reply = {"id": cid, "object": "chat.completion", "created": created, "model": body["model"],
             "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls" if msg.get("tool_calls") else "stop"}]}
    if usage is not None:
        reply["usage"] = usage
    return reply


@dataclass
class FakeUpstream:
    """State and behaviour of the fake upstream; ``app()`` builds the FastAPI app."""

    natural_tokens: int = 120  # completion length when not capped
    latency: float = 0.0
    requests: list = field(default_factory=list)
    raw_bodies: list = field(default_factory=list)
    fail: dict = field(default_factory=dict)  # model_id -> list of 500/429/"timeout" (popped per call)
    tool_cycle: tuple = TOOL_CYCLE
    record: bool = True
    _cache: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def response_for(self, body: dict) -> tuple[dict, dict]:
        msgs = body["messages"]
        conv = hashlib.sha1(json.dumps(msgs[:2], sort_keys=True).encode()).hexdigest()
        prompt = sum(_nbytes(m) for m in msgs) // 4 + 4 * len(msgs) + _nbytes(body.get("tools") or []) // 4
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        completion = self.natural_tokens if cap is None else min(int(cap), self.natural_tokens)
        with self._lock:
            prev = self._cache.get(conv)
            cached = min(prev[1], prompt) if prev and prev[0] == body["model"] else 0
            self._cache[conv] = (body["model"], prompt + completion)
        n_assist = sum(m.get("role") == "assistant" for m in msgs)
        tool = self.tool_cycle[n_assist % len(self.tool_cycle)] if body.get("tools") else None
        msg: dict = {"role": "assistant", "content": None if tool else f"answer {n_assist} from {body['model']}"}
        if tool:
            msg["tool_calls"] = [{"id": f"call_{n_assist}", "type": "function",
                                  "function": {"name": tool, "arguments": json.dumps({"q": n_assist})}}]
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion,
                 "prompt_tokens_details": {"cached_tokens": cached}, "cost": 123.0}
        return msg, usage

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            raw = await request.body()
            body = json.loads(raw)
            if self.record:
                self.raw_bodies.append(raw)
                self.requests.append(body)
            todo = self.fail.get(body["model"])
            if todo:
                what = todo.pop(0) if isinstance(todo, list) else todo
                if what == "timeout":
                    await asyncio.sleep(2.0)
                else:
                    return JSONResponse({"error": {"message": f"fake {what}", "type": "server_error"}},
                                        status_code=int(what))
            if self.latency:
                await asyncio.sleep(self.latency)
            msg, usage = self.response_for(body)
            cid, created = "chatcmpl-fake", int(time.time())
            if not body.get("stream"):
                return completion(body, msg, usage, cid, created)

            def chunk(delta, finish=None, usage_=None, choices=True):
                d = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": body["model"],
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
                if usage_ is not None:
                    d["usage"] = usage_
                return f"data: {json.dumps(d)}\n\n"

            def gen():
                yield chunk({"role": "assistant", "content": ""})
                if msg.get("tool_calls"):
                    tc = msg["tool_calls"][0]
                    yield chunk({"tool_calls": [{"index": 0, "id": tc["id"], "type": "function",
                                                 "function": {"name": tc["function"]["name"], "arguments": ""}}]})
                    yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": tc["function"]["arguments"]}}]})
                    yield chunk({}, "tool_calls")
                else:
                    for word in msg["content"].split(" "):
                        yield chunk({"content": word + " "})
                    yield chunk({}, "stop")
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield chunk(None, usage_=usage, choices=False)
                yield "data: [DONE]\n\n"

            return StreamingResponse(gen(), media_type="text/event-stream")

        return app
