"""Non-ASCII conversation ids, what serve says at start-up, GET /v1/mtrouter/router without a checkpoint,
and an upstream that answers ``stream: true`` with plain JSON (issue 18)."""

from __future__ import annotations

import json
import urllib.parse

import httpx
import pytest
from fastapi import FastAPI, Request

from testing.fixtures import fake_api_key, upstream  # noqa: F401  (fixtures)
from testing.live import FakeEstimator, FakeUpstream, ServerThread, completion, make_pool
from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server.app import create_app
from mtrouter_jax.live.server.limits import Limits
from mtrouter_jax.live.server.startup import startup_lines
from mtrouter_jax.live.server.tenancy import KeyRing, Tenant
from mtrouter_jax.logs.io import read_episodes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
BODY = {"model": "mtrouter", "messages": [{"role": "user", "content": "hi"}]}


def test_non_ascii_ids_are_stored_as_utf8_and_found_by_their_url(upstream, tmp_path):
    log = tmp_path / "u.jsonl"
    with ServerThread(create_app(Router(FakeEstimator(make_pool(upstream.url + "/v1")), log_path=log),
                                 timeout=5.0, max_retries=0)) as srv:
        http = httpx.Client(base_url=srv.url, timeout=10.0)
        cid = "café-日本-1"
        r = http.post("/v1/chat/completions", json=BODY, headers={"X-MTRouter-Conversation": cid.encode("utf-8")})
        assert r.status_code == 200
        assert r.headers.raw  # the id comes back as the UTF-8 bytes it was sent as
        assert dict(r.headers.raw)[b"x-mtrouter-conversation"].decode("utf-8") == cid
        path = f"/v1/mtrouter/conversations/{urllib.parse.quote(cid, safe='')}"
        assert http.get(path).json()["turns"] == 1
        assert [c["id"] for c in http.get("/v1/mtrouter/conversations").json()["data"]] == [cid]
        for bad in (b"\xff\xfe-not-utf8", b"tab\there"):
            r = http.post("/v1/chat/completions", json=BODY, headers={"X-MTRouter-Conversation": bad})
            assert r.status_code == 400, bad
        assert http.post(path + "/finish").status_code == 200
    (ep,) = read_episodes(log)
    assert ep.episode_id == cid


def test_startup_lines_are_short_and_say_how_to_explore():
    lines = startup_lines(Router(None, explore="beta:0.5"), KeyRing({"sk-alice-0001": Tenant("alice")}), Limits())
    assert all(len(line) < 400 for line in lines), [len(x) for x in lines]
    text = "\n".join(lines)
    assert 'model "mtrouter-explore"' in text and "X-MTRouter-Explore: 1" in text
    assert "known names ->" in text and "more" in text  # the tool mapping summarised, not listed
    assert "tool heuristic:" in text and "--max-open 10000" in text and "1 for 1 tenant" in text
    no_explore = "\n".join(startup_lines(Router(None)))
    assert "no exploration" in no_explore


def test_router_endpoint_of_the_heuristic_claims_no_lambda_and_shows_its_map():
    info = Router(None, pool=make_pool()).describe()
    assert info["lam"] is None and "unused" in info["lam_note"] and info["checkpoint"] is None
    assert set(info["tool_models"].values()) <= set(make_pool().names)
    assert "<start>" in info["tool_models"] or len(info["tool_models"]) > len(info["tools"])
    learned = Router(FakeEstimator(), lam=0.3).describe()
    assert "0.3" in learned["lam"] and "tool_models" not in learned


def test_an_upstream_answering_a_stream_with_plain_json_is_relayed_as_sse(tmp_path, monkeypatch):
    monkeypatch.setenv("MTROUTER_FAKE_KEY", "sk-test")
    fake = FakeUpstream(record=False)
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        b = json.loads(await request.body())
        return completion(b, *fake.response_for(b), cid="x")

    log = tmp_path / "j.jsonl"
    with ServerThread(app) as up, ServerThread(create_app(
            Router(FakeEstimator(make_pool(up.url + "/v1")), log_path=log), timeout=5.0, max_retries=0)) as srv:
        http = httpx.Client(base_url=srv.url, timeout=10.0)
        r = http.post("/v1/chat/completions", json={**BODY, "stream": True}, headers={"X-MTRouter-Conversation": "j"})
        assert r.status_code == 200
        events = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunk = json.loads(events[0])
        assert chunk["object"] == "chat.completion.chunk" and chunk["choices"][0]["delta"]["content"].startswith("answer")
        info = http.get("/v1/mtrouter/conversations/j").json()
        assert info["turns"] == 1
        assert http.post("/v1/mtrouter/conversations/j/finish").status_code == 200
    (ep,) = read_episodes(log)
    t = ep.turns[0]
    assert t.output_tokens == 120 and "usage_flag" not in (t.meta or {})  # the JSON's own usage, not an estimate
