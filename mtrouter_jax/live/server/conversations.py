"""Open conversations of the proxy: one ``LiveEpisode`` each, LRU-bounded, finished into the log.

Runs on the server's event loop. Each conversation has an ``asyncio.Lock`` that a request holds
from its decision to its recorded turn (turns of one conversation are serialised); closing a
conversation (finish, eviction, restart, shutdown) takes the same lock, so an episode is never
logged in the middle of a turn. The log append (a write and an fsync) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import anyio

from mtrouter_jax.live.server.api import ApiError
from mtrouter_jax.live.episode import LiveEpisode
from mtrouter_jax.live.router import Router


def conversation_key(messages: list) -> str:
    """Stable id from the first system and first user message (used without the header)."""
    first = {}
    for m in messages:
        r = m.get("role")
        if r in ("system", "developer", "user") and (r == "user" or "system" not in first):
            first.setdefault("user" if r == "user" else "system", m.get("content"))
        if "user" in first:
            break
    return "h-" + hashlib.sha256(json.dumps(first, sort_keys=True, ensure_ascii=False)
                                 .encode("utf-8")).hexdigest()[:20]


@dataclass
class Conversation:
    """One open conversation (``n_seen``: messages of the last request + the assistant reply)."""

    episode: LiveEpisode
    derived: bool  # id derived from a message hash (not the header)
    n_seen: int = 0
    last_used: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ConversationStore:
    """Open conversations (LRU-bounded; evicted ones are logged unscored) + recently finished ones."""

    def __init__(self, router: Router, max_open: int = 10_000, keep_finished: int = 1000,
                 on_close: Callable[[str], None] | None = None):
        self.router, self.max_open, self.keep_finished = router, max_open, keep_finished
        self.open: OrderedDict[str, Conversation] = OrderedDict()
        self.done: OrderedDict[str, dict] = OrderedDict()
        self.uses: dict[str, int] = {}
        self.on_close = on_close  # called with the reason ("finished", "evicted", ...): metrics
        self._tasks: set[asyncio.Task] = set()
        # a thread lock, not an asyncio one: close_all runs in a worker thread at shutdown
        self.lock = threading.Lock()

    def get(self, cid: str) -> Conversation | None:
        with self.lock:
            return self.open.get(cid)

    def get_or_start(self, cid: str, derived: bool, budget: float | None, task: str | None,
                     lam: float | None, explore: bool = False, seed: int | None = None) -> Conversation:
        """The open conversation ``cid``, else a new episode (``cid``, then ``cid-2``, ... when
        the id is reused after a finish). Evicted conversations are closed in the background."""
        evicted = []
        with self.lock:
            conv = self.open.get(cid)
            if conv is None:
                n = self.uses.get(cid, 0) + 1
                eid = cid if n == 1 else f"{cid}-{n}"
                # start first: a bad budget/seed raises before the store changes
                conv = Conversation(self.router.start_episode(eid, task, budget, lam, explore=explore, seed=seed),
                                    derived)
                self.uses[cid] = n
                self.open[cid] = conv
                while len(self.open) > self.max_open:
                    evicted.append(self.open.popitem(last=False))
            self.open.move_to_end(cid)
            conv.last_used = time.time()
        for old_id, old in evicted:
            self._background(self._close_locked(old_id, old, None, None, {"closed": "evicted"}, "evicted"))
        return conv

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # keep a reference until done (the loop holds only weak ones)
        task.add_done_callback(self._tasks.discard)

    async def finish(self, cid: str, score=None, score_range=None, meta=None) -> dict:
        """End ``cid`` (after its in-flight turn, if any) and log it; 404 when it is not open."""
        with self.lock:
            conv = self.open.pop(cid, None)
        if conv is None:
            raise ApiError(404, f"no open conversation {cid!r}", code="conversation_not_found")
        return await self._close_locked(cid, conv, score, score_range, meta, "finished")

    async def restart(self, cid: str, conv: Conversation) -> None:
        """The client started the same task over: finish the old episode (unscored). The caller
        must not hold ``conv.lock``."""
        with self.lock:
            if self.open.get(cid) is conv:
                del self.open[cid]
        await self._close_locked(cid, conv, None, None, {"closed": "restarted"}, "restarted")

    async def _close_locked(self, cid, conv: Conversation, score, score_range, meta, reason: str) -> dict:
        async with conv.lock:
            return await anyio.to_thread.run_sync(self._close, cid, conv, score, score_range, meta, reason)

    def _close(self, cid, conv: Conversation, score, score_range, meta, reason: str) -> dict:
        with conv.episode.lock:
            ep = conv.episode.finish(score, score_range, meta)
            info = {**conv.episode.info(), "logged": ep is not None and self.router.log_path is not None}
        with self.lock:
            self.done[cid] = info
            while len(self.done) > self.keep_finished:
                self.done.popitem(last=False)
        if self.on_close is not None:
            self.on_close(reason)
        return info

    def close_all(self) -> None:
        """Log every open conversation unscored (server shutdown; in-flight requests are over)."""
        with self.lock:
            items = list(self.open.items())
            self.open.clear()
        for cid, conv in items:
            if not conv.episode.finished:
                self._close(cid, conv, None, None, {"closed": "shutdown"}, "shutdown")


__all__ = ["ConversationStore", "Conversation", "conversation_key"]
