"""The proxy's request surface: OpenAI-shaped errors and validation of bodies and headers (no I/O).

Everything a client sends is checked here before it reaches a conversation, the router or an
upstream: a request the proxy cannot make sense of is a 4xx in OpenAI's error shape
``{"error": {message, type, param, code}}``, never a 500. Fields the proxy does not interpret
travel to the upstream unchanged (the upstream judges them).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from fastapi.responses import JSONResponse

from mtrouter_jax.core.jsonfast import NOT_FAST, deeper_than, loads_fast

ROUTED = "mtrouter"
EXPLORE = "explore"
_ROUTED_MODEL = re.compile(r"^mtrouter(?:-(explore|greedy))?(?:-(.+))?$")
MAX_ID_CHARS = 256  # conversation ids and task types end up in logs and metrics-free lookups
MAX_META_BYTES = 65_536  # a finish call's free-form ``meta`` is logged verbatim
MAX_TOKENS_LIMIT = 2**31 - 1
# Scores and score-range ends beyond this are refused: training on 1e300 diverges (non-finite loss).
MAX_SCORE_ABS = 1e12
# Deeper JSON is refused: every layer that re-encodes the body (the id hash, the input-token bound,
# the upstream client) recurses per level, and Python's recursion limit would turn a deep body into
# a 500. Real requests (messages, nested tool schemas) stay far below.
MAX_JSON_DEPTH = 100
# Completion-limit fields: the proxy sends exactly one of them upstream (the min of the client's values
# and its own cap), since an upstream may honour any one of them and ignore the others.
COMPLETION_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# Fields that multiply a turn's completions (and its cost) beyond the per-choice cap: refused unless 1.
MULTIPLIER_FIELDS = ("n", "best_of")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ApiError(Exception):
    """An error answered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def json_containers(raw: bytes | bytearray | str) -> int:
    """How many ``{``/``[`` ``raw`` holds, counted at C speed on the text (strings included: an upper
    bound on its JSON objects and arrays, hence on how deep they can nest)."""
    return raw.count("{") + raw.count("[") if isinstance(raw, str) else raw.count(b"{") + raw.count(b"[")


def _finite_float(text: str) -> float:
    f = float(text)
    if math.isinf(f):  # 1e400: it would reach the upstream as "Infinity", which is not JSON
        raise ValueError(f"number {text[:40]} is out of range")
    return f


