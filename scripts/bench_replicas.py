"""Proxy replicas on one Redis (issue 19): 1 vs N replica processes behind client-side round-robin.

    python scripts/bench_replicas.py [--replicas 1 2 4] [--conversations 400] [--turns 10]
        [--budget 0.0006] [--concurrency 100] [--kill] [--json out.json]

Processes: a zero-latency fake upstream, ``redis-server`` on a free loopback port (no persistence),
the replicas (``create_app(state=RedisStore)``, one log file shared by all) and this load
generator. Every *request* goes to the next replica in turn (so consecutive turns of one
conversation land on different replicas, the worst case for shared state); each conversation runs
its turns with a tight budget (most end in 402 before the last turn), then finishes on the next
replica. Reported per setup: budget overruns (a conversation whose billed turns — the
``X-MTRouter-Turn-Cost`` of its 200s — sum above its budget), acknowledged finishes missing from
or duplicated in the log, req/s, end-to-end and in-proxy (``X-MTRouter-Overhead-Ms``) p50/p99.
Baseline: one replica without ``--state`` (memory). ``--kill``: the last replica is ``kill -9``'d
half-way; a request that fails on a connection error is retried on the next replica. ``--draft``:
the replicas draft (``live/draft.py``) with a table in which ``mid`` is far better than ``cheap`` at
``python`` calls, so a cheap draft that calls python is re-served by mid: two reservations a turn
(the escalated turns are counted from the log).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_proxy import TOOLS, _Http, _upstream, _wait, agent_step  # noqa: E402
from bench_proxy_arms import _redis  # noqa: E402
from testing.live import FakeEstimator, free_port, make_pool  # noqa: E402

from mtrouter_jax.live.server.logwriter import WRITER_LEASE_MS  # noqa: E402

WRITER_LEASE_S = WRITER_LEASE_MS / 1000


def draft_table(router):
    """Turn outcomes in which ``mid`` gains at ``python`` calls and ``cheap`` loses (40 turns each)."""
    from mtrouter_jax.routing.draft import fit_table
    k = router.tool_of("python")[1]
    c, m = router.pool.index("cheap"), router.pool.index("mid")
    gains = np.r_[np.full(20, -0.35), np.full(20, -0.25), np.full(20, 0.15), np.full(20, 0.25)]
    return fit_table(np.full(80, k), np.r_[np.full(40, c), np.full(40, m)], gains, router.layout.tools,
                     router.pool.names)


def _replica(port: int, upstream_base: str, log: str, state: str | None, draft: bool = False) -> None:
    import logging

    import uvicorn

    from mtrouter_jax.live.router import Router
    from mtrouter_jax.live.server.app import UVICORN_OPTIONS, create_app
    from mtrouter_jax.live.store import open_store
    logging.getLogger("mtrouter_jax.live").setLevel(logging.ERROR)
    router = Router(FakeEstimator(make_pool(upstream_base, key_env=None)), log_path=log)
    if draft:
        router = Router(router.estimator, log_path=log, draft=True, type_outcomes=draft_table(router))
    app = create_app(router, timeout=30.0, max_retries=0, state=None if state is None else open_store(state))
    from mtrouter_jax.live.server.heap import freeze_heap
    freeze_heap()  # as mtrouter serve
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", **UVICORN_OPTIONS)


def _why(status: int, resp) -> str:
    code = resp.get("error", {}).get("code") if isinstance(resp, dict) and isinstance(resp.get("error"), dict) else None
    return f"{status} {code}"


class Load:
    """Round-robin requests over the replicas; per conversation: billed costs, finish status."""

    def __init__(self, bases: list[str], connections: int):
        self.https = [_Http(b, connections) for b in bases]
        self.rr = itertools.count()
        self.dead: set[int] = set()
        self.latency, self.overhead, self.errors = [], [], []
        self.other: list[str] = []  # answers other than 200/402, as "STATUS code"

    async def post(self, path, body, headers=None):
        for _ in range(len(self.https) + 1):
            i = next(self.rr) % len(self.https)
            if i in self.dead:
                continue
            try:
                return await self.https[i].post(path, body, headers)
            except self.https[i].errors as e:
                self.errors.append(type(e).__name__)  # a killed replica: retried on the next
        raise RuntimeError("every replica failed")

    async def conversation(self, cid: str, turns: int, budget: float) -> dict:
        msgs = [{"role": "system", "content": "bench agent"}, {"role": "user", "content": f"task {cid}"}]
        billed, codes = [], []
        for t in range(turns):
            t0 = time.perf_counter()
            status, hdr, resp = await self.post("/v1/chat/completions", {"model": f"mtrouter-{budget}",
                                                                         "messages": msgs, "tools": TOOLS},
                                                {"X-MTRouter-Conversation": cid})
            codes.append(status)
            if status != 200:
                if status != 402:
                    self.other.append(_why(status, resp))
                continue
            self.latency.append((time.perf_counter() - t0) * 1e3)
            self.overhead.append(float(hdr["x-mtrouter-overhead-ms"]))
            billed.append(float(hdr["x-mtrouter-turn-cost"]))
            agent_step(msgs, resp["choices"][0]["message"], t)
        status, _, resp = await self.post(f"/v1/mtrouter/conversations/{cid}/finish",
                                          {"score": 0.5, "score_range": [0, 1]})
        if status != 200:
            self.other.append("finish " + _why(status, resp))
        return {"cid": cid, "billed": billed, "codes": codes, "finished": status == 200}


def run_setup(n: int, state: bool, args, upstream_base: str, tmp: str, kill: bool = False) -> dict:
    log = os.path.join(tmp, f"live-{n}-{int(state)}-{int(kill)}.jsonl")
    redis, url = _redis(tmp) if state else (None, None)
    ports = [free_port() for _ in range(n)]
    procs = [mp.Process(target=_replica, args=(p, upstream_base, log, url, args.draft), daemon=True) for p in ports]
    for p in procs:
        p.start()
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    for b in bases:
        _wait(b + "/health")

    async def main():
        load = Load(bases, args.concurrency)
        sem = asyncio.Semaphore(args.concurrency)

        async def one(i):
            async with sem:
                return await load.conversation(f"c{i}", args.turns, args.budget)

        async def killer():
            await asyncio.sleep(args.kill_after)
            procs[-1].kill()
            load.dead.add(len(procs) - 1)

        kt = asyncio.get_running_loop().create_task(killer()) if kill else None
        t0 = time.perf_counter()
        convs = await asyncio.gather(*(one(i) for i in range(args.conversations)))
        wall = time.perf_counter() - t0
        if kt is not None:
            kt.cancel()
        for h in load.https:
            await h.close()
        return load, convs, wall

    load, convs, wall = asyncio.run(main())
    acked = {c["cid"] for c in convs if c["finished"] and c["billed"]}

    def logged_lines() -> list[dict]:
        return [json.loads(x) for x in Path(log).read_text().splitlines()] if Path(log).exists() else []

    def logged_now() -> list[str]:
        return [x["meta"]["conversation"] for x in logged_lines()]

    # the log writers' last drains: ~0.2 s, or up to the writer lease when the killed replica held it
    t_end, deadline = time.perf_counter(), time.perf_counter() + WRITER_LEASE_S + 5.0
    while not acked <= set(logged := logged_now()) and time.perf_counter() < deadline:
        time.sleep(0.2)
    catch_up = time.perf_counter() - t_end
    for p in procs:
        p.kill()
    if redis is not None:
        redis.kill()
    served = sum(len(c["billed"]) for c in convs)
    lat, ovh = np.array(load.latency), np.array(load.overhead)
    return {"replicas": n, "state": "redis" if state else "memory", "killed": kill,
            "conversations": len(convs), "turns_served": served, "refused_402": sum(c["codes"].count(402) for c in convs),
            "other_errors": sum(sum(1 for s in c["codes"] if s not in (200, 402)) for c in convs) + len(load.errors),
            "other_answers": dict(collections.Counter(load.other + [f"connection {e}" for e in load.errors])),
            "log_catch_up_s": round(catch_up, 1),
            "overruns": sum(sum(c["billed"]) > args.budget + 1e-12 for c in convs),
            "lost": len(acked - set(logged)), "duplicated": len(logged) - len(set(logged)),
            "escalated": sum(1 for e in logged_lines() for t in e["turns"] if (t.get("meta") or {}).get("draft")),
            "req_per_s": round(served / wall, 1), "e2e_p50_ms": round(float(np.percentile(lat, 50)), 2),
            "e2e_p99_ms": round(float(np.percentile(lat, 99)), 2),
            "overhead_p50_ms": round(float(np.percentile(ovh, 50)), 2),
            "overhead_p99_ms": round(float(np.percentile(ovh, 99)), 2)}


def table(rows: list[dict]) -> str:
    out = ["| replicas | state | kill -9 | conversations × turns | turns served / 402 | drafts re-served | overruns | "
           "lost / duplicated episodes | log caught up (s) | req/s | end-to-end p50 / p99 (ms) | in-proxy p50 / p99 (ms) "
           "| other answers |", "|" + "---|" * 13]
    for r in rows:
        out.append(f"| {r['replicas']} | {r['state']} | {'yes' if r['killed'] else 'no'} | {r['conversations']} × "
                   f"{r['turns']} | {r['turns_served']} / {r['refused_402']} | {r.get('escalated', 0)} | {r['overruns']} | {r['lost']} / "
                   f"{r['duplicated']} | {r['log_catch_up_s']} | {r['req_per_s']} | {r['e2e_p50_ms']} / {r['e2e_p99_ms']} | "
                   f"{r['overhead_p50_ms']} / {r['overhead_p99_ms']} | "
                   f"{', '.join(f'{k}: {v}' for k, v in sorted(r['other_answers'].items())) or '—'} |")
    return "\n".join(out)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--conversations", type=int, default=400)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--budget", type=float, default=0.0006, help="USD per conversation (tight: ~6 turns fit)")
    p.add_argument("--concurrency", type=int, default=100, help="conversations in flight")
    p.add_argument("--kill", action="store_true", help="also: the largest setup with one replica kill -9'd mid-way")
    p.add_argument("--kill-after", type=float, default=3.0, help="seconds into the --kill run")
    p.add_argument("--draft", action="store_true", help="replicas draft; cheap python drafts are re-served by mid")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    up_port = free_port()
    up = mp.Process(target=_upstream, args=(up_port,), daemon=True)
    up.start()
    base = f"http://127.0.0.1:{up_port}/v1"
    _wait(f"http://127.0.0.1:{up_port}/docs")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        setups = [(1, False, False)] + [(n, True, False) for n in args.replicas]
        if args.kill:
            setups.append((max(args.replicas), True, True))
        for n, state, kill in setups:
            r = run_setup(n, state, args, base, tmp, kill)
            r["turns"] = args.turns
            rows.append(r)
            print(json.dumps(r), flush=True)
    up.kill()
    print(f"\n{platform.node()}: {os.cpu_count()} cores\n" + table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
