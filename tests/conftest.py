"""Shared test setup: a persistent XLA compilation cache (roughly halves suite time on CPU)."""

import os
from pathlib import Path

import jax
import pytest

_cache = Path(os.environ.get("MTROUTER_TEST_JAX_CACHE", Path.home() / ".cache" / "mtrouter-jax-tests"))
_cache.mkdir(parents=True, exist_ok=True)
jax.config.update("jax_compilation_cache_dir", str(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def pool():
    """The embedded default pool."""
    from mtrouter_jax.core.pool import default_pool

    return default_pool()


@pytest.fixture(scope="session")
def sim(pool):
    """Simulator params of the default pool and world."""
    from mtrouter_jax.sim import make_sim_params

    return make_sim_params(pool)
