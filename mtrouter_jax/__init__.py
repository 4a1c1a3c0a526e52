"""mtrouter-jax: cost-aware multi-turn LLM routing (MTRouter) in JAX."""

__version__ = "0.1.0"
