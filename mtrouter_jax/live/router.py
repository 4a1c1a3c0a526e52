"""Live routing library: a trained outcome estimator picks the model of every turn (no HTTP here).

``Router`` holds the estimator, the pool used for accounting and the tool/error rules;
``LiveEpisode`` keeps one conversation's ``HistorySummary`` (in the checkpoint layout's vocabulary),
its spend and its turn records, chooses the next model under a hard per-episode budget and writes
the finished episode as a ``mtrouter-traj/1`` line (``source="live"``) so it becomes training data.

Decision rule (the learned policy of ``policy.py``, through the same functions): among models
the budget allows (``policy.budget_allowed``: the worst-case cost of this turn fits the remaining
budget and, with pacing, the model could finish the episode at its pace), the highest
``policy.decision_values`` (``score - lam * remaining_cost / cost_scale`` plus the switch margin
on the previous model), ties to the lowest pool index. Worst case = input tokens (upper bound) at the input price, except the prefix
cached by the model that served the previous turn (at the cached price, unless
``assume_cache_hits=False``), plus ``output_tokens_hi`` at the output price. The completion cap
returned with each decision is computed *without* any cache assumption, so a turn stays within
the remaining budget even if the cache misses and the model talks longer than
``output_tokens_hi`` (given that the input-token bound holds); a model whose uncached input alone
no longer fits is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtrouter_jax.detect import ErrorRuleSet, ToolTypeMap, default_rules, default_tool_map
from mtrouter_jax.features import (NO_VALUE, FeatureLayout, HistorySummary, advance_summary,
                                   history_features, initial_summary, vocab_index)
from mtrouter_jax.logs import SEVERITIES, Episode, Turn, TurnError, append_episodes
from mtrouter_jax.policy import DEFAULT_SWITCH_MARGIN, expected_steps_for, learned_rule
from mtrouter_jax.pool import Pool, PoolError, load_pool
from mtrouter_jax.sim.core import call_cost

log = logging.getLogger("mtrouter_jax.live")

# Tool types the live tool map produces that a simulator-trained vocabulary may lack.
TOOL_ALIASES = {"browse": "search", "bash": "python"}
_EPS_USD = 1e-12  # float slack in budget comparisons


class Estimator(Protocol):
    """What the router needs from ``checkpoint.LoadedEstimator`` (tests use a fake)."""

    layout: FeatureLayout
    pool: Pool
    meta: dict
    cost_scale: float
    output_tokens_hi: np.ndarray  # (M,)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class BudgetExhausted(RuntimeError):
    """No model's worst-case cost for the next turn fits the remaining budget; the episode ended."""


class PoolMismatchError(PoolError):
    """The pool passed to the router does not match the checkpoint's (names or order)."""


@lru_cache(maxsize=None)
def _compiled(layout: FeatureLayout):
    """One jitted (features, advance) pair per layout (layout is hashable, hence static)."""
    feats = jax.jit(lambda s: history_features(s, layout))
    return feats, jax.jit(advance_summary)


# the simulated policy's rule in one jitted call: eager jnp ops on 6-element arrays would cost more
# than the estimator itself
_decision_rule = jax.jit(learned_rule)


def _usage_get(usage: Any, key: str, default=0):
    if usage is None:
        return default
    v = usage.get(key, default) if isinstance(usage, Mapping) else getattr(usage, key, default)
    return default if v is None else v


def parse_usage(usage: Any) -> tuple[int, int, int]:
    """(prompt, cached, completion) tokens of an OpenAI ``usage`` (dict or object)."""
    prompt = int(_usage_get(usage, "prompt_tokens"))
    completion = int(_usage_get(usage, "completion_tokens"))
    details = _usage_get(usage, "prompt_tokens_details", None)
    cached = int(_usage_get(details, "cached_tokens")) if details is not None else 0
    return prompt, min(max(cached, 0), prompt), completion


