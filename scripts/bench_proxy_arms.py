"""Arms of ``scripts/bench_proxy.py`` (issue 19): the proxy per state backend, before/after, and the floor.

    python scripts/bench_proxy.py --checkpoint PATH --concurrency 200 --state memory redis --passthrough \
        [--baseline ../before-tree] [--rounds 2] [--profile prof.json]

Each arm is a fresh server process in front of the same zero-latency fake upstream, driven by the
same load generator through the same levels: ``proxy/memory`` (``mtrouter serve``), ``proxy/redis``
(``--state`` on a ``redis-server`` started here on a free loopback port, no persistence, as
replicas use it), ``before/...`` (the same from ``--baseline``'s source tree) and ``passthrough``
(a bare Starlette app forwarding each request with one aiohttp session: no routing, no accounting,
the floor of one Python process serving this load on this machine). Arms run one after the other,
interleaved ``--rounds`` times, so that drift on a shared machine hits every arm alike.

The figure that matters is the **server process's CPU per request**: its user + system time
(``/proc/PID/stat``, all threads) over the level, divided by the requests it served. ``--profile``
records the first proxy arm with ``py-spy`` (non-blocking, 100 Hz) during its levels.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench_proxy import _proxy, _upstream, _wait, batching_of, run_level, warm_up
from testing.live import free_port


def _passthrough(port: int, upstream_base: str) -> None:
    """A bare Starlette + aiohttp pass-through: what one process minimally spends per request."""
    import aiohttp
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    session: list = []

    async def chat(request):
        t0 = time.perf_counter()
        body = json.loads(await request.body())
        body["model"] = "fake-pass"
        if not session:
            session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2048)))
        t1 = time.perf_counter()
        async with session[0].post(upstream_base + "/chat/completions", json=body) as r:
            reply = await r.json()
        up = time.perf_counter() - t1
        return Response(json.dumps(reply), media_type="application/json",
                        headers={"X-MTRouter-Overhead-Ms": f"{(time.perf_counter() - t0 - up) * 1e3:.3f}"})

    async def finish(request):
        await request.body()
        return JSONResponse({"logged": True})

    async def health(request):
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                            Route("/v1/mtrouter/conversations/{cid}/finish", finish, methods=["POST"]),
                            Route("/health", health)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", timeout_keep_alive=75, backlog=4096)


def _redis(workdir: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir], stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def arms_table(rows: list[dict]) -> str:
    """arm x level -> req/s, server CPU ms/request (and x the floor), overhead p50/p99."""
    floor = {r["concurrency"]: r["cpu_ms_per_request"]["proxy"] for r in rows if r["arm"] == "passthrough"}
    lines = ["| arm | concurrency | req/s | server CPU ms/request | × pass-through | overhead p50 / p99 (ms) "
             "| errors |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cpu, f = r["cpu_ms_per_request"]["proxy"], floor.get(r["concurrency"])
        lines.append(f"| {r['arm']} | {r['concurrency']} | {r['throughput_rps']:.0f} | {cpu:.2f} | "
                     f"{'-' if not f else f'{cpu / f:.2f}'} | {r['overhead_p50_ms']:.2f} / {r['overhead_p99_ms']:.1f} "
                     f"| {r['errors']} |")
    return "\n".join(lines)


def run_arms(a) -> dict:
    ctx = mp.get_context("spawn")
    tmp = tempfile.mkdtemp()
    port = free_port()
    upstream_base = f"http://127.0.0.1:{port}/v1"
    upstream = ctx.Process(target=_upstream, args=(port,), daemon=True)
    upstream.start()
    redis = None
    arms = []  # (name, process target, args without the port)
    for st in a.state or ["memory"]:
        if st == "redis" and redis is None:
            redis = _redis(tmp)
        url = redis[1] if st == "redis" else st
        name = "redis" if st.startswith(("redis", "unix")) else st
        for tag, src in (("before", a.baseline), ("proxy", None)):
            if tag == "before" and src is None:
                continue
            log = str(Path(tmp) / f"{tag}-{name}.jsonl")
            arms.append((f"{tag}/{name}", _proxy, (upstream_base, a.checkpoint, log, a.no_aiohttp, None, url, src)))
    if a.passthrough:
        arms.append(("passthrough", _passthrough, (upstream_base,)))
    rows, spy = [], None
    try:
        _wait(f"http://127.0.0.1:{port}/docs")
        for rnd in range(a.rounds):
            for name, target, args in arms:
                sport = free_port()
                server = ctx.Process(target=target, args=(sport, *args), daemon=True)
                server.start()
                try:
                    base = f"http://127.0.0.1:{sport}"
                    _wait(base + "/health")
                    warm_up(base, max(a.concurrency), a.budget, f"warm{rnd}")  # jit compiles, connections
                    pids = {"upstream": upstream.pid, "proxy": server.pid, "loadgen": os.getpid()}
                    if a.profile and spy is None and rnd == 0 and name.startswith("proxy/"):
                        spy = subprocess.Popen(["py-spy", "record", "--pid", str(server.pid), "--rate", str(a.profile_rate),
                                                "--nonblocking", "--format", "speedscope", "--output", a.profile]
                                               + (["--gil"] if a.profile_gil else []),
                                               stdout=subprocess.DEVNULL)
                        time.sleep(1.0)
                    for level in a.concurrency:
                        n = a.conversations or max(40, 2 * level)
                        tag = f"{name.replace('/', '-')}-{rnd}-c{level}"  # in finish URLs: no "/"
                        row = run_level(base, pids, level, n, a.turns, a.budget, tag)
                        rows.append({"arm": name, "round": rnd, **row, "decision_batching": batching_of(base)})
                        print(json.dumps(rows[-1]), flush=True)
                    if spy is not None and spy.returncode is None and spy.poll() is None:
                        spy.send_signal(2)  # SIGINT: py-spy writes the profile and exits
                        spy.wait(60)
                finally:
                    server.terminate()
                    server.join(10)
    finally:
        upstream.terminate()
        if redis is not None:
            redis[0].kill()
    out = {"estimator": "checkpoint" if a.checkpoint else "fake", "rows": rows, "cpus": os.cpu_count(),
           "python": platform.python_version(), "no_aiohttp": a.no_aiohttp, "baseline": a.baseline,
           "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    print(arms_table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":  # the arms are options of bench_proxy.py: the same command line
    import sys

    from bench_proxy import main
    main(["--passthrough", *sys.argv[1:]])
