"""Trajectory records (``mtrouter-traj/2``): the field tables, errors and the frozen dataclasses.

The validating parser is :mod:`mtrouter_jax.logs.schema`; files: :mod:`mtrouter_jax.logs.io`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

SCHEMA_V1 = "mtrouter-traj/1"
SCHEMA_VERSION = "mtrouter-traj/2"  # written by this code; v2 = v1 + a nullable score
KNOWN_SCHEMAS = (SCHEMA_V1, SCHEMA_VERSION)

_EPISODE_REQUIRED = ("schema", "episode_id", "task_type", "score", "budget", "models", "turns")
_EPISODE_OPTIONAL = ("score_range", "source", "meta")
_TURN_REQUIRED = ("model", "input_tokens", "cached_tokens", "output_tokens", "cost", "tool",
                  "error", "propensity")
_TURN_OPTIONAL = ("observation", "action", "features", "progress", "meta")
_ERROR_KEYS = ("kind", "severity")
# (required, optional) keys per object level, named as warnings show it ("" = the episode)
_FIELDS = {"": (_EPISODE_REQUIRED, _EPISODE_OPTIONAL), "turns[].": (_TURN_REQUIRED, _TURN_OPTIONAL),
           "turns[].error.": (_ERROR_KEYS, ())}
LEVELS = {level: req + opt for level, (req, opt) in _FIELDS.items()}
_ALLOWED = {level: frozenset(names) for level, names in LEVELS.items()}


class LogFormatError(ValueError):
    """A trajectory log (or an in-memory episode) violates the schema.

    ``problems`` holds one ``{file}:{line}: {field}: {problem}`` string per problem; the
    exception message lists them (one per line).
    """

    def __init__(self, problems: Sequence[str], extra: int = 0):
        self.problems = list(problems)
        lines = list(self.problems)
        if extra > 0:
            lines.append(f"... and {extra} more")
        n = len(self.problems) + max(extra, 0)
        super().__init__(f"{n} problem(s) in trajectory log:\n" + "\n".join(lines))


class UnknownFieldsWarning(UserWarning):
    """Records carried fields the schema does not know; they were kept (``extra``), not dropped."""


class DuplicateEpisodesWarning(UserWarning):
    """An ``episode_id`` repeated; the first record was kept and the later ones were skipped."""


def _check_extra(obj: Any, known: Sequence[str]) -> dict | None:
    """Normalise an ``extra`` dict ({} -> None); refuse keys that would shadow schema fields."""
    if obj is None or obj == {}:
        return None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise TypeError(f"extra must be a dict with string keys, got {obj!r}")
    clash = [k for k in obj if k in known]
    if clash:
        raise ValueError(f"extra keys {clash} are schema fields; set those fields instead")
    return obj


@dataclass(frozen=True)
class TurnError:
    """An error detected in the observation that a turn produced."""

    kind: str
    severity: str  # one of SEVERITIES
    extra: dict | None = field(default=None, hash=False)  # unknown keys of the error object

    def __post_init__(self):
        object.__setattr__(self, "extra", _check_extra(self.extra, _ERROR_KEYS))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "severity": self.severity, **(self.extra or {})}


@dataclass(frozen=True)
class Turn:
    """One model call. ``features`` is stored as a tuple so that equality is structural."""

    model: str
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    cost: float
    tool: str | None
    error: TurnError | None
    propensity: float | None
    observation: str | None = None
    action: str | None = None
    features: tuple[float, ...] | None = None
    meta: dict | None = None
    extra: dict | None = None  # unknown turn keys, written back at the turn's top level
    progress: float | None = None  # the episode's score after this turn, where the environment reports one

    def __post_init__(self):
        if self.features is not None and not isinstance(self.features, tuple):
            object.__setattr__(self, "features", tuple(self.features))
        if self.extra is not None:  # (a million turns are built per large log: skip the call)
            object.__setattr__(self, "extra", _check_extra(self.extra, LEVELS["turns[]."]))

    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "model": self.model, "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens, "output_tokens": self.output_tokens,
            "cost": self.cost, "tool": self.tool,
            "error": None if self.error is None else self.error.to_dict(),
            "propensity": self.propensity,
        }
        for k in _TURN_OPTIONAL:
            v = getattr(self, k)
            if v is not None:
                d[k] = list(v) if k == "features" else v
        return {**d, **(self.extra or {})}


@dataclass(frozen=True)
class Episode:
    """One episode. ``models`` / ``turns`` / ``score_range`` are normalised to tuples.

    ``score`` is None for an episode whose outcome was never reported (drop it before training:
    :func:`mtrouter_jax.logs.io.drop_unscored`). ``extra`` holds unknown top-level keys.
    """

    episode_id: str
    task_type: str
    score: float | None
    budget: float | None
    models: tuple[str, ...]
    turns: tuple[Turn, ...]
    score_range: tuple[float, float] | None = None
    source: str | None = None
    meta: dict | None = None
    extra: dict | None = None  # unknown episode keys, written back at the top level

    def __post_init__(self):
        for k in ("models", "turns", "score_range"):
            v = getattr(self, k)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, k, tuple(v))
        object.__setattr__(self, "extra", _check_extra(self.extra, LEVELS[""]))

    @property
    def total_cost(self) -> float:
        """Sum of the per-turn costs (USD)."""
        return float(sum(t.cost for t in self.turns))

    def to_dict(self) -> dict:
        """JSON-ready dict (the on-disk ``mtrouter-traj/2`` record); optional None fields are omitted."""
        d: dict[str, Any] = {
            "schema": SCHEMA_VERSION, "episode_id": self.episode_id, "task_type": self.task_type,
            "score": self.score, "budget": self.budget, "models": list(self.models),
            "turns": [t.to_dict() for t in self.turns],
        }
        if self.score_range is not None:
            d["score_range"] = list(self.score_range)
        if self.source is not None:
            d["source"] = self.source
        if self.meta is not None:
            d["meta"] = self.meta
        return {**d, **(self.extra or {})}


__all__ = ["SCHEMA_V1", "SCHEMA_VERSION", "KNOWN_SCHEMAS", "LEVELS", "LogFormatError", "UnknownFieldsWarning", "DuplicateEpisodesWarning",
           "TurnError", "Turn", "Episode"]
