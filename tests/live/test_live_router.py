"""The HTTP-free live router: accounting, vocab mapping, decisions under budget, logging."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testing.live import FakeEstimator, make_pool
from mtrouter_jax.core.features import NO_VALUE
from mtrouter_jax.live.kernel import compiled_features
from mtrouter_jax.live import summary_words
from mtrouter_jax.live.router import BudgetExhausted, PoolMismatchError, Router
from mtrouter_jax.logs.io import read_episodes


@pytest.fixture(scope="module")
def router():
    return Router(FakeEstimator(make_pool()), lam=1.0)


def usage(p, c, cached=0):
    return {"prompt_tokens": p, "completion_tokens": c, "prompt_tokens_details": {"cached_tokens": cached}}


def test_cost_from_pool_prices_not_provider(router):
    ep = router.start_episode(budget=1.0)
    cost = ep.record("mid", {**usage(1000, 100, cached=400), "cost": 99.0})
    assert cost == pytest.approx((600 * 1.0 + 400 * 0.1 + 100 * 2.0) / 1e6)
    assert ep.spent == cost and ep.tokens == 1100 and ep.remaining == pytest.approx(1.0 - cost)
    cost2 = ep.record("cheap", None)  # no usage reported: nothing billed
    assert cost2 == 0.0


def test_tool_mapping_with_aliases_and_other_bucket(router):
    vocab = router.layout.tools
    assert router.tool_of("web_search") == ("search", vocab.index("search"))
    assert router.tool_of("fetch_url") == ("browse", vocab.index("search"))  # alias browse -> search
    assert router.tool_of("bash") == ("bash", vocab.index("python"))  # alias bash -> python
    assert router.tool_of(None) == ("reasoning", vocab.index("reasoning"))
    assert router.tool_of("frobnicate") == ("other", len(vocab))  # unseen -> "other" bucket


def test_attach_observation_rederives_error(router):
    ep = router.start_episode(task_type="qa")
    assert int(ep.summary.task) == 0
    ep.record("mid", usage(100, 10), tool_name="python")
    assert int(ep.summary.n_errors) == 0
    err = ep.attach_observation("Traceback (most recent call last):\nValueError: x")
    assert err.kind == "python_error" and err.severity == "high"
    s = ep.summary
    assert int(s.n_errors) == 1 and int(s.recent_severities[0]) == 2 and int(s.turn) == 1
    assert int(s.recent_error_kinds[0]) == len(router.layout.error_kinds)  # unseen kind -> other
    ep.attach_observation("fine now")
    assert int(ep.summary.n_errors) == 0 and int(ep.summary.recent_severities[0]) == NO_VALUE
    assert int(router.start_episode(task_type="unknown-task").summary.task) == 2


def test_decision_rule_prefers_tool_model_and_lam_and_ties(router):
    ep = router.start_episode()
    d = ep.decide(input_tokens_hi=100)
    assert d.model == "strong" and d.propensity == 1.0 and set(d.ranking) == {"cheap", "mid", "strong"}
    assert d.ranking[1:] == ("cheap", "mid")  # ties -> lowest pool index first
    ep.record(d.model, usage(100, 10), tool_name="search")
    assert ep.choose(input_tokens_hi=200) == "cheap"
    ep.record("cheap", usage(200, 10), tool_name="run_python")
    assert ep.choose(input_tokens_hi=300) == "mid"
    # a huge lambda makes the (uniform) remaining cost irrelevant to the ranking; values shift
    d2 = ep.decide(input_tokens_hi=300, lam=1000.0)
    assert d2.model == "mid" and np.all(d2.values < d.values)


def test_budget_mask_exhaustion_and_validation(router):
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="budget"):
            router.start_episode(budget=bad)
    ep = router.start_episode(budget=0.003)  # strong's worst case (~0.0045) does not fit
    d = ep.decide(input_tokens_hi=100)
    assert "strong" not in d.ranking and d.model == "cheap"
    worst = ep.worst_costs(100)
    for m in d.ranking:
        i = router.pool.index(m)
        cap = d.max_output_tokens[m]
        assert cap is not None and cap >= router.output_tokens_hi[i]
        assert 100 * router.price_in[i] + cap * router.price_out[i] <= 0.003
        assert worst[i] <= 0.003
    ep.record("cheap", usage(100, 7400))  # 0.00298: now nothing fits
    with pytest.raises(BudgetExhausted, match="budget exhausted"):
        ep.choose(input_tokens_hi=100)
    with pytest.raises(BudgetExhausted):  # stays ended
        ep.choose(input_tokens_hi=1)


def test_cache_assumption_only_in_mask_not_in_cap():
    r = Router(FakeEstimator(make_pool()), lam=1.0)
    ep = r.start_episode(budget=0.01)
    ep.record("strong", usage(1000, 100, cached=0))  # 0.007
    # strong served the last turn: its 1100-token prefix is priced as cached in the mask...
    d = ep.decide(input_tokens_hi=1150)
    assert "strong" not in d.ranking  # uncached 1150*5e-6 = 0.00575 > 0.003 left: dropped by the cap
    r2 = Router(FakeEstimator(make_pool()), lam=1.0, assume_cache_hits=False)
    ep2 = r2.start_episode(budget=0.01)
    ep2.record("strong", usage(1000, 100))
    assert "strong" not in ep2.decide(input_tokens_hi=1150).ranking


@settings(max_examples=30, deadline=None)
@given(budget=st.floats(1e-4, 0.05), turns=st.lists(
    st.tuples(st.integers(1, 5000), st.integers(0, 20000), st.floats(0, 1)), min_size=1, max_size=15))
def test_budget_never_exceeded_when_calls_obey_the_bounds(budget, turns):
    r = Router(FakeEstimator(make_pool()), lam=1.0)
    ep = r.start_episode(budget=budget)
    for hi, natural, cache_frac in turns:
        try:
            d = ep.decide(input_tokens_hi=hi)
        except BudgetExhausted:
            break
        cap = d.max_output_tokens[d.model]  # None: the model's own output limit is the cap
        completion = min(natural, r.max_output[r.pool.index(d.model)] if cap is None else cap)
        cached = int(cache_frac * hi) if ep.prev_model == d.model else 0
        ep.record(d.model, usage(hi, completion, cached))
        assert ep.spent <= budget + 1e-12


def test_features_compiled_once_per_layout(router):
    feats = compiled_features(router.layout)
    assert feats is router._feats
    ep = router.start_episode(budget=0.5)
    for i in range(5):
        ep.choose(input_tokens_hi=100 * (i + 1), context_tokens=50.0 * i)
        ep.record(ep.last_decision.model, usage(100 * (i + 1), 20), tool_name="web_search")
        ep.attach_observation("HTTP 503 error" if i % 2 else "ok")
    assert feats._cache_size() == 1


def test_finish_logs_episode(tmp_path):
    log = tmp_path / "sub" / "live.jsonl"
    r = Router(FakeEstimator(make_pool()), log_path=log)
    ep = r.start_episode("ep-1", task_type="science", budget=0.2)
    ep.choose(input_tokens_hi=50)
    ep.record("strong", usage(50, 5), tool_name="web_search", observation="No known action matches that input",
              action="look around", meta={"note": 1})
    ep2 = r.start_episode("ep-2")
    assert ep2.finish() is None  # no turns: nothing written
    out = ep.finish(score=0.75, score_range=(0.0, 1.0))
    with pytest.raises(RuntimeError, match="already finished"):
        ep.finish()
    (back,) = read_episodes(log)
    assert back == out and back.task_type == "science" and back.budget == 0.2
    t = back.turns[0]
    assert t.error.kind == "invalid_action" and t.observation is None and t.action is None
    assert t.features is not None and len(t.features) == r.layout.n_features
    assert back.score == 0.75 and back.models == r.pool.names
    r_text = Router(FakeEstimator(make_pool()), log_path=tmp_path / "t.jsonl", log_text=True)
    e = r_text.start_episode("txt")
    e.record("cheap", usage(10, 1), observation="obs", action="act")
    e.finish()
    (b,) = read_episodes(tmp_path / "t.jsonl")
    assert b.turns[0].observation == "obs" and b.score is None
    with pytest.raises(ValueError, match="score_range"):
        r.start_episode().finish(score=5, score_range=(0, 1))


def test_ranking_matches_policy_route_decision():
    from mtrouter_jax.sim import policies as policy
    rng = np.random.default_rng(0)
    for _ in range(40):
        score = rng.choice([0.1, 0.5, 0.9], 3)  # ties on purpose
        cost = rng.uniform(0, 1, 3)
        worst = rng.uniform(0, 0.01, 3)
        pace = worst * rng.uniform(1, 3, 3)
        remaining = float(rng.uniform(0, 0.012))
        prev = int(rng.integers(-1, 3))
        ok = worst <= remaining
        paced = ok & (pace <= remaining * np.where(np.arange(3) == prev, 1.0, policy.PACE_SWITCH_SLACK))
        ok = paced if paced.any() else ok
        values = score - 1.0 * cost + 0.3 * ((np.arange(3) == prev) & (prev >= 0))
        mine = [int(i) for i in np.argsort(-values, kind="stable") if ok[i]]
        theirs = int(policy.route_decision(score, cost, 1.0, worst, remaining, -1, prev, 0.3, pace))
        assert theirs == (mine[0] if mine else -1)


def test_live_decision_uses_the_simulated_policy_rule(router):
    """The live decision is the routing module's learned rule (the simulator's) on the same inputs
    (margin, pacing, the float64 hard rule)."""
    from mtrouter_jax.routing.meta import expected_steps_for
    from mtrouter_jax.sim import policies as policy
    ep = router.start_episode(budget=0.004)
    steps = float(expected_steps_for(router.estimator.meta, ["other"])[0])
    for tool in ("search", "python", "search", "reasoning"):
        d = ep.decide()
        score, rem = router.estimator.predict(d.features)
        hi = float(ep.last_prompt + ep.last_completion)
        n = len(ep.turns)
        pace = np.asarray(policy.pace_costs(ep.worst_costs(hi, router.output_tokens_mean), hi, n,
                                            steps - n - 1, router.price_cached, router.price_out,
                                            router.output_tokens_mean))
        prev = router.pool.index(ep.prev_model) if ep.turns else -1
        pick = int(policy.route_decision(score, np.asarray(rem) / router.cost_scale, router.lam, d.worst_cost,
                                         ep.budget - ep.spent + 1e-12, -1, prev, router.switch_margin, pace))
        assert d.model == router.pool.names[pick] and d.propensity == 1.0
        assert d.probs[pick] == 1.0 and d.ranking[0] == d.model
        ep.record(d.model, usage(200 + 50 * len(ep.turns), 40), tool_name=tool)
        assert ep.turns[-1].propensity == 1.0


def tiny_checkpoint(path, pool, text_dim=8):
    """Save an untrained (random-init) estimator with the checkpoint module's own writer."""
    ckpt = pytest.importorskip("mtrouter_jax.estimator.checkpoint")
    model_mod = pytest.importorskip("mtrouter_jax.estimator.model")
    from mtrouter_jax.estimator.text import HashedNgramEncoder
    est = FakeEstimator(pool)
    layout, enc = est.layout, HashedNgramEncoder(text_dim)
    raw, names = model_mod.model_attribute_matrix(pool)
    attrs, mean, std = model_mod.normalise_attributes(raw)
    cfg = model_mod.EstimatorConfig(layout.n_features + text_dim, len(pool), raw.shape[1], 16, 8, 8, 4, 8, 16)
    model = model_mod.make_estimator(cfg, attrs, 0)
    meta = {"pool": pool.to_dict(), "layout": layout.to_dict(), "layout_blocks": [list(b) for b in layout.blocks],
            "estimator": cfg.to_dict(), "text_dim": text_dim, "text_encoder": enc.config(), "cost_scale": 0.01,
            "output_tokens_hi": [200.0] * len(pool),
            "attributes": {"names": names, "mean": mean.tolist(), "std": std.tolist()}}
    ckpt.save_checkpoint(path, model, meta)
    return path