def parse_json(raw: bytes, what: str = "request body", containers: int | None = None) -> Any:
    """Decode a JSON body; 400 for invalid UTF-8, syntax errors, NaN/Infinity and absurd nesting.
    ``containers``: ``json_containers(raw)`` when the caller has counted them already."""
    if containers is None:
        containers = json_containers(raw)
    # orjson where it provably decodes as below (core/jsonfast.py): it refuses NaN, 1e400 and lone
    # surrogates outright, and leaves objects deeper than our limit to the path below
    obj = loads_fast(raw, MAX_JSON_DEPTH, containers)
    if obj is not NOT_FAST:
        return obj
    try:
        obj = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:  # the decoder recurses per nesting level: 10k ``[`` exhaust it
        raise ApiError(400, f"{what} nests JSON deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ApiError(400, f"{what} is not valid JSON: {e}") from None
    # (with no more brackets than levels allowed, the nesting cannot exceed them: no walk)
    if isinstance(obj, (dict, list)) and containers > MAX_JSON_DEPTH and deeper_than(obj, MAX_JSON_DEPTH):
        raise ApiError(400, f"{what} nests JSON deeper than {MAX_JSON_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(raw):  # "\ud800" alone decodes to a str UTF-8 cannot encode
        _check_no_lone_surrogates(obj, what)
    return obj


def _check_no_lone_surrogates(obj: Any, what: str) -> None:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{what} contains a lone UTF-16 surrogate escape (e.g. \"\\ud800\" without its pair): "
                            "not a Unicode character, it cannot be sent on as UTF-8") from None


def parse_budget(text: str, where: str) -> float:
    """USD budget from text; raises ApiError(400) unless a finite number > 0."""
    try:
        b = float(text)
    except (TypeError, ValueError):
        raise ApiError(400, f"{where}: cannot parse budget {text!r} (expected USD, e.g. 0.50)",
                       code="invalid_budget") from None
    if not math.isfinite(b) or b <= 0:
        raise ApiError(400, f"{where}: budget must be a finite number > 0 USD, got {text!r}",
                       code="invalid_budget")
    return b


@dataclass
class ChatRequest:
    """A validated ``/v1/chat/completions`` request (``body`` is forwarded as is, caps aside)."""

    body: dict
    messages: list
    passthrough: str | None  # a pool model asked for by name (not routed)
    budget: float | None
    explore: bool
    lam: float | None
    stream: bool
    include_usage: bool
    cid: str
    derived: bool  # id derived from the first messages (no header)
    task: str | None
    seed: int | None


def _header_text(headers: Mapping[str, str], name: str, limit: int = MAX_ID_CHARS) -> str | None:
    """A text header as the client meant it: HTTP carries bytes, which the server hands over decoded
    as latin-1; they are read again as UTF-8 (so ``é`` sent as UTF-8 is stored as ``é``, and found
    under its percent-encoded UTF-8 in a URL). Not UTF-8, or control characters: 400."""
    v = headers.get(name)
    if v is None:
        return None
    try:
        v = v.encode("latin-1").decode("utf-8").strip()
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise ApiError(400, f"{name}: not valid UTF-8") from None
    if not v or len(v) > limit:
        raise ApiError(400, f"{name}: expected 1 to {limit} characters, got {len(v)}")
    if _CONTROL.search(v):
        raise ApiError(400, f"{name}: control characters are not allowed")
    return v


def header_value(text: str) -> str:
    """``text`` for a response header: its UTF-8 bytes (what the client sent), as latin-1 code points."""
    return text.encode("utf-8").decode("latin-1")


def _max_tokens(body: dict, field: str) -> None:
    v = body.get(field)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_TOKENS_LIMIT:
        raise ApiError(400, f"{field}: expected an integer >= 1, got {_short(v)}", param=field)


def _short(v: Any, n: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= n else r[:n] + "..."


def check_messages(body: dict) -> list:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "messages: expected a non-empty array of message objects", param="messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}]: expected an object with a string 'role'", param=f"messages[{i}]")
    return msgs


def resolve_model(body: dict, headers: Mapping[str, str], pool_names, can_explore: bool
                  ) -> tuple[str | None, float | None, bool]:
    """(pool model for a pass-through, or None when routed; budget in USD or None; explore)."""
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "model: expected a string such as 'mtrouter' or 'mtrouter-0.50'", param="model")
    budget = None
    hb = headers.get("x-mtrouter-budget")
    if hb is not None:
        budget = parse_budget(hb, "X-MTRouter-Budget header")
    if name in pool_names:
        return name, budget, False
    m = _ROUTED_MODEL.match(name)
    if m is None:
        raise ApiError(404, f"The model {_short(name)} does not exist: use 'mtrouter', 'mtrouter-<USD budget>', "
                            f"'mtrouter-explore[-<USD budget>]' or one of the pool's models "
                            f"({', '.join(pool_names)})", code="model_not_found", param="model")
    mode, btext = m.group(1), m.group(2)
    if btext is not None:
        b = parse_budget(btext, f"model {_short(name)}")
        budget = b if budget is None else budget
    explore = mode == EXPLORE
    he = headers.get("x-mtrouter-explore")
    if he is not None and mode is None:
        if he.strip().lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ApiError(400, f"X-MTRouter-Explore: expected true or false, got {_short(he)}")
        explore = he.strip().lower() in ("1", "true", "yes")
    if explore and not can_explore:
        raise ApiError(400, f"model {_short(name)}: this server routes without exploration; start it with "
                            "--explore (eps:E, beta:B or sticky:RHO[:E])", code="explore_not_configured",
                       param="model")
    return None, budget, explore


def parse_chat_request(body: Any, headers: Mapping[str, str], pool_names, can_explore: bool,
                       conversation_key) -> ChatRequest:
    """Validate a chat request (body already JSON-decoded; header names lower-case)."""
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    msgs = check_messages(body)
    passthrough, budget, explore = resolve_model(body, headers, pool_names, can_explore)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, f"stream: expected true or false, got {_short(stream)}", param="stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(400, "stream_options: expected an object", param="stream_options")
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        raise ApiError(400, "tools: expected an array of tool definitions", param="tools")
    for field in COMPLETION_LIMIT_FIELDS:
        _max_tokens(body, field)
    for field in MULTIPLIER_FIELDS:
        v = body.get(field)
        if v is not None and not (type(v) is int and v == 1):
            raise ApiError(400, f"{field}: only 1 is supported, got {_short(v)} (the proxy's completion cap and "
                                "budget are per choice; send one request per completion)", param=field,
                           code="unsupported_parameter")
    lam = headers.get("x-mtrouter-lambda")
    if lam is not None:
        lam = parse_lambda(lam)
    seed = headers.get("x-mtrouter-seed")
    if seed is not None:
        try:
            seed = int(seed)
        except ValueError:
            seed = -1
        if not 0 <= seed < 2**31:
            raise ApiError(400, f"X-MTRouter-Seed: expected an integer in [0, 2^31), got "
                                f"{_short(headers['x-mtrouter-seed'])}")
    cid = _header_text(headers, "x-mtrouter-conversation")
    derived = cid is None
    return ChatRequest(body, msgs, passthrough, budget, explore, lam, bool(stream),
                       bool((opts or {}).get("include_usage")), cid or conversation_key(msgs), derived,
                       _header_text(headers, "x-mtrouter-task"), seed)


def parse_lambda(text: str) -> float:
    """λ from the X-MTRouter-Lambda header; 400 unless finite and >= 0 *in float32* (the policy's
    dtype: 1e39 is a finite float64 but inf in float32)."""
    try:
        lam = float(text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lam32 = np.float32(lam)
    except (ValueError, OverflowError):
        lam, lam32 = math.nan, np.float32(np.nan)
    if not math.isfinite(lam) or not np.isfinite(lam32) or lam < 0:
        raise ApiError(400, "X-MTRouter-Lambda: expected a finite number >= 0 (float32: at most "
                            f"{float(np.finfo(np.float32).max):.6g}), got {_short(text)}", code="invalid_lambda")
    return lam


def _finite(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ApiError(400, f"{what}: expected a number, got {_short(v)}", param=what.split("[")[0])
    try:
        f = float(v)
    except OverflowError:  # a 400-digit integer
        f = math.inf
    if not math.isfinite(f):
        raise ApiError(400, f"{what}: expected a finite number, got {_short(v)}", param=what.split("[")[0])
    return f


def parse_finish(body: Any, configured: tuple[float, float] | None = None
                 ) -> tuple[float | None, tuple[float, float] | None, dict | None]:
    """(score, score_range, meta) of a finish call, fully checked *before* the conversation is closed
    (a bad body must not cost the client its episode). A score needs a range: the body's
    ``score_range``, else the server's ``configured`` one (``--score-range``); a body's range must
    lie within the configured one. Numbers beyond ±``MAX_SCORE_ABS`` are refused."""
    if body is None:
        return None, None, None
    if not isinstance(body, dict) or set(body) - {"score", "score_range", "meta"}:
        raise ApiError(400, "expected {\"score\": number, \"score_range\": [lo, hi], \"meta\": {...}} (all optional)")
    score = None if body.get("score") is None else _finite(body["score"], "score")
    srange = body.get("score_range")
    if srange is not None:
        if not isinstance(srange, list) or len(srange) != 2:
            raise ApiError(400, f"score_range: expected [lo, hi], got {_short(srange)}", param="score_range")
        srange = (_finite(srange[0], "score_range[0]"), _finite(srange[1], "score_range[1]"))
        if not srange[0] < srange[1]:
            raise ApiError(400, f"score_range: expected lo < hi, got {list(srange)}", param="score_range")
        if configured is not None and not configured[0] <= srange[0] < srange[1] <= configured[1]:
            raise ApiError(400, f"score_range {list(srange)} is outside the server's --score-range "
                                f"{list(configured)}", param="score_range")
    elif score is not None:
        if configured is None:
            raise ApiError(400, "score without score_range: send \"score_range\": [lo, hi] (the range the score "
                                "is on; it scales the score for training), or start the server with --score-range "
                                "LO:HI", param="score_range", code="score_range_required")
        srange = configured
    for what, v in (("score", score), ("score_range", srange and max(abs(srange[0]), abs(srange[1])))):
        if v is not None and abs(v) > MAX_SCORE_ABS:
            raise ApiError(400, f"{what}: at most {MAX_SCORE_ABS:g} in magnitude, got {_short(v)}", param=what)
    if score is not None and not srange[0] <= score <= srange[1]:
        raise ApiError(400, f"score {score} outside score_range {list(srange)}", param="score")
    meta = body.get("meta")
    if meta is not None:
        if not isinstance(meta, dict):
            raise ApiError(400, "meta: expected an object", param="meta")
        try:
            size = len(json.dumps(meta, allow_nan=False))
        except (ValueError, RecursionError):
            raise ApiError(400, "meta: must be plain JSON (no NaN/Infinity, not absurdly nested)",
                           param="meta") from None
        if size > MAX_META_BYTES:
            raise ApiError(400, f"meta: {size} bytes, at most {MAX_META_BYTES}", param="meta")
    return score, srange, meta


__all__ = ["ApiError", "ChatRequest", "parse_json", "parse_budget", "parse_chat_request", "parse_finish",
           "check_messages", "resolve_model", "parse_lambda", "ROUTED", "EXPLORE", "COMPLETION_LIMIT_FIELDS",
           "MULTIPLIER_FIELDS", "MAX_SCORE_ABS", "header_value"]
