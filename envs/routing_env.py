"""Single-episode Gymnasium shell over the pure simulator core (``mtrouter_jax.sim``).

All dynamics live in the core; this file only converts keys, budgets and outputs between JAX and
Gymnasium conventions (numpy float32 observations, Python scalars, info dicts).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import jax
import numpy as np
from gymnasium import spaces

from mtrouter_jax.core.features import FeatureLayout, history_features
from mtrouter_jax.core.vocab import SEVERITIES
from mtrouter_jax.core.pool import Pool, load_pool
from mtrouter_jax.sim import core
from mtrouter_jax.sim.params import SimParams, WorldConfig, make_sim_params, sim_feature_layout


def resolve_pool(pool: Pool | str | Path | None) -> Pool:
    """A Pool, a pool file path, or None (the embedded default pool)."""
    return pool if isinstance(pool, Pool) else load_pool(pool)


def budget_value(budget: Any) -> float:
    """USD budget as a float; ``None`` means no budget (+inf). Rejects negative / NaN values."""
    if budget is None:
        return math.inf
    b = float(budget)
    if math.isnan(b) or b < 0:
        raise ValueError(f"budget must be None or a non-negative number of USD, got {budget!r}")
    return b


def budget_f32(budget: float) -> np.float32:
    """The largest float32 not above ``budget``: the core compares in float32, and rounding a
    budget up (0.004 -> 0.0040000002) would let spend exceed the requested USD amount."""
    b = np.float32(budget)
    return np.nextafter(b, np.float32(-np.inf)) if float(b) > budget else b


def draw_key(rng: np.random.Generator) -> jax.Array:
    """A JAX key drawn from the env's seeded numpy generator (so seeded resets reproduce)."""
    return jax.random.key(int(rng.integers(0, 2**31 - 1)))


# Module-level jits: one compile per (layout, pool size) shared by every env instance; params,
# budgets and keys are traced, so new budgets or another pool of the same size never retrace.
@partial(jax.jit, static_argnames=("layout",))
def _reset(key, sim: SimParams, budget, layout: FeatureLayout):
    k_next, k_reset = jax.random.split(key)
    state = core.reset(k_reset, sim, budget)
    return k_next, state, history_features(state.summary, layout)


@partial(jax.jit, static_argnames=("layout",))
def _step(key, state, action, sim: SimParams, layout: FeatureLayout):
    k_next, k_step = jax.random.split(key)
    state, record, reward = core.step(k_step, state, action, sim)
    return k_next, state, record, reward, history_features(state.summary, layout)


class MultiTurnRoutingEnv(gym.Env):
    """Route each turn of a simulated agent episode to one model of a pool.

    - **Observation**: ``float32[n_features]``, the router-visible history summary flattened by
      ``mtrouter_jax.core.features.history_features`` with the layout ``self.layout``
      (``sim_feature_layout(pool, world)``; blocks in ``self.layout.describe()``).
    - **Action**: ``Discrete(n_models)``, the index (pool order) of the model serving the next call.
    - **Reward**: task score gained this turn (score points; the episode total is the terminal score
      in [-100, 100]). Costs are not in the reward; they are reported in ``info``.
    - **Termination**: the agent's answer was accepted (right or wrong).
    - **Truncation** (never together with termination): the world's step limit was reached, or the
      requested call would exceed the remaining budget (that call is not executed, so spend never
      exceeds the budget).

    Args:
        pool: a ``Pool``, a pool file path, or None for the embedded default pool.
        world: the ``WorldConfig`` (default: ``WorldConfig()``).
        budget: USD per episode (None = unlimited); ``reset(options={"budget": x})`` overrides it.
        cost_scale: USD scale of the cost features of the observation.
        render_mode: None or "ansi".
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, pool: Pool | str | Path | None = None, world: WorldConfig | None = None,
                 budget: float | None = None, cost_scale: float = 0.25, render_mode: str | None = None):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.pool = resolve_pool(pool)
        self.world = world or WorldConfig()
        self.sim = make_sim_params(self.pool, self.world)
        self.layout = sim_feature_layout(self.pool, self.world, cost_scale)
        self.default_budget = budget_value(budget)
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-np.inf, np.inf, (self.layout.n_features,), np.float32)
        self.action_space = spaces.Discrete(len(self.pool))
        self.state: core.EpisodeState | None = None  # the core's full state (hidden fields included)
        self._key: jax.Array | None = None
        self._last_info: dict[str, Any] = {}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        budget = budget_value(options["budget"]) if "budget" in options else self.default_budget
        key, state, obs = _reset(draw_key(self.np_random), self.sim, budget_f32(budget), self.layout)
        self._key, self.state = key, state
        st = jax.device_get(state)
        info = {"task": self.world.tasks[int(st.summary.task)].name,
                "budget": None if math.isinf(budget) else budget, **self._totals(st)}
        self._last_info = info
        return np.array(obs, np.float32), info

    def step(self, action):
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        a = int(action)
        if not 0 <= a < len(self.pool):
            raise ValueError(f"action must be a model index in [0, {len(self.pool)}), got {action!r}")
        self._key, self.state, rec, reward, obs = _step(self._key, self.state, np.int32(a), self.sim, self.layout)
        rec, st = jax.device_get((rec, self.state))  # one transfer for everything the info needs
        terminated, truncated = bool(st.terminated), bool(st.truncated)
        executed = bool(rec.executed)
        err = None
        if executed and int(rec.severity) >= 0:
            err = {"kind": self.world.error_kinds[int(rec.error_kind)], "severity": SEVERITIES[int(rec.severity)]}
        info = {
            "executed": executed,
            "model": self.pool.names[int(rec.model)] if executed else None,
            "tool": self.world.tools[int(rec.tool)] if executed else None,
            "error": err,
            "switched": bool(rec.switched),
            "cost": float(rec.cost),
            "input_tokens": float(rec.input_tokens),
            "cached_tokens": float(rec.cached_tokens),
            "output_tokens": float(rec.output_tokens),
            "cache_miss_cost": float(rec.cache_miss_cost),
            # a call refused for lack of budget truncates without being executed
            "budget_exhausted": truncated and not executed and not terminated,
            **self._totals(st),
        }
        self._last_info = info
        return np.array(obs, np.float32), float(reward), terminated, truncated and not terminated, info

    @staticmethod
    def _totals(st: core.EpisodeState) -> dict[str, Any]:
        s, budget = st.summary, float(st.summary.budget)
        return {"turn": int(s.turn), "episode_cost": float(s.cost), "score": float(100.0 * st.credit),
                "budget_remaining": None if math.isinf(budget) else max(budget - float(s.cost), 0.0)}

    def render(self):
        if self.render_mode != "ansi":
            return None
        i = self._last_info
        if "executed" not in i:
            return f"task={i.get('task')} budget={i.get('budget')}\n"
        return (f"turn {i['turn']}: model={i['model']} tool={i['tool']} error={i['error']} "
                f"cost=${i['cost']:.5f} total=${i['episode_cost']:.4f} score={i['score']:.1f}\n")
