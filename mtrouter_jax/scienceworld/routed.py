"""A ScienceWorld episode routed turn by turn through the live router's episode (one feature path).

``RoutedEpisode`` ties a ScienceWorld :class:`~.session.Session`, a chat backend (scripted or real
endpoints) and a ``LiveEpisode`` of the live router: the observation a router sees is
``LiveEpisode.features()`` (the vector the proxy computes), the cost of a turn is billed from the
pool's prices, the model is drawn by the router's policy (``decide``) or given (the Gymnasium env's
action), and the finished episode is the same trajectory line the proxy logs. The Gymnasium env,
``mtrouter collect scienceworld`` and ``mtrouter eval scienceworld`` all run this class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mtrouter_jax.live.accounting import input_tokens_bound  # the proxy's bound: one budget guarantee
from mtrouter_jax.live.backends import Backends, UpstreamError
from mtrouter_jax.live.draft import cancel_draft, escalate_draft
from mtrouter_jax.live.episode import Decision, LiveEpisode
from mtrouter_jax.live.router import BudgetExhausted, Router
from mtrouter_jax.logs.io import Episode

from .agent import NO_ACTION_OBSERVATION, ChatBackend, action_type, parse_action
from .engine import ScienceWorldEngine
from .session import Session, TurnOutcome

SCORE_RANGE = (-100.0, 100.0)
DEFAULT_STEP_LIMIT = 100
TOOLS = ("explore", "navigate", "act", "focus", "answer", "other", "reasoning")  # action types (agent.action_type)
class LiveChatBackend:
    """Real OpenAI-compatible endpoints of the pool (``live.backends.Backends``: retries, timeouts)."""

    def __init__(self, backends: Backends):
        self.backends = backends

    def complete(self, model: str, messages: list[dict], session: Any, max_tokens: int | None = None
                 ) -> tuple[str, dict]:
        body: dict = {"messages": messages}
        if max_tokens is not None:
            body["max_tokens"] = int(max_tokens)
        resp = self.backends.chat(model, body)
        try:
            text = resp["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            text = ""
        return text, resp.get("usage") or {}


class ReplayMismatch(RuntimeError):
    """A replayed action prefix did not restore the logged state (the environment is not
    deterministic there, or the log is not of this task and variation)."""


@dataclass
class TurnResult:
    """One routed turn: the model, the ScienceWorld outcome and the turn's USD cost."""

    model: str
    outcome: TurnOutcome
    cost: float
    propensity: float | None
    fallbacks: list