def check_pool(ckpt_pool_names: Sequence[str], pool: Pool) -> None:
    """Raise PoolMismatchError unless ``pool`` has exactly the checkpoint's models in order."""
    want, got = tuple(ckpt_pool_names), pool.names
    if want == got:
        return
    missing = [n for n in want if n not in got]
    extra = [n for n in got if n not in want]
    parts = []
    if missing:
        parts.append(f"missing from the pool: {missing}")
    if extra:
        parts.append(f"not in the checkpoint: {extra}")
    if not parts:
        parts.append(f"same models in a different order: checkpoint {list(want)}, pool {list(got)}")
    raise PoolMismatchError(f"pool {pool.name!r} does not match the checkpoint's models "
                            f"({'; '.join(parts)}); the pool order defines the action indices")


@dataclass(frozen=True)
class Decision:
    """One routing decision; ``ranking`` lists the affordable models best first (fallback order)."""

    model: str
    propensity: float
    ranking: tuple[str, ...]
    values: np.ndarray  # (M,) score - lam * remaining_cost / cost_scale
    worst_cost: np.ndarray  # (M,) USD, worst case of this turn
    max_output_tokens: dict[str, int | None]  # completion cap per ranked model (None = no cap needed)
    features: np.ndarray  # (F,)
    seconds: float  # time spent deciding


@dataclass
class _TurnRec:
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


