"""References priced under drafting (routing/draft.py ``draft_pricing``, routing/reference.py
``draft_tiers``): a drafting router picks its reference by what the reference scores and costs once
its drafts of the escalated types are re-served."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrouter_jax.core.features import FeatureLayout
from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.logs.io import Episode, Turn
from mtrouter_jax.routing.draft import (DEFAULT_DRAFT_N_MIN, DEFAULT_DRAFT_TEST, draft_pricing, drafted_value_change,
                                        escalation_matrix, escalation_turn_costs, fit_type_outcomes, turn_gains)
from mtrouter_jax.routing.reference import Reference, fit_reference

TOOLS = ("explore", "focus", "other")
POOL = default_pool()
CHEAP, STRONG = POOL.names[-1], POOL.names[0]
OUT_HI = [2000.0] * len(POOL.names)  # worst-case completion tokens per model


def _turn(model: str, tool: str, progress: float) -> Turn:
    spec = POOL[model]
    cost = (1000 * spec.price_input + 100 * spec.price_output) / 1e6
    return Turn(model, 1000, 0, 100, cost, tool, None, 1.0, progress=progress)


def _episode(i: int, model: str, progress: list[float]) -> Episode:
    turns = tuple(_turn(model, "focus" if j == len(progress) - 1 else "explore", p) for j, p in enumerate(progress))
    return Episode(f"e{i}", "t", progress[-1], None, POOL.names, turns, (-100.0, 100.0), "live", {"initial_score": 0.0})


def _specialists_log(n: int = 60) -> list[Episode]:
    """The cheap model explores a little better (+10 a turn against +9: below the floor, so never
    re-served) but its focus fails (-100); the strong one's focus succeeds (+60). Small noise on the
    last score keeps the intervals finite."""
    rng = np.random.default_rng(0)
    eps = []
    for i in range(n):
        z = float(rng.uniform(-2, 2))
        if i % 2:
            eps.append(_episode(i, STRONG, [9.0, 18.0, 78.0 + z]))
        else:
            eps.append(_episode(i, CHEAP, [10.0, 20.0, -100.0 + abs(z)]))
    return eps


def test_nothing_re_served_changes_nothing_and_a_re_served_turn_takes_the_specialists_mean():
    eps = _specialists_log()
    table = fit_type_outcomes(eps, TOOLS, POOL.names)
    esc = escalation_matrix(table)
    focus = TOOLS.index("focus")
    assert esc[focus, POOL.index(CHEAP)] == POOL.index(STRONG) and (np.delete(esc, focus, 0) < 0).all()
    none = np.full_like(esc, -1)
    strong_focus = table.mean[focus, POOL.index(STRONG)]
    for e in eps:
        assert drafted_value_change(e, table, none) == 0.0
        g = turn_gains([t.progress for t in e.turns], 0.0, -100.0, 100.0)
        want = strong_focus - g[-1] if e.turns[0].model == CHEAP else 0.0
        assert drafted_value_change(e, table, esc) == pytest.approx(want)
    costs = escalation_turn_costs(eps, esc, TOOLS, POOL.names)
    assert costs[focus, POOL.index(CHEAP)] == pytest.approx(eps[1].turns[-1].cost)  # a strong focus turn
    assert np.count_nonzero(costs) == 1


def test_under_a_budget_a_turn_is_re_served_only_where_the_worst_case_fits():
    """The live gate: the spend so far, the draft and the re-serving model's worst-case turn must fit."""
    eps = _specialists_log()
    table = fit_type_outcomes(eps, TOOLS, POOL.names)
    esc = escalation_matrix(table)
    cheap_ep = eps[0]
    spent = sum(t.cost for t in cheap_ep.turns)  # the draft is the last (focus) turn
    worst = 0.01
    full = drafted_value_change(cheap_ep, table, esc)
    assert full > 0
    change = lambda b: drafted_value_change(cheap_ep, table, esc, budget=b, worst_cost=lambda prompt, j: worst)  # noqa: E731
    assert change(spent + worst) == pytest.approx(full)
    assert change(spent + worst * 0.99) == 0.0
    assert change(np.inf) == pytest.approx(full)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=1, max_size=12), st.floats(-1, 1))
