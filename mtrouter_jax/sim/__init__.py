"""Pure-JAX multi-model agent episode simulator (functional core)."""

from mtrouter_jax.sim.core import EpisodeState, TurnRecord, expected_turn_costs, reset, step, turn_cost
from mtrouter_jax.sim.params import (DEFAULT_TASKS, ERROR_KINDS, TOOLS, Phase, SimParams, TaskType, WorldConfig,
                                     make_sim_params, sim_feature_layout)

__all__ = ["EpisodeState", "TurnRecord", "reset", "step", "turn_cost", "expected_turn_costs", "SimParams",
           "WorldConfig", "TaskType", "Phase", "TOOLS", "ERROR_KINDS", "DEFAULT_TASKS", "make_sim_params",
           "sim_feature_layout"]
