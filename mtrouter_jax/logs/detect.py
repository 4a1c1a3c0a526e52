"""Rule engine shared by the importer and the live adapter.

* :class:`ErrorRuleSet` — ordered regex rules turning an observation text into a
  :class:`~mtrouter_jax.logs.io.TurnError` (first match wins). Severities follow the paper's AEC
  rules (ScienceWorld invalid action = high; HLE tool-format = medium, unknown tool = high,
  Python traceback = high, HTTP error = low).
* :class:`ToolTypeMap` — tool-call name -> tool type ("search", "python", ...), used for the
  tool-specialisation statistics and the tool-type heuristic router.
* :func:`scienceworld_action_type` — ScienceWorld command -> coarse action type.

Rule files are TOML (``[[rule]]`` tables) or JSON (a list of rule objects); see
``docs/formats_logs.md``.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from mtrouter_jax.logs.io import SEVERITIES, TurnError

_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
_RULE_KEYS = ("pattern", "kind", "severity", "flags")


class RuleFileError(ValueError):
    """A rule file/list is invalid; ``problems`` holds ``{file}: rule[i].field: problem``."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"{len(problems)} problem(s) in rules:\n" + "\n".join(problems))


def _rule_problems(pattern: Any, kind: Any, severity: Any, flags: Any) -> list[tuple[str, str]]:
    out = []
    if not isinstance(kind, str) or not kind:
        out.append(("kind", f"expected a non-empty string, got {kind!r}"))
    if severity not in SEVERITIES:
        out.append(("severity", f"unknown severity {severity!r} "
                                f"(expected one of {', '.join(SEVERITIES)})"))
    if not isinstance(flags, str) or any(ch not in _FLAGS for ch in flags):
        out.append(("flags", f"unknown regex flags {flags!r} (allowed letters: imsx)"))
    if not isinstance(pattern, str) or not pattern:
        out.append(("pattern", f"expected a non-empty string, got {pattern!r}"))
    else:
        try:
            re.compile(pattern)
        except re.error as e:
            out.append(("pattern", f"invalid regex {pattern!r}: {e}"))
    return out


@dataclass(frozen=True)
class ErrorRule:
    """``pattern`` (regex, searched anywhere in the text) -> error ``kind`` with ``severity``."""

    pattern: str
    kind: str
    severity: str
    flags: str = "i"
    regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        probs = _rule_problems(self.pattern, self.kind, self.severity, self.flags)
        if probs:
            raise ValueError("; ".join(f"{f}: {p}" for f, p in probs))
        fl = 0
        for ch in self.flags:
            fl |= _FLAGS[ch]
        object.__setattr__(self, "regex", re.compile(self.pattern, fl))

    def to_dict(self) -> dict:
        return {"pattern": self.pattern, "kind": self.kind, "severity": self.severity,
                "flags": self.flags}


