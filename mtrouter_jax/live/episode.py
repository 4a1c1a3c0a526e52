"""One live conversation: ``decide``/``choose`` before each call, ``record`` after it, ``finish`` at the end.

Every decision applies the router's ``routing`` policy (the same function the simulator rolls out)
to the episode's summary and this turn's ``TurnInputs``, draws the model with the conversation's
own seed, and remembers the exact probability of the draw: that is the turn's logged
``propensity``. A fallback after an upstream failure is a fresh decision with the failed models
excluded from the allowed set, so its propensity is the probability of the served model given the
models still available (``meta.fallbacks`` lists what failed before it).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mtrouter_jax.routing import policies as routing
from mtrouter_jax.core.features import HistorySummary, vocab_index
from mtrouter_jax.live.kernel import decision_kernel, evaluate_on_host, lam_ok, pack_row, policy_fn, unpack_decision
from mtrouter_jax.live import summary_words as words
from mtrouter_jax.live.accounting import BudgetExhausted, parse_usage
from mtrouter_jax.logs.io import Episode, TurnError, append_episodes
from mtrouter_jax.core.pricing import call_cost
from mtrouter_jax.live.turns import Decision, PreparedDecision, TurnRecord, logged_turns

if TYPE_CHECKING:  # the router builds episodes; an episode only reads its router's fields
    from mtrouter_jax.live.router import Router

log = logging.getLogger("mtrouter_jax.live")
_EPS_USD = 1e-12  # float slack in budget comparisons


class LiveEpisode:
    """One conversation: choose() before each call, record() after it, finish() at the end."""

    def __init__(self, router: Router, episode_id: str, task_type: str, budget: float | None,
                 lam: float, context_tokens: float = 0.0, explore: bool = False, seed: int = 0):
        if budget is not None:
            if isinstance(budget, bool) or not np.isfinite(budget) or budget <= 0:
                raise ValueError(f"budget must be a finite number > 0 USD (or None), got {budget!r}")
            budget = float(budget)
        if not lam_ok(lam):
            raise ValueError(f"lam must be a finite number >= 0 in float32, got {lam}")
        self.router, self.episode_id, self.task_type = router, episode_id, task_type
        self.budget, self.lam = budget, float(lam)
        self.explore, self.seed = bool(explore), int(seed)
        self.policy = router.explore_policy if explore else router.policy
        self._params = routing.set_lam(self.policy.params, np.float32(self.lam))
        self._learned_params = (routing.set_lam(router.learned_policy.params, np.float32(self.lam))
                                if router.learned_policy is not None else {})
        self._decide = policy_fn(self.policy.dist, router.learned_policy is not None)
        # the fused one-call kernel (live/kernel.py), looked up once per episode, not per decision
        self._kernel = self._kernel_key = None
        if router.fused and (router._forward is not None or router.estimator is None):
            fwd, _, treedef = router._forward if router._forward is not None else (None, (), None)
            self._kernel_key = (router.layout, self.policy.dist, router.learned_policy is not None, fwd, treedef,
                                router.future_cost)
            self._kernel = decision_kernel(*self._kernel_key, len(router.pool))
        self.lock = threading.Lock()  # callers (the server) hold it across choose/call/record
        task = int(vocab_index(router.layout.task_types, [task_type])[0])
        # the summary as host words (live/summary_words.py); _readvance re-derives it from the two below
        self._words = words.initial_words(task, context_tokens, np.inf if budget is None else budget)
        self._before_words: np.ndarray | None = None
        self._last_args: tuple | None = None
        self.turns: list[TurnRecord] = []
        self.spent, self.tokens, self.last_prompt, self.last_completion = 0.0, 0, 0, 0
        self.last_decision: Decision | None = None
        self.ended: str | None = None  # why the episode ended (None: still open)
        self.finished = False
        self.started, self.nonfinite_decisions = time.time(), 0
        self.pending_draft: dict | None = None  # a billed draft the next record() folds in (live/draft.py)
        # set by the proxy's arms (live/server/arms.py): "canary"/"control" under --canary; under
        # --shadow the candidate's mirrored episode (None once lost: ``shadow_missing`` says why)
        self.arm: str | None = None
        self.shadow: LiveEpisode | None = None
        self.shadow_missing: str | None = None

    # ------------------------------------------------------------------ state
    @property
    def summary(self) -> HistorySummary:
        """The history summary (host leaves: views of the episode's words)."""
        return words.unpack(self._words)

    @summary.setter
    def summary(self, s: HistorySummary) -> None:
        self._words = words.pack(s)

    @property
    def remaining(self) -> float | None:
        """USD left (None when there is no budget)."""
        return None if self.budget is None else max(self.budget - self.spent, 0.0)

    @property
    def prev_model(self) -> str | None:
        return self.turns[-1].model if self.turns else None

    def features(self) -> np.ndarray:
        """(F,) float32 features: the summary's, then (if the checkpoint has them) the embedding of
        the latest observation, as in training."""
        x = np.asarray(self.router._feats(self.summary))
        return np.concatenate([x, self._text()]) if self.router.text_dim else x

    def worst_costs(self, input_tokens_hi: float, completion_tokens=None) -> np.ndarray:
        """(M,) worst-case USD cost of this turn for each model (or, with ``completion_tokens``
        per model, the cost at that completion length)."""
        r = self.router
        inp = np.full(len(r.pool), float(input_tokens_hi))
        cached = np.zeros(len(r.pool))
        if r.assume_cache_hits and self.turns:
            i = r.pool.index(self.turns[-1].model)
            cached[i] = min(self.last_prompt + self.last_completion, input_tokens_hi)
        out = r.output_tokens_hi if completion_tokens is None else completion_tokens
        return call_cost(inp, cached, out, r.price_in, r.price_cached, r.price_out)

    # ------------------------------------------------------------------ decisions
    def decide(self, input_tokens_hi: float | None = None, context_tokens: float | None = None,
               lam: float | None = None, exclude: Sequence[str] = ()) -> Decision:
        """Draw the model of the next call from the policy; raises BudgetExhausted when none fits.

        Args:
            input_tokens_hi: upper bound on this call's input tokens (default: the last call's
                prompt + completion, i.e. the context before any new messages).
            context_tokens: estimate of this call's input tokens for the features.
            lam: override the episode's λ for this decision (learned policy).
            exclude: models not to consider (e.g. ones that just failed): the decision is then a
                fallback, drawn among the models still allowed.
        """
        prep = self.prepare_decision(input_tokens_hi, context_tokens, lam, exclude)
        return self.complete_decision(prep, self.evaluate(prep))

    def prepare_decision(self, input_tokens_hi: float | None = None, context_tokens: float | None = None,
                         lam: float | None = None, exclude: Sequence[str] = ()) -> PreparedDecision:
        """``decide`` up to the evaluation: the hard budget rule (raises ``BudgetExhausted``) and the
        evaluation's inputs. ``evaluate`` (or a ``batch_kernel`` row) then ``complete_decision``
        finish it; ``decide`` is the three in a row."""
        t0 = time.perf_counter()
        r = self.router
        if self.ended:
            raise BudgetExhausted(self.ended)
        base = float(self.last_prompt + self.last_completion)
        if context_tokens is not None and float(context_tokens) != self._context_tokens():
            self._words = words.with_context(self._words, context_tokens)
        hi = max(base, self._context_tokens()) if input_tokens_hi is None else float(input_tokens_hi)
        worst = self.worst_costs(hi)
        expected = self.worst_costs(hi, r.output_tokens_mean)
        # the hard rule in float64 (the guarantee must not hinge on float32) and the strict cap:
        # a model affordable only thanks to an assumed cache hit that may not happen is not allowed
        allowed = np.ones(len(r.pool), bool) if self.budget is None else self.spent + worst <= self.budget + _EPS_USD
        caps = {i: self._cap(i, hi) for i in range(len(r.pool))}
        allowed &= np.array([caps[i] != 0 for i in range(len(r.pool))])
        for name in exclude:
            allowed[r.pool.index(name)] = False
        if not allowed.any():
            if exclude and (self.budget is None or (self.spent + worst <= self.budget + _EPS_USD).any()):
                raise BudgetExhausted(f"no model left to try for episode {self.episode_id!r} "
                                      f"(all affordable models failed: {list(exclude)})")
            self.ended = (f"budget exhausted: episode {self.episode_id!r} spent ${self.spent:.6f} of "
                          f"${self.budget:.6f}; the cheapest next turn could cost up to ${float(worst.min()):.6f}")
            raise BudgetExhausted(self.ended)
        remaining = np.inf if self.budget is None else self.budget - self.spent + _EPS_USD
        params, lparams = self._params, self._learned_params
        if lam is not None and not lam_ok(lam):
            raise ValueError(f"lam must be a finite number >= 0 in float32, got {lam}")
        if lam is not None and float(lam) != self.lam:
            params = routing.set_lam(params, np.float32(lam))
            lparams = routing.set_lam(lparams, np.float32(lam))
        turn = (np.int32(self.seed), np.int32(len(self.turns)), np.int32(len(exclude)))
        args = (np.float32(worst), np.float32(expected), np.float32(remaining), allowed, params, lparams, turn)
        return PreparedDecision(t0, hi, worst, expected, allowed, caps, tuple(exclude), args,
                                np.float32(self.lam if lam is None else lam))

    def evaluate(self, prep: PreparedDecision) -> tuple:
        """(features, score, cost_norm, member scores, policy outputs or None) of a prepared decision."""
        return self._evaluate_fused(prep) if self._kernel is not None else evaluate_on_host(self, *prep.args)

    def unpack(self, out) -> tuple:
        """``evaluate``'s result from one kernel output vector."""
        r = self.router
        feats, score, cost_norm, member, probs, a, p, values = unpack_decision(
            out, r.layout.n_features + r.text_dim, len(r.pool))
        return feats, score, cost_norm, member, (probs, a, p, values)

    def complete_decision(self, prep: PreparedDecision, evaluated: tuple) -> Decision:
        """The ``Decision`` from an evaluation (raises ``BudgetExhausted`` when the policy's model
        does not fit); it becomes ``last_decision``."""
        r = self.router
        t0, hi, worst, expected, allowed, caps, exclude = prep[:7]
        feats, score, cost_norm, member, policy_out = evaluated
        meta: dict = {}
        if not (np.isfinite(score).all() and np.isfinite(cost_norm).all() and np.isfinite(member).all()):
            model_i, prop, probs, values = self._nonfinite_choice(allowed, expected)
            meta["nonfinite_fallback"] = True
        else:
            probs, a, p, values = policy_out
            probs, values, model_i, prop = np.asarray(probs), np.asarray(values), int(a), float(p)
        if not allowed[model_i]:  # a fixed model that no longer fits (or just failed)
            if exclude:
                raise BudgetExhausted(f"no model left to try for episode {self.episode_id!r}: the policy "
                                      f"{self.policy.spec!r} only serves {r.pool.names[model_i]!r}, which failed")
            self.ended = (f"budget exhausted: episode {self.episode_id!r} spent ${self.spent:.6f} of "
                          f"${self.budget:.6f}; a {r.pool.names[model_i]} turn could cost up to "
                          f"${float(worst[model_i]):.6f} (policy {self.policy.spec!r})")
            raise BudgetExhausted(self.ended)
        others = sorted((i for i in range(len(r.pool)) if allowed[i] and i != model_i),
                        key=lambda i: (-probs[i], -values[i], i))
        order = [model_i] + others
        if exclude:
            meta["fallback_for"] = list(exclude)
        if float(probs.max()) < 1.0 - 1e-6:  # a stochastic choice: the whole distribution, for off-policy use
            meta["probs"] = [round(float(x), 7) for x in probs]
        if not allowed.all():
            meta["allowed"] = [r.pool.names[i] for i in np.flatnonzero(allowed)]
        d = Decision(r.pool.names[model_i], prop, tuple(r.pool.names[i] for i in order), values, probs,
                     allowed, worst, {r.pool.names[i]: caps[i] for i in order}, feats,
                     time.perf_counter() - t0, meta)
        self.last_decision = d  # record() logs its propensity when the call goes to d.model
        return d

    def _context_tokens(self) -> float:
        """``summary.context_tokens`` as a float."""
        return words.context_of(self._words)

    def _text(self) -> np.ndarray:
        """(T,) embedding of the latest observation (zeros without one; (0,) without text features)."""
        r = self.router
        obs = self.turns[-1].observation if self.turns else None
        if not r.text_dim or r.text_encoder is None or not obs:
            return np.zeros(r.text_dim, np.float32)
        return np.asarray(r.text_encoder.encode([obs]), np.float32).reshape(-1)

    def decision_row(self, prep: PreparedDecision) -> tuple:
        """The kernel row of a prepared decision (``kernel.pack_row``)."""
        worst, expected, remaining, allowed, _, _, turn = prep.args
        return pack_row(self._words, self._text(), worst, expected, remaining, allowed, prep.lam, *turn)

    def kernel_shared(self) -> tuple:
        """(estimator leaves, cost scale, zero, policy params, learned params): the kernel arguments
        every row of this router and policy shares (λ is set per row, in the kernel)."""
        r = self.router
        lparams = r.learned_policy.params if r.learned_policy is not None else {}
        leaves = r._forward[1] if r._forward is not None else ()
        return leaves, np.float32(r.cost_scale), np.int32(0), self.policy.params, lparams

    def _evaluate_fused(self, prep: PreparedDecision):
        """Features, estimator outputs and the policy's draw in one jitted call (live/kernel.py)."""
        return self.unpack(self._kernel(*self.kernel_shared(), self.decision_row(prep)))

    def _nonfinite_choice(self, allowed, expected):
        """Safe choice when the estimator returned NaN/inf: the previous model if allowed, else the
        cheapest allowed one (propensity 1: a deterministic rule)."""
        r = self.router
        prev = r.pool.index(self.prev_model) if self.turns else -1
        i = prev if prev >= 0 and allowed[prev] else int(np.flatnonzero(allowed)[np.argmin(expected[allowed])])
        self.nonfinite_decisions += 1
        log.error("episode %s: the estimator predicted non-finite values at turn %d; routing to %s "
                  "(previous model if affordable, else the cheapest)", self.episode_id, len(self.turns),
                  r.pool.names[i])
        probs = np.zeros(len(r.pool), np.float32)
        probs[i] = 1.0
        return i, 1.0, probs, probs

    def completion_cap(self, model: str, input_tokens_hi: float) -> int | None:
        """Largest completion that keeps this turn within budget even with no cache hit at all.

        None: no cap needed (no budget, or the cap exceeds the model's output limit); 0: not even
        one output token fits.
        """
        return self._cap(self.router.pool.index(model), float(input_tokens_hi))

    def _cap(self, i: int, input_hi: float) -> int | None:
        r = self.router
        if self.budget is None or r.price_out[i] <= 0:
            return None
        left = self.budget - self.spent - input_hi * r.price_in[i]  # strict: no cache assumed
        cap = int(np.floor(left / r.price_out[i] * (1 - 1e-9)))
        if cap < 1:
            return 0
        return None if cap >= r.max_output[i] else cap

    def choose(self, **kwargs) -> str:
        """Model for the next call (see :meth:`decide`); ``record`` logs its propensity."""
        return self.decide(**kwargs).model

    # ------------------------------------------------------------------ recording
    def record(self, model: str, usage: Any, tool_name: str | None = None,
               observation: str | None = None, action: str | None = None,
               propensity: float | None | str = "decision", meta: dict | None = None,
               next_context_tokens: float | None = None, progress: float | None = None) -> float:
        """Account one executed call and advance the summary; returns its USD cost.

        ``usage`` is an OpenAI usage (dict or object) with ``prompt_tokens``,
        ``completion_tokens`` and ``prompt_tokens_details.cached_tokens``. ``tool_name`` is the
        (first) tool call the model emitted; ``observation`` the result text, if already known
        (otherwise use :meth:`attach_observation` when it arrives). ``propensity``: by default the
        last decision's, when it chose ``model`` (None for a call the router did not decide).
        """
        r = self.router
        mi = r.pool.index(model)
        d = self.last_decision if self.last_decision is not None and self.last_decision.model == model else None
        if propensity == "decision":
            propensity = d.propensity if d is not None else None
        prompt, cached, completion = parse_usage(usage)
        cost = r.turn_cost(model, prompt, cached, completion)
        ttype, tidx = r.tool_of(tool_name)
        error = r.rules.detect(observation)
        if not r.log_text:  # text that will not be logged is not kept: only what the features read
            action = None
            observation = observation if r.text_dim else None
            if self.turns:
                self.turns[-1].observation = None
        feats = None
        if r.log_features and self.last_decision is not None:
            feats = tuple(np.asarray(self.last_decision.features).tolist())  # Python floats, one call
        turn_meta = {**(d.meta if d is not None else {}), **(meta or {})}
        spent = cost
        if self.pending_draft is not None:  # already in spent/tokens; the logged turn carries its cost
            turn_meta["draft"] = self.pending_draft
            cost += self.pending_draft["cost"]
            self.pending_draft = None
        rec = TurnRecord(model, prompt, cached, completion, cost, ttype, tidx, error, propensity,
                       observation, action, feats, turn_meta, progress)
        ctx = float(prompt + completion) if next_context_tokens is None else float(next_context_tokens)
        self._before_words = self._words
        self._last_args = (np.int32(mi), np.int32(tidx), np.float32(prompt), np.float32(completion),
                           np.float32(cost), np.float32(ctx))
        self.turns.append(rec)
        self.spent += spent
        self.tokens += prompt + completion
        self.last_prompt, self.last_completion = prompt, completion
        self._readvance()
        self.last_decision = None
        return cost

    def _readvance(self) -> None:
        rec = self.turns[-1]
        m, tool, inp, out, cost, ctx = self._last_args
        kind, sev = self.router.error_of(rec.error)
        self._words = words.advance_words(self._before_words, m, tool, kind, sev, inp, out, cost, ctx)

    def attach_observation(self, text: str | None) -> TurnError | None:
        """Set the last turn's observation (its tool result) and re-derive its error/summary."""
        if not self.turns or text is None:
            return None
        rec = self.turns[-1]
        r = self.router
        rec.observation = text if r.log_text or r.text_dim else None  # kept only when logged or embedded
        err = self.router.rules.detect(text)
        if err != rec.error:
            rec.error = err
            self._readvance()
        return err

    def info(self) -> dict:
        """JSON-able status: spend, budget, turns, models used."""
        return {"episode_id": self.episode_id, "task_type": self.task_type, "budget": self.budget,
                "spent": self.spent, "remaining": self.remaining, "turns": len(self.turns),
                "tokens": self.tokens, "models": [t.model for t in self.turns],
                "errors": sum(t.error is not None for t in self.turns),
                "ended": self.ended, "finished": self.finished, "lam": self.lam,
                "policy": self.policy.spec, "explore": self.explore, "seed": self.seed}

    def to_episode(self, score: float | None = None,
                   score_range: Sequence[float] | None = None, meta: dict | None = None) -> Episode:
        """The episode as a ``logs.Episode`` (an unknown score is logged as such: ``score=None``)."""
        turns = logged_turns(self.turns, self.router.log_text)
        m = {"lam": self.lam, "router": "mtrouter-jax live", "policy": self.policy.spec,
             "explore": self.explore, "seed": self.seed, "started": self.started, **(meta or {})}
        if self.ended:
            m["ended"] = self.ended
        # an unknown score is logged as such (``score: null``, schema v2)
        return Episode(self.episode_id, self.task_type, None if score is None else float(score), self.budget,
                       self.router.pool.names, turns,
                       None if score_range is None else tuple(float(x) for x in score_range), "live", m)

    def finish(self, score: float | None = None, score_range: Sequence[float] | None = None,
               meta: dict | None = None) -> Episode | None:
        """End the episode and append it to the router's log (atomically); None if no turns."""
        if self.finished:
            raise RuntimeError(f"episode {self.episode_id!r} already finished")
        if score is not None and (isinstance(score, bool) or not np.isfinite(score)):
            raise ValueError(f"score must be a finite number, got {score!r}")
        if score_range is not None:
            if len(score_range) != 2 or not score_range[0] < score_range[1]:
                raise ValueError(f"score_range must be [lo, hi] with lo < hi, got {score_range!r}")
            if score is not None and not score_range[0] <= score <= score_range[1]:
                raise ValueError(f"score {score} outside score_range {list(score_range)}")
        if not self.turns:
            self.finished = True
            return None
        ep = self.to_episode(score, score_range, meta)
        if self.router.log_path is not None:  # a failed write (OSError) leaves the episode open: retry
            append_episodes(self.router.log_path, ep)
        self.finished = True
        return ep


__all__ = ["LiveEpisode", "Decision"]
