"""OpenAI-compatible routing proxy (FastAPI): ``POST /v1/chat/completions`` with ``model="mtrouter"``.

Conversations are identified by the ``X-MTRouter-Conversation`` header, else by a hash of the
first system and first user message. The per-episode budget comes from ``model="mtrouter-0.50"``
or the ``X-MTRouter-Budget`` header (USD), fixed when the conversation starts. With ``--explore``,
``model="mtrouter-explore[-0.50]"`` (or ``X-MTRouter-Explore: true``) routes the conversation with
the exploration policy; every turn logs the exact propensity of its model. Tool results that
arrive with a request become the previous turn's observation (error detection). A pool model name
as ``model`` is passed through unrouted but still accounted. See docs/live.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from mtrouter_jax.detect import message_text
from mtrouter_jax.live.backends import Backends, UpstreamError, call_with_fallback
from mtrouter_jax.live.options import add_serve_args  # noqa: F401  (re-exported: mtrouter serve)
from mtrouter_jax.live.router import BudgetExhausted, LiveEpisode, Router

log = logging.getLogger("mtrouter_jax.live")

ROUTED = "mtrouter"
EXPLORE = "explore"
_ROUTED_MODEL = re.compile(r"^mtrouter(?:-(explore|greedy))?(?:-(.+))?$")
_MSG_OVERHEAD = 8  # chat-template tokens per message, generous


class ApiError(Exception):
    """An error answered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def response(self, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type,
                                       "param": self.param, "code": self.code}},
                            status_code=self.status, headers=headers)


