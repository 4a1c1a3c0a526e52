"""Real ScienceWorld as a routing benchmark: the simulator, the agent protocol, a scripted stand-in.

* :mod:`.engine` — :class:`ScienceWorldEngine` (one JVM), task/variation tables, gold-path cache.
* :mod:`.agent` — chat messages, the reply format, :func:`parse_action`, token estimates.
* :mod:`.session` — :class:`Session`: one episode driven one reply at a time.
* :mod:`.scripted` — :class:`ScriptedBackend`: per-model scripted agents (profiles file).
* :mod:`.calibrate` — single-model runs over many episodes (worker processes).

Nothing here imports ``scienceworld`` or starts Java until an engine is created.
"""

from .agent import (NO_ACTION_OBSERVATION, ChatBackend, HistoryWindow, action_type, build_messages,
                    cached_prefix_tokens, estimate_tokens, format_action, parse_action, prompt_tokens)
from .engine import (DEFAULT_TASKS, SPLITS, TASK_NAMES, EpisodeStart, ScienceWorldArgumentError,
                     ScienceWorldEngine, ScienceWorldUnavailable, SplitError, StepResult, UnknownTaskError,
                     VariationError, check_task, check_variation, require_java, variations)
from .scripted import AgentProfile, ProfileError, ScriptedBackend, load_profiles
from .session import Session, TurnOutcome

__all__ = ["NO_ACTION_OBSERVATION", "ChatBackend", "HistoryWindow", "action_type", "build_messages",
           "cached_prefix_tokens", "estimate_tokens", "format_action", "parse_action", "prompt_tokens",
           "DEFAULT_TASKS", "SPLITS", "TASK_NAMES", "EpisodeStart", "ScienceWorldArgumentError",
           "ScienceWorldEngine", "ScienceWorldUnavailable", "SplitError", "StepResult", "UnknownTaskError",
           "VariationError", "check_task", "check_variation", "require_java", "variations",
           "AgentProfile", "ProfileError", "ScriptedBackend", "load_profiles", "Session", "TurnOutcome"]
