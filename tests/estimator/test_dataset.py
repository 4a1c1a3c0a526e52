"""Tests for mtrouter_jax.estimator.dataset: logged episodes -> per-turn training arrays."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from testing.artifacts import simulated_episodes
from mtrouter_jax.estimator.dataset import TargetConfig, build_layout, build_training_data, split_by_episode
from mtrouter_jax.core.features import NO_VALUE, vocab_index
from mtrouter_jax.sim.params import sim_feature_layout
from mtrouter_jax.estimator.text import HashedNgramEncoder


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    return simulated_episodes(tmp_path_factory)


@pytest.fixture(scope="module")
def data(episodes, pool):
    return build_training_data(episodes, pool)  # default: cost_target="future"


@pytest.fixture(scope="module")
def data_remaining(episodes, pool):
    return build_training_data(episodes, pool, TargetConfig(cost_target="remaining"))


def _starts(episodes):
    """Index of each episode's first turn in the flat arrays."""
    return np.concatenate([[0], np.cumsum([len(e.turns) for e in episodes])[:-1]])


def test_one_example_per_turn_with_consistent_shapes(episodes, data, pool):
    n = sum(len(e.turns) for e in episodes)
    assert data.n == n and data.n_episodes == len(episodes)
    assert data.features.shape == (n, data.layout.n_features) and data.features.dtype == np.float32
    for a in (data.model, data.score_target, data.cost_target, data.weight, data.episode):
        assert a.shape == (n,)
    assert np.all(np.isfinite(data.features))
    assert data.output_tokens_hi.shape == data.output_tokens_mean.shape == (len(pool),)
    assert np.all(data.output_tokens_hi >= data.output_tokens_mean)
    # examples are in episode order, turn order; the served model is the logged one
    assert np.array_equal(np.bincount(data.episode), [len(e.turns) for e in episodes])
    served = [pool.index(t.model) for e in episodes for t in e.turns]
    assert np.array_equal(data.model, served)
    assert data.text_dim == 0 and data.layout.models == pool.names


def test_validation_split_is_by_episode(data):
    train, val = split_by_episode(data, 0.25, seed=3)
    assert len(train) + len(val) == data.n and len(np.intersect1d(train, val)) == 0
    tr_eps, va_eps = set(data.episode[train]), set(data.episode[val])
    assert tr_eps.isdisjoint(va_eps)
    assert len(va_eps) == round(0.25 * data.n_episodes)
    # deterministic from the seed
    train2, val2 = split_by_episode(data, 0.25, seed=3)
    assert np.array_equal(train, train2) and np.array_equal(val, val2)
    assert len(split_by_episode(data, 0.0, seed=3)[1]) == 0


def test_vocabularies_are_sorted_and_come_from_the_data(episodes, data, pool):
    L = data.layout
    assert list(L.task_types) == sorted({e.task_type for e in episodes})
    assert list(L.tools) == sorted({t.tool for e in episodes for t in e.turns if t.tool})
    assert list(L.error_kinds) == sorted({t.error.kind for e in episodes for t in e.turns if t.error})
    assert L.max_steps == max(len(e.turns) for e in episodes)
    assert L.cost_scale == pytest.approx(np.mean([e.total_cost for e in episodes]))
    # a log with a tool the simulator never uses: the layout grows to include it
    t0 = episodes[0].turns[0]
    odd = dataclasses.replace(episodes[0], episode_id="odd", turns=(dataclasses.replace(t0, tool="teleport"),)
                              + episodes[0].turns[1:])
    L2 = build_layout(list(episodes) + [odd], pool)
    assert "teleport" in L2.tools and list(L2.tools) == sorted(L2.tools)
    assert L2.n_features == L.n_features + 2  # last-tool one-hot and recent-tool share each grow by one


def test_vocab_index_unseen_goes_to_other_bucket():
    idx = vocab_index(("a", "b"), ["b", "zzz", None, "a"])
    assert idx.tolist() == [1, 2, NO_VALUE, 0]


def test_replayed_features_equal_the_simulator_features(episodes, pool):
    layout = sim_feature_layout(pool)
    d = build_training_data(episodes, pool, layout=layout)
    logged = np.array([t.features for e in episodes for t in e.turns], np.float32)
    assert logged.shape == d.features.shape
    np.testing.assert_allclose(d.features, logged, atol=1e-4, rtol=0)


