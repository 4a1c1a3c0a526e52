"""Train/serve parity: the features the dataset builder replays from a logged episode are the features a
``LiveEpisode`` computes from the same turns (same tokens, tool names, observations, next context)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtrouter_jax.estimator.dataset import build_layout, build_training_data
from mtrouter_jax.logs.detect import ErrorRule, ErrorRuleSet
from mtrouter_jax.core.features import FeatureLayout
from mtrouter_jax.live.router import Router
from mtrouter_jax.logs.io import Episode, Turn, TurnError
from mtrouter_jax.core.pool import default_pool

POOL = default_pool()
SEVERITIES = ("low", "medium", "high")
KINDS = ("invalid_action", "format_violation", "python_error")
# ScienceWorld's action types and tool-call names, as imported logs and agents write them
NAMES = ("explore", "navigate", "act", "focus", "answer", "web_search", "bash", "browse_page", "reasoning", None)
T_MAX = 10  # every replay batch is padded to this many turns: one compile of the replay scan
COST_BLOCKS = ("cost_spent", "budget_remaining", "budget_remaining_frac")


class LayoutEstimator:
    """Just enough of an estimator for ``Router``: a given feature layout (no predictions needed)."""

    def __init__(self, layout: FeatureLayout):
        self.layout, self.pool, self.meta = layout, POOL, {}
        self.cost_scale = layout.cost_scale
        self.output_tokens_hi = np.full(len(POOL), 1000.0)

    def predict(self, features):
        z = np.zeros(len(POOL), np.float32)
        return z, z


def marker_rules() -> ErrorRuleSet:
    """An observation ``ERR <kind> <severity>`` is that error (the rule engine has its own tests)."""
    return ErrorRuleSet(ErrorRule(f"^ERR {k} {s}$", k, s) for k in KINDS for s in SEVERITIES)


def observation_for(error: TurnError | None) -> str:
    return "ok" if error is None else f"ERR {error.kind} {error.severity}"


def replayed(episodes: list[Episode], layout: FeatureLayout) -> list[np.ndarray]:
    """Per episode, (turns, F) features of ``build_training_data`` (a T_MAX-turn filler episode
    keeps the padded shape, hence the compile, the same for every example)."""
    filler = Episode("filler", "qa", 0.5, None, POOL.names,
                     tuple(Turn(POOL.names[0], 100, 0, 10, 0.001, "explore", None, None) for _ in range(T_MAX)),
                     (0.0, 1.0))
    data = build_training_data(list(episodes) + [filler], POOL, layout=layout)
    return [data.features[data.episode == i] for i in range(len(episodes))]


def live_features(e: Episode, layout: FeatureLayout, tool_names=None) -> np.ndarray:
    """(turns, F) features a LiveEpisode computes before each turn of ``e`` (recorded as the proxy
    would: usage with cached tokens, the tool-call name, the observation text)."""
    router = Router(LayoutEstimator(layout), POOL, rules=marker_rules())
    turns = e.turns
    ep = router.start_episode(e.episode_id, e.task_type, e.budget, context_tokens=turns[0].input_tokens)
    out = []
    for i, t in enumerate(turns):
        out.append(ep.features())
        usage = {"prompt_tokens": t.input_tokens, "completion_tokens": t.output_tokens,
                 "prompt_tokens_details": {"cached_tokens": t.cached_tokens}}
        # what the replay assumes the next call sends: the next turn's input tokens
        nxt = turns[i + 1].input_tokens if i + 1 < len(turns) else None
        ep.record(t.model, usage, tool_name=t.tool if tool_names is None else tool_names[i],
                  observation=observation_for(t.error), next_context_tokens=nxt)
    return np.stack(out)


def compare(live: np.ndarray, replay: np.ndarray, layout: FeatureLayout, cost_rtol: float = 0.0) -> None:
    assert live.shape == replay.shape
    for b in layout.describe():
        sl = slice(b["offset"], b["offset"] + b["width"])
        if cost_rtol and b["block"] in COST_BLOCKS:
            np.testing.assert_allclose(live[:, sl], replay[:, sl], rtol=cost_rtol, atol=2e-6, err_msg=b["block"])
        else:
            np.testing.assert_array_equal(live[:, sl], replay[:, sl], err_msg=b["block"])


# ----------------------------------------------------------------------------- simulated episodes

@pytest.fixture(scope="module")
def simulated():
    from mtrouter_jax.jobs import simulate_dataset

    eps = [e for e in simulate_dataset(3, 12, progress=False, with_features=True) if len(e.turns) <= 40]
    return eps, build_layout(eps, POOL, cost_scale=0.05)


def test_simulated_episodes_replay_to_the_live_features(simulated):
    eps, layout = simulated
    data = build_training_data(eps, POOL, layout=layout)
    for i, e in enumerate(eps):
        rep = data.features[data.episode == i]
        # the simulator bills in float32, the live router in float64 from the pool's prices: the
        # spend features agree to float32 rounding, everything else bit for bit
        compare(live_features(e, layout), rep, layout, cost_rtol=1e-5)


# ----------------------------------------------------------------------------- imported-style episodes

@st.composite
def episodes(draw, names=NAMES):
    n = draw(st.integers(1, T_MAX))
    budget = draw(st.one_of(st.none(), st.floats(0.05, 5.0)))
    turns, ctx = [], draw(st.integers(50, 3000))
    for _ in range(n):
        m = POOL.names[draw(st.integers(0, len(POOL) - 1))]
        out = draw(st.integers(1, 2000))
        cached = draw(st.integers(0, ctx))
        err = draw(st.one_of(st.none(), st.builds(TurnError, st.sampled_from(KINDS), st.sampled_from(SEVERITIES))))
        cost = float(Router(None, POOL).turn_cost(m, ctx, cached, out))  # what the live router bills
        turns.append(Turn(m, ctx, cached, out, cost, draw(st.sampled_from(names)), err, None))
        ctx += out + draw(st.integers(0, 4000))
    return Episode(f"imp-{draw(st.integers(0, 10**6))}", draw(st.sampled_from(["qa", "science", "unseen"])),
                   0.5, budget, POOL.names, tuple(turns), (0.0, 1.0))


IMPORTED_LAYOUT = FeatureLayout(("qa", "science"), tuple(sorted(n for n in NAMES if n)), KINDS[:2], POOL.names,
                                max_steps=8.0, cost_scale=0.05)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(episodes(names=tuple(n for n in NAMES if n)))
def test_imported_episodes_replay_to_the_live_features(e):
    """Tool names in the vocabulary are used as is by both sides; unknown task types and error kinds
    fall into the same "other" buckets."""
    (rep,) = replayed([e], IMPORTED_LAYOUT)
    compare(live_features(e, IMPORTED_LAYOUT), rep, IMPORTED_LAYOUT)


def test_null_tool_replays_like_a_turn_without_tool_call():
    bill = Router(None, POOL).turn_cost
    turns = tuple(Turn(POOL.names[0], 100 * (i + 1), 0, 10, bill(POOL.names[0], 100 * (i + 1), 0, 10), tool, None, None)
                  for i, tool in enumerate(["explore", None, "reasoning"]))
    e = Episode("null-tool", "qa", 0.5, None, POOL.names, turns, (0.0, 1.0))
    (rep,) = replayed([e], IMPORTED_LAYOUT)
    compare(live_features(e, IMPORTED_LAYOUT), rep, IMPORTED_LAYOUT)


# ----------------------------------------------------------------------------- live-style episodes

SERVING_LAYOUT = FeatureLayout(("qa",), ("file", "python", "reasoning", "search"), KINDS[:2], POOL.names,
                               max_steps=8.0, cost_scale=0.05)  # a simulator-trained checkpoint's vocabulary
# the vocabulary a checkpoint retrained on the live logs gets: the tool map's types of those names
RETRAINED_LAYOUT = FeatureLayout(("qa", "science"), ("answer", "bash", "browse", "other", "reasoning", "search"),
                                 KINDS, POOL.names, max_steps=8.0, cost_scale=0.05)


def serve(e: Episode, layout: FeatureLayout) -> Episode:
    """Route ``e``'s turns through a live router (decide, then record the raw tool-call names) and
    return the episode it logs (tool types, decision-time features)."""
    router = Router(LayoutEstimator(layout), POOL, rules=marker_rules())
    ep = router.start_episode(e.episode_id, e.task_type, None, context_tokens=e.turns[0].input_tokens)
    for t in e.turns:
        ep.decide(context_tokens=t.input_tokens)  # the replay assumes each call's context is its input
        usage = {"prompt_tokens": t.input_tokens, "completion_tokens": t.output_tokens,
                 "prompt_tokens_details": {"cached_tokens": t.cached_tokens}}
        ep.record(t.model, usage, tool_name=t.tool, observation=observation_for(t.error))
    return ep.to_episode(score=0.5, score_range=(0.0, 1.0))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(episodes())
def test_live_logs_replay_to_the_features_of_the_checkpoint_trained_on_them(e):
    """Live logs carry the tool map's type of each call (``web_search`` -> ``search``, no tool call ->
    ``reasoning``); a checkpoint trained on them gets those types as its vocabulary, and serving the
    same conversation (raw names again) computes the features its training replayed."""
    logged = serve(e, SERVING_LAYOUT)
    (rep,) = replayed([logged], RETRAINED_LAYOUT)
    compare(live_features(logged, RETRAINED_LAYOUT, tool_names=[t.tool for t in e.turns]), rep, RETRAINED_LAYOUT)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(episodes())
def test_live_logs_under_the_serving_layout_differ_only_by_the_aliases(e):
    """Replayed under the serving checkpoint's own layout, a live log gives back the decision-time
    features, except after a type the serving vocabulary lacks but aliases (``browse`` was served as
    ``search``, ``bash`` as ``python``; the log keeps the unaliased type for the next vocabulary)."""
    from mtrouter_jax.live.router import TOOL_ALIASES

    logged = serve(e, SERVING_LAYOUT)
    decided = np.array([t.features for t in logged.turns], np.float32)
    as_served = [TOOL_ALIASES.get(t.tool, t.tool) if t.tool not in SERVING_LAYOUT.tools else t.tool
                 for t in logged.turns]
    served = Episode(logged.episode_id, logged.task_type, 0.5, None, POOL.names,
                     tuple(Turn(t.model, t.input_tokens, t.cached_tokens, t.output_tokens, t.cost, tool, t.error, None)
                           for t, tool in zip(logged.turns, as_served)), (0.0, 1.0))
    rep_logged, rep_served = replayed([logged, served], SERVING_LAYOUT)
    compare(decided, rep_served, SERVING_LAYOUT)
    if as_served == [t.tool for t in logged.turns]:
        compare(decided, rep_logged, SERVING_LAYOUT)
