"""The one log writer of proxy replicas on a shared store (issue 19): finished episodes, each once.

A finish on any replica commits the episode with ``store.finish_once`` (exactly once across
replicas: the commit point). Every replica started with ``--log`` runs a ``LogWriter``; one at a
time holds the writer lease and drains the store's finished stream into its log (one ``write``
under ``flock`` + ``fsync``, ``logs.append_lines``), acknowledging entries only once they are on
disk. Each entry is the episode's log line as the finishing replica validated and encoded it
(``logs.episode_line``), so the writer only appends bytes. Entries whose episode id the log
already holds (a writer that died between its write and its acknowledgement) are acknowledged
without a second write: the ids are read from the log file itself, incrementally, each time the
lease is taken, so replicas sharing one log file never duplicate a line. Point every replica's
``--log`` at the same file (or give ``--log`` to one replica only): with different files, each
holds a share of the episodes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import anyio

from mtrouter_jax.logs.io import append_lines
from mtrouter_jax.live.store import StateStore, StoreUnavailable

log = logging.getLogger("mtrouter_jax.live")
WRITER_KEY = "w:log-writer"
# how long a dead writer holds the log back: another replica drains once its lease expires; renewed
# after every batch, so it only needs to outlast one batch's write + fsync
WRITER_LEASE_MS = 10_000
_ID = re.compile(rb'"episode_id":\s*("(?:[^"\\]|\\.)*")')


def _episode_id(line: bytes) -> str | None:
    """The episode id of a log line (its second key: ``{"schema":..,"episode_id":..``), or None."""
    m = _ID.search(line, 0, 4096)
    if m is None:
        return None
    try:
        return json.loads(m.group(1))
    except ValueError:
        return None


class LogWriter:
    """Drains ``store``'s finished episodes into ``path`` while holding the writer lease."""

    def __init__(self, store: StateStore, path: str | Path, every_s: float = 0.2, lease_ms: int = WRITER_LEASE_MS,
                 batch: int = 200):
        self.store, self.path, self.every_s, self.lease_ms, self.batch = store, Path(path), every_s, lease_ms, batch
        self.seen: set[str] = set()
        self._offset = 0
        self._wake = asyncio.Event()
        self.written = 0

    def wake(self) -> None:
        """Drain soon (a finish on this replica just committed an episode)."""
        self._wake.set()

    def _read_ids(self) -> None:
        """Episode ids the log gained since the last read (other writers' lines included)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # a partial last line is read again next time
        for line in data[:end].splitlines():
            eid = _episode_id(line)
            if eid is not None:
                self.seen.add(eid)
        self._offset += end

    async def drain_once(self) -> int:
        """Write what is waiting, if this replica gets the writer lease; returns episodes written."""
        lease = await self.store.acquire_lease(WRITER_KEY, self.lease_ms)
        if lease is None:
            return 0
        n = 0
        try:
            await anyio.to_thread.run_sync(self._read_ids)
            while True:
                rows = await self.store.drain_finished(self.batch)
                if not rows:
                    break
                lines, ids = [], []
                for row in rows:  # each entry is its log line, validated by the replica that finished it
                    eid = _episode_id(row.episode)
                    if eid is None:  # (a bad entry must not block the others)
                        log.error("finished episode %s in the store is unreadable (no episode id): dropped",
                                  row.conv_id)
                        continue
                    if eid not in self.seen and eid not in ids:
                        lines.append(bytes(row.episode).rstrip(b"\n") + b"\n")
                        ids.append(eid)
                if lines:
                    await anyio.to_thread.run_sync(append_lines, self.path, b"".join(lines))
                    self.seen.update(ids)
                    n += len(lines)
                await self.store.ack_finished([row.entry_id for row in rows])
                if not await self.store.renew(lease, self.lease_ms):
                    break
        finally:
            try:
                await self.store.release_lease(lease)
            except StoreUnavailable:
                pass
        self.written += n
        return n

    async def run(self) -> None:
        """Drain every ``every_s`` (sooner when woken) until cancelled."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.every_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.drain_once()
            except StoreUnavailable as e:
                log.warning("log writer: %s (retrying)", e)
                await asyncio.sleep(1.0)
            except OSError as e:
                log.error("log writer: could not append to %s (%s): the episodes stay in the store, retrying",
                          self.path, e)
                await asyncio.sleep(1.0)


__all__ = ["LogWriter", "WRITER_KEY", "WRITER_LEASE_MS"]
