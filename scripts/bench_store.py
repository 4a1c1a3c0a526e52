"""CPU of the Redis state store alone: a proxy turn's two store steps, many conversations at once.

    python scripts/bench_store.py [--concurrency 200] [--turns 3000] [--rounds 3] [--state-bytes 2300]

Each of ``--concurrency`` tasks runs turns of its own conversation on one ``RedisStore`` (a
``redis-server`` started here on a free loopback port, no persistence): ``begin_turn`` with the
version it holds and a reservation, then ``end_turn`` with a settle and a ``--state-bytes`` state
(the size of a 3-turn episode's state). Arms, interleaved ``--rounds`` times in one process:

- ``client``: every script through redis-py's client object (``Redis.evalsha``: its pool, retry
  wrapper, event dispatch and telemetry records) with a 1 s socket timeout (redis-py then wraps every
  command's write in ``asyncio.wait_for``): the store before ``RedisStore._eval``;
- ``store``: the store as it is (the scripts of one event-loop pass pipelined in one write on a
  connection of its own, ``live/store/redis_batch.py``; one deadline per call).

Prints the process CPU (user + system) per turn, microseconds; no proxy, no HTTP, no JAX, so
what is left is redis-py and the store's own argument building.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_proxy_arms import _redis  # noqa: E402

from mtrouter_jax.live.store import Reservation  # noqa: E402
from mtrouter_jax.live.store.redis import RedisStore  # noqa: E402


async def _turns(store: RedisStore, conv: str, n: int, state: bytes) -> None:
    version = 0
    for i in range(n):
        known = b'{"v":%d,' % version if version else None
        res = Reservation(f"{conv}:{i}", 0.001, 10.0, 0.001 * i) if known else None
        start = await store.begin_turn(f"c/{conv}", 15_000, f"e/{conv}", known, res)
        rid = f"{conv}:{i}"
        if not start.reserved:
            await store.reserve(f"e/{conv}", rid, 0.001, 10.0)
        version += 1
        doc = b'{"v":%d,' % version + state
        await store.end_turn(start.lease, (f"c/{conv}", doc, 60_000, "t"), (f"e/{conv}", rid, 0.001), [])


class ClientStore(RedisStore):
    """The store before ``_eval``: scripts through redis-py's client, sockets with a timeout."""

    def __init__(self, url: str, prefix: str):
        super().__init__(url, prefix=prefix)
        self.r.connection_pool.connection_kwargs["socket_timeout"] = 1.0  # (connections are made lazily)

    async def _eval(self, script, keys, args):
        return await script(keys=keys, args=args)


async def _arm(url: str, prefix: str, concurrency: int, turns: int, state: bytes, client: bool):
    store = (ClientStore if client else RedisStore)(url, prefix)
    try:
        await store.ping()
        per = max(turns // concurrency, 1)
        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(_turns(store, f"k{i}", per, state) for i in range(concurrency)))
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        return {"turns": per * concurrency, "cpu_us_per_turn": cpu / (per * concurrency) * 1e6,
                "turns_per_s": per * concurrency / wall}
    finally:
        await store.close()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--turns", type=int, default=3000, help="turns per arm and round (all conversations)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--state-bytes", type=int, default=2300)
    p.add_argument("--json", default=None, help="also write the rows here")
    a = p.parse_args(argv)
    state = b'"x":"' + b"s" * max(a.state_bytes - 10, 0) + b'"}'
    rows = []
    with tempfile.TemporaryDirectory() as d:
        proc, url = _redis(d)
        try:
            for r in range(a.rounds):
                for arm in ("client", "store"):
                    out = asyncio.run(_arm(url, f"b{r}{arm}:", a.concurrency, a.turns, state, arm == "client"))
                    rows.append({"arm": arm, "round": r, **out})
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.kill()
    print("| round | arm | turns/s | CPU µs per turn | store / client |\n|---|---|---|---|---|")
    for r in range(a.rounds):
        base = next(x for x in rows if x["round"] == r and x["arm"] == "client")
        for x in (x for x in rows if x["round"] == r):
            print(f"| {r} | {x['arm']} | {x['turns_per_s']:.0f} | {x['cpu_us_per_turn']:.0f} | "
                  f"{x['cpu_us_per_turn'] / base['cpu_us_per_turn']:.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
