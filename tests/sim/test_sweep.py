"""Tests for mtrouter_jax.sim.sweep: compiled budget sweeps, hard-budget safety, lambda calibration."""

from __future__ import annotations

import dataclasses
import types

import jax
import numpy as np
import pytest

from testing.artifacts import trained_checkpoint
from mtrouter_jax.estimator.checkpoint import load_checkpoint
from mtrouter_jax.sim.sweep import (_sweep, calibrate_lambda, evaluate_budgets, lambda_for_mean_cost,
                                   summarise_point, with_lambdas)
from mtrouter_jax.sim.policies import escalation_policy, learned_policy, oracle_policy
from mtrouter_jax.sim.params import WorldConfig, sim_feature_layout

TIGHT = [0.005, 0.02, 0.06]  # USD per episode: well below the ~0.3 USD a typical episode costs
N_SAFETY = 1024  # episodes per budget: 3072 per router


@pytest.fixture(scope="module")
def est(tmp_path_factory):
    return load_checkpoint(trained_checkpoint(tmp_path_factory))


def test_one_compile_serves_every_budget_value(pool, sim):
    pol = escalation_policy(pool)
    key = jax.random.PRNGKey(0)
    first = evaluate_budgets(key, pol, sim, [0.05, 0.1, 0.4], 16)
    size = _sweep._cache_size()
    second = evaluate_budgets(key, pol, sim, [0.07, 0.3, np.inf], 16)
    evaluate_budgets(jax.random.PRNGKey(1), pol, sim, np.array([1.0, 2.0, 3.0], np.float64), 16)
    assert _sweep._cache_size() == size
    assert first["score"].shape == second["score"].shape == (3,)
    assert first["tool_model_counts"].shape == (3, sim.n_tools, sim.n_models)
    # a looser budget never lowers spending in this sweep (same episodes for every budget)
    assert np.all(np.diff(first["cost"]) >= -1e-6)


def test_a_quick_compile_plays_the_same_episodes(pool, sim):
    """Without XLA's backend optimisations (cheap policies): the same episodes and scores; sums of
    costs may differ in the last bit only."""
    pol = escalation_policy(pool)
    key = jax.random.PRNGKey(3)
    full = evaluate_budgets(key, pol, sim, [0.05, np.inf], 16)
    quick = evaluate_budgets(key, pol, sim, [0.05, np.inf], 16, quick_compile=True)
    for name in ("episode_score", "switches", "turns", "tool_model_counts", "over_budget_rate"):
        np.testing.assert_array_equal(quick[name], full[name], err_msg=name)
    np.testing.assert_allclose(quick["cost"], full["cost"], rtol=1e-6)


@pytest.mark.parametrize("router", ["learned", "learned-no-pacing", "oracle"])
def test_hard_budget_is_never_exceeded(router, est, pool, sim):
    if router.startswith("learned"):  # lam=0: spends as much as allowed; the hard rule alone must hold too
        pol = learned_policy(est, sim_feature_layout(pool), lam=0.0, pacing=router == "learned")
    else:
        pol = oracle_policy(0.0, est.cost_scale)
    res = evaluate_budgets(jax.random.PRNGKey(7), pol, sim, TIGHT, N_SAFETY)
    assert np.all(res["over_budget_rate"] == 0.0), res["over_budget_rate"]
    assert np.all(res["max_cost_over_budget"] <= 1e-6), res["max_cost_over_budget"]
    assert np.all(res["cost"] <= np.asarray(TIGHT) + 1e-6)
    assert np.all(res["cost"] > 0) and np.all(np.isfinite(res["score"]))


def test_calibrate_lambda_picks_one_grid_value_per_budget(est, sim):
    grid = (0.0, 0.5, 2.0)
    budgets = [0.02, 0.1, 0.5]
    lams = calibrate_lambda(jax.random.PRNGKey(2), oracle_policy(0.0, est.cost_scale), sim, budgets, 32, grid=grid)
    assert lams.shape == (3,) and set(lams.tolist()) <= set(grid)


def test_lambda_for_mean_cost_meets_the_target(est, sim):
    oracle = oracle_policy(0.0, est.cost_scale)
    key = jax.random.PRNGKey(3)
    # with_lambdas everywhere: the bisection's compiled sweep serves these two evaluations too
    free = float(evaluate_budgets(key, oracle, sim, [np.inf], 128, with_lambdas(oracle, [0.0]))["cost"][0])
    target = np.array([0.5 * free], np.float32)
    lam = lambda_for_mean_cost(key, oracle, sim, target, 128, iters=8)
    assert lam.shape == (1,) and lam[0] > 0
    cost = evaluate_budgets(key, oracle, sim, [np.inf], 128, with_lambdas(oracle, lam))["cost"]
    # bisection keeps the cheaper side: at most the target, and not far below it
    assert cost[0] <= target[0] * (1 + 1e-5)
    assert cost[0] >= 0.75 * target[0]


