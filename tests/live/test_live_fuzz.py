"""Hostile and malformed requests to the proxy: always an answer, never a 5xx, errors in OpenAI's shape."""

from __future__ import annotations

import json
import urllib.parse

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testing.live import KEY_ENV, FakeEstimator, FakeUpstream, ServerThread, make_pool
from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server.app import create_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, "sk-test-not-a-real-key")
    fake = FakeUpstream(record=False)
    with ServerThread(fake.app()) as up:
        router = Router(FakeEstimator(make_pool(up.url + "/v1")), log_path=tmp_path_factory.mktemp("fz") / "l.jsonl",
                        explore="eps:0.2")
        with ServerThread(create_app(router, timeout=5.0, max_retries=0, max_body_bytes=4 * 2**20)) as srv:
            with httpx.Client(base_url=srv.url, timeout=httpx.Timeout(20.0)) as http:  # a hang fails the test
                yield http
    mp.undo()


def check(r: httpx.Response) -> None:
    """Never a 5xx; every error is ``{"error": {message, type, param, code}}``."""
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str) and err["message"]
        assert isinstance(err["type"], str)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)
messages = st.one_of(
    json_values,
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"])},
                                   optional={"content": json_values, "tool_calls": json_values,
                                             "name": json_values}), min_size=1, max_size=4))
models = st.one_of(st.sampled_from(["mtrouter", "mtrouter-0.5", "mtrouter-explore", "mtrouter-greedy-1", "cheap",
                                    "mtrouter--1", "mtrouter-nan", "mtrouter-1e309", "mtrouter-explore-inf"]),
                   json_values)
tokens = st.one_of(st.none(), st.integers(-10, 10**12), st.floats(allow_nan=False), st.text(max_size=5),
                   st.booleans(), json_values)
chat_bodies = st.fixed_dictionaries(
    {"model": models, "messages": messages},
    optional={"max_tokens": tokens, "max_completion_tokens": tokens, "stream": st.one_of(st.booleans(), json_values),
              "stream_options": json_values, "tools": json_values, "temperature": json_values,
              "unknown_field": json_values, "n": json_values})
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
headers = st.dictionaries(
    st.sampled_from(["X-MTRouter-Budget", "X-MTRouter-Lambda", "X-MTRouter-Seed", "X-MTRouter-Explore",
                     "X-MTRouter-Task", "X-MTRouter-Conversation"]),
    st.one_of(st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e309", "0.5", "", "true", "2147483648"]),
              header_text.map(str.strip)), max_size=3)  # (h11 refuses to send surrounding blanks)


def raw_bodies():
    deep = b"[" * 10_000 + b"]" * 10_000
    deep_msg = (b'{"model":"mtrouter","messages":[{"role":"user","content":' + b"[" * 500 + b"1"
                + b"]" * 500 + b"}]}")
    huge = json.dumps({"model": "mtrouter", "messages": [{"role": "user", "content": "x" * 3_000_000}]}).encode()
    return st.one_of(
        st.sampled_from([deep, deep_msg, huge, b"", b"{", b"\xff\xfe\xfd", b'{"model": NaN}', b"null", b"1e999",
                         b'{"model":"mtrouter","messages":[{"role":"user","content":"\xc3\x28"}]}',
                         b'{"model":"mtrouter","messages":[{"role":"user","content":"hi"}],"max_tokens":1e400}',
                         b'{"model":"mtrouter","messages":[{"role":"user","content":' + b"9" * 5000 + b"}]}",
                         b"x" * (5 * 2**20)]),
        st.binary(max_size=200))


@FUZZ
@given(body=chat_bodies, hdr=headers)
def test_chat_with_malformed_json_bodies_and_headers(proxy, body, hdr):
    check(proxy.post("/v1/chat/completions", content=json.dumps(body).encode(), headers=hdr))


@FUZZ
@given(raw=raw_bodies(), hdr=headers)
def test_chat_with_hostile_raw_bytes(proxy, raw, hdr):
    check(proxy.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json", **hdr}))


finish_bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()), raw_bodies(),
    st.fixed_dictionaries({}, optional={"score": json_values | st.floats() | st.integers(-(10**400), 10**400),
                                        "score_range": json_values, "meta": json_values}).map(
        lambda d: json.dumps(d).replace("NaN", "1e999").encode()))


@FUZZ
@given(cid=st.text(max_size=40), raw=finish_bodies, start=st.booleans())
def test_finish_with_hostile_bodies_and_ids(proxy, cid, raw, start):
    if start and cid.strip():  # an open conversation to finish, so that bodies reach the validation
        ok_header = cid.isprintable() and cid.isascii()
        body = {"model": "mtrouter", "messages": [{"role": "user", "content": "f"}]}
        r = proxy.post("/v1/chat/completions", json=body,
                       headers={"X-MTRouter-Conversation": cid.strip()} if ok_header else {})
        check(r)
    path = f"/v1/mtrouter/conversations/{urllib.parse.quote(cid, safe='')}/finish"
    check(proxy.post(path, content=raw))
    check(proxy.get(f"/v1/mtrouter/conversations/{urllib.parse.quote(cid, safe='')}"))


def test_a_rejected_finish_keeps_the_conversation(proxy):
    """A bad finish body is refused before the conversation closes: the client can fix it and retry."""
    r = proxy.post("/v1/chat/completions", headers={"X-MTRouter-Conversation": "keep-me"},
                   json={"model": "mtrouter", "messages": [{"role": "user", "content": "keep"}]})
    assert r.status_code == 200
    for bad in ({"score": 5, "score_range": [0, 1]}, {"score": 1e308, "score_range": [1, 0]}, {"meta": [1]},
                {"score": "high"}, {"meta": {"x": "y" * 100_000}}):
        r = proxy.post("/v1/mtrouter/conversations/keep-me/finish", json=bad)
        assert r.status_code == 400, bad
    assert proxy.post("/v1/mtrouter/conversations/keep-me/finish", json={"score": 0.5, "score_range": [0, 1]}).json()["logged"]


def test_wrong_methods_and_paths_answer_in_openai_shape(proxy):
    for r in (proxy.get("/v1/chat/completions"), proxy.post("/v1/nope"), proxy.delete("/v1/models"),
              proxy.post("/v1/mtrouter/conversations/a%2Fb/finish")):
        assert r.status_code in (404, 405)
        check(r)
