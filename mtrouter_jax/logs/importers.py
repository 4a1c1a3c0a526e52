"""Import episodes recorded by the official MTRouter collector (``*.traj.json``).

Layout (one file per episode): ``{"trajectory_format": "mini-agentic-router-1", "info": {...},
"messages": [...]}``. Each assistant message is one turn; the following user/tool message is its
observation. Bad files never abort the import: they are counted per reason in
:class:`ImportReport`. See ``docs/formats_logs.md`` for the exact field mapping.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mtrouter_jax.logs.detect import (message_text, ErrorRuleSet, ToolTypeMap, default_tool_map, hle_rules,
                     scienceworld_action_type, scienceworld_rules)
from mtrouter_jax.logs.io import Episode, LogFormatError, Turn, expand_paths, parse_episode

TRAJECTORY_FORMAT = "mini-agentic-router-1"
KEPT_EXIT_STATUSES = ("Submitted", "LimitsExceeded", "ForcedAnswer")
SUFFIX = ".traj.json"
_MAX_EXAMPLES = 3


@dataclass
class ImportReport:
    """What happened to each input file. ``dropped``/``notes`` map reason -> count."""

    n_files: int = 0
    n_imported: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)  # non-fatal oddities, e.g. missing cost

    def drop(self, reason: str, path: Path) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < _MAX_EXAMPLES:
            ex.append(str(path))

    def note(self, what: str, n: int = 1) -> None:
        if n:
            self.notes[what] = self.notes.get(what, 0) + n

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        lines = [f"imported {self.n_imported} of {self.n_files} trajectory file(s); "
                 f"dropped {self.n_dropped}"]
        for reason, n in sorted(self.dropped.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  dropped {n:5d}  {reason}  (e.g. {', '.join(self.examples[reason])})")
        for what, n in sorted(self.notes.items()):
            lines.append(f"  note    {n:5d}  {what}")
        return "\n".join(lines)


class _Drop(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int) and v >= 0:
        return v
    if isinstance(v, float) and math.isfinite(v) and v >= 0 and v.is_integer():
        return int(v)
    return None


_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(</tool_call>|$)", re.DOTALL)
_NAME_FIELD = re.compile(r'"name"\s*:\s*"([^"]+)"')
_TOOL_RESPONSE = re.compile(r"""<tool_response\s+name\s*=\s*["']([^"']+)["']""")
_FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
_ACTION_LINE = re.compile(r"^\s*(?:action|command)\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)


def hle_tool_name(action: str, observation: str | None, msg: dict | None = None) -> str | None:
    """Name of the tool the assistant called: first ``<tool_call>`` JSON ``name``, else an
    OpenAI-style ``tool_calls`` entry, else ``<tool_response name=..>`` in the observation."""
    m = _TOOL_CALL.search(action or "")
    if m:
        try:
            obj = json.loads(m.group(1))
            if isinstance(obj, dict) and isinstance(obj.get("name"), str):
                return obj["name"]
        except json.JSONDecodeError:
            pass
        n = _NAME_FIELD.search(m.group(1))  # malformed JSON: still recover the name
        if n:
            return n.group(1)
    calls = (msg or {}).get("tool_calls")
    if isinstance(calls, list) and calls:
        name = _get(calls[0], "function", "name")
        if isinstance(name, str):
            return name
    m = _TOOL_RESPONSE.search(observation or "")
    return m.group(1) if m else None


def scienceworld_command(action: str) -> str:
    """The command a ScienceWorld assistant message issued: last fenced block, else an
    ``Action:`` line, else the last non-empty line."""
    blocks = _FENCE.findall(action or "")
    if blocks and blocks[-1].strip():
        return blocks[-1].strip().splitlines()[0].strip()
    lines = _ACTION_LINE.findall(action or "")
    if lines:
        return lines[-1].strip()
    rest = [ln.strip() for ln in (action or "").splitlines() if ln.strip()]
    return rest[-1] if rest else ""


def _turns(messages: list, is_hle: bool, rules: ErrorRuleSet, tool_map: ToolTypeMap,
           report: ImportReport) -> list[Turn]:
    turns = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") != "assistant":
            continue
        model = (msg.get("model_name") or _get(msg, "router_info", "selected_model")
                 or _get(msg, "extra", "response", "model"))
        if not isinstance(model, str) or not model:
            raise _Drop("missing_model")
        usage = _get(msg, "extra", "response", "usage")
        if not isinstance(usage, dict):
            usage = {}
            report.note("turns with no usage")
        inp = _int(usage.get("prompt_tokens"))
        out = _int(usage.get("completion_tokens"))
        if inp is None or out is None:
            report.note("turns with missing/invalid token counts (set to 0)")
        inp, out = inp or 0, out or 0
        cached = _int(_get(usage, "prompt_tokens_details", "cached_tokens")) or 0
        if cached > inp:
            report.note("turns with cached_tokens > prompt_tokens (clipped)")
            cached = inp
        cost = usage.get("cost")
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) \
                or not math.isfinite(cost) or cost < 0:
            # The official code also reads usage.cost and uses 0 when absent.
            report.note("turns with no usage.cost (cost set to 0)")
            cost = 0.0
        prop = msg.get("propensity", _get(msg, "router_info", "propensity"))
        if prop is not None and (isinstance(prop, bool) or not isinstance(prop, (int, float))
                                 or not 0.0 < prop <= 1.0):
            report.note("turns with invalid propensity (set to null)")
            prop = None
        # observation = the next non-assistant message(s) before the next assistant turn
        obs_parts = []
        for nxt in messages[i + 1:]:
            if not isinstance(nxt, dict) or nxt.get("role") == "assistant":
                break
            if nxt.get("role") in ("user", "tool"):
                obs_parts.append(message_text(nxt.get("content")))
        obs = "\n".join(obs_parts) if obs_parts else None
        action = message_text(msg.get("content"))
        if is_hle:
            tool = tool_map.classify(hle_tool_name(action, obs, msg))
        else:
            tool = scienceworld_action_type(scienceworld_command(action))
        turns.append(Turn(model=model, input_tokens=inp, cached_tokens=cached,
                          output_tokens=out, cost=float(cost), tool=tool,
                          error=rules.detect(obs),
                          propensity=None if prop is None else float(prop),
                          observation=obs, action=action))
    return turns


def _load(path: Path, rules: ErrorRuleSet | None, tool_map: ToolTypeMap,
          report: ImportReport) -> tuple[dict, list[Turn]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _Drop("invalid_json") from None
    except OSError:
        raise _Drop("unreadable") from None
    if not isinstance(data, dict) or data.get("trajectory_format") != TRAJECTORY_FORMAT \
            or not isinstance(data.get("info"), dict) or not isinstance(data.get("messages"), list):
        raise _Drop("bad_format")
    info = data["info"]
    status = info.get("exit_status")
    if status not in KEPT_EXIT_STATUSES:  # crashed runs are not labels (the official code keeps them)
        raise _Drop(f"exit_status={status}")
    is_hle = info.get("benchmark") == "hle"
    if is_hle:
        correct = _get(info, "benchmark_data", "judge_result", "correct")
        if not isinstance(correct, bool):
            raise _Drop("no_score")
        cat = _get(info, "benchmark_data", "category")
        fields = dict(score=1.0 if correct else 0.0, score_range=(0.0, 1.0),
                      task_type=cat if isinstance(cat, str) and cat else "hle")
    else:
        s = info.get("final_score")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise _Drop("no_score")
        name = info.get("task_name")
        fields = dict(score=float(s), score_range=(-100.0, 100.0),
                      task_type=name if isinstance(name, str) and name else "scienceworld")
    if rules is None:
        rules = hle_rules() if is_hle else scienceworld_rules()
    turns = _turns(data["messages"], is_hle, rules, tool_map, report)
    if not turns:
        raise _Drop("no_steps")
    meta = {"exit_status": status, "file": str(path), "benchmark": "hle" if is_hle else "scienceworld"}
    if "variation_idx" in info:
        meta["variation_idx"] = info["variation_idx"]
    fields["meta"] = meta
    return fields, turns


def import_official_trajectories(paths: str | os.PathLike | Sequence,
                                 rules: ErrorRuleSet | None = None,
                                 tool_map: ToolTypeMap | None = None,
                                 models: list[str] | None = None,
                                 ) -> tuple[list[Episode], ImportReport]:
    """Convert official ``*.traj.json`` files (files, dirs searched recursively, or a list).

    Keeps exit statuses Submitted/LimitsExceeded/ForcedAnswer; everything else is dropped and
    counted in the report. ``rules`` defaults per benchmark (HLE / ScienceWorld), ``tool_map`` to
    :func:`default_tool_map`. ``models`` fixes the pool (turns using another model drop their
    episode); otherwise the pool is the sorted set of models seen. Every returned episode has
    been validated against the JSONL schema.
    """
    tool_map = tool_map or default_tool_map()
    files = expand_paths(paths, SUFFIX, recursive=True, empty_dir_ok=True, missing="trajectory path not found")
    report = ImportReport(n_files=len(files))
    pool = set(models) if models is not None else None
    raw: list[tuple[Path, str, dict, list[Turn]]] = []
    ids: Counter = Counter()
    used: set[str] = set()
    for path in files:
        try:
            fields, turns = _load(path, rules, tool_map, report)
            if pool is not None and any(t.model not in pool for t in turns):
                raise _Drop("model_not_in_pool")
        except _Drop as d:
            report.drop(d.reason, path)
            continue
        stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.stem
        eid = stem if ids[stem] == 0 else f"{path.parent.name}/{stem}"
        ids[stem] += 1
        if eid in used:  # still clashing: fall back to a counter
            eid = f"{stem}~{ids[stem]}"
        used.add(eid)
        if eid != stem:
            report.note("episode ids disambiguated (same file stem)")
        raw.append((path, eid, fields, turns))
    pool_list = list(models) if models is not None else sorted({t.model for r in raw for t in r[3]})
    episodes = []
    for path, eid, fields, turns in raw:
        ep = Episode(episode_id=eid, budget=None, models=tuple(pool_list), turns=tuple(turns),
                     source="import", **fields)
        try:  # final safety net: never hand out an episode the JSONL reader would reject
            parse_episode(ep.to_dict(), str(path), 0)
        except LogFormatError:
            report.drop("invalid_episode", path)
            continue
        episodes.append(ep)
    report.n_imported = len(episodes)
    return episodes, report


__all__ = ["import_official_trajectories", "ImportReport", "TRAJECTORY_FORMAT",
           "KEPT_EXIT_STATUSES", "hle_tool_name", "scienceworld_command"]