def test_summarise_point_shares_sum_to_one(pool, sim):
    world = WorldConfig()
    budgets = [0.05, 0.2, np.inf]  # three budgets of 16 episodes: the compile of the tests above
    res = evaluate_budgets(jax.random.PRNGKey(0), escalation_policy(pool), sim, budgets, 16)
    for i, b in enumerate(budgets):
        p = summarise_point(res, i, b, 0.5, pool.names, world.tools)
        assert p["budget"] == (None if np.isinf(b) else pytest.approx(b)) and p["lam"] == 0.5
        assert sum(p["model_share"].values()) == pytest.approx(1.0)
        assert p["tool_model_share"]
        for row in p["tool_model_share"].values():
            assert sum(row.values()) == pytest.approx(1.0)
        assert set(p["model_share"]) == set(pool.names)
        assert 0.0 <= p["over_budget_rate"] <= 1.0


def test_same_seed_gives_identical_results(pool, sim):
    pol = escalation_policy(pool)
    a = evaluate_budgets(jax.random.PRNGKey(11), pol, sim, [0.05, 0.1, 0.4], 16)
    b = evaluate_budgets(jax.random.PRNGKey(11), pol, sim, [0.05, 0.1, 0.4], 16)
    c = evaluate_budgets(jax.random.PRNGKey(12), pol, sim, [0.05, 0.1, 0.4], 16)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_learned_policy_needs_every_sim_model(est, pool):
    layout = est.layout
    fewer = types.SimpleNamespace(**{k: getattr(est, k) for k in (
        "graphdef", "params", "meta", "cost_scale", "output_tokens_hi", "output_tokens_mean", "cost_target",
        "text_dim")}, layout=dataclasses.replace(layout, models=layout.models[:-1]))
    with pytest.raises(ValueError, match=pool.names[-1]):
        learned_policy(fewer, sim_feature_layout(pool))


# --- budget pacing (policy.budget_allowed / pace_costs) ------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mtrouter_jax.sim.policies import PACE_SWITCH_SLACK, budget_allowed, pace_costs, route_decision  # noqa: E402


def test_pacing_drops_models_that_cannot_finish_unless_none_can():
    worst = np.array([0.01, 0.01, 0.01])
    pace = np.array([0.50, 0.05, 0.20])
    np.testing.assert_array_equal(budget_allowed(worst, 0.1, pace), [False, True, False])
    np.testing.assert_array_equal(budget_allowed(worst, 0.1), [True, True, True])  # no pacing: hard rule only
    # nobody can finish at their pace: fall back to the hard rule, never to nothing
    np.testing.assert_array_equal(budget_allowed(worst, 0.02, pace), [True, True, True])
    # the hard rule always binds, pacing or not
    np.testing.assert_array_equal(budget_allowed(np.array([0.2, 0.01, 0.01]), 0.1, np.zeros(3)), [False, True, True])


def test_pacing_hysteresis_keeps_the_current_model_but_not_a_newcomer():
    worst = np.full(2, 0.001)
    pace = np.array([0.09, 0.09])  # both within the budget, neither within the switch slack of it
    remaining = 0.09 / PACE_SWITCH_SLACK - 0.01
    np.testing.assert_array_equal(budget_allowed(worst, remaining, pace, prev_model=0), [True, False])
    np.testing.assert_array_equal(budget_allowed(worst, remaining, pace, prev_model=1), [False, True])
    # the better-scored model 1 is not switched to; staying on 0 is allowed
    assert int(route_decision(np.array([0.1, 0.9]), np.zeros(2), 0.0, worst, remaining, -1, 0, 0.0, pace)) == 0


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.just(0.0), st.floats(1e-30, 1e-2)), st.floats(1e3, 1e5), st.integers(0, 30), st.integers(0, 30))
def test_pace_cost_covers_this_turn_and_grows_with_the_turns_left(expected, context, turn, left):
    price_cached, price_out, out = np.array([1e-7]), np.array([1e-5]), np.array([500.0])
    p = float(pace_costs(np.array([expected]), context, turn, left, price_cached, price_out, out)[0])
    p_more = float(pace_costs(np.array([expected]), context, turn, left + 1, price_cached, price_out, out)[0])
    assert p >= expected * (1 - 1e-6)
    assert p_more > p
    assert float(pace_costs(np.array([expected]), context, turn, 0, price_cached, price_out, out)[0]) == pytest.approx(expected)
