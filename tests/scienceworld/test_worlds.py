"""The frozen worlds of scripted agents load by name, are valid, differ as documented, and stay frozen."""

from __future__ import annotations

import hashlib
from importlib import resources

import pytest

from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.scienceworld.scripted import WORLDS, ProfileError, load_profiles
from testing.scienceworld import skip_without_scienceworld

# Pinned when each world was frozen (before any router was trained on it). A change here means a
# world was tuned: make a new world with a new name instead.
FROZEN = {
    "paper": "4dc084b4d0420fb54f756d36089f15511299a6aabc84cd4c888a6116a107f84a",
    "specialists": "9a30f878d884a0286c93811d3bb526afee095306111840bac4887865cfe84cf5",
    "inverted": "20add3ecce792601f40c9a3a087faf36937095ac19305e11c0d521b354e249bf",
    "holdout": "801db8dc57cc4a44b7fce8fb75c2011b7cd375dc06df7544b58d36f24969241a",
}
TYPES = ("explore", "navigate", "act", "focus", "other")


@pytest.mark.parametrize("world", sorted(WORLDS))
def test_world_is_frozen_and_loads(world):
    data = resources.files("mtrouter_jax.data").joinpath(WORLDS[world]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == FROZEN[world]
    profiles = load_profiles(world, models=default_pool().names)
    assert set(profiles) == set(default_pool().names)


def _p_gold(prof, t):
    """P(the gold command | an action of type t is due), from the profile's mistake rates."""
    wrong = prof.wrong_focus if t == "focus" else 0.0
    return 1.0 - prof.no_action[t] - prof.invalid[t] - prof.wasted[t] - wrong


def _best(world):
    profiles = load_profiles(world)
    return {t: max(profiles, key=lambda m: _p_gold(profiles[m], t)) for t in TYPES}


def test_specialists_have_a_different_best_model_per_type():
    best = _best("specialists")
    assert best == {"explore": "deepseek-v3.2", "navigate": "gpt-oss-120b", "act": "gpt-oss-120b",
                    "focus": "gpt-5", "other": "gemini-2.5-flash-lite"}


def test_inverted_world_contradicts_the_napkin_mapping():
    best = _best("inverted")
    # the tool heuristic sends act/focus to gpt-5 and explore/navigate to gpt-oss-120b
    assert best["act"] != "gpt-5" and best["focus"] != "gpt-5"
    assert best["explore"] == "gpt-5" and best["navigate"] == "gpt-5"


def test_holdout_world_has_its_documented_specialists():
    best = _best("holdout")
    assert best == {"explore": "gpt-oss-120b", "navigate": "gemini-2.5-flash-lite", "act": "kimi-k2",
                    "focus": "minimax-m2", "other": "deepseek-v3.2"}
    # gpt-5 is best at nothing, but second best at every type
    profiles = load_profiles("holdout")
    for t in TYPES:
        ranked = sorted(profiles, key=lambda m: -_p_gold(profiles[m], t))
        assert ranked[1] == "gpt-5", (t, ranked)


def test_unknown_world_is_a_file_path_error():
    with pytest.raises(ProfileError, match="not a world .*specialists"):
        load_profiles("no-such-world")


def test_bound_choice_follows_the_profiles_and_the_budget():
    import numpy as np

    from mtrouter_jax.scienceworld.bound import bound_choice

    profiles = load_profiles("specialists")
    names = default_pool().names
    price = np.array([default_pool()[m].price_output for m in names])
    everyone = np.ones(len(names), bool)
    assert bound_choice(profiles, names, price, everyone, "focus") == "gpt-5"
    assert bound_choice(profiles, names, price, everyone, "act") == "gpt-oss-120b"
    no_gpt5 = everyone & (np.array(names) != "gpt-5")
    assert bound_choice(profiles, names, price, no_gpt5, "focus") != "gpt-5"


def test_bound_plays_a_real_episode(tmp_path_factory):
    """The privileged bound routes a real ScienceWorld episode by the gold action type due, within budget."""

    skip_without_scienceworld()
    from mtrouter_jax.live.router import Router
    from mtrouter_jax.scienceworld import ScienceWorldEngine
    from mtrouter_jax.scienceworld.bound import run_bound
    from mtrouter_jax.scienceworld.routed import TOOLS, RoutedEpisode
    from mtrouter_jax.scienceworld.scripted import ScriptedBackend

    engine = ScienceWorldEngine(gold_cache=tmp_path_factory.mktemp("gold"))
    try:
        backend = ScriptedBackend.from_file("specialists", seed=0, models=default_pool().names)
        router = Router(None, default_pool(), policy="cheapest", tools=TOOLS)
        ep = RoutedEpisode(engine, backend, router, "use-thermometer", 0, episode_id=0, budget=0.05, step_limit=40)
        run_bound(ep, backend.profiles)
        logged = ep.finish()
    finally:
        engine.close()
    assert logged is not None and logged.turns and logged.total_cost <= 0.05 + 1e-9
    assert len({t.model for t in logged.turns}) >= 2  # it switches by action type


def test_eval_refuses_a_checkpoint_of_another_vocabulary(tmp_path_factory):
    from testing.artifacts import trained_checkpoint

    from mtrouter_jax.routing.specs import RouterSpecError
    from mtrouter_jax.scienceworld.evaluate import validate_spec
    from mtrouter_jax.scienceworld.runner import RouterSpec

    sim_ckpt = trained_checkpoint(tmp_path_factory)  # trained on simulator tool types
    with pytest.raises(RouterSpecError, match="another vocabulary.*mtrouter collect scienceworld"):
        validate_spec(RouterSpec("learned", checkpoint=str(sim_ckpt)), default_pool())


def test_capped_singles_run_at_each_budget_and_fixed_ones_without():
    """``capped:MODEL`` is a single model held to the budgets (a row per budget, its own episode ids);
    ``fixed:MODEL`` keeps running without one."""
    from mtrouter_jax.scienceworld.evaluate import eval_specs
    from mtrouter_jax.scienceworld.runner import make_jobs

    pool = default_pool()
    specs = eval_specs("capped:*,fixed:gpt-5,capped:gpt-oss-120b", pool, None, None, None)
    capped = [(n, k, s) for n, k, s in specs if n.startswith("capped:")]
    assert [n for n, _, _ in capped] == [f"capped:{m}" for m in pool.names] + ["capped:gpt-oss-120b"]
    assert all(k == "baseline" and s.router == f"fixed:{n[7:]}" for n, k, s in capped)  # budgets apply to baselines
    assert ("gpt-5", "single") in [(n, k) for n, k, _ in specs]
    ids = {j.episode_id for _, _, s in specs[:1] for j in make_jobs(s, [("use-thermometer", 0)], "test", 1, 0.02)}
    fixed_ids = {j.episode_id for j in make_jobs(specs[len(pool.names)][2], [("use-thermometer", 0)], "test", 1)}
    assert ids == {f"sw-test-use-thermometer-v0-r0-capped:{pool.names[0]}-b0.02"} and not ids & fixed_ids


def test_draft_router_specs_name_their_escalation_test(tmp_path_factory):
    """``safe+draft`` uses the default test, ``safe+draft:TEST`` names one (its own row and episode
    label), ``safe+draft:off`` never drafts; plain ``safe`` drafts where the checkpoint's logs have
    per-turn outcomes (and its name says so), not where they have none (a simulator checkpoint);
    any other suffix is refused naming the modes."""
    from mtrouter_jax.routing.specs import RouterSpecError
    from mtrouter_jax.scienceworld.evaluate import eval_specs

    specs = eval_specs("safe+draft=a/ck,safe+draft:difference=a/ck,learned+draft:overlap=b/ck,safe+draft:off=a/ck",
                       default_pool(), None, None, None)
    got = [(n, s.router, s.draft) for n, _, s in specs]
    assert got == [("mtrouter-safe+draft[ck]", "safe", True), ("mtrouter-safe+draft:difference[ck]", "safe", "difference"),
                   ("mtrouter+draft:overlap[ck]", "learned", "overlap"), ("mtrouter-safe[ck]", "safe", False)]
    for bad in ("safe+draft:bayes=a/ck", "safe+draftx=a/ck"):
        with pytest.raises(RouterSpecError, match="auto, off, overlap, difference"):
            eval_specs(bad, default_pool(), None, None, None)
    import json
    import shutil

    from testing.artifacts import trained_checkpoint

    sim_ckpt = trained_checkpoint(tmp_path_factory)  # simulator logs: no per-turn progress, an empty table
    assert json.loads((sim_ckpt / "meta" / "metadata").read_text())["type_outcomes"]["n"]
    sw_ckpt = tmp_path_factory.mktemp("sw") / "ck_sw"  # as if its logs had outcomes (eval_specs reads the metadata)
    shutil.copytree(sim_ckpt, sw_ckpt)
    meta = json.loads((sw_ckpt / "meta" / "metadata").read_text())
    t = meta["type_outcomes"]
    t["n"][0][0] = 25.0  # outcomes, but nothing another model is known to do better: auto does not draft
    (sw_ckpt / "meta" / "metadata").write_text(json.dumps(meta))
    assert eval_specs(f"safe={sw_ckpt}", default_pool(), None, None, None)[0][2].draft is False
    t["n"][0][:2], t["mean"][0][:2], t["var"][0][:2] = [40.0, 40.0], [-0.3, 0.1], [0.01, 0.01]  # model 1 much better
    (sw_ckpt / "meta" / "metadata").write_text(json.dumps(meta))
    auto = [(n, s.draft) for n, _, s in eval_specs(f"safe={sim_ckpt},learned={sw_ckpt}", default_pool(), None, None, None)]
    assert auto == [(f"mtrouter-safe[{sim_ckpt.name}]", False), (f"mtrouter+draft[{sw_ckpt.name}]", True)]