def _nbytes(obj: Any) -> int:
    return len(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


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


def conversation_key(messages: list) -> str:
    """Stable id from the first system and first user message (used without the header)."""
    first = {}
    for m in messages:
        r = m.get("role")
        if r in ("system", "developer", "user") and (r == "user" or "system" not in first):
            first.setdefault("user" if r == "user" else "system", m.get("content"))
        if "user" in first:
            break
    return "h-" + hashlib.sha256(json.dumps(first, sort_keys=True, ensure_ascii=False)
                                 .encode("utf-8")).hexdigest()[:20]


@dataclass
class _Conv:
    episode: LiveEpisode
    derived: bool  # id derived from a message hash (not the header)
    n_seen: int = 0  # messages of the last request + the assistant reply
    last_used: float = 0.0


class ConversationStore:
    """Open conversations (LRU-bounded; evicted ones are finished unscored) + recent finished."""

    def __init__(self, router: Router, max_open: int = 10_000, keep_finished: int = 1000):
        self.router, self.max_open, self.keep_finished = router, max_open, keep_finished
        self.open: OrderedDict[str, _Conv] = OrderedDict()
        self.done: OrderedDict[str, dict] = OrderedDict()
        self.uses: dict[str, int] = {}
        self.lock = threading.Lock()

    def get(self, cid: str) -> _Conv | None:
        with self.lock:
            return self.open.get(cid)

    def get_or_start(self, cid: str, derived: bool, budget: float | None, task: str | None,
                     lam: float | None, explore: bool = False, seed: int | None = None) -> _Conv:
        evicted = []
        with self.lock:
            conv = self.open.get(cid)
            if conv is None:
                n = self.uses.get(cid, 0) + 1
                self.uses[cid] = n
                eid = cid if n == 1 else f"{cid}-{n}"
                conv = _Conv(self.router.start_episode(eid, task, budget, lam, explore=explore, seed=seed),
                             derived)
                self.open[cid] = conv
                while len(self.open) > self.max_open:
                    evicted.append(self.open.popitem(last=False))
            self.open.move_to_end(cid)
            conv.last_used = time.time()
        for old_id, old in evicted:
            self._close(old_id, old, None, None, {"closed": "evicted"})
        return conv

    def finish(self, cid: str, score=None, score_range=None, meta=None) -> dict:
        with self.lock:
            conv = self.open.pop(cid, None)
        if conv is None:
            raise ApiError(404, f"no open conversation {cid!r}", code="conversation_not_found")
        return self._close(cid, conv, score, score_range, meta)

    def _close(self, cid, conv: _Conv, score, score_range, meta) -> dict:
        with conv.episode.lock:
            ep = conv.episode.finish(score, score_range, meta)
            info = {**conv.episode.info(), "logged": ep is not None and self.router.log_path is not None}
        with self.lock:
            self.done[cid] = info
            while len(self.done) > self.keep_finished:
                self.done.popitem(last=False)
        return info

    def restart(self, cid: str, conv: _Conv) -> None:
        """The client started the same task over: finish the old episode (unscored)."""
        with self.lock:
            if self.open.get(cid) is conv:
                del self.open[cid]
        self._close(cid, conv, None, None, {"closed": "restarted"})

    def close_all(self) -> None:
        with self.lock:
            items = list(self.open.items())
            self.open.clear()
        for cid, conv in items:
            self._close(cid, conv, None, None, {"closed": "shutdown"})


class Proxy:
    """The request handling behind the FastAPI app (synchronous, runs in worker threads)."""

    def __init__(self, router: Router, backends: Backends, log_text: bool = False,
                 max_open: int = 10_000):
        self.router, self.backends, self.log_text = router, backends, log_text
        self.store = ConversationStore(router, max_open)

    # --------------------------------------------------------------- request parsing
    def resolve_model(self, body: dict, headers) -> tuple[str | None, float | None, bool]:
        """(pool model for a pass-through, or None when routed; budget in USD or None; explore)."""
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "model: expected a string such as 'mtrouter' or 'mtrouter-0.50'",
                           param="model")
        budget = None
        hb = headers.get("x-mtrouter-budget")
        if hb is not None:
            budget = parse_budget(hb, "X-MTRouter-Budget header")
        if name in self.router.pool.names:
            return name, budget, False
        m = _ROUTED_MODEL.match(name)
        if m is None:
            raise ApiError(404, f"The model {name!r} does not exist: use 'mtrouter', 'mtrouter-<USD budget>', "
                                f"'mtrouter-explore[-<USD budget>]' or one of the pool's models "
                                f"({', '.join(self.router.pool.names)})", code="model_not_found", param="model")
        mode, btext = m.group(1), m.group(2)
        if btext is not None:
            b = parse_budget(btext, f"model {name!r}")
            budget = b if budget is None else budget
        explore = mode == EXPLORE
        he = headers.get("x-mtrouter-explore")
        if he is not None and mode is None:
            if he.strip().lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ApiError(400, f"X-MTRouter-Explore: expected true or false, got {he!r}")
            explore = he.strip().lower() in ("1", "true", "yes")
        if explore and self.router.explore_policy is None:
            raise ApiError(400, f"model {name!r}: this server routes without exploration; start it with "
                                "--explore (eps:E, beta:B or sticky:RHO[:E])", code="explore_not_configured",
                           param="model")
        return None, budget, explore

    @staticmethod
    def check_messages(body: dict) -> list:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ApiError(400, "messages: expected a non-empty array of message objects", param="messages")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise ApiError(400, f"messages[{i}]: expected an object with a string 'role'",
                               param=f"messages[{i}]")
        return msgs

    # --------------------------------------------------------------- the main handler
    def chat(self, body: dict, headers, t_start: float):
        """Returns a JSONResponse, or a (StreamingResponse factory) for ``stream=true``."""
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        msgs = self.check_messages(body)
        passthrough, budget, explore = self.resolve_model(body, headers)
        lam = headers.get("x-mtrouter-lambda")
        if lam is not None:
            try:
                lam = float(lam)
                assert math.isfinite(lam) and lam >= 0
            except (ValueError, AssertionError):
                raise ApiError(400, f"X-MTRouter-Lambda: expected a number >= 0, got {lam!r}") from None
        stream = bool(body.get("stream", False))
        cid = headers.get("x-mtrouter-conversation")
        derived = not cid
        cid = cid or conversation_key(msgs)
        task = headers.get("x-mtrouter-task")
        seed = headers.get("x-mtrouter-seed")
        if seed is not None:
            try:
                seed = int(seed)
                assert 0 <= seed < 2**31
            except (ValueError, AssertionError):
                raise ApiError(400, f"X-MTRouter-Seed: expected an integer in [0, 2^31), got {seed!r}") from None
        conv = self.store.get_or_start(cid, derived, budget, task, lam, explore, seed)
        ep = conv.episode
        if not ep.lock.acquire(timeout=600):
            raise ApiError(409, f"conversation {cid!r} is busy with another request", code="busy")
        release = True
        try:
            if ep.finished:  # finished by a concurrent request while we waited
                raise ApiError(409, f"conversation {cid!r} was just finished; retry", code="finished")
            if derived and conv.n_seen and len(msgs) < conv.n_seen - 1:
                ep.lock.release()
                release = False
                self.store.restart(cid, conv)
                return self.chat(body, headers, t_start)
            new = msgs[conv.n_seen:] if conv.n_seen and len(msgs) >= conv.n_seen - 1 else None
            if new:
                obs = [m for m in new if m.get("role") == "tool"] or [m for m in new if m.get("role") == "user"]
                if obs:
                    ep.attach_observation("\n".join(message_text(m.get("content")) for m in obs))
            total_hi = sum(_nbytes(m) + _MSG_OVERHEAD for m in msgs) + _nbytes(body.get("tools") or [])
            if new is not None and ep.turns:
                new_b = sum(_nbytes(m) + _MSG_OVERHEAD for m in new)
                hi = min(total_hi, ep.last_prompt + ep.last_completion + new_b)
                est = ep.last_prompt + ep.last_completion + new_b / 4
            else:
                hi, est = total_hi, total_hi / 4
            decisions: dict = {}
            if passthrough is not None:
                i = self.router.pool.index(passthrough)
                worst = ep.worst_costs(hi)
                if ep.budget is not None and ep.spent + worst[i] > ep.budget + 1e-12:
                    raise ApiError(402, f"budget exhausted: conversation {cid!r} spent ${ep.spent:.6f} of "
                                        f"${ep.budget:.6f}; a {passthrough} turn could cost up to ${worst[i]:.6f}",
                                   "insufficient_quota", "budget_exhausted")
                cap = ep.completion_cap(passthrough, hi)
                if cap == 0:
                    raise ApiError(402, f"budget exhausted: conversation {cid!r} has ${ep.remaining:.6f} left, "
                                        f"less than {passthrough}'s uncached input", "insufficient_quota",
                                   "budget_exhausted")
                ranking, caps = [passthrough], {passthrough: cap}
                ep.last_decision = None
            else:
                try:
                    d = ep.decide(input_tokens_hi=hi, context_tokens=est, lam=lam)
                except BudgetExhausted as e:
                    raise ApiError(402, str(e), "insufficient_quota", "budget_exhausted") from None
                decisions[d.model] = d
                ranking, caps = [d.model], dict(d.max_output_tokens)

            def on_fail(model, err):
                if passthrough is not None:
                    return []
                try:
                    d2 = ep.decide(input_tokens_hi=hi, context_tokens=est, lam=lam,
                                   exclude=list(dict.fromkeys([f["model"] for f in fallbacks_so_far] + [model])))
                except BudgetExhausted:
                    return []
                caps.update(d2.max_output_tokens)
                decisions[d2.model] = d2
                return [d2.model]  # a fresh draw among the models still allowed: its own propensity

            fallbacks_so_far: list[dict] = []

            def body_for(model):
                b = dict(body)
                cap = caps.get(model)
                if cap is not None:
                    field = "max_completion_tokens" if ("max_completion_tokens" in body or (
                        "max_tokens" not in body and "api.openai.com" in self.backends.base_urls.get(model, ""))) \
                        else "max_tokens"
                    b[field] = min(cap, int(body.get(field) or cap))
                return b

            def call(model):
                try:
                    if stream:
                        return self.backends.open_stream(model, body_for(model))
                    return self.backends.chat(model, body_for(model))
                except UpstreamError as e:
                    if e.retryable:
                        fallbacks_so_far.append({"model": model, "error": e.kind})
                    raise

            try:
                att = call_with_fallback(ranking, call, on_fail)
            except UpstreamError as e:
                if not e.retryable:
                    raise ApiError(e.status or 502, f"upstream {e.model} rejected the request: "
                                   + _upstream_message(e), "upstream_error", e.kind) from None
                raise ApiError(502, f"all upstream models failed: {fallbacks_so_far}", "upstream_error",
                               "upstream_unavailable") from None
            meta = {"fallbacks": att.fallbacks} if att.fallbacks else {}
            if passthrough is not None:
                meta["passthrough"] = True
            ep.last_decision = decisions.get(att.model)
            prop = None if ep.last_decision is None else ep.last_decision.propensity
            hdr = {"X-MTRouter-Model": att.model, "X-MTRouter-Conversation": cid,
                   "X-MTRouter-Fallbacks": ",".join(f"{f['model']}:{f['error']}" for f in att.fallbacks)}
            if stream:
                release = False
                return self._stream(att, conv, msgs, hi, prop, meta, hdr, body, t_start)
            resp = att.result
            usage = resp.get("usage") or {}
            name, action = _tool_and_action(resp)
            ep.record(att.model, usage, tool_name=name, action=action,
                      propensity=prop, meta=meta)
            conv.n_seen = len(msgs) + 1
            resp["model"] = att.model
            hdr.update(self._money_headers(ep))
            hdr["X-MTRouter-Turn-Cost"] = f"{ep.turns[-1].cost:.8f}"
            hdr["X-MTRouter-Overhead-Ms"] = f"{(time.perf_counter() - t_start - att.upstream_seconds) * 1e3:.3f}"
            return JSONResponse(resp, headers=hdr)
        finally:
            if release:
                ep.lock.release()

    @staticmethod
    def _money_headers(ep: LiveEpisode) -> dict:
        return {"X-MTRouter-Spent": f"{ep.spent:.8f}",
                "X-MTRouter-Remaining": "none" if ep.remaining is None else f"{ep.remaining:.8f}"}

    def _stream(self, att, conv: _Conv, msgs, hi, prop, meta, hdr, body, t_start):
        """SSE pass-through; the turn is recorded (and the lock released) when the stream ends."""
        ep, sc = conv.episode, att.result
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        state = {"usage": None, "tool": None, "text": [], "nbytes": 0}
        hdr.update(self._money_headers(ep))
        hdr["X-MTRouter-Overhead-Ms"] = f"{(time.perf_counter() - t_start - att.upstream_seconds) * 1e3:.3f}"
        events = sc.events()

        def pull():
            try:
                return next(events)
            except StopIteration:
                return None

        async def gen():
            try:
                while True:
                    try:
                        ch = await anyio.to_thread.run_sync(pull)
                    except Exception as e:  # noqa: BLE001 - upstream died mid-stream
                        log.warning("stream from %s broke: %s", att.model, type(e).__name__)
                        meta["stream_error"] = type(e).__name__
                        break
                    if ch is None:
                        break
                    ch["model"] = att.model
                    if ch.get("usage"):
                        state["usage"] = ch["usage"]
                    for c in ch.get("choices") or []:
                        delta = c.get("delta") or {}
                        if delta.get("content"):
                            state["text"].append(delta["content"])
                        for tc in delta.get("tool_calls") or []:
                            fn = tc.get("function") or {}
                            if fn.get("name") and state["tool"] is None:
                                state["tool"] = fn["name"]
                            state["text"].append(fn.get("arguments") or "")
                    if not want_usage and ch.get("usage") is not None:
                        if not ch.get("choices"):
                            continue
                        ch = {k: v for k, v in ch.items() if k != "usage"}
                    yield f"data: {json.dumps(ch, ensure_ascii=False, separators=(',', ':'))}\n\n"
                acct = self._finish_stream(ep, conv, msgs, att, hi, prop, meta, state)
                yield f": mtrouter {json.dumps(acct)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                if ep.lock.locked() and not state.get("recorded"):
                    self._finish_stream(ep, conv, msgs, att, hi, prop, meta, state)
                sc.close()

        return StreamingResponse(gen(), media_type="text/event-stream", headers=hdr)

    def _finish_stream(self, ep, conv, msgs, att, hi, prop, meta, state) -> dict:
        if state.get("recorded"):
            return {}
        state["recorded"] = True
        try:
            usage = state["usage"]
            if usage is None:  # no usage chunk: bill conservatively (bytes bound tokens)
                text = "".join(state["text"])
                usage = {"prompt_tokens": int(hi), "completion_tokens": len(text.encode("utf-8"))}
                meta["usage_estimated"] = True
            action = "".join(state["text"])
            tool = state["tool"] or text_tool(action)
            ep.record(att.model, usage, tool_name=tool, action=action, propensity=prop, meta=meta)
            conv.n_seen = len(msgs) + 1
            return {"model": att.model, "spent": ep.spent, "remaining": ep.remaining,
                    "turn_cost": ep.turns[-1].cost, "fallbacks": att.fallbacks}
        finally:
            ep.lock.release()


