"""Ensembles (one vmapped training step), the reference policy, the safe rule and λ tables."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from testing.artifacts import simulated_episodes, trained_checkpoint
from mtrouter_jax.routing import policies as routing
from mtrouter_jax.core.features import initial_summary
from mtrouter_jax.logs.io import Episode, Turn

M, T, K = 4, 3, 5
LEARNED = routing.learned(np.full(T + 1, 30.0), np.full(M, 1e-7), np.full(M, 1e-6), np.full(M, 300.0), lam=0.0,
                          switch_margin=0.0, pacing=False)


@st.composite
def safe_case(draw, k=K):
    s = initial_summary(draw(st.integers(0, T)), 500.0, np.inf).replace(
        turn=jnp.int32(draw(st.integers(0, 20))), prev_model=jnp.int32(draw(st.integers(-1, M - 1))),
        recent_tools=jnp.asarray([draw(st.integers(-1, 3))] * 4, jnp.int32))
    allowed = np.array(draw(st.lists(st.booleans(), min_size=M, max_size=M)))
    if not allowed.any():
        allowed[0] = True
    members = np.array(draw(st.lists(st.lists(st.floats(0, 1, width=32), min_size=M, max_size=M),
                                     min_size=k, max_size=k)), np.float32)
    inputs = routing.turn_inputs(np.full(M, 1e-3), np.full(M, 5e-4), 1.0, allowed=allowed,
                                 score=members.mean(0), member_score=members)
    table = np.array(draw(st.lists(st.integers(0, M - 1), min_size=(T + 1) * 6, max_size=(T + 1) * 6))).reshape(T + 1, 6)
    return s, inputs, table


_choice = jax.jit(routing.safe_choice)
_greedy = jax.jit(lambda s, i, p: routing.learned_values(s, i, p))


def _safe(table, seen=True, n_min=0.0, support=10.0, kappa=1.0):
    return routing.safe(LEARNED, table, np.full((T + 1, 6, M), support), np.full(T + 1, seen), n_min, kappa)


@settings(max_examples=60, deadline=None)
@given(safe_case(k=1))
def test_one_member_zero_spread_is_the_greedy_rule(case):
    s, inputs, table = case
    values, allowed = (np.asarray(x) for x in _greedy(s, inputs, LEARNED.params))
    v = values[allowed]
    assume(len(np.unique(v)) == len(v))  # ties broken differently is not a disagreement
    pol = _safe(table)
    choice = int(_choice(s, inputs, pol.params)[0])
    assert choice == int(np.flatnonzero(allowed)[np.argmax(v)])


@settings(max_examples=60, deadline=None)
@given(safe_case())
def test_the_rule_never_leaves_the_budget_mask(case):
    s, inputs, table = case
    choice = int(_choice(s, inputs, _safe(table).params)[0])
    assert bool(inputs.allowed[choice])


@settings(max_examples=40, deadline=None)
@given(safe_case())
def test_unseen_task_types_and_unsupported_models_route_to_the_reference(case):
    s, inputs, table = case
    for pol in (_safe(table, seen=False), _safe(table, n_min=100.0, support=3.0)):
        choice, ref, _ = _choice(s, inputs, pol.params)
        assert int(choice) == int(ref)


def test_disagreeing_members_keep_the_reference():
    s = initial_summary(0, 500.0, np.inf)
    table = np.zeros((T + 1, 6), np.int32)  # the reference is model 0
    agree = np.tile(np.array([0.5, 0.6, 0.4, 0.4], np.float32), (K, 1))  # everyone says model 1 is better
    split = agree.copy()
    split[:, 1] = [0.9, 0.3, 0.9, 0.3, 0.6]  # same mean, large spread
    for members, want in ((agree, 1), (split, 0)):
        inputs = routing.turn_inputs(np.full(M, 1e-3), np.full(M, 5e-4), np.inf, score=members.mean(0),
                                     member_score=members)
        assert int(_choice(s, inputs, _safe(table).params)[0]) == want


def test_the_reference_follows_the_budget():
    """Budget tiers: the best-vouched table whose followers' mean cost fits the episode's budget;
    the cheapest tier when none fits; no budget -> the best overall."""
    tables = np.stack([np.full((T + 1, 6), j, np.int32) for j in (0, 1, 2)])
    costs, lcbs = np.array([0.30, 0.01, 0.05], np.float32), np.array([0.8, 0.5, 0.6], np.float32)
    pol = routing.safe(LEARNED, tables, np.zeros((T + 1, 6, M)), np.full(T + 1, True), 0.0, 1.0,
                       ref_cost=costs, ref_lcb=lcbs)
    members = np.tile(np.array([0.5, 0.5, 0.5, 0.5], np.float32), (K, 1))
    inputs = routing.turn_inputs(np.full(M, 1e-4), np.full(M, 5e-5), 10.0, score=members.mean(0), member_score=members)
    for budget, want in ((np.inf, 0), (0.35, 0), (0.1, 2), (0.02, 1), (0.001, 1)):
        s = initial_summary(0, 500.0, budget)
        assert int(routing.reference_tier(s.budget, pol.params["ref_cost"], pol.params["ref_lcb"])) == want
        assert int(_choice(s, inputs, pol.params)[1]) == want


def test_reference_tiers_come_from_the_logs(pool):
    """fit_reference keeps every vouched candidate with its cost replayed along every logged
    history and its lower bound; the metadata round-trips; a reference without tiers serves its
    one table at every budget."""
    from mtrouter_jax.core.features import FeatureLayout
    from mtrouter_jax.core.pricing import call_cost
    from mtrouter_jax.routing.reference import Reference, fit_reference

    layout = FeatureLayout(("qa",), ("search",), (), pool.names, max_steps=4.0)
    rng = np.random.default_rng(0)

    def ep(i, model, score):
        return Episode(f"e{i}", "qa", score, None, pool.names,
                       tuple(Turn(model, 100, 0, 10, 0.01 * (1 + pool.names.index(model)), "search", None, None)
                             for _ in range(3)), (0.0, 1.0))

    eps = [ep(i, pool.names[i % 2], float(rng.uniform(0.4, 0.6)) + 0.3 * (i % 2 == 0)) for i in range(40)]
    ref = fit_reference(eps, layout, pool, min_episodes=8)
    names, tables, costs, lcbs = ref.tiers
    assert set(names) >= {f"single:{pool.names[0]}", f"single:{pool.names[1]}"}
    i0, i1 = names.index(f"single:{pool.names[0]}"), names.index(f"single:{pool.names[1]}")
    # all 40 logged histories (3 turns of 100 prompt tokens, 10 completion), billed on each model:
    # the first turn's prompt cold, the next two cached, the model's mean completion length
    want = [call_cost(np.array([100, 100, 100]), np.array([0, 100, 100]), 10, pool[n].price_input / 1e6,
                      pool[n].price_cached_input / 1e6, pool[n].price_output / 1e6).sum() for n in pool.names[:2]]
    np.testing.assert_allclose(costs[[i0, i1]], want, rtol=1e-5)
    cand = {c["name"]: c for c in ref.candidates}
    np.testing.assert_allclose(cand[names[i1]]["cost"], 0.06, rtol=1e-5)  # the followers' own cost stays on record
    assert lcbs[i0] > lcbs[i1] and (tables[i0] == 0).all()
    steps = ref.by_budget()
    assert [x["from_usd"] for x in steps] == sorted(x["from_usd"] for x in steps)
    assert steps[-1]["reference"] == names[int(np.argmax(lcbs))]
    back = Reference.from_meta(ref.to_meta())
    for a, b in zip(back.budget_tiers(), ref.budget_tiers()):
        np.testing.assert_array_equal(a, b)
    old = {k: v for k, v in ref.to_meta().items() if k != "tiers"}
    t, c, _ = Reference.from_meta(old).budget_tiers()
    assert t.shape == (1, *ref.table.shape) and c.tolist() == [0.0]


# ----------------------------------------------------------------------------- ensembles

def test_ensemble_trains_as_one_compiled_function(tmp_path_factory, pool, monkeypatch):
    from mtrouter_jax.estimator.dataset import build_training_data
    from mtrouter_jax.estimator.train import TrainConfig, fit, make_train_epoch

    data = build_training_data(simulated_episodes(tmp_path_factory)[:48], pool)
    cfg = TrainConfig(max_epochs=3, patience=5, batch_size=64)
    calls = []
    import mtrouter_jax.estimator.train as E

    real = E.make_train_epoch

    def spy(*a, **kw):
        calls.append(real(*a, **kw))
        return calls[-1]

    E.make_train_epoch = spy
    # the loss is traced once for the training step of all members and epochs, once for validation:
    # a per-member or per-epoch recompile would trace it again
    import chex
    monkeypatch.setattr(E, "estimator_loss", chex.assert_max_traces(E.estimator_loss, n=2))
    try:
        res = fit(data, pool, cfg, k=3, progress=False)
    finally:
        E.make_train_epoch = real
    (epoch,) = calls
    assert epoch._cache_size() == 1  # three epochs, three members: one compile
    assert res.k == 3 and len(res.member_val_loss) == 3 and np.isfinite(res.val_loss)
    w = jax.tree_util.tree_leaves(res.members)
    assert all(x.shape[0] == 3 for x in w)
    assert any(not np.allclose(np.asarray(x[0]), np.asarray(x[1])) for x in w if x.dtype == jnp.float32)
    assert make_train_epoch is real


def test_ensemble_checkpoint_round_trip_and_member_spread(tmp_path_factory, tmp_path, pool):
    from mtrouter_jax.estimator.checkpoint import load_checkpoint, read_meta, update_meta
    from mtrouter_jax.estimator.train import TrainConfig
    from mtrouter_jax.jobs import train_checkpoint

    eps = simulated_episodes(tmp_path_factory)[:48]
    est, res = train_checkpoint(eps, pool, tmp_path / "ens", TrainConfig(max_epochs=2, batch_size=64),
                                progress=False, ensemble=3)
    again = load_checkpoint(tmp_path / "ens")
    x = np.stack([np.asarray(t.features, np.float32) for t in eps[0].turns[:3]])
    members = again.predict_members(x)
    assert again.k == 3 and members.shape == (3, 3, len(pool), 2)
    np.testing.assert_allclose(again.predict(x)[0], members[..., 0].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(est.predict(x)[0], again.predict(x)[0], rtol=1e-6)
    assert members[..., 0].std(0).max() > 0  # members disagree somewhere
    ref = read_meta(tmp_path / "ens")["reference"]
    assert ref["name"] and len(ref["table"]) == len(again.layout.task_types) + 1
    # the safe router with the checkpoint's budget tiers runs inside the simulator within budget
    from mtrouter_jax.sim.policies import learned_policy
    from mtrouter_jax.sim.rollout import batch_rollout
    from mtrouter_jax.sim.params import make_sim_params, sim_feature_layout

    tiers = ref.get("tiers")  # absent when 48 episodes vouch for no candidate: one table at every budget
    assert tiers is None or len(tiers["names"]) == len(tiers["costs"]) >= 1
    sim = make_sim_params(pool)
    pol = learned_policy(again, sim_feature_layout(pool), lam=0.1, safe=True)
    budgets = jnp.asarray([0.05, 0.2, jnp.inf], jnp.float32)
    final, _ = batch_rollout(jax.random.key(0), pol.apply, pol.params, sim, budgets)
    assert bool((np.asarray(final.summary.cost) <= np.asarray(budgets) + 1e-6).all())
    # with no --router, an ensemble checkpoint is served by the safe rule, a single estimator greedily
    from mtrouter_jax.live.router import Router
    # ... and the simulator's sweep has a safe row exactly for the checkpoints serve routes safely
    from mtrouter_jax.jobs import sweep_jobs
    from mtrouter_jax.sim.params import WorldConfig

    single = load_checkpoint(trained_checkpoint(tmp_path_factory))
    assert Router(again, pool).policy.spec == "safe"
    assert Router(single, pool).policy.spec == "learned"
    # ... and ScienceWorld's eval runs, when no router is named, the one serve would (read from metadata)
    from mtrouter_jax.routing.meta import serves_safe_meta
    from mtrouter_jax.scienceworld.evaluate import default_eval_routers

    for est, safe in ((again, True), (single, False)):
        assert ("mtrouter-safe" in [j[0] for j in sweep_jobs(est, pool, WorldConfig())]) is safe
        assert serves_safe_meta(read_meta(est.path)) is safe
        assert default_eval_routers(est.path).split(",")[0] == ("safe" if safe else "learned")
    assert "learned" not in default_eval_routers(None) and "safe" not in default_eval_routers(None)
    # metadata updates are re-sealed: the checkpoint still verifies
    update_meta(tmp_path / "ens", {"lam_tables": {"sim": [{"budget": 0.1, "lam": 0.2}]}})
    assert load_checkpoint(tmp_path / "ens").meta["lam_tables"]["sim"][0]["lam"] == 0.2


# ----------------------------------------------------------------------------- the reference policy

def _episode(i, model, score, task="t"):
    turns = tuple(Turn(model, 100, 0, 10, 0.001, "search" if j % 2 else "python", None, 0.5) for j in range(6))
    return Episode(f"e{i}", task, score, None, ("a", "b"), turns, (0.0, 1.0), "sim", None)


def test_reference_is_the_best_vouched_single_model():
    from mtrouter_jax.estimator.dataset import build_layout
    from mtrouter_jax.core.pool import ModelSpec, Pool
    from mtrouter_jax.routing.reference import fit_reference

    p = Pool("p", (ModelSpec("a", 1.0, 0.1, 2.0), ModelSpec("b", 0.1, 0.01, 0.2)))
    rng = np.random.default_rng(0)
    eps = [_episode(i, "a", float(rng.uniform(0.6, 0.9))) for i in range(12)]
    eps += [_episode(100 + i, "b", float(rng.uniform(0.1, 0.4))) for i in range(12)]
    eps += [dataclasses.replace(_episode(200 + i, "b", 0.99), turns=_episode(0, "a", 0).turns[:1]
                                + _episode(0, "b", 0).turns[1:]) for i in range(3)]  # too few to vouch
    ref = fit_reference(eps, build_layout(eps, p), p, (0.0, 1.0))
    assert ref.name == "single:a" and (ref.table == 0).all()
    cand = {c["name"]: c for c in ref.candidates}
    assert cand["single:a"]["n"] == 12 and cand["single:a"]["mean"] > cand["single:b"]["mean"]
    assert ref.seen[0] and not ref.seen[-1] and ref.support.sum() == sum(len(e.turns) for e in eps)


def test_candidates_record_what_their_followers_are():
    """Each candidate keeps its followers' mean length and how many task types they span (the
    followers of a table are mostly short episodes: ``inspect`` shows it next to the log's)."""
    from mtrouter_jax.estimator.dataset import build_layout
    from mtrouter_jax.core.pool import ModelSpec, Pool
    from mtrouter_jax.routing.reference import Reference, fit_reference

    p = Pool("p", (ModelSpec("a", 1.0, 0.1, 2.0), ModelSpec("b", 0.1, 0.01, 0.2)))
    eps = [_episode(i, "a", 0.5) for i in range(10)]  # 6 turns each, task "t"
    eps += [dataclasses.replace(_episode(100 + i, "b", 0.5, task="tu"[i % 2]), turns=_episode(0, "b", 0).turns[:2 + 2 * (i % 2)])
            for i in range(10)]  # 2 turns in "t", 4 in "u"
    ref = fit_reference(eps, build_layout(eps, p), p, (0.0, 1.0))
    cand = {c["name"]: c for c in ref.candidates}
    assert (cand["single:a"]["turns"], cand["single:a"]["task_types"]) == (6.0, 1)
    assert (cand["single:b"]["turns"], cand["single:b"]["task_types"]) == (3.0, 2)
    assert Reference.from_meta(ref.to_meta()).candidates == ref.candidates


