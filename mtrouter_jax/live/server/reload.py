"""Checkpoints swapped without a restart (issue 19): ``POST /v1/mtrouter/admin/reload`` and SIGHUP.

A reload builds a new ``Router`` from a checkpoint (the one given, else the one served, read again)
in a worker thread — ``load_checkpoint`` verifies every file and array against the digests sealed
with it, so a damaged or half-written checkpoint is refused and the served one stays — checks it
routes over the same pool, and swaps it in for **new** conversations. A conversation keeps the
router (and checkpoint) it started with until it ends: in-flight requests and streams are never
interrupted, and the log's episode ``meta.checkpoint`` is the digest it was routed with. Routers
stay known by digest (``Proxy.routers``), so with ``--state`` a conversation started elsewhere on
a checkpoint this replica has also loaded continues here. A reload swaps the *control*: the
``--canary`` candidate (``arms.py``) keeps its share of new conversations and is never evicted.
With ``--state``, a reload is published to the other replicas, which load it too (``control.py``).

The digest of a checkpoint is the sha256 of its integrity manifest (which holds the sha256 of
every file), the first 16 hex digits; ``None`` for a router without a checkpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import anyio

from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server.heap import refreeze_heap
from mtrouter_jax.live.server.api import ApiError
from mtrouter_jax.live.store import StoreUnavailable

if TYPE_CHECKING:
    from mtrouter_jax.live.server.proxy import Proxy

log = logging.getLogger("mtrouter_jax.live")
KEEP_ROUTERS = 8  # routers kept by digest for conversations that started on them


def checkpoint_digest(path: str | Path | None) -> str | None:
    """Short sha256 of a checkpoint's integrity manifest (else of its metadata file); None without one."""
    if path is None or not str(path):
        return None
    p = Path(path)
    for name in ("integrity.json", "meta.json"):
        f = p / name
        if f.is_file():
            return hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:16]


def stamp(router: Router) -> Router:
    """Give ``router`` its ``digest`` (and ``checkpoint_path``) attributes, once."""
    if not hasattr(router, "digest"):
        path = getattr(router.estimator, "path", None) if router.estimator is not None else None
        router.checkpoint_path = None if path is None else str(path)
        router.digest = checkpoint_digest(path)
    return router


def default_builder(current: Router) -> Callable[[str], Router]:
    """A new router like ``current`` (pool, log, exploration, seed, text logging) on another checkpoint."""
    def build(path: str) -> Router:
        return Router.from_checkpoint(path, pool=current.pool, log_path=current.log_path,
                                      explore=current.explore_spec, seed=current.seed, log_text=current.log_text,
                                      assume_cache_hits=current.assume_cache_hits)
    return build


class Reloader:
    """Loads, verifies and swaps the proxy's router (one reload at a time)."""

    def __init__(self, proxy: "Proxy", build: Callable[[str], Router] | None = None):
        self.proxy = proxy
        self.build = build or default_builder(proxy.router)
        self.lock = asyncio.Lock()
        self.count = 0
        self.fleet = None  # FleetReloads (control.py) when replicas share a store

    async def load(self, path: str) -> Router:
        """A router on the checkpoint at ``path`` (verified on load), not served to new conversations."""
        return stamp(await anyio.to_thread.run_sync(self.build, str(path)))

    async def reload(self, path: str | None = None, publish: bool = True) -> dict:
        """Swap in the checkpoint at ``path`` (default: the served one, read again); 400 if it cannot be
        used (the served checkpoint stays). ``publish``: tell the other replicas (with ``--state``)."""
        from mtrouter_jax.estimator.integrity import CheckpointError

        old = self.proxy.router
        path = path or getattr(old, "checkpoint_path", None)
        if not path:
            raise ApiError(400, "reload: this proxy routes without a checkpoint; send {\"checkpoint\": PATH}",
                           param="checkpoint", code="no_checkpoint")
        async with self.lock:
            try:
                new = await self.load(path)
            except (CheckpointError, OSError, ValueError, KeyError) as e:
                log.error("reload of %s refused: %s", path, e)
                raise ApiError(400, f"reload: checkpoint {path} cannot be used ({type(e).__name__}: {e}); the "
                                    f"served checkpoint {old.digest} stays", param="checkpoint",
                               code="checkpoint_invalid") from None
            if tuple(new.pool.names) != tuple(old.pool.names):
                raise ApiError(400, f"reload: checkpoint {path} routes over {list(new.pool.names)}, the proxy over "
                                    f"{list(old.pool.names)}; restart to change the pool", param="checkpoint",
                               code="pool_mismatch")
            p = self.proxy
            p.routers[new.digest] = new
            keep = {new.digest, *p.arms.pinned()}  # never the served one, nor the --canary candidate
            while len(p.routers) > KEEP_ROUTERS:  # the oldest go
                victims = [k for k in p.routers if k not in keep]
                if not victims:
                    break
                p.routers.pop(victims[0])
            p.router = p.store.router = new  # new conversations start on it; open ones keep theirs
            self.count += 1
        log.info("reloaded: new conversations route with checkpoint %s (%s); open ones keep %s", new.digest, path,
                 old.digest)
        refreeze_heap()  # (the load's own objects join the frozen heap; replaced routers' cycles go)
        out = {"checkpoint": str(path), "digest": new.digest, "previous": old.digest, "policy": new.policy.spec,
               "reloads": self.count}
        if publish and self.fleet is not None:
            try:  # served here already: a store outage leaves the others on their checkpoint, said so
                out["fleet"] = {"published": await self.fleet.publish(str(path), new.digest)}
            except StoreUnavailable as e:
                log.error("reload not published to the other replicas: %s", e)
                out["fleet"] = {"published": None, "error": str(e)}
        return out


__all__ = ["Reloader", "checkpoint_digest", "stamp", "default_builder", "KEEP_ROUTERS"]