_FENCE_LANG = re.compile(r"```([A-Za-z_][\w-]*)[ \t]*\n")
# text-mode agents (mini-swe-agent, the official MTRouter harness) put the command in a fenced block
_FENCE_TOOLS = {"bash": "bash", "sh": "bash", "shell": "bash", "console": "bash", "mswea_bash_command": "bash",
                "python": "python", "py": "python", "ipython": "python"}


def text_tool(content: str | None) -> str | None:
    """The tool a text-mode reply invokes through its first fenced block's language (```bash -> bash)."""
    m = _FENCE_LANG.search(content or "")
    return _FENCE_TOOLS.get(m.group(1).lower()) if m else None


def _tool_and_action(resp: dict) -> tuple[str | None, str | None]:
    """(first tool-call name — else the language of a fenced command block —, action text: content
    or tool-call arguments) of a completion."""
    try:
        msg = resp["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return None, None
    calls = msg.get("tool_calls") or []
    name = None if calls else text_tool(msg.get("content") if isinstance(msg.get("content"), str) else None)
    parts = [msg.get("content") or ""]
    for c in calls:
        fn = c.get("function") or {}
        name = name or fn.get("name")
        parts.append(f"{fn.get('name')}({fn.get('arguments')})")
    return name, "\n".join(p for p in parts if p) or None


def _upstream_message(e: UpstreamError) -> str:
    if isinstance(e.body, dict) and isinstance(e.body.get("error"), dict):
        return str(e.body["error"].get("message", e.message))
    return e.message


def create_app(router: Router, backends: Backends | None = None, *, token: str | None = None,
               log_text: bool = False, allow_missing_keys: bool = False, timeout: float = 120.0,
               max_retries: int = 2, max_threads: int = 256, max_open: int = 10_000) -> FastAPI:
    """The proxy app. ``backends`` default: clients for every pool model (keys from env)."""
    if backends is None:
        backends = Backends(router.pool, timeout=timeout, max_retries=max_retries,
                            allow_missing_keys=allow_missing_keys)
    proxy = Proxy(router, backends, log_text, max_open)
    limiter = anyio.CapacityLimiter(max_threads)
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await anyio.to_thread.run_sync(proxy.store.close_all)  # log open conversations (unscored)

    app = FastAPI(title="mtrouter-jax proxy", lifespan=lifespan)
    app.state.proxy = proxy

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if token is not None and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization", "") != f"Bearer {token}":
                return ApiError(401, "missing or invalid bearer token (Authorization: Bearer ...)",
                                "authentication_error", "invalid_api_key").response()
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return e.response()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        t0 = time.perf_counter()
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"request body is not valid JSON: {e}") from None
        headers = {k.lower(): v for k, v in request.headers.items()}
        return await anyio.to_thread.run_sync(proxy.chat, body, headers, t0, limiter=limiter)

    @app.get("/v1/models")
    async def models():
        ids = [ROUTED, f"{ROUTED}-0.50", f"{ROUTED}-greedy"]
        if router.explore_policy is not None:
            ids += [f"{ROUTED}-{EXPLORE}", f"{ROUTED}-{EXPLORE}-0.50"]
        ids += list(router.pool.names)
        return {"object": "list", "data": [{"id": i, "object": "model", "created": 0,
                                            "owned_by": "mtrouter" if i.startswith(ROUTED) else "pool"}
                                           for i in ids]}

    @app.get("/v1/mtrouter/conversations")
    async def conversations():
        """Open conversations (most recently used last): id, turns, spend — to find a derived id."""
        with proxy.store.lock:
            items = list(proxy.store.open.items())
        return {"object": "list", "data": [{"id": cid, "derived": c.derived, "turns": len(c.episode.turns),
                                            "spent": c.episode.spent, "last_used": c.last_used}
                                           for cid, c in items]}

    @app.get("/v1/mtrouter/conversations/{cid}")
    async def conversation(cid: str):
        conv = proxy.store.get(cid)
        if conv is not None:
            return conv.episode.info()
        if cid in proxy.store.done:
            return proxy.store.done[cid]
        raise ApiError(404, f"no conversation {cid!r}", code="conversation_not_found")

    @app.post("/v1/mtrouter/conversations/{cid}/finish")
    async def finish(cid: str, request: Request):
        raw = await request.body()
        try:
            req = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as e:
            raise ApiError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(req, dict) or set(req) - {"score", "score_range", "meta"}:
            raise ApiError(400, "expected {\"score\": number, \"score_range\": [lo, hi]} (both optional)")
        score, srange = req.get("score"), req.get("score_range")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise ApiError(400, f"score: expected a number, got {score!r}", param="score")
        if srange is not None and (not isinstance(srange, list) or len(srange) != 2
                                   or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                              for x in srange)):
            raise ApiError(400, f"score_range: expected [lo, hi], got {srange!r}", param="score_range")
        try:
            return await anyio.to_thread.run_sync(proxy.store.finish, cid, score, srange,
                                                  req.get("meta"), limiter=limiter)
        except ValueError as e:
            raise ApiError(400, str(e)) from None

    @app.get("/v1/mtrouter/router")
    async def router_info():
        """The served policy, exploration, vocabularies and the effective tool-name mapping."""
        return router.describe()

    @app.get("/health")
    async def health():
        return {"status": "ok", "open_conversations": len(proxy.store.open)}

    return app


