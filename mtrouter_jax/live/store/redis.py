"""The shared state store: every replica of the proxy on one Redis (``--state redis://HOST:PORT/DB``).

Same contract as the memory store (``store/base.py``), on the ``redis`` client's asyncio API.
Keys of one conversation share a hash tag (``mtr:{ID}:...``) so a script on one of them touches one
slot (the lease's fence counter, ``finish_once`` with ``state_of`` and a turn's ``end_turn``, which
spans a conversation and its episode's budget, need one Redis, not a cluster):

``state``  hash ``d`` (the JSON bytes), ``o`` (owner), PX = the idle timeout
``lease``  the holder's fencing token (SET PX unless held); tokens come from one INCR counter ``mtr:fence``
``spent``  USD billed (INCRBYFLOAT); ``held`` hash id -> amount and ``dl`` zset id -> deadline (ms,
           server clock) of the open reservations; ``closed`` set of settled/released ids
``fin``    the finish marker (SET NX PX); finished episodes go to the stream ``mtr:finished``
``mtr:control``  hash ``s`` (sequence, HINCRBY) and ``d`` (the last reload any replica published)

``reserve``, ``settle``, ``release``, fenced ``put``, ``acquire_lease`` and a turn's two steps
(``begin_turn``, which compares the stored state's first bytes with the caller's so that a current
state is not sent back, and ``end_turn``) are Lua scripts (``redis_scripts.py``,
``register_script``), so a check and its write are one atomic step across replicas, one round trip
each; reservations past their deadline are dropped by the next script that looks, so a replica
that dies holding one frees the budget after ``ttl_ms``. Every call has one deadline
(``2 × timeout_s``, the wait for a connection included); a connection error or timeout raises
``StoreUnavailable`` (the proxy answers 503). Connections are made again on the next call, and a
script the restarted server forgot is loaded again (EVALSHA, then SCRIPT LOAD). The scripts issued
in one pass of the event loop go out as one pipelined write (``redis_batch.py``).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mtrouter_jax.core.errors import UsageError
from mtrouter_jax.live.store import redis_scripts as lua
from mtrouter_jax.live.store.redis_batch import ScriptBatcher
from mtrouter_jax.live.store.base import (DEFAULT_BUDGET_TTL_MS, DEFAULT_FINISHED_TTL_MS,
                                          DEFAULT_RESERVATION_TTL_MS, EPS_USD, Finished, Lease,
                                          Reservation, StoredState, StoreUnavailable, TurnStart,
                                          check_amount, check_budget, check_reservation, check_ttl)

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


def check_redis_url(url: str) -> str:
    """``redis://HOST:PORT/DB`` (or ``rediss://``, ``unix://``) as given, else UsageError."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise UsageError(f"--state: expected redis://HOST:PORT/DB, got {redact(url)!r}")
    if parts.scheme != "unix":
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as e:
            raise UsageError(f"--state: bad port in {redact(url)!r}") from e
        db = parts.path.strip("/")
        if not parts.hostname or (db and not db.isdigit()):
            raise UsageError(f"--state: expected redis://HOST:PORT/DB, got {redact(url)!r}")
    return url


def redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hostport}"))


