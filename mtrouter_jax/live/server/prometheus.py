"""Prometheus metrics of the proxy (``GET /metrics``), in one ``CollectorRegistry`` per app.

Label values come from bounded sets only — pool model names, HTTP statuses, route templates,
OpenAI error codes, upstream failure kinds (``timeout``, ``connection``, ``http_503``, ...),
usage flags (``missing``, ``invalid``, ``over_cap``), shadow stages and close reasons — never prompt text, keys
or conversation ids, so the series count stays fixed however many conversations pass through.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mtrouter_jax.live.accounting import USAGE_FLAGS

# Router overhead is sub-millisecond to seconds under overload; upstream calls are LLM calls.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ProxyMetrics:
    """The proxy's counters, histograms and gauges (names prefixed ``mtrouter_``)."""

    def __init__(self, models: Sequence[str], open_conversations: Callable[[], int]):
        self.models = tuple(models)
        r = self.registry = CollectorRegistry()
        self.requests = Counter("mtrouter_requests", "HTTP requests by route template and status",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("mtrouter_errors", "Error answers by OpenAI error code (4xx/5xx)",
                              ["status", "code"], registry=r)
        self.decisions = Counter("mtrouter_decisions", "Routing decisions by the model chosen (fallback "
                                 "re-decisions included)", ["model"], registry=r)
        self.turns = Counter("mtrouter_turns", "Turns served, by model and whether the router chose it",
                             ["model", "mode"], registry=r)
        self.spend = Counter("mtrouter_spend_usd", "USD billed (pool prices) by model", ["model"], registry=r)
        self.switches = Counter("mtrouter_switches", "Turns served by another model than the conversation's "
                                "previous turn", registry=r)
        self.fallbacks = Counter("mtrouter_fallbacks", "Upstream failures that moved a turn to another model, "
                                 "by the failed model and the failure kind", ["model", "reason"], registry=r)
        self.nonfinite = Counter("mtrouter_nonfinite_fallbacks", "Decisions where the estimator returned "
                                 "NaN/inf and the safe choice was taken", registry=r)
        self.budget_refusals = Counter("mtrouter_budget_refusals", "Requests refused with 402 (the next turn "
                                       "cannot fit the conversation's budget)", registry=r)
        self.usage_flags = Counter("mtrouter_usage_flags", "Turns whose upstream usage was not billed as "
                                   "reported (missing, invalid: billed at the worst case) or was above the "
                                   "request's bounds (over_cap: billed as reported)", ["reason"], registry=r)
        for reason in USAGE_FLAGS:
            self.usage_flags.labels(reason)
        self.shadow_failures = Counter("mtrouter_shadow_failures", "Shadow (--shadow) decisions, records or "
                                       "observations that raised; the served turns were unaffected", ["stage"],
                                       registry=r)
        for stage in ("decide", "record", "observe"):
            self.shadow_failures.labels(stage)
        self.closed = Counter("mtrouter_conversations_closed", "Conversations ended, by reason",
                              ["reason"], registry=r)
        self.overhead = Histogram("mtrouter_router_overhead_seconds", "Time in the proxy per served request, "
                                  "upstream calls excluded", buckets=OVERHEAD_BUCKETS, registry=r)
        self.upstream = Histogram("mtrouter_upstream_latency_seconds", "Duration of each upstream call "
                                  "(failed ones included)", ["model"], buckets=UPSTREAM_BUCKETS, registry=r)
        self.open = Gauge("mtrouter_open_conversations", "Conversations currently open", registry=r)
        self.open.set_function(lambda: float(open_conversations()))
        # the children of the per-request series, looked up once (``labels`` takes a lock and builds
        # its key on every call; the label sets are bounded, see above)
        self.requests_of, self.decisions_of, self.upstream_of, self.turns_of, self.spend_of = (
            functools.lru_cache(maxsize=4096)(m.labels)
            for m in (self.requests, self.decisions, self.upstream, self.turns, self.spend))
        for m in self.models:  # series exist (at 0) from the start: rate() works on the first scrape
            self.decisions.labels(m)
            self.spend.labels(m)
            for mode in ("routed", "passthrough"):
                self.turns.labels(m, mode)

    def turn(self, model: str, cost: float, routed: bool, switched: bool) -> None:
        """One recorded turn."""
        self.turns_of(model, "routed" if routed else "passthrough").inc()
        self.spend_of(model).inc(max(float(cost), 0.0))
        if switched:
            self.switches.inc()

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the text exposition format."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


__all__ = ["ProxyMetrics", "OVERHEAD_BUCKETS", "UPSTREAM_BUCKETS"]
