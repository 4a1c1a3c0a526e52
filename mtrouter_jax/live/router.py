"""Live routing library: one routing policy of ``routing.py`` picks the model of every turn (no HTTP here).

``Router`` holds the policy (the learned MTRouter rule with a checkpoint, or any checkpoint-free
router: tool heuristic, fixed model, error escalation, roulettes), the pool used for accounting
and the tool/error rules; ``LiveEpisode`` (``live/episode.py``) keeps one conversation's
``HistorySummary``, its spend and its turn records, samples the next model under a hard
per-episode budget and writes the finished episode as a trajectory line (``source="live"``) so
it becomes training data — with the exact propensity of every served model.

Worst case of a turn = input tokens (upper bound) at the input price, except the prefix cached by
the model that served the previous turn (at the cached price, unless ``assume_cache_hits=False``),
plus ``output_tokens_hi`` at the output price. The completion cap returned with each decision is
computed *without* any cache assumption, so a turn stays within the remaining budget even if the
cache misses and the model talks longer than ``output_tokens_hi``; a model whose uncached input
alone no longer fits is not allowed.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
import zlib
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import jax
import numpy as np

from mtrouter_jax.routing import policies as routing
from mtrouter_jax.logs.detect import ErrorRuleSet, ToolTypeMap, default_rules, default_tool_map
from mtrouter_jax.core.features import NO_VALUE, FeatureLayout, vocab_index
from mtrouter_jax.live.accounting import BudgetExhausted, parse_usage  # noqa: F401  (re-exported)
from mtrouter_jax.live.episode import Decision, LiveEpisode  # noqa: F401  (re-exported)
from mtrouter_jax.live.kernel import compiled_features, estimator_forward
from mtrouter_jax.core.vocab import SEVERITIES
from mtrouter_jax.logs.io import TurnError
from mtrouter_jax.core.pool import Pool, PoolError, default_pool, load_pool
from mtrouter_jax.routing.meta import DEFAULT_LAM, expected_steps_for, lam_for_budget, lam_table_of, serves_safe
from mtrouter_jax.routing.draft import DEFAULT_DRAFT_N_MIN, draft_setup, resolve_draft
from mtrouter_jax.routing.specs import ToolModelMap, build_router, with_exploration
from mtrouter_jax.core.pricing import call_cost

log = logging.getLogger("mtrouter_jax.live")

# Tool types the live tool map produces that a simulator-trained vocabulary may lack.
TOOL_ALIASES = {"browse": "search", "bash": "python"}
# Completion lengths assumed by a router without a checkpoint (a checkpoint brings its logs' own).
DEFAULT_OUTPUT_TOKENS_HI = 4096
DEFAULT_OUTPUT_TOKENS_MEAN = 1024


class Estimator(Protocol):
    """What the router needs from ``checkpoint.LoadedEstimator`` (tests use a fake)."""

    layout: FeatureLayout
    pool: Pool
    meta: dict
    cost_scale: float
    output_tokens_hi: np.ndarray  # (M,)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class PoolMismatchError(PoolError):
    """The pool passed to the router does not match the checkpoint's (names or order)."""


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


