"""The state store (issue 19): one contract, run against the memory store and a real redis-server.

The Redis fixture starts ``redis-server`` on a free loopback port in a tmp dir (no persistence) and
skips, saying why, only where the binary is not on PATH. "Two replicas" are two client
connections (two ``RedisStore`` objects) on one server; for the memory store they are one object.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from mtrouter_jax.core.errors import UsageError
from mtrouter_jax.live.store import Lease, MemoryStore, StoreUnavailable, open_store
from mtrouter_jax.live.store.base import EPS_USD, StateStore


# ---------------------------------------------------------------------- a real redis-server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, workdir, port: int | None = None):
        self.workdir, self.port, self.proc = workdir, port or _free_port(), None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited ({self.proc.returncode}) on port {self.port}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not answer within 10 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if os.name == "posix":
                os.kill(self.proc.pid, signal.SIGCONT)  # in case a test stopped it
            self.proc.kill()
            self.proc.wait(10)


def _start_redis(tmp_path_factory) -> RedisServer:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH (apt-get install redis-server): "
                    "the Redis state store is not tested here")
    pytest.importorskip("redis", reason="the redis client is in the [live] extra")
    for _ in range(5):  # the free port can be taken between the probe and the bind
        try:
            return RedisServer(tmp_path_factory.mktemp("redis")).start()
        except RuntimeError:
            continue
    raise RuntimeError("could not start redis-server on a free port")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = _start_redis(tmp_path_factory)
    yield server
    server.kill()


@pytest.fixture(params=["memory", "redis"])
def connect(request):
    """``connect()`` -> a client of one shared store (a fresh key prefix per test)."""
    if request.param == "memory":
        shared = MemoryStore()
        return lambda: shared
    server = request.getfixturevalue("redis_server")
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    from mtrouter_jax.live.store.redis import RedisStore

    # contract tests, not timing tests: a loaded 2-core CI machine can stall a connect past the 1 s default
    return lambda: RedisStore(server.url, prefix=prefix, timeout_s=10.0)


def arun(connect, body, replicas: int = 1):
    """Run ``body(*stores)`` on a fresh event loop with ``replicas`` clients, closed after."""
    async def main():
        stores = [connect() for _ in range(replicas)]
        try:
            return await body(*stores)
        finally:
            for s in stores:
                await s.close()
    return asyncio.run(main())


# ---------------------------------------------------------------------- conversation state
def test_state_round_trip_owner_ttl_and_delete(connect):
    async def body(s):
        assert isinstance(s, StateStore)
        assert await s.get("c1") is None
        assert await s.put("c1", b'{"turns": []}', ttl_ms=10_000, owner="team-a")
        got = await s.get("c1")
        assert got.data == b'{"turns": []}' and got.owner == "team-a"
        assert await s.put("c1", b"{}", ttl_ms=10_000)  # a put without owner clears it
        assert (await s.get("c1")).owner is None
        await s.delete("c1")
        assert await s.get("c1") is None
        assert await s.put("c2", b"x", ttl_ms=80)
        await asyncio.sleep(0.2)
        assert await s.get("c2") is None  # idle past the TTL
    arun(connect, body)


# ---------------------------------------------------------------------- budget
def test_concurrent_reserve_from_50_tasks_never_exceeds_budget(connect):
    async def body(s):
        oks = await asyncio.gather(*(s.reserve("c", f"r{i}", 0.1, budget=1.0) for i in range(50)))
        assert sum(oks) == 10
        assert await s.reserved("c") == pytest.approx(1.0)
        assert await s.spent("c") == 0.0
    arun(connect, body)


def test_two_replicas_reserving_settling_releasing_stay_within_budget(connect):
    budget, worst = 1.0, 0.05
    billed = []

    async def worker(s, w, rng):
        for i in range(40):
            rid = f"w{w}-{i}"
            if not await s.reserve("c", rid, worst, budget):
                continue
            assert await s.spent("c") + await s.reserved("c") <= budget + 1e-9
            await asyncio.sleep(rng.random() * 0.002)
            if rng.random() < 0.2:
                assert await s.release("c", rid)
            else:
                actual = rng.random() * worst
                assert await s.settle("c", rid, actual)
                billed.append(actual)

    async def body(a, b):
        rng = random.Random(19)
        await asyncio.gather(*(worker(a if w % 2 else b, w, random.Random(rng.random()))
                               for w in range(50)))
        spent = await a.spent("c")
        assert spent <= budget + EPS_USD
        assert spent == pytest.approx(sum(billed), abs=1e-9)
        assert await b.spent("c") == spent and await b.reserved("c") == 0.0
    arun(connect, body, replicas=2)


def test_settle_lowers_and_raises_spent_and_bills_once(connect):
    async def body(s):
        assert await s.reserve("c", "r1", 0.5, budget=1.0)
        assert await s.settle("c", "r1", 0.2)  # cheaper than the worst case: the rest is freed
        assert await s.spent("c") == pytest.approx(0.2) and await s.reserved("c") == 0.0
        assert not await s.settle("c", "r1", 0.2)  # a retried settle bills nothing
        assert await s.spent("c") == pytest.approx(0.2)
        assert await s.reserve("c", "r2", 0.8, budget=1.0)
        assert not await s.reserve("c", "r3", 0.01, budget=1.0)
        assert await s.settle("c", "r2", 0.9)  # dearer than reserved (usage over the bound): billed
        assert await s.spent("c") == pytest.approx(1.1)
        assert not await s.reserve("c", "r4", 0.0001, budget=1.0)
        assert await s.reserve("c", "r5", 5.0, budget=None)  # no budget: tracked, never refused
        assert await s.spent("other") == 0.0
    arun(connect, body)


def test_release_frees_and_ids_are_idempotent(connect):
    async def body(s):
        assert await s.reserve("c", "r1", 1.0, budget=1.0)
        assert await s.reserve("c", "r1", 1.0, budget=1.0)  # the same id again: held once
        assert await s.reserved("c") == pytest.approx(1.0)
        assert not await s.reserve("c", "r2", 0.1, budget=1.0)
        assert await s.release("c", "r1")
        assert not await s.release("c", "r1")
        assert not await s.settle("c", "r1", 0.3)  # released: a settle after it bills nothing
        assert not await s.reserve("c", "r1", 0.1, budget=1.0)  # a closed id is not reused
        assert await s.reserved("c") == 0.0 and await s.spent("c") == 0.0
        assert await s.reserve("c", "r2", 0.1, budget=1.0)
        assert not await s.release("c", "never-held")
    arun(connect, body)


def test_a_leaked_reservation_expires_and_a_late_settle_still_bills(connect):
    async def body(s):
        assert await s.reserve("c", "dead", 1.0, budget=1.0, ttl_ms=400)
        assert not await s.reserve("c", "r2", 0.5, budget=1.0)
        await asyncio.sleep(0.55)
        assert await s.reserved("c") == 0.0
        assert await s.reserve("c", "r2", 0.5, budget=1.0)
        assert await s.settle("c", "dead", 0.25)  # the call did happen: its cost counts
        assert await s.spent("c") == pytest.approx(0.25)
    arun(connect, body)


def test_bad_amounts_are_refused(connect):
    async def body(s):
        for bad in (-0.1, float("nan"), float("inf"), True):
            with pytest.raises(ValueError):
                await s.reserve("c", "r", bad, budget=1.0)
        for bad in (0.0, -1.0, float("inf")):
            with pytest.raises(ValueError):
                await s.reserve("c", "r", 0.1, budget=bad)
        with pytest.raises(ValueError):
            await s.reserve("c", "r", 0.1, budget=1.0, ttl_ms=0)
    arun(connect, body)


# ---------------------------------------------------------------------- leases
def test_an_expired_lease_passes_with_a_higher_fencing_token(connect):
    async def body(a, b):
        old = await a.acquire_lease("c", ttl_ms=500)
        assert old is not None
        assert await b.acquire_lease("c", ttl_ms=500) is None  # held
        assert await a.renew(old, ttl_ms=300)
        await asyncio.sleep(0.45)  # the holder stalls past its lease
        new = await b.acquire_lease("c", ttl_ms=5_000)
        assert new is not None and new.token > old.token
        assert not await a.renew(old, ttl_ms=150)
        assert not await a.release_lease(old)
        assert not await a.put("c", b"stale", ttl_ms=5_000, token=old.token)  # fenced off
        assert await b.put("c", b"fresh", ttl_ms=5_000, token=new.token)
        assert (await a.get("c")).data == b"fresh"
        assert await b.renew(new, ttl_ms=5_000)
        assert await b.release_lease(new)
        third = await a.acquire_lease("c", ttl_ms=150)
        assert third.token > new.token
        assert not await a.put("c", b"x", ttl_ms=5_000, token=new.token)
    arun(connect, body, replicas=2)


def test_only_one_of_many_concurrent_acquirers_gets_the_lease(connect):
    async def body(a, b):
        got = await asyncio.gather(*((a if i % 2 else b).acquire_lease("c", 5_000) for i in range(30)))
        assert sum(g is not None for g in got) == 1
    arun(connect, body, replicas=2)


# ---------------------------------------------------------------------- a turn's two steps
def test_begin_turn_leases_reads_state_and_spent_and_a_held_lease_burns_no_token(connect):
    async def body(a, b):
        assert await a.put("c", b"s1", ttl_ms=5_000, owner="t")
        assert await a.reserve("e", "r0", 0.5, budget=1.0) and await a.settle("e", "r0", 0.25)
        lease, st, spent, *_ = await a.begin_turn("c", 5_000, "e")
        assert st.data == b"s1" and st.owner == "t" and spent == pytest.approx(0.25)
        assert await b.begin_turn("c", 5_000, "e") == (None, None, 0.0, False, None)  # held
        assert await b.acquire_lease("c", 5_000) is None
        assert await a.release_lease(lease)
        nxt, st2, spent2, *_ = await b.begin_turn("c", 5_000)
        assert nxt.token == lease.token + 1  # the refusals burnt no token
        assert st2 == st and spent2 == 0.0  # no budget asked
        assert (await b.begin_turn("fresh", 5_000, "no-such-budget"))[1:] == (None, 0.0, False, None)
    arun(connect, body, replicas=2)

def test_begin_turn_with_known_bytes_does_not_send_back_the_state_it_matches(connect):
    async def body(a, b):
        assert await a.put("c", b'{"v":7,"episode":{}}', ttl_ms=5_000, owner="t")
        got = await a.begin_turn("c", 5_000, known=b'{"v":7,')
        assert got.same and got.state is None and got.reserved is None
        assert await a.release_lease(got.lease)
        for other in (b'{"v":70,', b'{"v":8,', b'x'):  # a prefix of another version is not the same
            got = await b.begin_turn("c", 5_000, known=other)
            assert not got.same and got.state.data == b'{"v":7,"episode":{}}' and got.state.owner == "t"
            assert await b.release_lease(got.lease)
        got = await a.begin_turn("gone", 5_000, known=b'{"v":1,')
        assert not got.same and got.state is None
    arun(connect, body, replicas=2)


def test_begin_turn_reserves_only_on_the_state_and_spend_the_caller_saw(connect):
    from mtrouter_jax.live.store import Reservation

    async def body(a, b):
        assert await a.put("c", b'{"v":3,}', ttl_ms=5_000)
        assert await a.reserve("e", "r0", 0.5, budget=1.0) and await a.settle("e", "r0", 0.25)
        # current state, current spend: reserved in the same step
        got = await a.begin_turn("c", 5_000, "e", known=b'{"v":3,', reservation=Reservation("r1", 0.5, 1.0, 0.25))
        assert got.same and got.reserved is True and await b.reserved("e") == pytest.approx(0.5)
        assert await a.end_turn(got.lease, None, ("e", "r1", 0.5)) == (False, True)
        # the spend moved past what the decision saw (0.25 < 0.75): not the same, nothing reserved
        got = await b.begin_turn("c", 5_000, "e", known=b'{"v":3,', reservation=Reservation("r2", 0.1, 1.0, 0.25))
        assert not got.same and got.reserved is None and got.state.data == b'{"v":3,}'
        assert got.spent == pytest.approx(0.75) and await a.reserved("e") == 0.0
        assert await b.release_lease(got.lease)
        # the same state and spend, but the budget does not fit: refused, the lease still granted
        got = await a.begin_turn("c", 5_000, "e", known=b'{"v":3,', reservation=Reservation("r3", 0.3, 1.0, 0.75))
        assert got.same and got.reserved is False and got.lease is not None and await b.reserved("e") == 0.0
        # held elsewhere: nothing reserved, no token burnt
        assert await b.begin_turn("c", 5_000, "e", known=b'{"v":3,',
                                  reservation=Reservation("r4", 0.1, 1.0, 0.75)) == (None, None, 0.0, False, None)
        assert await b.reserved("e") == 0.0
        assert await a.release_lease(got.lease)
        # another version stored: not the same, nothing reserved
        got = await b.begin_turn("c", 5_000, "e", known=b'{"v":2,', reservation=Reservation("r5", 0.1, 1.0, 0.75))
        assert not got.same and got.reserved is None and await a.reserved("e") == 0.0
        with pytest.raises(ValueError, match="budget_conv_id"):
            await a.begin_turn("c", 5_000, known=b'{"v":3,', reservation=Reservation("r6", 0.1, 1.0, 0.0))
        with pytest.raises(ValueError, match="amount"):
            await a.begin_turn("c", 5_000, "e", reservation=Reservation("r6", float("nan"), 1.0, 0.0))
    arun(connect, body, replicas=2)


def test_end_turn_settles_releases_puts_and_frees_the_lease(connect):
    async def body(s):
        lease = (await s.begin_turn("c", 5_000, "e")).lease
        assert await s.reserve("e", "won", 0.6, budget=1.0) and await s.reserve("e", "lost", 0.4, budget=1.0)
        assert await s.reserve("e2", "other", 0.2, budget=1.0)  # another budget in the same step
        assert await s.end_turn(lease, ("c", b"v1", 5_000, None), ("e", "won", 0.1),
                                [("e", "lost"), ("e2", "other")]) == (True, True)
        assert (await s.get("c")).data == b"v1" and (await s.get("c")).owner is None
        assert await s.spent("e") == pytest.approx(0.1) and await s.reserved("e") == 0.0
        assert await s.reserved("e2") == 0.0 and await s.spent("e2") == 0.0
        assert not await s.release("e", "lost")  # released by the end, closed
        again, st, spent, *_ = await s.begin_turn("c", 5_000, "e")  # the lease was freed
        assert st.data == b"v1" and spent == pytest.approx(0.1)
        assert await s.end_turn(again, ("c", b"v2", 5_000, "t"), ("e", "won", 0.1)) == (True, False)  # billed once
        assert await s.spent("e") == pytest.approx(0.1) and (await s.get("c")).owner == "t"
        third = (await s.begin_turn("c", 5_000)).lease
        assert await s.end_turn(third) == (False, False) and (await s.get("c")).data == b"v2"
        assert await s.acquire_lease("c", 5_000) is not None
    arun(connect, body)


def test_end_turn_with_a_stale_lease_still_settles_but_writes_nothing(connect):
    async def body(a, b):
        old = (await a.begin_turn("c", 300, "e")).lease
        assert await a.reserve("e", "r1", 0.5, budget=1.0)
        await asyncio.sleep(0.4)  # the holder stalls past its lease
        new = (await b.begin_turn("c", 5_000, "e")).lease
        assert new.token > old.token
        assert await a.end_turn(old, ("c", b"stale", 5_000, None), ("e", "r1", 0.3)) == (False, True)
        assert await a.get("c") is None and await a.spent("e") == pytest.approx(0.3)  # billed, not written
        assert await a.acquire_lease("c", 5_000) is None  # nor was the new holder's lease dropped
        assert await b.end_turn(new, ("c", b"fresh", 5_000, None)) == (True, False)  # its lease stood
        assert (await a.get("c")).data == b"fresh"
    arun(connect, body, replicas=2)


# ---------------------------------------------------------------------- finished episodes
def test_finish_once_is_exactly_once_under_concurrency(connect):
    async def body(a, b):
        await a.put("c", b"{}", ttl_ms=5_000)
        oks = await asyncio.gather(*((a if i % 2 else b).finish_once("c", b'{"id": "c"}')
                                     for i in range(40)))
        assert sum(oks) == 1
        assert await b.get("c") is None  # finishing drops the open state
        assert await a.finish_once("d", b'{"id": "d"}')
        got = await b.drain_finished()
        assert [(f.conv_id, f.episode) for f in got] == [("c", b'{"id": "c"}'), ("d", b'{"id": "d"}')]
        assert await a.drain_finished(count=1) == got[:1]  # unacknowledged entries come back
        await a.ack_finished([got[0].entry_id])
        assert await b.drain_finished() == got[1:]
        await b.ack_finished([f.entry_id for f in got])
        assert await a.drain_finished() == []
        assert not await a.finish_once("c", b'{"id": "c"}')  # still refused after the drain
    arun(connect, body, replicas=2)


# ---------------------------------------------------------------------- fleet control
def test_control_record_is_the_last_published_with_a_growing_sequence(connect):
    async def body(a, b):
        assert await a.get_control() is None
        seqs = await asyncio.gather(*((a if i % 2 else b).publish_control(f"r{i}".encode()) for i in range(20)))
        assert sorted(seqs) == list(range(1, 21))  # one number per publication, none twice
        last = seqs.index(20)
        assert await b.get_control() == (20, f"r{last}".encode())  # the record published last
    arun(connect, body, replicas=2)


# ---------------------------------------------------------------------- open_store, faults
def test_open_store_picks_the_backend_and_refuses_bad_urls():
    assert isinstance(open_store(None), MemoryStore) and isinstance(open_store("memory"), MemoryStore)
    for bad in ("http://localhost:6379", "localhost:6379", "redis://:pw@host:notaport/0",
                "redis://host:6379/db"):
        with pytest.raises(UsageError) as e:
            open_store(bad)
        assert "pw" not in str(e.value)


def test_redis_down_is_store_unavailable_quickly_and_it_recovers(tmp_path_factory):
    server = _start_redis(tmp_path_factory)
    from mtrouter_jax.live.store.redis import RedisStore

    async def unavailable_within(s, limit_s: float):
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable) as e:
            await s.reserve("c", f"r{uuid.uuid4().hex}", 0.1, budget=10.0)
        assert time.monotonic() - t0 < limit_s
        assert f"127.0.0.1:{server.port}" in str(e.value)

    async def body():
        s = RedisStore(server.url, timeout_s=1.0)
        try:
            assert await s.reserve("c", "r1", 0.1, budget=10.0)
            os.kill(server.proc.pid, signal.SIGSTOP)  # hung: no answer, the call's deadline fires
            try:
                await unavailable_within(s, 2.5)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            server.kill()  # gone: connection refused
            await unavailable_within(s, 2.5)
            await unavailable_within(s, 2.5)
            server.start()  # back on the same port (empty: no persistence), no new client
            assert await s.reserve("c", "r2", 0.1, budget=10.0)  # scripts are loaded again
            assert await s.reserved("c") == pytest.approx(0.1)
            await s.ping()
        finally:
            await s.close()

    _run_then_kill(server, body)


def _run_then_kill(server: RedisServer, body) -> None:
    """``asyncio.run(body())`` on a server of the test's own, killed after it."""
    try:
        asyncio.run(body())
    finally:
        server.kill()


