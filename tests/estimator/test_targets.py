import chex
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from mtrouter_jax.estimator.targets import (
    AECConfig,
    aec_penalties,
    annealed_error_targets,
    expected_steps_by_task,
    mean_episode_cost,
    normalize_score,
    progress_weight,
    remaining_cost_targets,
)

E, T = 4, 12  # fixed padded shape: one compile per jitted function for the whole file
CFG = AECConfig()
TOL = 1e-6

# Jitted once here so hypothesis examples reuse the same executable.
pen_jit = jax.jit(aec_penalties)
aec_jit = jax.jit(annealed_error_targets)
cost_jit = jax.jit(remaining_cost_targets)
mean_cost_jit = jax.jit(mean_episode_cost)

PROPS = settings(max_examples=40, deadline=None)


@st.composite
def episodes(draw):
    lengths = draw(hnp.arrays(np.int32, (E,), elements=st.integers(0, T)))
    mask = np.arange(T)[None, :] < lengths[:, None]
    # Padding gets arbitrary severities/costs on purpose: they must be ignored.
    severity = draw(hnp.arrays(np.int32, (E, T), elements=st.integers(-1, 2)))
    costs = draw(hnp.arrays(np.float32, (E, T), elements=st.floats(0, 10, width=32)))
    score = draw(hnp.arrays(np.float32, (E,), elements=st.floats(0, 1, width=32)))
    n = draw(hnp.arrays(np.float32, (E,), elements=st.floats(1, 40, width=32)))
    return mask, severity, costs, score, n


def _reference_targets(score, sev, mask, n, cfg=CFG):
    """Loop-by-loop transcription of the PAPER.md formulas, for cross-checking."""
    pen = np.zeros(sev.shape)
    s_t = np.zeros(sev.shape)
    for i in range(sev.shape[0]):
        N = max(float(n[i]), 1.0)
        base = 1.0 / N
        for t in range(sev.shape[1]):
            if mask[i, t] and sev[i, t] >= 0:
                p = min((t + 1) / N, 1.0)
                if p <= cfg.p_low:
                    w = cfg.w_low
                elif p >= cfg.p_high:
                    w = cfg.w_high
                else:
                    w = cfg.w_low + (cfg.w_high - cfg.w_low) * (p - cfg.p_low) / (cfg.p_high - cfg.p_low)
                m = cfg.severity_multipliers[sev[i, t]]
                pen[i, t] = max(base * m * w, cfg.min_penalty_frac * base)
        for t in range(sev.shape[1]):
            if mask[i, t]:
                s_t[i, t] = score[i] - pen[i, t:].sum()
    return pen, s_t


@PROPS
@given(episodes())
def test_matches_reference_transcription(ep):
    mask, sev, _, score, n = ep
    pen, s_t = _reference_targets(score, sev, mask, n)
    np.testing.assert_allclose(pen_jit(sev, mask, n), pen, atol=1e-6)
    np.testing.assert_allclose(aec_jit(score, sev, mask, n), s_t, atol=1e-5)


def test_config_defaults_and_hashable():
    assert (CFG.w_low, CFG.w_high, CFG.p_low, CFG.p_high) == (0.3, 1.0, 0.3, 0.7)
    assert CFG.severity_multipliers == (0.2, 0.8, 1.0)
    assert CFG.min_penalty_frac == 0.2
    assert hash(CFG) == hash(AECConfig())
    assert jax.tree_util.tree_leaves(CFG) == []  # all static


def test_normalize_score():
    assert normalize_score(-100.0, -100, 100) == 0.0
    assert normalize_score(100.0, -100, 100) == 1.0
    np.testing.assert_allclose(normalize_score(np.array([0.0, 48.4]), -100, 100), [0.5, 0.742])
    assert normalize_score(1.0, 0, 1) == 1.0
    with pytest.raises(ValueError):
        normalize_score(1.0, 2, 2)


def test_progress_weight_values():
    p = jnp.array([0.0, 0.3, 0.5, 0.7, 1.0])
    np.testing.assert_allclose(progress_weight(p, CFG), [0.3, 0.3, 0.65, 1.0, 1.0], rtol=1e-6)


def test_worked_example_by_hand():
    # N = 10, base = 0.1. t=0 high: p=0.1, w=0.3 -> max(0.03, 0.02) = 0.03.
    # t=4 high: p=0.5, w=0.65 -> 0.065. t=9 medium: p=1, w=1 -> 0.08.
    sev = np.full((1, 10), -1, np.int32)
    sev[0, [0, 4, 9]] = [2, 2, 1]
    mask = np.ones((1, 10), bool)
    pen = np.asarray(pen_jit(sev, mask, np.array([10.0]), CFG))[0]
    expect = np.zeros(10)
    expect[[0, 4, 9]] = [0.03, 0.065, 0.08]
    np.testing.assert_allclose(pen, expect, atol=1e-7)

    s = np.asarray(aec_jit(np.array([0.9]), sev, mask, np.array([10.0]), CFG))[0]
    expect_s = [0.725] + [0.755] * 4 + [0.82] * 5
    np.testing.assert_allclose(s, expect_s, atol=1e-6)


