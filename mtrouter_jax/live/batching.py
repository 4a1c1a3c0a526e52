"""Decisions of concurrent conversations evaluated together: one jitted call for many (issue 19).

A single decision's jitted call costs about twice its arithmetic: dispatch, argument handling and
a cache the other requests have cooled. Under load many conversations reach their decision in the
same turn of the event loop, so the proxy queues them (``DecisionBatcher.decide``) and evaluates
the queue once the loop has run every ready callback (``call_soon``: no timer, no added wait when
only one is queued). Each group of rows with the same router, policy and kernel is cut into chunks
of ``kernel.BATCH_SIZES`` and a single remainder, which takes the one-decision kernel.

A batch size is compiled (~2.5 s of CPU each) in one background thread the first time a batch
that large is seen; until then its rows are evaluated one at a time, so the event loop never
waits on a compilation and a server that never sees concurrent decisions never compiles one.

The outputs are bit-for-bit those of ``LiveEpisode.decide`` (``kernel.batch_kernel`` runs the
same traced function row by row), so a conversation's decisions, draws and logged propensities
do not depend on what else was in flight. Fallback re-decisions (models excluded after a failure)
and episodes without a fused kernel are evaluated on their own, as before.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mtrouter_jax.live.episode import LiveEpisode
from mtrouter_jax.live.kernel import BATCH_SIZES, batch_kernel, stack_rows
from mtrouter_jax.live.turns import Decision

log = logging.getLogger("mtrouter_jax.live")
_COMPILER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtrouter-batch-compile")  # one at a time


def chunk_sizes(n: int, sizes: tuple[int, ...] = BATCH_SIZES) -> list[int]:
    """``n`` rows cut greedily into the compiled batch sizes (largest first), then single rows."""
    out = []
    for s in sorted(sizes, reverse=True):
        while n >= s:
            out.append(s)
            n -= s
    return out + [1] * n


def batch_group(ep: LiveEpisode) -> tuple | None:
    """(key, batch kernel, shared arguments) under which ``ep``'s decisions batch with others'
    (same router, policy and kernel), or None (no fused kernel: the host path)."""
    if ep._kernel is None:
        return None
    r = ep.router
    # (ids, not the objects: the batcher's ``compiled`` set must not keep a reloaded-away router
    # alive; an id reused by a later router at worst makes one batch compile inline)
    return ((id(ep._kernel), id(ep.policy), id(r)), batch_kernel(*ep._kernel_key, len(r.pool)), ep.kernel_shared())


class DecisionBatcher:
    """Queue of prepared decisions evaluated together on the running event loop."""

    def __init__(self, sizes: tuple[int, ...] = BATCH_SIZES, background: bool = True):
        self.sizes = tuple(s for s in sizes if s > 1)
        self.background = background  # False: compile on the event loop, before evaluating (tests)
        self.queue: list[tuple] = []  # (group key, kernel, shared args, episode, prepared decision, future)
        self.scheduled = False
        self.calls: Counter = Counter()  # rows per evaluation -> how many evaluations (benchmarks, tests)
        self.compiled: set = set()  # (group key, size) whose batch kernel is compiled
        self.failed: set = set()  # ... whose compilation failed (not retried: those rows stay single)
        self._compiling: set = set()
        # each episode's group, looked up once (the kernel cache hashes its whole key on every lookup)
        self._groups: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def describe(self) -> dict:
        """Batch sizes, those compiled and compiling, and evaluations by rows (``/v1/mtrouter/router``)."""
        return {"sizes": list(self.sizes), "compiled": sorted({s for _, s in self.compiled}),
                "compiling": sorted({s for k, s in self._compiling - self.compiled - self.failed}),
                "failed": sorted({s for _, s in self.failed}),
                "evaluations_by_rows": {str(k): v for k, v in sorted(self.calls.items())}}

    async def decide(self, ep: LiveEpisode, **kwargs) -> Decision:
        """``ep.decide(**kwargs)``, evaluated with the other decisions queued in this loop turn."""
        prep = ep.prepare_decision(**kwargs)  # the budget rule runs here (BudgetExhausted as usual)
        group = None
        if not prep.exclude:
            group = self._groups.get(ep, False)
            if group is False:
                group = self._groups[ep] = batch_group(ep)
        if group is None:
            self.calls[1] += 1
            return ep.complete_decision(prep, ep.evaluate(prep))
        key, kernel, shared = group
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.queue.append((key, kernel, shared, ep, prep, fut))  # (rows packed at the flush, for chunks only)
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self._flush)
        return ep.complete_decision(prep, await fut)

    def _flush(self) -> None:
        self.scheduled = False
        queue, self.queue = self.queue, []
        groups: dict = {}
        for item in queue:
            if not item[-1].done():  # (a cancelled request: nothing to evaluate)
                groups.setdefault(item[0], []).append(item)
        for key, items in groups.items():
            for s in self.sizes:
                if s <= len(items) and (key, s) not in self._compiling:  # (once: compiled, failed or under way)
                    self._compile(key, s, items[0])
            ready = tuple(s for s in self.sizes if (key, s) in self.compiled)
            start = 0
            for size in chunk_sizes(len(items), ready):
                self._evaluate(items[start:start + size])
                start += size

    def _compile(self, key, size: int, item) -> None:
        """Compile the batch kernel for ``size`` rows in the background (on a copy of one row)."""
        self._compiling.add((key, size))
        _, kernel, shared, ep, prep, _ = item
        row = ep.decision_row(prep)

        def work():
            try:
                kernel(*shared, stack_rows((row,) * size)).block_until_ready()
                self.compiled.add((key, size))
            except Exception:  # the rows keep the single kernel
                self.failed.add((key, size))
                log.exception("could not compile the decision batch kernel for %d rows", size)

        if self.background:
            _COMPILER.submit(work)
        else:
            work()

    def _evaluate(self, items: list) -> None:
        self.calls[len(items)] += 1
        try:
            if len(items) == 1:
                _, _, _, ep, prep, fut = items[0]
                evaluated = ep.evaluate(prep)
                if not fut.done():
                    fut.set_result(evaluated)
                return
            _, kernel, shared, *_ = items[0]
            out = np.asarray(kernel(*shared, stack_rows([it[3].decision_row(it[4]) for it in items])))
            for i, (_, _, _, ep, _, fut) in enumerate(items):
                if not fut.done():
                    fut.set_result(ep.unpack(out[i]))
        except Exception as e:  # each waiting request raises it (the proxy answers 500 and logs it)
            for it in items:
                if not it[-1].done():
                    it[-1].set_exception(e)


__all__ = ["DecisionBatcher", "chunk_sizes", "batch_group"]
