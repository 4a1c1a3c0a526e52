"""Request handling of the proxy: a routed (or passed-through) chat turn, streamed or not, and finish.

Everything runs on the server's event loop: the decision is a few hundred microseconds of CPU
(one jitted call), the upstream call is awaited on ``openai.AsyncOpenAI``, and the conversation's
``asyncio.Lock`` is held from the decision to the recorded turn. There is no thread per request:
with threads, hundreds of in-flight upstream calls meant hundreds of threads contending for the
GIL (docs/benchmarks.md, "Live proxy under load").
"""

from __future__ import annotations

import asyncio
import logging
import time
from fastapi.responses import Response, StreamingResponse

from mtrouter_jax.logs.detect import message_text
from mtrouter_jax.live.accounting import checked_usage, input_tokens_bound
from mtrouter_jax.live.server.api import (COMPLETION_LIMIT_FIELDS, ApiError, ChatRequest, header_value,
                                          parse_chat_request, parse_finish)
from mtrouter_jax.live.backends import Backends, UpstreamError, acall_with_fallback
from mtrouter_jax.live.batching import DecisionBatcher
from mtrouter_jax.live.server.drafting import buffered_sse, escalate_turn, holds_draft_back, unstreamed
from mtrouter_jax.live.server.arms import Arms
from mtrouter_jax.live.server.conversations import Conversation, ConversationStore, conversation_key
from mtrouter_jax.live.episode import LiveEpisode
from mtrouter_jax.live.server.prometheus import ProxyMetrics
from mtrouter_jax.live.server.limits import Limits, decode_body
from mtrouter_jax.live.server.plan import Plan, money_headers
from mtrouter_jax.live.server.replies import tool_and_action, upstream_message
from mtrouter_jax.live.server.streams import TurnStream, dumps, turn_account
from mtrouter_jax.live.server.tenancy import ANONYMOUS, Tenant
from mtrouter_jax.live.router import BudgetExhausted, Router
from mtrouter_jax.live.store import StateStore

log = logging.getLogger("mtrouter_jax.live")

BUSY_TIMEOUT_S = 600.0  # a request waits this long for its conversation's previous turn
# Request fields besides ``messages`` that the upstream renders into the prompt: the input bound counts them.
PROMPT_FIELDS = ("tools", "functions", "tool_choice", "response_format")


