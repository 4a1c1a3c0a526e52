"""Live routing: route real OpenAI-compatible chat calls turn by turn with any routing policy.

``router`` is the HTTP-free library (``Router``), ``episode`` one conversation (``LiveEpisode``),
``backends`` the upstream clients with fallback, ``server`` the OpenAI-compatible proxy (import it
explicitly; it needs the ``[live]`` extra).
"""

from mtrouter_jax.live.episode import Decision, LiveEpisode
from mtrouter_jax.live.router import BudgetExhausted, PoolMismatchError, Router

__all__ = ["Router", "LiveEpisode", "Decision", "BudgetExhausted", "PoolMismatchError"]