def test_remaining_cost_target_of_first_turn_is_episode_cost(episodes, data_remaining):
    d = data_remaining
    costs = np.array([e.total_cost for e in episodes])
    assert d.cost_scale == pytest.approx(costs.mean())
    np.testing.assert_allclose(d.cost_target[_starts(episodes)], costs / costs.mean(), rtol=1e-4, atol=1e-6)
    assert np.all(d.cost_target >= -1e-6)


def test_future_cost_target_is_remaining_minus_this_turn(episodes, data, data_remaining):
    turn_cost = np.array([t.cost for e in episodes for t in e.turns]) / data.cost_scale
    np.testing.assert_allclose(data.cost_target, data_remaining.cost_target - turn_cost, atol=1e-5)
    last = np.cumsum([len(e.turns) for e in episodes]) - 1
    np.testing.assert_allclose(data.cost_target[last], 0.0, atol=1e-5)
    # score targets do not depend on the cost target choice
    assert np.array_equal(data.score_target, data_remaining.score_target)


def test_unknown_cost_target_rejected(episodes, pool):
    with pytest.raises(ValueError, match="cost_target"):
        build_training_data(episodes[:8], pool, TargetConfig(cost_target="total"))


def test_propensity_weighting_is_inverse_and_clipped(episodes, pool):
    M = len(pool)
    props = [1e-4, 1.0, None, 1.0 / M, 0.5 / M]  # cycled over the turns
    eps = []
    k = 0
    for e in episodes[:8]:
        turns = []
        for t in e.turns:
            turns.append(dataclasses.replace(t, propensity=props[k % len(props)]))
            k += 1
        eps.append(dataclasses.replace(e, turns=tuple(turns)))
    cfg = TargetConfig(propensity_weighting=True, max_weight=10.0)
    w = build_training_data(eps, pool, cfg).weight
    flat = np.array([1.0 if p is None else p for p in (props[i % len(props)] for i in range(len(w)))])
    expected = np.clip(1.0 / (M * flat), 0.1, 10.0)
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert w.min() >= 0.1 - 1e-7 and w.max() <= 10.0 + 1e-6
    assert {10.0, 1.0}.issubset(set(np.round(w, 5)))  # both the cap and the on-policy weight occur
    # uniform logging over the affordable models: weight 1/(M p) = |allowed|/M (1 when all fit);
    # weighting off gives ones
    logged = np.array([t.propensity for e in episodes[:8] for t in e.turns])
    assert np.allclose(build_training_data(episodes[:8], pool, cfg).weight, np.clip(1.0 / (M * logged), 0.1, 10.0))
    assert np.all(build_training_data(eps, pool).weight == 1.0)


def test_episode_with_model_outside_the_pool_is_refused(episodes, pool):
    e = episodes[0]
    t = dataclasses.replace(e.turns[0], model="mystery-model")
    bad = dataclasses.replace(e, episode_id="bad", models=pool.names + ("mystery-model",),
                              turns=(t,) + e.turns[1:])
    with pytest.raises(ValueError, match="mystery-model"):
        build_training_data([episodes[1], bad], pool)
    with pytest.raises(ValueError, match="no episodes"):
        build_training_data([], pool)


def test_unscored_episode_is_refused(episodes, pool):
    bad = dataclasses.replace(episodes[0], episode_id="nul", score=None)
    with pytest.raises(ValueError, match=r"1 episode\(s\) have no score .*\['nul'\].*drop_unscored"):
        build_training_data([episodes[1], bad], pool)


def test_turn_with_model_outside_the_pool_is_refused(episodes, pool):
    e = episodes[0]
    bad = dataclasses.replace(e, episode_id="bad",
                              turns=(dataclasses.replace(e.turns[0], model="mystery-model"),) + e.turns[1:])
    with pytest.raises(ValueError, match="mystery-model"):
        build_training_data([bad], pool)


def test_text_encoder_adds_text_dim_columns(episodes, pool, data):
    eps = [dataclasses.replace(e, turns=tuple(dataclasses.replace(t, observation=f"obs {i} {t.tool}")
                                              for i, t in enumerate(e.turns))) for e in episodes[:8]]
    base = build_training_data(eps, pool)
    d = build_training_data(eps, pool, text_encoder=HashedNgramEncoder(dim=8))
    assert d.text_dim == 8 and d.features.shape == (base.n, base.features.shape[1] + 8)
    np.testing.assert_array_equal(d.features[:, :-8], base.features)
    text = d.features[:, -8:]
    first = _starts(eps)
    # the first turn has no previous observation; every later one sees its predecessor's text
    assert np.all(text[first] == 0.0)
    rest = np.setdiff1d(np.arange(d.n), first)
    assert np.all(np.abs(text[rest]).sum(1) > 0)