class Router:
    """Routes the turns of many concurrent episodes with one estimator (thread-safe per episode)."""

    def __init__(self, estimator: Estimator, pool: Pool | str | Path | None = None, lam: float = 1.0,
                 tool_map: ToolTypeMap | None = None, rules: ErrorRuleSet | None = None,
                 log_path: str | Path | None = None, *, log_text: bool = False,
                 log_features: bool = True, assume_cache_hits: bool = True,
                 default_max_output: int = 131_072, text_encoder: Any = None,
                 switch_margin: float = DEFAULT_SWITCH_MARGIN, pacing: bool = True):
        """Args:
            estimator: a ``LoadedEstimator`` (or anything with the same interface).
            pool: pool for prices and endpoints (a Pool or a pool-file path); its model names must
                equal the checkpoint's, in order. ``None`` uses the checkpoint's pool.
            lam: cost weight λ of the decision rule (the paper's 1.0).
            tool_map, rules: tool-name → tool-type map and error rules (defaults from detect.py).
            log_path: JSONL file finished episodes are appended to (None: not logged).
            log_text: also log observations and actions (off by default: they may be private).
            assume_cache_hits: price the previous model's cached prefix at the cached price in the
                worst case (as the simulator does); False gives a strict, cache-agnostic bound.
            default_max_output: completion limit assumed for a model without ``max_output_k``.
            text_encoder: encoder of the latest observation for checkpoints trained with text
                features (``text_dim > 0``); default: rebuilt from the checkpoint's config.
            switch_margin: bonus of the previous model in normalised score units (as in simulation).
            pacing: budget pacing with the checkpoint's expected episode lengths (as in simulation).
        """
        self.estimator = estimator
        self.layout: FeatureLayout = estimator.layout
        ck_names = tuple(estimator.pool.names)
        if tuple(self.layout.models) != ck_names:
            check_pool(self.layout.models, estimator.pool)
        if isinstance(pool, (str, Path)):
            pool = load_pool(pool)
        self.pool: Pool = estimator.pool if pool is None else pool
        check_pool(ck_names, self.pool)
        if not np.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        self.lam = float(lam)
        self.switch_margin, self.pacing = float(switch_margin), bool(pacing)
        self.tool_map = tool_map or default_tool_map()
        self.rules = rules or default_rules()
        self.log_path = None if log_path is None else Path(log_path)
        self.log_text, self.log_features = log_text, log_features
        self.assume_cache_hits = assume_cache_hits
        self.cost_scale = float(estimator.cost_scale)
        if not self.cost_scale > 0:
            raise ValueError(f"estimator cost_scale must be > 0, got {self.cost_scale}")
        m = self.pool.models
        self.price_in = np.array([s.price_input for s in m]) / 1e6  # USD / token
        self.price_cached = np.array([s.price_cached_input for s in m]) / 1e6
        self.price_out = np.array([s.price_output for s in m]) / 1e6
        hi = np.asarray(estimator.output_tokens_hi, np.float64).reshape(-1)
        if hi.shape != (len(m),):
            raise PoolMismatchError(f"checkpoint output_tokens_hi has {hi.shape[0]} entries, pool has {len(m)} models")
        self.output_tokens_hi = hi
        # checkpoints whose cost head excludes this turn ("future") need this turn's expected cost
        self.future_cost = getattr(estimator, "cost_target", "remaining") == "future"
        self.output_tokens_mean = np.asarray(getattr(estimator, "output_tokens_mean", hi), np.float64).reshape(-1)
        self.max_output = np.array([s.attributes.get("max_output_k", default_max_output / 1000) * 1000
                                    for s in m])
        self._feats, self._advance = _compiled(self.layout)
        self.text_dim = int(getattr(estimator, "text_dim", 0) or 0)
        self.text_encoder = text_encoder
        if self.text_dim and text_encoder is None:
            cfg = getattr(estimator, "text_encoder_config", None)
            if cfg:
                from mtrouter_jax.text_embed import make_text_encoder
                self.text_encoder = make_text_encoder(cfg)
            else:
                log.warning("checkpoint expects %d text features but names no encoder: using zeros "
                            "(as in simulation)", self.text_dim)
        if self.text_encoder is not None and int(self.text_encoder.dim) != self.text_dim:
            raise ValueError(f"text encoder dim {self.text_encoder.dim} != checkpoint text_dim {self.text_dim}")
        self._tool_cache: dict[str | None, tuple[str, int]] = {}
        self._tool_lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str | Path, pool: Pool | str | Path | None = None, lam: float = 1.0,
                        tool_map: ToolTypeMap | None = None, rules: ErrorRuleSet | None = None,
                        log_path: str | Path | None = None, **kwargs) -> "Router":
        """Load a checkpoint with ``checkpoint.load_checkpoint`` (on CPU) and build a router."""
        from mtrouter_jax.checkpoint import load_checkpoint  # lazy: pulls in orbax
        return cls(load_checkpoint(path), pool, lam, tool_map, rules, log_path, **kwargs)

    # ------------------------------------------------------------------ vocab mapping
    def tool_of(self, tool_name: str | None) -> tuple[str, int]:
        """(tool type, layout tool index) of a tool-call name; unseen types -> "other" bucket."""
        hit = self._tool_cache.get(tool_name)
        if hit is not None:
            return hit
        ttype = self.tool_map.classify(tool_name)
        vocab = self.layout.tools
        key = ttype
        if ttype not in vocab and TOOL_ALIASES.get(ttype) in vocab:
            key = TOOL_ALIASES[ttype]
        out = (ttype, int(vocab_index(vocab, [key])[0]))
        with self._tool_lock:
            if len(self._tool_cache) < 4096:
                self._tool_cache[tool_name] = out
        return out

    def error_of(self, error: TurnError | None) -> tuple[int, int]:
        """(layout error-kind index, severity index) of a detected error; (-1, -1) for none."""
        if error is None:
            return NO_VALUE, NO_VALUE
        return int(vocab_index(self.layout.error_kinds, [error.kind])[0]), SEVERITIES.index(error.severity)

    def turn_cost(self, model: str, prompt: int, cached: int, completion: int) -> float:
        """USD cost of a turn from the pool's prices (never the provider's ``usage.cost``)."""
        i = self.pool.index(model)
        return float(call_cost(prompt, cached, completion, self.price_in[i], self.price_cached[i], self.price_out[i]))

    def start_episode(self, episode_id: str | None = None, task_type: str | None = None,
                      budget: float | None = None, lam: float | None = None,
                      context_tokens: float = 0.0) -> "LiveEpisode":
        """New episode; ``budget`` in USD (None = unlimited, must be > 0 otherwise)."""
        return LiveEpisode(self, episode_id or uuid.uuid4().hex, task_type or "other", budget,
                           self.lam if lam is None else lam, context_tokens)


