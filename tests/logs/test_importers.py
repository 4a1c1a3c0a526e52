"""Tests for the official-collector importer (mtrouter_jax.logs.importers)."""

from __future__ import annotations

import json

import pytest

from mtrouter_jax.logs.detect import ErrorRule, ErrorRuleSet
from mtrouter_jax.logs.importers import import_official_trajectories
from mtrouter_jax.logs.io import TurnError, read_episodes, write_episodes


def asst(content, model=None, usage=None, **extra):
    m = {"role": "assistant", "content": content}
    if model:
        m["model_name"] = model
    if usage is not None:
        m.setdefault("extra", {})["response"] = {"usage": usage}
    m.update(extra)
    return m


def user(content):
    return {"role": "user", "content": content}


def write_traj(path, info, messages, fmt="mini-agentic-router-1"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"trajectory_format": fmt, "info": info, "messages": messages}))
    return path


U = {"prompt_tokens": 1000, "completion_tokens": 50, "cost": 0.002,
     "prompt_tokens_details": {"cached_tokens": 800}}


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "runs"
    write_traj(d / "sw" / "sw-task1-v0.traj.json",
               {"exit_status": "Submitted", "task_name": "boil", "variation_idx": 0, "final_score": 35},
               [{"role": "system", "content": "You are an agent."}, user("Task: boil water"),
                asst("I will look.\n```\nlook around\n```", "gpt-5", U, propensity=1 / 6),
                user("This room is called the kitchen."),
                asst([{"type": "text", "text": "```\nfly away\n```"}],
                     router_info={"selected_model": "gpt-oss-120b", "propensity": 0.25},
                     extra={"response": {"usage": {"prompt_tokens": 1200, "completion_tokens": 10}}}),
                user([{"type": "text", "text": "No known action matches that input."}]),
                asst("```\nfocus on water\n```", extra={"response": {
                    "model": "deepseek-v3.2", "usage": {"prompt_tokens": 1300, "completion_tokens": 7,
                                                        "cost": 0.0001}}})])
    write_traj(d / "hle" / "hle-q17.traj.json",
               {"exit_status": "ForcedAnswer", "benchmark": "hle",
                "benchmark_data": {"category": "Math", "judge_result": {"correct": True}}},
               [user("Question: what is 2+2?"),
                asst('<tool_call>{"name": "web_search", "arguments": {"q": "2+2"}}</tool_call>',
                     "kimi-k2-0905", U),
                user('<tool_response name="web_search">HTTP 503 Service Unavailable</tool_response>'),
                asst('<tool_call>{"name": "python", "arguments": {"code": "1/0"}}</tool_call>',
                     "gpt-5", U),
                user('<tool_response name="python">Traceback (most recent call last):\n'
                     'ZeroDivisionError: division by zero</tool_response>'),
                asst("<tool_call>{bad json, \"name\": \"final_answer\"</tool_call>", "gpt-5", U),
                user("Unknown tool 'final_answerr'"),
                asst("The answer is 4.", "gpt-5", U)])
    write_traj(d / "crash.traj.json", {"exit_status": "TimeoutError", "final_score": 0},
               [user("t"), asst("look", "gpt-5", U)])
    (d / "broken.traj.json").write_text('{"trajectory_format": "mini-agentic-router-1", "info": ')
    write_traj(d / "old.traj.json", {"exit_status": "Submitted"}, [], fmt="mini-swe-agent-1")
    write_traj(d / "empty.traj.json", {"exit_status": "Submitted", "final_score": 1}, [user("t")])
    (d / "notes.json").write_text("{}")  # not *.traj.json: ignored
    return d


def test_counts_and_report(corpus):
    eps, rep = import_official_trajectories(corpus)
    assert rep.n_files == 6 and rep.n_imported == 2
    assert rep.dropped == {"exit_status=TimeoutError": 1, "invalid_json": 1, "bad_format": 1,
                           "no_steps": 1}
    assert rep.examples["invalid_json"] == [str(corpus / "broken.traj.json")]
    assert rep.notes["turns with no usage.cost (cost set to 0)"] == 1
    s = rep.summary()
    assert "imported 2 of 6" in s and "exit_status=TimeoutError" in s and "usage.cost" in s


