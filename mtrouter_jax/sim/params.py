"""Simulator parameters: the world (task types, phases, tools) and the pool's hidden profiles.

``SimParams`` is a pytree of arrays so one compiled rollout serves any pool of the same size;
``WorldConfig`` is the human-facing description it is built from (docs/simulator.md).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax.numpy as jnp
import numpy as np
from flax import struct

from typing import TYPE_CHECKING

from mtrouter_jax.core.pool import Pool, default_pool

if TYPE_CHECKING:  # features imports nothing from sim, but keep the runtime import lazy
    from mtrouter_jax.core.features import FeatureLayout

TOOLS = ("search", "file", "python", "reasoning", "answer")
ERROR_KINDS = ("format_violation", "invalid_action")  # index 0: model-level, 1: failed tool action


@dataclasses.dataclass(frozen=True)
class Phase:
    """A stretch of an episode: ``required`` successful turns, drawn from its tool mix."""

    name: str
    tool_mix: Mapping[str, float]
    required: int
    credit: float  # share of the full score earned by completing the phase


@dataclasses.dataclass(frozen=True)
class TaskType:
    name: str
    phases: tuple[Phase, ...]
    weight: float = 1.0
    system_tokens: int = 2500


def _p(name, mix, required, credit):
    return Phase(name, mix, required, credit)


DEFAULT_TASKS = (
    TaskType("lab_experiment", (
        _p("explore", {"search": 0.65, "file": 0.3, "reasoning": 0.05}, 8, 0.15),
        _p("execute", {"python": 0.55, "file": 0.25, "reasoning": 0.2}, 10, 0.25),
        _p("resolve", {"reasoning": 0.7, "python": 0.2, "search": 0.1}, 6, 0.2),
        _p("answer", {"answer": 1.0}, 1, 0.4),
    ), system_tokens=2500),
    TaskType("research_question", (
        _p("explore", {"search": 0.75, "file": 0.2, "reasoning": 0.05}, 11, 0.2),
        _p("resolve", {"reasoning": 0.75, "python": 0.15, "search": 0.1}, 8, 0.3),
        _p("answer", {"answer": 1.0}, 1, 0.5),
    ), system_tokens=2000),
    TaskType("data_analysis", (
        _p("explore", {"file": 0.6, "search": 0.35, "reasoning": 0.05}, 6, 0.1),
        _p("execute", {"python": 0.7, "file": 0.2, "reasoning": 0.1}, 11, 0.3),
        _p("resolve", {"reasoning": 0.6, "python": 0.4}, 5, 0.2),
        _p("answer", {"answer": 1.0}, 1, 0.4),
    ), system_tokens=3000),
)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Everything about episodes that is not a model property."""

    tasks: tuple[TaskType, ...] = DEFAULT_TASKS
    tools: tuple[str, ...] = TOOLS
    error_kinds: tuple[str, ...] = ERROR_KINDS
    # tokens a tool observation appends to the history
    observation_tokens: Mapping[str, float] = dataclasses.field(default_factory=lambda: {
        "search": 1800.0, "file": 1400.0, "python": 700.0, "reasoning": 150.0, "answer": 50.0})
    max_steps: int = 35
    visible_failure: float = 0.8  # share of failed tool actions that show up as an invalid-action error
    fatal_rate: float = 0.06  # P(a high-severity failed action ends the task) — irreversible mistakes
    fatal_score: float = -100.0  # terminal score of a fatal mistake (ScienceWorld's -100)
    # severity of a visible failed action, by tool (a Python traceback is worse than an empty search)
    failure_severity: Mapping[str, str] = dataclasses.field(default_factory=lambda: {
        "search": "low", "file": "medium", "python": "high", "reasoning": "medium", "answer": "high"})
    switch_error_bump: float = 0.12  # extra error chance on the first turn after a switch
    output_token_spread: float = 0.3  # output tokens ~ mean * U(1 - s, 1 + s)
    premature_answer_success: float = 0.25  # answer success multiplier when answering early
    high_error_setback: bool = True  # a high-severity error undoes one unit of phase progress
    wrong_answer_penalty: float = 0.5  # score share lost by a wrong answer (ScienceWorld: wrong focus -> -100)


@struct.dataclass
class SimParams:
    """Array form of a pool + world; every field is a traced leaf except sizes."""

    price_input: jnp.ndarray  # (M,) USD per token
    price_cached: jnp.ndarray  # (M,)
    price_output: jnp.ndarray  # (M,)
    success: jnp.ndarray  # (M, K) P(progress | no error, tool)
    error_rate: jnp.ndarray  # (M,)
    severity_mix: jnp.ndarray  # (M, 3)
    output_tokens: jnp.ndarray  # (M,) mean completion tokens
    early_submit: jnp.ndarray  # (M,)
    observation_tokens: jnp.ndarray  # (K,)
    task_weights: jnp.ndarray  # (T,)
    system_tokens: jnp.ndarray  # (T,)
    phase_tool_probs: jnp.ndarray  # (T, P, K)
    phase_required: jnp.ndarray  # (T, P) int32, 0 for absent phases
    phase_credit: jnp.ndarray  # (T, P)
    n_phases: jnp.ndarray  # (T,) int32
    switch_error_bump: jnp.ndarray  # ()
    output_token_spread: jnp.ndarray  # ()
    premature_answer_success: jnp.ndarray  # ()
    high_error_setback: jnp.ndarray  # () bool
    wrong_answer_penalty: jnp.ndarray  # ()
    visible_failure: jnp.ndarray  # ()
    fatal_rate: jnp.ndarray  # ()
    fatal_credit: jnp.ndarray  # () fatal score / 100
    failure_severity: jnp.ndarray  # (K,) int32 severity of a visible failed action per tool
    answer_tool: int = struct.field(pytree_node=False, default=4)
    max_steps: int = struct.field(pytree_node=False, default=40)

    @property
    def n_models(self) -> int:
        return self.price_input.shape[0]

    @property
    def n_tools(self) -> int:
        return self.success.shape[1]


