"""The embedded state store: one process, nothing to start (the default of ``mtrouter serve``).

Same contract as the Redis store (``store/base.py``), kept in dicts. Every method is a short
critical section under one ``threading.Lock`` with no ``await`` inside, so it is atomic on the
event loop and also safe from worker threads (the proxy closes conversations in one at shutdown)
and across event loops. Expiry is lazy (checked on access) plus a sweep every few hundred writes,
so idle conversations do not pile up.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from mtrouter_jax.live.store.base import (DEFAULT_BUDGET_TTL_MS, DEFAULT_FINISHED_TTL_MS,
                                          DEFAULT_RESERVATION_TTL_MS, EPS_USD, Finished, Lease,
                                          Reservation, StoredState, TurnStart, check_amount, check_budget,
                                          check_reservation, check_ttl)

_SWEEP_EVERY = 256


@dataclass
class _Budget:
    spent: float = 0.0
    held: dict[str, tuple[float, float]] = field(default_factory=dict)  # id -> (amount, deadline)
    closed: set[str] = field(default_factory=set)  # settled or released ids
    expires: float = 0.0

    def prune(self, now: float) -> None:
        for rid in [r for r, (_, dl) in self.held.items() if dl <= now]:
            del self.held[rid]

    def reserved(self) -> float:
        return sum(a for a, _ in self.held.values())


class MemoryStore:
    """In-process ``StateStore``: conversations, leases, budgets and finished episodes."""

    def __init__(self, budget_ttl_ms: int = DEFAULT_BUDGET_TTL_MS,
                 finished_ttl_ms: int = DEFAULT_FINISHED_TTL_MS, clock=time.monotonic):
        self.budget_ttl = check_ttl(budget_ttl_ms, "budget_ttl_ms") / 1000
        self.finished_ttl = check_ttl(finished_ttl_ms, "finished_ttl_ms") / 1000
        self._now = clock
        self._lock = threading.Lock()
        self._states: dict[str, tuple[StoredState, float]] = {}
        self._leases: dict[str, tuple[int, float]] = {}
        self._budgets: dict[str, _Budget] = {}
        self._finished: dict[str, float] = {}  # conv_id -> marker deadline
        self._stream: OrderedDict[str, Finished] = OrderedDict()
        self._fence = itertools.count(1)
        self._entry = itertools.count(1)
        self._writes = 0
        self._control: tuple[int, bytes] | None = None

    # ------------------------------------------------------------------ helpers (lock held)
    def _tick(self, now: float) -> None:
        self._writes += 1
        if self._writes % _SWEEP_EVERY:
            return
        for d in (self._states, self._leases):
            for k in [k for k, v in d.items() if v[1] <= now]:
                del d[k]
        for k in [k for k, b in self._budgets.items() if b.expires <= now]:
            del self._budgets[k]
        for k in [k for k, dl in self._finished.items() if dl <= now]:
            del self._finished[k]

    def _budget(self, conv_id: str, now: float) -> _Budget:
        b = self._budgets.get(conv_id)
        if b is None or b.expires <= now:
            b = self._budgets[conv_id] = _Budget()
        b.expires = now + self.budget_ttl
        b.prune(now)
        return b

    def _live_lease(self, conv_id: str, now: float) -> int | None:
        got = self._leases.get(conv_id)
        if got is None or got[1] <= now:
            return None
        return got[0]

    def _get(self, conv_id: str, now: float) -> StoredState | None:
        got = self._states.get(conv_id)
        return None if got is None or got[1] <= now else got[0]

    def _put(self, conv_id: str, data: bytes, ttl_ms: int, owner: str | None, now: float) -> None:
        self._states[conv_id] = (StoredState(bytes(data), owner), now + ttl_ms / 1000)
        self._tick(now)

    def _acquire(self, conv_id: str, ttl_ms: int, now: float) -> Lease | None:
        if self._live_lease(conv_id, now) is not None:  # held: no token burnt
            return None
        token = next(self._fence)
        self._leases[conv_id] = (token, now + ttl_ms / 1000)
        self._tick(now)
        return Lease(conv_id, token)

    def _release_lease(self, lease: Lease, now: float) -> bool:
        if self._live_lease(lease.conv_id, now) != lease.token:
            return False
        del self._leases[lease.conv_id]
        return True

    def _spent(self, conv_id: str, now: float) -> float:
        b = self._budgets.get(conv_id)
        return 0.0 if b is None or b.expires <= now else b.spent

    def _settle(self, conv_id: str, reservation_id: str, actual: float, now: float) -> bool:
        b = self._budget(conv_id, now)
        if reservation_id in b.closed:
            return False
        b.closed.add(reservation_id)
        b.held.pop(reservation_id, None)
        b.spent += actual
        return True

    def _reserve(self, conv_id: str, reservation_id: str, amount: float, budget: float | None, ttl_ms: int,
                 now: float) -> bool:
        b = self._budget(conv_id, now)
        if reservation_id in b.closed:
            return False
        if reservation_id in b.held:
            return True
        if budget is not None and b.spent + b.reserved() + amount > budget + EPS_USD:
            return False
        b.held[reservation_id] = (amount, now + ttl_ms / 1000)
        self._tick(now)
        return True

    def _release(self, conv_id: str, reservation_id: str, now: float) -> bool:
        b = self._budget(conv_id, now)
        if reservation_id in b.closed:
            return False
        b.closed.add(reservation_id)
        return b.held.pop(reservation_id, None) is not None

    # ------------------------------------------------------------------ conversation state
    async def get(self, conv_id: str) -> StoredState | None:
        with self._lock:
            return self._get(conv_id, self._now())

    async def put(self, conv_id: str, data: bytes, ttl_ms: int, owner: str | None = None,
                  token: int | None = None) -> bool:
        check_ttl(ttl_ms)
        with self._lock:
            now = self._now()
            if token is not None and self._live_lease(conv_id, now) != token:
                return False
            self._put(conv_id, data, ttl_ms, owner, now)
            return True

    async def delete(self, conv_id: str) -> None:
        with self._lock:
            self._states.pop(conv_id, None)

    # ------------------------------------------------------------------ lease
    async def acquire_lease(self, conv_id: str, ttl_ms: int) -> Lease | None:
        check_ttl(ttl_ms)
        with self._lock:
            return self._acquire(conv_id, ttl_ms, self._now())

    async def renew(self, lease: Lease, ttl_ms: int) -> bool:
        check_ttl(ttl_ms)
        with self._lock:
            now = self._now()
            if self._live_lease(lease.conv_id, now) != lease.token:
                return False
            self._leases[lease.conv_id] = (lease.token, now + ttl_ms / 1000)
            return True

    async def release_lease(self, lease: Lease) -> bool:
        with self._lock:
            return self._release_lease(lease, self._now())

    # ------------------------------------------------------------------ budget
    async def reserve(self, conv_id: str, reservation_id: str, amount: float, budget: float | None,
                      ttl_ms: int = DEFAULT_RESERVATION_TTL_MS) -> bool:
        amount, budget = check_amount(amount), check_budget(budget)
        check_ttl(ttl_ms)
        with self._lock:
            return self._reserve(conv_id, reservation_id, amount, budget, ttl_ms, self._now())

    async def settle(self, conv_id: str, reservation_id: str, actual: float) -> bool:
        actual = check_amount(actual, "actual")
        with self._lock:
            return self._settle(conv_id, reservation_id, actual, self._now())

    async def release(self, conv_id: str, reservation_id: str) -> bool:
        with self._lock:
            return self._release(conv_id, reservation_id, self._now())

    async def spent(self, conv_id: str) -> float:
        with self._lock:
            return self._spent(conv_id, self._now())

    async def reserved(self, conv_id: str) -> float:
        with self._lock:
            now = self._now()
            b = self._budgets.get(conv_id)
            if b is None or b.expires <= now:
                return 0.0
            b.prune(now)
            return b.reserved()

    # ------------------------------------------------------------------ a turn's two steps
    async def begin_turn(self, conv_id: str, lease_ttl_ms: int, budget_conv_id: str | None = None,
                         known: bytes | None = None, reservation: Reservation | None = None) -> TurnStart:
        check_ttl(lease_ttl_ms, "lease_ttl_ms")
        res = check_reservation(reservation, budget_conv_id)
        with self._lock:
            now = self._now()
            lease = self._acquire(conv_id, lease_ttl_ms, now)
            if lease is None:
                return TurnStart(None, None, 0.0)
            spent = 0.0 if budget_conv_id is None else self._spent(budget_conv_id, now)
            got = self._get(conv_id, now)
            same = bool(known) and got is not None and got.data.startswith(known)
            if same and res is not None and spent > res.seen_spent + EPS_USD:
                same = False  # a settle the caller's decision did not see: it syncs and decides again
            if not same:
                return TurnStart(lease, got, spent)
            reserved = None if res is None else self._reserve(budget_conv_id, res.id, res.amount, res.budget,
                                                              res.ttl_ms, now)
            return TurnStart(lease, None, spent, True, reserved)

    async def end_turn(self, lease: Lease, state: tuple[str, bytes, int, str | None] | None = None,
                       settle: tuple[str, str, float] | None = None,
                       releases: list[tuple[str, str]] = ()) -> tuple[bool, bool]:
        if state is not None:
            check_ttl(state[2])
        if settle is not None:
            settle = (settle[0], settle[1], check_amount(settle[2], "actual"))
        with self._lock:
            now = self._now()
            settled = settle is not None and self._settle(*settle, now)  # billed even if the lease was lost
            for bid, rid in releases:
                self._release(bid, rid, now)
            put = state is not None and self._live_lease(lease.conv_id, now) == lease.token
            if put:
                self._put(*state, now)
            self._release_lease(lease, now)
            return put, settled

    # ------------------------------------------------------------------ finished episodes
    async def finish_once(self, conv_id: str, episode_json: bytes, state_of: str | None = None) -> bool:
        with self._lock:
            now = self._now()
            dl = self._finished.get(conv_id)
            if dl is not None and dl > now:
                return False
            self._finished[conv_id] = now + self.finished_ttl
            eid = f"{next(self._entry)}-0"
            self._stream[eid] = Finished(eid, conv_id, bytes(episode_json))
            self._states.pop(conv_id if state_of is None else state_of, None)
            self._tick(now)
            return True

    async def drain_finished(self, count: int = 100) -> list[Finished]:
        with self._lock:
            return list(itertools.islice(self._stream.values(), count))

    async def ack_finished(self, entry_ids: list[str]) -> None:
        with self._lock:
            for eid in entry_ids:
                self._stream.pop(eid, None)

    # ------------------------------------------------------------------ fleet control
    async def publish_control(self, data: bytes) -> int:
        with self._lock:
            seq = (self._control[0] if self._control else 0) + 1
            self._control = (seq, bytes(data))
            return seq

    async def get_control(self) -> tuple[int, bytes] | None:
        with self._lock:
            return self._control

    # ------------------------------------------------------------------ lifecycle
    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


__all__ = ["MemoryStore"]
