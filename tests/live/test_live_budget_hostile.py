"""The budget guarantee against hostile clients and upstreams (issue 18): multipliers refused, the input
bound from the whole request as sent, one completion-limit field, usage never trusted blindly, λ in
float32, the bearer scheme, lone surrogates and cut streams."""

from __future__ import annotations

import json
import logging
import math

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testing.live import KEY_ENV, FakeEstimator, FakeUpstream, ServerThread, make_pool
from mtrouter_jax.live.accounting import input_tokens_bound
from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server.app import create_app
from mtrouter_jax.logs.io import read_episodes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


class Hostile:
    """An upstream that reads ``max_tokens`` first (as some servers do), talks as long as it is allowed
    (``natural`` tokens), and whose reply or stream a test can replace."""

    def __init__(self, natural: int = 5000):
        self.fake = FakeUpstream(natural_tokens=natural, record=False)
        self.natural = natural
        self.requests: list[dict] = []
        self.reply = None  # body -> JSON-able reply (NaN allowed) or a Response
        self.stream = None  # body -> iterable of SSE strings

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = json.loads(await request.body())
            self.requests.append(body)
            if body.get("stream") and self.stream is not None:
                return StreamingResponse(self.stream(body), media_type="text/event-stream")
            if self.reply is not None:
                out = self.reply(body)
                return out if isinstance(out, Response) else Response(json.dumps(out), media_type="application/json")
            msg, usage = self.fake.response_for(body)
            limit = next((body[f] for f in LIMITS if body.get(f) is not None), None)  # max_tokens first
            usage["completion_tokens"] = self.natural if limit is None else min(int(limit), self.natural)
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}], "usage": usage}

        return app


@pytest.fixture(scope="module")
def hostile():
    h = Hostile()
    with ServerThread(h.app()) as srv:
        h.url = srv.url
        yield h


@pytest.fixture
def proxy(hostile, tmp_path, monkeypatch):
    """Factory: a proxy over the hostile upstream; returns (httpx client, app)."""
    monkeypatch.setenv(KEY_ENV, "sk-test-not-a-real-key")
    hostile.reply = hostile.stream = None
    hostile.natural = 5000
    opened = []

    def make(token=None):
        router = Router(FakeEstimator(make_pool(hostile.url + "/v1")), log_path=tmp_path / f"l{len(opened)}.jsonl")
        app = create_app(router, token=token, timeout=5.0, max_retries=0)
        srv = ServerThread(app).__enter__()
        http = httpx.Client(base_url=srv.url, timeout=20.0)
        opened.append((srv, http))
        return http, app

    yield make
    for srv, http in opened:
        http.close()
        srv.__exit__(None, None, None)


def chat(http, body, cid, budget=None, **headers):
    hdr = {"X-MTRouter-Conversation": cid, **headers}
    if budget is not None:
        hdr["X-MTRouter-Budget"] = str(budget)
    return http.post("/v1/chat/completions", json={"model": "mtrouter", **body}, headers=hdr)


def episode(app, cid):
    return app.state.proxy.store.get(cid).episode


def worst_case(router, model, sent: dict) -> float:
    """USD of a turn at the bound of the request as sent and its completion limit, no cache hit."""
    extra = {k: sent[k] for k in ("tools", "functions", "tool_choice", "response_format") if sent.get(k) is not None}
    limit = next((sent[f] for f in LIMITS if f in sent), None)
    most = int(router.max_output[router.pool.index(model)])  # no cap is sent when the model's own limit fits
    limit = most if limit is None else min(limit, most)
    return router.turn_cost(model, input_tokens_bound(sent["messages"], extra or None), 0, limit)


def assert_error(r, status, code=None):
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    return err


# ------------------------------------------------------------------------------------------------ 1. n

@pytest.mark.parametrize("field,value", [("n", 8), ("n", 2), ("n", 0), ("n", "1"), ("n", True), ("best_of", 3)])
def test_choice_multipliers_are_refused(proxy, hostile, field, value):
    http, app = proxy()
    n0 = len(hostile.requests)
    r = chat(http, {"messages": [{"role": "user", "content": "many"}], field: value}, f"n-{field}-{value}", 1.0)
    err = assert_error(r, 400, "unsupported_parameter")
    assert err["param"] == field and "only 1" in err["message"]
    assert len(hostile.requests) == n0  # nothing went upstream
    ok = chat(http, {"messages": [{"role": "user", "content": "one"}], "n": 1}, "n-one", 1.0)
    assert ok.status_code == 200 and hostile.requests[-1]["n"] == 1


