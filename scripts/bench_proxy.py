"""Router overhead and throughput of the live proxy: concurrent conversations against a zero-latency fake upstream.

Overhead per request is measured inside the server (handler time minus time in upstream calls,
header ``X-MTRouter-Overhead-Ms``). The fake upstream, the proxy and the load generator run in
separate processes so that they do not compete for one GIL (they still share the machine's
cores). Every concurrency level runs against the same proxy, one after the other, so that the
levels compare within one run. Usage:

    python scripts/bench_proxy.py [--checkpoint PATH] [--concurrency 1 200] [--conversations N] [--turns 5]
    python scripts/bench_proxy.py --hostile [--flood 20000 --max-open 5000]
    python scripts/bench_proxy.py --checkpoint PATH --concurrency 200 --state memory redis --passthrough

``--state``, ``--passthrough``, ``--baseline SRC`` and ``--profile OUT`` compare arms in one run
(``scripts/bench_proxy_arms.py``): the proxy per state backend (memory; redis on a redis-server
started here), the same from another source tree, and a bare Starlette + aiohttp pass-through (the
floor), each reported as req/s and the server process's CPU milliseconds per request.

``--hostile`` runs, next to honest conversations, clients that cheat (``n: 8``, rewritten 200 KB
histories, 200 KB of tools, 30 MB bodies, a flood of new idle conversations) against an upstream
that lies about usage for some calls (missing, negative, NaN, far above the cap); it reports budget
overruns not attributable to a turn flagged ``over_cap``, acknowledged finishes missing from the
log, the honest traffic's overhead, ``/health`` latency during the big bodies and the proxy's peak
RSS (``scripts/bench_proxy_hostile.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fake upstream/estimator live with the tests
sys.path.insert(0, str(ROOT / "scripts"))

from testing.live import FakeEstimator, FakeUpstream, free_port, make_pool  # noqa: E402

from mtrouter_jax.core.pool import Endpoint, Pool  # noqa: E402

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {
    "q": {"type": "string"}}}}} for n in ("web_search", "python", "read_file")]


def _upstream(port: int, hostile: bool = False) -> None:
    import uvicorn
    if hostile:
        from bench_proxy_hostile import lying_upstream
        app = lying_upstream()
    else:
        app = FakeUpstream(record=False).app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", backlog=4096)


def _proxy(port: int, upstream_base: str, checkpoint: str | None, log: str, no_aiohttp: bool,
           limits: dict | None = None, state: str | None = None, src: str | None = None) -> None:
    """The proxy as ``mtrouter serve`` runs it; ``src``: from another source tree's ``mtrouter_jax``
    (e.g. a ``git worktree`` of the commit before a change), for before/after in one run."""
    import logging
    if no_aiohttp:  # as without openai's aiohttp extra: the upstream clients fall back to httpx
        sys.modules["aiohttp"] = None  # type: ignore[assignment]
    if src is not None:  # this process imported the package already (the bench's own imports): forget it
        for name in [m for m in sys.modules if m == "mtrouter_jax" or m.startswith("mtrouter_jax.")]:
            del sys.modules[name]
        sys.path.insert(0, str(Path(src).resolve()))

    import uvicorn

    from mtrouter_jax.live.router import Router
    from mtrouter_jax.live.server.app import create_app
    try:
        from mtrouter_jax.live.server.app import UVICORN_OPTIONS
    except ImportError:  # measuring an older version: its serve() used uvicorn's defaults
        UVICORN_OPTIONS = {"backlog": 4096}
    logging.getLogger("mtrouter_jax.live").setLevel(logging.ERROR)
    if checkpoint:
        from mtrouter_jax.estimator.checkpoint import load_checkpoint
        est = load_checkpoint(checkpoint)
        from mtrouter_jax.core.pool import Endpoint as E, Pool as P  # (src's classes, not this tree's)
        pool = P(est.pool.name, tuple(dataclasses.replace(m, endpoint=E(upstream_base, f"fake-{m.name}", None))
                                      for m in est.pool.models))
        router = Router(est, pool=pool, log_path=log)
    else:
        router = Router(FakeEstimator(make_pool(upstream_base, key_env=None)), log_path=log)
    kw = {}
    if limits:
        from mtrouter_jax.live.server.limits import Limits
        kw["limits"] = Limits(**limits)
    if state not in (None, "memory"):  # as mtrouter serve: "memory" is the in-process store
        from mtrouter_jax.live.store import open_store
        kw["state"] = open_store(state)
    app = create_app(router, timeout=30.0, max_retries=0, **kw)
    try:  # as mtrouter serve (an older tree without it serves as it did)
        from mtrouter_jax.live.server.heap import freeze_heap
        freeze_heap()
    except ImportError:
        pass
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", **UVICORN_OPTIONS)  # as mtrouter serve


def _wait(url: str) -> None:
    for _ in range(1200):
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def agent_step(msgs: list, msg: dict, t: int) -> None:
    """What a scripted agent appends after a reply: the reply, a result per tool call, else "continue"."""
    msgs.append(msg)
    for tc in msg.get("tool_calls") or []:
        msgs.append({"role": "tool", "tool_call_id": tc["id"], "content": f"result {t}"})
    if not msg.get("tool_calls"):
        msgs.append({"role": "user", "content": "continue"})


class _Http:
    """The load generator's HTTP client: aiohttp when installed (a tenth of httpx's CPU per request
    at 200 in flight, so the generator does not starve the proxy of the 2 shared cores), else httpx."""

    def __init__(self, base: str, connections: int):
        self.base = base
        try:
            import aiohttp
            self.aio = aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=connections),
                                             timeout=aiohttp.ClientTimeout(total=120))
            self.errors: tuple = (aiohttp.ClientError, asyncio.TimeoutError)
        except ImportError:
            self.aio = None
            self.httpx = httpx.AsyncClient(base_url=base, timeout=120.0, limits=httpx.Limits(
                max_connections=connections, max_keepalive_connections=connections))
            self.errors = (httpx.HTTPError,)

    async def post(self, path: str, body: dict, headers: dict | None = None) -> tuple[int, dict, dict]:
        """(status, lower-case headers, JSON body) of a POST."""
        if self.aio is not None:
            async with self.aio.post(path, json=body, headers=headers) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.json(content_type=None)
        r = await self.httpx.post(path, json=body, headers=headers)
        return r.status_code, dict(r.headers), r.json()

    async def close(self) -> None:
        await (self.aio.close() if self.aio is not None else self.httpx.aclose())


async def conversation(http: _Http, cid: str, turns: int, budget: float | None) -> tuple[list, list, list]:
    """One conversation of ``turns`` tool-calling turns, then a scored finish; returns
    (overheads ms, latencies ms, error kinds)."""
    overhead, latency, errors = [], [], []
    msgs = [{"role": "system", "content": "bench agent"}, {"role": "user", "content": f"task {cid}"}]
    model = "mtrouter" if budget is None else f"mtrouter-{budget}"
    for t in range(turns):
        t0 = time.perf_counter()
        try:
            status, hdr, resp = await http.post("/v1/chat/completions", {"model": model, "messages": msgs,
                                                                          "tools": TOOLS},
                                                {"X-MTRouter-Conversation": cid})
        except http.errors as e:
            errors.append(type(e).__name__)
            continue
        latency.append((time.perf_counter() - t0) * 1e3)
        if status != 200:
            errors.append(f"http_{status}")
            continue
        if hdr.get("x-mtrouter-fallbacks"):
            errors.append("fallback:" + hdr["x-mtrouter-fallbacks"])  # served, but a model failed
        overhead.append(float(hdr["x-mtrouter-overhead-ms"]))
        agent_step(msgs, resp["choices"][0]["message"], t)
    try:
        status, _, _ = await http.post(f"/v1/mtrouter/conversations/{cid}/finish", {"score": 0.5, "score_range": [0, 1]})
        if status != 200:
            errors.append(f"finish_http_{status}")
    except http.errors as e:
        errors.append(f"finish_{type(e).__name__}")
    return overhead, latency, errors


def with_endpoints(pool: Pool, base_url: str) -> Pool:
    return Pool(pool.name, tuple(dataclasses.replace(m, endpoint=Endpoint(base_url, f"fake-{m.name}", None))
                                 for m in pool.models))


def batching_of(base: str) -> dict | None:
    """The proxy's decision batching state (``/v1/mtrouter/router``), or None (an older proxy)."""
    try:
        return httpx.get(base + "/v1/mtrouter/router", timeout=10).json().get("decision_batching")
    except (httpx.HTTPError, ValueError):
        return None


