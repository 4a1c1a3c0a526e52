"""Shared test setup: a persistent XLA compilation cache (roughly halves suite time on CPU)."""

import os
from pathlib import Path

import jax

_cache = Path(os.environ.get("MTROUTER_TEST_JAX_CACHE", Path.home() / ".cache" / "mtrouter-jax-tests"))
_cache.mkdir(parents=True, exist_ok=True)
jax.config.update("jax_compilation_cache_dir", str(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