def test_scienceworld_episode(corpus):
    eps, _ = import_official_trajectories(corpus)
    sw = next(e for e in eps if e.episode_id == "sw-task1-v0")
    assert (sw.score, sw.score_range, sw.task_type, sw.source) == (35.0, (-100.0, 100.0), "boil", "import")
    assert sw.models == ("deepseek-v3.2", "gpt-5", "gpt-oss-120b", "kimi-k2-0905")  # pool seen
    assert [t.model for t in sw.turns] == ["gpt-5", "gpt-oss-120b", "deepseek-v3.2"]
    assert [t.tool for t in sw.turns] == ["explore", "other", "focus"]
    assert [t.propensity for t in sw.turns] == [pytest.approx(1 / 6), 0.25, None]
    t0, t1, t2 = sw.turns
    assert (t0.input_tokens, t0.cached_tokens, t0.output_tokens, t0.cost) == (1000, 800, 50, 0.002)
    assert (t1.cached_tokens, t1.cost) == (0, 0.0)
    assert t1.error == TurnError("invalid_action", "high") and t0.error is None
    assert t1.observation == "No known action matches that input." and t2.observation is None
    assert sw.meta["exit_status"] == "Submitted" and sw.meta["file"].endswith("sw-task1-v0.traj.json")


def test_hle_episode(corpus):
    eps, _ = import_official_trajectories(corpus)
    h = next(e for e in eps if e.episode_id == "hle-q17")
    assert (h.score, h.score_range, h.task_type) == (1.0, (0.0, 1.0), "Math")
    assert [t.tool for t in h.turns] == ["search", "python", "answer", "reasoning"]
    assert [t.error for t in h.turns] == [TurnError("http_error", "low"),
                                          TurnError("python_error", "high"),
                                          TurnError("unknown_tool", "high"), None]
    assert h.meta["exit_status"] == "ForcedAnswer"


def test_hle_incorrect_and_missing_judge(tmp_path):
    info = {"exit_status": "Submitted", "benchmark": "hle", "benchmark_data": {"judge_result": {"correct": False}}}
    write_traj(tmp_path / "a.traj.json", info, [user("q"), asst("x", "m", U)])
    write_traj(tmp_path / "b.traj.json", {"exit_status": "Submitted", "benchmark": "hle"},
               [user("q"), asst("x", "m", U)])
    eps, rep = import_official_trajectories(tmp_path)
    assert [(e.score, e.task_type) for e in eps] == [(0.0, "hle")] and rep.dropped == {"no_score": 1}


def test_custom_rules_models_and_jsonl_roundtrip(corpus, tmp_path):
    rules = ErrorRuleSet([ErrorRule("kitchen", "saw_kitchen", "low")])
    eps, rep = import_official_trajectories(
        [corpus / "sw"], rules=rules,
        models=["gpt-5", "gpt-oss-120b", "deepseek-v3.2", "x"])
    assert eps[0].turns[0].error == TurnError("saw_kitchen", "low") and eps[0].turns[1].error is None
    assert eps[0].models == ("gpt-5", "gpt-oss-120b", "deepseek-v3.2", "x")
    out = tmp_path / "imported.jsonl"
    write_episodes(out, eps)
    assert read_episodes(out) == eps
    _, rep2 = import_official_trajectories(corpus / "sw", models=["gpt-5"])
    assert rep2.dropped == {"model_not_in_pool": 1} and rep2.n_imported == 0


def test_duplicate_stems_get_unique_ids(tmp_path):
    for sub in ("r1", "r2"):
        write_traj(tmp_path / sub / "t.traj.json", {"exit_status": "Submitted", "final_score": 1},
                   [user("t"), asst("look", "m", U)])
    eps, rep = import_official_trajectories(tmp_path)
    assert [e.episode_id for e in eps] == ["t", "r2/t"]


def test_missing_model_and_missing_path(tmp_path):
    write_traj(tmp_path / "a.traj.json", {"exit_status": "Submitted", "final_score": 1},
               [user("t"), asst("look")])
    _, rep = import_official_trajectories(tmp_path / "a.traj.json")
    assert rep.dropped == {"missing_model": 1}
    with pytest.raises(FileNotFoundError, match="nowhere"):
        import_official_trajectories(tmp_path / "nowhere")