def test_low_error_early_hits_floor():
    # N = 10, low at t=0: 0.1 * 0.2 * 0.3 = 0.006 < floor 0.2 * 0.1 = 0.02.
    sev = np.array([[0, -1, -1]], np.int32)
    pen = np.asarray(pen_jit(sev, np.ones((1, 3), bool), np.array([10.0]), CFG))
    np.testing.assert_allclose(pen, [[0.02, 0.0, 0.0]], atol=1e-7)


def test_custom_config_changes_result():
    cfg = AECConfig(min_penalty_frac=0.0)
    sev = np.array([[0]], np.int32)
    pen = pen_jit(sev, np.ones((1, 1), bool), np.array([10.0]), cfg)
    np.testing.assert_allclose(pen, [[0.006]], atol=1e-7)


@PROPS
@given(episodes())
def test_penalty_floor_and_zero_elsewhere(ep):
    mask, sev, _, _, n = ep
    pen = np.asarray(pen_jit(sev, mask, n))
    err = mask & (sev >= 0)
    base = 1.0 / n[:, None]
    floor = np.broadcast_to(CFG.min_penalty_frac * base, pen.shape)
    assert np.all(pen[err] >= floor[err] * (1 - TOL))
    assert np.all(pen[~err] == 0.0)
    assert np.all(pen <= base + TOL)  # m <= 1 and w <= 1


@PROPS
@given(st.floats(1, 40), st.integers(0, 2))
def test_penalty_monotone_in_progress(n, s):
    sev = np.full((E, T), s, np.int32)
    pen = np.asarray(pen_jit(sev, np.ones((E, T), bool), np.full(E, n, np.float32)))
    assert np.all(np.diff(pen, axis=1) >= -TOL)


@PROPS
@given(st.floats(1, 40))
def test_penalty_monotone_in_severity(n):
    sev = np.repeat(np.arange(-1, 3, dtype=np.int32)[:, None], T, axis=1)  # rows -1, 0, 1, 2
    pen = np.asarray(pen_jit(sev, np.ones((E, T), bool), np.full(E, n, np.float32)))
    assert np.all(np.diff(pen, axis=0) >= -TOL)


@PROPS
@given(episodes())
def test_score_targets_properties(ep):
    mask, sev, _, score, n = ep
    s = np.asarray(aec_jit(score, sev, mask, n))
    pen = np.asarray(pen_jit(sev, mask, n))
    assert np.all(s[~mask] == 0.0)
    for i in range(E):
        row = s[i, mask[i]]
        if row.size == 0:
            continue
        assert np.all(row <= score[i] + TOL)
        assert np.all(np.diff(row) >= -TOL)  # fewer future penalties as t grows
        np.testing.assert_allclose(row[0], score[i] - pen[i].sum(), atol=1e-5)
        # The last real step only carries its own penalty.
        np.testing.assert_allclose(row[-1], score[i] - pen[i, mask[i]][-1], atol=1e-6)


@PROPS
@given(episodes())
def test_cost_targets_properties(ep):
    mask, _, costs, _, _ = ep
    mean = mean_cost_jit(costs, mask)
    c = np.asarray(cost_jit(costs, mask, mean))
    mean = float(mean)
    assert np.all(c[~mask] == 0.0)
    for i in range(E):
        row = c[i, mask[i]]
        if row.size == 0:
            continue
        assert np.all(np.diff(row) <= TOL * max(1.0, row[0]))
        if mean > 0:
            total = costs[i, mask[i]].sum()
            np.testing.assert_allclose(row[0], total / mean, rtol=1e-4, atol=1e-6)


