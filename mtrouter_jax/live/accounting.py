"""Budget accounting of live calls: the input-token upper bound, usage parsing, the exhausted signal.

One home for the arithmetic the proxy and the ScienceWorld runner both rely on, so the budget
guarantee is the same wherever a turn is served.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

MSG_OVERHEAD = 8  # chat-template tokens per message, generous


class BudgetExhausted(RuntimeError):
    """No model's worst-case cost for the next turn fits the remaining budget; the episode ended."""


def json_bytes(obj: Any) -> int:
    """UTF-8 bytes of ``obj`` as compact JSON (a BPE token is at least one byte)."""
    return len(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def input_tokens_bound(messages: Sequence[Any], tools: Any = None) -> int:
    """An upper bound on the prompt tokens of ``messages`` (+ ``tools`` when given): their UTF-8 bytes
    plus ``MSG_OVERHEAD`` per message, since no tokenizer emits more tokens than bytes."""
    total = sum(json_bytes(m) + MSG_OVERHEAD for m in messages)
    return total + (json_bytes(tools) if tools is not None else 0)


def _usage_get(usage: Any, key: str, default=0):
    if usage is None:
        return default
    v = usage.get(key, default) if isinstance(usage, Mapping) else getattr(usage, key, default)
    return default if v is None else v


def parse_usage(usage: Any) -> tuple[int, int, int]:
    """(prompt, cached, completion) tokens of an OpenAI ``usage`` (dict or object)."""
    prompt = int(_usage_get(usage, "prompt_tokens"))
    completion = int(_usage_get(usage, "completion_tokens"))
    details = _usage_get(usage, "prompt_tokens_details", None)
    cached = int(_usage_get(details, "cached_tokens")) if details is not None else 0
    return prompt, min(max(cached, 0), prompt), completion


__all__ = ["BudgetExhausted", "MSG_OVERHEAD", "input_tokens_bound", "json_bytes", "parse_usage"]
