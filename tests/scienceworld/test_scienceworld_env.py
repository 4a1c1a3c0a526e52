"""Real ScienceWorld as a routing environment: the Gymnasium env, routed episodes through the live
router's feature path (scripted agents and a loopback OpenAI-compatible fake), collect/eval CLI."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from fastapi import FastAPI

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*Box observation space.*:UserWarning")]

if shutil.which("java") is None:
    pytest.skip("ScienceWorld needs a Java 17 runtime on PATH", allow_module_level=True)
pytest.importorskip("scienceworld", reason="the scienceworld extra is not installed")

from gymnasium.utils.env_checker import check_env  # noqa: E402

from envs.scienceworld_env import ScienceWorldRoutingEnv, scienceworld_router  # noqa: E402
from testing.live import ServerThread  # noqa: E402
from mtrouter_jax import cli  # noqa: E402
from mtrouter_jax.logs.io import read_episodes  # noqa: E402
from mtrouter_jax.core.pool import Endpoint, ModelSpec, Pool, default_pool  # noqa: E402
from mtrouter_jax.scienceworld import NO_ACTION_OBSERVATION, ScienceWorldEngine  # noqa: E402
from mtrouter_jax.scienceworld.routed import RoutedEpisode  # noqa: E402

TASK = "lifespan-longest-lived"  # gold paths of 6-8 steps, loads in ~0.2 s: cheap real episodes


@pytest.fixture(scope="module")
def engine():
    with ScienceWorldEngine() as e:
        yield e


def test_check_env(engine):
    env = ScienceWorldRoutingEnv(tasks=(TASK,), step_limit=5, engine=engine)
    check_env(env, skip_render_check=True)


def test_two_scripted_episodes_through_the_env(engine):
    env = ScienceWorldRoutingEnv(tasks=(TASK,), step_limit=30, engine=engine)
    pool = env.pool
    for k, model in enumerate(("gpt-5", "gpt-oss-120b")):
        obs, info = env.reset(seed=k, options={"variation": k, "split": "train"})
        assert obs.shape == env.observation_space.shape and obs.dtype == np.float32
        start, total, steps = info["score"], 0.0, 0
        while True:
            obs, r, term, trunc, info = env.step(pool.index(model))
            total, steps = total + r, steps + 1
            assert info["model"] == model and info["turn_cost"] > 0 and info["action_type"]
            assert np.isfinite(obs).all()
            if term or trunc:
                break
        assert total == pytest.approx(info["score"] - start) and steps == info["turn"]
        assert term == env.episode.terminated and (term or info["ended_by"] == "step limit")
        logged = env.episode.finish()
        assert len(logged.turns) == steps and all(t.model == model for t in logged.turns)
        assert logged.score == info["score"] and logged.meta["task"] == TASK
        assert logged.total_cost == pytest.approx(info["cost"])
    with pytest.raises(ValueError, match="variation"):
        env.reset(options={"task": TASK, "variation": 10_000})
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"tsk": TASK})


def test_a_turn_that_cannot_fit_the_budget_truncates_without_running(engine):
    env = ScienceWorldRoutingEnv(tasks=(TASK,), engine=engine)
    env.reset(seed=0, options={"budget": 1e-4})
    _, r, term, trunc, info = env.step(env.pool.index("gpt-5"))
    assert trunc and not term and r == 0.0 and info["cost"] == 0.0 and info["turn"] == 0


class _FakeLLM:
    """A loopback OpenAI-compatible upstream that answers with fixed replies."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []

    def app(self):
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(body: dict):
            self.requests.append(body)
            text = self.replies[min(len(self.requests) - 1, len(self.replies) - 1)]
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 900, "completion_tokens": 40,
                              "prompt_tokens_details": {"cached_tokens": 0}}}

        return app


