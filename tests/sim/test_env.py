"""Gymnasium shells: API conformance, seeding, budgets, next-step autoreset of the vector env."""

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import envs
from envs import routing_env, vector_env

pytestmark = pytest.mark.filterwarnings("ignore:.*(infinity|render fps|alternative render modes).*")


@pytest.fixture(scope="module")
def env():
    return envs.MultiTurnRoutingEnv()


@pytest.fixture(scope="module")
def venv():
    v = gym.make_vec(envs.ENV_ID, num_envs=8)
    yield v
    v.close()


def _episode(env, seed, actions, options=None):
    """(obs list, rewards, terminated, truncated, infos) of one episode with a fixed action cycle."""
    obs, info = env.reset(seed=seed, options=options)
    out = [(obs, 0.0, False, False, info)]
    t = 0
    while not (out[-1][2] or out[-1][3]):
        out.append(env.step(actions[t % len(actions)]))
        t += 1
    return out


def test_registered_once():
    import importlib

    importlib.reload(envs)  # re-import must not re-register (would warn / raise)
    spec = gym.spec(envs.ENV_ID)
    assert spec.max_episode_steps is None and spec.vector_entry_point is not None


def test_check_env_unwrapped(env):
    check_env(env.unwrapped)


def test_check_env_made():
    made = gym.make(envs.ENV_ID)
    check_env(made.unwrapped)  # with a spec: also checks the "ansi" render mode and close()
    assert isinstance(made.unwrapped, envs.MultiTurnRoutingEnv)


def test_spaces_and_step_types(env):
    assert env.observation_space.dtype == np.float32
    assert env.observation_space.shape == (env.layout.n_features,)
    assert env.action_space.n == len(env.pool)
    for obs, reward, term, trunc, info in _episode(env, 3, [5, 0, 1])[1:]:
        assert obs.dtype == np.float32 and obs in env.observation_space
        assert type(reward) is float and type(term) is bool and type(trunc) is bool
        assert not (term and trunc)
        assert info["model"] in env.pool.names and info["tool"] in env.world.tools
        assert info["error"] is None or (info["error"]["kind"] in env.world.error_kinds
                                         and info["error"]["severity"] in ("low", "medium", "high"))
        assert info["cached_tokens"] <= info["input_tokens"] and info["cost"] > 0
    assert info["turn"] <= env.world.max_steps
    assert -100 <= info["score"] <= 100


def test_seeded_reset_reproducible(env):
    other = envs.MultiTurnRoutingEnv()
    a, b = _episode(env, 7, [0, 5, 5, 1]), _episode(other, 7, [0, 5, 5, 1])
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:] == y[1:]
    c = _episode(env, 8, [0, 5, 5, 1])
    assert [t[4] for t in a] != [t[4] for t in c]


def test_jit_compiled_once_per_shape(env):
    env.reset(seed=0)
    env.step(0)
    n_reset, n_step = routing_env._reset._cache_size(), routing_env._step._cache_size()
    for seed, budget in [(1, 0.5), (2, None), (3, 0.01)]:
        _episode(env, seed, [2, 3], options={"budget": budget})
    assert (routing_env._reset._cache_size(), routing_env._step._cache_size()) == (n_reset, n_step)


@pytest.mark.parametrize("budget", [0.0, 0.004, 0.02, 0.08])
def test_budget_option_truncates_and_is_never_exceeded(env, budget):
    for seed in range(5):
        ep = _episode(env, seed, [0], options={"budget": budget})
        assert ep[0][4]["budget"] == budget
        for _, _, _, _, info in ep:
            assert info["episode_cost"] <= budget
            assert 0.0 <= info["budget_remaining"] <= budget
        last = ep[-1]
        if budget <= 0.02:  # gpt-5 episodes cost ~$0.6: these budgets always run out first
            assert last[3] and not last[2] and last[4]["budget_exhausted"] and not last[4]["executed"]


def test_constructor_budget_and_override():
    e = envs.MultiTurnRoutingEnv(budget=0.03)
    assert e.reset(seed=0)[1]["budget"] == pytest.approx(0.03)
    assert e.reset(seed=0, options={"budget": None})[1]["budget"] is None
    assert e.reset(seed=0, options={"budget": 0.01})[1]["budget_remaining"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="budget"):
        e.reset(options={"budget": -1.0})
    with pytest.raises(ValueError, match="action"):
        e.step(99)


