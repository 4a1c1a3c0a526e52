"""Budget accounting of live calls: the input-token upper bound, usage parsing, the exhausted signal.

One home for the arithmetic the proxy and the ScienceWorld runner both rely on, so the budget
guarantee is the same wherever a turn is served.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from mtrouter_jax.core.jsonfast import dumps_compact

MSG_OVERHEAD = 8  # chat-template tokens per message, generous
MAX_USAGE_TOKENS = 2**31 - 1  # a reported count above this is no token count (invalid, not "over the cap")
USAGE_FLAGS = ("missing", "invalid", "over_cap")  # why a turn's usage was not taken as reported (or was, flagged)


class BudgetExhausted(RuntimeError):
    """No model's worst-case cost for the next turn fits the remaining budget; the episode ended."""


def json_bytes(obj: Any, finite: bool = False) -> int:
    """UTF-8 bytes of ``obj`` as compact JSON (a BPE token is at least one byte); ``finite``: the
    caller knows it holds no NaN/Infinity (``jsonfast.dumps_compact``)."""
    return len(dumps_compact(obj, finite=finite))  # (json.dumps's bytes, at orjson's speed where they agree)


def input_tokens_bound(messages: Sequence[Any], tools: Any = None, finite: bool = False) -> int:
    """An upper bound on the prompt tokens of ``messages`` (+ ``tools`` when given): their UTF-8 bytes
    plus ``MSG_OVERHEAD`` per message, since no tokenizer emits more tokens than bytes. ``finite``:
    they hold no NaN/Infinity (a request decoded by ``parse_json``), which saves a check."""
    n = len(messages)
    # one encoding of the list instead of one per message: compact JSON of a list is "[" + the
    # items joined by "," + "]", so the items' bytes are the list's less n + 1
    total = (json_bytes(messages if type(messages) is list else list(messages), finite) - n - 1 if n else 0) \
        + MSG_OVERHEAD * n
    return total + (json_bytes(tools, finite) if tools is not None else 0)


def _usage_get(usage: Any, key: str, default=0):
    if usage is None:
        return default
    # (a dict, the usual case, first: the Mapping check is an ABC lookup)
    v = usage.get(key, default) if type(usage) is dict or isinstance(usage, Mapping) else getattr(usage, key, default)
    return default if v is None else v


def parse_usage(usage: Any) -> tuple[int, int, int]:
    """(prompt, cached, completion) tokens of an OpenAI ``usage`` (dict or object)."""
    prompt = int(_usage_get(usage, "prompt_tokens"))
    completion = int(_usage_get(usage, "completion_tokens"))
    details = _usage_get(usage, "prompt_tokens_details", None)
    cached = int(_usage_get(details, "cached_tokens")) if details is not None else 0
    return prompt, min(max(cached, 0), prompt), completion


def _count(v: Any) -> int | None:
    """A reported token count as an int, or None when it is not one (bool, str, negative, NaN, inf, absurd)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        v = math.ceil(v)
    return v if 0 <= v <= MAX_USAGE_TOKENS else None


def checked_usage(usage: Any, prompt_hi: float, completion_hi: float) -> tuple[dict, str | None]:
    """(usage to bill, flag) of a reply's ``usage``, never trusted blindly.

    ``prompt_hi`` is the input-token bound of the request as sent, ``completion_hi`` the completion
    limit sent with it (the proxy's cap). A missing usage, or a missing count, is billed at the worst
    case (``prompt_hi`` / ``completion_hi``), flag ``"missing"``; a usage that is not an object, or
    with a count that is not a non-negative finite number, entirely at the worst case, flag
    ``"invalid"`` (an unreadable cached count alone is billed as no cache hit). Counts above the bounds are billed as reported, flag
    ``"over_cap"`` (the upstream ignored the cap: the spend past the budget is its, and shows).
    """
    worst = {"prompt_tokens": int(math.ceil(prompt_hi)), "completion_tokens": int(math.ceil(completion_hi))}
    if usage is None:
        return worst, "missing"
    if not isinstance(usage, Mapping):
        return worst, "invalid"
    flags = set()
    out = {}
    for key in ("prompt_tokens", "completion_tokens"):
        v = usage.get(key)
        n = None if v is None else _count(v)
        if n is None:
            flags.add("missing" if v is None else "invalid")
            n = worst[key]
        out[key] = n
    cached = 0
    details = usage.get("prompt_tokens_details")
    if details is not None:
        c = details.get("cached_tokens") if isinstance(details, Mapping) else details
        if c is not None:
            cached = _count(c)
            if cached is None:
                flags.add("invalid")
                cached = 0
    if "invalid" in flags and any(_count(usage.get(k)) is None for k in ("prompt_tokens", "completion_tokens")):
        out = dict(worst)  # an unreadable count: the rest of that usage is not trusted either
    out["prompt_tokens_details"] = {"cached_tokens": min(cached, out["prompt_tokens"])}
    if out["prompt_tokens"] > prompt_hi or out["completion_tokens"] > completion_hi:
        flags.add("over_cap")
    flag = next((f for f in ("over_cap", "invalid", "missing") if f in flags), None)  # the overspend shows first
    return out, flag


__all__ = ["BudgetExhausted", "MSG_OVERHEAD", "MAX_USAGE_TOKENS", "USAGE_FLAGS", "checked_usage",
           "input_tokens_bound", "json_bytes", "parse_usage"]