def test_one_turn_through_a_loopback_openai_compatible_endpoint(engine, monkeypatch, tmp_path):
    from mtrouter_jax.live.backends import Backends
    from mtrouter_jax.scienceworld.routed import LiveChatBackend

    monkeypatch.setenv("SW_FAKE_KEY", "sk-test")
    fake = _FakeLLM(["THOUGHT: look first.\n```\nlook around\n```", "I would look around."])
    with ServerThread(fake.app()) as srv:
        base = default_pool()
        pool = Pool(base.name, tuple(ModelSpec(m.name, m.price_input, m.price_cached_input, m.price_output,
                                               m.attributes, None, Endpoint(srv.url + "/v1", f"fake-{m.name}", "SW_FAKE_KEY"))
                                     for m in base.models))
        router = scienceworld_router(pool, log_path=tmp_path / "live.jsonl", log_text=True)
        ep = RoutedEpisode(engine, LiveChatBackend(Backends(pool)), router, TASK, 0, episode_id="loop-1", budget=0.1)
        res = ep.step("gpt-5")  # reply -> action -> ScienceWorld step -> logged turn
        assert res.outcome.action == "look around" and res.outcome.parsed
        # the budget caps the completion so the turn cannot overshoot it
        assert fake.requests[0]["model"] == "fake-gpt-5" and 0 < fake.requests[0]["max_tokens"] < 20_000
        res2 = ep.step("gpt-5")  # a reply with no parsable action: the format-error observation
        assert res2.outcome.action is None and res2.outcome.observation == NO_ACTION_OBSERVATION
        ep.finish()
    (logged,) = read_episodes(tmp_path / "live.jsonl")
    t0, t1 = logged.turns
    assert t0.action == "look around" and t0.tool == "explore" and t0.input_tokens == 900
    assert t0.cost == pytest.approx((900 * 1.25 + 40 * 10.0) / 1e6)
    assert t1.cached_tokens == 0 and t1.cost == pytest.approx(t0.cost)  # the fake reports no cache hit
    assert t0.observation.startswith("This room is called")
    assert t1.error is not None and t1.error.kind == "action_format" and t1.tool == "reasoning"