def test_a_reply_that_came_after_its_deadline_is_never_read_as_the_next_calls(tmp_path_factory):
    """The deadline is the store's own timeout scope (no socket timeout): a call cut off while
    Redis hangs must drop its connection, or the late reply of that call would be read as the
    answer of the next call on the same connection."""
    server = _start_redis(tmp_path_factory)
    from mtrouter_jax.live.store.redis import RedisStore

    async def body():
        s = RedisStore(server.url, timeout_s=0.3, max_connections=1)  # one connection: any stale reply shows
        try:
            await s.put("b", b"state-of-b", 60_000)
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                with pytest.raises(StoreUnavailable):
                    await s.acquire_lease("a", 60_000)  # a script (the store's own connections)
                with pytest.raises(StoreUnavailable):
                    await s.get("b")  # a plain command (redis-py's client)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            await asyncio.sleep(0.2)  # the server answers the cut-off calls now
            for _ in range(3):
                assert await s.renew(Lease("nobody", 1), 1_000) is False  # not the late lease token
                assert (await s.get("b")).data == b"state-of-b"
                assert await s.get("missing") is None
        finally:
            await s.close()

    _run_then_kill(server, body)


def test_a_redis_call_waiting_past_its_deadline_for_a_connection_is_unavailable_not_a_hang(redis_server):
    """More calls in flight than connections wait for one (not "Too many connections"), but no longer
    than the call's deadline; the call that never got one is not left un-awaited."""
    import gc
    import warnings

    from mtrouter_jax.live.store.redis import RedisStore

    async def main():
        s = RedisStore(redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}:", timeout_s=0.1, max_connections=2)
        try:
            assert await s.spent("e") == 0.0
            await s._slots.acquire()
            await s._slots.acquire()  # every connection busy
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable, match="unreachable"):
                await s.spent("e")
            assert 0.15 < time.monotonic() - t0 < 2.0  # the deadline (2 x timeout_s), not a hang
            s._slots.release()
            assert await s.spent("e") == 0.0  # a slot free: served again
        finally:
            await s.close()

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert not [w for w in seen if "never awaited" in str(w.message)], [str(w.message) for w in seen]