class Proxy:
    """The request handling behind the FastAPI app (``server.create_app`` wires the routes)."""

    def __init__(self, router: Router, backends: Backends, log_text: bool = False, limits: Limits | None = None,
                 state: StateStore | None = None, lease_ms: int | None = None, arms: Arms | None = None):
        self.router, self.backends, self.log_text = router, backends, log_text
        self.limits = limits or Limits()
        self.store = ConversationStore(router, self.limits, on_close=self._on_close)
        self.batcher = DecisionBatcher()
        self.metrics = ProxyMetrics(router.pool.names, lambda: len(self.store.open))
        self.routers = {getattr(router, "digest", None): router}  # by checkpoint digest (reloads add)
        self.arms = self.store.arms = arms or Arms(seed=router.seed)  # --canary / --shadow (server/arms.py)
        self.arms.on_failure = lambda stage: self.metrics.shadow_failures.labels(stage).inc()
        if self.arms.canary is not None:  # kept by digest: --state hands its conversations over like reloads
            self.routers.setdefault(getattr(self.arms.canary, "digest", None), self.arms.canary)
        self.state, self.shared, self.writer, self.reloader = state, None, None, None
        if state is not None:  # replicas share conversations, budgets and finishes (server/shared.py)
            from mtrouter_jax.live.server.logwriter import LogWriter
            from mtrouter_jax.live.server.shared import LEASE_MS, SharedConversations
            self.shared = self.store.shared = SharedConversations(state, self, lease_ms or LEASE_MS)
            if router.log_path is not None:
                self.writer = LogWriter(state, router.log_path)

    async def router_for(self, digest: str | None, path: str | None = None) -> Router:
        """The router of a conversation started with the checkpoint ``digest`` (kept across reloads;
        with ``--state``, one another replica loaded is loaded here from ``path``, digest checked)."""
        r = self.routers.get(digest)
        if r is None and path and self.reloader is not None:
            r = await self.reloader.load(path)
            if r.digest == digest:
                self.routers.setdefault(digest, r)
            r = self.routers.get(digest)
        if r is None:
            raise ApiError(409, f"this conversation was started with checkpoint {digest!r}, which this replica "
                                "cannot load (reload it here, or finish the conversation)", code="checkpoint_unknown")
        return r

    def _on_close(self, reason: str) -> None:
        self.metrics.closed.labels(reason).inc()

    def _budget_error(self, message: str) -> ApiError:
        self.metrics.budget_refusals.inc()
        return ApiError(402, message, "insufficient_quota", "budget_exhausted")

    # --------------------------------------------------------------- finish
    async def finish(self, cid: str, raw: bytes, tenant: Tenant = ANONYMOUS) -> dict:
        body = await decode_body(raw, "finish body") if raw.strip() else None
        score, srange, meta = parse_finish(body, self.limits.score_range)
        return await self.store.finish(cid, score, srange, meta, tenant.name)

    # --------------------------------------------------------------- chat
    async def chat(self, raw: bytes, headers: dict, t_start: float, tenant: Tenant = ANONYMOUS):
        """A chat turn: a JSON Response, or a StreamingResponse for ``stream=true``."""
        req = parse_chat_request(await decode_body(raw), headers, self.router.pool.names,
                                 self.router.explore_policy is not None, conversation_key)
        return await self._locked_turn(req, t_start, tenant)

    async def _locked_turn(self, req: ChatRequest, t_start: float, tenant: Tenant):
        conv = self.store.get_or_start(req.cid, req.derived, req.budget, req.task, req.lam, req.explore, req.seed,
                                       tenant)
        try:
            # the timeout scope (a timer each) only where acquire can wait: locked, or a waiter queued
            # that a release has woken but that has not run yet (``asyncio.Lock``'s own fast-path test)
            if conv.lock.locked() or getattr(conv.lock, "_waiters", None):
                async with asyncio.timeout(BUSY_TIMEOUT_S):  # (a cancelled acquire never holds the lock)
                    await conv.lock.acquire()
            else:
                await conv.lock.acquire()  # (returns at once)
        except TimeoutError:
            raise ApiError(409, f"conversation {req.cid!r} is busy with another request", code="busy") from None
        handed_over = False  # a stream releases the lock when it ends
        plan = None
        try:
            if self.shared is not None:  # lease + the stored state (raises 409 busy, 402, 503)
                plan = await self._guess(req, conv)
                if not await self.shared.begin(conv, req, None if plan is None else plan.guess):
                    plan = None  # made on a stale copy: decided again below, on the stored one
            if conv.episode.finished:  # finished (or evicted) while we waited
                raise ApiError(409, f"conversation {req.cid!r} was just finished; retry", code="finished")
            if req.derived and conv.n_seen and len(req.messages) < conv.n_seen - 1:
                if self.shared is not None:
                    await self.shared.end(conv)
                conv.lock.release()
                handed_over = True
                await self.store.restart(conv)
                return await self._locked_turn(req, t_start, tenant)
            if len(conv.episode.turns) >= self.limits.max_turns:
                raise ApiError(409, f"conversation {req.cid!r} has {len(conv.episode.turns)} turns, the proxy's limit "
                                    "(--max-turns): finish it and start a new one", code="max_turns_reached")
            resp = await self._turn(req, conv, t_start, plan)
            handed_over = isinstance(resp, StreamingResponse)
            return resp
        finally:
            if not handed_over:
                try:
                    if self.shared is not None:
                        await self.shared.end(conv)
                finally:
                    conv.lock.release()

    def _input_bounds(self, req: ChatRequest, conv: Conversation) -> tuple[float, float]:
        """(upper bound, estimate) of this call's input tokens; attaches new tool results (else new
        user messages) as the previous turn's observation.

        The upper bound is that of the whole request as sent (every message, tools and the other
        prompt fields): a client may rewrite earlier turns or its tools, so nothing is assumed
        unchanged. Only the estimate (features, expected cost) uses the previous turn's usage."""
        ep, msgs = conv.episode, req.messages
        new = msgs[conv.n_seen:] if conv.n_seen and len(msgs) >= conv.n_seen - 1 else None
        if new:
            obs = [m for m in new if m.get("role") == "tool"] or [m for m in new if m.get("role") == "user"]
            if obs:
                text = "\n".join(message_text(m.get("content")) for m in obs)
                ep.attach_observation(text)
                self.arms.observe(ep, text)
        extra = {k: req.body[k] for k in PROMPT_FIELDS if req.body.get(k) is not None}
        total_hi = input_tokens_bound(msgs, extra or None, finite=True)  # (parse_json refused NaN/Infinity)
        if new is not None and ep.turns:
            new_b = input_tokens_bound(new, finite=True)  # their bytes + the per-message overhead
            before = ep.last_prompt + ep.last_completion
            return total_hi, min(total_hi, before + new_b / 4)
        return total_hi, total_hi / 4

    def _decide(self, ep: LiveEpisode, hi, est, lam, exclude=()):
        """A fallback re-decision (synchronous: ``acall_with_fallback``'s failure callback)."""
        return self._counted(ep.decide(input_tokens_hi=hi, context_tokens=est, lam=lam, exclude=exclude))

    async def _guess(self, req: ChatRequest, conv: Conversation) -> Plan | None:
        """With shared state: the turn's plan made on this replica's copy of the conversation before
        the lease, so that ``begin`` can reserve its first attempt in the lease's round trip. Only
        where the copy is likely current (this replica wrote the last version) and the turn will
        surely run; None elsewhere, and where planning fails (the store's copy is then adopted)."""
        ep = conv.episode
        if (req.passthrough is not None or ep.budget is None or conv.version <= 0 or not conv.claimed
                or ep.finished or len(ep.turns) >= self.limits.max_turns
                or (req.derived and conv.n_seen and len(req.messages) < conv.n_seen - 1)):
            return None
        try:
            plan = await self._plan(req, conv, guessing=True)
        except Exception:  # (out of budget, mostly) the turn is planned again on the stored copy, and fails there
            conv.version = -1  # the copy may have been touched: ``begin`` adopts the stored one
            return None
        plan.guess = (plan.ranking[0], plan.worst_case(plan.ranking[0]))
        return plan

    def _counted(self, d):
        self.metrics.decisions_of(d.model).inc()
        if d.meta.get("nonfinite_fallback"):
            self.metrics.nonfinite.inc()
        return d

    async def _plan(self, req: ChatRequest, conv: Conversation, guessing: bool = False) -> Plan:
        """What the turn will try: the input bounds, the decision (or the client's passthrough model)
        and each model's completion cap (raises 402 when the budget does not allow the turn;
        ``guessing``: ``BudgetExhausted`` as it is, neither answered nor counted)."""
        ep, cid, body = conv.episode, req.cid, req.body
        hi, est = self._input_bounds(req, conv)
        decisions: dict = {}
        shadow = None
        if req.passthrough is not None:
            model = req.passthrough
            worst = ep.worst_costs(hi)[self.router.pool.index(model)]
            if ep.budget is not None and ep.spent + worst > ep.budget + 1e-12:
                raise self._budget_error(f"budget exhausted: conversation {cid!r} spent ${ep.spent:.6f} of "
                                         f"${ep.budget:.6f}; a {model} turn could cost up to ${worst:.6f}")
            cap = ep.completion_cap(model, hi)
            if cap == 0:
                raise self._budget_error(f"budget exhausted: conversation {cid!r} has ${ep.remaining:.6f} left, "
                                         f"less than {model}'s uncached input")
            ranking, caps = [model], {model: cap}
            ep.last_decision = None
        else:
            try:
                d = await self.batcher.decide(ep, input_tokens_hi=hi, context_tokens=est, lam=req.lam)
            except BudgetExhausted as e:
                if guessing:
                    raise
                raise self._budget_error(str(e)) from None
            decisions[d.model] = d
            ranking, caps = [d.model], dict(d.max_output_tokens)
            shadow = self.arms.decide(ep, hi, est, req.lam)  # on the same history, before anything is served
        client_limits = [body[f] for f in COMPLETION_LIMIT_FIELDS if body.get(f) is not None]
        return Plan(self, ep, hi, est, decisions, ranking, caps, shadow, client_limits)

    async def _turn(self, req: ChatRequest, conv: Conversation, t_start: float, plan: Plan | None = None):
        ep, cid, body = conv.episode, req.cid, req.body
        if plan is None:
            plan = await self._plan(req, conv)
        held = None  # the client's streamed request, where the turn is held back and sent whole once decided
        if req.stream and holds_draft_back(ep.router, req, plan.ranking[0]):
            held, req = req, unstreamed(req)
            body = req.body
        for d in plan.decisions.values():  # (counted once served: a guess that did not stand is not)
            self._counted(d)
        hi, est, decisions, ranking, caps, shadow = (plan.hi, plan.est, plan.decisions, plan.ranking, plan.caps,
                                                     plan.shadow)
        limit_for = plan.limit_for
        failed: list[str] = []

        def on_fail(model, err):
            self.metrics.fallbacks.labels(model, err.kind).inc()
            failed.append(model)
            if req.passthrough is not None:
                return []
            try:  # a fresh draw among the models still allowed: its own propensity
                d2 = self._decide(ep, hi, est, req.lam, exclude=list(dict.fromkeys(failed)))
            except BudgetExhausted:
                return []
            caps.update(d2.max_output_tokens)
            decisions[d2.model] = d2
            return [d2.model]

        def body_for(model):
            # every completion-limit field goes; one comes back: an upstream may read any one of them
            b = {k: v for k, v in body.items() if k not in COMPLETION_LIMIT_FIELDS}
            limit = limit_for(model)
            if limit is not None:
                field = "max_completion_tokens" if ("max_completion_tokens" in body or (
                    "max_tokens" not in body and "api.openai.com" in self.backends.base_urls.get(model, ""))) \
                    else "max_tokens"
                b[field] = limit
            return b

        async def call(model):
            if self.shared is not None:  # the attempt's worst case, held across replicas until settled
                await self.shared.reserve(conv, model, plan.worst_case(model))
            t0 = time.perf_counter()
            try:
                if req.stream:
                    return await self.backends.aopen_stream(model, body_for(model))
                return await self.backends.achat(model, body_for(model), finite=True)  # (as decoded)
            except RecursionError:  # a reply nested deeper than the JSON decoder can follow
                if self.shared is not None:
                    await self.shared.unreserve(conv, model)
                raise UpstreamError(model, "bad_response", "upstream sent JSON nested too deeply") from None
            except BaseException:
                if self.shared is not None:
                    await self.shared.unreserve(conv, model)
                raise
            finally:
                self.metrics.upstream_of(model).observe(time.perf_counter() - t0)

        deadline = self.limits.turn_deadline or None
        try:
            async with asyncio.timeout(deadline):  # every model, retry and fallback of this turn together
                att = await acall_with_fallback(ranking, call, on_fail)
        except TimeoutError:
            self.metrics.fallbacks.labels(ranking[0], "deadline").inc()
            raise ApiError(504, f"the turn took longer than the proxy's deadline of {deadline:g} s (--turn-deadline) "
                                f"across its upstream attempts ({', '.join(dict.fromkeys(failed)) or ranking[0]}); "
                                "nothing was billed", "upstream_error", "turn_deadline") from None
        except UpstreamError as e:
            if not e.retryable:
                raise ApiError(e.status or 502, f"upstream {e.model} rejected the request: " + upstream_message(e),
                               "upstream_error", e.kind) from None
            raise ApiError(502, f"all upstream models failed: {getattr(e, 'fallbacks', [])}", "upstream_error",
                           "upstream_unavailable") from None
        meta = {"fallbacks": att.fallbacks} if att.fallbacks else {}
        if req.passthrough is not None:
            meta["passthrough"] = True
        if shadow is not None:
            meta["shadow"] = shadow
        ep.last_decision = decisions.get(att.model)
        prop = None if ep.last_decision is None else ep.last_decision.propensity
        hdr = {"X-MTRouter-Model": att.model, "X-MTRouter-Conversation": header_value(cid),
               "X-MTRouter-Fallbacks": ",".join(f"{f['model']}:{f['error']}" for f in att.fallbacks)}
        overhead = time.perf_counter() - t_start - att.upstream_seconds
        hdr["X-MTRouter-Overhead-Ms"] = f"{overhead * 1e3:.3f}"
        self.metrics.overhead.observe(max(overhead, 0.0))
        out_hi = self._completion_hi(att.model, limit_for(att.model))
        if req.stream:
            hdr.update(money_headers(ep))
            return TurnStream(self, att, conv, req, hi, out_hi, prop, meta, hdr)
        resp = att.result
        if not isinstance(resp, dict):  # the call happened (and may be charged): billed once, at the worst case
            log.warning("upstream %s answered a %s instead of a JSON object", att.model, type(resp).__name__)
            meta["bad_reply"] = type(resp).__name__
            self._record(conv, req, att.model, None, None, None, prop, meta, hi, out_hi, flag="invalid")
            raise ApiError(502, f"upstream {att.model} sent a reply that is not a JSON object "
                                f"(the turn was billed at its worst case)", "upstream_error", "bad_response")
        name, action = tool_and_action(resp)
        model = att.model
        if ep.router.draft_table is not None and req.passthrough is None:
            model, resp, name, action, out_hi = await escalate_turn(self, conv, req, model, resp, name, action, hi,
                                                                    out_hi, meta, caps, call, limit_for, prop, plan)
            hdr["X-MTRouter-Model"] = model
        self._record(conv, req, model, resp.get("usage"), name, action, prop, meta, hi, out_hi)
        resp["model"] = model
        hdr.update(money_headers(ep))
        hdr["X-MTRouter-Turn-Cost"] = f"{ep.turns[-1].cost:.8f}"
        if held is not None:  # the decided reply, as SSE
            sse = buffered_sse(resp, held.include_usage, turn_account(ep, model, att.fallbacks))
            return Response(sse, media_type="text/event-stream", headers=hdr)
        return Response(dumps(resp), media_type="application/json", headers=hdr)

    def _completion_hi(self, model: str, limit: int | None) -> int:
        """Most completion tokens the upstream may bill: the limit sent, at most the model's output limit."""
        most = int(self.router.max_output[self.router.pool.index(model)])
        return most if limit is None else min(int(limit), most)

    def _record(self, conv: Conversation, req: ChatRequest, model, usage, tool, action, prop, meta,
                prompt_hi: float, completion_hi: int, flag: str | None = None) -> None:
        """Bill one turn from the upstream's ``usage``, checked (``accounting.checked_usage``): a
        missing or invalid usage is billed at the worst case, one above the bounds as reported;
        either way the turn's meta says so (``usage_flag``) and /metrics counts it."""
        ep = conv.episode
        prev = ep.prev_model
        usage, found = checked_usage(usage, prompt_hi, completion_hi)
        flag = flag or found
        if flag is not None:
            meta["usage_flag"] = flag
            if flag != "over_cap":
                meta["usage_estimated"] = True
            self.metrics.usage_flags.labels(flag).inc()
            log.warning("conversation %s: %s usage from %s (billed %s)", req.cid, flag, model,
                        "as reported" if flag == "over_cap" else "at the worst case")
        cost = ep.record(model, usage, tool_name=tool, action=action, propensity=prop, meta=meta)
        self.arms.record(ep, model, usage, tool, action)  # the shadow's history: the served turn, as billed
        conv.n_seen = len(req.messages) + 1
        conv.last_used = time.time()
        self.metrics.turn(model, cost, req.passthrough is None, prev is not None and prev != model)


__all__ = ["Proxy", "BUSY_TIMEOUT_S"]