def test_mean_episode_cost_ignores_padding_and_empty_episodes():
    costs = np.array([[1.0, 2.0, 99.0], [3.0, 99.0, 99.0], [99.0, 99.0, 99.0]], np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], bool)
    np.testing.assert_allclose(mean_cost_jit(costs, mask), 3.0)
    assert float(mean_cost_jit(costs, np.zeros_like(mask))) == 0.0
    c = cost_jit(costs, mask, 3.0)
    np.testing.assert_allclose(c, [[1.0, 2 / 3, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], rtol=1e-6)
    # All-free data: targets stay 0 instead of NaN.
    assert np.all(np.asarray(cost_jit(np.zeros((1, 2)), np.ones((1, 2), bool), 0.0)) == 0)


def test_jit_traces_once_matches_reference_and_vmaps():
    rng = np.random.default_rng(0)
    mask = np.arange(T)[None, :] < rng.integers(0, T + 1, E)[:, None]
    sev = rng.integers(-1, 3, (E, T)).astype(np.int32)
    score = rng.random(E).astype(np.float32)
    n = rng.uniform(1, 30, E).astype(np.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(score, sev, mask, n):
        return annealed_error_targets(score, sev, mask, n, CFG)

    for _ in range(3):
        out = f(score, sev, mask, n)
    chex.assert_tree_all_finite(out)
    np.testing.assert_allclose(out, _reference_targets(score, sev, mask, n)[1], atol=1e-6)
    # vmap over a batch of datasets works too (pure function).
    batched = jax.jit(jax.vmap(aec_penalties))(sev[None], mask[None], n[None])
    np.testing.assert_allclose(batched[0], pen_jit(sev, mask, n), atol=1e-7)


def test_scalar_expected_steps_broadcasts():
    sev = np.array([[2, -1], [-1, 2]], np.int32)
    mask = np.ones((2, 2), bool)
    np.testing.assert_allclose(pen_jit(sev, mask, 10.0), pen_jit(sev, mask, np.array([10.0, 10.0])))


def test_expected_steps_by_task():
    lengths = np.array([10, 20, 30, 5, 7, 100])
    score = np.array([1.0, 1.0, 0.0, 0.2, 0.1, 0.9])
    tasks = np.array([0, 0, 0, 1, 1, 3])
    out = expected_steps_by_task(lengths, score, tasks, n_tasks=4)
    # task 0: successes 10, 20 -> 15; task 1: none succeeded -> median(5, 7) = 6;
    # task 2: no episodes -> overall median 15; task 3: 100.
    np.testing.assert_allclose(out, [15.0, 6.0, 15.0, 100.0])
    out = expected_steps_by_task(lengths, score, tasks, n_tasks=4, success_threshold=0.95, default=27)
    np.testing.assert_allclose(out, [15.0, 6.0, 27.0, 100.0])  # 0.9 < 0.95: all of task 3
    with pytest.raises(ValueError):
        expected_steps_by_task(lengths, score, tasks, n_tasks=2)
    with pytest.raises(ValueError):
        expected_steps_by_task([], [], [], n_tasks=2)


# --- n-step bootstrapped targets ---------------------------------------------------------------

from mtrouter_jax.estimator.targets import bootstrapped_score_targets, greedy_state_values, nstep_successors  # noqa: E402


@st.composite
def flat_episodes(draw):
    lengths = draw(st.lists(st.integers(1, 8), min_size=1, max_size=6))
    episode = np.repeat(np.arange(len(lengths)), lengths).astype(np.int32)
    n = episode.shape[0]
    mc = draw(hnp.arrays(np.float32, (n,), elements=st.floats(-1, 1, width=32)))
    return episode, mc


@PROPS
@given(flat_episodes(), st.integers(1, 5))
def test_nstep_successor_is_n_turns_later_in_the_same_episode(ep_mc, n):
    episode, _ = ep_mc
    succ, valid = (np.asarray(a) for a in nstep_successors(episode, n))
    turn = np.arange(len(episode)) - np.searchsorted(episode, episode)  # position within its episode
    length = np.bincount(episode)[episode]
    np.testing.assert_array_equal(valid, turn + n < length)
    assert np.all(episode[succ] == episode)
    np.testing.assert_array_equal(succ[valid], np.flatnonzero(valid) + n)
    np.testing.assert_array_equal(succ[~valid], np.flatnonzero(~valid))  # no successor: points at itself


@PROPS
@given(flat_episodes(), st.integers(1, 5))
def test_bootstrapping_with_the_monte_carlo_value_changes_nothing(ep_mc, n):
    episode, mc = ep_mc
    succ, valid = nstep_successors(episode, n)
    out = np.asarray(bootstrapped_score_targets(mc, succ, valid, mc))
    np.testing.assert_allclose(out, mc, atol=TOL)


@PROPS
@given(flat_episodes(), st.integers(1, 5), st.floats(-1, 1, width=32))
def test_bootstrapped_target_moves_with_the_successor_value_only(ep_mc, n, shift):
    episode, mc = ep_mc
    succ, valid = (np.asarray(a) for a in nstep_successors(episode, n))
    out = np.asarray(bootstrapped_score_targets(mc, succ, valid, mc + shift))
    # rows with a successor move by exactly the value shift; the episode tails keep their targets
    np.testing.assert_allclose(out[valid], mc[valid] + shift, atol=1e-5)
    np.testing.assert_allclose(out[~valid], mc[~valid], atol=TOL)


def test_nstep_horizon_must_be_positive():
    with pytest.raises(ValueError, match="n-step"):
        nstep_successors(np.zeros(3, np.int32), 0)


def test_greedy_value_is_the_best_allowed_model_and_ignores_the_mask_when_nothing_fits():
    score = np.array([[0.1, 0.9, 0.5], [0.2, 0.8, 0.4]], np.float32)
    allowed = np.array([[True, False, True], [False, False, False]])
    np.testing.assert_allclose(np.asarray(greedy_state_values(score, allowed)), [0.5, 0.8])