class LiveEpisode:
    """One conversation: choose() before each call, record() after it, finish() at the end."""

    def __init__(self, router: Router, episode_id: str, task_type: str, budget: float | None,
                 lam: float, context_tokens: float = 0.0):
        if budget is not None:
            if isinstance(budget, bool) or not np.isfinite(budget) or budget <= 0:
                raise ValueError(f"budget must be a finite number > 0 USD (or None), got {budget!r}")
            budget = float(budget)
        if not np.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        self.router, self.episode_id, self.task_type = router, episode_id, task_type
        self.budget, self.lam = budget, float(lam)
        self.lock = threading.Lock()  # callers (the server) hold it across choose/call/record
        task = int(vocab_index(router.layout.task_types, [task_type])[0])
        self.expected_steps = float(expected_steps_for(getattr(router.estimator, "meta", None), [task_type])[0])
        self.summary: HistorySummary = initial_summary(
            np.int32(task), np.float32(context_tokens), np.float32(np.inf if budget is None else budget))
        self._before_last: HistorySummary | None = None
        self._last_args: tuple | None = None
        self.turns: list[_TurnRec] = []
        self.spent = 0.0
        self.tokens = 0
        self.last_prompt = 0
        self.last_completion = 0
        self.last_decision: Decision | None = None
        self.ended: str | None = None  # why the episode ended (None: still open)
        self.finished = False
        self.started = time.time()

    # ------------------------------------------------------------------ state
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
        r = self.router
        x = np.asarray(r._feats(self.summary))
        if not r.text_dim:
            return x
        obs = self.turns[-1].observation if self.turns else None
        if r.text_encoder is None or not obs:
            t = np.zeros(r.text_dim, np.float32)
        else:
            t = np.asarray(r.text_encoder.encode([obs]), np.float32).reshape(-1)
        return np.concatenate([x, t])

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
        """Rank affordable models by the decision value; raises BudgetExhausted when none fits.

        Args:
            input_tokens_hi: upper bound on this call's input tokens (default: the last call's
                prompt + completion, i.e. the context before any new messages).
            context_tokens: estimate of this call's input tokens for the features.
            lam: override the episode's λ for this decision.
            exclude: models not to consider (e.g. ones that just failed).
        """
        t0 = time.perf_counter()
        r = self.router
        if self.ended:
            raise BudgetExhausted(self.ended)
        base = float(self.last_prompt + self.last_completion)
        if context_tokens is not None and float(context_tokens) != float(self.summary.context_tokens):
            self.summary = self.summary.replace(context_tokens=jnp.asarray(context_tokens, jnp.float32))
        hi = max(base, float(self.summary.context_tokens)) if input_tokens_hi is None else float(input_tokens_hi)
        feats = self.features()
        if r.future_cost:
            score, rem_cost = r.estimator.predict(feats, turn_cost=self.worst_costs(hi, r.output_tokens_mean))
        else:
            score, rem_cost = r.estimator.predict(feats)
        lam = self.lam if lam is None else float(lam)
        prev = r.pool.index(self.prev_model) if self.turns else -1
        worst = self.worst_costs(hi)
        n = len(self.turns)
        remaining = np.inf if self.budget is None else self.budget - self.spent + _EPS_USD
        values, ok = _decision_rule(
            np.asarray(score, np.float32), np.asarray(rem_cost, np.float32) / r.cost_scale, lam, prev,
            r.switch_margin, worst, self.worst_costs(hi, r.output_tokens_mean), remaining, hi, n,
            self.expected_steps - n - 1, r.price_cached, r.price_out, r.output_tokens_mean, r.pacing)
        values, ok = np.asarray(values), np.array(ok)  # a writable mask: exclusions are applied below
        if self.budget is not None:  # the hard rule once more in float64: the guarantee must not hinge on float32
            ok &= self.spent + worst <= self.budget + _EPS_USD
        for name in exclude:
            ok[r.pool.index(name)] = False
        order = [int(i) for i in np.argsort(-values, kind="stable") if ok[i]]
        if not order:
            if exclude and (self.budget is None or (self.spent + worst <= self.budget + _EPS_USD).any()):
                raise BudgetExhausted(f"no model left to try for episode {self.episode_id!r} "
                                      f"(all affordable models failed: {list(exclude)})")
            cheapest = float(worst.min())
            self.ended = (f"budget exhausted: episode {self.episode_id!r} spent ${self.spent:.6f} of "
                          f"${self.budget:.6f}; the cheapest next turn could cost up to ${cheapest:.6f}")
            raise BudgetExhausted(self.ended)
        caps: dict[str, int | None] = {}
        for i in list(order):
            cap = self._cap(i, hi)
            if cap == 0:  # affordable only thanks to an assumed cache hit that may not happen
                order.remove(i)
            else:
                caps[r.pool.models[i].name] = cap
        if not order:
            self.ended = (f"budget exhausted: episode {self.episode_id!r} spent ${self.spent:.6f} of "
                          f"${self.budget:.6f}; no model's uncached input fits the rest")
            raise BudgetExhausted(self.ended)
        return Decision(r.pool.models[order[0]].name, 1.0, tuple(r.pool.models[i].name for i in order),
                        values, worst, caps, feats, time.perf_counter() - t0)

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
        """Model for the next call (greedy, propensity 1.0); see :meth:`decide` for arguments."""
        self.last_decision = self.decide(**kwargs)
        return self.last_decision.model

    # ------------------------------------------------------------------ recording
    def record(self, model: str, usage: Any, tool_name: str | None = None,
               observation: str | None = None, action: str | None = None,
               propensity: float | None = 1.0, meta: dict | None = None,
               next_context_tokens: float | None = None) -> float:
        """Account one executed call and advance the summary; returns its USD cost.

        ``usage`` is an OpenAI usage (dict or object) with ``prompt_tokens``,
        ``completion_tokens`` and ``prompt_tokens_details.cached_tokens``. ``tool_name`` is the
        (first) tool call the model emitted; ``observation`` the result text, if already known
        (otherwise use :meth:`attach_observation` when it arrives).
        """
        r = self.router
        mi = r.pool.index(model)
        prompt, cached, completion = parse_usage(usage)
        cost = r.turn_cost(model, prompt, cached, completion)
        ttype, tidx = r.tool_of(tool_name)
        error = r.rules.detect(observation)
        feats = None
        if r.log_features and self.last_decision is not None:
            feats = tuple(float(x) for x in self.last_decision.features)
        rec = _TurnRec(model, prompt, cached, completion, cost, ttype, tidx, error, propensity,
                       observation, action, feats, dict(meta or {}))
        ctx = float(prompt + completion) if next_context_tokens is None else float(next_context_tokens)
        self._before_last = self.summary
        self._last_args = (np.int32(mi), np.int32(tidx), np.float32(prompt), np.float32(completion),
                           np.float32(cost), np.float32(ctx))
        self.turns.append(rec)
        self.spent += cost
        self.tokens += prompt + completion
        self.last_prompt, self.last_completion = prompt, completion
        self._readvance()
        self.last_decision = None
        return cost

    def _readvance(self) -> None:
        rec = self.turns[-1]
        m, tool, inp, out, cost, ctx = self._last_args
        kind, sev = self.router.error_of(rec.error)
        self.summary = self.router._advance(self._before_last, m, tool, np.int32(kind), np.int32(sev),
                                            inp, out, cost, ctx)

    def attach_observation(self, text: str | None) -> TurnError | None:
        """Set the last turn's observation (its tool result) and re-derive its error/summary."""
        if not self.turns or text is None:
            return None
        rec = self.turns[-1]
        rec.observation = text
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
                "ended": self.ended, "finished": self.finished, "lam": self.lam}

    def to_episode(self, score: float | None = None,
                   score_range: Sequence[float] | None = None, meta: dict | None = None) -> Episode:
        """The episode as a ``logs.Episode``; an unknown score is logged as 0 with meta.unscored."""
        text = self.router.log_text
        turns = tuple(Turn(t.model, t.input_tokens, t.cached_tokens, t.output_tokens, t.cost, t.tool,
                           t.error, t.propensity,
                           observation=t.observation if text else None,
                           action=t.action if text else None, features=t.features,
                           meta=t.meta or None) for t in self.turns)
        m = {"lam": self.lam, "unscored": score is None, "router": "mtrouter-jax live",
             "started": self.started, **(meta or {})}
        if self.ended:
            m["ended"] = self.ended
        return Episode(self.episode_id, self.task_type, 0.0 if score is None else float(score),
                       self.budget, self.router.pool.names, turns,
                       None if score_range is None else tuple(float(x) for x in score_range),
                       "live", m)

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
        self.finished = True
        if not self.turns:
            return None
        ep = self.to_episode(score, score_range, meta)
        if self.router.log_path is not None:
            append_episodes(self.router.log_path, ep)
        return ep


__all__ = ["Router", "LiveEpisode", "Decision", "Estimator", "BudgetExhausted", "PoolMismatchError",
           "check_pool", "parse_usage", "TOOL_ALIASES"]
