"""Draft-and-escalate turns of a live episode (the rule: ``routing/draft.py``).

The caller (the ScienceWorld loop, the proxy) makes the call its policy chose — the *draft* —
and asks :func:`escalate_draft` whether to re-serve the turn with another model, given the draft's
tool (action) type. If so, the draft is billed to the episode at once (it was a real call), the
escalated model's completion cap is computed with the draft already spent, and the next
``record`` logs one turn: the escalated model's call, whose ``cost`` includes the draft's and whose
``meta.draft`` says what the draft was. If the escalated call fails, :func:`cancel_draft` takes the
draft's bill back and the caller records the draft reply as the turn instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mtrouter_jax.live.accounting import parse_usage
from mtrouter_jax.routing.draft import DEFAULT_DRAFT_MIN_GAIN, draft_escalation, draft_table_for

if TYPE_CHECKING:
    from mtrouter_jax.live.episode import LiveEpisode

_EPS_USD = 1e-12


def escalate_draft(ep: "LiveEpisode", draft_model: str, usage: Any, tool_name: str | None,
                   input_tokens_hi: float) -> str | None:
    """The model to re-serve this turn with (the draft is then billed), or None: serve the draft."""
    r = ep.router
    table = r.draft_table
    if table is None or ep.ended:
        return None
    ttype, k = r.tool_of(tool_name)
    prompt, cached, completion = parse_usage(usage)
    cost = r.turn_cost(draft_model, prompt, cached, completion)
    hi = float(input_tokens_hi)
    ep.spent += cost  # tentatively: what the escalated call may still spend is what is left after the draft
    try:
        allowed = np.ones(len(r.pool), bool)
        if ep.budget is not None:
            worst = ep.worst_costs(hi)
            allowed &= ep.spent + worst <= ep.budget + _EPS_USD
        allowed &= np.array([ep._cap(i, hi) != 0 for i in range(len(r.pool))])
        j = draft_escalation(table, k, r.pool.index(draft_model), allowed, r.draft_n_min, r.draft_test)
    finally:
        ep.spent -= cost
    if j < 0:
        return None
    bill_draft(ep, {"model": draft_model, "type": ttype, "input_tokens": prompt, "cached_tokens": cached,
                    "output_tokens": completion, "cost": cost})
    return r.pool.names[j]


def describe_draft(router: Any) -> dict | None:
    """What drafting does for ``router`` (``GET /v1/mtrouter/router``, the start-up log): None when
    off, else the test, its thresholds and every escalation it can make (``{type: {draft: model}}``)."""
    if getattr(router, "draft_table", None) is None:
        return None
    return {"test": router.draft_test, "n_min": router.draft_n_min, "min_gain": DEFAULT_DRAFT_MIN_GAIN,
            "escalations": router.draft_escalations}


def why_not_drafting(router: Any) -> str:
    """Why ``auto`` left drafting off for ``router`` (the start-up log)."""
    t = draft_table_for(getattr(router.estimator, "meta", None), None, router.layout.tools, router.pool.names,
                        required=False)
    if t is None or t.empty:
        return "the checkpoint's logs have no per-turn outcomes"
    return "the checkpoint's logs show no action type another model is significantly better at"


def bill_draft(ep: "LiveEpisode", draft: dict) -> None:
    """Bill a re-served turn's ``draft`` (``meta.draft``'s fields) to ``ep`` now: its spend and tokens;
    the next ``record`` logs it inside the turn (the escalated call's ``cost`` then includes it)."""
    ep.spent += draft["cost"]
    ep.tokens += draft["input_tokens"] + draft["output_tokens"]
    ep.pending_draft = draft


def cancel_draft(ep: "LiveEpisode") -> None:
    """Take back the bill of a pending draft (``bill_draft``'s inverse: its escalated call failed, the
    draft is served)."""
    d = ep.pending_draft
    if d is not None:
        ep.spent -= d["cost"]
        ep.tokens -= d["input_tokens"] + d["output_tokens"]
        ep.pending_draft = None


__all__ = ["escalate_draft", "bill_draft", "cancel_draft", "describe_draft", "why_not_drafting"]