def warm_up(base: str, level: int, budget: float, tag: str, wait_s: float = 120.0) -> None:
    """What a server that has been up a while has done: the single decision's jit compile (one
    conversation), then ``level`` conversations at once until the batch kernels they call for have
    compiled (in the proxy's background thread), so the measured levels are steady state."""
    run_level(base, {}, 1, 1, 3, budget, f"{tag}-a")
    run_level(base, {}, level, level, 2, budget, f"{tag}-b")
    deadline = time.monotonic() + wait_s
    while (b := batching_of(base)) is not None and b["compiling"] and time.monotonic() < deadline:
        time.sleep(0.5)
    run_level(base, {}, level, level, 2, budget, f"{tag}-c")


def run_level(base: str, pids: dict, level: int, n_conv: int, turns: int, budget: float, tag: str) -> dict:
    """Drive ``n_conv`` conversations, ``level`` at a time; measures latency, overhead, CPU per request."""
    async def drive():
        http = _Http(base, level)
        sem = asyncio.Semaphore(level)

        async def one(i):
            async with sem:
                return await conversation(http, f"{tag}-{i}", turns, budget)
        try:
            t0 = time.perf_counter()
            res = await asyncio.gather(*(one(i) for i in range(n_conv)))
            return res, time.perf_counter() - t0
        finally:
            await http.close()

    cpu0 = {k: _cpu_seconds(p) for k, p in pids.items()}
    res, wall = asyncio.run(drive())
    cpu1 = {k: _cpu_seconds(p) for k, p in pids.items()}
    ov = np.array([x for r in res for x in r[0]])
    lat = np.array([x for r in res for x in r[1]])
    kinds = collections.Counter(e for r in res for e in r[2])
    failed = sum(v for k, v in kinds.items() if not k.startswith("fallback:"))
    n_ok = len(ov)
    cpu = {k: None if cpu0[k] is None or cpu1[k] is None else (cpu1[k] - cpu0[k]) * 1e3 / max(n_ok, 1)
           for k in pids}
    pct = lambda a, q: float(np.percentile(a, q)) if len(a) else float("nan")  # noqa: E731
    return {"concurrency": level, "conversations": n_conv, "requests": n_conv * turns, "ok": n_ok,
            "errors": failed, "error_kinds": dict(kinds), "seconds": wall,
            "overhead_p50_ms": pct(ov, 50), "overhead_p99_ms": pct(ov, 99),
            "latency_p50_ms": pct(lat, 50), "latency_p99_ms": pct(lat, 99),
            "throughput_rps": n_ok / wall, "cpu_ms_per_request": cpu}