def test_render_ansi():
    e = envs.MultiTurnRoutingEnv(render_mode="ansi")
    e.reset(seed=0)
    assert "task=" in e.render()
    e.step(1)
    assert "model=deepseek-v3.2" in e.render()
    with pytest.raises(ValueError):
        envs.MultiTurnRoutingEnv(render_mode="human")


# --- vector env --------------------------------------------------------------------------------

def _vec_run(v, seed, n_steps, options=None):
    rng = np.random.default_rng(seed)
    obs, info = v.reset(seed=seed, options=options)
    steps = [(obs, None, None, None, info)]
    for _ in range(n_steps):
        steps.append(v.step(rng.integers(0, v.single_action_space.n, v.num_envs)))
    return steps


def test_vector_env_spaces_and_metadata(venv):
    v = venv.unwrapped
    assert isinstance(v, envs.MultiTurnRoutingVectorEnv) and v.num_envs == 8
    assert v.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert v.observation_space.shape == (8, v.single_observation_space.shape[0])
    assert v.observation_space.dtype == np.float32
    assert isinstance(v.action_space, gym.spaces.MultiDiscrete) and list(v.action_space.nvec) == [6] * 8
    obs, info = venv.reset(seed=0)
    assert obs in venv.observation_space and info["task"].shape == (8,)


def test_vector_env_autoreset_next_step(venv):
    steps = _vec_run(venv, 1, 80)
    n_done = 0
    for prev, cur in zip(steps[1:], steps[2:]):
        obs, rew, term, trunc, info = cur
        assert obs.dtype == np.float32 and obs in venv.observation_space
        assert rew.shape == (8,) and term.dtype == np.bool_ and trunc.dtype == np.bool_
        assert not (term & trunc).any()
        was_done = prev[2] | prev[3]
        np.testing.assert_array_equal(info["autoreset"], was_done)
        n_done += int(was_done.sum())
        # the step after an end: action ignored, fresh episode, zero reward, not done
        assert (rew[was_done] == 0).all() and not (term | trunc)[was_done].any()
        assert (info["turn"][was_done] == 0).all() and not info["executed"][was_done].any()
        assert (info["episode_cost"][was_done] == 0).all()
        # live sub-envs executed their call (no budget) and advanced one turn
        assert info["executed"][~was_done].all()
        np.testing.assert_array_equal(info["turn"][~was_done], prev[4]["turn"][~was_done] + 1)
    assert n_done >= 8  # several episodes ended and restarted within 80 steps


def test_vector_env_seeded_reproducible_and_single_compile(venv):
    v = venv.unwrapped
    a = _vec_run(v, 5, 40)
    n_compiled = vector_env._vec_step._cache_size()
    b = _vec_run(v, 5, 40, options={"budget": None})
    assert vector_env._vec_step._cache_size() == n_compiled  # one compiled step for all calls
    for x, y in zip(a, b):
        for u, w in zip(x, y):
            if isinstance(u, dict):
                assert u.keys() == w.keys()
                for k in u:
                    np.testing.assert_array_equal(u[k], w[k])
            else:
                np.testing.assert_array_equal(u, w)
    c = _vec_run(v, 6, 5)
    assert not np.array_equal(a[5][0], c[5][0])


def test_vector_env_budgets_never_exceeded():
    budgets = np.array([0.0, 0.003, 0.01, 0.02, 0.05, 0.1, 0.3, None], object)
    v = envs.MultiTurnRoutingVectorEnv(num_envs=8)
    steps = _vec_run(v, 2, 60, options={"budget": list(budgets)})
    lim = np.array([math.inf if b is None else b for b in budgets], np.float32)
    exhausted = np.zeros(8, bool)
    for _, _, _, trunc, info in steps[1:]:
        assert (info["episode_cost"] <= lim).all()
        exhausted |= info["budget_exhausted"]
        assert not (info["budget_exhausted"] & ~trunc).any()
    assert exhausted[:4].all() and not exhausted[7]
    with pytest.raises(ValueError, match="one per sub-env"):
        v.reset(options={"budget": [0.1, 0.2]})
