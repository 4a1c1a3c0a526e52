"""Simulator core: absorbing terminal state, determinism, single compile, budgets, billing, errors."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrouter_jax.sim import policies as P
from mtrouter_jax.core.features import initial_summary
from mtrouter_jax.core.pool import ModelSpec, Pool, SimProfile
from mtrouter_jax.sim.rollout import _batch_rollout, batch_rollout, episode_outcomes
from mtrouter_jax.sim import DEFAULT_TASKS, Phase, TaskType, WorldConfig, core, make_sim_params

N = 4096  # episodes per batched rollout; budgets are float32 (a weak-typed array would retrace)


def budgets(x, n=N):
    return jnp.asarray(np.broadcast_to(np.asarray(x, np.float32), (n,)))


@pytest.fixture(scope="module")
def random_run(sim):
    """One batch of random-policy episodes without budget, shared by the statistical tests."""
    pol = P.random_policy()
    return jax.device_get(batch_rollout(jax.random.key(0), pol.apply, pol.params, sim, budgets(np.inf)))


@pytest.fixture(scope="module")
def gpt5_run(sim, pool):
    pol = P.fixed_policy(pool, "gpt-5")
    return jax.device_get(batch_rollout(jax.random.key(1), pol.apply, pol.params, sim, budgets(np.inf)))


step = jax.jit(core.step)
metrics = jax.jit(episode_outcomes)  # eager jnp ops would each compile a tiny kernel
vstep = jax.jit(jax.vmap(core.step, in_axes=(0, None, 0, None)))


def test_terminal_state_is_absorbing(sim, gpt5_run):
    final, _ = gpt5_run
    for i in (int(np.argmax(final.terminated)), int(np.argmax(final.truncated))):
        done = jax.tree_util.tree_map(lambda x: x[i], final)
        assert bool(done.done)
        keys = jax.random.split(jax.random.key(9), 12)
        new, rec, reward = vstep(keys, done, jnp.arange(12) % sim.n_models, sim)
        for leaf_new, leaf_old in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(done)):
            np.testing.assert_array_equal(np.asarray(leaf_new), np.broadcast_to(leaf_old, leaf_new.shape))
        assert not np.asarray(rec.executed).any() and (np.asarray(reward) == 0).all()
        assert (np.asarray(rec.model) == -1).all() and (np.asarray(rec.cost) == 0).all()


def test_zero_budget_truncates_before_any_call(sim):
    s = core.reset(jax.random.key(0), sim, jnp.float32(0.0))
    s2, rec, r = step(jax.random.key(1), s, 0, sim)
    assert bool(s2.truncated) and not bool(s2.terminated) and not bool(rec.executed) and float(s2.summary.cost) == 0


def test_same_key_same_numbers_different_keys_differ(sim, gpt5_run, pool):
    pol = P.fixed_policy(pool, "gpt-5")
    again = jax.device_get(batch_rollout(jax.random.key(1), pol.apply, pol.params, sim, budgets(np.inf)))
    chex.assert_trees_all_equal(again, gpt5_run)
    other = jax.device_get(batch_rollout(jax.random.key(2), pol.apply, pol.params, sim, budgets(np.inf)))
    assert not np.array_equal(other[1].cost, gpt5_run[1].cost)
    assert not np.array_equal(other[0].credit, gpt5_run[0].credit)


def pool_default():
    from mtrouter_jax.core.pool import default_pool

    return default_pool()


@chex.assert_max_traces(n=1)
def _traced_once_apply(key, state, sim, p):
    """A policy whose body runs once per trace of the rollout: counts compiles of batch_rollout."""
    return P.fixed_policy(pool_default(), "gpt-5").apply(key, state, sim, p)


def test_one_compile_for_all_budgets_and_params(sim, pool):
    n0 = _batch_rollout._cache_size()
    rng = np.random.default_rng(0)
    for i in range(3):
        sim_i = sim.replace(error_rate=sim.error_rate * (0.5 + i), switch_error_bump=jnp.float32(0.05 * i))
        pol = P.fixed_policy(pool, pool.names[i])
        final, rec = batch_rollout(jax.random.key(i), _traced_once_apply, pol.params, sim_i,
                                   budgets(rng.uniform(0.0, 0.5, N)))
        chex.assert_tree_all_finite(rec.cost)
        assert final.credit.shape == (N,) and rec.cost.shape == (N, sim.max_steps)
    assert _batch_rollout._cache_size() == n0 + 1  # one compile served every budget / param value


def test_budget_never_exceeded_with_tight_budgets(sim):
    pol = P.random_policy()
    b = budgets(np.random.default_rng(1).uniform(0.0, 0.3, N))
    final, rec = jax.device_get(batch_rollout(jax.random.key(3), pol.apply, pol.params, sim, b))
    m = jax.device_get(metrics(final, rec))
    assert not m["over_budget"].any()
    assert (final.summary.cost <= np.asarray(b)).all()  # the core's own float32 comparison
    assert (m["cost"] <= np.asarray(b) * (1 + 1e-5)).all()  # re-summed per-turn costs
    truncated_by_budget = final.truncated & (final.summary.turn < sim.max_steps)
    assert truncated_by_budget.mean() > 0.3  # the budgets were tight enough to bind


def test_turn_cost_cached_vs_switch_by_hand(sim, pool):
    g, d = pool.index("gpt-5"), pool.index("deepseek-v3.2")
    pin, pc, pout = 1.25e-6, 0.125e-6, 10e-6  # gpt-5 list prices per token
    s = initial_summary(0, 10_000.0, jnp.inf)
    cases = {
        # stay: the previous prompt (8000 tokens) is a cache hit, only 2000 new tokens at full price
        "stay": (g, 2000 * pin + 8000 * pc + 500 * pout, 8000.0, 0.0),
        # switch: the whole prompt is re-billed; the miss is what the cache would have saved
        "switch": (d, 10_000 * pin + 500 * pout, 0.0, 8000 * (pin - pc)),
        # first call: nothing to cache, nothing missed
        "first": (-1, 10_000 * pin + 500 * pout, 0.0, 0.0),
    }
    for name, (prev, cost, cached, miss) in cases.items():
        got = core.turn_cost(sim, s.replace(prev_model=jnp.int32(prev)), jnp.float32(8000.0), g, 500.0)
        np.testing.assert_allclose(np.asarray(got), [cost, cached, miss], rtol=1e-5, err_msg=name)


def test_stepping_bills_cache_hits_and_misses(sim, pool):
    g, d = pool.index("gpt-5"), pool.index("deepseek-v3.2")
    st = core.reset(jax.random.key(0), sim)
    recs = []
    for i, m in enumerate([g, g, d]):
        st, rec, _ = step(jax.random.key(100 + i), st, m, sim)
        recs.append(jax.device_get(rec))
    r0, r1, r2 = recs
    assert all(bool(r.executed) for r in recs) and r0.cached_tokens == 0
    assert r1.cached_tokens == r0.input_tokens and r1.cache_miss_cost == 0 and not r1.switched
    np.testing.assert_allclose(r1.cost, (r1.input_tokens - r0.input_tokens) * sim.price_input[g]
                               + r0.input_tokens * sim.price_cached[g] + r1.output_tokens * sim.price_output[g],
                               rtol=1e-5)
    assert r2.switched and r2.cached_tokens == 0
    np.testing.assert_allclose(r2.cost, r2.input_tokens * sim.price_input[d] + r2.output_tokens * sim.price_output[d],
                               rtol=1e-5)
    np.testing.assert_allclose(r2.cache_miss_cost, r1.input_tokens * (sim.price_input[d] - sim.price_cached[d]),
                               rtol=1e-5)


def test_first_turn_after_switch_has_more_errors(sim, random_run):
    _, rec = random_run
    fmt = rec.error_kind == 0  # format violations carry the prompt-drift bump
    has_prev = np.zeros_like(rec.executed)
    has_prev[:, 1:] = True  # a turn with a previous turn: switching is defined
    turns = rec.executed & has_prev
    p_switch, p_stay = fmt[turns & rec.switched].mean(), fmt[turns & ~rec.switched].mean()
    bump = float(sim.switch_error_bump)
    assert (turns & ~rec.switched).sum() > 10_000  # enough stays under a random policy
    assert p_switch - p_stay == pytest.approx(bump, abs=0.03)


def test_errors_independent_of_previous_error_for_fixed_model(sim, gpt5_run):
    """Errors are transient: given the model (and, for failed actions, the tool), the chance of an
    error does not depend on whether the previous turn had one."""
    _, rec = gpt5_run
    pair = rec.executed[:, 1:] & rec.executed[:, :-1]
    err = rec.severity >= 0
    prev = err[:, :-1]
    fmt = (rec.error_kind == 0)[:, 1:]
    p_after_err, p_after_ok = fmt[pair & prev].mean(), fmt[pair & ~prev].mean()
    assert (pair & prev).sum() > 5_000
    assert abs(p_after_err - p_after_ok) < 0.015
    assert p_after_ok == pytest.approx(float(sim.error_rate[0]), abs=0.01)
    fail = (rec.error_kind == 1)[:, 1:]
    for tool in range(sim.n_tools - 1):  # answer turns never show a failed action
        same_tool = pair & (rec.tool[:, 1:] == tool) & ~fmt
        if (same_tool & prev).sum() < 2_000:
            continue
        assert abs(fail[same_tool & prev].mean() - fail[same_tool & ~prev].mean()) < 0.03


def test_scores_within_range(random_run, gpt5_run):
    for final, _ in (random_run, gpt5_run):
        assert (final.credit >= -1).all() and (final.credit <= 1 + 1e-6).all()
        assert not (final.terminated & final.truncated).any() and (final.terminated | final.truncated).all()


# --- bad inputs --------------------------------------------------------------------------------

def test_model_without_sim_profile_is_rejected(pool):
    bare = Pool("p", (dataclasses.replace(pool.models[0], sim=None), pool.models[1]))
    with pytest.raises(ValueError, match=r"without a \[model.sim\] profile.*gpt-5"):
        make_sim_params(bare)


def test_unknown_tool_in_success_table_is_rejected(pool):
    m = pool.models[0]
    sim = SimProfile({**m.sim.success, "browser": 0.5}, m.sim.error_rate, m.sim.severity_mix, m.sim.output_tokens,
                     m.sim.early_submit)
    with pytest.raises(ValueError, match="unknown tool 'browser'"):
        make_sim_params(Pool("p", (dataclasses.replace(m, sim=sim),)))
    lacking = SimProfile({k: v for k, v in m.sim.success.items() if k != "python"}, 0.1, (1.0, 0.0, 0.0), 100.0, 0.0)
    with pytest.raises(ValueError, match="lacks tool"):
        make_sim_params(Pool("p", (ModelSpec("x", 1.0, 0.1, 1.0, sim=lacking),)))


def test_last_phase_must_answer():
    bad = TaskType("no_answer", (Phase("explore", {"search": 1.0}, 3, 1.0),))
    with pytest.raises(ValueError, match="no_answer: the last phase must be an answer phase"):
        make_sim_params(world=WorldConfig(tasks=DEFAULT_TASKS + (bad,)))