def test_real_checkpoint_loader(tmp_path):
    ckpt = pytest.importorskip("mtrouter_jax.estimator.checkpoint")
    with pytest.raises(ckpt.CheckpointError):
        Router.from_checkpoint(tmp_path / "nonexistent")
    path = os.environ.get("MTROUTER_TEST_CHECKPOINT") or tiny_checkpoint(tmp_path / "ck", make_pool())
    r = Router.from_checkpoint(path, pool=make_pool(scale=2.0), log_path=tmp_path / "l.jsonl")
    ep = r.start_episode(budget=1.0)
    for i in range(3):
        d = ep.decide(input_tokens_hi=1000)
        assert d.model in r.pool.names and np.all(np.isfinite(d.values))
        assert d.features.shape == (r.estimator.n_features,)
        ep.record(d.model, usage(1000, 50), tool_name="python")
        ep.attach_observation(f"observation {i}")
    ep.finish(score=1.0)
    with pytest.raises(PoolMismatchError):
        Router.from_checkpoint(path, pool=make_pool(names=("cheap", "mid")))


def test_lambda_comes_from_the_checkpoint_table_and_lam_overrides(caplog):
    est = FakeEstimator(make_pool())
    r0 = Router(est)  # no table: the documented default, and it says so
    assert r0.start_episode(budget=0.5).lam == pytest.approx(0.1) and "no budget->λ table" in r0.lam_source()
    est.meta = {"lam_tables": {"scienceworld": [{"budget": 0.1, "lam": 0.4}, {"budget": 1.0, "lam": 0.0}]}}
    r = Router(est)
    assert r.start_episode(budget=0.1).lam == pytest.approx(0.4)
    assert r.start_episode(budget=1.0).lam == pytest.approx(0.0)
    assert r.start_episode(budget=np.sqrt(0.1)).lam == pytest.approx(0.2, abs=1e-6)  # log-linear in between
    assert r.start_episode(budget=5.0).lam == 0.0 and r.start_episode(budget=0.01).lam == pytest.approx(0.4)
    assert r.start_episode().lam == 0.0  # no budget: the largest budget's λ
    assert "scienceworld" in r.describe()["lam"]
    fixed = Router(est, lam=0.7)
    assert fixed.start_episode(budget=0.1).lam == 0.7 and "--lam" in fixed.lam_source()
    from mtrouter_jax.routing.specs import RouterSpecError
    with pytest.raises(RouterSpecError, match="no λ table for 'sim'"):
        Router(est, lam_table="sim")
