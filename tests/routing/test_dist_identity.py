"""jit caches are keyed by a policy's ``dist`` function: building a router twice must give the same one."""

from __future__ import annotations

import pytest

from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.routing.specs import build_router, with_exploration

TOOLS = ("search", "python", "reasoning", "answer")
SPECS = ["fixed:gpt-5", "cheapest", "tool-heuristic", "error-escalation", "uniform", "sticky:0.9"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("explore", [None, "eps:0.2", "beta:0.5", "sticky:0.8"])
def test_same_spec_same_dist_function(spec, explore):
    pool = default_pool()
    a = with_exploration(build_router(spec, pool, TOOLS), explore)
    b = with_exploration(build_router(spec, pool, TOOLS), explore)
    # a closure built per call would be a new cache key: one recompile per decision or sweep
    assert a.dist is b.dist
    assert "<locals>" not in a.dist.__qualname__ or a.dist.__qualname__.startswith("_explore_dist_for")
