"""Routing policies defined once (``routing.py``): properties of the distributions, specs and bad
inputs, and parity: the simulator's rollouts and ``LiveEpisode`` apply the same functions."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrouter_jax.routing import policies as routing
from mtrouter_jax.logs.detect import ErrorRule, ErrorRuleSet
from mtrouter_jax.core.features import WINDOW, initial_summary
from mtrouter_jax.live.router import Router
from mtrouter_jax.sim.policies import sim_turn_inputs, simulated
from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.routing.specs import RouterSpecError, ToolModelMap, build_router, parse_explore, tool_table, with_exploration
from mtrouter_jax.sim.rollout import batch_rollout_with_decisions, episode_outcomes
from mtrouter_jax.sim.params import WorldConfig, make_sim_params

POOL = default_pool()
M = len(POOL)
WORLD = WorldConfig()
TOOLS = WORLD.tools
SPECS = ["fixed:deepseek-v3.2", "cheapest", "tool-heuristic", "error-escalation", "uniform", "sticky:0.8"]
EXPLORES = [(s, e) for s in ("tool-heuristic", "error-escalation", "fixed:gpt-5")
            for e in ("eps:0.2", "beta:0.6", "sticky:0.9", "sticky:0.7:0.5")]


def policy_of(spec, explore=None):
    return with_exploration(build_router(spec, POOL, TOOLS), explore)


# ----------------------------------------------------------------------------- pure properties

@st.composite
def decision_inputs(draw):
    turn = draw(st.integers(0, 40))
    s = initial_summary(draw(st.integers(0, 3)), 1000.0, np.inf)
    tools = draw(st.lists(st.integers(-1, len(TOOLS)), min_size=WINDOW, max_size=WINDOW))
    sev = draw(st.lists(st.integers(-1, 2), min_size=WINDOW, max_size=WINDOW))
    s = s.replace(turn=jnp.int32(turn), recent_tools=jnp.asarray(tools, jnp.int32),
                  recent_severities=jnp.asarray(sev, jnp.int32),
                  prev_model=jnp.int32(draw(st.integers(-1, M - 1)) if turn else -1),
                  model_streak=jnp.int32(draw(st.integers(0, 12))),
                  turns_since_error=jnp.int32(draw(st.integers(0, 12))))
    allowed = np.array(draw(st.lists(st.booleans(), min_size=M, max_size=M)))
    if not allowed.any():
        allowed[draw(st.integers(0, M - 1))] = True
    cost = np.array(draw(st.lists(st.floats(1e-5, 1e-1), min_size=M, max_size=M)), np.float32)
    inputs = routing.turn_inputs(cost * 2, cost, 1.0, allowed=allowed,
                                 score=np.array(draw(st.lists(st.floats(-1, 1), min_size=M, max_size=M)), np.float32),
                                 cost_norm=np.array(draw(st.lists(st.floats(0, 5), min_size=M, max_size=M)), np.float32))
    return s, inputs


_jitted = {}


def _jit_dist(dist):
    return _jitted.setdefault(dist, jax.jit(dist))


LEARNED = routing.learned(np.full(4, 30.0), np.full(M, 1e-7), np.full(M, 1e-6), np.full(M, 500.0), lam=0.1)
ALL_POLICIES = [policy_of(s) for s in SPECS] + [policy_of(s, e) for s, e in EXPLORES] + [
    LEARNED, routing.explore(LEARNED, eps=0.5), routing.explore(LEARNED, eps=0.1, rho=0.9)]


@settings(max_examples=60, deadline=None)
@given(decision_inputs())
def test_every_policy_is_a_distribution_that_keeps_to_the_allowed_models(x):
    s, inputs = x
    for pol in ALL_POLICIES:
        probs = np.asarray(_jit_dist(pol.dist)(s, inputs, pol.params))
        assert probs.shape == (M,) and (probs >= 0).all() and probs.sum() == pytest.approx(1.0, abs=1e-5)
        outside = probs[~np.asarray(inputs.allowed)].sum()
        if pol.spec.startswith("fixed"):
            # a fixed model serves or nothing (the run ends); exploration around it draws only allowed models
            fixed = POOL.index(pol.spec.split("|")[0].split(":", 1)[1])
            if "|" not in pol.spec:
                assert probs[fixed] == 1.0
            assert outside == pytest.approx(0.0 if inputs.allowed[fixed] else probs[fixed], abs=1e-6)
            continue
        assert outside == pytest.approx(0.0, abs=1e-6), pol.spec


@settings(max_examples=40, deadline=None)
@given(decision_inputs(), st.floats(0, 1), st.floats(0, 1))
def test_explore_formula_is_exact(x, eps, rho):
    s, inputs = x
    base = policy_of("tool-heuristic")
    pol = routing.explore(base, eps=eps, rho=rho)
    b = np.asarray(_jit_dist(base.dist)(s, inputs, base.params), np.float64)
    allowed = np.asarray(inputs.allowed)
    prev = int(s.prev_model)
    r = rho * (1 - b[prev]) if prev >= 0 and allowed[prev] else 0.0
    want = (1 - eps) * b + eps * allowed / allowed.sum()
    want = (1 - r) * want + r * (np.arange(M) == prev)
    np.testing.assert_allclose(np.asarray(_jit_dist(pol.dist)(s, inputs, pol.params)), want, atol=2e-6)


def test_sample_returns_the_drawn_models_probability():
    probs = jnp.asarray([0.0, 0.25, 0.75, 0.0, 0.0, 0.0])
    draws = [routing.sample(jax.random.key(i), probs) for i in range(200)]
    assert {int(a) for a, _ in draws} == {1, 2}
    assert all(float(p) == float(probs[int(a)]) for a, p in draws)


def test_roulette_uniform_propensity_is_one_over_allowed():
    s, _ = initial_summary(0, 100.0, np.inf), None
    inputs = routing.turn_inputs(np.ones(M), np.ones(M), 1.0, allowed=np.array([1, 1, 0, 1, 0, 0], bool))
    probs = np.asarray(routing.roulette(0.0).dist(s, inputs, routing.roulette(0.0).params))
    np.testing.assert_allclose(probs, [1 / 3, 1 / 3, 0, 1 / 3, 0, 0], atol=1e-7)


# ----------------------------------------------------------------------------- specs and bad inputs

@pytest.mark.parametrize("spec,flag,msg", [
    ("frobnicate", "--router", "unknown router"), ("fixed:gpt-6", "--router", "did you mean 'gpt-5'"),
    ("fixed", "--router", "needs a model"), ("sticky:1.5", "--router", "in \\[0, 1\\]"),
    ("sticky:x", "--router", "must be a number"), ("error-escalation:gpt-5,gpt-5", "--router", "twice"),
    ("learned", "--router", "needs a trained checkpoint"), ("tool-heuristc", "--router", "did you mean"),
])
def test_bad_router_specs(spec, flag, msg):
    with pytest.raises(RouterSpecError, match=msg) as ei:
        build_router(spec, POOL, TOOLS)
    assert ei.value.flag == flag


@pytest.mark.parametrize("spec,msg", [("eps:-0.1", "in \\[0, 1\\]"), ("beta:1.2", "in \\[0, 1\\]"),
                                      ("sticky:0.9:2", "in \\[0, 1\\]"), ("greedy:0.3", "unknown exploration"),
                                      ("eps:abc", "must be a number")])
def test_bad_explore_specs(spec, msg):
    with pytest.raises(RouterSpecError, match=msg):
        parse_explore(spec)


def test_explore_specs_map_to_eps_and_rho():
    assert parse_explore("eps:0.1") == (0.1, 0.0)
    assert parse_explore("beta:0.5") == (0.5, 0.0)
    assert parse_explore("sticky:0.9") == (0.1, 0.9)
    assert parse_explore("sticky:0.8:0.3") == (0.3, 0.8)


def test_tool_map_files_and_their_errors(tmp_path):
    good = tmp_path / "map.toml"
    good.write_text('[tools]\nsearch = "deepseek-v3.2"\npython = "strong"\n[classes]\nstrong = "gpt-5"\n')
    table = tool_table(POOL, TOOLS, ToolModelMap.from_file(good))
    assert POOL.names[table[TOOLS.index("search")]] == "deepseek-v3.2"
    assert POOL.names[table[TOOLS.index("python")]] == "gpt-5"
    assert POOL.names[table[-1]] == "gpt-oss-120b"  # first turn: the default (cheap) class
    pool_file = tmp_path / "pool.toml"
    pool_file.write_text('[[model]]\nname = "x"\nprice_input = 1\nprice_output = 1\n'
                         '[tool_heuristic.tools]\nfile = "gpt-5"\n')
    assert ToolModelMap.from_file(pool_file).tools == {"file": "gpt-5"}
    cases = {
        '[tools]\nsearch = "gpt-6"\n': "neither a pool model.*nor a class",
        '[tools]\nserch = "gpt-5"\n': "never occurs.*did you mean 'search'",
        '[tools]\nsearch = "strong"\n[classes]\nstrong = "claude"\n': "not in pool",
        '[tools]\nsearch = 3\n': "expected a model or class name",
        '[tool]\nsearch = "gpt-5"\n': "unknown key",
        'tools = [': "cannot parse",
    }
    for i, (text, msg) in enumerate(cases.items()):
        f = tmp_path / f"bad{i}.toml"
        f.write_text(text)
        with pytest.raises(RouterSpecError, match=msg) as ei:
            tool_table(POOL, TOOLS, ToolModelMap.from_file(f))
        assert ei.value.flag == "--tool-map"
    with pytest.raises(RouterSpecError, match="not found"):
        ToolModelMap.from_file(tmp_path / "missing.toml")


# ----------------------------------------------------------------------------- simulator <-> live parity

def _rules():
    """Rules that turn a simulated turn's (kind, severity) into an observation the live router detects."""
    return ErrorRuleSet([ErrorRule(f"^E {k} {s}$", k, s) for k in WORLD.error_kinds for s in ("low", "medium", "high")])


