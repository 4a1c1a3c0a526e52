"""State shared by proxy replicas (issue 19): conversations, leases, budgets, finished episodes.

``base`` is the contract (``StateStore``, ``Lease``, ``StoreUnavailable``), ``memory`` the
in-process default, ``redis`` the shared backend (needs the ``redis`` client, in the ``[live]``
extra; imported only when a ``redis://`` URL is opened). ``open_store(url)`` picks one.
"""

from __future__ import annotations

from mtrouter_jax.core.errors import UsageError
from mtrouter_jax.live.store.base import (Finished, Lease, Reservation, StateStore, StoredState,
                                          StoreUnavailable, TurnStart)
from mtrouter_jax.live.store.memory import MemoryStore


def open_store(url: str | None = None, **kwargs) -> StateStore:
    """The store for ``--state``: None or ``memory`` -> ``MemoryStore``; ``redis://HOST:PORT/DB``
    (``rediss://``, ``unix://``) -> ``RedisStore`` (its kwargs: ``prefix``, ``timeout_s``, ...)."""
    if url is None or url == "memory":
        return MemoryStore(**kwargs)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise UsageError(f"--state: expected memory or redis://HOST:PORT/DB, got {url.split('@')[-1]!r}")
    try:
        from mtrouter_jax.live.store.redis import RedisStore
    except ImportError as e:  # the redis client is in the [live] extra
        raise UsageError(f"--state {url.split('@')[-1]!r} needs the redis client: "
                         "pip install 'mtrouter-jax[live]'") from e
    return RedisStore(url, **kwargs)


__all__ = ["StateStore", "StoredState", "Lease", "Finished", "StoreUnavailable", "MemoryStore", "Reservation", "TurnStart",
           "open_store"]
