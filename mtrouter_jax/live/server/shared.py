"""Conversations shared by proxy replicas through a ``StateStore`` (issue 19; ``--state redis://...``).

Each replica keeps its ``ConversationStore`` as a cache; the store is the truth. A turn is two
store round trips when this replica served the conversation's last turn, three otherwise:

1. ``begin_turn``: **lease** the conversation (fencing token; waited for like the in-process lock,
   ``LEASE_WAIT_S``; renewed every third of ``LEASE_MS`` while the turn or its stream runs), so two
   replicas never run turns of one conversation at once, and read its state and spend to **sync**:
   the stored state (``episode_state``) replaces the cached episode when another replica wrote a
   newer version; the spend is the store's counter when that is higher (a late settle). The
   store sends the state back only when it is not the version this replica holds (``known``);
2. **reserve** each upstream attempt's worst case (atomic across replicas; released when the
   attempt fails). The first attempt's reservation rides on ``begin_turn`` when the proxy decided
   on its cached copy (``guess``): the store makes it only if that copy was current (version and
   spend); if not, the copy is dropped, the stored one adopted, and the turn decided again and
   reserved in a step of its own;
3. ``end_turn``: **settle** the billed cost, release the other attempts' reservations, **put** the
   new state (fenced: a replica that lost its lease writes nothing) with a TTL of twice the idle
   timeout, release the lease.

Finishing marks the *episode* finished once (``finish_once``, any replica) and queues it for the
one log writer (``logwriter.py``). ``StoreUnavailable`` before the upstream call is a 503 (no turn
ran; no fallback to per-replica state); after it, the reply is returned and the settle retried
(settles are idempotent) before this replica's next store call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from typing import TYPE_CHECKING

import anyio

from mtrouter_jax.core import jsonfast
from mtrouter_jax.live.episode_state import dumps_state, restore_episode
from mtrouter_jax.logs.io import episode_line
from mtrouter_jax.live.server.api import ApiError
from mtrouter_jax.live.server.shared_docs import (TurnHandle, conv_key, conversation_info, doc_of, episode_key,
                                                  known_prefix, state_doc, unavailable)
from mtrouter_jax.live.store import Lease, Reservation, StateStore, StoreUnavailable, TurnStart
from mtrouter_jax.live.store.base import DEFAULT_BUDGET_TTL_MS, DEFAULT_FINISHED_TTL_MS, EPS_USD

# a finished episode longer than this is validated and encoded in a worker thread, not on the loop
# (~40 µs a turn on this 2-core machine: 2.6 ms for 64 turns, 18 ms for 500, under a second for 20,000)
LINE_IN_THREAD_TURNS = 64

if TYPE_CHECKING:
    from mtrouter_jax.live.server.conversations import Conversation
    from mtrouter_jax.live.server.proxy import Proxy

log = logging.getLogger("mtrouter_jax.live")
LEASE_MS = 15_000  # a replica killed mid-turn blocks its conversation this long at most
LEASE_WAIT_S = 600.0  # as long as a request waits for its conversation's previous turn in-process
_POLL_S = (0.002, 0.05)  # lease polling: first and longest sleep


class SharedConversations:
    """The lease / sync / reserve / settle / put cycle of ``Proxy`` turns on a shared store."""

    def __init__(self, store: StateStore, proxy: "Proxy", lease_ms: int = LEASE_MS,
                 wait_s: float = LEASE_WAIT_S):
        self.store, self.proxy, self.lease_ms, self.wait_s = store, proxy, int(lease_ms), float(wait_s)
        self.pending: list[tuple[str, str, float]] = []  # settles to retry: (episode key, id, USD)
        # reservation ids: unique across replicas (the nonce) and turns (the counter) without the
        # lease's token, so the first one can be sent with the lease request (``begin``)
        self.nonce, self._seq = secrets.token_hex(8), itertools.count(1)

    @property
    def state_ttl_ms(self) -> int:
        idle = self.proxy.limits.idle_timeout
        return DEFAULT_BUDGET_TTL_MS if not idle else int(max(2 * idle, 60.0) * 1000)

    # ------------------------------------------------------------------ lease
    async def lease(self, key: str, what: str, budget_key: str | None = None, known: bytes | None = None,
                    reservation: Reservation | None = None) -> TurnStart:
        """``begin_turn`` on ``key`` (its lease, stored state, ``budget_key``'s spend, ``reservation``
        if ``known`` is current), waiting up to ``wait_s`` for the lease (409 ``busy`` beyond)."""
        deadline, pause = time.monotonic() + self.wait_s, _POLL_S[0]
        while True:
            start = await self.store.begin_turn(key, self.lease_ms, budget_key, known, reservation)
            if start.lease is not None:
                return start
            if time.monotonic() >= deadline:
                raise ApiError(409, f"conversation {what!r} is busy with a turn on another replica (its lease "
                                    f"was held for {self.wait_s:g} s); retry", code="busy")
            await asyncio.sleep(pause)
            pause = min(pause * 2, _POLL_S[1])

    def _arm(self, h: TurnHandle) -> None:
        # a timer, not a sleeping task per turn: most turns end long before their first renewal
        h.renewer = asyncio.get_running_loop().call_later(self.lease_ms / 3000, self._start_renew, h)

    def _start_renew(self, h: TurnHandle) -> None:
        h.renewer = asyncio.get_running_loop().create_task(self._renew(h))

    async def _renew(self, h: TurnHandle) -> None:
        try:
            if not await self.store.renew(h.lease, self.lease_ms):
                h.lost = True
                log.warning("conversation lease %s lost mid-turn (held past %d ms): its state will not be "
                            "written by this replica", h.lease.conv_id, self.lease_ms)
                return
        except StoreUnavailable as e:
            log.warning("could not renew lease %s: %s", h.lease.conv_id, e)
        self._arm(h)

    async def _release(self, lease: Lease) -> None:
        try:
            await self.store.release_lease(lease)
        except StoreUnavailable as e:  # it expires on its own
            log.warning("could not release lease %s (%s): it expires in %d ms", lease.conv_id, e, self.lease_ms)

    # ------------------------------------------------------------------ state
    async def _load(self, conv: "Conversation") -> dict | None:
        return doc_of(await self.store.get(conv_key(conv.tenant, conv.cid)))

    async def _adopt(self, conv: "Conversation", doc: dict) -> None:
        """Take the stored version of ``conv`` (another replica wrote it since)."""
        c = doc["conv"]
        router = await self.proxy.router_for(c.get("checkpoint"), c.get("checkpoint_path"))
        conv.episode = restore_episode(router, doc["episode"])
        self.proxy.arms.adopt(conv.episode, doc.get("shadow"))  # the --shadow mirror, restored or said missing
        conv.version, conv.n_seen, conv.derived, conv.last_used = doc["v"], c["n_seen"], c["derived"], c["last_used"]
        conv.claimed = True

    async def _claim(self, conv: "Conversation", req) -> None:
        """A new conversation: its episode id is claimed once in the store (a client id reused on any
        replica gets the ``ID-RUN-N`` form, as in one process)."""
        if conv.claimed:
            return
        if await self.store.acquire_lease("id:" + conv.episode.episode_id, DEFAULT_FINISHED_TTL_MS) is None:
            conv.episode = self.proxy.store.new_episode(conv.cid, True, req.budget, req.task, req.lam, req.explore,
                                                        req.seed, conv.tenant_obj)
            await self.store.acquire_lease("id:" + conv.episode.episode_id, DEFAULT_FINISHED_TTL_MS)
        conv.claimed = True

    def reservation_id(self, model: str) -> str:
        return f"{self.nonce}:{next(self._seq)}:{model}"

    async def begin(self, conv: "Conversation", req, guess: tuple[str, float] | None = None) -> bool:
        """Lease ``conv`` and bring it up to date with the store (raises 409 busy, 402, 503).
        ``guess``: (model, worst-case USD) of the decision made on the cached episode, reserved in
        the same step; True if it stands (the copy was current and the reservation made), False if
        the cached episode was replaced by the stored one (decide again: nothing was reserved)."""
        try:
            await self.flush()
        except StoreUnavailable as e:
            raise unavailable(e) from None
        asked = None if conv.episode.budget is None else episode_key(conv.episode.episode_id)
        known = known_prefix(conv.version)
        res = None
        if guess is not None and asked is not None and known is not None:
            res = Reservation(self.reservation_id(guess[0]), guess[1], conv.episode.budget, conv.episode.spent)
        elif guess is not None:  # nothing to reserve it with: the stored state is sent back and adopted
            known = None
        start = await self._lease_of(conv, asked, known, res)
        lease, spent = start.lease, start.spent
        stands = False
        try:
            if guess is not None:
                if start.reserved is None:  # the guess was made on a stale copy, or its spend moved
                    conv.version = -1  # the copy was touched by the guess: adopt the stored one
                elif start.reserved:
                    stands = True
                else:  # current copy, current spend, and the reservation did not fit
                    await self._refused(conv, guess[0], guess[1])
            doc = None if start.same and conv.version > 0 else doc_of(start.state)
            if start.same and conv.version > 0:
                pass  # this replica holds the stored version
            elif doc is None:
                if conv.version:  # finished or expired elsewhere since this replica saw it: a new episode
                    conv.episode = self.proxy.store.new_episode(conv.cid, conv.derived, req.budget, req.task, req.lam,
                                                                req.explore, req.seed, conv.tenant_obj)
                    conv.version, conv.n_seen, conv.claimed = 0, 0, False
                await self._claim(conv, req)
            elif doc["v"] != conv.version:
                await self._adopt(conv, doc)
            ep = conv.episode
            if ep.budget is not None:
                ekey = episode_key(ep.episode_id)
                if ekey != asked:  # the sync changed the episode: begin_turn read another one's spend
                    spent = await self.store.spent(ekey)
                if spent > ep.spent + EPS_USD:  # a settle this state has not seen (a replica that stalled)
                    ep.spent = spent
        except BaseException as e:
            if stands:  # (the lease's release would leave it to expire: free it now)
                await self._release_reservation(conv, res.id)
            await self._release(lease)
            if isinstance(e, StoreUnavailable):
                raise unavailable(e) from None
            raise
        h = TurnHandle(lease, len(conv.episode.turns))
        if stands:
            h.reservations[guess[0]] = res.id
        self._arm(h)
        conv.turn = h
        return stands

    def _state(self, conv: "Conversation") -> tuple[str, bytes, int, str]:
        """``conv``'s next version as ``end_turn`` writes it: (key, JSON, TTL ms, owner)."""
        doc = state_doc(conv, self.proxy.arms.shadow_doc(conv.episode))
        return conv_key(conv.tenant, conv.cid), dumps_state(doc), self.state_ttl_ms, conv.tenant

    # ------------------------------------------------------------------ budget
    async def reserve(self, conv: "Conversation", model: str, amount: float) -> None:
        """Hold ``amount`` USD of the budget for an attempt on ``model`` (402/409 when it does not fit;
        nothing to do when ``begin`` reserved it already)."""
        ep, h = conv.episode, conv.turn
        if ep.budget is None or h is None or model in h.reservations:
            return
        rid = self.reservation_id(model)
        try:
            if await self.store.reserve(episode_key(ep.episode_id), rid, amount, ep.budget):
                h.reservations[model] = rid
                return
        except StoreUnavailable as e:
            raise unavailable(e) from None
        await self._refused(conv, model, amount)

    async def _refused(self, conv: "Conversation", model: str, amount: float) -> None:
        """The store refused a reservation of ``amount`` for ``model``: 409 ``budget_held`` while other
        turns hold part of the budget, else 402 (the spend, as the store has it, is taken)."""
        ep, ekey = conv.episode, episode_key(conv.episode.episode_id)
        try:
            held, spent = await self.store.reserved(ekey), await self.store.spent(ekey)
        except StoreUnavailable as e:
            raise unavailable(e) from None
        if held > EPS_USD:
            raise ApiError(409, f"conversation {conv.cid!r}: ${held:.6f} of its budget is held by a turn that has "
                                "not settled (another replica's, perhaps one that died: it is released within "
                                f"{self.store_reservation_s():g} s); retry", code="budget_held")
        ep.spent = max(ep.spent, spent)
        raise self.proxy._budget_error(f"budget exhausted: conversation {conv.cid!r} spent ${spent:.6f} of "
                                       f"${ep.budget:.6f}; a {model} turn could cost up to ${amount:.6f}")

    @staticmethod
    def store_reservation_s() -> float:
        from mtrouter_jax.live.store.base import DEFAULT_RESERVATION_TTL_MS
        return DEFAULT_RESERVATION_TTL_MS / 1000

    async def unreserve(self, conv: "Conversation", model: str) -> None:
        """The attempt on ``model`` failed: its reservation goes (or expires, if the store is down)."""
        h = conv.turn
        rid = None if h is None else h.reservations.pop(model, None)
        if rid is not None:
            await self._release_reservation(conv, rid)

    async def _release_reservation(self, conv: "Conversation", rid: str) -> None:
        try:
            await self.store.release(episode_key(conv.episode.episode_id), rid)
        except StoreUnavailable as e:
            log.warning("could not release a reservation of %s (%s): it expires on its own", conv.cid, e)

    async def flush(self) -> None:
        """Retry the settles the store missed (idempotent: each bills once)."""
        todo, self.pending = self.pending, []  # (taken whole: concurrent turns flush too)
        for i, (ekey, rid, cost) in enumerate(todo):
            try:
                await self.store.settle(ekey, rid, cost)
            except StoreUnavailable:
                self.pending = todo[i:] + self.pending
                raise

    # ------------------------------------------------------------------ end of a turn
    async def end(self, conv: "Conversation") -> None:
        """Settle the served attempt, release the others, write the state and release the lease (one
        ``end_turn``)."""
        h, conv.turn = conv.turn, None
        if h is None:
            return
        if h.renewer is not None:
            h.renewer.cancel()
        ep = conv.episode
        ekey = episode_key(ep.episode_id)
        recorded = len(ep.turns) > h.n_turns
        settle = None
        if recorded and ep.turns[-1].model in h.reservations:
            settle = (ekey, h.reservations.pop(ep.turns[-1].model), ep.turns[-1].cost)
        releases = [(ekey, rid) for rid in h.reservations.values()]
        h.reservations.clear()
        state, bad = None, None
        if recorded:
            try:
                state = self._state(conv)
            except Exception as e:  # the call was made all the same: bill it, free the lease, then raise
                bad = e
        try:
            written, _ = await self.store.end_turn(h.lease, state, settle, releases)
        except BaseException as e:  # (StoreUnavailable, or cancelled)
            if settle is not None:  # it may have billed already: settles are idempotent
                self.pending.append(settle)
            await self._release(h.lease)  # else it expires; the other reservations expire on their own
            if not isinstance(e, StoreUnavailable):
                raise
            log.error("conversation %s: the state store failed after the upstream call (%s): the turn is billed "
                      "here, its settle is retried with this replica's next store call", conv.cid, e)
            return
        if bad is not None:
            raise bad
        if written:
            conv.version += 1
        elif recorded:
            log.warning("conversation %s: its lease was lost mid-turn; another replica's state stands "
                        "(this turn is billed, its history not kept)", conv.cid)
            conv.version = -1  # reload next time

    # ------------------------------------------------------------------ reads and finishes
    async def info(self, cid: str, tenant: str) -> dict | None:
        try:
            got = await self.store.get(conv_key(tenant, cid))
        except StoreUnavailable as e:
            raise unavailable(e) from None
        if got is None:
            return None
        return conversation_info(jsonfast.loads(got.data))

    async def attach(self, cid: str, tenant: str) -> "Conversation | None":
        """A cached copy of a stored conversation this replica has not served (to finish it), or None."""
        from mtrouter_jax.live.server.conversations import Conversation
        from mtrouter_jax.live.server.tenancy import Tenant

        conv = Conversation(None, False, cid, tenant, tenant_obj=Tenant(tenant))  # type: ignore[arg-type]
        try:
            doc = await self._load(conv)
        except StoreUnavailable as e:
            raise unavailable(e) from None
        if doc is None:
            return None
        await self._adopt(conv, doc)
        return conv

    async def _lease_of(self, conv: "Conversation", budget_key: str | None = None, known: bytes | None = None,
                        reservation: Reservation | None = None) -> TurnStart:
        """``lease`` on the conversation (409 busy after the wait, 503 when unreachable)."""
        try:
            return await self.lease(conv_key(conv.tenant, conv.cid), conv.cid, budget_key, known, reservation)
        except StoreUnavailable as e:
            raise unavailable(e) from None

    async def close(self, conv: "Conversation", score, score_range, meta, reason: str) -> dict | None:
        """Finish ``conv`` on the store, exactly once across replicas (404 when it is no longer open
        anywhere). An idle sweep of a conversation that another replica used since closes nothing."""
        start = await self._lease_of(conv, known=known_prefix(conv.version))
        lease = start.lease
        try:
            doc = None if start.same else doc_of(start.state)
            if start.same:
                pass  # this replica holds the stored version
            elif doc is None:
                if conv.version or not conv.episode.turns:
                    raise ApiError(404, f"no open conversation {conv.cid!r}", code="conversation_not_found")
            elif doc["v"] != conv.version:
                await self._adopt(conv, doc)
            if reason == "expired" and time.time() - conv.last_used <= self.proxy.limits.idle_timeout:
                return None  # in use on another replica
            ep = conv.episode
            if ep.turns:
                episode = ep.to_episode(score, score_range, self.proxy.store.close_meta(conv, meta))
                # validating and encoding a long episode would hold up every other request for its
                # milliseconds: a worker thread does it (a short one costs less than the hop)
                line = (episode_line(episode) if len(episode.turns) <= LINE_IN_THREAD_TURNS
                        else await anyio.to_thread.run_sync(episode_line, episode))
                ok = await self.store.finish_once(episode_key(ep.episode_id), line,
                                                  state_of=conv_key(conv.tenant, conv.cid))
                if not ok:
                    raise ApiError(404, f"conversation {conv.cid!r} was already finished", code="conversation_not_found")
            else:
                await self.store.delete(conv_key(conv.tenant, conv.cid))
            ep.finished = True
            info = {**ep.info(), "logged": bool(ep.turns)}
            self.proxy.store.remember_done(conv, info, reason)
            if self.proxy.writer is not None:
                self.proxy.writer.wake()
            return info
        except StoreUnavailable as e:
            raise ApiError(503, f"{e}; the conversation was not finished: retry the finish", "api_error",
                           "state_unavailable") from None
        finally:
            await self._release(lease)


__all__ = ["SharedConversations", "TurnHandle", "conv_key", "episode_key", "LEASE_MS", "LEASE_WAIT_S", "unavailable"]