class ErrorRuleSet:
    """Ordered list of :class:`ErrorRule`; the first rule whose regex matches wins."""

    def __init__(self, rules: Iterable[ErrorRule]):
        self.rules: tuple[ErrorRule, ...] = tuple(rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __add__(self, other: "ErrorRuleSet") -> "ErrorRuleSet":
        """Concatenate (self's rules take priority); exact duplicates are dropped."""
        seen, out = set(), []
        for r in self.rules + other.rules:
            key = (r.pattern, r.kind, r.severity, r.flags)
            if key not in seen:
                seen.add(key)
                out.append(r)
        return ErrorRuleSet(out)

    def detect(self, text: str | None) -> TurnError | None:
        """Return the error of the first matching rule, or None (also for empty text)."""
        if not text:
            return None
        for r in self.rules:
            if r.regex.search(text):
                return TurnError(r.kind, r.severity)
        return None

    def to_list(self) -> list[dict]:
        """Rules as plain dicts (the JSON rule-file format)."""
        return [r.to_dict() for r in self.rules]

    @classmethod
    def from_list(cls, items: Any, where: str = "<rules>") -> "ErrorRuleSet":
        """Build from a list of ``{pattern, kind, severity[, flags]}`` dicts, validating all."""
        if isinstance(items, dict) and set(items) == {"rule"}:
            items = items["rule"]
        if not isinstance(items, list):
            raise RuleFileError([f"{where}: <root>: expected a list of rules "
                                 f"(TOML: [[rule]] tables), got {type(items).__name__}"])
        problems, rules = [], []
        for i, it in enumerate(items):
            p = f"{where}: rule[{i}]"
            if not isinstance(it, dict):
                problems.append(f"{p}: expected a table/object, got {type(it).__name__}")
                continue
            n0 = len(problems)
            for k in it:
                if k not in _RULE_KEYS:
                    problems.append(f"{p}.{k}: unknown field (allowed: {', '.join(_RULE_KEYS)})")
            for k in ("pattern", "kind", "severity"):
                if k not in it:
                    problems.append(f"{p}.{k}: missing required field")
            if len(problems) == n0:
                args = (it["pattern"], it["kind"], it["severity"], it.get("flags", "i"))
                probs = _rule_problems(*args)
                problems.extend(f"{p}.{f}: {msg}" for f, msg in probs)
                if not probs:
                    rules.append(ErrorRule(*args))
        if problems:
            raise RuleFileError(problems)
        return cls(rules)

    @classmethod
    def from_file(cls, path: str | Path) -> "ErrorRuleSet":
        """Load a TOML (``[[rule]]``) or JSON (list) rule file; errors name file and rule."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            raise RuleFileError([f"{path}: <root>: cannot parse: {e}"]) from None
        return cls.from_list(data, str(path))


def _rs(rows: Iterable[tuple[str, ...]]) -> ErrorRuleSet:
    # rows are (pattern, kind, severity[, flags])
    return ErrorRuleSet(ErrorRule(*row) for row in rows)


# Rule rows are kept as module constants so they are easy to audit; order matters.
SCIENCEWORLD_RULES = (
    # the second form answers a non-number typed at an "Ambiguous request" prompt
    (r"No known action matches that input|Unknown action\.\s+Type 'help'", "invalid_action", "high"),
    # mini-agent style format complaints (no / several action blocks in the reply)
    (r"(provide|include) EXACTLY ONE action|found \d+ actions|no action (found|provided)",
     "action_format", "medium"),
    (r"Ambiguous request", "ambiguous_action", "low"),
    (r"\btimed out\b|\btimeout\b", "timeout", "low"),
)

_TOOL_FORMAT = (
    r"(invalid|malformed|failed to parse|could not parse|unable to parse|error parsing)\s+"
    r"(tool[ _-]?call|function[ _-]?call|json|arguments?|parameters?)"
    r"|missing (required )?(argument|parameter)s?\b|tool[ _-]?call (format|must|should)"
    r"|invalid (format|json) (in|for) (the )?(tool|function|arguments?)")
_UNKNOWN_TOOL = (r"(unknown|unrecognized|unsupported|invalid) (tool|function)(?! ?call)\b"
                 r"|no such tool|tool ['\"]?[\w.-]+['\"]? (is )?(not found|does not exist|not available)")
_HTTP = (r"\bHTTP(/\d(\.\d)?)?( error)?:?\s*[45]\d\d\b|status( code)?\s*[:=]?\s*[45]\d\d\b"
         r"|\b429 Too Many Requests\b|\b[45]\d\d (Client|Server) Error\b|rate limit exceeded")

HLE_RULES = (
    (_UNKNOWN_TOOL, "unknown_tool", "high"),
    (_TOOL_FORMAT, "tool_format", "medium"),
    (r"Traceback \(most recent call last\)", "python_error", "high"),
    (_HTTP, "http_error", "low"),
    (r"\btimed out\b|\btime ?out\b|TimeoutError|deadline exceeded", "timeout", "low"),
    # bare "SomethingError: msg" at line start (tool output of agent-written code); last, as
    # it is the broadest rule.  Anchored to a line start to avoid prose mentioning errors.
    (r"^\s*[\w.]*\w(Error|Exception):", "python_error", "high", "im"),
)


def scienceworld_rules() -> ErrorRuleSet:
    """Default rules for ScienceWorld observations (paper: invalid action = high)."""
    return _rs(SCIENCEWORLD_RULES)


def hle_rules() -> ErrorRuleSet:
    """Default rules for HLE tool-using agents (paper's severities)."""
    return _rs(HLE_RULES)


def default_rules() -> ErrorRuleSet:
    """Union for live agents: invalid actions, tool-call format errors, tracebacks, HTTP, timeouts.

    ScienceWorld's invalid-action rule comes first (it is unambiguous), then the HLE rules, then
    the remaining ScienceWorld rules.
    """
    sw = scienceworld_rules()
    return ErrorRuleSet(sw.rules[:2]) + hle_rules() + ErrorRuleSet(sw.rules[2:])


# ----------------------------------------------------------------------------- tool types

TOOL_TYPES = ("search", "browse", "python", "bash", "file", "answer", "reasoning", "other")

_DEFAULT_TOOLS: dict[str, tuple[str, ...]] = {
    "search": ("search", "web_search", "websearch", "google", "google_search", "bing",
               "bing_search", "tavily", "tavily_search", "serper", "serpapi", "duckduckgo",
               "brave_search", "exa", "wikipedia", "arxiv_search", "retrieve", "lookup"),
    "browse": ("browse", "browser", "fetch", "fetch_url", "open_url", "visit", "visit_page",
               "web_fetch", "scrape", "crawl", "read_url", "get_url", "click", "navigate"),
    "python": ("python", "code_interpreter", "execute_python", "run_python", "run_code",
               "python_exec", "ipython", "jupyter", "execute_code", "code"),
    "bash": ("bash", "shell", "terminal", "run_command", "execute", "execute_command", "exec",
             "sh", "cmd", "command"),
    "file": ("read_file", "write_file", "edit", "edit_file", "str_replace",
             "str_replace_editor", "str_replace_based_edit_tool", "create_file", "open", "cat",
             "ls", "list_dir", "list_files", "view", "file", "find_file", "grep"),
    "answer": ("answer", "final_answer", "submit", "finish", "done", "respond",
               "submit_answer", "complete_task", "final"),
}


def default_tool_map() -> "ToolTypeMap":
    """Common tool-call names -> {search, browse, python, bash, file, answer}; None -> reasoning."""
    return ToolTypeMap({n: t for t, names in _DEFAULT_TOOLS.items() for n in names})


_PLAIN = re.compile(r"^[A-Za-z0-9_\-. ]+$")


def _normalise(name: str) -> str:
    # "WebSearch" -> "web_search" so that camelCase names hit word-boundary patterns
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip()).lower()


class ToolTypeMap:
    """Map tool-call names to tool types.

    ``classify``: None/empty -> "reasoning"; then an exact (case-insensitive) key match; then
    pattern keys, longest first: a plain key (letters, digits, ``_-. ``) matches as a whole
    token run of the camelCase/underscore-normalised name (``"search"`` matches
    ``"google_search_v2"`` but ``"ls"`` does not match ``"details"``); any other key is a
    regex searched case-insensitively. Unmatched names -> ``default``.
    """

    def __init__(self, mapping: Mapping[str, str], default: str = "other"):
        self.mapping = {str(k): str(v) for k, v in mapping.items()}
        self.default = default
        self._exact = {k.lower(): v for k, v in self.mapping.items()}
        pats = []
        for k, v in sorted(self.mapping.items(), key=lambda kv: -len(kv[0])):
            if _PLAIN.match(k):
                rx = re.compile(r"(?<![a-z0-9])" + re.escape(_normalise(k)) + r"(?![a-z0-9])")
            else:
                try:
                    rx = re.compile(k, re.IGNORECASE)
                except re.error as e:
                    raise ValueError(f"tool map key {k!r}: invalid regex: {e}") from None
            pats.append((rx, v))
        self._patterns = pats

    def classify(self, name: str | None) -> str:
        """Tool type for a tool-call name (None/empty -> "reasoning")."""
        if name is None or not name.strip():
            return "reasoning"
        hit = self._exact.get(name.strip().lower())
        if hit is not None:
            return hit
        norm = _normalise(name)
        for rx, t in self._patterns:
            if rx.search(norm):
                return t
        return self.default

    def merged(self, overrides: Mapping[str, str], default: str | None = None) -> "ToolTypeMap":
        """New map where ``overrides`` replace/extend this one's entries."""
        return ToolTypeMap({**self.mapping, **overrides},
                           self.default if default is None else default)

    def to_dict(self) -> dict:
        return {"default": self.default, "tools": dict(self.mapping)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: "ToolTypeMap | None" = None) -> "ToolTypeMap":
        """``{"default": .., "tools": {name: type}}`` or a flat ``{name: type}`` dict,
        layered over ``base`` (e.g. ``default_tool_map()``) when given."""
        if "tools" in d:
            unknown = set(d) - {"tools", "default"}
            if unknown:
                raise ValueError(f"tool map: unknown keys {sorted(unknown)} (allowed: default, tools)")
            tools, default = d["tools"], d.get("default")
        else:
            tools, default = d, None
        bad = [k for k, v in tools.items() if not isinstance(v, str) or not v]
        if bad:
            raise ValueError(f"tool map: tool type must be a non-empty string for {bad}")
        if base is None:
            return cls(tools, default or "other")
        return base.merged(tools, default)

    @classmethod
    def from_file(cls, path: str | Path, base: "ToolTypeMap | None" = None) -> "ToolTypeMap":
        """Load TOML (``default = ".."`` + ``[tools]`` table) or JSON with the same shape."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
            return cls.from_dict(data, base)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError, ValueError, AttributeError) as e:
            raise ValueError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------- ScienceWorld

# ScienceWorld command verb -> coarse action type (documented in docs/formats_logs.md).
# explore: gathering information; navigate: moving between rooms (a third of a typical gold
# path, and a different skill from manipulating objects); act: changing the world; focus: the
# scoring-critical "focus on" (a wrong focus ends the task at -100); answer: ending the episode.
SCIENCEWORLD_ACTION_TYPES: tuple[tuple[str, str], ...] = (
    (r"focus on\b", "focus"),
    (r"(look (around|at|in)|look$|inventory|read|task|examine|check)\b", "explore"),
    (r"(submit|finish|exit|quit|complete_task|done)\b|echo\s+complete", "answer"),
    (r"(go to|walk to|teleport to|(open|close) door to)\b", "navigate"),
    (r"(open|close|pick up|put down|take|drop|move|pour|mix|activate|"
     r"deactivate|use|connect|disconnect|eat|flush|dunk|wait1?|wait|plant|water|heat|cool|"
     r"turn on|turn off|press|reset task)\b", "act"),
)
_SW_RX = tuple((re.compile(r"^\s*" + p, re.IGNORECASE), t) for p, t in SCIENCEWORLD_ACTION_TYPES)


def scienceworld_action_type(command: str | None) -> str:
    """Coarse type of a ScienceWorld command: explore | navigate | act | focus | answer | other.

    None/empty (no command issued) -> "reasoning".
    """
    if command is None or not command.strip():
        return "reasoning"
    first = command.strip().splitlines()[0]
    for rx, t in _SW_RX:
        if rx.match(first):
            return t
    return "other"


__all__ = ["ErrorRule", "ErrorRuleSet", "RuleFileError", "scienceworld_rules", "hle_rules",
           "default_rules", "SCIENCEWORLD_RULES", "HLE_RULES", "ToolTypeMap", "default_tool_map",
           "TOOL_TYPES", "scienceworld_action_type", "SCIENCEWORLD_ACTION_TYPES"]


def message_text(content) -> str:
    """Chat message content as text: a str, or a list of {"type": "text", "text": ...} parts
    (what rules and tool classifiers read, for imported logs and live requests alike)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return str(content)
