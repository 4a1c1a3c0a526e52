"""Tests for the error-rule engine and tool-type classification (mtrouter_jax.logs.detect)."""

from __future__ import annotations

import json

import pytest

from mtrouter_jax.logs.detect import (ErrorRule, ErrorRuleSet, RuleFileError, ToolTypeMap,
                                 default_rules, default_tool_map, hle_rules,
                                 scienceworld_action_type, scienceworld_rules)
from mtrouter_jax.logs.io import TurnError


@pytest.mark.parametrize("text,kind,sev", [
    ("No known action matches that input.", "invalid_action", "high"),
    ("Unknown action.  Type 'help' for a list of actions, and 'objects' for a list of possible "
     "object referents. ", "invalid_action", "high"),
    ("Ambiguous request: Please enter the number for the action you intended", "ambiguous_action", "low"),
    ("Please always provide EXACTLY ONE action in triple backticks, found 2 actions.",
     "action_format", "medium"),
])
def test_scienceworld_rules(text, kind, sev):
    assert scienceworld_rules().detect(text) == TurnError(kind, sev)


@pytest.mark.parametrize("text,kind,sev", [
    ("Error: Unknown tool 'foo_bar'", "unknown_tool", "high"),
    ("Tool 'wolfram' not found", "unknown_tool", "high"),
    ("Invalid tool call: expected JSON object", "tool_format", "medium"),
    ("Failed to parse tool call arguments", "tool_format", "medium"),
    ("Missing required argument: query", "tool_format", "medium"),
    ('Traceback (most recent call last):\n  File "<x>", line 1\nZeroDivisionError: division by zero',
     "python_error", "high"),
    ("out = 3\nNameError: name 'x' is not defined", "python_error", "high"),
    ("HTTP 503 Service Unavailable", "http_error", "low"),
    ("request failed with status code 502", "http_error", "low"),
    ("429 Too Many Requests", "http_error", "low"),
    ("404 Client Error: Not Found for url", "http_error", "low"),
    ("The search request timed out after 30s", "timeout", "low"),
])
def test_hle_rules(text, kind, sev):
    assert hle_rules().detect(text) == TurnError(kind, sev)
    assert default_rules().detect(text) == TurnError(kind, sev)


@pytest.mark.parametrize("text", [None, "", "The door to the kitchen is open.",
                                  "<tool_response name=\"search\">Paris is the capital</tool_response>",
                                  "In Python a ValueError is raised when ...; see the HTTP spec"])
def test_no_error(text):
    assert default_rules().detect(text) is None


def test_first_match_wins_and_union():
    rs = ErrorRuleSet([ErrorRule("boom", "a", "low"), ErrorRule("boo", "b", "high")])
    assert rs.detect("BOOM") == TurnError("a", "low")  # default flags "i"
    assert ErrorRule("boom", "x", "low", flags="").regex.search("BOOM") is None
    assert len(rs + rs) == 2
    assert default_rules().detect("No known action matches that input") == \
        TurnError("invalid_action", "high")


def test_rule_constructor_validates():
    with pytest.raises(ValueError, match="severity"):
        ErrorRule("x", "k", "critical")
    with pytest.raises(ValueError, match="invalid regex"):
        ErrorRule("(", "k", "low")


def test_rules_toml_and_json_roundtrip(tmp_path):
    toml = tmp_path / "r.toml"
    toml.write_text('[[rule]]\npattern = "quota exceeded"\nkind = "quota"\nseverity = "medium"\n'
                    '[[rule]]\npattern = "^FATAL"\nkind = "fatal"\nseverity = "high"\nflags = "m"\n')
    rs = ErrorRuleSet.from_file(toml)
    assert rs.detect("ok\nFATAL thing") == TurnError("fatal", "high")
    assert rs.detect("Quota Exceeded") == TurnError("quota", "medium")
    js = tmp_path / "r.json"
    js.write_text(json.dumps(default_rules().to_list()))
    assert ErrorRuleSet.from_file(js).to_list() == default_rules().to_list()