def build_router(checkpoint=None, pool=None, router=None, explore=None, tool_map=None, lam=None, seed=0,
                 log_path=None, log_text=False, strict_cache=False, lam_table=None) -> Router:
    """The ``Router`` that ``mtrouter serve`` options describe (raises ``RouterSpecError`` naming the
    flag on bad input)."""
    from mtrouter_jax.routers import RouterSpecError, ToolModelMap

    if router is None:
        router = "learned" if checkpoint else "tool-heuristic"
    if router.strip() == "learned" and not checkpoint:
        raise RouterSpecError("--router learned needs --checkpoint CKPT (a trained estimator); without one use "
                              "--router tool-heuristic, fixed:MODEL, error-escalation, cheapest, uniform or sticky:RHO",
                              "--checkpoint")
    if lam is not None and (not math.isfinite(lam) or lam < 0):
        raise RouterSpecError(f"--lam must be a finite number >= 0, got {lam}", "--lam")
    kw = dict(policy=router, explore=explore, seed=seed, log_path=log_path, log_text=log_text,
              assume_cache_hits=not strict_cache,
              tool_models=ToolModelMap.from_file(tool_map) if tool_map else None)
    if lam is not None:
        kw["lam"] = lam
    if checkpoint:
        kw["lam_table"] = lam_table
        return Router.from_checkpoint(checkpoint, pool=pool, **kw)
    return Router(None, pool, **kw)


