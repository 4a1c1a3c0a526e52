"""Live routing: route real OpenAI-compatible chat calls turn by turn with a trained estimator.

``router`` is the HTTP-free library, ``backends`` the upstream clients with fallback, ``server`` the
OpenAI-compatible proxy (import it explicitly; it needs the ``[live]`` extra).
"""

from mtrouter_jax.live.router import (BudgetExhausted, Decision, LiveEpisode, PoolMismatchError,
                                      Router)

__all__ = ["Router", "LiveEpisode", "Decision", "BudgetExhausted", "PoolMismatchError"]