@pytest.mark.parametrize("mixed_score,displaces", [(0.8, False), (0.97, True)])
def test_a_mixed_table_displaces_a_single_model_only_within_shared_task_types(mixed_score, displaces):
    """The tool heuristic's followers are all in the easy task type, where single model b scores 0.9;
    b's followers also span a hard one (0.3). By raw means the heuristic (0.8) looks better than b
    (0.6); within the task type both are followed in it is worse, so it must not serve in b's
    place — unless it is better there too (0.97)."""
    from mtrouter_jax.estimator.dataset import build_layout
    from mtrouter_jax.core.pool import ModelSpec, Pool
    from mtrouter_jax.routing.reference import fit_reference
    from mtrouter_jax.routing.specs import tool_table

    p = Pool("p", (ModelSpec("a", 1.0, 0.1, 2.0), ModelSpec("b", 0.1, 0.01, 0.2)))
    rng = np.random.default_rng(3)
    noisy = lambda x: float(np.clip(x + rng.uniform(-0.02, 0.02), 0, 1))  # noqa: E731
    eps = [_episode(i, "b", noisy(0.9), task="easy") for i in range(12)]
    eps += [_episode(20 + i, "b", noisy(0.3), task="hard") for i in range(12)]
    eps += [_episode(40 + i, "a", noisy(0.2), task=("easy", "hard")[i % 2]) for i in range(12)]
    layout = build_layout(eps, p)
    heur = tool_table(p, layout.tools)
    tool_idx = {t: i for i, t in enumerate(layout.tools)}
    base = _episode(0, "a", 0.0).turns
    models = [p.names[heur[-1]]] + [p.names[heur[tool_idx[t.tool]]] for t in base[:-1]]
    assert len(set(models)) == 2  # the heuristic mixes the two models here
    turns = tuple(dataclasses.replace(t, model=m) for t, m in zip(base, models))
    eps += [dataclasses.replace(_episode(60 + i, "a", noisy(mixed_score), task="easy"), turns=turns) for i in range(12)]
    ref = fit_reference(eps, layout, p, (0.0, 1.0))
    cand = {c["name"]: c for c in ref.candidates}
    assert cand["tool-heuristic"]["mean"] > cand["single:b"]["mean"]  # the raw comparison misleads
    assert cand["tool-heuristic"]["within_task_gain"]["vs"] == "single:b"
    assert (cand["tool-heuristic"]["within_task_gain"]["gain"] > 0) == displaces
    names, _, costs, lcbs = ref.tiers
    h, b = names.index("tool-heuristic"), names.index("single:b")
    assert lcbs[h] == pytest.approx(cand["tool-heuristic"]["within_task_gain"]["tier_lcb"])
    assert lcbs[h] <= cand["tool-heuristic"]["mean"] - cand["tool-heuristic"]["ci"] + 1e-6  # only ever lowered
    assert costs[b] < costs[h] and (lcbs[h] > lcbs[b]) == displaces
    assert any(x["reference"] == "tool-heuristic" for x in ref.by_budget()) == displaces


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(1, 5000), min_size=1, max_size=12), min_size=1, max_size=5),
       st.integers(0, 2), st.lists(st.floats(1.0, 2000.0), min_size=3, max_size=3))
