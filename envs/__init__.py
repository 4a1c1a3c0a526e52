"""Gymnasium shells over the pure-JAX simulator; importing registers ``mtrouter/MultiTurnRouting-v0``."""

import gymnasium

from envs.routing_env import MultiTurnRoutingEnv
from envs.vector_env import MultiTurnRoutingVectorEnv

ENV_ID = "mtrouter/MultiTurnRouting-v0"

# Re-importing (or importlib.reload) must not re-register: Gymnasium warns on overrides.
if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="envs.routing_env:MultiTurnRoutingEnv",
        vector_entry_point="envs.vector_env:MultiTurnRoutingVectorEnv",
        max_episode_steps=None,  # the core enforces WorldConfig.max_steps itself
    )

__all__ = ["ENV_ID", "MultiTurnRoutingEnv", "MultiTurnRoutingVectorEnv"]