def test_collect_train_and_eval_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "sw.jsonl"
    argv = ["collect", "scienceworld", "--tasks", TASK, "--per-task", "2", "--workers", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    eps = read_episodes(out)
    assert len(eps) == 2 and all(e.meta["split"] == "train" for e in eps)
    assert all(t.observation and t.action and t.propensity is not None for e in eps for t in e.turns)
    assert cli.main(argv) == 0  # resumable: both ids are there, nothing is run twice
    assert len(read_episodes(out)) == 2 and "appended 0 episodes" in capsys.readouterr().out
    assert cli.main(["train", "--data", str(out), "--out", str(tmp_path / "ck"), "--epochs", "1",
                     "--bootstrap-iterations", "0", "--ensemble", "2"]) == 0
    res_dir = tmp_path / "eval"
    assert cli.main(["eval", "scienceworld", "--checkpoint", str(tmp_path / "ck"), "--routers",
                     "learned,tool-heuristic,fixed:gpt-oss-120b", "--tasks", TASK, "--per-task", "2",
                     "--workers", "1", "--budgets", "0.05", "--out", str(res_dir)]) == 0
    results = json.loads((res_dir / "results.json").read_text())
    assert set(results["routers"]) == {"mtrouter", "tool-heuristic", "gpt-oss-120b"}
    assert results["routers"]["mtrouter"]["points"][0]["n_episodes"] == 2
    for f in ("cost_score.png", "behaviour.png", "summary.md", "results.csv", "episodes.jsonl"):
        assert (res_dir / f).exists()


def test_eval_capped_singles_and_a_budget_no_turn_fits(tmp_path, capsys):
    """A capped single model is held to the budget; one whose first turn never fits (gpt-5 on a
    third of a cent) leaves no point, said in the results and the summary, instead of a crash."""
    res_dir = tmp_path / "eval"
    assert cli.main(["eval", "scienceworld", "--routers", "capped:gpt-oss-120b,capped:gpt-5", "--tasks", TASK,
                     "--per-task", "1", "--workers", "1", "--budgets", "0.003", "0.05", "--out", str(res_dir)]) == 0
    results = json.loads((res_dir / "results.json").read_text())
    assert [p["budget"] for p in results["routers"]["capped:gpt-oss-120b"]["points"]] == [0.003, 0.05]
    assert [p["budget"] for p in results["routers"]["capped:gpt-5"]["points"]] == [0.05]
    assert results["meta"]["unplayable"] == [{"router": "capped:gpt-5", "budget": 0.003, "why": (
        "no episode took a turn: the router's first turn never fits this budget")}]
    eps = read_episodes(res_dir / "episodes.jsonl")
    assert all(sum(t.cost for t in e.turns) <= e.budget + 1e-12 for e in eps)
    assert "capped:gpt-5 at $0.00300: no point" in (res_dir / "summary.md").read_text()


def test_eval_match_cost_holds_rows_to_the_matched_routers_mean_cost(tmp_path):
    """--match-cost: every other budgeted row also runs capped at the matched router's mean cost
    (rounded down), on the same episodes, so it spends no more on average; singles are left alone."""
    res_dir = tmp_path / "eval"
    assert cli.main(["eval", "scienceworld", "--routers", "capped:kimi-k2,capped:gpt-oss-120b,fixed:kimi-k2",
                     "--match-cost", "capped:kimi-k2", "--tasks", TASK, "--per-task", "2", "--workers", "1",
                     "--budgets", "0.05", "--out", str(res_dir)]) == 0
    results = json.loads((res_dir / "results.json").read_text())
    (m,) = results["meta"]["cost_matched"]
    matched = results["routers"]["capped:kimi-k2"]["points"]
    assert m["router"] == "capped:kimi-k2" and m["budget"] == 0.05 and [p["budget"] for p in matched] == [0.05]
    assert m["cap_usd"] == math.floor(m["cost_usd"] * 1e6) / 1e6 > 0
    eps = read_episodes(res_dir / "episodes.jsonl")
    assert m["cost_usd"] == pytest.approx(np.mean([e.total_cost for e in eps if "capped:kimi-k2" in e.episode_id]))
    capped = results["routers"]["capped:gpt-oss-120b"]["points"]
    assert sorted(p["budget"] for p in capped) == sorted([0.05, m["cap_usd"]])
    at_cap = [e for e in eps if e.budget == m["cap_usd"]]
    assert len(at_cap) == 2 and all(e.total_cost <= m["cap_usd"] + 1e-12 for e in at_cap)
    assert {e.meta["base_id"] for e in at_cap} == {e.meta["base_id"] for e in eps if e.budget == 0.05}
    assert [p["budget"] for p in results["routers"]["kimi-k2"]["points"]] == [None]


def test_eval_match_cost_runs_a_learned_row_at_the_budget_mix_of_the_matched_cost(tmp_path):
    """A learned row that spends more than the matched router also runs at budgets halving down to
    the cap (and once between the two that bracket the matched cost), on the same episodes; the
    recorded mix of two of them spends the matched cost on average."""
    logs, ckpt = tmp_path / "sw.jsonl", tmp_path / "ck"
    assert cli.main(["collect", "scienceworld", "--tasks", TASK, "--per-task", "2", "--workers", "1",
                     "--out", str(logs)]) == 0
    assert cli.main(["train", "--data", str(logs), "--out", str(ckpt), "--epochs", "1",
                     "--bootstrap-iterations", "0", "--ensemble", "1"]) == 0
    res_dir = tmp_path / "eval"
    assert cli.main(["eval", "scienceworld", "--routers", f"learned={ckpt},capped:gpt-oss-120b",
                     "--match-cost", "capped:gpt-oss-120b", "--tasks", TASK, "--per-task", "2", "--workers", "1",
                     "--budgets", "0.2", "--lam", "0", "--out", str(res_dir)]) == 0
    results = json.loads((res_dir / "results.json").read_text())
    (m,) = results["meta"]["cost_matched"]
    (name,) = [n for n, r in results["routers"].items() if r["kind"] == "learned"]
    points = {p["budget"]: p for p in results["routers"][name]["points"]}
    assert points[0.2]["cost"] > m["cost_usd"]  # a sim-trained router spends more than gpt-oss-120b here
    mix = m["mix"][name]
    ladder = [round(0.2 / 2 ** k, 6) for k in range(1, 12) if 0.2 / 2 ** k > m["cap_usd"]]
    assert set(ladder) | {0.2, m["cap_usd"]} <= set(points)
    assert points[mix["lo"]]["cost"] == pytest.approx(mix["cost_lo"])
    assert mix["cost_lo"] <= m["cost_usd"] < mix["cost_hi"] and mix["lo"] < mix["hi"]
    assert mix["w_lo"] * mix["cost_lo"] + (1 - mix["w_lo"]) * mix["cost_hi"] == pytest.approx(m["cost_usd"])
    eps = read_episodes(res_dir / "episodes.jsonl")
    bases = {b: {e.meta["base_id"] for e in eps if e.budget == b and name.split("[")[0] in e.episode_id}
             for b in points}
    assert all(v == bases[0.2] and len(v) == 2 for v in bases.values())


@pytest.mark.parametrize("argv,msg", [
    (["--routers", "tool-heuristic", "--match-cost", "capped:gpt-5", "--budgets", "0.05"],
     "--match-cost 'capped:gpt-5' is not a budgeted router of --routers (tool-heuristic)"),
    (["--routers", "tool-heuristic", "--match-cost", "tool-heuristic"], "--match-cost needs --budgets"),
])
def test_eval_match_cost_bad_inputs_exit_2(tmp_path, capsys, argv, msg):
    assert cli.main(["eval", "scienceworld", "--tasks", TASK, "--out", str(tmp_path / "e"), *argv]) == 2
    assert msg in capsys.readouterr().err and not (tmp_path / "e" / "episodes.jsonl").exists()


@pytest.mark.parametrize("argv,msg", [
    (["--tasks", "boill"], "did you mean 'boil'"),
    (["--per-task", "0"], "--per-task must be >= 1"),
    (["--router", "fixed:gpt-6"], "unknown model 'gpt-6'"),
])
def test_collect_bad_inputs_exit_2_and_write_nothing(tmp_path, capsys, argv, msg):
    out = tmp_path / "x.jsonl"
    assert cli.main(["collect", "scienceworld", "--out", str(out), *argv]) == 2
    assert msg in capsys.readouterr().err and not out.exists()


def test_missing_java_and_missing_profiles_are_clear(monkeypatch):
    from mtrouter_jax.scienceworld import ScienceWorldUnavailable, require_java
    from mtrouter_jax.scienceworld.scripted import ProfileError, ScriptedBackend

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ScienceWorldUnavailable, match="Java"):
        require_java()
    with pytest.raises(ProfileError, match="claude"):
        ScriptedBackend.from_file(models=["gpt-5", "claude"])


def test_the_budget_holds_with_scripted_agents_under_exploration(engine):
    """The scripted agents honour the completion cap as real endpoints do, so tight budgets hold."""
    from mtrouter_jax.scienceworld.scripted import ScriptedBackend

    router = scienceworld_router(policy="tool-heuristic", explore="sticky:0.5:0.5")
    backend = ScriptedBackend.from_file(seed=3, models=router.pool.names)
    rng = np.random.default_rng(0)
    for k in range(6):
        budget = float(np.exp(rng.uniform(np.log(0.003), np.log(0.05))))
        ep = RoutedEpisode(engine, backend, router, TASK, k % 4, episode_id=f"tight-{k}", budget=budget,
                           explore=True, step_limit=40).run()
        assert ep.live.spent <= budget + 1e-12
    text, usage = backend.complete("gpt-5", ep.session.messages(), ep.session, max_tokens=3)
    assert usage["completion_tokens"] <= 3 and text == ""