# ------------------------------------------------------------------------------------------------ 2. input bound

def test_rewritten_history_is_bounded_by_the_request_as_sent(proxy, hostile):
    http, app = proxy()
    router = app.state.proxy.router
    budget, cid = 0.05, "rewrite"
    msgs = [{"role": "user", "content": "start"}]
    statuses = []
    for i in range(12):
        msgs[0] = {"role": "user", "content": "start " + "é" * (20_000 * i)}  # the first turn, rewritten bigger
        ep_spent = episode(app, cid).spent if app.state.proxy.store.get(cid) else 0.0
        r = chat(http, {"messages": msgs, "max_tokens": 100_000}, cid, budget)
        statuses.append(r.status_code)
        if r.status_code == 402:
            break
        assert r.status_code == 200, r.text
        sent, model = hostile.requests[-1], r.headers["x-mtrouter-model"]
        assert ep_spent + worst_case(router, model, sent) <= budget + 1e-12
        assert float(r.headers["x-mtrouter-spent"]) <= budget
        msgs += [r.json()["choices"][0]["message"], {"role": "user", "content": "go on"}]
    assert 402 in statuses and episode(app, cid).spent <= budget


def test_tools_added_later_count_in_the_bound(proxy, hostile):
    http, app = proxy()
    router = app.state.proxy.router
    cid = "big-tools"
    tools = [{"type": "function", "function": {"name": f"t{i}", "description": "d" * 2000,
                                               "parameters": {"type": "object"}}} for i in range(100)]  # ~200 KB
    tools_usd = router.turn_cost("cheap", input_tokens_bound([], tools), 0, 0)
    budget = 0.001 + tools_usd + 2000 * router.turn_cost("cheap", 0, 0, 1)  # the tools leave room for ~2000 tokens
    msgs = [{"role": "user", "content": "tools later"}]
    r = chat(http, {"model": "cheap", "messages": msgs, "max_tokens": 10}, cid, budget)
    assert r.status_code == 200
    msgs += [r.json()["choices"][0]["message"], {"role": "user", "content": "now with tools"}]
    spent = episode(app, cid).spent
    r = chat(http, {"model": "cheap", "messages": msgs, "tools": tools}, cid, budget)
    assert r.status_code == 200, r.text
    sent = hostile.requests[-1]
    assert sent["max_tokens"] < 16_000  # the tools shrank the cap
    assert spent + worst_case(router, "cheap", sent) <= budget + 1e-12
    assert episode(app, cid).spent <= budget


# ------------------------------------------------------------------------------------------------ 3. one limit field

@pytest.mark.parametrize("client", [{"max_tokens": 131_000}, {"max_tokens": 131_000, "max_completion_tokens": 90_000},
                                    {"max_output_tokens": 120_000}, {"max_completion_tokens": 7, "max_tokens": 50}])
def test_completion_limits_go_out_as_one_field_the_min(proxy, hostile, client):
    http, app = proxy()
    router = app.state.proxy.router
    cid = "limits-" + "-".join(f"{k}{v}" for k, v in client.items())
    r = chat(http, {"messages": [{"role": "user", "content": "limits"}], **client}, cid, 0.001)
    assert r.status_code == 200, r.text
    sent = hostile.requests[-1]
    present = [f for f in LIMITS if f in sent]
    assert len(present) == 1
    ep = episode(app, cid)
    cap = ep.turns[-1].output_tokens  # the upstream talks as long as allowed
    assert sent[present[0]] == cap <= min(client.values())
    assert ep.spent <= 0.001 and worst_case(router, ep.turns[-1].model, sent) <= 0.001 + 1e-12
    if min(client.values()) == 7:
        assert sent == {**sent, "max_completion_tokens": 7} and "max_tokens" not in sent


# ------------------------------------------------------------------------------------------------ 4. usage

def _reply(usage=..., content="ok"):
    def reply(body):
        out = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
               "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
        if usage is not ...:
            out["usage"] = usage
        return out
    return reply


def _metric(http, reason) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f'mtrouter_usage_flags_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no usage flag series for {reason}")