def serve(checkpoint=None, pool=None, host="127.0.0.1", port=8000, lam=None, log_path=None, log_text=False,
          token=None, allow_missing_keys=False, timeout=120.0, max_retries=2, strict_cache=False,
          router=None, explore=None, tool_map=None, seed=0, lam_table=None) -> None:
    """Build the router and run the proxy with uvicorn (blocks)."""
    import uvicorn
    r = build_router(checkpoint, pool, router, explore, tool_map, lam, seed, log_path, log_text, strict_cache,
                     lam_table)
    info = r.describe()
    if checkpoint:
        log.info("λ: %s", info["lam"])
    log.info("routing with %s%s over %s", info["policy"], f" (explore: {info['explore']})" if info["explore"] else "",
             ", ".join(info["pool"]))
    log.info("tool-name mapping (name -> vocabulary entry): %s",
             ", ".join(f"{k}->{v}" for k, v in info["tool_mapping"].items()))
    app = create_app(r, token=token, log_text=log_text, allow_missing_keys=allow_missing_keys,
                     timeout=timeout, max_retries=max_retries)
    uvicorn.run(app, host=host, port=port, log_level="info")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="mtrouter serve", description=__doc__.splitlines()[0])
    add_serve_args(p)
    logging.basicConfig(level=logging.INFO)
    serve(**vars(p.parse_args(argv)))


if __name__ == "__main__":
    main()
