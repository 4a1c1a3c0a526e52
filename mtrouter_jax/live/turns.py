"""What one live turn records: the routing decision and the turn as it is kept until the episode ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from mtrouter_jax.logs.io import Turn, TurnError


@dataclass(frozen=True)
class Decision:
    """One routing decision; ``ranking`` = the drawn model, then the other allowed ones by
    probability (and, with an estimator, decision value)."""

    model: str
    propensity: float  # P(model) under the behaviour policy, given the allowed models
    ranking: tuple[str, ...]
    values: np.ndarray  # (M,) learned decision values (score - lam*cost + margin), else the probabilities
    probs: np.ndarray  # (M,) the policy's distribution
    allowed: np.ndarray  # (M,) bool, models the budget (and exclusions) allowed
    worst_cost: np.ndarray  # (M,) USD, worst case of this turn
    max_output_tokens: dict[str, int | None]  # completion cap per allowed model (None = no cap needed)
    features: np.ndarray  # (F,)
    seconds: float  # time spent deciding
    meta: dict = field(default_factory=dict)  # what the turn's log records about the decision


@dataclass
class TurnRecord:
    """One served turn of a live episode (written to the log as a ``logs.Turn`` when it ends)."""

    model: str
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    cost: float
    tool: str  # tool type (ToolTypeMap output)
    tool_idx: int  # index in the layout's tool vocabulary
    error: TurnError | None
    propensity: float | None
    observation: str | None = None
    action: str | None = None
    features: tuple[float, ...] | None = None
    meta: dict = field(default_factory=dict)
    progress: float | None = None


class PreparedDecision(NamedTuple):
    """A decision up to its evaluation (``LiveEpisode.prepare_decision``): the budget rule's
    inputs and the evaluation's arguments."""

    t0: float
    hi: float
    worst: np.ndarray
    expected: np.ndarray
    allowed: np.ndarray
    caps: dict
    exclude: tuple
    args: tuple  # (worst, expected, remaining, allowed, params, lparams, (seed, turn, attempt)) in float32/int32
    lam: np.float32


def logged_turns(turns: list["TurnRecord"], text: bool) -> tuple[Turn, ...]:
    """The kept turns as logged ``Turn``s (observation and action only when text is logged)."""
    return tuple(Turn(t.model, t.input_tokens, t.cached_tokens, t.output_tokens, t.cost, t.tool, t.error,
                      t.propensity, observation=t.observation if text else None,
                      action=t.action if text else None, features=t.features, meta=t.meta or None,
                      progress=t.progress) for t in turns)


__all__ = ["logged_turns", "PreparedDecision", "Decision", "TurnRecord"]
