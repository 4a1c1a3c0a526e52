"""SSE pass-through of one streamed turn (``TurnStream``): chunks relayed, usage and tool calls
collected, the turn recorded when the stream ends, an OpenAI-style error event when it breaks.

An upstream that answers ``stream: true`` with a plain JSON completion is relayed as a proper
stream (one chunk with the message, one with the usage) and warned about once per model.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import anyio
from fastapi.responses import StreamingResponse

from mtrouter_jax.core.jsonfast import dumps_compact
from mtrouter_jax.live.backends import SSE_DONE, Attempt, sse_payload
from mtrouter_jax.live.server.api import ApiError, ChatRequest
from mtrouter_jax.live.server.conversations import Conversation
from mtrouter_jax.live.server.replies import text_tool

if TYPE_CHECKING:
    from mtrouter_jax.live.server.proxy import Proxy

log = logging.getLogger("mtrouter_jax.live")
_WARNED_JSON: set[str] = set()


def dumps(obj: Any) -> bytes:
    """Compact JSON (UTF-8) of an upstream object for the client (non-finite numbers as null)."""
    return dumps_compact(obj, "null")


def _json_reply_as_chunks(raw: bytes, model: str) -> list:
    """The chunks of a stream equivalent to a plain JSON completion (an upstream that ignored
    ``stream: true``): the message as one delta, then the usage. Unreadable: no chunk (the stream
    then ends as cut, and the turn is billed at its worst case)."""
    if model not in _WARNED_JSON:
        _WARNED_JSON.add(model)
        log.warning("upstream %s answered a streaming request with plain JSON: relayed as one SSE chunk", model)
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return []
    if not isinstance(obj, dict):
        return []
    if obj.get("error") is not None:
        return [{"error": obj["error"]}]
    return completion_chunks(obj)


def completion_chunks(obj: dict) -> list:
    """The stream chunks equivalent to the chat completion ``obj``: each choice's message as one delta
    with its finish reason, then the usage (a chunk without choices), as OpenAI streams them."""
    chunks = []
    choices = obj.get("choices")
    for c in choices if isinstance(choices, list) else []:
        if not isinstance(c, dict):
            continue
        msg = c.get("message") if isinstance(c.get("message"), dict) else {}
        delta = {k: v for k, v in msg.items() if k in ("role", "content", "tool_calls", "refusal")}
        if isinstance(delta.get("tool_calls"), list):
            delta["tool_calls"] = [dict(tc, index=tc.get("index", i)) if isinstance(tc, dict) else tc
                                   for i, tc in enumerate(delta["tool_calls"])]
        chunks.append({"id": obj.get("id"), "object": "chat.completion.chunk", "created": obj.get("created"),
                       "choices": [{"index": c.get("index", 0), "delta": delta,
                                    "finish_reason": c.get("finish_reason") or "stop"}]})
    if obj.get("usage") is not None:
        chunks.append({"id": obj.get("id"), "object": "chat.completion.chunk", "created": obj.get("created"),
                       "choices": [], "usage": obj["usage"]})
    return chunks


def turn_account(ep, model: str, fallbacks: list) -> dict:
    """The ``: mtrouter {...}`` comment that ends a streamed turn: who served it, what it cost, what is
    left (the money headers were sent before the turn was billed)."""
    return {"model": model, "spent": ep.spent, "remaining": ep.remaining, "turn_cost": ep.turns[-1].cost,
            "fallbacks": fallbacks}


class TurnStream(StreamingResponse):
    """SSE pass-through of one turn. The turn is recorded and the conversation's lock released when
    the stream ends — also when the client goes away mid-stream, or before the first chunk (then
    Starlette never starts the body generator, hence the cleanup in ``__call__``)."""

    def __init__(self, proxy: "Proxy", att: Attempt, conv: Conversation, req: ChatRequest, hi, out_hi, prop, meta,
                 headers: dict):
        self.proxy, self.att, self.conv, self.req, self.hi, self.out_hi, self.prop, self.meta = (
            proxy, att, conv, req, hi, out_hi, prop, meta)
        self.state: dict = {"usage": None, "tool": None, "text": [], "recorded": False, "closed": False,
                            "done": False, "finish_reason": False}
        super().__init__(self._body(), media_type="text/event-stream", headers=headers)

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()

    async def _finish_turn(self) -> dict:
        st, ep = self.state, self.conv.episode
        st["recorded"] = True
        try:
            action = "".join(st["text"])  # no usage chunk: billed at the worst case (flagged)
            self.proxy._record(self.conv, self.req, self.att.model, st["usage"], st["tool"] or text_tool(action),
                               action, self.prop, self.meta, self.hi, self.out_hi)
            return turn_account(ep, self.att.model, self.att.fallbacks)
        finally:
            try:
                if self.proxy.shared is not None:  # settle, write the state, release the lease
                    with anyio.CancelScope(shield=True):
                        await self.proxy.shared.end(self.conv)
            finally:
                self.conv.lock.release()

    async def _cleanup(self) -> None:
        if not self.state["recorded"]:  # the client went away: the turn still happened (and is billed)
            self.meta.setdefault("stream_error", "client_disconnected")
            with anyio.CancelScope(shield=True):
                await self._finish_turn()
        if not self.state["closed"]:
            self.state["closed"] = True
            with anyio.CancelScope(shield=True):
                await self.att.result.aclose()

    async def _events(self):
        """The upstream's decoded chunks; ``state["done"]`` is set when its ``[DONE]`` arrives. An
        upstream that answers ``stream: true`` with one JSON object is relayed as SSE chunks."""
        res = self.att.result
        resp = getattr(res, "_resp", None)
        if resp is None:  # a stream object without its raw lines: trust its end
            async for ch in res.events():
                yield ch
            self.state["done"] = True
            return
        ctype = str(getattr(resp, "headers", {}).get("content-type", ""))
        if "json" in ctype and "event-stream" not in ctype:
            for ch in _json_reply_as_chunks(await resp.read(), res.model):
                yield ch
            self.state["done"] = True
            return
        async for line in resp.iter_lines():
            ev = sse_payload(line, res.model)
            if ev is SSE_DONE:
                self.state["done"] = True
                return
            if ev is not None:
                yield ev

    async def _body(self):
        st = self.state
        try:
            error = None
            try:
                async for ch in self._events():
                    if not isinstance(ch, dict):
                        continue
                    if ch.get("error") is not None:  # the upstream's own error event: the stream ends here
                        error = "upstream_error_event"
                        break
                    ch["model"] = self.att.model
                    if ch.get("usage"):
                        st["usage"] = ch["usage"]
                    _collect(ch, st)
                    if not self.req.include_usage and ch.get("usage") is not None:
                        if not ch.get("choices"):
                            continue
                        ch = {k: v for k, v in ch.items() if k != "usage"}
                    yield b"data: " + dumps(ch) + b"\n\n"
                else:
                    if not st["done"] and not st["finish_reason"]:
                        error = "upstream_cut"  # the connection ended before [DONE] and any finish_reason
            except Exception as e:  # noqa: BLE001 - upstream died mid-stream: bill what was seen
                error = type(e).__name__
            if error is not None:
                log.warning("stream from %s was interrupted (%s): the client gets an error event, not [DONE]",
                            self.att.model, error)
                self.meta["stream_error"] = error
            acct = await self._finish_turn()
            yield f": mtrouter {json.dumps(acct)}\n\n"
            if error is None:
                yield "data: [DONE]\n\n"
            else:
                self.proxy.metrics.errors.labels("502", "stream_interrupted").inc()
                err = ApiError(502, f"the upstream stream from {self.att.model} was interrupted ({error}); the "
                                    "reply is incomplete (the turn was billed)", "upstream_error",
                               "stream_interrupted")
                yield f"data: {json.dumps(err.body(), separators=(',', ':'))}\n\n"
        finally:
            await self._cleanup()


def _collect(ch: dict, state: dict) -> None:
    """Accumulate a chunk's text and first tool-call name (whatever shape the chunk has)."""
    choices = ch.get("choices")
    for c in choices if isinstance(choices, list) else []:
        if not isinstance(c, dict):
            continue
        if c.get("finish_reason"):
            state["finish_reason"] = True
        delta = c.get("delta")
        if not isinstance(delta, dict):
            continue
        if isinstance(delta.get("content"), str):
            state["text"].append(delta["content"])
        calls = delta.get("tool_calls")
        for tc in calls if isinstance(calls, list) else []:
            fn = tc.get("function") if isinstance(tc, dict) else None
            if not isinstance(fn, dict):
                continue
            if isinstance(fn.get("name"), str) and fn["name"] and state["tool"] is None:
                state["tool"] = fn["name"]
            if isinstance(fn.get("arguments"), str):
                state["text"].append(fn["arguments"])



__all__ = ["TurnStream", "dumps", "completion_chunks", "turn_account"]
