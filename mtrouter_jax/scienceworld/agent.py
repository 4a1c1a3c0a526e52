"""The agent protocol: the chat messages an LLM sees and how its reply becomes one command.

Real LLMs and the scripted stand-in (:mod:`.scripted`) use the same protocol:

* :func:`build_messages` -> OpenAI chat ``messages``: a system prompt (the command language and
  the reply format), the task and first observation, then the recent (action, observation) pairs
  as assistant/user turns, within a :class:`HistoryWindow`.
* The reply format: a short thought, then **exactly one** command in a fenced code block::

      THOUGHT: the thermometer should be in the kitchen.
      ```
      go to kitchen
      ```

  :func:`parse_action` returns the command, or None when the reply has no block or several
  commands; the environment then answers :data:`NO_ACTION_OBSERVATION` without stepping.
* Token counts are estimated from the text (:func:`estimate_tokens`, ~4 characters a token), so
  nothing is downloaded at run time (``tiktoken`` fetches its encodings from the internet).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from mtrouter_jax.logs.detect import scienceworld_action_type

# Detected by detect.scienceworld_rules() as action_format/medium ("provide EXACTLY ONE action").
NO_ACTION_OBSERVATION = (
    "Format error: please always provide EXACTLY ONE action in triple backticks, e.g.\n"
    "```\nlook around\n```\nNo command was run.")

SYSTEM_PROMPT = """\
You are an agent in ScienceWorld, a text-based science laboratory and house. Complete the task \
by typing commands; the environment answers each command with an observation.

Commands (OBJ is an object or room name as the observations write it, without "a"/"the"):
  look around | look at OBJ | look in OBJ | inventory | task | read OBJ
  go to ROOM (open the door to it first: open door to ROOM) | open OBJ | close OBJ
  pick up OBJ | put down OBJ | move OBJ to OBJ | pour OBJ in OBJ | mix OBJ | dunk OBJ in OBJ
  activate OBJ | deactivate OBJ | use OBJ on OBJ | connect OBJ to OBJ | disconnect OBJ
  eat OBJ | flush OBJ | wait (10 time steps) | wait1 (1 time step)
  focus on OBJ -- marks the object the task is about. Only focus when the task asks you to and
    only on the right object: focusing on a wrong object fails the task immediately.
If the environment says "Ambiguous request" and lists numbered options, answer with the number only.

Reply with one short thought and then EXACTLY ONE command in a fenced code block, for example:
THOUGHT: I need the thermometer, which should be in the kitchen.
```
open door to kitchen
```"""

CHARS_PER_TOKEN = 4.0  # English prose and ScienceWorld observations: ~4 characters per token
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators of one chat message (OpenAI's accounting)
PROMPT_OVERHEAD_TOKENS = 3  # the assistant-reply priming of a chat prompt

_FENCE = re.compile(r"```(.*?)```", re.DOTALL)
_LANG_TAG = re.compile(r"[A-Za-z0-9_+.-]+")


def estimate_tokens(text: str) -> int:
    """Estimated token count of ``text``: ceil(characters / 4)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def prompt_tokens(messages: Sequence[dict]) -> int:
    """Estimated prompt tokens of chat ``messages`` (content tokens + 4 per message + 3)."""
    if not messages:
        return 0
    return PROMPT_OVERHEAD_TOKENS + sum(
        MESSAGE_OVERHEAD_TOKENS + estimate_tokens(str(m.get("content") or "")) for m in messages)


def cached_prefix_tokens(previous: Sequence[dict] | None, current: Sequence[dict]) -> int:
    """Tokens a prompt cache would serve: the leading messages ``current`` shares with ``previous``.

    Equals ``prompt_tokens(previous)`` when the new prompt extends the previous one (the usual
    case); only the shared head after a history truncation; 0 without a previous prompt.
    """
    if not previous:
        return 0
    n = 0
    for a, b in zip(previous, current):
        if a.get("role") != b.get("role") or a.get("content") != b.get("content"):
            break
        n += 1
    return prompt_tokens(current[:n])


def format_action(command: str, thought: str | None = None) -> str:
    """A reply in the agent format (what :func:`parse_action` reads back)."""
    block = f"```\n{command}\n```"
    return f"THOUGHT: {thought}\n{block}" if thought else block