def test_replayed_cost_bills_every_history_on_the_table_model(prompts, j, out_mean):
    """``replayed_cost``: a one-model table bills every logged prompt on that model, warm after each
    episode's first turn (the previous prompt cached, never across episodes); a table that switches
    model every turn bills every prompt cold."""
    from mtrouter_jax.core.pricing import call_cost
    from mtrouter_jax.routing.reference import LoggedTurns, replayed_cost

    prices = np.array([[1.0, 0.1, 4.0], [0.3, 0.03, 1.2], [2.0, 0.5, 8.0]]) / 1e6
    out_mean = np.asarray(out_mean)
    tokens = [np.asarray(p, np.float64) for p in prompts]
    last = np.concatenate([np.where(np.arange(len(p)) == 0, 2, np.arange(len(p)) % 2) for p in prompts])  # 2 = first turn
    log = LoggedTurns(np.repeat(np.arange(len(prompts)), [len(p) for p in prompts]), np.zeros(len(last), np.int64),
                      last, np.zeros(len(last), np.int64), np.concatenate(tokens), np.zeros(len(last)), len(prompts))
    single = np.full((1, 3), j, np.int32)
    want = np.mean([call_cost(p, np.minimum(np.concatenate([[0.0], p[:-1]]), p), out_mean[j], *prices[j]).sum()
                    for p in tokens])
    np.testing.assert_allclose(replayed_cost(single, log, prices, out_mean), want, rtol=1e-9)
    switching = np.array([[0, 1, 0]], np.int32)  # first turn and after tool 0 -> model 0, after tool 1 -> model 1: a switch every turn
    m = [switching[0, np.where(np.arange(len(p)) == 0, 2, np.arange(len(p)) % 2)] for p in tokens]
    cold = np.mean([sum(call_cost(x, 0.0, out_mean[k], *prices[k]) for x, k in zip(p, mk)) for p, mk in zip(tokens, m)])
    np.testing.assert_allclose(replayed_cost(switching, log, prices, out_mean), cold, rtol=1e-9)
    empty = LoggedTurns(*(np.zeros(0, np.int64),) * 6, 0)
    assert np.isnan(replayed_cost(single, empty, prices, out_mean))


