"""The proxy's own CPU per request, without sockets: the app driven through ASGI, the upstream a canned reply.

    python scripts/bench_proxy_asgi.py --checkpoint PATH [--conversations 400] [--freeze-heap] [--gc-stats]

``--conversations`` conversations of 5 tool-calling turns and a scored finish, 200 at a time, all on
one event loop with the real app (gate, parsing, budget rule, batched decisions, record, finish and
its log append); ``Backends.achat`` returns a canned reply, so what is measured is the proxy's own
work (HTTP parsing by uvicorn and the aiohttp client are what ``bench_proxy.py``'s pass-through
floor measures). Prints process CPU per request (finishes counted as requests). ``--freeze-heap``
freezes the heap after startup as ``mtrouter serve`` does (``live/server/heap.py``); ``--gc-stats``
reports the cyclic collector's collections and CPU by generation during the measured part. Run it
with ``PYTHONPATH=OTHER_TREE`` to measure another source tree the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_proxy import TOOLS, agent_step  # noqa: E402


def canned(n: list):
    async def achat(model, body, finite=False):
        n[0] += 1
        i = n[0]
        call = {"id": f"t{i}", "type": "function", "function": {"name": "search", "arguments": "{\"q\": \"x\"}"}}
        return {"id": f"c{i}", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "tool_calls",
                             "message": {"role": "assistant", "content": None, "tool_calls": [call]}}],
                "usage": {"prompt_tokens": 300 + 10 * (i % 7), "completion_tokens": 40, "total_tokens": 340}}
    return achat


async def call(app, path: str, body: dict, headers: dict) -> tuple[int, dict]:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": hdrs,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    sent = [False]

    async def receive():
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.sleep(3600)

    out: dict = {"body": b""}

    async def send(msg):
        if msg["type"] == "http.response.start":
            out["status"] = msg["status"]
        elif msg["type"] == "http.response.body":
            out["body"] += msg.get("body", b"")

    await app(scope, receive, send)
    return out["status"], json.loads(out["body"])


async def conversation(app, cid: str, turns: int = 5) -> None:
    msgs = [{"role": "system", "content": "bench agent"}, {"role": "user", "content": f"task {cid}"}]
    for t in range(turns):
        st, resp = await call(app, "/v1/chat/completions", {"model": "mtrouter-5.0", "messages": msgs, "tools": TOOLS},
                              {"X-MTRouter-Conversation": cid})
        assert st == 200, resp
        agent_step(msgs, resp["choices"][0]["message"], t)
    st, resp = await call(app, f"/v1/mtrouter/conversations/{cid}/finish", {"score": 0.5, "score_range": [0, 1]}, {})
    assert st == 200, resp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--conversations", type=int, default=400)
    p.add_argument("--freeze-heap", action="store_true", help="gc.freeze after startup, as mtrouter serve does")
    p.add_argument("--gc-stats", action="store_true", help="collections and their CPU during the measured part")
    a = p.parse_args()

    from mtrouter_jax.core.pool import Endpoint, Pool
    from mtrouter_jax.estimator.checkpoint import load_checkpoint
    from mtrouter_jax.live.router import Router
    from mtrouter_jax.live.server.app import create_app
    logging.getLogger("mtrouter_jax.live").setLevel(logging.ERROR)
    est = load_checkpoint(a.checkpoint)
    pool = Pool(est.pool.name, tuple(dataclasses.replace(m, endpoint=Endpoint("http://127.0.0.1:9/v1", f"fake-{m.name}", None))
                                     for m in est.pool.models))
    log_dir = tempfile.mkdtemp(prefix="bench-asgi-")
    router = Router(est, pool=pool, log_path=Path(log_dir) / "live.jsonl")
    app = create_app(router, timeout=30.0, max_retries=0)
    proxy = app.state.proxy
    proxy.backends.achat = canned([0])
    gcs = {g: [0, 0.0] for g in range(3)}
    started = [0.0]

    def on_gc(phase, info):
        if phase == "start":
            started[0] = time.process_time()
        else:
            gcs[info["generation"]][0] += 1
            gcs[info["generation"]][1] += time.process_time() - started[0]

    async def run():
        async with app.router.lifespan_context(app):
            await asyncio.gather(*(conversation(app, f"w{i}") for i in range(200)))  # compiles, batch kernels
            from mtrouter_jax.live.batching import _COMPILER
            _COMPILER.submit(lambda: None).result()  # (the background compilations are done)
            await asyncio.gather(*(conversation(app, f"v{i}") for i in range(200)))
            if a.freeze_heap:
                gc.collect()
                gc.freeze()
            if a.gc_stats:
                gc.callbacks.append(on_gc)
            t = time.process_time()
            for b in range(0, a.conversations, 200):
                await asyncio.gather(*(conversation(app, f"c{i}") for i in range(b, min(a.conversations, b + 200))))
            dt = time.process_time() - t
            if a.gc_stats:
                gc.callbacks.remove(on_gc)
            n = a.conversations * 6
            print(json.dumps({"conversations": a.conversations, "requests": n, "cpu_ms_per_request": round(dt / n * 1e3, 3),
                              "freeze_heap": a.freeze_heap,
                              "gc": {str(g): {"collections": c, "cpu_s": round(s, 3)} for g, (c, s) in gcs.items()}
                              if a.gc_stats else None}))

    asyncio.run(run())


if __name__ == "__main__":
    main()
