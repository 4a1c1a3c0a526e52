"""The Redis store's scripts, batched: those issued in one pass of the event loop go out in one write.

At 200 conversations in flight most of a Redis turn's CPU was not the scripts but around them:
redis-py's client object (pool checks, retry wrapper, event dispatch, telemetry) and a send and a
receive system call per script. ``ScriptBatcher.call`` queues the script; once the event loop has
run everything that was ready, the queue goes to Redis as one pipelined write on one connection,
and the replies are read back in order, each handed to its caller. Each script is still one atomic
step (Redis runs them one after the other); a caller still waits for its own reply before it goes
on, so nothing about consistency changes — only how many scripts share a system call.

The connection, the protocol and the parser are redis-py's. A connection is reused only after every
reply of its batch was read (any other exit, a deadline included, drops it: a late reply is never
read as the next batch's). A batch that fails before its replies with a connection error (a server
restart) is sent again once, on a new connection; a script the server forgot is loaded again and
its calls queued anew.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

try:  # hiredis packs str/bytes/int/float arguments itself (redis-py's packer encodes each in Python first)
    from hiredis import pack_command as _pack_one
except ImportError:  # pragma: no cover - hiredis is in the live extra
    _pack_one = None

MAX_BATCH = 128  # scripts in one write (a longer queue goes out as several batches, each on its own connection)


class ScriptBatcher:
    """EVALSHA calls of one event-loop pass, pipelined on one connection (see the module docstring)."""

    def __init__(self, make_connection: Callable[[], Any], deadline_s: float):
        self._make, self.deadline_s = make_connection, float(deadline_s)
        self._idle: list = []
        self._queue: list[tuple[Any, list, list, asyncio.Future]] = []
        self._scheduled = False
        self._running: set[asyncio.Task] = set()
        self.batches = self.calls = 0  # (counted, for the tests and benchmarks)

    async def call(self, script, keys: list, args: list):
        """Run ``script`` (a redis-py ``AsyncScript``: ``.sha``, ``.script``) on ``keys`` and ``args``."""
        fut = asyncio.get_running_loop().create_future()
        self._enqueue((script, keys, args, fut))
        return await fut

    def _enqueue(self, item: tuple) -> None:
        self._queue.append(item)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._running.add(task)  # (a reference until it ends)
        task.add_done_callback(self._running.discard)

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        for i in range(0, len(queue), MAX_BATCH):
            self._spawn(self._run(queue[i:i + MAX_BATCH]))

    async def _run(self, batch: list) -> None:
        live = [b for b in batch if not b[3].done()]  # (a caller past its deadline is not sent)
        if not live:
            return
        self.batches += 1
        self.calls += len(live)
        commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args, _ in live]
        try:
            replies = await self._exchange(commands)
        except BaseException as e:  # noqa: BLE001 - every caller hears of it
            _fail(live, e)
            return
        forgotten: dict = {}  # script -> its calls (the server restarted without it)
        for item, reply in zip(live, replies):
            if isinstance(reply, NoScriptError):
                forgotten.setdefault(item[0], []).append(item)
            else:
                _deliver(item[3], reply)
        for script, items in forgotten.items():
            self._spawn(self._reload(script, items))

    async def _reload(self, script, items: list) -> None:
        """Load ``script`` again, then queue its calls as any others."""
        try:
            (sha,) = await self._exchange([("SCRIPT", "LOAD", script.script)])
            if isinstance(sha, Exception):
                raise sha
        except BaseException as e:  # noqa: BLE001 - its callers hear of it
            _fail(items, e)
            return
        script.sha = sha.decode()
        for item in items:
            self._enqueue(item)

    async def _exchange(self, commands: list) -> list:
        """The replies of ``commands``, sent in one write on one connection, in order (a
        ``ResponseError`` in place of an error reply). Sent again once, on a new connection, only
        when the first try failed before any reply (once a reply came, the commands ran)."""
        conn = self._idle.pop() if self._idle else self._make()
        reusable = False
        try:
            async with asyncio.timeout(self.deadline_s):
                packed = (conn.pack_commands(commands) if _pack_one is None
                          else b"".join([_pack_one(c) for c in commands]))
                for attempt in (0, 1):
                    replies: list = []
                    try:
                        await conn.send_packed_command(packed, check_health=False)
                        for _ in commands:
                            try:
                                replies.append(await conn.read_response())
                            except ResponseError as e:  # (a complete reply: the connection is fine)
                                replies.append(e)
                    except RedisConnectionError:
                        await conn.disconnect(nowait=True)
                        if attempt or replies:
                            raise
                        continue
                    reusable = True
                    return replies
                raise AssertionError("unreachable")  # pragma: no cover (the loop returns or raises)
        finally:
            if reusable:
                self._idle.append(conn)
            else:
                await conn.disconnect(nowait=True)

    async def close(self) -> None:
        """Drop the idle connections (batches in flight finish on their own)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect(nowait=True)


def _fail(items: list, e: BaseException) -> None:
    """Every caller of ``items`` hears of ``e``; a cancellation goes on up (the task was cancelled)."""
    for *_, fut in items:
        _deliver(fut, e)
    if isinstance(e, asyncio.CancelledError):
        raise e


def _deliver(fut: asyncio.Future, outcome) -> None:
    """Hand ``outcome`` (a reply, an exception, or a cancellation) to a caller still waiting."""
    if fut.done():
        return
    if isinstance(outcome, asyncio.CancelledError):
        fut.cancel()
    elif isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)


__all__ = ["ScriptBatcher", "MAX_BATCH"]
