"""The proxy's Prometheus metrics (``GET /metrics``) and the estimator's non-finite safe choice, over loopback HTTP."""

from __future__ import annotations

import collections

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testing.live import MODELS, FakeEstimator, ServerThread, make_pool
from testing.fixtures import fake_api_key, upstream  # noqa: F401  (fixtures)
from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server.app import create_app
from mtrouter_jax.logs.io import read_episodes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TOOLS = [{"type": "function", "function": {"name": "web_search", "parameters": {"type": "object"}}}]


@pytest.fixture
def serve(upstream, tmp_path):
    """Factory: a proxy around ``estimator`` (default: the fake) on loopback; returns (url, log)."""
    started = []

    def make(estimator=None):
        upstream.fail.clear()
        log = tmp_path / f"live{len(started)}.jsonl"
        router = Router(estimator or FakeEstimator(make_pool(upstream.url + "/v1")), log_path=log)
        srv = ServerThread(create_app(router, timeout=5.0, max_retries=0)).__enter__()
        started.append(srv)
        return srv.url, log

    yield make
    for s in started:
        s.__exit__(None, None, None)


def scrape(url) -> dict:
    """{(sample name, sorted label items): value} of ``/metrics``."""
    r = httpx.get(f"{url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def value(m: dict, name: str, **labels) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def chat(url, model="mtrouter", cid=None, messages=None, **headers):
    h = {"X-MTRouter-Conversation": cid} if cid else {}
    body = {"model": model, "messages": messages or [{"role": "user", "content": f"hello {cid}"}], "tools": TOOLS}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={**h, **headers}, timeout=10)


def test_metrics_count_requests_decisions_spend_fallbacks_and_refusals(serve, upstream):
    url, log = serve()
    statuses = collections.Counter()
    msgs = [{"role": "user", "content": "three turns"}]
    for _ in range(3):  # routed turns with tool calls (the fake prefers other models after tools: switches)
        r = chat(url, cid="a", messages=msgs)
        statuses[r.status_code] += 1
        m = r.json()["choices"][0]["message"]
        msgs += [m] + [{"role": "tool", "tool_call_id": tc["id"], "content": "ok"} for tc in m.get("tool_calls") or []]
    upstream.fail["fake-strong"] = ["500"]  # the first turn's preferred model fails once: a fallback
    r = chat(url, cid="b")
    statuses[r.status_code] += 1
    assert r.headers["x-mtrouter-fallbacks"] == "strong:http_500"
    statuses[chat(url, model="cheap", cid="c").status_code] += 1  # passthrough
    statuses[chat(url, model="mtrouter-0.0000001", cid="d").status_code] += 1  # nothing fits: 402
    statuses[chat(url, model="gpt-42", cid="e").status_code] += 1  # 404
    statuses[httpx.post(f"{url}/v1/chat/completions", content=b"{bad").status_code] += 1  # 400
    assert statuses == {200: 5, 402: 1, 404: 1, 400: 1}
    assert httpx.post(f"{url}/v1/mtrouter/conversations/a/finish", json={"score": 1, "score_range": [0, 1]}).status_code == 200
    assert httpx.post(f"{url}/v1/mtrouter/conversations/a/finish", json={}).status_code == 404

    m = scrape(url)
    chat_ep = "/v1/chat/completions"
    for status, n in statuses.items():
        assert value(m, "mtrouter_requests_total", endpoint=chat_ep, status=str(status)) == n
    finish_ep = "/v1/mtrouter/conversations/{cid}/finish"
    assert value(m, "mtrouter_requests_total", endpoint=finish_ep, status="200") == 1
    assert value(m, "mtrouter_requests_total", endpoint=finish_ep, status="404") == 1
    assert value(m, "mtrouter_errors_total", status="402", code="budget_exhausted") == 1
    assert value(m, "mtrouter_errors_total", status="404", code="model_not_found") == 1
    assert value(m, "mtrouter_errors_total", status="404", code="conversation_not_found") == 1
    assert value(m, "mtrouter_budget_refusals_total") == 1
    assert value(m, "mtrouter_fallbacks_total", model="strong", reason="http_500") == 1
    assert value(m, "mtrouter_nonfinite_fallbacks_total") == 0
    # decisions: 3 (a) + 2 (b: strong, then the re-decision without it); the passthrough is none
    assert sum(value(m, "mtrouter_decisions_total", model=x) for x in MODELS) == 5
    assert value(m, "mtrouter_decisions_total", model="strong") >= 2
    # turns and spend agree with the log of the finished conversation and the open ones' info
    (ep,) = read_episodes(log)
    infos = {c: httpx.get(f"{url}/v1/mtrouter/conversations/{c}").json() for c in ("a", "b", "c")}
    served = collections.Counter((t.model, "routed") for t in ep.turns)
    served[(infos["b"]["models"][0], "routed")] += 1
    served[("cheap", "passthrough")] += 1
    for x in MODELS:
        for mode in ("routed", "passthrough"):
            assert value(m, "mtrouter_turns_total", model=x, mode=mode) == served[(x, mode)]
    spend = sum(value(m, "mtrouter_spend_usd_total", model=x) for x in MODELS)
    assert spend == pytest.approx(sum(i["spent"] for i in infos.values()), rel=1e-9)
    models_a = [t.model for t in ep.turns]
    assert value(m, "mtrouter_switches_total") == sum(p != q for p, q in zip(models_a, models_a[1:]))
    assert value(m, "mtrouter_open_conversations") == 3  # b, c and d (a is finished; e never opened)
    assert value(m, "mtrouter_conversations_closed_total", reason="finished") == 1
    assert value(m, "mtrouter_router_overhead_seconds_count") == 5
    assert sum(v for (name, _), v in m.items() if name == "mtrouter_upstream_latency_seconds_count") == 6
    # bounded labels: no conversation id, prompt text or key anywhere in the exposition
    labels = {v for (_, items) in m for _, v in items}
    assert not labels & {"a", "b", "c", "d", "e", "three turns", "sk-test-not-a-real-key"}
    assert all(not v.startswith("h-") for v in labels)


