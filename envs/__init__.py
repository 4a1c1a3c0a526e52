"""Gymnasium shells: importing registers ``mtrouter/MultiTurnRouting-v0`` (the pure-JAX simulator) and
``mtrouter/ScienceWorldRouting-v0`` (real ScienceWorld)."""

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

SCIENCEWORLD_ENV_ID = "mtrouter/ScienceWorldRouting-v0"
if SCIENCEWORLD_ENV_ID not in gymnasium.registry:
    # real ScienceWorld (optional extra `scienceworld`, needs Java 17); imported only on make()
    gymnasium.register(id=SCIENCEWORLD_ENV_ID, entry_point="envs.scienceworld_env:ScienceWorldRoutingEnv",
                       max_episode_steps=None)  # the env enforces its own step limit

__all__ = ["ENV_ID", "SCIENCEWORLD_ENV_ID", "MultiTurnRoutingEnv", "MultiTurnRoutingVectorEnv"]