def make_sim_params(pool: Pool | None = None, world: WorldConfig | None = None) -> SimParams:
    """Build SimParams from a pool (default: embedded) and a world (default: DEFAULT_TASKS)."""
    pool = pool or default_pool()
    world = world or WorldConfig()
    tools = world.tools
    if "answer" not in tools:
        raise ValueError("world.tools must contain 'answer' (the terminal tool)")
    missing = [m.name for m in pool.models if m.sim is None]
    if missing:
        raise ValueError(f"pool models without a [model.sim] profile cannot be simulated: {missing}")
    success = np.zeros((len(pool), len(tools)), np.float32)
    for i, m in enumerate(pool.models):
        for tool, p in m.sim.success.items():  # type: ignore[union-attr]
            if tool not in tools:
                raise ValueError(f"model {m.name}: sim.success has unknown tool {tool!r} (world tools: {tools})")
            success[i, tools.index(tool)] = p
        unset = [t for t in tools if t not in m.sim.success]  # type: ignore[union-attr]
        if unset:
            raise ValueError(f"model {m.name}: sim.success lacks tool(s) {unset}")
    P = max(len(t.phases) for t in world.tasks)
    T, K = len(world.tasks), len(tools)
    mix = np.zeros((T, P, K), np.float32)
    req = np.zeros((T, P), np.int32)
    credit = np.zeros((T, P), np.float32)
    for ti, task in enumerate(world.tasks):
        if task.phases[-1].tool_mix.keys() != {"answer"}:
            raise ValueError(f"task {task.name}: the last phase must be an answer phase")
        total = sum(ph.credit for ph in task.phases)
        for pi, ph in enumerate(task.phases):
            for tool, w in ph.tool_mix.items():
                if tool not in tools:
                    raise ValueError(f"task {task.name}, phase {ph.name}: unknown tool {tool!r} (world tools: {tools})")
                mix[ti, pi, tools.index(tool)] = w
            mix[ti, pi] /= mix[ti, pi].sum()
            req[ti, pi] = ph.required
            credit[ti, pi] = ph.credit / total
    missing_obs = [t for t in tools if t not in world.observation_tokens]
    if missing_obs:
        raise ValueError(f"world.observation_tokens lacks tool(s) {missing_obs}")
    if len(world.error_kinds) != 2:
        raise ValueError("world.error_kinds must name exactly two kinds: (model-level format errors, "
                         f"failed tool actions), got {world.error_kinds!r}")
    bad_sev = {t: v for t, v in world.failure_severity.items() if v not in ("low", "medium", "high")}
    if bad_sev or any(t not in world.failure_severity for t in tools):
        raise ValueError(f"world.failure_severity needs low/medium/high for every tool {tools}, got {dict(world.failure_severity)}")
    per_tok = lambda x: jnp.asarray(x, jnp.float32) / 1e6  # noqa: E731
    return SimParams(
        price_input=per_tok([m.price_input for m in pool.models]),
        price_cached=per_tok([m.price_cached_input for m in pool.models]),
        price_output=per_tok([m.price_output for m in pool.models]),
        success=jnp.asarray(success),
        error_rate=jnp.asarray([m.sim.error_rate for m in pool.models], jnp.float32),
        severity_mix=jnp.asarray([m.sim.severity_mix for m in pool.models], jnp.float32),
        output_tokens=jnp.asarray([m.sim.output_tokens for m in pool.models], jnp.float32),
        early_submit=jnp.asarray([m.sim.early_submit for m in pool.models], jnp.float32),
        observation_tokens=jnp.asarray([world.observation_tokens[t] for t in tools], jnp.float32),
        task_weights=jnp.asarray([t.weight for t in world.tasks], jnp.float32),
        system_tokens=jnp.asarray([t.system_tokens for t in world.tasks], jnp.float32),
        phase_tool_probs=jnp.asarray(mix),
        phase_required=jnp.asarray(req),
        phase_credit=jnp.asarray(credit),
        n_phases=jnp.asarray([len(t.phases) for t in world.tasks], jnp.int32),
        switch_error_bump=jnp.float32(world.switch_error_bump),
        output_token_spread=jnp.float32(world.output_token_spread),
        premature_answer_success=jnp.float32(world.premature_answer_success),
        high_error_setback=jnp.asarray(world.high_error_setback),
        wrong_answer_penalty=jnp.float32(world.wrong_answer_penalty),
        visible_failure=jnp.float32(world.visible_failure),
        fatal_rate=jnp.float32(world.fatal_rate),
        fatal_credit=jnp.float32(world.fatal_score / 100.0),
        failure_severity=jnp.asarray([("low", "medium", "high").index(world.failure_severity[t]) for t in tools],
                                     jnp.int32),
        answer_tool=tools.index("answer"),
        max_steps=world.max_steps,
    )


def sim_feature_layout(pool: Pool | None = None, world: WorldConfig | None = None,
                       cost_scale: float = 0.25) -> "FeatureLayout":
    """The feature layout of the simulator's own vocabularies (used by the Gymnasium env)."""
    from mtrouter_jax.core.features import FeatureLayout

    pool = pool or default_pool()
    world = world or WorldConfig()
    return FeatureLayout(task_types=tuple(t.name for t in world.tasks), tools=tuple(world.tools),
                         error_kinds=tuple(world.error_kinds), models=pool.names,
                         max_steps=float(world.max_steps), cost_scale=cost_scale)
