"""Router overhead of the live proxy: many concurrent conversations against zero-latency fake upstreams.

Overhead per request is measured inside the server (handler time minus time in upstream calls,
header ``X-MTRouter-Overhead-Ms``). The fake upstream, the proxy and the load generator run in
separate processes so that they do not compete for one GIL (they still share the machine's cores). Usage:

    python scripts/bench_proxy.py [--checkpoint PATH] [--conversations 200] [--turns 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fake upstream/estimator live with the tests

from live_fakes import FakeEstimator, FakeUpstream, free_port, make_pool  # noqa: E402

from mtrouter_jax.live.router import Router  # noqa: E402
from mtrouter_jax.live.server import create_app  # noqa: E402
from mtrouter_jax.pool import Endpoint, Pool  # noqa: E402

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {
    "q": {"type": "string"}}}}} for n in ("web_search", "python", "read_file")]


def _upstream(port: int) -> None:
    import uvicorn
    uvicorn.run(FakeUpstream(record=False).app(), host="127.0.0.1", port=port, log_level="error")


def _proxy(port: int, upstream_base: str, checkpoint: str | None, log: str) -> None:
    import logging

    import uvicorn
    logging.getLogger("mtrouter_jax.live").setLevel(logging.ERROR)
    if checkpoint:
        from mtrouter_jax.checkpoint import load_checkpoint
        est = load_checkpoint(checkpoint)
        router = Router(est, pool=with_endpoints(est.pool, upstream_base), log_path=log)
    else:
        router = Router(FakeEstimator(make_pool(upstream_base, key_env=None)), log_path=log)
    app = create_app(router, timeout=30.0, max_retries=0)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", backlog=4096)


def _wait(url: str) -> None:
    for _ in range(1200):
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def conversation(http: httpx.Client, i: int, turns: int, budget: float | None) -> tuple[list, list, int]:
    overhead, latency, errors = [], [], 0
    msgs = [{"role": "system", "content": "bench agent"}, {"role": "user", "content": f"task {i}"}]
    model = "mtrouter" if budget is None else f"mtrouter-{budget}"
    for t in range(turns):
        t0 = time.perf_counter()
        try:
            r = http.post("/v1/chat/completions", json={"model": model, "messages": msgs, "tools": TOOLS},
                          headers={"X-MTRouter-Conversation": f"bench-{i}"})
        except httpx.HTTPError:
            errors += 1
            continue
        latency.append((time.perf_counter() - t0) * 1e3)
        if r.status_code != 200:
            errors += 1
            continue
        overhead.append(float(r.headers["x-mtrouter-overhead-ms"]))
        msg = r.json()["choices"][0]["message"]
        msgs.append(msg)
        for tc in msg.get("tool_calls") or []:
            msgs.append({"role": "tool", "tool_call_id": tc["id"], "content": f"result {t}"})
        if not msg.get("tool_calls"):
            msgs.append({"role": "user", "content": "continue"})
    http.post(f"/v1/mtrouter/conversations/bench-{i}/finish", json={"score": 0.5})
    return overhead, latency, errors


def with_endpoints(pool: Pool, base_url: str) -> Pool:
    return Pool(pool.name, tuple(dataclasses.replace(m, endpoint=Endpoint(base_url, f"fake-{m.name}", None))
                                 for m in pool.models))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="real checkpoint (default: the fake estimator)")
    p.add_argument("--conversations", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=200, help="conversations in flight at once")
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--budget", type=float, default=5.0, help="per-conversation budget (USD)")
    p.add_argument("--write-docs", action="store_true", help="write the results into docs/live.md")
    a = p.parse_args(argv)

    ctx = mp.get_context("spawn")
    port, pport = free_port(), free_port()
    base = f"http://127.0.0.1:{port}/v1"
    log = str(Path(tempfile.mkdtemp()) / "bench.jsonl")
    procs = [ctx.Process(target=_upstream, args=(port,), daemon=True),
             ctx.Process(target=_proxy, args=(pport, base, a.checkpoint, log), daemon=True)]
    for pr in procs:
        pr.start()
    try:
        _wait(f"http://127.0.0.1:{port}/docs")
        _wait(f"http://127.0.0.1:{pport}/health")
        limits = httpx.Limits(max_connections=a.concurrency, max_keepalive_connections=a.concurrency)
        with httpx.Client(base_url=f"http://127.0.0.1:{pport}", timeout=120.0, limits=limits) as http:
            conversation(http, -1, 2, a.budget)  # warm-up (jit compile)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(a.concurrency) as pool_:
                res = list(pool_.map(lambda i: conversation(http, i, a.turns, a.budget),
                                     range(a.conversations)))
            wall = time.perf_counter() - t0
    finally:
        for pr in procs:
            pr.terminate()
    ov = np.array([x for r in res for x in r[0]])
    lat = np.array([x for r in res for x in r[1]])
    errors = sum(r[2] for r in res)
    out = {"estimator": "checkpoint" if a.checkpoint else "fake", "conversations": a.conversations,
           "concurrency": a.concurrency, "requests": int(len(lat)) + errors, "errors": errors,
           "overhead_p50_ms": float(np.percentile(ov, 50)), "overhead_p99_ms": float(np.percentile(ov, 99)),
           "latency_p50_ms": float(np.percentile(lat, 50)), "latency_p99_ms": float(np.percentile(lat, 99)),
           "throughput_rps": float(len(lat) / wall), "cpus": os.cpu_count(), "python": platform.python_version()}
    rows = [("estimator", out["estimator"]), ("conversations x turns", f"{a.conversations} x {a.turns}"),
            ("concurrency", a.concurrency), ("requests / errors", f"{out['requests']} / {errors}"),
            ("router overhead p50 / p99 (ms)", f"{out['overhead_p50_ms']:.2f} / {out['overhead_p99_ms']:.2f}"),
            ("end-to-end latency p50 / p99 (ms)", f"{out['latency_p50_ms']:.1f} / {out['latency_p99_ms']:.1f}"),
            ("throughput (req/s)", f"{out['throughput_rps']:.0f}"), ("CPU cores", out["cpus"])]
    w = max(len(k) for k, _ in rows)
    table = "\n".join(f"| {k:<{w}} | {v} |" for k, v in rows)
    table = f"| {'metric':<{w}} | value |\n|{'-' * (w + 2)}|-------|\n" + table
    print(table)
    print(f"(mean overhead {statistics.fmean(ov):.2f} ms)")
    if a.write_docs:
        doc = ROOT / "docs" / "live.md"
        text = doc.read_text()
        start, end = "<!-- bench:start -->", "<!-- bench:end -->"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + start + "\n" + table + "\n" + end + rest.split(end, 1)[1]
            doc.write_text(text)
    return out


if __name__ == "__main__":
    main()
