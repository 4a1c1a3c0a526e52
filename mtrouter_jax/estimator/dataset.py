"""Episodes (JSONL interchange format) -> flat training arrays for the outcome estimator.

Every turn becomes one example: the history features *before* the turn, the model that served
it, its AEC-adjusted score target and its remaining-cost target. Histories are replayed with the
same ``advance_summary`` the simulator and the live router use, vectorised over episodes with
``vmap`` + ``lax.scan``, so a million turns take seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtrouter_jax.core.vocab import SEVERITIES
from mtrouter_jax.core.features import (NO_VALUE, FeatureLayout, advance_summary, history_features,
                                   initial_summary, vocab_index)
from mtrouter_jax.logs.io import Episode
from mtrouter_jax.routing.policies import pace_costs
from mtrouter_jax.core.pool import Pool
from mtrouter_jax.core.pricing import call_cost
from mtrouter_jax.estimator.log_stats import check_models, global_stats, length_buckets
from mtrouter_jax.estimator.log_stats import score_norm as norm_scores
from mtrouter_jax.estimator.pairs import branch_links, pair_rows
from mtrouter_jax.estimator.targets import AECConfig, annealed_error_targets, remaining_cost_targets
from mtrouter_jax.estimator.text import TextEncoder

SEVERITY_INDEX = {s: i for i, s in enumerate(SEVERITIES)}


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    """How raw logs become targets (stored in the checkpoint)."""

    default_score_range: tuple[float, float] = (-100.0, 100.0)  # used when an episode has none
    expected_steps: dict | None = None  # task type -> N; None = median successful length
    success_threshold: float = 0.5  # normalised score counted as a success for N
    aec: AECConfig = AECConfig()
    # "future": the cost head learns the cost *after* this turn; this turn's cost is computed exactly
    # from prices and tokens at routing time (lower-variance, and switching's cache loss is exact).
    # "remaining": the paper's target, this turn included.
    cost_target: str = "future"
    propensity_weighting: bool = False  # importance-weight off-policy logs by 1/(M * propensity)
    max_weight: float = 10.0
    # n-step bootstrapped score targets (targets.bootstrapped_score_targets): 0 = the paper's pure
    # Monte-Carlo targets; n > 0 refits the estimator ``bootstrap_iterations`` times, each time on
    # targets that keep n logged turns and bootstrap the rest from the previous fit.
    bootstrap_steps: int = 0
    bootstrap_iterations: int = 0
    # dense progress: where every turn of an episode carries ``progress`` (the score after it, as
    # ScienceWorld reports every step), the score target becomes the score still to be gained from
    # this turn on, S' - P(before the turn): the same for every model at a state, so routing is
    # unchanged, but late turns no longer carry the whole episode's outcome noise. With
    # bootstrapping this is an n-step TD target with per-turn rewards (docs/benchmarks.md).
    dense_progress: bool = False
    # one-turn ("immediate") score targets: what the turn itself did — the score it gained minus its
    # own AEC penalty (a wrong focus that ends the task shows as the fall to the failure score) —
    # the n = 1 bootstrapped target with the next state's value set to 0. Needs per-turn progress;
    # routing on it is greedy per turn, like the privileged bound (issue 17, docs/benchmarks.md).
    immediate: bool = False

    def __post_init__(self):
        if self.bootstrap_steps < 0 or self.bootstrap_iterations < 0:
            raise ValueError(f"bootstrap_steps and bootstrap_iterations must be >= 0, got "
                             f"{self.bootstrap_steps} and {self.bootstrap_iterations}")
        if self.bootstrap_iterations and not self.bootstrap_steps:
            raise ValueError("bootstrap_iterations > 0 needs bootstrap_steps >= 1")
        if self.immediate and self.bootstrap_iterations:
            raise ValueError("immediate targets are one-turn targets: they take no bootstrapping")


@dataclasses.dataclass
class TrainingData:
    """Flat per-turn arrays plus the constants needed to interpret them."""

    features: np.ndarray  # (N, F) float32 history features before the turn
    model: np.ndarray  # (N,) int32 model that served the turn
    score_target: np.ndarray  # (N,) float32 AEC-adjusted normalised terminal score S'_t
    cost_target: np.ndarray  # (N,) float32 remaining cost from this turn / mean episode cost
    weight: np.ndarray  # (N,) float32 per-example loss weight
    episode: np.ndarray  # (N,) int32 episode index (validation is split by episode)
    layout: FeatureLayout
    text_dim: int
    cost_scale: float  # USD, mean episode cost
    expected_steps: dict  # task type -> N used for the AEC penalties
    output_tokens_hi: np.ndarray  # (M,) 95th percentile completion tokens per model
    output_tokens_mean: np.ndarray  # (M,) mean completion tokens per model (expected turn cost)
    fingerprint: str
    n_episodes: int
    # per row, for bootstrapping: each model's worst-case cost (USD) of this turn from this state,
    # and the budget left before it (USD, inf = none); a model whose turn does not fit is not a
    # choice the router has
    turn_cost_hi: np.ndarray | None = None  # (N, M)
    remaining_budget: np.ndarray | None = None  # (N,)
    pace_cost: np.ndarray | None = None  # (N, M) USD to finish on each model at its pace (policy.pace_costs)
    # executed counterfactuals (estimator.pairs): (P, 2) rows (base, branch) at each pair's shared
    # history, and per row the episode family (a branch's base) that the validation split keeps together
    pairs: np.ndarray | None = None
    group: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.model.shape[0])


def build_layout(episodes: Sequence[Episode], pool: Pool, max_steps: float | None = None,
                 cost_scale: float = 1.0) -> FeatureLayout:
    """Vocabularies from the data (sorted, so the layout is deterministic); models = pool order."""
    tasks = sorted({e.task_type for e in episodes})
    tools = sorted({t.tool for e in episodes for t in e.turns if t.tool is not None})
    kinds = sorted({t.error.kind for e in episodes for t in e.turns if t.error is not None})
    lengths = [len(e.turns) for e in episodes]
    return FeatureLayout(task_types=tuple(tasks), tools=tuple(tools), error_kinds=tuple(kinds),
                         models=pool.names, max_steps=float(max_steps or max(lengths)),
                         cost_scale=float(cost_scale))


def _pad(episodes: Sequence[Episode], layout: FeatureLayout, pool: Pool) -> dict[str, np.ndarray]:
    E, T = len(episodes), max(len(e.turns) for e in episodes)
    model_pos = {n: i for i, n in enumerate(pool.names)}
    arr = {k: np.zeros((E, T), np.float32) for k in ("input", "cached", "output", "cost", "prop")}
    arr.update({k: np.full((E, T), NO_VALUE, np.int32) for k in ("model", "tool", "kind", "sev")})
    arr["mask"] = np.zeros((E, T), bool)
    # a turn without a tool call replays as the live router reads it (detect.ToolTypeMap: None ->
    # "reasoning"), so the features match at serve time; "other" only when that type is unknown
    no_tool = layout.tools.index("reasoning") if "reasoning" in layout.tools else len(layout.tools)
    for i, e in enumerate(episodes):
        n = len(e.turns)
        arr["mask"][i, :n] = True
        arr["model"][i, :n] = [model_pos[t.model] for t in e.turns]
        arr["tool"][i, :n] = [no_tool if t.tool is None else v
                              for t, v in zip(e.turns, vocab_index(layout.tools, [t.tool or "" for t in e.turns]))]
        arr["kind"][i, :n] = vocab_index(layout.error_kinds, [t.error.kind if t.error else None for t in e.turns])
        arr["sev"][i, :n] = [SEVERITY_INDEX[t.error.severity] if t.error else NO_VALUE for t in e.turns]
        arr["input"][i, :n] = [t.input_tokens for t in e.turns]
        arr["cached"][i, :n] = [t.cached_tokens for t in e.turns]
        arr["output"][i, :n] = [t.output_tokens for t in e.turns]
        arr["cost"][i, :n] = [t.cost for t in e.turns]
        arr["prop"][i, :n] = [1.0 if t.propensity is None else t.propensity for t in e.turns]
    arr["task"] = vocab_index(layout.task_types, [e.task_type for e in episodes])
    arr["budget"] = np.array([np.inf if e.budget is None else e.budget for e in episodes], np.float32)
    return arr


@functools.lru_cache(maxsize=8)
def _replay_fn(layout: FeatureLayout):
    """jit(vmap(scan)): features before every turn of padded episodes."""

    def one(task, budget, model, tool, kind, sev, inp, out, cost, mask):
        nxt = jnp.concatenate([inp[1:], inp[-1:] + out[-1:]])  # context the next call sends
        nxt = jnp.where(jnp.concatenate([mask[1:], jnp.array([False])]), nxt, inp + out)

        def body(s, x):
            m, tl, k, sv, i, o, c, n, valid = x
            feat = history_features(s, layout)
            s2 = advance_summary(s, m, tl, k, sv, i, o, c, n)
            s = jax.tree_util.tree_map(lambda a, b: jnp.where(valid, a, b), s2, s)
            return s, feat

        s0 = initial_summary(task, inp[0], budget)
        _, feats = jax.lax.scan(body, s0, (model, tool, kind, sev, inp, out, cost, nxt, mask))
        return feats

    return jax.jit(jax.vmap(one))


def replay_features(arr: dict[str, np.ndarray], layout: FeatureLayout, chunk: int = 2048) -> np.ndarray:
    """(E, T, F) features before each turn, computed on device in chunks of episodes."""
    fn = _replay_fn(layout)
    E = arr["mask"].shape[0]
    out = []
    keys = ("task", "budget", "model", "tool", "kind", "sev", "input", "output", "cost", "mask")
    for s in range(0, E, chunk):
        part = [arr[k][s:s + chunk] for k in keys]
        n = part[0].shape[0]
        if n < chunk and E > chunk:  # pad to one compiled shape
            part = [np.concatenate([p, np.repeat(p[-1:], chunk - n, axis=0)]) for p in part]
        out.append(np.asarray(fn(*part))[:n])
    return np.concatenate(out)


def fingerprint(episodes: Sequence[Episode]) -> str:
    """Short content hash of a dataset (stored in checkpoints to tell what a model was trained on)."""
    h = hashlib.sha256()
    for e in episodes:
        h.update(f"{e.episode_id}|{e.score}|{len(e.turns)}|{e.total_cost:.9g}\n".encode())
    return h.hexdigest()[:16]


# a log whose padded (episodes x longest episode) grid is larger than this many cells is built in
# length buckets, so one very long episode does not pad every other to its length (memory)
MAX_PADDED_CELLS = 1 << 22


def build_training_data(episodes: Sequence[Episode], pool: Pool, config: TargetConfig = TargetConfig(),
                        layout: FeatureLayout | None = None, text_encoder: TextEncoder | None = None,
                        max_padded_cells: int = MAX_PADDED_CELLS) -> TrainingData:
    """Turn validated episodes into per-turn training arrays (features, targets, weights).

    Rows are ordered by (episode, turn). Logs whose padded grid would exceed ``max_padded_cells``
    are built in buckets of similar length with the same global statistics (the same rows; targets
    equal up to float32 rounding of the suffix sums), so memory grows with the turns, not with
    episodes x the longest episode."""
    if not episodes:
        raise ValueError("no episodes to train on")
    unscored = [e.episode_id for e in episodes if e.score is None]
    if unscored:  # a null score is an unknown outcome, never a target
        raise ValueError(f"{len(unscored)} episode(s) have no score (score is null), e.g. {unscored[:3]}; "
                         "drop them first with mtrouter_jax.logs.io.drop_unscored")
    check_models(episodes, pool)
    costs_per_ep = np.array([e.total_cost for e in episodes], np.float64)
    cost_scale = float(costs_per_ep.mean()) if costs_per_ep.mean() > 0 else 1.0
    if layout is None:
        layout = build_layout(episodes, pool, cost_scale=cost_scale)
    g = global_stats(episodes, pool, config, layout, cost_scale)
    first, family, links = branch_links(episodes)  # a branch's replayed prefix is its base's data
    buckets = length_buckets([len(e.turns) for e in episodes], max_padded_cells)
    parts = [_rows([episodes[i] for i in b], pool, config, layout, text_encoder, g, first[b]) for b in buckets]
    if len(parts) == 1:
        data, turn = parts[0]
        ep = data.episode
    else:  # back to (episode, turn) order, episode indices of the whole log
        ep = np.concatenate([b[d.episode] for b, (d, _) in zip(buckets, parts)]).astype(np.int32)
        turn = np.concatenate([t for _, t in parts])
        order = np.lexsort((turn, ep))
        ep, turn = ep[order], turn[order]
        cat = lambda f: np.concatenate([getattr(d, f) for d, _ in parts])[order]  # noqa: E731
        data = dataclasses.replace(
            parts[0][0], episode=ep, **{f: cat(f) for f in ("features", "model", "score_target", "cost_target",
                                                             "weight", "turn_cost_hi", "remaining_budget",
                                                             "pace_cost")})
    pairs = None
    if links:  # (a dict over every row costs seconds on big logs: only where there are pairs)
        pairs = pair_rows(links, {(int(i), int(t)): r for r, (i, t) in enumerate(zip(ep, turn))})
    return dataclasses.replace(data, fingerprint=fingerprint(episodes), n_episodes=len(episodes), pairs=pairs,
                               group=family[ep].astype(np.int32) if links else None)


def _rows(episodes: Sequence[Episode], pool: Pool, config: TargetConfig, layout: FeatureLayout,
          text_encoder: TextEncoder | None, g: dict, first: np.ndarray) -> tuple[TrainingData, np.ndarray]:
    """Training rows of ``episodes`` (one padded grid) with the log's global statistics ``g``; rows
    before ``first`` (E,) are left out. Returns the data (local episode indices) and each row's turn."""
    cost_scale, n_by_task, out_hi, out_mean = g["cost_scale"], g["n_by_task"], g["out_hi"], g["out_mean"]
    arr = _pad(episodes, layout, pool)
    feats = replay_features(arr, layout)  # (E, T, F)
    mask = arr["mask"]
    E, T = mask.shape
    ranges, score_norm = norm_scores(episodes, config)
    n_ep = np.array([n_by_task.get(e.task_type, g["median_length"]) for e in episodes], np.float32)

    score_t = np.asarray(annealed_error_targets(score_norm, arr["sev"], mask, n_ep, config.aec))
    if config.dense_progress or config.immediate:
        score_t = score_t - progress_before(episodes, ranges, T)
    if config.immediate:  # S'_t - S'_{t+1} with progress: this turn's gain minus its own penalty
        nxt = np.concatenate([score_t[:, 1:], np.zeros_like(score_t[:, :1])], axis=1)
        has_next = np.concatenate([mask[:, 1:], np.zeros_like(mask[:, :1])], axis=1)
        score_t = np.where(has_next, score_t - nxt, score_t)
    cost_t = np.asarray(remaining_cost_targets(arr["cost"], mask, cost_scale))
    if config.cost_target == "future":
        cost_t = (cost_t - arr["cost"] / cost_scale) * mask
    elif config.cost_target != "remaining":
        raise ValueError(f"cost_target must be 'future' or 'remaining', got {config.cost_target!r}")

    M = len(pool)
    if config.propensity_weighting:
        w = np.clip(1.0 / (M * np.maximum(arr["prop"], 1e-6)), 1.0 / config.max_weight, config.max_weight)
    else:
        w = np.ones_like(arr["prop"])

    if text_encoder is not None:
        # the router sees the latest observation text before it decides: the previous turn's
        obs = [[None] + [t.observation for t in e.turns[:-1]] for e in episodes]
        flat_obs = [o for row in obs for o in row]
        text = text_encoder.encode(flat_obs).astype(np.float32)
        text_full = np.zeros((E, T, text.shape[1]), np.float32)
        k = 0
        for i, row in enumerate(obs):
            text_full[i, :len(row)] = text[k:k + len(row)]
            k += len(row)
        feats = np.concatenate([feats, text_full], axis=-1)
        text_dim = text.shape[1]
    else:
        text_dim = 0

    idx = np.nonzero(mask & (np.arange(T)[None, :] >= np.asarray(first)[:, None]))
    spent_before = np.cumsum(arr["cost"], axis=1) - arr["cost"]
    remaining = arr["budget"][:, None] - spent_before
    # the router's budget pacing (policy.budget_allowed), for the bootstrap value of each state
    turn = np.arange(T, dtype=np.float32)[None, :, None]
    pace = np.asarray(pace_costs(state_turn_costs(arr, pool, out_mean), arr["input"][..., None], turn,
                                 n_ep[:, None, None] - turn - 1, _per_token(pool, "price_cached_input"),
                                 _per_token(pool, "price_output"), out_mean))
    data = TrainingData(
        features=feats[idx].astype(np.float32), model=arr["model"][idx].astype(np.int32),
        score_target=score_t[idx].astype(np.float32), cost_target=cost_t[idx].astype(np.float32),
        weight=w[idx].astype(np.float32), episode=idx[0].astype(np.int32), layout=layout,
        text_dim=text_dim, cost_scale=cost_scale, expected_steps=n_by_task, output_tokens_hi=out_hi,
        output_tokens_mean=out_mean, fingerprint="", n_episodes=E,
        turn_cost_hi=state_turn_costs(arr, pool, out_hi)[idx].astype(np.float32),
        remaining_budget=remaining[idx].astype(np.float32), pace_cost=pace[idx].astype(np.float32),
    )
    return data, idx[1].astype(np.int64)