@pytest.mark.parametrize("usage,flag", [
    (..., "missing"), (None, "missing"), ({}, "missing"), ({"prompt_tokens": 10}, "missing"),
    ({"prompt_tokens": -5, "completion_tokens": 3}, "invalid"),
    ({"prompt_tokens": float("nan"), "completion_tokens": 3}, "invalid"),
    ({"prompt_tokens": 10, "completion_tokens": float("inf")}, "invalid"),
    ({"prompt_tokens": "10", "completion_tokens": 3}, "invalid"),
    ({"prompt_tokens": 10, "completion_tokens": [3]}, "invalid"),
    ({"prompt_tokens": True, "completion_tokens": 3}, "invalid"),
    ({"prompt_tokens": 10**400, "completion_tokens": 3}, "invalid"),
    ("lots", "invalid"), (42, "invalid"), ([1, 2], "invalid"),
])
def test_missing_or_invalid_usage_is_billed_at_the_worst_case_and_flagged(proxy, hostile, usage, flag):
    http, app = proxy()
    router = app.state.proxy.router
    hostile.reply = _reply(usage)
    cid = "usage"
    r = chat(http, {"messages": [{"role": "user", "content": "bill me"}]}, cid, 0.05)
    assert r.status_code == 200, r.text
    ep = episode(app, cid)
    (turn,) = ep.turns
    assert turn.meta["usage_flag"] == flag and turn.meta["usage_estimated"]
    sent = hostile.requests[-1]
    if flag == "missing" and isinstance(usage, dict) and usage.get("prompt_tokens") == 10:
        assert turn.input_tokens == 10  # the readable count is kept; only the unreadable one is estimated
    else:
        assert turn.cost == pytest.approx(worst_case(router, turn.model, sent)) and turn.cost > 0
    assert ep.spent <= 0.05 and float(r.headers["x-mtrouter-turn-cost"]) == pytest.approx(turn.cost, abs=1e-8)
    assert _metric(http, flag) == 1.0


def test_invalid_cached_tokens_bill_no_cache_hit(proxy, hostile):
    http, app = proxy()
    hostile.reply = _reply({"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": -7}})
    r = chat(http, {"messages": [{"role": "user", "content": "cache"}]}, "cached", 0.05)
    assert r.status_code == 200
    (turn,) = episode(app, "cached").turns
    assert (turn.input_tokens, turn.cached_tokens, turn.output_tokens) == (10, 0, 5)
    assert turn.meta["usage_flag"] == "invalid"


def test_usage_above_the_cap_is_billed_as_reported_flagged_and_ends_the_budget(proxy, hostile):
    http, app = proxy()
    hostile.reply = _reply({"prompt_tokens": 50, "completion_tokens": 2_000_000})
    budget, cid = 0.01, "over"
    r = chat(http, {"messages": [{"role": "user", "content": "overspend"}]}, cid, budget)
    assert r.status_code == 200, r.text
    ep = episode(app, cid)
    (turn,) = ep.turns
    assert turn.output_tokens == 2_000_000 and turn.meta["usage_flag"] == "over_cap"
    assert ep.spent > budget and ep.remaining == 0 and r.headers["x-mtrouter-remaining"] == "0.00000000"
    assert _metric(http, "over_cap") == 1.0
    assert_error(chat(http, {"messages": [{"role": "user", "content": "more"}]}, cid, budget), 402, "budget_exhausted")


@pytest.mark.parametrize("body", [[1, 2], "a string", None, 3.5, True])
def test_a_reply_that_is_not_an_object_is_502_and_billed_once(proxy, hostile, body):
    http, app = proxy()
    hostile.reply = lambda b: body
    cid = "not-object"
    err = assert_error(chat(http, {"messages": [{"role": "user", "content": "x"}]}, cid, 0.05), 502, "bad_response")
    assert err["type"] == "upstream_error"
    ep = episode(app, cid)
    assert len(ep.turns) == 1 and ep.turns[0].meta["usage_flag"] == "invalid" and ep.turns[0].cost > 0
    hostile.reply = None  # the conversation goes on
    assert chat(http, {"messages": [{"role": "user", "content": "x"}]}, cid, 0.05).status_code == 200
    assert len(ep.turns) == 2
    assert http.post(f"/v1/mtrouter/conversations/{cid}/finish", json={"score": 1, "score_range": [0, 1]}).status_code == 200
    (logged,) = read_episodes(app.state.proxy.router.log_path)
    assert logged.turns[0].meta["usage_flag"] == "invalid" and logged.total_cost <= 0.05


def test_a_reply_nested_too_deeply_is_a_502_not_a_500(proxy, hostile):
    http, app = proxy()
    deep = b'{"choices": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    hostile.reply = lambda b: Response(deep, media_type="application/json")
    err = assert_error(chat(http, {"messages": [{"role": "user", "content": "deep"}]}, "deep", 0.05), 502)
    assert err["type"] == "upstream_error"


# ------------------------------------------------------------------------------------------------ 5. λ in float32

