"""The server's startup heap is frozen out of the garbage collector (live/server/heap.py)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import gc, weakref
from mtrouter_jax.live.server.heap import freeze_heap, refreeze_heap
refreeze_heap()
assert gc.get_freeze_count() == 0, "refreeze of a heap never frozen must leave it alone"
class Node: pass
a = Node(); a.me = a  # a cycle: only the cyclic collector frees it
ref = weakref.ref(a)
n = freeze_heap()
assert n > 0 and gc.get_freeze_count() == n
del a
gc.collect()
assert ref() is not None, "a frozen cycle is not collected"
refreeze_heap()
assert ref() is None, "refreeze collects the cycles dropped since (a reload's replaced router)"
assert gc.get_freeze_count() > 0
print("OK")
"""


def test_freeze_and_refreeze_in_a_fresh_interpreter():
    # (a subprocess: freezing this test process's heap would keep other tests' garbage)
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK"