def _per_token(pool: Pool, attr: str) -> np.ndarray:
    return np.array([getattr(m, attr) for m in pool.models], np.float64) / 1e6


def progress_before(episodes: Sequence[Episode], ranges: np.ndarray, T: int) -> np.ndarray:
    """(E, T) normalised score before each turn, from the turns' ``progress`` (score after each
    turn) and ``meta.initial_score`` (before the first; the range's low end when absent, i.e. the
    first turn keeps its Monte-Carlo target). Episodes without progress on every turn: zeros."""
    out = np.zeros((len(episodes), T), np.float32)
    for i, e in enumerate(episodes):
        prog = [t.progress for t in e.turns]
        if not prog or any(p is None for p in prog):
            continue
        lo, hi = ranges[i]
        start = float((e.meta or {}).get("initial_score", lo))
        before = (np.r_[start, np.asarray(prog[:-1], np.float64)] - lo) / (hi - lo)
        out[i, :len(prog)] = before
    return out


def state_turn_costs(arr: dict[str, np.ndarray], pool: Pool, output_tokens: np.ndarray) -> np.ndarray:
    """(E, T, M) USD cost of calling each model at each logged state with ``output_tokens`` (M,),
    billed like the simulator: the previous prompt is cached only when the model stays."""
    p_in, p_cached, p_out = (_per_token(pool, a) for a in ("price_input", "price_cached_input", "price_output"))
    inp = arr["input"].astype(np.float64)
    last = np.concatenate([np.zeros_like(inp[:, :1]), inp[:, :-1]], axis=1)
    prev = np.concatenate([np.full_like(arr["model"][:, :1], NO_VALUE), arr["model"][:, :-1]], axis=1)
    cached = np.where(prev[..., None] == np.arange(len(pool)), last[..., None], 0.0)
    return call_cost(inp[..., None], cached, np.asarray(output_tokens, np.float64), p_in, p_cached, p_out)


def split_by_episode(data: TrainingData, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation example indices, split by *episode* (turns of one episode are correlated)."""
    rng = np.random.default_rng(seed)
    n_val = int(round(val_frac * data.n_episodes)) if val_frac > 0 else 0
    val_eps = rng.permutation(data.n_episodes)[:n_val]
    # an executed-counterfactual branch goes with its base (they share a prefix): split by family
    is_val = np.isin(data.episode if data.group is None else data.group, val_eps)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


__all__ = ["TargetConfig", "TrainingData", "build_layout", "build_training_data", "split_by_episode",
           "replay_features", "fingerprint",
           "state_turn_costs"]
