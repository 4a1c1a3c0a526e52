"""Gymnasium shell over real ScienceWorld: each step is one agent turn served by the model you pick.

Observation: ``Box(n_features,)`` float32 — the history features the live router computes
(``LiveEpisode.features()``: the same vector behind the proxy, so a checkpoint trained on
collected logs sees identical features here). Action: ``Discrete(M)``, a model of the pool. One
step builds the agent prompt, calls that model's backend (the scripted stand-in by default, or
real endpoints), parses one ScienceWorld command from the reply (none → the format-error
observation), steps ScienceWorld and bills the turn at the pool's prices (the previous prompt is a
cache hit when the same model served the previous turn). Reward: the score change (−100..100
scale). Terminated: the task is completed or failed (a wrong ``focus on`` ends it at −100).
Truncated: the step limit, or the chosen/next turn cannot fit the budget (a turn that does not fit
is not executed). ``reset(options={"task", "variation", "split", "budget"})``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from mtrouter_jax.live.router import Router
from mtrouter_jax.core.pool import Pool
from mtrouter_jax.scienceworld.engine import DEFAULT_TASKS, SPLITS, ScienceWorldEngine, check_task, variations
from mtrouter_jax.scienceworld.routed import DEFAULT_STEP_LIMIT, TOOLS, RoutedEpisode


def scienceworld_router(pool: Pool | None = None, **kw) -> Router:
    """A checkpoint-free router over ScienceWorld's vocabulary (tasks, action types): the env's
    feature path when no checkpoint router is given."""
    return Router(None, pool, tools=TOOLS, task_types=DEFAULT_TASKS, **kw)


class ScienceWorldRoutingEnv(gym.Env):
    """Per-turn model routing on real ScienceWorld episodes (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, pool: Pool | None = None, backend: Any = None, router: Router | None = None,
                 split: str = "train", tasks: tuple[str, ...] = DEFAULT_TASKS, budget: float | None = None,
                 step_limit: int = DEFAULT_STEP_LIMIT, scripted_seed: int = 0, engine: ScienceWorldEngine | None = None):
        """Args:
            pool: model pool (default: the embedded six-model pool; ignored when ``router`` is given).
            backend: chat backend (``ScriptedBackend`` by default, or ``routed.LiveChatBackend``).
            router: live router whose features and accounting the env uses (default:
                ``scienceworld_router(pool)``; pass ``Router.from_checkpoint(...)`` to see its layout).
            split, tasks, budget, step_limit: episode defaults (``reset`` options override them).
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.tasks = tuple(check_task(t) for t in tasks)
        self.router = router or scienceworld_router(pool)
        self.pool = self.router.pool
        if backend is None:
            from mtrouter_jax.scienceworld.scripted import ScriptedBackend

            backend = ScriptedBackend.from_file(seed=scripted_seed, models=self.pool.names)
        self.backend = backend
        self.split, self.budget, self.step_limit = split, budget, int(step_limit)
        self._engine = engine
        n = self.router.layout.n_features + int(self.router.text_dim)
        self.observation_space = spaces.Box(-np.inf, np.inf, (n,), dtype=np.float32)
        self.action_space = spaces.Discrete(len(self.pool))
        self.episode: RoutedEpisode | None = None

    @property
    def engine(self) -> ScienceWorldEngine:
        if self._engine is None:  # the JVM starts on first use (a few seconds)
            self._engine = ScienceWorldEngine()
        return self._engine

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        o = dict(options or {})
        unknown = set(o) - {"task", "variation", "split", "budget"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; expected task, variation, split, budget")
        split = o.get("split", self.split)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        task = check_task(o["task"]) if "task" in o else self.tasks[int(self.np_random.integers(len(self.tasks)))]
        var_range = variations(task, split)
        variation = o.get("variation")
        if variation is None:
            variation = var_range[int(self.np_random.integers(len(var_range)))]
        budget = o.get("budget", self.budget)
        tag = int(self.np_random.integers(0, 2**31 - 1))  # seeded resets reproduce the scripted agents' draws
        self.episode = RoutedEpisode(self.engine, self.backend, self.router, task, int(variation),
                                     episode_id=f"sw-{task}-v{int(variation)}-{tag:x}", budget=budget,
                                     step_limit=self.step_limit, split=split,
                                     seed=int(self.np_random.integers(0, 2**31 - 1)))
        return self._obs(), self._info(None)

    def step(self, action):
        if self.episode is None or self.episode.done:
            raise RuntimeError("call reset() before step() (the episode is over)")
        if not self.action_space.contains(int(action)):
            raise ValueError(f"action must be a model index in [0, {len(self.pool)}), got {action!r}")
        before = self.episode.score
        res = self.episode.step(self.pool.names[int(action)])
        reward = float(self.episode.score - before)
        return self._obs(), reward, bool(self.episode.terminated), bool(self.episode.truncated), self._info(res)

    def _obs(self) -> np.ndarray:
        return np.asarray(self.episode.features(), np.float32)

    def _info(self, res) -> dict:
        ep = self.episode
        info = {"task": ep.task, "variation": ep.variation, "score": ep.score, "cost": ep.live.spent,
                "budget": ep.live.budget, "turn": ep.session.steps, "allowed": ep.allowed(),
                "task_description": ep.session.task_description, "ended_by": ep.ended_by}
        if res is not None:
            info.update(model=res.model, action=res.outcome.action, action_type=res.outcome.action_type,
                        observation=res.outcome.observation, turn_cost=res.cost)
        return info

    def close(self):
        if self._engine is not None:
            self._engine.close()
            self._engine = None


__all__ = ["ScienceWorldRoutingEnv", "scienceworld_router"]