def test_scripts_of_one_event_loop_pass_share_a_write_and_each_caller_gets_its_own_reply(redis_server):
    """``redis_batch.ScriptBatcher``: 200 concurrent reservations on 200 budgets go out in a few
    pipelined writes; each caller gets its own answer (the ones that fit their budget and the ones
    that do not), an error reply fails only its own caller, and a script the server forgot (SCRIPT
    FLUSH) is loaded again within a batch."""
    from redis.exceptions import ResponseError

    from mtrouter_jax.live.store.redis import RedisStore

    async def main():
        s = RedisStore(redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}:", timeout_s=10.0)
        try:
            # the script loaded first (on a server that has not run it yet, a first batch is answered
            # NOSCRIPT, loaded and sent again: twice the calls, whichever test of the module runs first)
            assert await s.reserve("warm", "r", 1.0, 2.0)
            calls, batches = s._batcher.calls, s._batcher.batches
            fits = [i % 3 != 0 for i in range(200)]
            got = await asyncio.gather(*(s.reserve(f"b{i}", "r", 1.0, 2.0 if fit else 0.5)
                                         for i, fit in enumerate(fits)))
            assert got == fits
            assert s._batcher.calls - calls == 200 and s._batcher.batches - batches <= 10
            bad = s._eval(s._reserve, keys=s._budget_keys("x"), args=["r", "not-a-number", "1", 1000, 1000, "0"])
            results = await asyncio.gather(bad, s.spent("b1"), s.reserved("b1"), return_exceptions=True)
            assert isinstance(results[0], ResponseError) and results[1:] == [0.0, 1.0]
            await s.r.script_flush()
            settle = [s.settle(f"b{i % 3}", f"r{i // 3}", 0.25) for i in range(6)]  # 2 ids on each of 3 budgets
            assert await asyncio.gather(*settle) == [True] * 6
            assert await asyncio.gather(*(s.settle(f"b{i}", "r1", 0.25) for i in range(3))) == [False] * 3  # once
            assert [await s.spent(f"b{i}") for i in range(4)] == [0.5, 0.5, 0.5, 0.0]
        finally:
            await s.close()

    asyncio.run(main())


@settings(max_examples=200, deadline=None)
@given(hs.lists(hs.one_of(hs.text(), hs.binary(), hs.integers(-2**63, 2**63 - 1)), max_size=12))
def test_batched_scripts_are_packed_as_redis_py_packs_them(args):
    """``redis_batch`` packs each EVALSHA with hiredis directly: the same bytes redis-py sends."""
    pytest.importorskip("hiredis", reason="hiredis is in the [live] extra")
    from redis.asyncio.connection import Connection

    from mtrouter_jax.live.store import redis_batch

    command = ("EVALSHA", "0" * 40, len(args) // 2, *args)
    assert redis_batch._pack_one(command) == b"".join(Connection().pack_commands([command]))
