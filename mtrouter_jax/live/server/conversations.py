"""Open conversations of the proxy: one ``LiveEpisode`` each, per tenant, bounded, finished into the log.

Runs on the server's event loop. Each conversation has an ``asyncio.Lock`` that a request holds
from its decision to its recorded turn (turns of one conversation are serialised); closing a
conversation (finish, restart, idle expiry, shutdown) takes the same lock, so an episode is never
logged in the middle of a turn. The log append (a write and an fsync) runs in a worker thread.

Conversations are keyed by (tenant, id): ids are per tenant (``live/server/tenancy.py``). The store
is bounded (``Limits.max_open`` in all, ``tenant_max_open`` per tenant): a *new* conversation beyond
a bound is refused with 429 — open ones are never evicted to make room, so one client's flood
cannot end another's conversations or reset their budgets. Idle ones (``idle_timeout``) are
logged unscored and dropped. A finish whose log write fails keeps the conversation (503; retry).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import anyio

from mtrouter_jax.live.episode import LiveEpisode
from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server.api import ApiError
from mtrouter_jax.live.server.arms import Arms
from mtrouter_jax.live.server.limits import Limits
from mtrouter_jax.live.server.tenancy import ANONYMOUS, Tenant

log = logging.getLogger("mtrouter_jax.live")
SEEN_IDS = 100_000  # episode ids remembered (as 8-byte digests) to keep reused ones unique in the log


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


def _digest(eid: str) -> bytes:
    return hashlib.blake2b(eid.encode("utf-8", "surrogatepass"), digest_size=8).digest()


_LOGGED_ID = re.compile(rb'"episode_id":\s*("(?:[^"\\]|\\.)*")')


def _logged_ids(path) -> list[str]:
    """The episode ids already in the log (the last ``SEEN_IDS``), read line by line at start-up."""
    out: deque[str] = deque(maxlen=SEEN_IDS)
    try:
        with open(path, "rb") as f:
            for line in f:
                m = _LOGGED_ID.search(line, 0, 4096)
                if m:
                    try:
                        out.append(json.loads(m.group(1)))
                    except ValueError:
                        continue
    except (OSError, TypeError):  # no log yet (or none configured)
        pass
    return list(out)


@dataclass
class Conversation:
    """One open conversation (``n_seen``: messages of the last request + the assistant reply)."""

    episode: LiveEpisode
    derived: bool  # id derived from a message hash (not the header)
    cid: str = ""
    tenant: str = ""
    n_seen: int = 0
    last_used: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tenant_obj: Tenant = ANONYMOUS
    # with a shared state store (server/shared.py): the stored version this copy is, whether its
    # episode id is claimed, and the turn in progress (lease, reservations)
    version: int = 0
    claimed: bool = False
    turn: Any = None


class ConversationStore:
    """Open conversations (bounded, per tenant) + the status of recently finished ones."""

    def __init__(self, router: Router, limits: Limits | None = None, keep_finished: int = 1000,
                 on_close: Callable[[str], None] | None = None):
        self.router, self.limits, self.keep_finished = router, limits or Limits(), keep_finished
        self.open: OrderedDict[tuple[str, str], Conversation] = OrderedDict()
        self.done: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self.per_tenant: dict[str, int] = {}
        self.on_close = on_close  # called with the reason ("finished", "expired", ...): metrics
        self.run_id = secrets.token_hex(3)  # in generated episode ids: unique across restarts
        self._seq = itertools.count(2)
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        for eid in _logged_ids(router.log_path):  # ids of earlier runs on this log stay taken
            self._remember(_digest(eid))
        self._tasks: set[asyncio.Task] = set()
        self.shared = None  # server/shared.py's SharedConversations with --state (closes go through it)
        self.arms = Arms()  # --canary / --shadow candidates (server/arms.py; the proxy sets its own)
        # a thread lock, not an asyncio one: close_all runs in a worker thread at shutdown
        self.lock = threading.Lock()

    def get(self, cid: str, tenant: str = "") -> Conversation | None:
        with self.lock:
            return self.open.get((tenant, cid))

    def items(self, tenant: Tenant) -> list[tuple[tuple[str, str], Conversation]]:
        """Open conversations a tenant may see (an admin: every tenant's), most recently used last."""
        with self.lock:
            return [(k, c) for k, c in self.open.items() if tenant.admin or k[0] == tenant.name]

    def _episode_id(self, cid: str, derived: bool) -> str:
        """``cid`` itself for a client's own id seen for the first time; otherwise ``cid-RUN-N`` (RUN:
        random per process, N: a counter) — derived ids recur whenever the same prompt does."""
        digest = _digest(cid)
        fresh = not derived and digest not in self._seen
        self._remember(digest)
        return cid if fresh else f"{cid}-{self.run_id}-{next(self._seq)}"

    def _remember(self, digest: bytes) -> None:
        self._seen[digest] = None
        self._seen.move_to_end(digest)
        while len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)

    def get_or_start(self, cid: str, derived: bool, budget: float | None, task: str | None,
                     lam: float | None, explore: bool = False, seed: int | None = None,
                     tenant: Tenant = ANONYMOUS) -> Conversation:
        """The tenant's open conversation ``cid``, else a new episode — refused with 429 when the
        store (or the tenant's share of it) is full of conversations that are not idle."""
        key, lim = (tenant.name, cid), self.limits
        with self.lock:
            conv = self.open.get(key)
            if conv is None:
                cap = tenant.max_open or lim.tenant_max_open
                if len(self.open) >= lim.max_open or (cap is not None and self.per_tenant.get(tenant.name, 0) >= cap):
                    self._expire_locked(time.time())  # make room from idle ones first
                if len(self.open) >= lim.max_open:
                    raise ApiError(429, f"the proxy has {len(self.open)} open conversations, its limit (--max-open); "
                                        "finish some, or retry later", "rate_limit_error", "too_many_conversations")
                if cap is not None and self.per_tenant.get(tenant.name, 0) >= cap:
                    raise ApiError(429, f"this key's tenant has {cap} open conversations, its limit; finish some, "
                                        "or retry later", "rate_limit_error", "too_many_conversations")
                # start first: a bad budget/seed raises before the store changes
                ep = self.new_episode(cid, derived, budget, task, lam, explore, seed, tenant)
                conv = Conversation(ep, derived, cid, tenant.name, tenant_obj=tenant)
                self.open[key] = conv
                self.per_tenant[tenant.name] = self.per_tenant.get(tenant.name, 0) + 1
            self.open.move_to_end(key)
            conv.last_used = time.time()
        return conv

    def new_episode(self, cid: str, derived: bool, budget: float | None, task: str | None, lam: float | None,
                    explore: bool = False, seed: int | None = None, tenant: Tenant = ANONYMOUS) -> LiveEpisode:
        """A new episode of the tenant's conversation ``cid`` (its budget clipped to the tenant's cap), on
        its arm's router (``arms.py``: the served one unless ``--canary`` draws the candidate)."""
        if tenant.budget_cap is not None:
            budget = tenant.budget_cap if budget is None else min(budget, tenant.budget_cap)
        return self.arms.start(self.router, self._episode_id(cid, derived), task, budget, lam, explore, seed)

    def _remove_locked(self, conv: Conversation) -> bool:
        key = (conv.tenant, conv.cid)
        if self.open.get(key) is not conv:
            return False
        del self.open[key]
        n = self.per_tenant.get(conv.tenant, 1) - 1
        if n > 0:
            self.per_tenant[conv.tenant] = n
        else:
            self.per_tenant.pop(conv.tenant, None)
        return True

    def _expire_locked(self, now: float) -> int:
        """Drop conversations idle longer than ``idle_timeout`` (not those with a request in
        flight) and log them unscored in the background; returns how many."""
        idle = self.limits.idle_timeout
        if not idle:
            return 0
        old = [c for c in self.open.values() if now - c.last_used > idle and not c.lock.locked()]
        for conv in old:
            self._remove_locked(conv)
            self._background(self._close_locked(conv, None, None, {"closed": "idle"}, "expired"))
        return len(old)

    async def expire_idle(self) -> int:
        """One sweep of idle conversations (``create_app`` runs one every few seconds)."""
        with self.lock:
            return self._expire_locked(time.time())

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # keep a reference until done (the loop holds only weak ones)
        task.add_done_callback(self._tasks.discard)

    async def finish(self, cid: str, score=None, score_range=None, meta=None, tenant: str = "") -> dict:
        """End ``cid`` (after its in-flight turn, if any) and log it; 404 when it is not open; 503
        (the conversation stays open: retry) when the log line cannot be written."""
        conv = self.get(cid, tenant)
        transient = conv is None and self.shared is not None
        if transient:  # shared state: a conversation this replica has not served is finished from the store
            conv = await self.shared.attach(cid, tenant)
        if conv is None:
            raise ApiError(404, f"no open conversation {cid!r}", code="conversation_not_found")
        async with conv.lock:
            if conv.episode.finished or (not transient and self.get(cid, tenant) is not conv):
                raise ApiError(404, f"no open conversation {cid!r}", code="conversation_not_found")
            try:
                if self.shared is not None:
                    info = await self.shared.close(conv, score, score_range, meta, "finished")
                else:
                    info = await anyio.to_thread.run_sync(self._close, conv, score, score_range, meta, "finished")
            except OSError as e:
                log.error("conversation %s: could not write its episode to %s (%s); kept open",
                          conv.episode.episode_id, self.router.log_path, e)
                raise ApiError(503, f"could not write the episode log ({e.strerror or e}); the conversation is "
                                    "kept open: retry the finish", "api_error", "log_unavailable") from None
            with self.lock:
                self._remove_locked(conv)
            return info

    async def restart(self, conv: Conversation) -> None:
        """The client started the same task over: finish the old episode (unscored). The caller
        must not hold ``conv.lock``."""
        with self.lock:
            self._remove_locked(conv)
        await self._close_locked(conv, None, None, {"closed": "restarted"}, "restarted")

    async def _close_locked(self, conv: Conversation, score, score_range, meta, reason: str) -> dict | None:
        async with conv.lock:
            try:
                if self.shared is not None:
                    return await self.shared.close(conv, score, score_range, meta, reason)
                return await anyio.to_thread.run_sync(self._close, conv, score, score_range, meta, reason)
            except ApiError as e:  # shared state: finished elsewhere, or the store is down
                log.warning("conversation %s (%s) not closed here: %s", conv.cid, reason, e.message)
                return None
            except OSError as e:
                log.error("conversation %s (%s): could not write its episode to %s (%s); lost",
                          conv.episode.episode_id, reason, self.router.log_path, e)
                if self.on_close is not None:
                    self.on_close("write_failed")
                return None

    def close_meta(self, conv: Conversation, meta: dict | None) -> dict:
        """The episode meta the log records besides the episode's own: conversation, tenant, checkpoint,
        arm (``--canary``) and the shadow's checkpoint (``--shadow``)."""
        meta = {**(meta or {}), "conversation": conv.cid}
        if conv.tenant:
            meta["tenant"] = conv.tenant
        ep = conv.episode
        digest = getattr(ep.router, "digest", None)
        if digest is not None:
            meta["checkpoint"] = digest
        if ep.arm is not None:
            meta["arm"] = ep.arm
        if self.arms.shadow is not None:
            meta["shadow_checkpoint"] = getattr(self.arms.shadow, "digest", None)
        return meta

    def _close(self, conv: Conversation, score, score_range, meta, reason: str) -> dict:
        meta = self.close_meta(conv, meta)
        with conv.episode.lock:
            ep = conv.episode.finish(score, score_range, meta)
            info = {**conv.episode.info(), "logged": ep is not None and self.router.log_path is not None}
        self.remember_done(conv, info, reason)
        return info

    def remember_done(self, conv: Conversation, info: dict, reason: str) -> None:
        with self.lock:
            self.done[(conv.tenant, conv.cid)] = info
            while len(self.done) > self.keep_finished:
                self.done.popitem(last=False)
        if self.on_close is not None:
            self.on_close(reason)

    def close_all(self) -> None:
        """Log every open conversation unscored (server shutdown; in-flight requests are over)."""
        with self.lock:
            items = list(self.open.values())
            self.open.clear()
            self.per_tenant.clear()
        if self.shared is not None:  # the conversations live on in the store: other replicas continue them
            return
        for conv in items:
            if not conv.episode.finished:
                try:
                    self._close(conv, None, None, {"closed": "shutdown"}, "shutdown")
                except OSError as e:
                    log.error("conversation %s: could not write its episode at shutdown (%s)",
                              conv.episode.episode_id, e)


__all__ = ["ConversationStore", "Conversation", "conversation_key", "SEEN_IDS"]
