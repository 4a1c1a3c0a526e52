"""Hindsight due types (routing/due.py) and the ``due`` draft tests that read them (routing/draft.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.logs.io import Episode, Turn
from mtrouter_jax.routing.draft import TypeOutcomes, draft_escalation, fit_table, fit_type_outcomes
from mtrouter_jax.routing.due import best_when_due, due_types, fit_due

TOOLS = ("explore", "act", "focus", "other")
EXPLORE, ACT = 0, 1
POOL = default_pool()
A, B = POOL.names[-1], POOL.names[3]  # A misses the due act, B types it


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0.0, 0.0, 0.5, -0.25])), min_size=1, max_size=30))
def test_due_type_is_the_type_of_the_next_score_change(rows):
    k, g = (np.array(x) for x in zip(*rows))
    due = due_types(k, g.astype(float), none=4)
    for t in range(len(k)):
        later = [i for i in range(t, len(k)) if g[i] != 0]
        assert due[t] == (k[later[0]] if later else 4)
    changed = g != 0
    assert np.all(due[changed] == k[changed])  # a turn that moved the score was due its own type


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, 2), st.floats(-1, 1)),
                min_size=1, max_size=60))
def test_due_table_groups_by_due_type_and_counts_the_mix(rows):
    k, d, m, g = (np.array(x) for x in zip(*rows))
    t = fit_due(k, d, m, g.astype(float), 4, 3)
    for dd in range(5):
        for mm in range(3):
            sel = g[(d == dd) & (m == mm)]
            assert t.n[dd, mm] == sel.size
            if sel.size:
                assert np.isclose(t.mean[dd, mm], sel.mean(), atol=1e-9)
    assert t.mix.sum() == len(rows)
    for mm, kk, dd in zip(m, k, d):
        assert t.mix[mm, kk, dd] >= 1


@settings(max_examples=40, deadline=None)
@given(st.floats(-1, 1), st.integers(0, 3))
def test_a_draft_whose_turns_all_had_one_type_due_is_valued_at_that_type(mu, due):
    """One-hot mix: an alternative's value is its mean gain when that type was due, its variance the
    cell's sampling variance alone."""
    rng = np.random.default_rng(0)
    g_alt = mu + 0.1 * rng.standard_normal(30)
    k = np.r_[np.full(30, due), np.full(20, EXPLORE)]
    d = np.r_[np.full(30, due), np.full(20, due)]
    m = np.r_[np.ones(30, int), np.zeros(20, int)]
    t = fit_due(k, d, m, np.r_[g_alt, np.zeros(20)], 4, 2)
    value, var, known = t.alternative_values(EXPLORE, 0, n_min=20)
    assert np.isclose(value[1], g_alt.mean()) and known[1]
    assert np.isclose(var[1], g_alt.var(ddof=1) / 30)


def _episode(i: int, model: str, acts: list[bool], act_gain: float = 0.1) -> Episode:
    """``model`` serves every turn of a task that needs ``len(acts)`` acts in a row: a hit (True) types
    the act and gains ``act_gain``; a miss types ``explore`` and gains nothing."""
    turns, score = [], 0.0
    for hit in acts:
        score += 100.0 * act_gain if hit else 0.0
        turns.append(Turn(model, 100, 0, 10, 1e-5, "act" if hit else "explore", None, 1.0, progress=score))
    return Episode(f"e{i}", "t", score, None, POOL.names, tuple(turns), (-100.0, 100.0), "live",
                   {"initial_score": 0.0})


def _world(seed: int = 0) -> list[Episode]:
    """A's act rate 0.4, B's 0.9; every act typed gains the same, so the typed ``act`` rows are equal."""
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(120):
        model, p = (A, 0.4) if i % 2 else (B, 0.9)
        acts = list(rng.random(6) < p) + [True]  # the episode ends on a final act
        eps.append(_episode(i, model, acts))
    return eps


