"""Tenancy (issue 18): keys with owners; a conversation belongs to the tenant that started it; admin
listing; /metrics and the docs behind a key unless --public-metrics; per-tenant budget cap."""

from __future__ import annotations

import json

import httpx
import pytest

from testing.fixtures import fake_api_key, upstream  # noqa: F401  (fixtures)
from testing.live import FakeEstimator, ServerThread, make_pool
from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server.app import create_app
from mtrouter_jax.live.server.tenancy import KeysFileError, Tenant, load_keys
from mtrouter_jax.logs.io import read_episodes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
KEYS = {"sk-alice-0001": Tenant("alice", budget_cap=0.05), "sk-bob-00002": Tenant("bob"),
        "sk-ops-000003": Tenant("ops", admin=True)}
BODY = {"model": "mtrouter", "messages": [{"role": "user", "content": "hello"}]}


def auth(key):
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def served(upstream, tmp_path):
    started = []

    def make(**kw):
        log = tmp_path / f"t{len(started)}.jsonl"
        app = create_app(Router(FakeEstimator(make_pool(upstream.url + "/v1")), log_path=log), timeout=5.0,
                         max_retries=0, **kw)
        srv = ServerThread(app).__enter__()
        started.append(srv)
        return httpx.Client(base_url=srv.url, timeout=10.0), log

    yield make
    for s in started:
        s.__exit__(None, None, None)


def test_another_tenant_gets_404_for_a_conversation_on_every_endpoint(served):
    http, log = served(keys=KEYS)
    r = http.post("/v1/chat/completions", json=BODY, headers={**auth("sk-alice-0001"), "X-MTRouter-Conversation": "a1"})
    assert r.status_code == 200
    base = "/v1/mtrouter/conversations/a1"
    assert http.get(base, headers=auth("sk-bob-00002")).status_code == 404
    assert http.post(base + "/finish", json={}, headers=auth("sk-bob-00002")).status_code == 404
    assert [c["id"] for c in http.get("/v1/mtrouter/conversations", headers=auth("sk-bob-00002")).json()["data"]] == []
    # a turn from bob under alice's id opens bob's own conversation: alice's is untouched
    r = http.post("/v1/chat/completions", json=BODY, headers={**auth("sk-bob-00002"), "X-MTRouter-Conversation": "a1"})
    assert r.status_code == 200
    assert http.get(base, headers=auth("sk-alice-0001")).json()["turns"] == 1
    assert http.get(base, headers=auth("sk-bob-00002")).json()["turns"] == 1
    assert http.get(base, headers=auth("sk-alice-0001")).json()["budget"] == pytest.approx(0.05)  # the cap
    assert http.get(base, headers=auth("sk-bob-00002")).json()["budget"] is None
    # the admin lists every tenant's; a tenant only its own
    listing = http.get("/v1/mtrouter/conversations", headers=auth("sk-ops-000003")).json()["data"]
    assert sorted((c["tenant"], c["id"]) for c in listing) == [("alice", "a1"), ("bob", "a1")]
    mine = http.get("/v1/mtrouter/conversations", headers=auth("sk-alice-0001")).json()["data"]
    assert [c["id"] for c in mine] == ["a1"] and "tenant" not in mine[0]
    assert http.get(base + "?tenant=alice", headers=auth("sk-ops-000003")).json()["turns"] == 1
    assert http.get(base + "?tenant=alice", headers=auth("sk-bob-00002")).json()["budget"] is None  # not alice's
    done = http.post(base + "/finish", json={"score": 1, "score_range": [0, 1]}, headers=auth("sk-alice-0001"))
    assert done.status_code == 200
    assert http.post(base + "/finish", json={}, headers=auth("sk-bob-00002")).status_code == 200
    eps = read_episodes(log)
    assert sorted(e.meta["tenant"] for e in eps) == ["alice", "bob"]
    assert len({e.episode_id for e in eps}) == 2  # the same id from two tenants: two episode ids


