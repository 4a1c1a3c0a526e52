"""A hypothesis fuzz of whole exchanges (issue 18): hostile request bodies *and* hostile upstream replies
(usage of every shape, non-objects, error statuses, cut or JSON-only streams) on budgeted conversations.

Asserted for every example: no 5xx but the documented upstream-fault ones (502/503/504), every error in
OpenAI's shape; the logged spend within the budget, plus at most what turns flagged ``over_cap`` (an
upstream that billed past the cap it was sent) cost; every finish answered 200 is in the log."""

from __future__ import annotations

import json
import math

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testing.live import KEY_ENV, FakeEstimator, FakeUpstream, ServerThread, make_pool
from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server.app import create_app
from mtrouter_jax.live.server.limits import Limits
from mtrouter_jax.logs.io import read_episodes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
UPSTREAM_FAULTS = {502, 503, 504}
numbers = st.one_of(st.integers(-10**6, 10**9), st.floats(), st.text(max_size=4), st.none(), st.booleans(),
                    st.lists(st.integers(), max_size=2))
usages = st.one_of(
    st.none(), st.just("absent"), st.text(max_size=5), st.integers(),
    st.fixed_dictionaries({}, optional={"prompt_tokens": numbers, "completion_tokens": numbers,
                                        "prompt_tokens_details": st.one_of(numbers, st.fixed_dictionaries(
                                            {"cached_tokens": numbers}))}))
replies = st.fixed_dictionaries({
    "kind": st.sampled_from(["ok", "ok", "non_object", "status", "cut", "json_stream", "error_event"]),
    "usage": usages, "completion": st.integers(0, 10**6), "status": st.sampled_from([400, 429, 500, 503]),
    "non_object": st.sampled_from(["[1, 2]", "42", "\"text\"", "null", "[" * 5000])})
requests = st.fixed_dictionaries({
    "stream": st.booleans(), "include_usage": st.booleans(),
    "limit": st.one_of(st.none(), st.sampled_from(["max_tokens", "max_completion_tokens", "max_output_tokens"])),
    "limit_value": st.integers(1, 2**31 - 1), "n": st.sampled_from([None, None, None, 1, 8]),
    "tools_kb": st.sampled_from([0, 0, 1, 300]), "rewrite_kb": st.sampled_from([0, 0, 200]),
    "content": st.text(max_size=200)})


class Programmable:
    """The upstream whose next reply each example sets (``spec``), with usage of any shape."""

    def __init__(self):
        self.fake = FakeUpstream(record=False)
        self.spec: dict = {"kind": "ok", "usage": None, "completion": 10}

    def usage(self, body) -> object:
        _, usage = self.fake.response_for(body)
        u, s = self.spec["usage"], self.spec
        if u == "absent":
            return None
        if u is None:  # an honest one: talks as long as allowed (or longer, when completion says so)
            usage["completion_tokens"] = s["completion"]
            return usage
        return u

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = json.loads(await request.body())
            s = self.spec
            msg, _ = self.fake.response_for(body)
            usage = self.usage(body)
            reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}]}
            if usage is not None:
                reply["usage"] = usage
            if s["kind"] == "status":
                return JSONResponse({"error": {"message": "fake", "type": "x"}}, status_code=s["status"])
            if s["kind"] == "non_object":
                return Response(s["non_object"], media_type="application/json")
            if not body.get("stream") or s["kind"] == "json_stream":
                return Response(json.dumps(reply), media_type="application/json")

            def gen():
                yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': 'part'}}]})}\n\n"
                if s["kind"] == "cut":
                    return
                if s["kind"] == "error_event":
                    yield 'data: {"error": {"message": "boom"}}\n\n'
                    return
                yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
                if usage is not None:
                    yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(gen(), media_type="text/event-stream")

        return app


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, "sk-test-not-a-real-key")
    up = Programmable()
    log = tmp_path_factory.mktemp("fx") / "l.jsonl"
    with ServerThread(up.app()) as u:
        router = Router(FakeEstimator(make_pool(u.url + "/v1")), log_path=log)
        app = create_app(router, timeout=5.0, max_retries=0, limits=Limits(turn_deadline=10.0, max_turns=50))
        with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=httpx.Timeout(30.0)) as http:
            yield http, up, log, {"n": 0, "acked": []}
    mp.undo()


def check(r: httpx.Response) -> None:
    assert r.status_code < 500 or r.status_code in UPSTREAM_FAULTS, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]


@FUZZ
@given(turns=st.lists(st.tuples(requests, replies), min_size=1, max_size=3), budget=st.sampled_from([0.003, 0.05, 0.5]))
def test_hostile_exchanges_keep_the_budget_and_every_acknowledged_finish(world, turns, budget):
    http, up, log, state = world
    state["n"] += 1
    cid = f"fx-{state['n']}"
    msgs = [{"role": "system", "content": "agent"}, {"role": "user", "content": "task"}]
    for req, reply in turns:
        up.spec = reply
        body: dict = {"model": f"mtrouter-{budget}", "messages": msgs + [{"role": "user", "content": req["content"]}]}
        if req["stream"]:
            body["stream"] = True
            body["stream_options"] = {"include_usage": req["include_usage"]}
        if req["limit"]:
            body[req["limit"]] = req["limit_value"]
        if req["n"] is not None:
            body["n"] = req["n"]
        if req["tools_kb"]:
            body["tools"] = [{"type": "function", "function": {"name": "t", "description": "d" * 1024 * req["tools_kb"]}}]
        if req["rewrite_kb"]:
            body["messages"][0] = {"role": "system", "content": "r" * 1024 * req["rewrite_kb"]}
        r = http.post("/v1/chat/completions", json=body, headers={"X-MTRouter-Conversation": cid})
        check(r)
        if r.status_code == 200 and not req["stream"]:
            msgs = body["messages"] + [r.json()["choices"][0]["message"]]
        if r.status_code == 402:
            break
    r = http.post(f"/v1/mtrouter/conversations/{cid}/finish", json={"score": 0.5, "score_range": [0, 1]})
    check(r)
    assert r.status_code in (200, 404), r.text
    if r.status_code == 200 and r.json()["logged"]:
        state["acked"].append(cid)
    eps = {e.episode_id: e for e in read_episodes(log)}
    assert set(state["acked"]) <= set(eps)  # every acknowledged finish is on disk
    ep = eps.get(cid)
    if ep is not None:
        over = sum(t.cost for t in ep.turns if (t.meta or {}).get("usage_flag") == "over_cap")
        assert math.isfinite(ep.total_cost) and ep.total_cost >= 0
        assert ep.total_cost <= budget + over + 1e-9, [(t.cost, t.meta) for t in ep.turns]