@pytest.mark.parametrize("lam,status", [("1e39", 400), ("3.5e38", 400), ("-1", 400), ("nan", 400), ("1e308", 400),
                                        ("3e38", 200), ("0", 200), ("0.5", 200)])
def test_lambda_header_is_validated_in_float32(proxy, hostile, lam, status):
    http, app = proxy()
    r = chat(http, {"messages": [{"role": "user", "content": "lam"}]}, f"lam-{lam}", None, **{"X-MTRouter-Lambda": lam})
    if status == 400:
        assert "X-MTRouter-Lambda" in assert_error(r, 400, "invalid_lambda")["message"]
    else:
        assert r.status_code == 200, r.text


def test_episode_refuses_a_lambda_that_is_inf_in_float32():
    router = Router(FakeEstimator(make_pool()))
    with pytest.raises(ValueError, match="float32"):
        router.start_episode("big-lam", lam=1e39)
    ep = router.start_episode("ok-lam", lam=0.5)
    with pytest.raises(ValueError, match="float32"):
        ep.decide(input_tokens_hi=100, lam=1e39)


# ------------------------------------------------------------------------------------------------ 6. bearer

def test_bearer_scheme_is_case_insensitive_and_the_compare_constant_time(proxy, hostile, monkeypatch):
    import hmac

    from mtrouter_jax.live.server import tenancy as app_mod

    calls, real = [], hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(app_mod.hmac, "compare_digest", spy)
    http, _ = proxy(token="s3cret")
    for auth, ok in [("Bearer s3cret", True), ("bearer s3cret", True), ("BEARER s3cret", True),
                     ("Bearer  s3cret", True), ("Bearer wrong", False), ("s3cret", False), ("Basic s3cret", False),
                     ("Bearer s3cre", False), ("Bearer s3crett", False), ("", False)]:
        r = http.get("/v1/models", headers={"Authorization": auth} if auth else {})
        assert r.status_code == (200 if ok else 401), auth
    assert calls and all(b == b"s3cret" for _, b in calls)


# ------------------------------------------------------------------------------------------------ 7. surrogates, cut streams

def test_a_lone_surrogate_is_a_400_and_a_pair_is_fine(proxy, hostile):
    http, _ = proxy()
    for content, status in [(rb'"\ud800 alone"', 400), (rb'"x\udfff"', 400), (rb'"pair \ud83d\ude00"', 200)]:
        raw = b'{"model":"mtrouter","messages":[{"role":"user","content":' + content + b'}]}'
        r = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        if status == 400:
            assert "surrogate" in assert_error(r, 400)["message"]
        else:
            assert r.status_code == 200, r.text


def _chunk(body, delta, finish=None):
    return "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"


def _events(text: str) -> list:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("how", ["eof", "raise"])
def test_a_cut_stream_ends_with_an_error_event_not_done(proxy, hostile, caplog, how):
    http, app = proxy()

    def stream(body):
        yield _chunk(body, {"role": "assistant", "content": "half "})
        yield _chunk(body, {"content": "an answer"})
        if how == "raise":
            raise RuntimeError("upstream died")

    hostile.stream = stream
    cid = f"cut-{how}"
    with caplog.at_level(logging.WARNING, logger="mtrouter_jax.live"):
        r = chat(http, {"messages": [{"role": "user", "content": "stream"}], "stream": True}, cid, 0.05)
        assert r.status_code == 200
        events = _events(r.text)
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert set(last) == {"error"} and last["error"]["code"] == "stream_interrupted"
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "half "
    (turn,) = episode(app, cid).turns  # billed (worst case: no usage came), flagged
    assert turn.meta["stream_error"] and turn.meta["usage_flag"] == "missing" and turn.cost > 0
    assert any("interrupted" in rec.getMessage() for rec in caplog.records)


def test_a_complete_stream_still_ends_with_done(proxy, hostile):
    http, app = proxy()

    def stream(body):
        yield _chunk(body, {"role": "assistant", "content": "whole"}, "stop")
        yield "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "choices": [],
                                     "usage": {"prompt_tokens": 5, "completion_tokens": 1}}) + "\n\n"
        yield "data: [DONE]\n\n"

    hostile.stream = stream
    r = chat(http, {"messages": [{"role": "user", "content": "stream"}], "stream": True}, "whole", 0.05)
    events = _events(r.text)
    assert events[-1] == "[DONE]" and not any('"error"' in e for e in events)
    (turn,) = episode(app, "whole").turns
    assert "usage_flag" not in turn.meta and "stream_error" not in turn.meta


