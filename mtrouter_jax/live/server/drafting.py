"""Draft routing in the proxy (the rule: ``routing/draft.py``; the episode's side: ``live/draft.py``).

A routed turn's call is a draft; :func:`escalate_turn` re-serves it with another model when the
draft's tool type calls for it, in-process or across replicas on a shared store. A streamed request
cannot be re-served once its first bytes are out, so where the decided model's drafts can be
re-served at all, the turn is held back (:func:`holds_draft_back`): the upstream calls are made
unstreamed and the decided reply goes to the client as one SSE burst (:func:`buffered_sse`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import TYPE_CHECKING

from mtrouter_jax.live.accounting import checked_usage
from mtrouter_jax.live.backends import UpstreamError
from mtrouter_jax.live.draft import cancel_draft, escalate_draft
from mtrouter_jax.live.server.api import ApiError, ChatRequest
from mtrouter_jax.live.server.replies import tool_and_action
from mtrouter_jax.live.server.streams import completion_chunks, dumps

if TYPE_CHECKING:
    from mtrouter_jax.live.server.proxy import Proxy

_STREAM_FIELDS = ("stream", "stream_options")


def holds_draft_back(router, req: ChatRequest, model: str) -> bool:
    """Whether a streamed routed turn decided for ``model`` is held back until its draft is judged: some
    type escalates ``model``'s drafts (``Router.draft_escalations``, every model affordable)."""
    return req.passthrough is None and any(model in by_draft for by_draft in router.draft_escalations.values())


def unstreamed(req: ChatRequest) -> ChatRequest:
    """``req`` as a non-streamed request (its upstream calls answer one JSON reply each)."""
    body = {k: v for k, v in req.body.items() if k not in _STREAM_FIELDS}
    return dataclasses.replace(req, body=body, stream=False, include_usage=False)


def buffered_sse(resp: dict, include_usage: bool, acct: dict) -> bytes:
    """The SSE body of a held-back streamed turn: ``resp`` (the decided completion) as stream chunks,
    the usage chunk where the client asked for it, the proxy's accounting comment ``acct``
    (``streams.turn_account``, as a relayed stream ends with) and ``[DONE]``."""
    out = []
    for ch in completion_chunks(resp):
        if ch.get("usage") is not None and not ch["choices"] and not include_usage:
            continue
        ch["model"] = resp.get("model")
        out.append(b"data: " + dumps(ch) + b"\n\n")
    out.append(f": mtrouter {json.dumps(acct)}\n\n".encode())
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


async def escalate_turn(proxy: "Proxy", conv, req, model, resp, name, action, hi, out_hi, meta, caps, call,
                        limit_for, prop, plan):
    """Re-serve the turn when the draft's tool type calls for another model. Returns the (model, reply,
    tool, action, completion bound) to record; an escalation that fails leaves the draft served (its
    bill taken back, the failure in the turn's meta).

    With a shared store the draft's reservation (its worst case) stays held until the turn ends; the
    escalation then holds its own worst case less what the draft's hold over-covers, so the two holds
    are the draft's actual cost plus the escalation's worst case: the same test as the in-process
    budget, not a stricter one. The turn's end settles both calls on the escalation's reservation and
    releases the draft's, in one step."""
    ep = conv.episode
    draft_usage, _ = checked_usage(resp.get("usage"), hi, out_hi)
    esc = escalate_draft(ep, model, draft_usage, name, hi)
    if esc is None:
        return model, resp, name, action, out_hi
    caps[esc] = ep.completion_cap(esc, hi)
    try:
        if proxy.shared is not None:
            over = plan.worst_case(model) - ep.pending_draft["cost"]
            await proxy.shared.reserve(conv, esc, max(plan.worst_case(esc) - over, 0.0))
        async with asyncio.timeout(proxy.limits.turn_deadline or None):
            reply = await call(esc)
    except (UpstreamError, TimeoutError, ApiError) as e:
        # ApiError: the shared store would not hold the escalation's worst case (another replica's
        # turn holds part of the budget, or the store is down): the draft, already held, is served
        cancel_draft(ep)
        kind = e.code if isinstance(e, ApiError) else getattr(e, "kind", "deadline")
        meta["draft_escalation_failed"] = {"model": esc, "error": kind}
        return model, resp, name, action, out_hi
    esc_hi = proxy._completion_hi(esc, limit_for(esc))
    if not isinstance(reply, dict):  # charged, maybe: the draft stays billed, this call at its worst case
        meta["bad_reply"] = type(reply).__name__
        proxy._record(conv, req, esc, None, None, None, prop, meta, hi, esc_hi, flag="invalid")
        raise ApiError(502, f"upstream {esc} sent a reply that is not a JSON object (the turn was billed at its "
                            "worst case)", "upstream_error", "bad_response")
    name, action = tool_and_action(reply)
    return esc, reply, name, action, esc_hi


__all__ = ["escalate_turn", "holds_draft_back", "unstreamed", "buffered_sse"]