class RoutedEpisode:
    """One ScienceWorld episode whose turns are routed and accounted by a live router episode."""

    def __init__(self, engine: ScienceWorldEngine, backend: ChatBackend, router: Router, task: str, variation: int,
                 *, episode_id: str, budget: float | None = None, step_limit: int = DEFAULT_STEP_LIMIT,
                 explore: bool = False, seed: int | None = None, split: str | None = None,
                 log_id: str | None = None):
        """``episode_id`` seeds the scripted agents' draws (keep it the same across routers for
        common random numbers); ``log_id`` (default: ``episode_id``) names the logged episode."""
        self.session = Session(engine, task, variation, episode_id=episode_id)
        self.backend, self.router = backend, router
        self.step_limit = int(step_limit)
        self.live: LiveEpisode = router.start_episode(log_id or episode_id, task, budget, explore=explore, seed=seed)
        self.task, self.variation, self.split = task, variation, split
        self.truncated = False
        self.ended_by: str | None = None
        self.live.summary = self.live.summary.replace(context_tokens=np.float32(self._context()))

    # ------------------------------------------------------------------ state
    @property
    def terminated(self) -> bool:
        return self.session.terminated

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    @property
    def score(self) -> float:
        return float(self.session.score)

    def _context(self) -> int:
        from .agent import prompt_tokens

        return prompt_tokens(self.session.messages())

    def features(self) -> np.ndarray:
        """The history features the live router computes (the Gymnasium observation)."""
        return self.live.features()

    def allowed(self) -> np.ndarray:
        """(M,) models whose worst-case next turn fits the budget (all without one)."""
        hi = input_tokens_bound(self.session.messages())
        worst = self.live.worst_costs(hi)
        if self.live.budget is None:
            return np.ones(len(worst), bool)
        ok = self.live.spent + worst <= self.live.budget + 1e-12
        return ok & np.array([self.live.completion_cap(m, hi) != 0 for m in self.router.pool.names])

    # ------------------------------------------------------------------ turns
    def decide(self, exclude=()) -> Decision:
        """The router's policy draws the next model (raises BudgetExhausted when none fits)."""
        msgs = self.session.messages()
        return self.live.decide(input_tokens_hi=input_tokens_bound(msgs), context_tokens=float(self._context()),
                                exclude=exclude)

    def step(self, model: str | None = None) -> TurnResult:
        """Run one turn on ``model`` (None: the router's own choice, with fallbacks after upstream
        failures). Ends the episode (truncated) when no model fits the budget or at the step limit."""
        if self.done:
            raise RuntimeError(f"episode {self.live.episode_id!r} is over")
        msgs = self.session.messages()
        hi = input_tokens_bound(msgs)
        fallbacks: list = []
        if model is None:
            try:
                d = self.decide()
            except BudgetExhausted as e:
                return self._truncate(f"budget: {e}")
        else:
            if not self.allowed()[self.router.pool.index(model)]:
                return self._truncate(f"budget: a {model} turn could exceed the budget")
            self.live.last_decision = None
            d = None
        while True:
            served = model if d is None else d.model
            cap = self.live.completion_cap(served, hi)
            try:
                text, usage = self._complete(served, msgs, cap)
                break
            except UpstreamError as e:
                if d is None or not e.retryable:
                    raise
                fallbacks.append({"model": served, "error": e.kind})
                try:
                    d = self.decide(exclude=[f["model"] for f in fallbacks])
                except BudgetExhausted:
                    raise e from None
        meta = {"fallbacks": fallbacks} if fallbacks else {}
        propensity = "decision"
        if d is not None and self.router.draft_table is not None:  # the call was a draft (live/draft.py)
            esc = escalate_draft(self.live, served, usage, action_type(parse_action(text)), hi)
            if esc is not None:
                try:
                    text, usage = self._complete(esc, msgs, self.live.completion_cap(esc, hi))
                    meta, propensity, served, d = {**d.meta, **meta}, d.propensity, esc, None
                except UpstreamError as e:  # the draft (already paid for) is served after all
                    cancel_draft(self.live)
                    meta["draft_escalation_failed"] = {"model": esc, "error": e.kind}
        if d is not None:
            self.live.last_decision = d
        outcome = self.session.apply_reply(text)
        cost = self.live.record(served, usage, tool_name=outcome.action_type, observation=outcome.observation,
                                action=outcome.action if outcome.action is not None else text,
                                propensity=propensity, meta=meta or None,
                                next_context_tokens=float(self._context()), progress=float(outcome.score))
        if not self._at_step_limit() and not self.terminated and not self.allowed().any():
            self.truncated, self.ended_by = True, "budget"
        return TurnResult(served, outcome, cost, self.live.turns[-1].propensity, fallbacks)

    def _complete(self, model: str, msgs: list[dict], cap: int | None) -> tuple[str, dict]:
        # the completion cap is what guarantees the budget: every backend must honour it
        return self.backend.complete(model, msgs, self.session, max_tokens=cap)

    def _truncate(self, why: str) -> TurnResult | None:
        self.truncated, self.ended_by = True, why
        return None

    def replay(self, turn) -> TurnOutcome:
        """Re-apply one logged turn (a ``logs.Turn`` with its action text) without calling any model:
        the same command goes to ScienceWorld and the logged usage is billed again, so the episode
        is restored to the state after that turn (executed counterfactuals, ``scienceworld.branch``).

        Raises :class:`ReplayMismatch` when ScienceWorld's score after the command differs from the
        logged one (observation strings are not compared: ScienceWorld lists a room's objects in a
        varying order, even within one JVM, docs/benchmarks.md)."""
        if self.done:
            raise RuntimeError(f"episode {self.live.episode_id!r} is over")
        if turn.action is None and turn.observation is None:
            raise ReplayMismatch("the log has no action text to replay (collect with the default --log-text)")
        msgs = self.session.messages()
        action = None if turn.observation == NO_ACTION_OBSERVATION else turn.action
        outcome = self.session.apply_action(action)
        if turn.progress is not None and float(outcome.score) != float(turn.progress):
            raise ReplayMismatch(f"turn {outcome.step}: replaying {action!r} gives score {outcome.score}, "
                                 f"the log says {turn.progress:g}")
        note = getattr(self.backend, "note_call", None)
        if note is not None:  # e.g. the scripted backend's prompt-cache state
            note(turn.model, msgs, self.session)
        self.live.last_decision = None
        usage = {"prompt_tokens": turn.input_tokens, "completion_tokens": turn.output_tokens,
                 "prompt_tokens_details": {"cached_tokens": turn.cached_tokens}}
        self.live.record(turn.model, usage, tool_name=outcome.action_type, observation=outcome.observation,
                         action=outcome.action if outcome.action is not None else turn.action,
                         propensity=turn.propensity, meta={"replayed": True},
                         next_context_tokens=float(self._context()), progress=float(outcome.score))
        self._at_step_limit()
        return outcome

    def _at_step_limit(self) -> bool:
        """End the episode (truncated) when it reached the step limit unterminated; True if so."""
        if not self.terminated and self.session.steps >= self.step_limit:
            self.truncated, self.ended_by = True, "step limit"
            return True
        return False

    def run(self) -> "RoutedEpisode":
        """Route every turn with the router's policy until the episode ends."""
        while not self.done:
            self.step()
        return self

    def finish(self) -> Episode | None:
        """The episode as a trajectory line (appended to the router's log if it has one)."""
        meta = {"benchmark": "scienceworld", "task": self.task, "variation": self.variation,
                "base_id": str(self.session.episode_id), "initial_score": self.session.initial_score,
                "split": self.split, "steps": self.session.steps, "terminated": self.terminated,
                "ended_by": self.ended_by or ("task" if self.terminated else None)}
        return self.live.finish(self.score, SCORE_RANGE, meta)


__all__ = ["RoutedEpisode", "ReplayMismatch", "LiveChatBackend", "TurnResult", "TOOLS", "SCORE_RANGE",
           "DEFAULT_STEP_LIMIT"]