# ------------------------------------------------------------------------------------------------ fuzz

counts = st.one_of(st.integers(-10, 10**7), st.integers(10**9, 10**30), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=4), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
usages = st.one_of(
    st.none(), st.integers(), st.text(max_size=5),
    st.fixed_dictionaries({}, optional={"prompt_tokens": counts, "completion_tokens": counts,
                                        "prompt_tokens_details": st.one_of(
                                            st.none(), counts, st.fixed_dictionaries({}, optional={
                                                "cached_tokens": counts}))}))
messages = st.one_of(st.none(), st.text(max_size=5), st.fixed_dictionaries(
    {"role": st.just("assistant")}, optional={"content": st.one_of(st.none(), st.text(max_size=10), st.integers()),
                                              "tool_calls": st.one_of(st.none(), st.text(max_size=3), st.lists(
                                                  st.one_of(st.none(), st.fixed_dictionaries({"function": st.one_of(
                                                      st.none(), st.fixed_dictionaries(
                                                          {"name": st.one_of(st.none(), st.text(max_size=5))}))})),
                                                  max_size=2))}))
choices = st.one_of(st.none(), st.text(max_size=3), st.lists(st.one_of(st.none(), st.integers(), st.fixed_dictionaries(
    {}, optional={"message": messages, "delta": messages, "finish_reason": st.one_of(st.none(), st.just("stop"))})),
    max_size=2))
replies = st.one_of(
    st.fixed_dictionaries({"choices": choices}, optional={"usage": usages, "model": st.text(max_size=3)}),
    st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2))


@pytest.fixture(scope="module")
def fuzz_proxy(hostile, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, "sk-test-not-a-real-key")
    router = Router(FakeEstimator(make_pool(hostile.url + "/v1")), log_path=tmp_path_factory.mktemp("hf") / "l.jsonl")
    app = create_app(router, timeout=5.0, max_retries=0)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=20.0) as http:
        yield http, app
    mp.undo()
    hostile.reply = hostile.stream = None


FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(reply=replies, stream=st.booleans(), done=st.booleans(), turns=st.integers(1, 3),
       budget=st.sampled_from([0.0005, 0.005, 0.05]))
def test_fuzz_upstream_replies_never_break_the_proxy_or_the_budget(fuzz_proxy, hostile, reply, stream, done,
                                                                   turns, budget):
    http, app = fuzz_proxy
    hostile.reply = lambda body: reply

    def sse(body):
        chunk = dict(reply) if isinstance(reply, dict) else reply
        yield "data: " + json.dumps(chunk) + "\n\n"
        if done:
            yield "data: [DONE]\n\n"

    hostile.stream = sse
    cid = f"fz-{fuzz_proxy_counter()}"
    msgs = [{"role": "user", "content": "fuzz"}]
    for _ in range(turns):
        r = chat(http, {"messages": msgs, "stream": stream}, cid, budget)
        assert r.status_code < 500 or r.status_code == 502, (r.status_code, r.text[:300])
        if r.status_code >= 400:
            assert_error(r, r.status_code)
        elif stream:
            events = _events(r.text)
            assert events and (events[-1] == "[DONE]" or "error" in json.loads(events[-1]))
        msgs += [{"role": "assistant", "content": "a"}, {"role": "user", "content": "more"}]
    conv = app.state.proxy.store.get(cid)
    if conv is None:
        return
    ep = conv.episode
    over = sum(t.cost for t in ep.turns if t.meta.get("usage_flag") == "over_cap")
    assert math.isfinite(ep.spent) and ep.spent - over <= budget + 1e-9
    for t in ep.turns:
        assert t.input_tokens >= 0 and t.output_tokens >= 0 and 0 <= t.cached_tokens <= t.input_tokens


_counter = [0]


def fuzz_proxy_counter() -> int:
    _counter[0] += 1
    return _counter[0]


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["role", "content", "name", "tool_calls"]), _json, max_size=4),
                max_size=6), st.none() | st.lists(_json, max_size=3))
def test_input_bound_is_each_message_encoded_alone(messages, tools):
    """The bound encodes the message list once; it must equal encoding each message on its own
    (UTF-8 bytes of compact JSON + the per-message overhead), for any JSON content."""
    from mtrouter_jax.live.accounting import MSG_OVERHEAD, json_bytes
    each = sum(json_bytes(m) + MSG_OVERHEAD for m in messages) + (json_bytes(tools) if tools is not None else 0)
    assert input_tokens_bound(messages, tools) == each
    assert input_tokens_bound(tuple(messages), tools) == each
