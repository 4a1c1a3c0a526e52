"""The server's startup heap kept out of the cyclic garbage collector's way (``gc.freeze``).

A loaded checkpoint, JAX, its compiled kernels and the imported libraries are hundreds of
thousands of long-lived objects. CPython's full (generation-2) collections traverse all of them:
~0.2 s of CPU each, several times a minute under load — measured at 0.13 ms a request in the
proxy (docs/benchmarks.md, issue 19). Freezing the heap once the server is built moves those
objects to the permanent generation, which collections skip; what requests allocate is collected
as before. After a checkpoint reload the heap is unfrozen, collected once (the replaced router's
cycles are freed) and frozen again.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("mtrouter_jax.live")


def freeze_heap() -> int:
    """Collect, then freeze every object alive now; returns how many were frozen."""
    gc.collect()
    gc.freeze()
    n = gc.get_freeze_count()
    log.debug("froze %d startup objects out of the garbage collector's generations", n)
    return n


def refreeze_heap() -> None:
    """After a reload: unfreeze, collect once, freeze again (only when the heap was frozen: a server
    embedded in a program that never froze it is left alone)."""
    if gc.get_freeze_count():
        gc.unfreeze()
        freeze_heap()


__all__ = ["freeze_heap", "refreeze_heap"]
