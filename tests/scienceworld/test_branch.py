"""Executed counterfactuals on real ScienceWorld: a replayed prefix restores the logged state, and a
branch differs from its base only by the turn-t model (same prefix, same draws)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.logs.io import iter_episodes, write_episodes
from testing.scienceworld import skip_without_scienceworld

TASK, VARIATION = "find-living-thing", 1


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    skip_without_scienceworld()
    from mtrouter_jax.live.router import Router
    from mtrouter_jax.scienceworld import ScienceWorldEngine
    from mtrouter_jax.scienceworld.engine import DEFAULT_TASKS
    from mtrouter_jax.scienceworld.routed import TOOLS, RoutedEpisode
    from mtrouter_jax.scienceworld.scripted import ScriptedBackend

    pool = default_pool()
    engine = ScienceWorldEngine(gold_cache=tmp_path_factory.mktemp("gold"))
    backend = ScriptedBackend.from_file("specialists", seed=2, models=pool.names)
    router = Router(None, pool, policy="sticky:0.9", tools=TOOLS, task_types=DEFAULT_TASKS, seed=4, log_text=True)

    def make(log_id, seed=None):
        return RoutedEpisode(engine, backend, router, TASK, VARIATION, episode_id="crn-7", log_id=log_id,
                             step_limit=40, seed=seed)

    base = make("base").run().finish()
    yield make, base, pool
    engine.close()


def _play(ep):
    ep.run()


def test_replay_restores_the_logged_score_and_observations(world):
    make, base, _ = world
    ep = make("replay", seed=base.meta["seed"])
    outcomes = [ep.replay(t) for t in base.turns]
    assert [o.score for o in outcomes] == [t.progress for t in base.turns]
    # ScienceWorld lists a room's objects in varying order even in one JVM: same words, maybe reordered
    words = lambda text: sorted(text.split())  # noqa: E731
    assert [words(o.observation) for o in outcomes] == [words(t.observation) for t in base.turns]
    assert ep.score == base.score
    assert ep.live.spent == pytest.approx(base.total_cost)


def test_replay_of_a_log_from_elsewhere_is_refused(world):
    from mtrouter_jax.scienceworld.routed import ReplayMismatch

    make, base, _ = world
    ep = make("wrong")
    i = next(k for k, t in enumerate(base.turns) if t.progress != (base.turns[k - 1].progress if k else None))
    bad = [*base.turns[:i], dataclasses.replace(base.turns[i], progress=base.turns[i].progress + 7)]
    with pytest.raises(ReplayMismatch, match=f"turn {i + 1}"):
        for t in bad:
            ep.replay(t)


def test_a_branch_with_the_logged_model_reproduces_its_base(world):
    """Common random numbers: only the turn-t model can make the two continuations differ."""
    from mtrouter_jax.scienceworld.branch import run_branch

    make, base, pool = world
    t = len(base.turns) // 2
    same = run_branch(make, base, t, np.random.default_rng(0), pool.names, _play, alt=base.turns[t].model)
    key = lambda e: [(x.model, x.action, x.progress, x.input_tokens, x.cached_tokens, x.output_tokens)  # noqa: E731
                     for x in e.turns]
    assert key(same) == key(base) and same.score == base.score
    assert same.meta["branch_of"] == base.episode_id and same.meta["branch_turn"] == t
    assert same.meta["branch_cost"] == pytest.approx(sum(x.cost for x in base.turns[t:]))


def test_a_branch_differs_only_from_turn_t_and_survives_the_log(world, tmp_path):
    from mtrouter_jax.estimator.dataset import build_training_data
    from mtrouter_jax.scienceworld.branch import run_branch

    make, base, pool = world
    t = 3
    br = run_branch(make, base, t, np.random.default_rng(1), pool.names, _play)
    assert br.turns[t].model != base.turns[t].model
    assert [x.model for x in br.turns[:t]] == [x.model for x in base.turns[:t]]
    assert [x.action for x in br.turns[:t]] == [x.action for x in base.turns[:t]]
    assert all((x.meta or {}).get("replayed") for x in br.turns[:t])
    write_episodes(tmp_path / "log.jsonl", [base, br])
    back = list(iter_episodes(tmp_path / "log.jsonl"))
    assert back[1].meta["branch_of"] == base.episode_id and back[1].meta["branch_turn"] == t
    data = build_training_data(back, pool)
    assert data.pairs.shape == (1, 2)
    i, j = data.pairs[0]
    np.testing.assert_allclose(data.features[i], data.features[j])  # the shared history
    assert data.model[i] == pool.index(base.turns[t].model) and data.model[j] == pool.index(br.turns[t].model)
    assert data.n == len(base.turns) + len(br.turns) - t  # the replayed prefix is not counted twice
    assert data.group[data.episode == 1].tolist() == [0] * (len(br.turns) - t)
