"""One ScienceWorld episode at turn level: the engine plus the agent protocol.

    ep = Session(engine, "use-thermometer", 0, episode_id=7)
    while not ep.terminated and ep.steps < 100:        # the step limit is the caller's
        text, usage = backend.complete(model, ep.messages(), ep)
        outcome = ep.apply_reply(text)

The episode also tracks the gold path (privileged: only the scripted backend may read
:meth:`Session.expected_action`, :attr:`Session.gold` and :attr:`Session.gold_index`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .agent import DEFAULT_WINDOW, NO_ACTION_OBSERVATION, HistoryWindow, action_type, build_messages, parse_action
from .engine import AMBIGUOUS_PREFIX, CANCELLED_CHOICE_PREFIX, INVALID_ACTION_OBSERVATION, ScienceWorldEngine


@dataclass(frozen=True)
class TurnOutcome:
    """What one reply did."""

    step: int  # 1-based index of this reply in the episode
    action: str | None  # the parsed command; None when the reply had none (nothing was run)
    action_type: str  # explore | navigate | act | focus | answer | other | reasoning (no command)
    observation: str  # the engine's answer, or NO_ACTION_OBSERVATION
    score: int  # score after the step, -100..100
    reward: int  # score change of this step
    terminated: bool  # task completed, or failed (score < 0); a step limit is not termination
    parsed: bool  # the engine understood the command (False: none, or "No known action ...")
    gold_advanced: bool  # the command was the gold step due and the engine took it


def normalise(command: str) -> str:
    """Lower-case, whitespace-collapsed command (ScienceWorld's parser ignores both)."""
    return " ".join(command.lower().split())


def _is_choice(command: str) -> bool:
    return command.strip().isdigit()


@dataclass
class Session:
    """A ScienceWorld episode driven one chat reply at a time.

    Creating it loads (task, variation) into ``engine`` (ending any other episode on it); with
    ``gold`` (default) the gold sequence is loaded too (cached per (task, variation)).
    """

    engine: ScienceWorldEngine = field(repr=False)
    task: str
    variation: int
    episode_id: int | str = 0
    window: HistoryWindow = field(default=DEFAULT_WINDOW, repr=False)
    with_gold: bool = True
    # set at load
    gold: tuple[str, ...] | None = field(init=False, default=None, repr=False)  # privileged
    task_description: str = field(init=False, repr=False)
    initial_observation: str = field(init=False, repr=False)
    initial_score: int = field(init=False, default=0)  # already >0 in some tasks (subgoals met at start)
    score: int = field(init=False, default=0)  # initial_score + the sum of all rewards
    steps: int = field(init=False, default=0)
    terminated: bool = field(init=False, default=False)
    history: list[tuple[str | None, str]] = field(init=False, default_factory=list, repr=False)
    gold_index: int = field(init=False, default=0)  # next gold step due
    awaiting_choice: bool = field(init=False, default=False)  # the engine asked "which one? (number)"
    scratch: dict[str, Any] = field(init=False, default_factory=dict, repr=False)  # backend-private per-episode state

    def __post_init__(self):
        start = self.engine.load(self.task, self.variation, gold=self.with_gold)
        self.gold = start.gold
        self.task_description = start.task_description
        self.initial_observation = start.observation
        self.score = self.initial_score = start.score
        self._load_id = self.engine.load_count

    # ----------------------------------------------------------------------------- protocol
    def messages(self) -> list[dict]:
        """Chat messages for the next call (see :func:`.agent.build_messages`)."""
        return build_messages(self.task_description, self.history,
                              initial_observation=self.initial_observation, window=self.window)

    def apply_reply(self, reply_text: str | None) -> TurnOutcome:
        """Parse ``reply_text`` and run its command (or answer NO_ACTION_OBSERVATION)."""
        return self.apply_action(parse_action(reply_text))

    def apply_action(self, action: str | None) -> TurnOutcome:
        """Run one already-parsed command (None: a reply without a usable command)."""
        if self.terminated:
            raise RuntimeError(f"episode {self.episode_id!r} is over (score {self.score})")
        if self.engine.load_count != self._load_id:
            raise RuntimeError(f"episode {self.episode_id!r}: its engine has loaded another episode since")
        self.steps += 1
        if action is None:
            self.history.append((None, NO_ACTION_OBSERVATION))
            return TurnOutcome(self.steps, None, action_type(None), NO_ACTION_OBSERVATION, self.score, 0,
                               False, False, False)
        expected, kind = self._expected()
        res = self.engine.step(action)
        parsed = not res.observation.startswith((INVALID_ACTION_OBSERVATION, CANCELLED_CHOICE_PREFIX))
        advanced = False
        if parsed and expected is not None and normalise(action) == normalise(expected):
            ambiguous = res.observation.startswith(AMBIGUOUS_PREFIX)
            # "reissue" repeats the command whose choice prompt was cancelled: skip the gold
            # number when the command is no longer ambiguous; "choice" answers a prompt the
            # gold path did not expect, so the pointer stays.
            if kind == "gold" or (kind == "reissue" and not ambiguous):
                self.gold_index += 1
                advanced = kind == "gold"
        self.awaiting_choice = res.observation.startswith(AMBIGUOUS_PREFIX)
        reward = res.score - self.score
        self.score, self.terminated = res.score, res.done
        self.history.append((action, res.observation))
        return TurnOutcome(self.steps, action, action_type(action), res.observation, res.score, reward,
                           res.done, parsed, advanced)

    # ----------------------------------------------------------------------------- privileged
    def _expected(self) -> tuple[str | None, str]:
        if not self.gold or self.gold_index >= len(self.gold):
            return None, "none"
        nxt = self.gold[self.gold_index]
        if _is_choice(nxt) and not self.awaiting_choice and self.gold_index > 0:
            return self.gold[self.gold_index - 1], "reissue"  # the prompt was cancelled: ask again
        if self.awaiting_choice and not _is_choice(nxt):
            return "0", "choice"  # an unexpected prompt: take the first option, as the gold path does
        return nxt, "gold"

    def expected_action(self) -> str | None:
        """The command a perfect agent types now (privileged; None when the gold path is used up)."""
        return self._expected()[0]

    def look(self) -> str:
        """The current room's description (a free action: no step, no time passes)."""
        return self.engine.look()

    @property
    def gold_remaining(self) -> int | None:
        """Gold steps still due (privileged); None without a gold path."""
        return None if self.gold is None else len(self.gold) - self.gold_index


__all__ = ["Session", "TurnOutcome", "normalise"]