def test_keys_are_required_everywhere_but_health_and_metrics_needs_an_admin(served):
    http, _ = served(keys=KEYS)
    for path in ("/v1/models", "/metrics", "/docs", "/openapi.json", "/v1/mtrouter/router"):
        r = http.get(path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
        assert http.get(path, headers=auth("sk-nobody-000")).status_code == 401
    assert http.get("/health").status_code == 200
    assert http.get("/metrics", headers=auth("sk-bob-00002")).status_code == 403
    assert http.get("/metrics", headers=auth("sk-ops-000003")).status_code == 200
    assert http.get("/openapi.json", headers=auth("sk-bob-00002")).status_code == 200
    assert http.get("/v1/models", headers={"Authorization": "bearer sk-bob-00002"}).status_code == 200


def test_public_metrics_opens_metrics_and_docs_only(served):
    http, _ = served(keys=KEYS, public_metrics=True)
    assert http.get("/metrics").status_code == 200 and http.get("/openapi.json").status_code == 200
    assert http.get("/v1/models").status_code == 401
    assert http.post("/v1/chat/completions", json=BODY).status_code == 401


def test_token_is_one_admin_key_and_no_keys_is_open(served):
    http, _ = served(token="s3cret-token")
    assert http.get("/metrics").status_code == 401
    assert http.get("/metrics", headers=auth("s3cret-token")).status_code == 200
    open_http, _ = served()
    assert open_http.get("/metrics").status_code == 200 and open_http.get("/v1/models").status_code == 200


def test_per_tenant_open_cap_refuses_new_conversations_not_others(served):
    keys = {**KEYS, "sk-carol-0004": Tenant("carol", max_open=2)}
    http, _ = served(keys=keys)
    hdr = auth("sk-carol-0004")
    for i in range(2):
        assert http.post("/v1/chat/completions", json=BODY, headers={**hdr, "X-MTRouter-Conversation": f"c{i}"}
                         ).status_code == 200
    r = http.post("/v1/chat/completions", json=BODY, headers={**hdr, "X-MTRouter-Conversation": "c2"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_conversations"
    assert http.post("/v1/chat/completions", json=BODY, headers={**hdr, "X-MTRouter-Conversation": "c0"}
                     ).status_code == 200  # its open ones still work
    assert http.post("/v1/chat/completions", json=BODY, headers={**auth("sk-bob-00002"),
                     "X-MTRouter-Conversation": "b0"}).status_code == 200  # others are not affected


def test_keys_file_toml_json_and_env(tmp_path):
    t = tmp_path / "keys.toml"
    t.write_text('[keys."sk-alice-0001"]\ntenant = "alice"\nbudget_cap = 1.5\n[keys."sk-ops-000003"]\n'
                 'tenant = "ops"\nadmin = true\n')
    ring = load_keys(t, token="tok-admin-1", env={})
    assert ring.tenant_of(b"Bearer sk-alice-0001") == Tenant("alice", budget_cap=1.5)
    assert ring.tenant_of(b"Bearer tok-admin-1").admin and ring.tenant_of(b"Bearer nope") is None
    j = tmp_path / "keys.json"
    j.write_text(json.dumps({"sk-bob-00002": {"tenant": "bob", "max_open": 3}}))
    assert load_keys(j, env={}).tenant_of(b"Bearer sk-bob-00002").max_open == 3
    env = {"MTROUTER_KEYS": json.dumps({"keys": {"sk-env-000001": {"tenant": "env"}}})}
    assert load_keys(None, env=env).tenant_of(b"Bearer sk-env-000001").name == "env"
    for bad in ('[keys."short"]\ntenant = "x"\n', '[keys."sk-long-enough"]\nadmin = true\n',
                '[keys."sk-long-enough"]\ntenant = "x"\nbudget_cap = -1\n', '[keys."sk-long-enough"]\ntenant = "x"\nfoo = 1\n',
                "not toml ["):
        t.write_text(bad)
        with pytest.raises(KeysFileError, match="--keys"):
            load_keys(t, env={})
    with pytest.raises(KeysFileError, match="cannot read"):
        load_keys(tmp_path / "missing.toml", env={})


def test_the_gates_fast_routes_match_what_fastapi_would_route():
    """Chat and finish reach the gate before FastAPI's stack (``ProxyApp``); anything else, or a
    finish path FastAPI would not match (no id, an id with a slash, a mounted app), goes through FastAPI."""
    from mtrouter_jax.live.server.app import FINISH_PATH
    from mtrouter_jax.live.server.gate import Gate

    gate = Gate(None, keys=None, proxy=None, fast={"/v1/chat/completions": ("chat", None),
                                                     FINISH_PATH: ("finish", None)})

    def route(path, method="POST", root_path=""):
        got = gate.fast_route({"path": path, "method": method, "root_path": root_path})
        return None if got is None else got[0]

    assert route("/v1/chat/completions") == "chat"
    assert route("/v1/mtrouter/conversations/abc-1/finish") == "finish"
    assert route("/v1/mtrouter/conversations/a b%2F/finish") == "finish"
    for path in ("/v1/mtrouter/conversations//finish", "/v1/mtrouter/conversations/a/b/finish",
                 "/v1/mtrouter/conversations/finish", "/v1/chat/completions/", "/v1/models"):
        assert route(path) is None, path
    assert route("/v1/chat/completions", method="GET") is None
    assert route("/v1/chat/completions", root_path="/proxy") is None