def test_the_change_is_the_sum_of_substituted_gains(progress, alt):
    """Property: re-serving every turn of the episode's types replaces the telescoped score change
    by the alternatives' means, turn for turn."""
    eps = [_episode(0, CHEAP, progress)]
    table = fit_type_outcomes(eps, TOOLS, POOL.names)
    table.mean[:, POOL.index(STRONG)] = alt
    esc = np.full((len(TOOLS), len(POOL.names)), -1)
    esc[:, POOL.index(CHEAP)] = POOL.index(STRONG)
    g = turn_gains(progress, 0.0, -100.0, 100.0)
    assert drafted_value_change(eps[0], table, esc) == pytest.approx(len(progress) * alt - g.sum(), abs=1e-9)


def test_a_drafting_router_keeps_to_the_cheap_model_that_drafting_repairs():
    """As logged, the strong model is the better reference; priced under drafting, the cheap one is
    (its explore turns are a little better and its failing focus is re-served) from the budgets
    where its re-served focus fits. The metadata round-trips; other escalation settings, and
    checkpoints from before, get the logged tiers."""
    eps = _specialists_log()
    layout = FeatureLayout(("t",), TOOLS, (), POOL.names, max_steps=3.0)
    table = fit_type_outcomes(eps, TOOLS, POOL.names)
    ref = fit_reference(eps, layout, POOL, drafting=draft_pricing(eps, table, POOL, OUT_HI))
    assert ref.by_budget()[-1]["reference"] == f"single:{STRONG}"
    drafting = (DEFAULT_DRAFT_TEST, DEFAULT_DRAFT_N_MIN)
    steps = ref.by_budget(drafting)
    assert steps[-1]["reference"] == f"single:{CHEAP}+draft"
    names, _, costs, lcbs = ref.tiers
    index, d_costs, d_lcbs, fit = ref.draft_tiers
    assert fit == {"test": DEFAULT_DRAFT_TEST, "n_min": float(DEFAULT_DRAFT_N_MIN)}
    i = names.index(f"single:{CHEAP}")
    # every entry beats its tier's logged bound and is affordable no lower than the tier itself
    assert (d_lcbs > lcbs[index]).all() and (d_costs >= costs[index]).all() and i in index
    # the worst-case strong focus turn of a 1,000-token prompt: the budget from which it can be re-served
    worst = (1000 * POOL[STRONG].price_input + OUT_HI[0] * POOL[STRONG].price_output) / 1e6
    cheap_spend = sum(t.cost for t in eps[0].turns)
    assert min(d_costs[index == i]) >= cheap_spend + worst - 1e-9
    tables, all_costs, all_lcbs = ref.budget_tiers(drafting)
    assert len(tables) == len(names) + len(index) and (tables[len(names):] == ref.tiers[1][index]).all()
    back = Reference.from_meta(ref.to_meta())
    for a, b in zip(back.budget_tiers(drafting), ref.budget_tiers(drafting)):
        np.testing.assert_array_equal(a, b)
    for other in (("overlap", DEFAULT_DRAFT_N_MIN), None):
        np.testing.assert_array_equal(back.budget_tiers(other)[1], costs)
    old = {k: v for k, v in ref.to_meta().items() if k != "draft_tiers"}  # a checkpoint from before
    np.testing.assert_array_equal(Reference.from_meta(old).budget_tiers(drafting)[1], costs)


def test_logs_where_nothing_could_be_re_served_are_not_priced_twice():
    eps = [_episode(i, STRONG, [9.0, 18.0, 78.0 + i % 3]) for i in range(30)]
    assert draft_pricing(eps, fit_type_outcomes(eps, TOOLS, POOL.names), POOL, OUT_HI) is None