class RedisStore:
    """``StateStore`` on Redis, shared by every replica that opens the same URL."""

    def __init__(self, url: str, prefix: str = "mtr:", timeout_s: float = 1.0,
                 budget_ttl_ms: int = DEFAULT_BUDGET_TTL_MS,
                 finished_ttl_ms: int = DEFAULT_FINISHED_TTL_MS, max_connections: int = 256):
        self.url = check_redis_url(url)
        self.prefix, self.timeout_s = prefix, float(timeout_s)
        self.budget_ttl = check_ttl(budget_ttl_ms, "budget_ttl_ms")
        self.finished_ttl = check_ttl(finished_ttl_ms, "finished_ttl_ms")
        # one immediate retry, on connection errors only: a pooled connection the server dropped
        # (restart) is replaced without failing the call; a timeout is not retried (the proxy
        # should answer 503 now, and every script is idempotent anyway)
        # at most ``max_connections`` calls at once: more wait (within the call's deadline, ``_do``)
        # for a slot of our own semaphore instead of failing with "Too many connections" (which 100
        # conversations in flight hit). The wait is local contention, not an unreachable Redis, and
        # the pool is larger than the usual number of turns in flight (at 200 in flight with 64
        # connections and the event loop saturated, a wait of 1 s was passed and answered as
        # "unreachable": docs/benchmarks.md, run E). A semaphore, not redis-py's BlockingConnectionPool,
        # whose condition variable and timer run on every call (py-spy: 7 % of the samples were in
        # its get_connection; measured end to end the change is within noise, 0.97x: run F);
        # connections open only as needed.
        self._slots = asyncio.Semaphore(max_connections)
        # no socket timeout: ``_do``'s one timeout scope bounds each call (a cancelled command
        # drops its connection, redis-py's own rule), where a socket timeout made redis-py wrap
        # every command's write in ``asyncio.wait_for`` (a task per command on Python 3.11: 4 % of
        # the proxy's py-spy samples) and every read in a timer of its own
        pool = aioredis.ConnectionPool.from_url(
            url, socket_timeout=None, socket_connect_timeout=self.timeout_s, max_connections=max_connections)
        self.r = aioredis.Redis(connection_pool=pool,
                                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
        reg = self.r.register_script
        self._reserve, self._settle, self._release = reg(lua.RESERVE), reg(lua.SETTLE), reg(lua.RELEASE)
        self._reserved, self._lease, self._put, self._finish = (
            reg(lua.RESERVED), reg(lua.LEASE), reg(lua.PUT), reg(lua.FINISH))
        self._acquire, self._begin, self._end = reg(lua.ACQUIRE), reg(lua.BEGIN), reg(lua.END)
        self._control = reg(lua.CONTROL)
        self.fence = f"{prefix}fence"
        self.stream = f"{prefix}finished"
        # the scripts (every call of a turn) go out batched on connections of the batcher's own
        self._batcher = ScriptBatcher(pool.make_connection, 2 * self.timeout_s)

    # ------------------------------------------------------------------ helpers
    def _k(self, conv_id: str, what: str) -> str:
        return f"{self.prefix}{{{conv_id}}}:{what}"

    def _budget_keys(self, conv_id: str) -> list[str]:
        return [self._k(conv_id, w) for w in ("spent", "held", "dl", "closed")]

    async def _do(self, awaitable):
        """Await one Redis call under the deadline; unreachable -> StoreUnavailable."""
        try:
            # (a timeout scope, not ``wait_for``: on Python 3.11 that wraps every call in a task of its own)
            async with asyncio.timeout(2 * self.timeout_s):
                async with self._slots:
                    return await awaitable
        except _UNAVAILABLE as e:
            raise StoreUnavailable(f"state store {redact(self.url)} unreachable: "
                                   f"{type(e).__name__}: {e}".rstrip(": ")) from e
        finally:
            awaitable.close()  # one the deadline passed while it waited for a slot never ran (no-op otherwise)

    async def _eval(self, script, keys: list, args: list):
        """EVALSHA ``script`` (run under ``_do``): batched with the other scripts of this event-loop
        pass into one write on one connection (``redis_batch.py``), loaded again if the server forgot it."""
        return await self._batcher.call(script, keys, args)

    # ------------------------------------------------------------------ conversation state
    async def get(self, conv_id: str) -> StoredState | None:
        data, owner = await self._do(self.r.hmget(self._k(conv_id, "state"), ["d", "o"]))
        if data is None:
            return None
        return StoredState(bytes(data), None if owner is None else owner.decode("utf-8"))

    async def put(self, conv_id: str, data: bytes, ttl_ms: int, owner: str | None = None,
                  token: int | None = None) -> bool:
        check_ttl(ttl_ms)
        args = [bytes(data), ttl_ms, owner or "", "0" if owner is None else "1",
                "" if token is None else str(int(token))]
        keys = [self._k(conv_id, "state"), self._k(conv_id, "lease")]
        return bool(await self._do(self._eval(self._put, keys=keys, args=args)))

    async def delete(self, conv_id: str) -> None:
        await self._do(self.r.delete(self._k(conv_id, "state")))

    # ------------------------------------------------------------------ lease
    async def acquire_lease(self, conv_id: str, ttl_ms: int) -> Lease | None:
        check_ttl(ttl_ms)
        token = await self._do(self._eval(self._acquire, keys=[self._k(conv_id, "lease"), self.fence], args=[ttl_ms]))
        return None if token is None else Lease(conv_id, int(token))

    async def renew(self, lease: Lease, ttl_ms: int) -> bool:
        check_ttl(ttl_ms)
        return bool(await self._do(self._eval(self._lease, keys=[self._k(lease.conv_id, "lease")],
                                              args=[str(lease.token), ttl_ms])))

    async def release_lease(self, lease: Lease) -> bool:
        return bool(await self._do(self._eval(self._lease, keys=[self._k(lease.conv_id, "lease")],
                                              args=[str(lease.token), ""])))

    # ------------------------------------------------------------------ budget
    async def reserve(self, conv_id: str, reservation_id: str, amount: float, budget: float | None,
                      ttl_ms: int = DEFAULT_RESERVATION_TTL_MS) -> bool:
        amount, budget = check_amount(amount), check_budget(budget)
        check_ttl(ttl_ms)
        args = [reservation_id, repr(amount), "" if budget is None else repr(budget), ttl_ms,
                max(self.budget_ttl, ttl_ms), repr(EPS_USD)]
        return bool(await self._do(self._eval(self._reserve, keys=self._budget_keys(conv_id), args=args)))

    async def settle(self, conv_id: str, reservation_id: str, actual: float) -> bool:
        actual = check_amount(actual, "actual")
        args = [reservation_id, repr(actual), self.budget_ttl]
        return bool(await self._do(self._eval(self._settle, keys=self._budget_keys(conv_id), args=args)))

    async def release(self, conv_id: str, reservation_id: str) -> bool:
        args = [reservation_id, self.budget_ttl]
        return bool(await self._do(self._eval(self._release, keys=self._budget_keys(conv_id), args=args)))

    async def spent(self, conv_id: str) -> float:
        got = await self._do(self.r.get(self._k(conv_id, "spent")))
        return 0.0 if got is None else float(got)

    async def reserved(self, conv_id: str) -> float:
        return float(await self._do(self._eval(self._reserved, keys=self._budget_keys(conv_id), args=[])))

    # ------------------------------------------------------------------ a turn's two steps
    async def begin_turn(self, conv_id: str, lease_ttl_ms: int, budget_conv_id: str | None = None,
                         known: bytes | None = None, reservation: Reservation | None = None) -> TurnStart:
        check_ttl(lease_ttl_ms, "lease_ttl_ms")
        res = check_reservation(reservation, budget_conv_id)
        keys = [self._k(conv_id, "lease"), self.fence, self._k(conv_id, "state")]
        if budget_conv_id is not None:
            keys += self._budget_keys(budget_conv_id)
        args = [lease_ttl_ms, bytes(known or b"")]
        if res is not None:
            args += [res.id, repr(res.amount), "" if res.budget is None else repr(res.budget), res.ttl_ms,
                     max(self.budget_ttl, res.ttl_ms), repr(EPS_USD), repr(res.seen_spent)]
        got = await self._do(self._eval(self._begin, keys=keys, args=args))
        if got is None:
            return TurnStart(None, None, 0.0)
        token, data, owner, spent, same, reserved = got
        state = None if data is None else StoredState(bytes(data), None if owner is None else owner.decode("utf-8"))
        return TurnStart(Lease(conv_id, int(token)), state, 0.0 if spent is None else float(spent), bool(same),
                         None if reserved == -1 else bool(reserved))

    async def end_turn(self, lease: Lease, state: tuple[str, bytes, int, str | None] | None = None,
                       settle: tuple[str, str, float] | None = None,
                       releases: list[tuple[str, str]] = ()) -> tuple[bool, bool]:
        budgets: dict[str, int] = {}  # budget conv id -> its index among the script's key groups

        def index(bid: str) -> str:
            return str(budgets.setdefault(bid, len(budgets)))

        args: list = [str(lease.token)]
        if state is None:
            args += ["0", "", "", "", "0"]
        else:
            sid, data, ttl_ms, owner = state
            args += ["1", bytes(data), check_ttl(ttl_ms), owner or "", "0" if owner is None else "1"]
        args.append(self.budget_ttl)
        if settle is None:
            args += ["", "", ""]
        else:
            args += [index(settle[0]), settle[1], repr(check_amount(settle[2], "actual"))]
        for bid, rid in releases:
            args += [index(bid), rid]
        keys = [self._k(lease.conv_id, "lease"), self._k(lease.conv_id if state is None else sid, "state")]
        for bid in budgets:
            keys += self._budget_keys(bid)
        written, settled = await self._do(self._eval(self._end, keys=keys, args=args))
        return bool(written), bool(settled)

    # ------------------------------------------------------------------ finished episodes
    async def finish_once(self, conv_id: str, episode_json: bytes, state_of: str | None = None) -> bool:
        # (with ``state_of`` the script touches two conversations' keys: one Redis, not a cluster)
        keys = [self._k(conv_id, "fin"), self.stream, self._k(conv_id if state_of is None else state_of, "state")]
        args = [conv_id, bytes(episode_json), self.finished_ttl]
        return bool(await self._do(self._eval(self._finish, keys=keys, args=args)))

    async def drain_finished(self, count: int = 100) -> list[Finished]:
        rows = await self._do(self.r.xrange(self.stream, "-", "+", count=count))
        return [Finished(eid.decode(), f[b"c"].decode("utf-8"), bytes(f[b"e"])) for eid, f in rows]

    async def ack_finished(self, entry_ids: list[str]) -> None:
        if entry_ids:
            await self._do(self.r.xdel(self.stream, *entry_ids))

    # ------------------------------------------------------------------ fleet control
    async def publish_control(self, data: bytes) -> int:
        return int(await self._do(self._eval(self._control, keys=[f"{self.prefix}control"], args=[bytes(data)])))

    async def get_control(self) -> tuple[int, bytes] | None:
        seq, data = await self._do(self.r.hmget(f"{self.prefix}control", ["s", "d"]))
        return None if seq is None or data is None else (int(seq), bytes(data))

    # ------------------------------------------------------------------ lifecycle
    async def ping(self) -> None:
        await self._do(self.r.ping())

    async def close(self) -> None:
        await self._batcher.close()
        await self.r.aclose()


__all__ = ["RedisStore", "check_redis_url", "redact"]