def parse_action(reply: str | None) -> str | None:
    """The one command of a reply, or None (no fenced block, several blocks or several commands).

    A block is text between triple backticks; a language tag on the opening line (```text) is
    ignored; blank lines are ignored; whitespace in the command is collapsed. Case is kept
    (ScienceWorld's parser ignores it).
    """
    if not reply or not isinstance(reply, str):
        return None
    blocks = [b for b in _FENCE.findall(reply) if b.strip()]
    if len(blocks) != 1:
        return None
    lines = blocks[0].split("\n")
    if len(lines) > 1 and _LANG_TAG.fullmatch(lines[0].strip()) and any(ln.strip() for ln in lines[1:]):
        lines = lines[1:]  # "```text\nlook around\n```"
    commands = [" ".join(ln.split()) for ln in lines if ln.strip()]
    return commands[0] if len(commands) == 1 else None


def action_type(command: str | None) -> str:
    """explore | navigate | act | focus | answer | other; "reasoning" when no command was issued."""
    return scienceworld_action_type(command)


@dataclass(frozen=True)
class HistoryWindow:
    """How much history the prompt carries (characters of assistant + observation text).

    Cache-friendly truncation: once the kept history exceeds ``max_chars``, the oldest pairs are
    dropped until it is at most ``keep_chars``; the prompt then grows append-only again, so a
    provider's prompt cache keeps hitting between truncations. The newest pair is always kept.
    Observations longer than ``max_observation_chars`` are cut.
    """

    max_chars: int = 24_000  # ~6k tokens of history at most
    keep_chars: int = 12_000  # ~3k tokens right after a truncation
    max_observation_chars: int = 4_000

    def __post_init__(self):
        if not 0 < self.keep_chars <= self.max_chars or self.max_observation_chars <= 0:
            raise ValueError(f"HistoryWindow: need 0 < keep_chars <= max_chars and "
                             f"max_observation_chars > 0, got {self}")


DEFAULT_WINDOW = HistoryWindow()
_NO_ACTION_TEXT = "(no command)"


def _clip(observation: str, window: HistoryWindow) -> str:
    n = window.max_observation_chars
    return observation if len(observation) <= n else observation[:n] + "\n[... truncated]"


def _pair(action: str | None, observation: str, window: HistoryWindow) -> tuple[str, str]:
    return (_NO_ACTION_TEXT if action is None else format_action(action)), _clip(observation, window)


def window_start(history: Sequence[tuple[str | None, str]], window: HistoryWindow = DEFAULT_WINDOW) -> int:
    """Index of the oldest history pair the prompt still shows (a pure function of the history)."""
    start, total, sizes = 0, 0, []
    for action, obs in history:
        a, o = _pair(action, obs, window)
        sizes.append(len(a) + len(o))
        total += sizes[-1]
        if total > window.max_chars:
            while start < len(sizes) - 1 and total > window.keep_chars:
                total -= sizes[start]
                start += 1
    return start


def build_messages(task_description: str, history: Sequence[tuple[str | None, str]], *,
                   initial_observation: str = "", window: HistoryWindow = DEFAULT_WINDOW) -> list[dict]:
    """OpenAI chat messages for the next reply.

    Args:
        task_description: ScienceWorld's task text.
        history: (command or None, observation) per earlier reply, oldest first.
        initial_observation: the observation before the first reply ("look around").
        window: how much history to show (see :class:`HistoryWindow`).
    """
    start = window_start(history, window)
    first = f"{task_description.strip()}\n\nObservation:\n{_clip(initial_observation, window)}"
    if start:
        first += f"\n\n({start} earlier steps are not shown.)"
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": first}]
    for action, obs in history[start:]:
        a, o = _pair(action, obs, window)
        msgs.append({"role": "assistant", "content": a})
        msgs.append({"role": "user", "content": o})
    return msgs


class ChatBackend(Protocol):
    """Anything that answers chat messages as a given model (a real API or :class:`ScriptedBackend`).

    ``session`` is the :class:`~mtrouter_jax.scienceworld.session.Session` being played; real
    backends ignore it, the scripted one reads its privileged gold path.
    """

    def complete(self, model: str, messages: list[dict], session: Any, max_tokens: int | None = None
                 ) -> tuple[str, dict]:
        """Return (reply text, OpenAI-style ``usage`` dict); the completion must not exceed
        ``max_tokens`` (the router's budget cap; None = no cap)."""
        ...


__all__ = ["NO_ACTION_OBSERVATION", "SYSTEM_PROMPT", "CHARS_PER_TOKEN", "estimate_tokens",
           "prompt_tokens", "cached_prefix_tokens", "format_action", "parse_action", "action_type",
           "HistoryWindow", "DEFAULT_WINDOW", "window_start", "build_messages", "ChatBackend"]