def test_rule_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\npattern = "("\nkind = "k"\nseverity = "high"\n'
                   '[[rule]]\npattern = "x"\nkind = "k"\nseverity = "fatal"\n'
                   '[[rule]]\npattern = "x"\nseverity = "low"\nsevrity = "low"\n'
                   '[[rule]]\npattern = "x"\nkind = "k"\nseverity = "low"\nflags = "q"\n')
    with pytest.raises(RuleFileError) as ei:
        ErrorRuleSet.from_file(bad)
    probs = ei.value.problems
    assert f"{bad}: rule[0].pattern: invalid regex '(': missing ), unterminated subpattern at position 0" in probs
    assert any(p.startswith(f"{bad}: rule[1].severity: unknown severity 'fatal'") for p in probs)
    assert f"{bad}: rule[2].kind: missing required field" in probs
    assert any(p.startswith(f"{bad}: rule[2].sevrity: unknown field") for p in probs)
    assert any(p.startswith(f"{bad}: rule[3].flags:") for p in probs)


def test_rule_file_unparsable_and_wrong_shape(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("[[rule]\n")
    with pytest.raises(RuleFileError, match=r"x.toml: <root>: cannot parse"):
        ErrorRuleSet.from_file(p)
    j = tmp_path / "x.json"
    j.write_text('{"pattern": "x"}')
    with pytest.raises(RuleFileError, match="expected a list of rules"):
        ErrorRuleSet.from_file(j)
    j.write_text('[1]')
    with pytest.raises(RuleFileError, match=r"rule\[0\]: expected a table"):
        ErrorRuleSet.from_file(j)


@pytest.mark.parametrize("name,typ", [
    (None, "reasoning"), ("", "reasoning"), ("web_search", "search"), ("WebSearch", "search"),
    ("tavily_search_results", "search"), ("Google", "search"), ("fetch_url", "browse"),
    ("open_browser_tab", "browse"), ("code_interpreter", "python"), ("run_python_code", "python"),
    ("bash", "bash"), ("run_shell_command", "bash"), ("str_replace_based_edit_tool", "file"),
    ("read_file", "file"), ("final_answer", "answer"), ("Submit", "answer"),
    ("details", "other"), ("frobnicate", "other"),
])
def test_default_tool_map(name, typ):
    assert default_tool_map().classify(name) == typ


def test_tool_map_overrides_and_regex(tmp_path):
    m = default_tool_map().merged({"search": "lookup", r"^wolfram.*": "python"})
    assert m.classify("web_search") == "search"  # exact key still wins
    assert m.classify("SEARCH") == "lookup"
    assert m.classify("wolfram_alpha") == "python"
    f = tmp_path / "tools.toml"
    f.write_text('default = "misc"\n[tools]\nmy_tool = "search"\n')
    m2 = ToolTypeMap.from_file(f, base=default_tool_map())
    assert (m2.classify("my_tool"), m2.classify("bash"), m2.classify("zzz")) == ("search", "bash", "misc")
    m3 = ToolTypeMap.from_dict({"x": "python"})
    assert (m3.classify("x"), m3.classify("bash")) == ("python", "other")
    f.write_text('[tools]\nx = 3\n')
    with pytest.raises(ValueError, match="tools.toml"):
        ToolTypeMap.from_file(f)


@pytest.mark.parametrize("cmd,typ", [
    ("look around", "explore"), ("look at thermometer", "explore"), ("inventory", "explore"),
    ("read recipe", "explore"), ("focus on red wire", "focus"), ("go to kitchen", "navigate"),
    ("teleport to kitchen", "navigate"), ("Open Door To hallway", "navigate"),
    ("close door to kitchen", "navigate"), ("open cupboard", "act"), ("open door", "act"),
    ("pick up apple", "act"), ("move apple to table", "act"),
    ("wait1", "act"), ("xyzzy", "other"), ("", "reasoning"), (None, "reasoning"),
])
def test_scienceworld_action_type(cmd, typ):
    assert scienceworld_action_type(cmd) == typ
