"""One reload reaches every replica (issue 19): checkpoint reloads published through the shared store.

With ``--state``, a replica that reloads (``POST /v1/mtrouter/admin/reload`` or SIGHUP) publishes
``{checkpoint, digest, replica}`` as the fleet's control record (``StateStore.publish_control``,
one sequence number per publication). Every replica polls the record (every ``POLL_S``) and, when
a newer one names a checkpoint it does not serve, reloads that path itself — through the same
``Reloader``, so it is verified the same way, and a checkpoint this replica cannot read (not on a
shared disk, damaged, another pool) is refused *here* with a logged error while the others serve
it. A replica that starts after a reload adopts the last published checkpoint over its own
``--checkpoint`` (logged): the latest reload wins across the fleet, restarts included.

Consistency: eventual, within one poll interval plus the load time; until then, new conversations
on a replica that has not caught up start on the previous checkpoint (each conversation records
its digest and keeps it wherever its turns run, ``Proxy.router_for``). Two reloads at once on two
replicas converge on the one published last.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING

from mtrouter_jax.live.server.api import ApiError
from mtrouter_jax.live.store import StoreUnavailable

if TYPE_CHECKING:
    from mtrouter_jax.live.server.reload import Reloader
    from mtrouter_jax.live.store import StateStore

log = logging.getLogger("mtrouter_jax.live")
POLL_S = 1.0  # how stale a replica's checkpoint may be after a reload elsewhere (plus the load)


class FleetReloads:
    """Publishes this replica's reloads and applies the other replicas' (``run`` polls)."""

    def __init__(self, state: "StateStore", reloader: "Reloader", poll_s: float = POLL_S):
        if not poll_s > 0:
            raise ValueError(f"reload poll interval must be > 0 seconds, got {poll_s!r}")
        self.state, self.reloader, self.poll_s = state, reloader, float(poll_s)
        self.replica = uuid.uuid4().hex[:12]  # names this process in the control record
        self.seen = 0  # the newest sequence number acted on (or published) here
        self.adopted = 0  # reloads applied from other replicas
        self._down = False

    async def publish(self, path: str, digest: str | None) -> int:
        """Tell the fleet that this replica now serves ``path`` (digest ``digest``)."""
        record = {"checkpoint": str(path), "digest": digest, "replica": self.replica, "at": time.time()}
        seq = await self.state.publish_control(json.dumps(record).encode())
        self.seen = max(self.seen, seq)
        return seq

    async def poll_once(self) -> dict | None:
        """Apply a newer control record if it names another checkpoint; the reload's result, else None."""
        got = await self.state.get_control()
        if got is None or got[0] <= self.seen:
            return None
        seq, raw = got
        self.seen = seq
        try:
            record = json.loads(raw)
            path, digest, who = str(record["checkpoint"]), record["digest"], record["replica"]
        except (ValueError, KeyError, TypeError) as e:
            log.error("fleet control record #%d is malformed (%s: %s); ignored", seq, type(e).__name__, e)
            return None
        served = self.reloader.proxy.router.digest
        if who == self.replica or digest == served:
            return None
        try:
            out = await self.reloader.reload(path, publish=False)
        except ApiError as e:
            log.error("fleet reload #%d from replica %s refused here, this replica keeps checkpoint %s: %s",
                      seq, who, served, e.message)
            return None
        if out["digest"] != digest:  # the files changed between the two loads
            log.warning("fleet reload #%d: %s has digest %s here, %s on replica %s", seq, path, out["digest"],
                        digest, who)
        self.adopted += 1
        log.info("fleet reload #%d from replica %s: new conversations here route with checkpoint %s (%s)",
                 seq, who, out["digest"], path)
        return out

    async def run(self) -> None:
        """Poll forever (the app's lifespan cancels it); an unreachable store is logged once per outage."""
        while True:
            try:
                await self.poll_once()
                if self._down:
                    log.info("state store reachable again: fleet reloads resume")
                    self._down = False
            except StoreUnavailable as e:
                if not self._down:
                    log.warning("fleet reloads paused: %s", e)
                    self._down = True
            await asyncio.sleep(self.poll_s)

    def describe(self) -> dict:
        return {"replica": self.replica, "control_seq": self.seen, "adopted_reloads": self.adopted}


__all__ = ["FleetReloads", "POLL_S"]
