"""Executed-counterfactual pairs: links, advantage labels (property-tested) and what the pair loss
teaches a router."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.estimator.dataset import build_training_data
from mtrouter_jax.estimator.pairs import BranchLinkWarning, branch_links, paired_advantages
from mtrouter_jax.estimator.train import TrainConfig, fit
from mtrouter_jax.logs.records import Episode, Turn

MODELS = ("gpt-5", "gpt-oss-120b")


def _turn(model, tool, action="a"):
    return Turn(model, 100, 0, 50, 0.001 if model == "gpt-5" else 0.0001, tool, None, None, action=action)


def _episode(eid, turns, score, meta=None):
    return Episode(eid, "t", float(score), None, MODELS, tuple(turns), (0.0, 1.0), "test", meta)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1, 1, width=32), min_size=2, max_size=20), st.data())
def test_equal_outcomes_give_zero_advantage_and_labels_are_antisymmetric(y, data):
    y = np.asarray(y, np.float32)
    rows = np.asarray(data.draw(st.lists(st.tuples(st.integers(0, len(y) - 1), st.integers(0, len(y) - 1)),
                                         min_size=1, max_size=10)), np.int32)
    d = np.asarray(paired_advantages(y, rows))
    np.testing.assert_allclose(d, y[rows[:, 1]] - y[rows[:, 0]], atol=1e-6)
    np.testing.assert_allclose(np.asarray(paired_advantages(y, rows[:, ::-1])), -d, atol=1e-6)
    same = np.stack([rows[:, 0], rows[:, 0]], 1)
    assert np.all(np.asarray(paired_advantages(y, same)) == 0)


def test_links_keep_the_branch_tail_and_refuse_bad_links():
    base = _episode("b", [_turn("gpt-5", "explore", f"x{i}") for i in range(4)], 0.5)
    br = _episode("b~t2", [*base.turns[:2], _turn("gpt-oss-120b", "explore"), base.turns[3]], 0.7,
                  {"branch_of": "b", "branch_turn": 2})
    first, group, pairs = branch_links([base, br])
    assert pairs == [(0, 1, 2)] and group.tolist() == [0, 0]
    assert first.tolist() == [0, 2]
    orphan = dataclasses.replace(br, episode_id="o", meta={"branch_of": "missing", "branch_turn": 2})
    other_prefix = dataclasses.replace(br, episode_id="p", turns=(_turn("gpt-oss-120b", "explore"), *br.turns[1:]))
    out_of_range = dataclasses.replace(br, episode_id="r", meta={"branch_of": "b", "branch_turn": 9})
    with pytest.warns(BranchLinkWarning, match="3 branch episode"):
        first, group, pairs = branch_links([base, orphan, other_prefix, out_of_range])
    assert pairs == [] and group.tolist() == [0, 1, 2, 3]
    assert first.tolist() == [0, 2, 2, 0]


def _world(n=160, seed=0, noise=0.25):
    """Episodes of one action type each ("focus" or "explore", visible from turn 1 as the last tool):
    gpt-5 is strictly better on focus turns, gpt-oss-120b on explore turns; the terminal score
    carries a large episode-level noise, and each episode has one branch with the same noise."""
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n):
        tool = "focus" if i % 2 else "explore"
        best = "gpt-5" if tool == "focus" else "gpt-oss-120b"
        models = rng.choice(MODELS, size=6)
        z = rng.normal(0, noise)
        score = lambda ms: float(0.3 + 0.1 * sum(m == best for m in ms) + z)  # noqa: E731
        turns = [_turn(str(m), tool, f"{tool}{k}") for k, m in enumerate(models)]
        base = _episode(f"e{i}", turns, score(models))
        t = int(rng.integers(1, 6))
        alt = MODELS[1 - MODELS.index(str(models[t]))]
        ms = [*models[:t], alt, *models[t + 1:]]
        br_turns = [*turns[:t], _turn(alt, tool, f"{tool}{t}"), *turns[t + 1:]]
        eps += [base, _episode(f"e{i}~t{t}", br_turns, score(ms), {"branch_of": base.episode_id, "branch_turn": t})]
    return eps


def test_the_pair_loss_teaches_the_better_model_per_action_type():
    pool = default_pool().subset(list(MODELS))
    data = build_training_data(_world(), pool)
    assert data.pairs is not None and len(data.pairs) == 160
    res = fit(data, pool, TrainConfig(max_epochs=30, patience=30, batch_size=64, seed=1), progress=False)
    pick = np.array(MODELS)[np.asarray(res.model.score_all(data.features))[:, :, 0].argmax(1)]
    # from an episode's second turn on, its last tool says which type is due; _world alternates
    # explore / focus episodes, each logged as (base, branch)
    later = np.r_[False, data.episode[1:] == data.episode[:-1]]
    ep_type = np.array(["focus" if (e // 2) % 2 else "explore" for e in data.episode])
    assert np.mean(pick[later & (ep_type == "focus")] == "gpt-5") > 0.9
    assert np.mean(pick[later & (ep_type == "explore")] == "gpt-oss-120b") > 0.9