def table(rows: list[dict]) -> str:
    head = ("| concurrency | conversations × turns | router overhead p50 / p99 (ms) | end-to-end p50 / p99 (ms) "
            "| req/s | errors | proxy CPU ms/req |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        cpu = r["cpu_ms_per_request"].get("proxy")
        lines.append(f"| {r['concurrency']} | {r['conversations']} × {r['requests'] // r['conversations']} | "
                     f"{r['overhead_p50_ms']:.2f} / {r['overhead_p99_ms']:.1f} | "
                     f"{r['latency_p50_ms']:.1f} / {r['latency_p99_ms']:.0f} | {r['throughput_rps']:.0f} | "
                     f"{r['errors']} | {'-' if cpu is None else f'{cpu:.2f}'} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="real checkpoint (default: the fake estimator)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 200],
                   help="conversations in flight at once; each level is one phase of the same run")
    p.add_argument("--conversations", type=int, default=None,
                   help="conversations per level (default: max(40, 2 x concurrency))")
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--budget", type=float, default=5.0, help="per-conversation budget (USD)")
    p.add_argument("--no-aiohttp", action="store_true",
                   help="proxy without aiohttp (the upstream clients' httpx fallback)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--write-docs", action="store_true", help="write the table into docs/live.md")
    p.add_argument("--state", nargs="+", default=None, metavar="STATE",
                   help="arms: 'memory', 'redis' (a redis-server started here) or redis:// URLs; each is a proxy")
    p.add_argument("--passthrough", action="store_true",
                   help="also drive the same levels through a bare Starlette + aiohttp pass-through (the floor)")
    p.add_argument("--baseline", default=None, metavar="SRC",
                   help="also each proxy arm from this source tree (e.g. a git worktree of the commit before)")
    p.add_argument("--rounds", type=int, default=1, help="arms run interleaved, this many times each")
    p.add_argument("--profile", default=None, help="record the first proxy arm with py-spy into this speedscope JSON")
    p.add_argument("--profile-gil", action="store_true",
                   help="--profile only samples holding the GIL (the Python CPU, not threads waiting)")
    p.add_argument("--profile-rate", type=int, default=100, help="--profile samples per second")
    p.add_argument("--hostile", action="store_true", help="the hostile mix next to honest traffic")
    p.add_argument("--flood", type=int, default=20_000, help="new idle conversations of the flood (--hostile)")
    p.add_argument("--max-open", type=int, default=5_000, help="the proxy's --max-open (--hostile)")
    a = p.parse_args(argv)
    if a.hostile:
        from bench_proxy_hostile import run_hostile
        return run_hostile(a)
    if a.state or a.passthrough or a.baseline or a.profile:
        from bench_proxy_arms import run_arms
        return run_arms(a)

    ctx = mp.get_context("spawn")
    port, pport = free_port(), free_port()
    upstream_base = f"http://127.0.0.1:{port}/v1"
    log = str(Path(tempfile.mkdtemp()) / "bench.jsonl")
    procs = {"upstream": ctx.Process(target=_upstream, args=(port,), daemon=True),
             "proxy": ctx.Process(target=_proxy, args=(pport, upstream_base, a.checkpoint, log, a.no_aiohttp),
                                  daemon=True)}
    for pr in procs.values():
        pr.start()
    rows = []
    try:
        _wait(f"http://127.0.0.1:{port}/docs")
        _wait(f"http://127.0.0.1:{pport}/health")
        base = f"http://127.0.0.1:{pport}"
        warm_up(base, max(a.concurrency), a.budget, "warmup")  # jit compiles
        pids = {k: pr.pid for k, pr in procs.items()} | {"loadgen": os.getpid()}
        for level in a.concurrency:
            n = a.conversations or max(40, 2 * level)
            rows.append(run_level(base, pids, level, n, a.turns, a.budget, f"c{level}"))
            rows[-1]["decision_batching"] = batching_of(base)
            print(json.dumps(rows[-1]), flush=True)
    finally:
        for pr in procs.values():
            pr.terminate()
    out = {"estimator": "checkpoint" if a.checkpoint else "fake", "levels": rows, "cpus": os.cpu_count(),
           "python": platform.python_version(), "no_aiohttp": a.no_aiohttp,
           "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if len(rows) > 1:
        out["throughput_ratio_last_to_first"] = rows[-1]["throughput_rps"] / rows[0]["throughput_rps"]
    md = table(rows)
    print(md)
    if "throughput_ratio_last_to_first" in out:
        print(f"throughput at concurrency {rows[-1]['concurrency']} / at {rows[0]['concurrency']}: "
              f"{out['throughput_ratio_last_to_first']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    if a.write_docs:
        doc = ROOT / "docs" / "live.md"
        text = doc.read_text()
        start, end = "<!-- bench:start -->", "<!-- bench:end -->"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            doc.write_text(head + start + "\n" + md + "\n" + end + rest.split(end, 1)[1])
    return out


if __name__ == "__main__":
    main()
