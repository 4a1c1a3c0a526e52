"""ScienceWorld core: agent protocol, profiles, engine errors, scripted episodes on the real simulator.

Tests that need the JVM share one module-scoped engine and skip (with the reason) when Java or
the ``scienceworld`` package is missing; the protocol and profile tests always run.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrouter_jax.logs.detect import default_rules, scienceworld_rules
from mtrouter_jax.logs.io import TurnError
from mtrouter_jax.scienceworld import (NO_ACTION_OBSERVATION, Session, HistoryWindow, ProfileError,
                                       ScienceWorldUnavailable, ScriptedBackend, SplitError, UnknownTaskError,
                                       VariationError, build_messages, cached_prefix_tokens, check_task,
                                       check_variation, format_action, load_profiles, parse_action, prompt_tokens,
                                       require_java, variations)
from mtrouter_jax.scienceworld.agent import window_start
from mtrouter_jax.scienceworld.scripted import AgentProfile, garble, visible_objects
from testing.scienceworld import skip_without_scienceworld

# ----------------------------------------------------------------------------- protocol (no JVM)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_action_never_crashes(text):
    out = parse_action(text)
    assert out is None or (out and "\n" not in out and out == out.strip())


_CMD = st.text(string.ascii_letters + string.digits + " -", min_size=1, max_size=60).filter(str.strip)


@settings(max_examples=200, deadline=None)
@given(_CMD, st.one_of(st.none(), st.text(max_size=80).filter(lambda s: "`" not in s)))
def test_parse_action_round_trips(command, thought):
    assert parse_action(format_action(command, thought)) == " ".join(command.split())


@pytest.mark.parametrize("reply,expected", [
    ("THOUGHT: go.\n```\nopen door to kitchen\n```", "open door to kitchen"),
    ("```text\n  Open   Door to Kitchen \n\n```", "Open Door to Kitchen"),
    ("```look around```", "look around"),
    ("```inventory\n```", "inventory"),
    ("Action: look around", None),                      # no fenced block
    ("```\nlook around\n```\n```\ninventory\n```", None),  # two blocks
    ("```\nlook around\ninventory\n```", None),            # two commands in one block
    ("```\n\n```", None), ("", None), (None, None),
])
def test_parse_action_examples(reply, expected):
    assert parse_action(reply) == expected


def test_no_action_observation_is_an_action_format_error():
    assert scienceworld_rules().detect(NO_ACTION_OBSERVATION) == TurnError("action_format", "medium")
    assert default_rules().detect(NO_ACTION_OBSERVATION) == TurnError("action_format", "medium")


def test_history_window_is_cache_friendly():
    w = HistoryWindow(max_chars=2_000, keep_chars=1_000, max_observation_chars=300)
    hist = [(f"look at thing {i}", "x" * 150) for i in range(40)]
    starts = [window_start(hist[:n], w) for n in range(1, 41)]
    assert starts == sorted(starts) and starts[-1] > 0  # it slides, never backwards
    prev = build_messages("Your task is X.", hist[:20], initial_observation="room", window=w)
    cur = build_messages("Your task is X.", hist[:21], initial_observation="room", window=w)
    if window_start(hist[:20], w) == window_start(hist[:21], w):  # no truncation in between: append-only
        assert cur[:len(prev)] == prev and cached_prefix_tokens(prev, cur) == prompt_tokens(prev)
    truncated = [n for n in range(1, 40) if starts[n] != starts[n - 1]]
    assert truncated and len(truncated) < 10  # chunked drops, not one per step
    n = truncated[0]
    a = build_messages("T", hist[:n], window=w)
    b = build_messages("T", hist[:n + 1], window=w)
    assert "earlier steps are not shown" in b[1]["content"]
    assert cached_prefix_tokens(a, b) == prompt_tokens(b[:1])  # only the system prompt survives
    assert cached_prefix_tokens(None, b) == 0
    long = build_messages("T", [("look", "y" * 1000)], window=w)
    assert len(long[-1]["content"]) < 400


# ----------------------------------------------------------------------------- tables, profiles (no JVM)


def test_task_variation_split_errors():
    with pytest.raises(UnknownTaskError, match="did you mean 'boil'"):
        check_task("boill")
    with pytest.raises(SplitError, match="expected one of train, dev, test"):
        variations("boil", "validation")
    assert variations("boil", "dev") == range(14, 21)
    with pytest.raises(VariationError, match=r"'boil' train: valid are 0\.\.13"):
        check_variation("boil", 14, "train")
    with pytest.raises(VariationError, match=r"valid are 0\.\.29"):
        check_variation("boil", 30)
    assert issubclass(VariationError, ValueError)


_GOOD = """
[model."m"]
output_tokens = 100
output_spread = 0.3
reasoning = false
wrong_focus = 0.1
no_action = { explore = 0.0, navigate = 0.0, act = 0.0, focus = 0.0, other = 0.0 }
invalid   = { explore = 0.1, navigate = 0.1, act = 0.1, focus = 0.1, other = 0.1 }
wasted    = { explore = 0.1, navigate = 0.1, act = 0.1, focus = 0.1, other = 0.1 }
"""


@pytest.mark.parametrize("edit,message", [
    (("act = 0.1, focus", "act = 1.5, focus"), r"model\.m\.invalid\.act: expected a probability in \[0, 1\], got 1\.5"),
    (("reasoning = false", "reasoning = false\ncolour = 1"), r"model\.m\.colour: unknown field"),
    (("output_spread = 0.3\n", ""), r"model\.m\.output_spread: missing required field"),
    (("other = 0.0 }", "other = 0.0, answer = 0.1 }"), r"model\.m\.no_action\.answer: unknown action type"),
    (("wrong_focus = 0.1", "wrong_focus = 0.9"), r"model\.m: mistake probabilities for 'focus' sum to 1\.100"),
    (("reasoning = false", "reasoning = 1"), r"model\.m\.reasoning: expected true or false"),
])
def test_profile_validation(tmp_path, edit, message):
    p = tmp_path / "p.toml"
    p.write_text(_GOOD)
    assert load_profiles(p)["m"].invalid["act"] == 0.1
    p.write_text(_GOOD.replace(*edit))
    with pytest.raises(ProfileError, match=str(p).replace(".", r"\.") + ": " + message):
        load_profiles(p)


def test_profiles_cover_the_default_pool(tmp_path, pool):
    profiles = load_profiles(None, pool.names)
    assert set(pool.names) <= set(profiles)
    p = tmp_path / "p.toml"
    p.write_text(_GOOD)
    with pytest.raises(ProfileError, match=r"no profile for model\(s\) 'gpt-5'.*profiles exist for: m"):
        ScriptedBackend.from_file(p, models=["m", "gpt-5"])


def test_visible_objects_and_garble():
    look = ("This room is called the kitchen. In it, you see: \n\tthe agent\n\ta substance called air\n"
            "\ta chair. On the chair is: nothing.\n\ta fridge. The fridge door is closed. \n"
            "\ta red light bulb, which is off\nYou also see:\n\tA door to the hallway (that is open)")
    assert visible_objects(look) == ["air", "chair", "door to hallway", "fridge", "red light bulb"]
    shuffled = "\n".join(look.split("\n")[:1] + look.split("\n")[1:][::-1])  # the order ScienceWorld varies
    assert visible_objects(shuffled) == visible_objects(look)
    assert garble("go to kitchen", 0.0) == "og to kitchen"
    assert garble("pick up apple", 0.0) == "ipck up apple"
    assert garble("0", 0.5) == "option 0"


def test_require_java_says_what_is_missing(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ScienceWorldUnavailable, match="needs a Java 17 runtime"):
        require_java()


# ----------------------------------------------------------------------------- the real simulator


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    skip_without_scienceworld()
    from mtrouter_jax.scienceworld import ScienceWorldEngine

    eng = ScienceWorldEngine(gold_cache=tmp_path_factory.mktemp("gold"))
    yield eng
    eng.close()


PERFECT = AgentProfile("perfect", *({t: 0.0 for t in ("explore", "navigate", "act", "focus", "other")},) * 3,
                       wrong_focus=0.0, output_tokens=50, output_spread=0.0, reasoning=False)


def _play(engine, backend, model, task, variation, episode_id=0, max_steps=60, models=None):
    ep = Session(engine, task, variation, episode_id=episode_id)
    log = []
    while not ep.terminated and ep.steps < max_steps:
        m = models[ep.steps % len(models)] if models else model
        text, usage = backend.complete(m, ep.messages(), ep)
        log.append((text, usage, ep.apply_reply(text)))
    return ep, log


def test_engine_errors_and_tables(engine):
    with pytest.raises(UnknownTaskError, match="did you mean"):
        engine.load("use-thermometr", 0)
    with pytest.raises(VariationError, match=r"valid are 0\.\.539"):
        engine.load("use-thermometer", 540)
    start = engine.load("use-thermometer", 0, gold=True)
    assert start.task_description.startswith("Your task is") and "This " in start.observation
    env = engine._env  # the frozen split table matches the JVM's
    assert list(variations("use-thermometer", "test")) == list(env.get_variations_test())
    assert list(variations("use-thermometer", "dev")) == list(env.get_variations_dev())
    path = engine.gold_cache_dir / "use-thermometer" / "0.json"
    assert path.exists()
    engine._gold.clear()  # the next read comes from disk
    assert engine.gold_actions("use-thermometer", 0) == start.gold


def test_scripted_episodes_end_to_end(engine, pool):
    backend = ScriptedBackend({**load_profiles(None, pool.names), "perfect": PERFECT}, seed=3)
    ep, log = _play(engine, backend, "perfect", "find-non-living-thing", 0)
    assert ep.score == 100 and ep.terminated
    assert sum(o.gold_advanced for _, _, o in log) == ep.gold_index == ep.steps
    assert ep.initial_score == 0 and sum(o.reward for _, _, o in log) == ep.score
    # a mistake-prone model: the pointer moves only on accepted gold commands
    ep, log = _play(engine, backend, "minimax-m2", "use-thermometer", 2, episode_id=11, max_steps=25)
    assert ep.initial_score == 3  # a subgoal is met before the first step
    assert ep.initial_score + sum(o.reward for _, _, o in log) == ep.score
    assert sum(o.gold_advanced for _, _, o in log) == ep.gold_index < ep.steps
    for _, _, o in log:
        assert o.gold_advanced <= o.parsed
        if o.action is None:
            assert o.observation == NO_ACTION_OBSERVATION and o.action_type == "reasoning" and o.reward == 0


def test_same_seed_same_replies(engine, pool):
    runs = []
    for _ in range(2):
        backend = ScriptedBackend.from_file(seed=5, models=pool.names)
        _, log = _play(engine, backend, "kimi-k2", "find-animal", 4, episode_id=2, max_steps=12)
        runs.append([(text, usage) for text, usage, _ in log])
    assert runs[0] == runs[1]


def test_cached_tokens_follow_the_serving_model(engine, pool):
    backend = ScriptedBackend.from_file(seed=0, models=pool.names)
    models = ["gpt-5", "gpt-5", "kimi-k2", "gpt-5", "gpt-5"]
    _, log = _play(engine, backend, None, "find-plant", 0, max_steps=5, models=models)
    usage = [u for _, u, _ in log]
    cached = [u["prompt_tokens_details"]["cached_tokens"] for u in usage]
    assert cached[0] == 0 and cached[1] == usage[0]["prompt_tokens"]
    assert cached[2] == 0 and cached[3] == 0  # a switch misses the cache, also on the way back
    assert cached[4] == usage[3]["prompt_tokens"]
    assert all(u["completion_tokens"] >= 1 and u["prompt_tokens"] > 0 for u in usage)


def test_cancelled_choice_prompt_is_reissued(engine):
    ep = Session(engine, "grow-plant", 0)
    while not ep.gold[ep.gold_index].isdigit():  # play the gold path up to its first numbered choice
        assert ep.apply_action(ep.expected_action()).gold_advanced
    assert ep.awaiting_choice
    ambiguous = ep.gold[ep.gold_index - 1]
    out = ep.apply_action("look around")  # a non-number cancels the prompt
    assert not out.parsed and scienceworld_rules().detect(out.observation) == TurnError("invalid_action", "high")
    assert ep.expected_action() == ambiguous
    ep.apply_action(ambiguous)
    assert ep.awaiting_choice and ep.expected_action() == "0"
    assert ep.apply_action("0").gold_advanced


def test_lambda_calibration_moves_off_the_smallest_lambda_only_on_paired_evidence(pool):
    """``mtrouter eval --lam-grid``: the smallest λ unless another is better on the same calibration
    episodes with a 95 % paired lower bound above 0 (a best mean alone is mostly noise)."""
    import numpy as np

    from mtrouter_jax.logs.io import Episode as LogEpisode
    from mtrouter_jax.scienceworld.evaluate import _learned_lams
    from mtrouter_jax.scienceworld.runner import RouterSpec

    plan = [("boil", v) for v in range(30)]
    rng = np.random.default_rng(0)
    base_noise = rng.normal(0, 40, len(plan))
    logged = {}

    def run(jobs):
        for j in jobs:
            lam = float(j.spec.label.rsplit("-lam", 1)[1])
            i = j.variation
            # budget 0.1: λ 0.3 is better by 20 points on every episode; budget 1.0: +5 noisy
            gain = 20.0 if j.budget == 0.1 else 5.0 + rng.normal(0, 40)
            score = base_noise[i] + (gain if lam == 0.3 else 0.0)
            logged[j.episode_id] = LogEpisode(j.episode_id, "boil", float(score), j.budget, pool.names, (), (-100.0, 100.0),
                                              meta={"base_id": j.base_id})

    chosen = _learned_lams(RouterSpec("learned", label="m"), "m", [0.1, 1.0], [0.0, 0.1, 0.3], plan, "dev", 1,
                           pool, run, lambda: logged)
    assert chosen == {0.1: 0.3, 1.0: 0.0}