def _live_router(spec, explore=None):
    sim = make_sim_params(POOL, WORLD)
    hi = np.ceil(np.asarray(sim.output_tokens) * (1 + float(sim.output_token_spread)))
    return Router(None, POOL, policy=spec, explore=explore, tools=TOOLS,
                  task_types=tuple(t.name for t in WORLD.tasks), rules=_rules(),
                  output_tokens_hi=hi, output_tokens_mean=np.asarray(sim.output_tokens))


@pytest.mark.parametrize("spec,explore", [(s, None) for s in SPECS] + EXPLORES[:5])
def test_simulator_and_live_episode_give_the_same_distribution_decision_and_propensity(spec, explore):
    sim = make_sim_params(POOL, WORLD)
    pol = policy_of(spec, explore)
    final, rec, dec = jax.device_get(batch_rollout_with_decisions(
        jax.random.key(7), simulated(pol).apply, simulated(pol).params, sim, jnp.full((3,), jnp.inf)))
    router = _live_router(spec, explore)
    ref = jax.jit(lambda summ, state, p: pol.dist(summ, sim_turn_inputs(state, sim), p))
    for i in range(3):
        ep = router.start_episode(f"parity-{i}", WORLD.tasks[int(final.summary.task[i])].name,
                                  context_tokens=float(dec.summary.context_tokens[i, 0]), explore=explore is not None)
        for t in np.flatnonzero(rec.executed[i]):
            sim_summary = jax.tree_util.tree_map(lambda x: x[i, t], dec.summary)
            chex.assert_trees_all_close(ep.summary, sim_summary, rtol=1e-4, atol=1e-6)
            d = ep.decide(input_tokens_hi=float(sim_summary.context_tokens))
            want = np.asarray(ref(sim_summary, _state(final, rec, dec, i, t), pol.params))
            np.testing.assert_allclose(d.probs, want, atol=1e-6)
            a = int(rec.model[i, t])
            assert float(dec.propensity[i, t]) == pytest.approx(float(d.probs[a]), abs=1e-6)
            if want.max() == 1.0:
                assert d.model == POOL.names[a] and d.propensity == 1.0
            sev = int(rec.severity[i, t])
            obs = None if sev < 0 else f"E {WORLD.error_kinds[int(rec.error_kind[i, t])]} {('low', 'medium', 'high')[sev]}"
            ep.last_decision = None  # the simulator chose the model: record it as given
            nxt = float(dec.summary.context_tokens[i, t + 1]) if t + 1 < rec.model.shape[1] else 0.0
            ep.record(POOL.names[a], {"prompt_tokens": int(rec.input_tokens[i, t]),
                                      "completion_tokens": int(rec.output_tokens[i, t]),
                                      "prompt_tokens_details": {"cached_tokens": int(rec.cached_tokens[i, t])}},
                      tool_name=TOOLS[int(rec.tool[i, t])], observation=obs, next_context_tokens=nxt)


