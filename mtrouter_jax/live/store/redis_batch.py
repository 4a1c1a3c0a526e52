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
restart) is sent again once, on a new connection; a script the server forgot is loaded and run
again alone.
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
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.append((script, keys, args, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        for i in range(0, len(queue), MAX_BATCH):
            task = asyncio.get_running_loop().create_task(self._run(queue[i:i + MAX_BATCH]))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list) -> None:
        live = [b for b in batch if not b[3].done()]  # (a caller past its deadline is not sent)
        if not live:
            return
        self.batches += 1
        self.calls += len(live)
        try:
            replies = await self._send(live)
        except BaseException as e:  # noqa: BLE001 - every caller hears of it
            for *_, fut in live:
                if not fut.done():
                    fut.cancel() if isinstance(e, asyncio.CancelledError) else fut.set_exception(e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        for (script, keys, args, fut), reply in zip(live, replies):
            if isinstance(reply, NoScriptError):  # (the server restarted without it) load it, run it alone
                task = asyncio.get_running_loop().create_task(self._reload_and_run(script, keys, args, fut))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            elif fut.done():
                continue
            elif isinstance(reply, Exception):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    async def _send(self, batch: list) -> list:
        """The replies of ``batch`` in order (a ``ResponseError`` in place of an error reply)."""
        commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args, _ in batch]
        conn = self._idle.pop() if self._idle else self._make()
        reusable = False
        try:
            async with asyncio.timeout(self.deadline_s):
                for attempt in (0, 1):
                    replies: list = []
                    try:
                        packed = (conn.pack_commands(commands) if _pack_one is None
                                  else b"".join([_pack_one(c) for c in commands]))
                        await conn.send_packed_command(packed, check_health=False)
                        for _ in commands:
                            try:
                                replies.append(await conn.read_response())
                            except ResponseError as e:  # (a complete reply: the connection is fine)
                                replies.append(e)
                    except RedisConnectionError:
                        await conn.disconnect(nowait=True)
                        if attempt or replies:  # (once a reply came, the batch ran: never twice)
                            raise
                        continue
                    reusable = True
                    return replies
        finally:
            if reusable:
                self._idle.append(conn)
            else:
                await conn.disconnect(nowait=True)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _reload_and_run(self, script, keys: list, args: list, fut: asyncio.Future) -> None:
        conn = self._idle.pop() if self._idle else self._make()
        reusable = False
        try:
            async with asyncio.timeout(self.deadline_s):
                await conn.send_command("SCRIPT", "LOAD", script.script)
                script.sha = (await conn.read_response()).decode()
                await conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                try:
                    reply = await conn.read_response()
                except ResponseError as e:
                    reply = e
            reusable = True
        except BaseException as e:  # noqa: BLE001 - the caller hears of it
            if not fut.done():
                fut.cancel() if isinstance(e, asyncio.CancelledError) else fut.set_exception(e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        finally:
            if reusable:
                self._idle.append(conn)
            else:
                await conn.disconnect(nowait=True)
        if not fut.done():
            fut.set_exception(reply) if isinstance(reply, Exception) else fut.set_result(reply)

    async def close(self) -> None:
        """Drop the idle connections (batches in flight finish on their own)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect(nowait=True)


__all__ = ["ScriptBatcher", "MAX_BATCH"]
