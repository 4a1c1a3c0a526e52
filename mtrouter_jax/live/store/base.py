"""The state a proxy replica shares with the others (issue 19): the contract both backends keep.

A ``StateStore`` holds, per conversation id:

* its **state**: the serialised live episode (JSON bytes, opaque here) and its owner tenant, kept
  ``ttl_ms`` after the last ``put`` (the proxy's idle timeout);
* a **lease** (``acquire_lease``/``renew``/``release_lease``): at most one holder at a time, each
  grant with a *fencing token* larger than every earlier grant's, so a holder that stalled past its
  lease (a replica paused or killed mid-turn) is told so (``renew`` False, fenced ``put`` False)
  instead of overwriting the newer holder's state;
* its **budget**: ``spent`` plus open reservations. ``reserve`` admits a call's worst-case cost only
  if ``spent + reserved + amount <= budget`` (atomically, across replicas), ``settle`` replaces the
  reservation by the actual cost, ``release`` drops it (the call failed, nothing billed). A
  reservation nobody settles (its replica died) expires after ``ttl_ms`` instead of holding budget
  forever. Reservation ids are the caller's, so every step is idempotent: reserving an id twice
  holds it once, settling twice bills once, and a late settle after expiry still bills (the money
  was spent);
* its **finish**: ``finish_once`` records a finished episode exactly once (a second call, from any
  replica, returns False) and drops the state; one log writer reads the finished episodes with
  ``drain_finished`` and acknowledges them with ``ack_finished`` once they are durable.

and, for the whole fleet, one **control record** (``publish_control``/``get_control``): the last
checkpoint reload any replica made, with a sequence number that grows with every publication, so
one reload reaches every replica (``server/control.py``).

A proxied turn takes two steps, each one atomic operation (one round trip on Redis) composing the
single-step methods with their exact semantics: ``begin_turn`` (``acquire_lease``, then ``get`` and
``spent``, and the first attempt's ``reserve`` when the caller's copy of the state is current) and
``end_turn`` (``settle``, ``release`` of the other attempts, fenced ``put``, ``release_lease``).
The reservation's amount depends on the routing decision, which needs the state: a replica that
wrote the last version decides on its own copy first and sends the reservation with ``known`` (the
first bytes of that version); the store reserves only if the stored state still starts with them
and the spend has not moved, else the caller syncs, decides again and reserves in a third step.

Every method raises ``StoreUnavailable`` when the backend cannot be reached (the proxy answers 503;
no silent fallback to per-replica state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

EPS_USD = 1e-12  # float slack in budget comparisons (as in live/episode.py)
DEFAULT_RESERVATION_TTL_MS = 120_000  # longer than any upstream call the proxy waits for
DEFAULT_BUDGET_TTL_MS = 7 * 24 * 3600 * 1000  # spent counters idle this long are dropped
DEFAULT_FINISHED_TTL_MS = 7 * 24 * 3600 * 1000  # how long a finish marker refuses a second finish


class StoreUnavailable(RuntimeError):
    """The state store cannot be reached (or did not answer in time): answer 503, retry later."""


@dataclass(frozen=True)
class Lease:
    """A granted lease: ``token`` is the fencing token (larger than every earlier grant's)."""

    conv_id: str
    token: int


@dataclass(frozen=True)
class StoredState:
    """A conversation's serialised state and the tenant that owns it (None: no tenancy)."""

    data: bytes
    owner: str | None


@dataclass(frozen=True)
class Reservation:
    """``begin_turn``'s reservation: ``reserve(budget conv id, id, amount, budget, ttl_ms)``, made only
    if the budget's spend is still at most ``seen_spent`` (the decision saw it)."""

    id: str
    amount: float
    budget: float | None
    seen_spent: float
    ttl_ms: int = DEFAULT_RESERVATION_TTL_MS


class TurnStart(NamedTuple):
    """What ``begin_turn`` found. ``lease`` None: held by another (nothing else read). ``same``: the
    stored state starts with the caller's ``known`` bytes (and, with a reservation, the spend is at
    most its ``seen_spent``): then ``state`` is None (not sent back). ``reserved``: the
    reservation's outcome, None where it was not attempted (no lease, not ``same``, none asked)."""

    lease: Lease | None
    state: StoredState | None
    spent: float
    same: bool = False
    reserved: bool | None = None


@dataclass(frozen=True)
class Finished:
    """One finished episode in the stream (``entry_id`` is what ``ack_finished`` takes)."""

    entry_id: str
    conv_id: str
    episode: bytes


@runtime_checkable
class StateStore(Protocol):
    """What the proxy needs from shared state (``store/memory.py``, ``store/redis.py``)."""

    # ---- conversation state
    async def get(self, conv_id: str) -> StoredState | None: ...

    async def put(self, conv_id: str, data: bytes, ttl_ms: int, owner: str | None = None,
                  token: int | None = None) -> bool:
        """Store the state for ``ttl_ms``; with ``token``, only while that lease is still held
        (False: the lease was lost, nothing written)."""

    async def delete(self, conv_id: str) -> None: ...

    # ---- lease
    async def acquire_lease(self, conv_id: str, ttl_ms: int) -> Lease | None:
        """A new lease, or None while another holder's lease is live."""

    async def renew(self, lease: Lease, ttl_ms: int) -> bool:
        """Extend ``lease`` by ``ttl_ms``; False when it expired or another holder has it."""

    async def release_lease(self, lease: Lease) -> bool:
        """Drop ``lease`` if it is still the live one (False: it was not)."""

    # ---- budget
    async def reserve(self, conv_id: str, reservation_id: str, amount: float, budget: float | None,
                      ttl_ms: int = DEFAULT_RESERVATION_TTL_MS) -> bool:
        """Hold ``amount`` USD if spent + reserved + amount <= budget (None: no limit); False
        refuses (nothing held). Reserving a live id again is True and holds it once; an id already
        settled or released is refused."""

    async def settle(self, conv_id: str, reservation_id: str, actual: float) -> bool:
        """Bill ``actual`` USD in place of the reservation; False (nothing billed) when the id was
        already settled or released."""

    async def release(self, conv_id: str, reservation_id: str) -> bool:
        """Drop the reservation (the call failed); False when it was not held."""

    async def spent(self, conv_id: str) -> float: ...

    async def reserved(self, conv_id: str) -> float:
        """USD held by live (unexpired) reservations."""

    # ---- a turn's two steps
    async def begin_turn(self, conv_id: str, lease_ttl_ms: int, budget_conv_id: str | None = None,
                         known: bytes | None = None, reservation: Reservation | None = None) -> TurnStart:
        """In one step: ``acquire_lease(conv_id, lease_ttl_ms)`` and, when it is granted, the stored
        state (as ``get``; not sent back when it starts with ``known``) and ``spent(budget_conv_id)``
        (0.0 for None); then, only if the state is ``same`` (see ``TurnStart``), ``reservation`` on
        ``budget_conv_id``'s budget. While another holder's lease is live: ``TurnStart(None, None,
        0.0)``, no fencing token burnt, nothing reserved."""

    async def end_turn(self, lease: Lease, state: tuple[str, bytes, int, str | None] | None = None,
                       settle: tuple[str, str, float] | None = None,
                       releases: list[tuple[str, str]] = ()) -> tuple[bool, bool]:
        """In one step: ``settle(*settle)`` (billed even when the lease was lost: the money was
        spent), ``release(*r)`` for each of ``releases``, ``put(*state)`` only while ``lease`` is
        held (fenced by ``lease``; ``state`` is normally its conversation's), then
        ``release_lease(lease)``. ``state``: (conv_id, data, ttl_ms, owner); ``settle``: (budget
        conv_id, reservation_id, actual USD); ``releases``: (budget conv_id, reservation_id) pairs.
        Returns (state written, settle billed), each False when not asked for."""

    # ---- finished episodes
    async def finish_once(self, conv_id: str, episode_json: bytes, state_of: str | None = None) -> bool:
        """Queue the finished episode and drop the state, exactly once: False if already done.
        ``state_of``: the id whose state to drop when it is not ``conv_id`` (the proxy marks each
        *episode* finished once, and keeps state per conversation, which outlives its episodes)."""

    async def drain_finished(self, count: int = 100) -> list[Finished]:
        """The oldest unacknowledged finished episodes (for the single log writer)."""

    async def ack_finished(self, entry_ids: list[str]) -> None:
        """Forget entries the writer has made durable (unacknowledged ones come back)."""

    # ---- fleet control (checkpoint reloads)
    async def publish_control(self, data: bytes) -> int:
        """Replace the fleet's control record by ``data``; its sequence number (> every earlier one)."""

    async def get_control(self) -> tuple[int, bytes] | None:
        """The latest control record and its sequence number; None before the first publication."""

    # ---- lifecycle
    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the backend answers."""

    async def close(self) -> None: ...


def check_amount(amount: float, what: str = "amount") -> float:
    """A finite USD amount >= 0 (reservations and settlements), else ValueError."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount >= 0 \
            or amount == float("inf"):
        raise ValueError(f"{what} must be a finite number >= 0 USD, got {amount!r}")
    return float(amount)


def check_ttl(ttl_ms: int, what: str = "ttl_ms") -> int:
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or ttl_ms <= 0:
        raise ValueError(f"{what} must be an integer > 0 milliseconds, got {ttl_ms!r}")
    return ttl_ms


def check_budget(budget: float | None) -> float | None:
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < float("inf"):
        raise ValueError(f"budget must be a finite number > 0 USD (or None), got {budget!r}")
    return float(budget)


def check_reservation(res: Reservation | None, budget_conv_id: str | None) -> Reservation | None:
    """``begin_turn``'s reservation with its numbers checked (ValueError), or None."""
    if res is None:
        return None
    if budget_conv_id is None:
        raise ValueError("begin_turn: a reservation needs budget_conv_id (whose budget it holds)")
    check_ttl(res.ttl_ms)
    return Reservation(res.id, check_amount(res.amount), check_budget(res.budget),
                       check_amount(res.seen_spent, "seen_spent"), res.ttl_ms)


__all__ = ["StateStore", "StoreUnavailable", "Lease", "StoredState", "Finished", "EPS_USD",
           "DEFAULT_RESERVATION_TTL_MS", "DEFAULT_BUDGET_TTL_MS", "DEFAULT_FINISHED_TTL_MS",
           "Reservation", "TurnStart", "check_amount", "check_ttl", "check_budget",
           "check_reservation"]