def live_tool_vocab(tool_map: ToolTypeMap, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """Tool types a checkpoint-free router distinguishes: every type ``tool_map`` can produce."""
    types = set(tool_map.mapping.values()) | {tool_map.default, "reasoning"} | set(extra)
    return tuple(sorted(types))


def _find_learned_params(params):
    """The learned rule's params inside a (possibly exploration-wrapped) policy's params."""
    while isinstance(params, Mapping) and "base" in params:
        params = params["base"]
    return params


class Router:
    """Routes the turns of many concurrent episodes with one policy (thread-safe per episode)."""

    def __init__(self, estimator: Estimator | None = None, pool: Pool | str | Path | None = None,
                 lam: float | None = None, tool_map: ToolTypeMap | None = None, rules: ErrorRuleSet | None = None,
                 log_path: str | Path | None = None, *, policy: str | routing.RoutingPolicy | None = None,
                 explore: str | None = None, tool_models: ToolModelMap | None = None,
                 tools: Sequence[str] | None = None, task_types: Sequence[str] = (), seed: int = 0,
                 log_text: bool = False, log_features: bool = True, assume_cache_hits: bool = True,
                 default_max_output: int = 131_072, text_encoder: Any = None,
                 switch_margin: float = routing.DEFAULT_SWITCH_MARGIN, pacing: bool = True,
                 output_tokens_hi: float | Sequence[float] | None = None,
                 output_tokens_mean: float | Sequence[float] | None = None, lam_table: str | None = None,
                 kappa: float = routing.DEFAULT_KAPPA, n_min: float = routing.DEFAULT_N_MIN, fused: bool = True,
                 draft: bool | str = False, type_outcomes: Any = None, draft_n_min: float = DEFAULT_DRAFT_N_MIN):
        """Args:
            estimator: a ``LoadedEstimator`` (or anything with the same interface); None for
                checkpoint-free routers (``policy`` other than ``learned``).
            pool: pool for prices and endpoints (a Pool or a pool-file path); with a checkpoint its
                model names must equal the checkpoint's, in order. ``None``: the checkpoint's pool,
                else the embedded default pool.
            lam: cost weight λ of the learned rule for every episode; None (default): per episode
                from the checkpoint's calibrated budget → λ table (``lam_table``), interpolated
                at the episode's budget, else ``routers.DEFAULT_LAM``.
            tool_map, rules: tool-name → tool-type map and error rules (defaults from detect.py).
            log_path: JSONL file finished episodes are appended to (None: not logged).
            policy: router spec (``routers.build_router``: ``learned``, ``tool-heuristic``,
                ``fixed:MODEL``, ...) or a ``RoutingPolicy``; default ``safe`` with an ensemble checkpoint
                (``learned`` with a single-estimator one),
                ``tool-heuristic`` without.
            explore: exploration spec applied to episodes started with ``explore=True``
                (``eps:E``, ``beta:B``, ``sticky:RHO[:E]``).
            tool_models: the tool heuristic's tool type → model map (default: the pool file's
                ``[tool_heuristic]`` or ``routers.DEFAULT_TOOL_CLASSES``).
            tools, task_types: the summary's vocabularies when there is no checkpoint (default
                tools: every type ``tool_map`` produces).
            seed: base of the per-conversation seeds (each episode logs its own).
            log_text: also log observations and actions (off by default: they may be private).
            assume_cache_hits: price the previous model's cached prefix at the cached price in the
                worst case (as the simulator does); False gives a strict, cache-agnostic bound.
            default_max_output: completion limit assumed for a model without ``max_output_k``.
            text_encoder: encoder of the latest observation for checkpoints trained with text.
            switch_margin, pacing: the learned rule's switch margin and budget pacing.
            output_tokens_hi, output_tokens_mean: completion lengths for the worst/expected turn cost
                (default: the checkpoint's, else 4096 / 1024).
            lam_table: which of the checkpoint's λ tables to use ("scienceworld", "sim", ...;
                default: the only one, else scienceworld before sim).
            kappa, n_min: the safe router's LCB width and minimum logged support (``routing.safe``).
            fused: decide in one jitted call when the estimator has a JAX forward pass
                (``live/kernel.py``; bit-identical results); False keeps the four-call host path.
            draft, type_outcomes, draft_n_min: draft-and-escalate turns (``routing.draft.draft_setup``: off,
                on, a test, or serve's ``auto``; the table defaults to the checkpoint's ``meta.type_outcomes``).
        """
        self.estimator = estimator
        self.tool_map = tool_map or default_tool_map()
        self.rules = rules or default_rules()
        if isinstance(pool, (str, Path)):
            pool = load_pool(pool)
        if estimator is not None:
            self.layout: FeatureLayout = estimator.layout
            ck_names = tuple(estimator.pool.names)
            if tuple(self.layout.models) != ck_names:
                check_pool(self.layout.models, estimator.pool)
            self.pool: Pool = estimator.pool if pool is None else pool
            check_pool(ck_names, self.pool)
        else:
            self.pool = pool or default_pool()
            kinds = tuple(sorted({r.kind for r in self.rules.rules}))
            self.layout = FeatureLayout(tuple(task_types), tuple(tools or live_tool_vocab(self.tool_map)), kinds,
                                        self.pool.names)
        if lam is not None and (not np.isfinite(lam) or lam < 0):
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        self.lam_env, self.lam_table = lam_table_of(getattr(estimator, "meta", None), lam_table)
        self.lam_fixed = None if lam is None else float(lam)
        self.lam = self.lam_fixed if lam is not None else lam_for_budget(self.lam_table, None)
        if estimator is not None and lam is None:
            log.info("λ: %s", self.lam_source())
        self.switch_margin, self.pacing, self.seed = float(switch_margin), bool(pacing), int(seed)
        self.log_path = None if log_path is None else Path(log_path)
        self.log_text, self.log_features = log_text, log_features
        self.assume_cache_hits = assume_cache_hits
        self.cost_scale = float(estimator.cost_scale) if estimator is not None else float(self.layout.cost_scale)
        if not self.cost_scale > 0:
            raise ValueError(f"estimator cost_scale must be > 0, got {self.cost_scale}")
        m = self.pool.models
        self.price_in = np.array([s.price_input for s in m]) / 1e6  # USD / token
        self.price_cached = np.array([s.price_cached_input for s in m]) / 1e6
        self.price_out = np.array([s.price_output for s in m]) / 1e6
        self.output_tokens_hi = self._per_model(output_tokens_hi, getattr(estimator, "output_tokens_hi", None),
                                                DEFAULT_OUTPUT_TOKENS_HI, "output_tokens_hi")
        self.output_tokens_mean = self._per_model(
            output_tokens_mean, getattr(estimator, "output_tokens_mean", getattr(estimator, "output_tokens_hi", None)),
            DEFAULT_OUTPUT_TOKENS_MEAN, "output_tokens_mean")
        # checkpoints whose cost head excludes this turn ("future") need this turn's expected cost
        self.future_cost = getattr(estimator, "cost_target", "remaining") == "future"
        self.max_output = np.array([s.attributes.get("max_output_k", default_max_output / 1000) * 1000 for s in m])
        self._feats = compiled_features(self.layout)  # shared per layout
        # the one-call decision path (live/kernel.py) when the estimator has a JAX forward pass
        self.fused = bool(fused)
        fwd = estimator_forward(estimator)
        self._forward = None if fwd is None else (fwd[0], *jax.tree_util.tree_flatten(fwd[1]))
        self.text_dim = int(getattr(estimator, "text_dim", 0) or 0)
        self.text_encoder = text_encoder
        if self.text_dim and text_encoder is None:
            cfg = getattr(estimator, "text_encoder_config", None)
            if cfg:
                from mtrouter_jax.estimator.text import make_text_encoder
                self.text_encoder = make_text_encoder(cfg)
            else:
                log.warning("checkpoint expects %d text features but names no encoder: using zeros "
                            "(as in simulation)", self.text_dim)
        if self.text_encoder is not None and int(self.text_encoder.dim) != self.text_dim:
            raise ValueError(f"text encoder dim {self.text_encoder.dim} != checkpoint text_dim {self.text_dim}")
        self.draft_table, self.draft_test = draft_setup(draft, getattr(estimator, "meta", None), type_outcomes,
                                                        self.layout.tools, self.pool.names, draft_n_min)
        self.draft_n_min = draft_n_min
        # what drafting can do, {type: {draft model: escalated model}}: computed once, read per request
        self.draft_escalations = {} if self.draft_table is None else self.draft_table.escalations(
            draft_n_min, self.draft_test)
        self._tool_cache: dict[str | None, tuple[str, int]] = {}
        self._tool_lock = threading.Lock()
        self.learned_policy = self._learned() if estimator is not None else None
        self.safe_policy = self._safe(kappa, n_min) if estimator is not None else None
        if tool_models is None and getattr(self.pool, "tool_heuristic", None):
            tool_models = ToolModelMap.from_dict(self.pool.tool_heuristic, f"pool {self.pool.name!r}: tool_heuristic")
        self.tool_models = tool_models
        if policy is None:  # the safe rule for ensemble checkpoints (routing.meta.serves_safe)
            policy = "tool-heuristic" if estimator is None else "safe" if serves_safe(estimator) else "learned"
        if isinstance(policy, str):
            policy = build_router(policy, self.pool, self.layout.tools, tool_map=tool_models,
                                  learned=self.learned_policy, safe=self.safe_policy)
        self.policy: routing.RoutingPolicy = policy
        self.explore_spec = explore or None
        self.explore_policy = with_exploration(policy, explore) if explore else None
        if policy.uses_estimator and estimator is None:
            raise ValueError(f"policy {policy.name!r} needs a trained checkpoint")

    def _per_model(self, given, from_ckpt, default: float, what: str) -> np.ndarray:
        src = given if given is not None else (from_ckpt if from_ckpt is not None else default)
        arr = np.broadcast_to(np.asarray(src, np.float64).reshape(-1), (len(self.pool),)) \
            if np.ndim(src) == 0 else np.asarray(src, np.float64).reshape(-1)
        if arr.shape != (len(self.pool),):
            raise PoolMismatchError(f"{what} has {arr.shape[0]} entries, pool has {len(self.pool)} models")
        return np.array(arr)

    def _learned(self) -> routing.RoutingPolicy:
        steps = expected_steps_for(getattr(self.estimator, "meta", None), list(self.layout.task_types) + ["<other>"])
        return routing.learned(steps, self.price_cached, self.price_out, self.output_tokens_mean, self.lam,
                               self.switch_margin, self.pacing)

    def _safe(self, kappa: float, n_min: float) -> routing.RoutingPolicy | None:
        ref = (getattr(self.estimator, "meta", None) or {}).get("reference")
        if not ref:
            return None
        from mtrouter_jax.routing.reference import Reference

        r = Reference.from_meta(ref)
        drafting = None if self.draft_table is None else (self.draft_test, self.draft_n_min)  # priced under drafting
        tables, costs, lcbs = r.budget_tiers(drafting)
        return routing.safe(self.learned_policy, tables, r.support, r.seen, n_min, kappa, ref_cost=costs, ref_lcb=lcbs)

    @classmethod
    def from_checkpoint(cls, path: str | Path, pool: Pool | str | Path | None = None, lam: float | None = None,
                        tool_map: ToolTypeMap | None = None, rules: ErrorRuleSet | None = None,
                        log_path: str | Path | None = None, **kwargs) -> "Router":
        """Load a checkpoint with ``checkpoint.load_checkpoint`` (on CPU) and build a router; ``lam=None``:
        the checkpoint's budget->λ table, else ``routing.meta.DEFAULT_LAM`` (as every entry point)."""
        from mtrouter_jax.estimator.checkpoint import load_checkpoint  # lazy: pulls in orbax
        return cls(load_checkpoint(path), pool, lam, tool_map, rules, log_path, **kwargs)

    def lam_for(self, budget: float | None) -> float:
        """λ of an episode with ``budget``: the fixed λ, else the checkpoint's table, else the default."""
        return self.lam_fixed if self.lam_fixed is not None else lam_for_budget(self.lam_table, budget)

    def lam_source(self) -> str:
        """Where the learned rule's λ comes from, in words."""
        if self.lam_fixed is not None:
            return f"fixed at {self.lam_fixed:g} (--lam)"
        if self.lam_table:
            pts = ", ".join(f"${r['budget']:g}->{r['lam']:g}" if r.get("budget") is not None else f"none->{r['lam']:g}"
                            for r in self.lam_table)
            return f"the checkpoint's {self.lam_env} budget->λ table ({pts}), interpolated per budget"
        if self.estimator is None:
            return (f"{DEFAULT_LAM:g}, the default, unused: without a checkpoint the {self.policy.spec} router "
                    "does not trade predicted score against cost")
        return f"{DEFAULT_LAM:g}, the default (the checkpoint has no budget->λ table; mtrouter sweep / eval write one)"

    def describe(self) -> dict:
        """JSON-able description: policies, vocabularies and the effective tool mapping."""
        uses_lam = self.estimator is not None and self.policy.uses_estimator
        out = {"policy": self.policy.spec, "explore": self.explore_spec, "pool": list(self.pool.names),
               "checkpoint": str(getattr(self.estimator, "path", "")) or None,
               # a router that does not weigh predicted score against cost has no λ to show
               "lam": self.lam_source() if uses_lam else None,
               "ensemble_size": int(getattr(self.estimator, "k", 1) or 1) if self.estimator is not None else None,
               "tools": list(self.layout.tools), "task_types": list(self.layout.task_types),
               "tool_mapping": self.effective_tool_mapping()}
        if not uses_lam:
            out["lam_note"] = self.lam_source()
        if self.policy.spec.startswith("tool-heuristic"):
            out["tool_models"] = self.tool_model_map()
        return out

    def tool_model_map(self) -> dict[str, str]:
        """The tool heuristic's map in use: tool type of the previous turn -> the model it routes to
        (``other``: an unknown type; ``start``: the first turn)."""
        from mtrouter_jax.routing.specs import OTHER
        tm = self.tool_models or ToolModelMap()
        return {t: tm.model_for(t, self.pool) for t in (*self.layout.tools, OTHER, routing.START)}

    def effective_tool_mapping(self) -> dict[str, str]:
        """Tool-call name -> the vocabulary entry it lands in (names in the vocabulary map to
        themselves; the tool map applies only to the others; unknown ones go to "<other>")."""
        out = {}
        for name in sorted(set(self.tool_map.mapping) | set(self.layout.tools)):
            _, i = self.tool_of(name)
            out[name] = self.layout.tools[i] if i < len(self.layout.tools) else "<other>"
        return out

    # ------------------------------------------------------------------ vocab mapping
    def tool_of(self, tool_name: str | None) -> tuple[str, int]:
        """(tool type, layout tool index) of a tool-call name. A name that is itself in the
        vocabulary is used as is (train/serve parity); others go through the tool map (and its
        aliases); unseen types -> the "other" bucket."""
        hit = self._tool_cache.get(tool_name)
        if hit is not None:
            return hit
        vocab = self.layout.tools
        if tool_name is not None and tool_name in vocab:
            out = (tool_name, vocab.index(tool_name))
        else:
            ttype = self.tool_map.classify(tool_name)
            key = TOOL_ALIASES[ttype] if ttype not in vocab and TOOL_ALIASES.get(ttype) in vocab else ttype
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

    def episode_seed(self, episode_id: str) -> int:
        """The per-conversation seed: a hash of the router's seed and the episode id."""
        return zlib.crc32(f"{self.seed}:{episode_id}".encode("utf-8")) & 0x7FFFFFFF

    def start_episode(self, episode_id: str | None = None, task_type: str | None = None,
                      budget: float | None = None, lam: float | None = None,
                      context_tokens: float = 0.0, explore: bool = False, seed: int | None = None):
        """New episode; ``budget`` in USD (None = unlimited, must be > 0 otherwise). ``explore``:
        route with the exploration policy (needs ``explore=`` on the router)."""
        if explore and self.explore_policy is None:
            raise ValueError("exploration was asked for but the router has no exploration policy "
                             "(start it with explore=SPEC / --explore SPEC)")
        eid = episode_id or uuid.uuid4().hex
        return LiveEpisode(self, eid, task_type or "other", budget, self.lam_for(budget) if lam is None else lam,
                           context_tokens, explore, self.episode_seed(eid) if seed is None else int(seed))


def router_from_options(checkpoint=None, pool=None, router=None, explore=None, tool_map=None, lam=None, seed=0,
                 log_path=None, log_text=False, strict_cache=False, lam_table=None, draft: bool | str = False) -> Router:
    """The ``Router`` that ``mtrouter serve`` / ``collect`` / ``eval`` options describe (raises
    ``RouterSpecError`` naming the flag on bad input). Router *specs* (``sticky:0.9``, ...) are
    parsed by ``routing.specs.build_router``; this builds the live router around one."""
    from mtrouter_jax.routing.specs import RouterSpecError

    if router is not None and router.strip() in ("learned", "safe") and not checkpoint:
        raise RouterSpecError(f"--router {router.strip()} needs --checkpoint CKPT (a trained estimator); without one use "
                              "--router tool-heuristic, fixed:MODEL, error-escalation, cheapest, uniform or sticky:RHO",
                              "--checkpoint")
    if lam is not None and (not math.isfinite(lam) or lam < 0):
        raise RouterSpecError(f"--lam must be a finite number >= 0, got {lam}", "--lam")
    kw = dict(policy=router, explore=explore, seed=seed, log_path=log_path, log_text=log_text,
              assume_cache_hits=not strict_cache, tool_models=ToolModelMap.from_file(tool_map) if tool_map else None,
              **({"lam": lam} if lam is not None else {}), **({"draft": draft} if draft else {}))
    draft_mode = resolve_draft(draft)[0]  # (a RouterSpecError naming --draft)
    if draft_mode == "on" and not checkpoint:
        raise RouterSpecError("--draft needs --checkpoint CKPT (its per-type turn outcomes decide escalations)",
                              "--checkpoint")
    if not checkpoint:
        return Router(None, pool, **kw)
    try:
        return Router.from_checkpoint(checkpoint, pool=pool, lam_table=lam_table, **kw)
    except ValueError as e:
        if draft_mode == "on" and "type" in str(e) and "outcomes" in str(e):  # no (or a mismatched) table
            raise RouterSpecError(f"--draft: {checkpoint}: {e}", "--draft") from None
        raise


__all__ = ["Router", "router_from_options", "LiveEpisode", "Decision", "Estimator", "BudgetExhausted", "PoolMismatchError",
           "check_pool", "parse_usage", "TOOL_ALIASES", "live_tool_vocab", "DEFAULT_OUTPUT_TOKENS_HI",
           "DEFAULT_OUTPUT_TOKENS_MEAN"]