def test_a_model_better_at_hitting_the_due_type_is_found_only_by_due():
    """The typed table sees two equal act rows and an explore row of zeros for both models: nothing to
    escalate. Keyed by due type, A's explore drafts were act turns B hits far more often."""
    t = fit_type_outcomes(_world(), TOOLS, POOL.names)
    a, b = POOL.index(A), POOL.index(B)
    assert np.isclose(t.mean[ACT, a], t.mean[ACT, b]) and t.mean[EXPLORE, a] == 0.0
    every = np.ones(len(POOL), bool)
    for test in ("overlap", "difference"):
        assert draft_escalation(t, EXPLORE, a, every, test=test) == -1
    for test in ("due", "due-difference"):
        assert draft_escalation(t, EXPLORE, a, every, test=test) == b
        assert draft_escalation(t, ACT, a, every, test=test) == -1  # a typed act is a hit: nothing to gain
        assert draft_escalation(t, ACT, b, every, test=test) == -1
        # B's rare misses: any model with a chance at the act beats a miss (their draws are independent)
        assert draft_escalation(t, EXPLORE, b, every, test=test) == a
        assert draft_escalation(t, EXPLORE, a, np.arange(len(POOL)) != b, test=test) == -1  # B unaffordable
    assert t.escalations(test="due") == {"explore": {A: B, B: A}}


def test_equal_models_never_escalate_a_hit_under_due():
    """Both models hit the due act at the same rate: a typed act (a hit) is never re-served. A typed
    explore is a visible miss, and a second model's independent chance beats it: that is re-served."""
    rng = np.random.default_rng(3)
    eps = [_episode(i, A if i % 2 else B, list(rng.random(6) < 0.6) + [True]) for i in range(200)]
    t = fit_type_outcomes(eps, TOOLS, POOL.names)
    assert "act" not in t.escalations(test="due") and "act" not in t.escalations(test="due-difference")


def test_due_outcomes_survive_the_checkpoint_meta_and_old_tables_fall_back():
    t = fit_type_outcomes(_world(), TOOLS, POOL.names)
    back = TypeOutcomes.from_meta(t.to_meta())
    for f in ("n", "mean", "var", "mix"):
        assert np.array_equal(getattr(back.due, f), getattr(t.due, f))
    old = {k: v for k, v in t.to_meta().items() if k != "due"}  # a checkpoint fitted before due types
    legacy = TypeOutcomes.from_meta(old)
    assert legacy.due is None
    every = np.ones(len(POOL), bool)
    a = POOL.index(A)
    assert (draft_escalation(legacy, EXPLORE, a, every, test="due")
            == draft_escalation(legacy, EXPLORE, a, every, test="overlap"))


def test_a_table_without_due_types_is_still_built_by_fit_table():
    t = fit_table(np.array([0, 1]), np.array([0, 0]), np.array([0.0, 0.1]), TOOLS, ("a",))
    assert t.due is None


@pytest.mark.parametrize("test", ["due", "due-difference"])
def test_due_escalation_needs_logged_turns_of_every_due_type_behind_the_draft(test):
    t = fit_type_outcomes(_world(), TOOLS, POOL.names)
    a = POOL.index(A)
    few = int(t.due.n[ACT, POOL.index(B)]) + 1
    assert draft_escalation(t, EXPLORE, a, np.ones(len(POOL), bool), n_min=few, test=test) == -1


def test_best_when_due_names_the_model_that_hits_the_due_type_where_the_typed_rows_tie():
    t = fit_type_outcomes(_world(), TOOLS, POOL.names)
    best = best_when_due(t.due, TOOLS, POOL.names)
    assert best["act"]["model"] == B and best["act"]["runner_up"]["model"] == A
    assert best["act"]["gain_pct"] > best["act"]["runner_up"]["gain_pct"] > 0
    assert best["act"]["turns"] == int(t.due.n[ACT, POOL.index(B)])
    assert set(best) == {"act"}  # no other type was ever due; "none" is left out
    assert best_when_due(t.due, TOOLS, POOL.names, n_min=10 ** 6) == {}