def _state(final, rec, dec, i, t):
    """The simulator state before turn t (only what sim_turn_inputs reads: summary and cached prefix)."""
    from mtrouter_jax.sim.core import EpisodeState

    summary = jax.tree_util.tree_map(lambda x: x[i, t], dec.summary)
    last_in = float(rec.input_tokens[i, t - 1]) if t > 0 else 0.0
    z = jnp.float32(0)
    return EpisodeState(summary, jnp.int32(0), jnp.int32(0), z, jnp.float32(last_in), z, jnp.bool_(False),
                        jnp.bool_(False))


def test_same_key_same_draw_in_simulator_and_live():
    """Both shells draw with routing.sample: the same key and distribution give the same model."""
    pol = policy_of("tool-heuristic", "sticky:0.5:0.5")
    s = initial_summary(0, 100.0, np.inf).replace(turn=jnp.int32(3), prev_model=jnp.int32(2),
                                                  recent_tools=jnp.asarray([0, 1, 2, 3], jnp.int32))
    inputs = routing.turn_inputs(np.full(M, 1e-3), np.full(M, 5e-4), np.inf)
    probs = pol.dist(s, inputs, pol.params)
    sim_apply = jax.jit(simulated(pol).apply)
    sim = make_sim_params(POOL, WORLD)
    for k in range(20):
        key = jax.random.key(k)
        a_sim, p_sim = sim_apply(key, _bare_state(s), sim, simulated(pol).params)
        a_live, p_live = routing.sample(key, probs)
        assert int(a_sim) == int(a_live) and float(p_sim) == pytest.approx(float(p_live), abs=1e-7)


