"""Draft-and-escalate (routing/draft.py, live/draft.py): the per-type outcome table, the conservative
escalation rule, and the accounting of a billed draft."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.live.draft import cancel_draft, escalate_draft
from mtrouter_jax.live.router import Router
from mtrouter_jax.logs.io import Episode, Turn
from mtrouter_jax.routing.draft import (DEFAULT_DRAFT_MIN_GAIN, DRAFT_TESTS, Z95_ONE_SIDED, TypeOutcomes,
                                        check_draft_test,
                                        draft_escalation, fit_table, fit_type_outcomes, turn_gains)

TOOLS = ("explore", "act", "focus", "other")
POOL = default_pool()
CHEAP, STRONG = POOL.names[-1], POOL.names[0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=1, max_size=20), st.floats(-100, 100))
def test_gains_telescope_to_the_score_change(progress, start):
    g = turn_gains(progress, start, -100.0, 100.0)
    assert g.shape == (len(progress),)
    assert np.isclose(g.sum(), (progress[-1] - start) / 200.0, atol=1e-9)


def test_gains_unknown_without_progress_on_every_turn():
    assert turn_gains([1.0, None], 0.0, -100, 100) is None
    assert turn_gains([], 0.0, -100, 100) is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.floats(-1, 1)), min_size=1, max_size=60))
def test_table_is_the_grouped_mean_and_variance(rows):
    k, m, g = (np.array(x) for x in zip(*rows))
    t = fit_table(k, m, g.astype(float), TOOLS, ("a", "b", "c"))
    for kk in range(4):
        for mm in range(3):
            sel = g[(k == kk) & (m == mm)]
            assert t.n[kk, mm] == sel.size
            if sel.size:
                assert np.isclose(t.mean[kk, mm], sel.mean(), atol=1e-9)
            if sel.size > 1:
                assert np.isclose(t.var[kk, mm], sel.var(ddof=1), atol=1e-9)


def _table(gains: dict[tuple[int, int], list[float]], models=("a", "b", "c")) -> TypeOutcomes:
    rows = [(k, m, x) for (k, m), xs in gains.items() for x in xs]
    k, m, g = (np.array(x) for x in zip(*rows))
    return fit_table(k, m, g.astype(float), TOOLS, models)


def test_escalates_only_where_another_model_is_significantly_better_at_the_type():
    rng = np.random.default_rng(0)
    focus = TOOLS.index("focus")
    t = _table({(focus, 0): list(rng.normal(-0.3, 0.1, 40)), (focus, 1): list(rng.normal(0.1, 0.1, 40)),
                (0, 0): list(rng.normal(0.0, 0.1, 40)), (0, 1): list(rng.normal(0.01, 0.1, 40))})
    every = np.ones(3, bool)
    assert draft_escalation(t, focus, 0, every) == 1  # a's focus drafts go to b
    assert draft_escalation(t, focus, 1, every) == -1  # b is already the best
    assert draft_escalation(t, 0, 0, every) == -1  # explore: within noise
    assert draft_escalation(t, focus, 0, np.array([True, False, True])) == -1  # b does not fit the budget
    assert draft_escalation(t, focus, 0, every, n_min=41) == -1  # too few logged turns to trust
    assert draft_escalation(t, focus, 2, every) == -1  # nothing logged for the draft's model
    assert draft_escalation(t, 99, 0, every) == -1


@pytest.mark.parametrize("test", DRAFT_TESTS)
def test_both_tests_agree_on_a_clear_case(test):
    rng = np.random.default_rng(0)
    focus = TOOLS.index("focus")
    t = _table({(focus, 0): list(rng.normal(-0.3, 0.1, 40)), (focus, 1): list(rng.normal(0.1, 0.1, 40)),
                (0, 0): list(rng.normal(0.0, 0.1, 40)), (0, 1): list(rng.normal(0.01, 0.1, 40))})
    every = np.ones(3, bool)
    assert draft_escalation(t, focus, 0, every, test=test) == 1
    assert draft_escalation(t, focus, 1, every, test=test) == -1
    assert draft_escalation(t, 0, 0, every, test=test) == -1


def _cells(mean_a, mean_b, se, n=100):
    """A two-model table whose focus cells have exactly these means and standard errors."""
    nn = np.zeros((4, 2)); nn[2] = n
    mean = np.zeros((4, 2)); mean[2] = (mean_a, mean_b)
    var = np.zeros((4, 2)); var[2] = se * se * n
    return TypeOutcomes(TOOLS, ("a", "b"), nn, mean, var)


def test_difference_test_is_the_one_sided_welch_bound_and_overlap_is_stricter():
    se = 0.01
    z_diff = Z95_ONE_SIDED * np.sqrt(2) * se  # the smallest difference the difference test passes
    both = np.ones(2, bool)
    for gap, diff_says, overlap_says in ((0.9 * z_diff, -1, -1), (1.1 * z_diff, 1, -1),
                                         (2 * 1.96 * se * 1.01, 1, 1)):
        t = _cells(0.0, gap, se)
        assert draft_escalation(t, 2, 0, both, n_min=1, test="difference", min_gain=0.0) == diff_says, gap
        assert draft_escalation(t, 2, 0, both, n_min=1, test="overlap", min_gain=0.0) == overlap_says, gap


@pytest.mark.parametrize("test", DRAFT_TESTS)
def test_a_sure_but_small_advantage_does_not_pay_for_a_second_call(test):
    """Thousands of logged turns make a 0.005 advantage significant; under the default floor
    (DEFAULT_DRAFT_MIN_GAIN = 0.01 of the score range) it does not escalate, a 0.05 one does."""
    both = np.ones(2, bool)
    small, large = _cells(0.0, 0.005, 0.0005, n=2000), _cells(0.0, 0.05, 0.0005, n=2000)
    assert draft_escalation(small, 2, 0, both, test=test, min_gain=0.0) == 1  # significant...
    assert draft_escalation(small, 2, 0, both, test=test) == -1  # ...but below the floor
    assert draft_escalation(large, 2, 0, both, test=test) == 1
    assert DEFAULT_DRAFT_MIN_GAIN == 0.01 and small.escalations(test=test) == {}
    assert large.escalations(test=test) == {"focus": {"a": "b"}}


def test_unknown_test_is_refused_by_name():
    with pytest.raises(ValueError, match="overlap, difference"):
        check_draft_test("t-test")
    with pytest.raises(ValueError, match="unknown draft escalation test"):
        draft_escalation(_cells(0, 1, 0.01), 2, 0, np.ones(2, bool), test="bayes")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=2, max_size=30), st.sampled_from(DRAFT_TESTS))
def test_equal_outcomes_never_escalate(xs, test):
    t = _table({(2, 0): xs, (2, 1): xs})
    assert draft_escalation(t, 2, 0, np.ones(3, bool), n_min=1, test=test) == -1


def _episode(i: int, focus_model: str, focus_gain: float) -> Episode:
    turns = (Turn(CHEAP, 100, 0, 10, 1e-5, "explore", None, 1.0, progress=0.0),
             Turn(focus_model, 100, 0, 10, 1e-5, "focus", None, 1.0, progress=100.0 * focus_gain))
    return Episode(f"e{i}", "t", 100.0 * focus_gain, None, POOL.names, turns, (-100.0, 100.0), "live",
                   {"initial_score": 0.0})


def test_a_world_where_one_model_is_better_at_one_type_escalates_to_it():
    rng = np.random.default_rng(1)
    eps = [_episode(i, STRONG if i % 2 else CHEAP, (0.4 if i % 2 else -0.5) + 0.05 * rng.standard_normal())
           for i in range(80)]
    t = fit_type_outcomes(eps, TOOLS, POOL.names)
    assert t.escalations(n_min=20) == {"focus": {CHEAP: STRONG}}


def _router(budget_table: TypeOutcomes) -> Router:
    return Router(None, POOL, policy=f"fixed:{CHEAP}", tools=TOOLS, draft=True, type_outcomes=budget_table)


def _focus_table() -> TypeOutcomes:
    focus, c, s = TOOLS.index("focus"), POOL.index(CHEAP), POOL.index(STRONG)
    rng = np.random.default_rng(2)
    return _table({(focus, c): list(rng.normal(-0.4, 0.1, 30)), (focus, s): list(rng.normal(0.3, 0.1, 30))},
                  POOL.names)


USAGE = {"prompt_tokens": 1000, "completion_tokens": 200}


def test_a_billed_draft_is_one_logged_turn_whose_cost_includes_it():
    r = _router(_focus_table())
    ep = r.start_episode("x", budget=None)
    d = ep.decide(input_tokens_hi=1000)
    assert d.model == CHEAP
    assert escalate_draft(ep, CHEAP, USAGE, "explore", 1000) is None  # not a type worth escalating
    esc = escalate_draft(ep, CHEAP, USAGE, "focus", 1000)
    assert esc == STRONG
    draft_cost = r.turn_cost(CHEAP, 1000, 0, 200)
    assert ep.spent == pytest.approx(draft_cost)
    cost = ep.record(STRONG, USAGE, tool_name="focus", propensity=d.propensity)
    rec = ep.turns[-1]
    assert rec.model == STRONG and rec.meta["draft"]["model"] == CHEAP
    assert cost == pytest.approx(draft_cost + r.turn_cost(STRONG, 1000, 0, 200))
    assert ep.spent == pytest.approx(sum(t.cost for t in ep.turns))


def test_a_cancelled_draft_is_billed_once_as_the_served_turn():
    r = _router(_focus_table())
    ep = r.start_episode("y", budget=None)
    ep.decide(input_tokens_hi=1000)
    assert escalate_draft(ep, CHEAP, USAGE, "focus", 1000) == STRONG
    cancel_draft(ep)
    assert ep.spent == 0.0 and ep.pending_draft is None
    ep.record(CHEAP, USAGE, tool_name="focus")
    assert "draft" not in (ep.turns[-1].meta or {})
    assert ep.spent == pytest.approx(r.turn_cost(CHEAP, 1000, 0, 200))


@settings(max_examples=40, deadline=None)
@given(st.floats(1e-4, 0.2), st.integers(1, 8))
def test_escalation_never_lets_a_turn_pass_the_budget(budget, n_turns):
    """The escalated model's worst case is checked with the draft already spent, and its completion is
    capped on what is left: spend never exceeds the budget."""
    r = _router(_focus_table())
    ep = r.start_episode("z", budget=budget)
    for _ in range(n_turns):
        try:
            d = ep.decide(input_tokens_hi=1000)
        except Exception:
            break
        cap = ep.completion_cap(d.model, 1000)
        out = 200 if cap is None else min(200, cap)
        esc = escalate_draft(ep, d.model, {"prompt_tokens": 1000, "completion_tokens": out}, "focus", 1000)
        model, usage = d.model, {"prompt_tokens": 1000, "completion_tokens": out}
        if esc is not None:
            cap = ep.completion_cap(esc, 1000)
            model, usage = esc, {"prompt_tokens": 1000, "completion_tokens": 2000 if cap is None else min(2000, cap)}
        ep.record(model, usage, tool_name="focus")
        assert ep.spent <= budget + 1e-12


def test_draft_without_a_table_is_a_clear_error():
    with pytest.raises(ValueError, match="type_outcomes"):
        Router(None, POOL, policy="cheapest", tools=TOOLS, draft=True)
