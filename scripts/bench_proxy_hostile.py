"""The hostile mix of ``scripts/bench_proxy.py --hostile`` (issue 18): cheating clients and a lying
upstream next to honest traffic, on one proxy process; figures for docs/benchmarks.md.

Phases: honest traffic alone (overhead baseline); honest traffic with the hostile mix at the same
time (``n: 8``; 200 KB rewritten histories; 200 KB of tools; upstream usage missing, negative, NaN,
a string, or 10^6 completion tokens over a small cap); three concurrent 30 MB bodies while
``/health`` is polled; a body of 1.2M empty objects; a flood of new conversations that are never
finished, against ``--max-open``. Then the log is read: overruns (spend > budget beyond what turns
flagged ``over_cap`` cost) and acknowledged finishes missing from it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import multiprocessing as mp
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

from bench_proxy import TOOLS, _Http, _proxy, _upstream, _wait, conversation, run_level, warm_up  # noqa: F401
from testing.live import FakeUpstream, completion, free_port

LIES = ("missing", "negative", "nan", "string", "huge")


def lying_upstream():
    """The fake upstream, lying about usage when the last message says ``LIE:<kind>``."""
    fake = FakeUpstream(record=False)
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = json.loads(await request.body())
        msg, usage = fake.response_for(body)
        last = str(body["messages"][-1].get("content") or "")
        lie = last.split("LIE:", 1)[1].split()[0] if "LIE:" in last else None
        if lie == "negative":
            usage = {**usage, "prompt_tokens": -10**9, "completion_tokens": -10**9}
        elif lie == "nan":
            usage = {**usage, "completion_tokens": float("nan")}
        elif lie == "string":
            usage = {**usage, "prompt_tokens": "many"}
        elif lie == "huge":
            usage = {**usage, "completion_tokens": 10**6}
        reply = completion(body, msg, None if lie == "missing" else usage, cid="x")
        return Response(json.dumps(reply), media_type="application/json")

    return app


async def _cheat(http: _Http, cid: str, kind: str, acked: list, statuses: collections.Counter) -> None:
    budget = 0.02
    msgs = [{"role": "system", "content": "agent"}, {"role": "user", "content": f"task {cid}"}]
    for t in range(5):
        body: dict = {"model": f"mtrouter-{budget}", "messages": msgs + [{"role": "user", "content": f"go {t}"}]}
        if kind == "n":
            body["n"] = 8
        elif kind == "rewrite":
            body["messages"][0] = {"role": "system", "content": f"{t}" + "r" * 200_000}
        elif kind == "tools":
            body["tools"] = TOOLS + [{"type": "function", "function": {"name": "big", "description": "d" * 200_000}}]
        else:
            body["messages"][-1]["content"] = f"LIE:{kind} go {t}"
        try:
            status, _, resp = await http.post("/v1/chat/completions", body, {"X-MTRouter-Conversation": cid})
        except http.errors as e:
            statuses[f"{kind}:{type(e).__name__}"] += 1
            continue
        statuses[f"{kind}:{status}"] += 1
        if status == 200:
            msgs = body["messages"] + [resp["choices"][0]["message"]]
        elif status == 402:
            break
    status, _, resp = await http.post(f"/v1/mtrouter/conversations/{cid}/finish", {"score": 0.5, "score_range": [0, 1]})
    if status == 200 and resp.get("logged"):
        acked.append(cid)


async def _mixed(base: str, tag: str, acked: list, statuses: collections.Counter):
    http = _Http(base, 200)
    try:
        honest = [conversation(http, f"{tag}-h{i}", 5, 0.05) for i in range(100)]
        cheats = [_cheat(http, f"{tag}-{k}{i}", k, acked, statuses) for k in ("n", "rewrite", "tools", *LIES)
                  for i in range(20)]
        res = await asyncio.gather(*honest, *cheats)
    finally:
        await http.close()
    return res[:len(honest)]


class _Rss:
    """Peak RSS of a process, sampled every 20 ms in a thread."""

    def __init__(self, pid: int):
        import psutil
        self.proc, self.peak, self.stop = psutil.Process(pid), 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def now(self) -> int:
        return self.proc.memory_info().rss


def _big_bodies(base: str, n: int = 3, mb: int = 30) -> dict:
    """``n`` concurrent ``mb`` MB bodies while /health is polled: its worst latency."""
    done = threading.Event()
    lat = []

    def poll():
        with httpx.Client(base_url=base, timeout=60) as c:
            while not done.is_set():
                t0 = time.perf_counter()
                c.get("/health")
                lat.append(time.perf_counter() - t0)
                time.sleep(0.01)

    def send(i):
        body = json.dumps({"model": "mtrouter-0.01", "messages": [{"role": "user", "content": "x" * (mb * 2**20)}]})
        with httpx.Client(base_url=base, timeout=120) as c:
            return c.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json",
                                                                         "X-MTRouter-Conversation": f"big{i}"}).status_code

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out = []
    ts = [threading.Thread(target=lambda i=i: out.append(send(i))) for i in range(n)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    flood = b'{"model": "mtrouter", "messages": [{"role": "user", "content": "a"}], "x": [' + b"{}," * 1_200_000 + b"{}]}"
    st = httpx.post(base + "/v1/chat/completions", content=flood, headers={"Content-Type": "application/json"},
                    timeout=60).status_code
    return {"statuses": sorted(out), "seconds": wall, "health_max_ms": max(lat) * 1e3,
            "health_p50_ms": float(np.percentile(lat, 50)) * 1e3, "object_flood_status": st}


async def _flood(base: str, n: int) -> collections.Counter:
    http = _Http(base, 200)
    sem = asyncio.Semaphore(200)
    out: collections.Counter = collections.Counter()

    async def one(i):
        async with sem:
            try:
                st, _, _ = await http.post("/v1/chat/completions", {"model": "mtrouter", "messages": [
                    {"role": "user", "content": f"flood {i}"}]}, {"X-MTRouter-Conversation": f"flood-{i}"})
                out[st] += 1
            except http.errors as e:
                out[type(e).__name__] += 1
    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await http.close()
    return out


def _audit(log: str, acked: list[str]) -> dict:
    from mtrouter_jax.logs.io import read_episodes
    eps = {e.episode_id: e for e in read_episodes(log)} if Path(log).exists() else {}
    over, flagged = 0, 0
    for e in eps.values():
        if e.budget is None:
            continue
        flagged_cost = sum(t.cost for t in e.turns if (t.meta or {}).get("usage_flag") == "over_cap")
        if e.total_cost > e.budget + 1e-9:
            flagged += 1
            if e.total_cost > e.budget + flagged_cost + 1e-9:
                over += 1
    flags = collections.Counter((t.meta or {}).get("usage_flag") for e in eps.values() for t in e.turns)
    return {"episodes": len(eps), "overruns_unattributed": over, "overruns_flagged_upstream": flagged,
            "lost_acknowledged": len(set(acked) - set(eps)), "acknowledged": len(acked),
            "usage_flags": {str(k): v for k, v in flags.items()}}


def run_hostile(a) -> dict:
    ctx = mp.get_context("spawn")
    port, pport = free_port(), free_port()
    log = str(Path(tempfile.mkdtemp()) / "hostile.jsonl")
    limits = {"max_open": a.max_open, "idle_timeout": 0.0, "turn_deadline": 30.0}
    procs = {"upstream": ctx.Process(target=_upstream, args=(port, True), daemon=True),
             "proxy": ctx.Process(target=_proxy, args=(pport, f"http://127.0.0.1:{port}/v1", a.checkpoint, log,
                                                       a.no_aiohttp, limits), daemon=True)}
    for pr in procs.values():
        pr.start()
    out: dict = {}
    try:
        _wait(f"http://127.0.0.1:{port}/docs")
        _wait(f"http://127.0.0.1:{pport}/health")
        base = f"http://127.0.0.1:{pport}"
        rss = _Rss(procs["proxy"].pid)
        # a real checkpoint compiles its decision kernels on first use: warm them as the CPU arms
        # do, or the honest phases include those XLA compiles (docs/benchmarks.md, run K)
        warm_up(base, 50, 0.05, "warmup")
        alone = run_level(base, {}, 50, 100, 5, 0.05, "alone")
        out["honest_alone"] = {k: alone[k] for k in ("overhead_p50_ms", "overhead_p99_ms", "errors")}
        acked: list[str] = []
        statuses: collections.Counter = collections.Counter()
        res = asyncio.run(_mixed(base, "mix", acked, statuses))
        ov = np.array([x for r in res for x in r[0]] or [np.nan])
        out["honest_with_hostile_error_kinds"] = dict(collections.Counter(e for r in res for e in r[2]).most_common(5))
        out["honest_with_hostile"] = {"overhead_p50_ms": float(np.percentile(ov, 50)),
                                      "overhead_p99_ms": float(np.percentile(ov, 99)),
                                      "errors": sum(len(r[2]) for r in res)}
        out["hostile_statuses"] = dict(sorted(statuses.items()))
        out["rss_before_big_mb"] = rss.now() / 2**20
        rss.peak = 0
        out["big_bodies"] = _big_bodies(base)
        out["big_bodies"]["rss_peak_mb"] = rss.peak / 2**20
        time.sleep(1.0)
        before = rss.now()
        rss.peak = 0
        t0 = time.perf_counter()
        out["flood"] = {"n": a.flood, "max_open": a.max_open,
                        "statuses": dict(asyncio.run(_flood(base, a.flood))), "seconds": time.perf_counter() - t0,
                        "rss_before_mb": before / 2**20, "rss_peak_mb": rss.peak / 2**20,
                        "open_after": httpx.get(base + "/health").json()["open_conversations"]}
        rss.stop = True
        out["audit_before_shutdown"] = _audit(log, acked)
    finally:
        for pr in procs.values():
            pr.terminate()
    out["cpus"] = os.cpu_count()
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":  # the same as ``python scripts/bench_proxy.py --hostile ...``
    import sys

    from bench_proxy import main
    main(["--hostile", *sys.argv[1:]])
