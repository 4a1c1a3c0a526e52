"""Batched Gymnasium shell: ``num_envs`` episodes advanced by one jitted ``vmap`` of the core per step."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from mtrouter_jax.core.features import FeatureLayout, history_features
from mtrouter_jax.core.pool import Pool
from mtrouter_jax.sim import core
from mtrouter_jax.sim.params import SimParams, WorldConfig, make_sim_params, sim_feature_layout

from envs.routing_env import budget_f32, budget_value, draw_key, resolve_pool


@partial(jax.jit, static_argnames=("layout",))
def _vec_reset(keys, sim: SimParams, budgets, layout: FeatureLayout):
    def one(k, b):
        k_next, k_reset = jax.random.split(k)
        s = core.reset(k_reset, sim, b)
        return k_next, s, history_features(s.summary, layout)

    return jax.vmap(one)(keys, budgets)


@partial(jax.jit, static_argnames=("layout",))
def _vec_step(keys, states, actions, sim: SimParams, budgets, layout: FeatureLayout):
    def one(k, s, a, b):
        k_next, k_step, k_reset = jax.random.split(k, 3)
        # Next-step autoreset: a sub-env that was already done ignores its action and restarts.
        # The core's terminal state is absorbing, so stepping it first is harmless (executed=False).
        was_done = s.done
        ns, rec, reward = core.step(k_step, s, a, sim)
        fresh = core.reset(k_reset, sim, b)
        ns = jax.tree_util.tree_map(lambda x, y: jnp.where(was_done, x, y), fresh, ns)
        return (k_next, ns, rec, jnp.where(was_done, 0.0, reward), ns.terminated,
                ns.truncated & ~ns.terminated, was_done, history_features(ns.summary, layout))

    return jax.vmap(one)(keys, states, actions, budgets)


class MultiTurnRoutingVectorEnv(VectorEnv):
    """``num_envs`` independent routing episodes (see ``MultiTurnRoutingEnv`` for the MDP).

    Observations ``float32[num_envs, n_features]``, actions ``MultiDiscrete([n_models] * num_envs)``,
    numpy rewards/terminations/truncations of shape ``(num_envs,)``. Autoreset is
    ``AutoresetMode.NEXT_STEP``: the step after a sub-env ends ignores its action, returns its reset
    observation with reward 0 and ``info["autoreset"]`` True. Infos hold per-env numpy arrays of the
    turn record (``model``/``tool``/``error_kind``/``severity`` as indices, -1 = none; names in
    ``model_names``/``tool_names``/``error_kinds``), costs, tokens, totals and budgets.

    Args:
        num_envs: number of sub-environments.
        pool, world, cost_scale: as for ``MultiTurnRoutingEnv``.
        budget: USD per episode: None (unlimited), a number, or one per sub-env;
            ``reset(options={"budget": ...})`` overrides it the same way.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, pool: Pool | str | Path | None = None, world: WorldConfig | None = None,
                 budget: Any = None, cost_scale: float = 0.25, render_mode: str | None = None):
        if render_mode is not None:
            raise ValueError(f"MultiTurnRoutingVectorEnv does not render (render_mode={render_mode!r})")
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs!r}")
        self.num_envs = int(num_envs)
        self.pool = resolve_pool(pool)
        self.world = world or WorldConfig()
        self.sim = make_sim_params(self.pool, self.world)
        self.layout = sim_feature_layout(self.pool, self.world, cost_scale)
        self.model_names, self.tool_names = self.pool.names, tuple(self.world.tools)
        self.error_kinds = tuple(self.world.error_kinds)
        self.default_budgets = self._budgets(budget)
        self.render_mode = None
        self.single_observation_space = spaces.Box(-np.inf, np.inf, (self.layout.n_features,), np.float32)
        self.single_action_space = spaces.Discrete(len(self.pool))
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.states: core.EpisodeState | None = None  # batched core state (hidden fields included)
        self._keys = self._budgets_now = None

    def _budgets(self, budget: Any) -> np.ndarray:
        if budget is None or np.ndim(budget) == 0:
            return np.full(self.num_envs, budget_f32(budget_value(budget)), np.float32)
        b = [budget_f32(budget_value(x)) for x in budget]
        if len(b) != self.num_envs:
            raise ValueError(f"budget: expected one per sub-env ({self.num_envs}), got {len(b)}")
        return np.asarray(b, np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        self._budgets_now = self._budgets(options["budget"]) if "budget" in options else self.default_budgets
        keys = jax.random.split(draw_key(self.np_random), self.num_envs)
        self._keys, self.states, obs = _vec_reset(keys, self.sim, self._budgets_now, self.layout)
        st = jax.device_get(self.states)
        info = {"task": np.array(st.summary.task, np.int32), "budget": self._budgets_now.copy(),
                **self._totals(st)}
        return np.array(obs, np.float32), info

    def step(self, actions):
        if self.states is None:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"actions: expected {self.num_envs} integer model indices, got {actions!r}")
        if a.min() < 0 or a.max() >= len(self.pool):
            raise ValueError(f"actions must be model indices in [0, {len(self.pool)}), got {a}")
        self._keys, self.states, rec, reward, term, trunc, autoreset, obs = _vec_step(
            self._keys, self.states, a.astype(np.int32), self.sim, self._budgets_now, self.layout)
        rec, st, reward, term, trunc, autoreset = jax.device_get(
            (rec, self.states, reward, term, trunc, autoreset))
        info = {
            "executed": np.array(rec.executed), "autoreset": np.array(autoreset),
            "model": np.array(rec.model), "tool": np.array(rec.tool),
            "error_kind": np.array(rec.error_kind), "severity": np.array(rec.severity),
            "switched": np.array(rec.switched),
            "cost": np.array(rec.cost), "input_tokens": np.array(rec.input_tokens),
            "cached_tokens": np.array(rec.cached_tokens), "output_tokens": np.array(rec.output_tokens),
            "cache_miss_cost": np.array(rec.cache_miss_cost),
            "budget_exhausted": np.array(trunc & ~rec.executed & ~autoreset),
            **self._totals(st),
        }
        return (np.array(obs, np.float32), np.array(reward, np.float64), np.array(term, np.bool_),
                np.array(trunc, np.bool_), info)

    @staticmethod
    def _totals(st: core.EpisodeState) -> dict[str, np.ndarray]:
        s = st.summary
        remaining = np.where(np.isfinite(s.budget), np.maximum(s.budget - s.cost, 0.0), np.inf)
        return {"turn": np.array(s.turn), "episode_cost": np.array(s.cost),
                "score": np.array(100.0 * st.credit, np.float32), "budget_remaining": remaining.astype(np.float32)}

    def close_extras(self, **kwargs):
        self.states = None


__all__ = ["MultiTurnRoutingVectorEnv"]