def test_logged_turns_flatten_the_log_and_measure_agreement():
    """``LoggedTurns.of``: one row per turn with its episode, task, the tool type before it (K+1 on
    a first turn, K for a tool outside the vocabulary) and its model; ``agreement`` is each
    episode's share of turns served by the model a table names."""
    from mtrouter_jax.core.features import FeatureLayout
    from mtrouter_jax.routing.reference import LoggedTurns

    layout = FeatureLayout(("qa", "math"), ("search", "python"), (), ("a", "b"), max_steps=4.0)

    def ep(i, task, turns):
        return Episode(f"e{i}", task, 1.0, None, ("a", "b"),
                       tuple(Turn(m, n, 0, 5, 0.0, tool, None, None) for m, n, tool in turns), (0.0, 1.0))

    log = LoggedTurns.of([ep(0, "qa", [("a", 10, "search"), ("b", 20, "python"), ("b", 30, "web")]),
                          ep(1, "math", [("b", 40, "python"), ("a", 50, "search")])], layout)
    assert log.episode.tolist() == [0, 0, 0, 1, 1] and log.task.tolist() == [0, 0, 0, 1, 1]
    assert log.last.tolist() == [3, 0, 1, 3, 1] and log.model.tolist() == [0, 1, 1, 1, 0]
    assert log.prompt.tolist() == [10, 20, 30, 40, 50] and log.n_episodes == 2
    assert log.completion.tolist() == [5] * 5 and log.first.tolist() == [True, False, False, True, False]
    table = np.zeros((3, 4), np.int32)
    table[:, 0] = 1  # b after search, a elsewhere
    np.testing.assert_allclose(log.agreement(table), [2 / 3, 1 / 2])