# --- imported official-format trajectories -----------------------------------------------------

def _traj(path, info, messages):
    path.write_text(json.dumps({"trajectory_format": "mini-agentic-router-1", "info": info, "messages": messages}))


def _asst(content, model, prompt, completion, cost):
    return {"role": "assistant", "content": content, "model_name": model,
            "extra": {"response": {"usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                             "cost": cost, "prompt_tokens_details": {"cached_tokens": 0}}}}}


def _user(text):
    return {"role": "user", "content": text}


def test_imported_official_episodes_train_end_to_end(tmp_path, pool):
    from mtrouter_jax.logs.importers import import_official_trajectories
    from mtrouter_jax.estimator.train import TrainConfig, fit

    models = pool.names
    sw = [_user("Task: boil water")]
    for i in range(6):
        sw += [_asst(f"```\nlook around {i}\n```", models[i % len(models)], 1000 + 300 * i, 40, 0.001 * (i + 1)),
               _user("No known action matches that input." if i == 2 else f"You see room {i}.")]
    _traj(tmp_path / "sw-boil-v0.traj.json",
          {"exit_status": "Submitted", "task_name": "boil", "final_score": 60}, sw)
    hle = [_user("Question: 2+2?")]
    for i in range(5):
        hle += [_asst('<tool_call>{"name": "web_search", "arguments": {"q": "x"}}</tool_call>',
                      models[(i + 2) % len(models)], 800 + 200 * i, 30, 0.002),
                _user('<tool_response name="web_search">ok, results</tool_response>')]
    _traj(tmp_path / "hle-q1.traj.json",
          {"exit_status": "ForcedAnswer", "benchmark": "hle",
           "benchmark_data": {"category": "Math", "judge_result": {"correct": True}}}, hle)

    eps, report = import_official_trajectories(tmp_path, models=list(models))
    assert report.n_imported == 2 and len(eps) == 2, report.summary()
    d = build_training_data(eps, pool, text_encoder=HashedNgramEncoder(dim=4))
    assert d.n == 11 and set(d.layout.task_types) == {"boil", "Math"}
    assert np.all(np.isfinite(d.features)) and np.all(np.isfinite(d.score_target))
    res = fit(d, pool, TrainConfig(max_epochs=2, patience=2, batch_size=4, val_frac=0.0), progress=False,
              estimator_overrides={"history_hidden": 16, "history_dim": 8, "model_hidden": 8, "residual_dim": 4,
                                   "model_dim": 8, "joint_hidden": 16})
    assert len(res.history) == 2 and np.isfinite(res.val_loss)
    pred = np.asarray(res.model.score_all(d.features))
    assert pred.shape == (d.n, len(pool), 2) and np.all(np.isfinite(pred))


def test_dense_progress_targets_subtract_the_score_already_earned(episodes, pool):
    """With per-turn progress, the score target is what is still to be gained from each turn on."""
    eps = []
    for e in episodes[:6]:
        prog = np.linspace(-100, e.score, len(e.turns) + 1)[1:]
        turns = tuple(dataclasses.replace(t, progress=float(p)) for t, p in zip(e.turns, prog))
        eps.append(dataclasses.replace(e, turns=turns, meta={**(e.meta or {}), "initial_score": -100.0}))
    plain = build_training_data(eps, pool)
    dense = build_training_data(eps, pool, TargetConfig(dense_progress=True))
    before = np.concatenate([(np.r_[-100.0, [t.progress for t in e.turns][:-1]] + 100) / 200 for e in eps])
    np.testing.assert_allclose(dense.score_target, plain.score_target - before, atol=1e-6)
    np.testing.assert_allclose(dense.features, plain.features)  # routing inputs are unchanged
    # an episode without progress on every turn keeps its plain targets
    mixed = [eps[0], episodes[1]]
    d2 = build_training_data(mixed, pool, TargetConfig(dense_progress=True))
    p2 = build_training_data(mixed, pool)
    n0 = len(eps[0].turns)
    np.testing.assert_allclose(d2.score_target[n0:], p2.score_target[n0:])
