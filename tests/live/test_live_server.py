"""The OpenAI-compatible proxy over real loopback HTTP, driven by the official ``openai`` client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from testing.live import KEY_ENV, MODELS, FakeEstimator, ServerThread, make_pool
from testing.fixtures import fake_api_key, upstream  # noqa: F401  (fixtures)
from mtrouter_jax.live.backends import BackendConfigError, Backends
from mtrouter_jax.live.router import PoolMismatchError, Router
from mtrouter_jax.live.server.app import create_app
from mtrouter_jax.logs.io import read_episodes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOOLS_SPEC = [{"type": "function", "function": {
    "name": "web_search", "description": "Search — the wéb",
    "parameters": {"type": "object", "properties": {
        "q": {"type": "string", "minLength": 1},
        "filters": {"type": "object", "properties": {
            "site": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "range": {"type": "array", "items": {"type": "object", "properties": {
                "from": {"type": "integer"}, "to": {"type": "integer", "maximum": 10 ** 9}},
                "required": ["from"], "additionalProperties": False}}},
            "$defs": {"x": {"const": [1, 2.5, None, True]}}}},
        "required": ["q"], "additionalProperties": False}, "strict": True}},
    {"type": "function", "function": {"name": "python", "parameters": {
        "type": "object", "properties": {"code": {"type": "string"}}}}}]


@pytest.fixture
def proxy(upstream, tmp_path):
    """Factory: start a proxy (fresh router + log) on loopback; returns (base_url, router, log)."""
    started = []

    def make(token=None, timeout=5.0, **router_kw):
        upstream.fail.clear()
        pool = make_pool(upstream.url + "/v1")
        log = tmp_path / f"live{len(started)}.jsonl"
        router = Router(FakeEstimator(pool), log_path=log, **router_kw)
        app = create_app(router, token=token, timeout=timeout, max_retries=0)
        srv = ServerThread(app).__enter__()
        started.append(srv)
        return srv.url, router, log

    yield make
    for s in started:
        s.__exit__(None, None, None)


def client(url, token="unused", **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=token, timeout=10.0, max_retries=0, **kw)


def tool_result(i, name):
    if i % 5 == 3:
        return "Traceback (most recent call last):\n  File \"x.py\"\nZeroDivisionError: division by zero"
    return f"result of {name} #{i}"


def test_twenty_turn_tool_conversation(proxy, upstream):
    url, router, log = proxy()
    c = client(url)
    budget = 0.5
    msgs = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "Solve task 1"}]
    seen, spent_prev, errors = [], 0.0, 0
    for i in range(20):
        raw = c.chat.completions.with_raw_response.create(
            model=f"mtrouter-{budget}", messages=msgs, tools=TOOLS_SPEC,
            extra_headers={"X-MTRouter-Conversation": "conv-20"})
        r = raw.parse()
        h = raw.headers
        assert r.model in MODELS and h["x-mtrouter-model"] == r.model
        spent = float(h["x-mtrouter-spent"])
        assert spent_prev < spent <= budget
        assert float(h["x-mtrouter-remaining"]) == pytest.approx(budget - spent, abs=1e-7)
        assert float(h["x-mtrouter-overhead-ms"]) >= 0
        spent_prev = spent
        seen.append(r.model)
        m = r.choices[0].message
        msgs.append(m.model_dump(exclude_none=True))
        for tc in m.tool_calls or []:
            msgs.append({"role": "tool", "tool_call_id": tc.id, "content": tool_result(i, tc.function.name)})
            errors += "Traceback" in msgs[-1]["content"] and i < 19  # the last result is never sent
        if not m.tool_calls:
            msgs.append({"role": "user", "content": "continue"})
    info = httpx.get(f"{url}/v1/mtrouter/conversations/conv-20").json()
    assert info["turns"] == 20 and info["models"] == seen and info["errors"] == errors >= 2
    done = httpx.post(f"{url}/v1/mtrouter/conversations/conv-20/finish",
                      json={"score": 35.0, "score_range": [-100, 100]}).json()
    assert done["logged"] and done["finished"]
    (ep,) = read_episodes(log)
    assert ep.episode_id == "conv-20" and ep.source == "live" and ep.budget == budget
    assert len(ep.turns) == 20 and [t.model for t in ep.turns] == seen
    assert ep.score == 35.0 and ep.score_range == (-100.0, 100.0)
    assert ep.total_cost == pytest.approx(spent_prev) and ep.total_cost <= budget
    assert all(t.propensity == 1.0 and t.observation is None for t in ep.turns)
    assert sum(t.error is not None for t in ep.turns) == errors
    assert any(t.cached_tokens > 0 for t in ep.turns)
    # tool types flow through ToolTypeMap; the fake estimator then prefers cheap after search
    # (web_search, browse_page -> search alias) and mid after python/bash.
    tools = [t.tool for t in ep.turns]
    assert tools[:7] == ["search", "python", "python", "file", "reasoning", "browse", "bash"]
    for prev, cur in zip(tools, seen[1:]):
        want = {"search": "cheap", "browse": "cheap", "file": "cheap", "python": "mid", "bash": "mid"}
        assert cur == want.get(prev, "strong")
    # the provider's usage.cost (123.0) is ignored: costs come from the pool's prices
    assert all(t.cost < 1 for t in ep.turns)
    # conversation is closed: GET still shows it from the finished list
    assert httpx.get(f"{url}/v1/mtrouter/conversations/conv-20").json()["finished"]


def test_budget_never_exceeded_then_402(proxy, upstream):
    url, router, log = proxy()
    upstream.natural_tokens = 5000  # far beyond output_tokens_hi: only the completion cap saves the budget
    try:
        c = client(url)
        n0 = len(upstream.requests)
        msgs = [{"role": "user", "content": "budget task " + "x" * 400}]
        budget, spent, got_402 = 0.004, 0.0, False
        for _ in range(60):
            try:
                raw = c.chat.completions.with_raw_response.create(
                    model="mtrouter", messages=msgs, extra_headers={"X-MTRouter-Budget": str(budget)})
            except openai.APIStatusError as e:
                assert e.status_code == 402
                assert "budget exhausted" in e.message and e.body["code"] == "budget_exhausted"
                got_402 = True
                break
            spent = float(raw.headers["x-mtrouter-spent"])
            assert spent <= budget
            msgs += [raw.parse().choices[0].message.model_dump(exclude_none=True),
                     {"role": "user", "content": "go on"}]
        assert got_402
        caps = [r.get("max_tokens") for r in upstream.requests[n0:]]
        assert all(caps) and min(caps) < 5000  # every call capped; the last ones below the natural length
        ep = read_episodes(log) if log.exists() else []
        assert not ep  # not finished yet
        cid = raw.headers["x-mtrouter-conversation"]
        assert cid.startswith("h-")  # derived from the first messages
        httpx.post(f"{url}/v1/mtrouter/conversations/{cid}/finish")
        (ep,) = read_episodes(log)
        assert ep.total_cost <= budget and ep.score is None and "budget exhausted" in ep.meta["ended"]
    finally:
        upstream.natural_tokens = 120


def test_streaming(proxy, upstream):
    url, router, log = proxy()
    c = client(url)
    msgs = [{"role": "user", "content": "stream please"}]
    with c.chat.completions.with_streaming_response.create(
            model="mtrouter", messages=msgs, stream=True,
            extra_headers={"X-MTRouter-Conversation": "s1"}) as resp:
        model = resp.headers["x-mtrouter-model"]
        chunks = list(resp.parse())
    assert model in MODELS and all(ch.model == model for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip() == f"answer 0 from fake-{model}"
    assert all(ch.usage is None for ch in chunks)  # client did not ask for usage
    # with tools + include_usage
    stream = c.chat.completions.create(model="mtrouter", messages=msgs, tools=TOOLS_SPEC, stream=True,
                                       stream_options={"include_usage": True},
                                       extra_headers={"X-MTRouter-Conversation": "s2"})
    chunks = list(stream)
    names = [tc.function.name for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []
             if tc.function and tc.function.name]
    assert names == ["web_search"] and chunks[-1].usage.prompt_tokens > 0
    for cid in ("s1", "s2"):
        info = httpx.get(f"{url}/v1/mtrouter/conversations/{cid}").json()
        assert info["turns"] == 1 and info["spent"] > 0
    httpx.post(f"{url}/v1/mtrouter/conversations/s2/finish", json={"score": 1, "score_range": [0, 1]})
    (ep,) = read_episodes(log)
    assert ep.turns[0].tool == "search" and ep.turns[0].output_tokens == 120


def test_nested_tool_schema_and_fields_pass_through(proxy, upstream):
    url, router, log = proxy()
    c = client(url)
    n0 = len(upstream.requests)
    c.chat.completions.create(model="mtrouter", messages=[{"role": "user", "content": "schema"}],
                              tools=TOOLS_SPEC, tool_choice="auto", temperature=0.3, seed=7,
                              response_format={"type": "json_object"}, extra_body={"top_k": 5, "x_custom": {"a": [1]}})
    (body,) = upstream.requests[n0:]
    compact = lambda x: json.dumps(x, ensure_ascii=False, separators=(",", ":"))  # noqa: E731
    assert compact(body["tools"]) == compact(TOOLS_SPEC)  # same bytes, key order included
    assert compact(TOOLS_SPEC).encode() in upstream.raw_bodies[n0].replace(b", ", b",").replace(b": ", b":")
    assert body["tool_choice"] == "auto" and body["temperature"] == 0.3 and body["seed"] == 7
    assert body["response_format"] == {"type": "json_object"} and body["top_k"] == 5
    assert body["x_custom"] == {"a": [1]} and body["model"].startswith("fake-")


@pytest.mark.parametrize("failure", ["500", "429", "timeout"])
def test_fallback_on_upstream_failure(proxy, upstream, failure):
    url, router, log = proxy(timeout=0.5)
    c = client(url)
    upstream.fail["fake-strong"] = [failure]  # the first turn's preferred model
    raw = c.chat.completions.with_raw_response.create(
        model="mtrouter", messages=[{"role": "user", "content": f"fallback {failure}"}],
        extra_headers={"X-MTRouter-Conversation": f"fb-{failure}"})
    kind = "timeout" if failure == "timeout" else f"http_{failure}"
    assert raw.headers["x-mtrouter-fallbacks"] == f"strong:{kind}"
    assert raw.parse().model == raw.headers["x-mtrouter-model"] != "strong"
    httpx.post(f"{url}/v1/mtrouter/conversations/fb-{failure}/finish", json={"score": 0.5, "score_range": [0, 1]})
    (ep,) = read_episodes(log)
    # the fallback is a fresh draw with the failed model excluded: its propensity is conditional on that
    assert ep.turns[0].meta == {"fallbacks": [{"model": "strong", "error": kind}], "fallback_for": ["strong"],
                                "allowed": ["cheap", "mid"]}
    assert ep.turns[0].propensity == 1.0


def test_all_upstreams_fail_is_502_and_turn_not_billed(proxy, upstream):
    url, router, log = proxy()
    for m in MODELS:
        upstream.fail[f"fake-{m}"] = ["500"]
    with pytest.raises(openai.APIStatusError) as ei:
        client(url).chat.completions.create(model="mtrouter", messages=[{"role": "user", "content": "all fail"}],
                                            extra_headers={"X-MTRouter-Conversation": "dead"})
    assert ei.value.status_code == 502 and "all upstream models failed" in ei.value.message
    assert httpx.get(f"{url}/v1/mtrouter/conversations/dead").json()["turns"] == 0


def test_passthrough_models_and_listing(proxy, upstream):
    url, router, log = proxy()
    c = client(url)
    r = c.chat.completions.with_raw_response.create(
        model="cheap", messages=[{"role": "user", "content": "direct"}],
        extra_headers={"X-MTRouter-Conversation": "direct"})
    assert r.parse().model == "cheap" and float(r.headers["x-mtrouter-spent"]) > 0
    assert httpx.get(f"{url}/v1/mtrouter/conversations/direct").json()["models"] == ["cheap"]
    ids = [m.id for m in c.models.list()]
    assert ids[:2] == ["mtrouter", "mtrouter-0.50"] and set(MODELS) <= set(ids)


def test_bad_inputs(proxy, upstream):
    url, router, log = proxy()
    c = client(url)
    msgs = [{"role": "user", "content": "bad"}]
    with pytest.raises(openai.NotFoundError) as ei:
        c.chat.completions.create(model="gpt-42", messages=msgs)
    assert "gpt-42" in ei.value.message and ei.value.body["code"] == "model_not_found"
    for model, hdr in [("mtrouter-0", {}), ("mtrouter--1", {}), ("mtrouter-abc", {}),
                       ("mtrouter", {"X-MTRouter-Budget": "0"}), ("mtrouter", {"X-MTRouter-Budget": "nan"})]:
        with pytest.raises(openai.BadRequestError) as ei:
            c.chat.completions.create(model=model, messages=msgs, extra_headers=hdr)
        assert "budget" in ei.value.message
    r = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    for body in ({"model": "mtrouter"}, {"model": "mtrouter", "messages": []},
                 {"model": "mtrouter", "messages": [{"content": "no role"}]}, [1, 2]):
        r = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{url}/v1/mtrouter/conversations/none/finish", json={})
    assert r.status_code == 404
    assert httpx.get(f"{url}/v1/mtrouter/conversations/none").status_code == 404


def test_bearer_token(proxy, upstream):
    url, router, log = proxy(token="s3cret")
    msgs = [{"role": "user", "content": "auth"}]
    with pytest.raises(openai.AuthenticationError):
        client(url, token="wrong").chat.completions.create(model="mtrouter", messages=msgs)
    assert httpx.get(f"{url}/v1/models").status_code == 401
    r = client(url, token="s3cret").chat.completions.create(model="mtrouter", messages=msgs)
    assert r.model in MODELS


def test_missing_api_key_env_is_a_startup_error(monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    router = Router(FakeEstimator(make_pool()))
    with pytest.raises(BackendConfigError, match=f"'cheap'.*{KEY_ENV}"):
        create_app(router)
    assert set(Backends(router.pool, allow_missing_keys=True).clients) == set(MODELS)
    assert set(Backends(make_pool(key_env=None)).clients) == set(MODELS)  # no key needed


def test_pool_mismatch_is_refused():
    est = FakeEstimator(make_pool())
    with pytest.raises(PoolMismatchError, match="missing from the pool: \\['strong'\\]"):
        Router(est, pool=make_pool(names=("cheap", "mid")))
    with pytest.raises(PoolMismatchError, match="different order"):
        Router(est, pool=make_pool(names=("mid", "cheap", "strong")))
    r = Router(est, pool=make_pool(scale=2.0))  # same names, new prices: accounting uses them
    assert r.turn_cost("mid", 1000, 0, 0) == pytest.approx(2 * 1000 * 1.0 / 1e6)


# ----------------------------------------------------------------------------- checkpoint-free routers, exploration

@pytest.fixture
def free_proxy(upstream, tmp_path):
    """Factory: a proxy with no checkpoint (``router_from_options``, as ``mtrouter serve`` builds it)."""
    from mtrouter_jax.live.router import router_from_options as build_router

    started = []

    def make(**kw):
        upstream.fail.clear()
        log = tmp_path / f"free{len(started)}.jsonl"
        router = build_router(pool=make_pool(upstream.url + "/v1"), log_path=log, **kw)
        srv = ServerThread(create_app(router, timeout=5.0, max_retries=0)).__enter__()
        started.append(srv)
        return srv.url, router, log

    yield make
    for s in started:
        s.__exit__(None, None, None)


def test_heuristic_with_sticky_exploration_no_checkpoint_twenty_turns(free_proxy):
    url, router, log = free_proxy(router="tool-heuristic", explore="sticky:0.9")
    ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
    assert {"mtrouter", "mtrouter-explore", "mtrouter-explore-0.50", "mtrouter-greedy"} <= set(ids)
    info = httpx.get(f"{url}/v1/mtrouter/router").json()
    assert info["policy"] == "tool-heuristic" and info["explore"] == "sticky:0.9"
    assert info["tool_mapping"]["web_search"] == "search" and info["checkpoint"] is None
    c = client(url)
    msgs = [{"role": "user", "content": "explore twenty turns"}]
    for i in range(20):
        r = c.chat.completions.create(model="mtrouter-explore", messages=msgs, tools=TOOLS_SPEC,
                                      extra_headers={"X-MTRouter-Conversation": "explore-20", "X-MTRouter-Seed": "5"})
        m = r.choices[0].message
        msgs.append(m.model_dump(exclude_none=True))
        for tc in m.tool_calls or []:
            msgs.append({"role": "tool", "tool_call_id": tc.id, "content": tool_result(i, tc.function.name)})
    httpx.post(f"{url}/v1/mtrouter/conversations/explore-20/finish", json={"score": 1.0, "score_range": [0, 1]})
    (ep,) = read_episodes(log)
    assert len(ep.turns) == 20 and ep.meta["seed"] == 5 and ep.meta["explore"]
    assert all(0 < t.propensity <= 1 for t in ep.turns)
    assert any(t.propensity < 1 for t in ep.turns)  # stochastic choices were made and logged as such
    for t in ep.turns:
        if t.meta and "probs" in t.meta:
            assert t.meta["probs"][router.pool.index(t.model)] == pytest.approx(t.propensity, abs=1e-6)


def test_tight_budget_under_exploration_is_never_exceeded(free_proxy):
    url, router, log = free_proxy(router="tool-heuristic", explore="sticky:0.5:0.5")
    c = client(url)
    budget, spent = 0.02, []
    msgs = [{"role": "user", "content": "tight"}]
    with pytest.raises(openai.APIStatusError) as ei:
        for _ in range(200):
            raw = c.chat.completions.with_raw_response.create(
                model=f"mtrouter-explore-{budget}", messages=msgs, tools=TOOLS_SPEC,
                extra_headers={"X-MTRouter-Conversation": "tight-explore"})
            spent.append(float(raw.headers["x-mtrouter-spent"]))
            m = raw.parse().choices[0].message
            msgs.append(m.model_dump(exclude_none=True))
            for tc in m.tool_calls or []:
                msgs.append({"role": "tool", "tool_call_id": tc.id, "content": "ok"})
    assert ei.value.status_code == 402 and spent and max(spent) <= budget
    httpx.post(f"{url}/v1/mtrouter/conversations/tight-explore/finish")
    (ep,) = read_episodes(log)
    assert ep.total_cost <= budget and ep.score is None
    for t in ep.turns:  # every explored model was among the allowed ones
        assert t.model in (t.meta or {}).get("allowed", router.pool.names)


@pytest.mark.parametrize("model,headers,status,code", [
    ("mtrouter-explore", {}, 400, "explore_not_configured"),
    ("mtrouter", {"X-MTRouter-Explore": "maybe"}, 400, None),
    ("mtrouter", {"X-MTRouter-Seed": "-3"}, 400, None),
    ("mtrouter-explore-abc", {}, 400, "invalid_budget"),
    ("mtrouterx", {}, 404, "model_not_found"),
])
def test_bad_routing_requests_are_4xx_in_openai_shape(free_proxy, model, headers, status, code):
    url, _, _ = free_proxy(router="fixed:mid")
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "x"}]},
                   headers=headers)
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code


@pytest.mark.parametrize("argv,flag", [
    (["--router", "learned"], "--checkpoint"), (["--router", "frobnicate"], "--router"),
    (["--explore", "sticky:2"], "--explore"), (["--explore", "beta:-1"], "--explore"),
    (["--router", "fixed:nope"], "--router"), (["--router", "error-escalation:cheap,cheap"], "--router"),
    (["--tool-map", "BAD_MAP"], "--tool-map"), (["--tool-map", "MISSING"], "--tool-map"),
])
def test_serve_bad_options_exit_2_naming_the_flag(argv, flag, tmp_path, capsys):
    from mtrouter_jax import cli
    bad_map = tmp_path / "map.toml"
    bad_map.write_text('[tools]\nsearch = "claude"\n')
    pool = tmp_path / "pool.toml"
    pool.write_text('[[model]]\nname = "cheap"\nprice_input = 1\nprice_output = 2\n'
                    '[[model]]\nname = "mid"\nprice_input = 2\nprice_output = 4\n')
    argv = [str(bad_map) if a == "BAD_MAP" else str(tmp_path / "nope.toml") if a == "MISSING" else a for a in argv]
    assert cli.main(["serve", "--pool", str(pool), *argv]) == 2
    err = capsys.readouterr().err
    assert flag in err and "error" in err