def test_two_apps_in_one_process_keep_separate_registries(serve):
    (url1, _), (url2, _) = serve(), serve()
    for _ in range(2):
        assert chat(url1, cid="x").status_code == 200
    m1, m2 = scrape(url1), scrape(url2)
    assert value(m1, "mtrouter_router_overhead_seconds_count") == 2
    assert value(m2, "mtrouter_router_overhead_seconds_count") == 0


class NanEstimator(FakeEstimator):
    """The fake estimator, but its predictions are NaN from the second turn on (and inf for 'mid')."""

    def predict(self, features):
        score, rem = super().predict(features)
        f = np.asarray(features, np.float32)
        turn = f[..., len(self.layout.task_types) + 1]  # turn_progress > 0 after the first turn
        bad = np.asarray(turn > 0)
        score = np.where(bad[..., None], np.nan, score).astype(np.float32)
        rem = np.where(bad[..., None], np.inf, rem).astype(np.float32)
        return score, rem


def test_nonfinite_estimate_takes_the_safe_choice_through_the_proxy(serve, upstream, caplog):
    url, log = serve(NanEstimator(make_pool(upstream.url + "/v1")))
    msgs = [{"role": "user", "content": "nan please"}]
    models = []
    for _ in range(4):
        r = chat(url, cid="nan-1", messages=msgs, **{"X-MTRouter-Budget": "1.0"})
        assert r.status_code == 200  # the request succeeds: the estimator's NaN never reaches the client
        models.append(r.headers["x-mtrouter-model"])
        m = r.json()["choices"][0]["message"]
        msgs += [m] + [{"role": "tool", "tool_call_id": tc["id"], "content": "ok"} for tc in m.get("tool_calls") or []]
    assert httpx.post(f"{url}/v1/mtrouter/conversations/nan-1/finish", json={"score": 0.5, "score_range": [0, 1]}).status_code == 200
    (ep,) = read_episodes(log)
    flags = [bool((t.meta or {}).get("nonfinite_fallback")) for t in ep.turns]
    assert flags == [False, True, True, True]
    # the safe choice: the previous model while it is affordable (propensity 1: a deterministic rule)
    assert models[1:] == [models[0]] * 3 and all(t.propensity == 1.0 for t in ep.turns)
    assert value(scrape(url), "mtrouter_nonfinite_fallbacks_total") == 3
    assert any("non-finite" in rec.getMessage() and "nan-1" in rec.getMessage() for rec in caplog.records)