def _bare_state(summary):
    from mtrouter_jax.sim.core import EpisodeState

    z = jnp.float32(0)
    return EpisodeState(summary, jnp.int32(0), jnp.int32(0), z, z, z, jnp.bool_(False), jnp.bool_(False))


# ----------------------------------------------------------------------------- the budget under exploration

def test_exploration_never_breaks_the_budget_over_10k_simulated_episodes():
    sim = make_sim_params(POOL, WORLD)
    rng = np.random.default_rng(0)
    specs = [("uniform", None), ("sticky:0.9", None), ("tool-heuristic", "sticky:0.9"), ("error-escalation", "eps:0.5")]
    for k, (spec, explore) in enumerate(specs):
        b = jnp.asarray(np.exp(rng.uniform(np.log(0.002), np.log(1.0), 2560)), jnp.float32)
        pol = simulated(policy_of(spec, explore))
        final, rec, dec = jax.device_get(batch_rollout_with_decisions(jax.random.key(k), pol.apply, pol.params, sim, b))
        m = jax.device_get(episode_outcomes(final, rec))
        assert not m["over_budget"].any()
        assert (final.summary.cost <= np.asarray(b)).all()
        # an executed exploratory turn's model always fitted: the turn was executed, and propensities are real
        p = dec.propensity[rec.executed]
        assert ((p > 0) & (p <= 1.0 + 1e-6)).all()


# ----------------------------------------------------------------------------- learned and safe: simulator <-> live

@pytest.mark.parametrize("spec", ["learned", "safe"])
def test_learned_and_safe_routers_decide_alike_in_simulator_and_live(tmp_path_factory, spec):
    """The estimator-backed routers, with a real (tiny) checkpoint: the simulator's policy
    (``policy.learned_policy``, features mapped from the simulator's vocabularies) and a
    ``LiveEpisode`` fed the same turns take the same decision with the same propensity."""
    from testing.artifacts import trained_checkpoint
    from mtrouter_jax.estimator.checkpoint import load_checkpoint
    from mtrouter_jax.sim.policies import learned_policy
    from mtrouter_jax.sim.params import sim_feature_layout

    sim = make_sim_params(POOL, WORLD)
    est = load_checkpoint(trained_checkpoint(tmp_path_factory))
    # both shells must assume the same completion lengths (the simulator's) for costs and pacing
    est.output_tokens_hi = np.ceil(np.asarray(sim.output_tokens) * (1 + float(sim.output_token_spread))).astype(np.float32)
    est.output_tokens_mean = np.asarray(sim.output_tokens, np.float32)
    pol = learned_policy(est, sim_feature_layout(POOL, WORLD), lam=0.1, safe=spec == "safe")
    budgets = jnp.asarray([jnp.inf, 0.3, jnp.inf], jnp.float32)
    final, rec, dec = jax.device_get(batch_rollout_with_decisions(jax.random.key(5), pol.apply, pol.params, sim, budgets))
    router = Router(est, POOL, lam=0.1, policy=spec, rules=_rules())
    checked = 0
    for i in range(len(budgets)):
        ep = router.start_episode(f"{spec}-{i}", WORLD.tasks[int(final.summary.task[i])].name,
                                  budget=None if not np.isfinite(budgets[i]) else float(budgets[i]),
                                  context_tokens=float(dec.summary.context_tokens[i, 0]))
        for t in np.flatnonzero(rec.executed[i]):
            d = ep.decide(input_tokens_hi=float(dec.summary.context_tokens[i, t]))
            a = int(rec.model[i, t])
            assert d.model == POOL.names[a], (i, t)
            assert d.propensity == 1.0 and float(dec.propensity[i, t]) == 1.0
            checked += 1
            sev = int(rec.severity[i, t])
            obs = None if sev < 0 else f"E {WORLD.error_kinds[int(rec.error_kind[i, t])]} {('low', 'medium', 'high')[sev]}"
            nxt = float(dec.summary.context_tokens[i, t + 1]) if t + 1 < rec.model.shape[1] else 0.0
            ep.record(POOL.names[a], {"prompt_tokens": int(rec.input_tokens[i, t]),
                                      "completion_tokens": int(rec.output_tokens[i, t]),
                                      "prompt_tokens_details": {"cached_tokens": int(rec.cached_tokens[i, t])}},
                      tool_name=TOOLS[int(rec.tool[i, t])], observation=obs, next_context_tokens=nxt)
    assert checked > 20
    served = rec.model[rec.executed]
    assert len(np.unique(served)) >= 2  # the rollouts exercise real choices, not one constant model
