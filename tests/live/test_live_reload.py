"""Checkpoints swapped live (issue 19): ``POST /v1/mtrouter/admin/reload`` loads, verifies and swaps a
checkpoint for new conversations; open ones (and a stream in flight) keep theirs, and the log
records each episode's checkpoint digest. A damaged checkpoint is refused and the served one stays."""

from __future__ import annotations

import shutil

import httpx
import pytest

from testing.artifacts import trained_checkpoint
from testing.fixtures import fake_api_key, upstream  # noqa: F401  (fixtures)
from test_store import connect, redis_server  # noqa: F401  (fixtures: one store shared by the replicas)
from testing.live import ServerThread, make_pool
from mtrouter_jax.estimator.checkpoint import read_meta, update_meta
from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server.app import create_app
from mtrouter_jax.live.server.reload import checkpoint_digest
from mtrouter_jax.live.server.tenancy import Tenant
from mtrouter_jax.logs.io import read_episodes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
KEYS = {"sk-ops-000001": Tenant("ops", admin=True), "sk-bob-000002": Tenant("bob")}
OPS, BOB = ({"Authorization": f"Bearer {k}"} for k in KEYS)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    src = trained_checkpoint(tmp_path_factory)
    root = tmp_path_factory.mktemp("ckpts")
    a, b, bad = root / "a", root / "b", root / "bad"
    for d in (a, b, bad):
        shutil.copytree(src, d)
    update_meta(b, {"note": "retrained"})  # re-sealed: another digest
    victim = max((f for f in bad.rglob("*") if f.is_file() and f.suffix != ".json"), key=lambda f: f.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return a, b, bad


def _body(n: int, stream: bool = False) -> dict:
    msgs = [{"role": "user", "content": "task"}]
    for i in range(n):
        msgs += [{"role": "assistant", "content": f"a{i}"}, {"role": "user", "content": "more"}]
    return {"model": "mtrouter-0.5", "messages": msgs, "stream": stream}


def test_reload_swaps_for_new_conversations_only_and_logs_each_digest(upstream, ckpts, tmp_path):
    a, b, bad = ckpts
    names = read_meta(a)["layout"]["models"]
    log = tmp_path / "live.jsonl"
    router = Router.from_checkpoint(a, pool=make_pool(upstream.url + "/v1", names=names), log_path=log)
    with ServerThread(create_app(router, keys=KEYS, timeout=5.0, max_retries=0)) as srv, \
            httpx.Client(base_url=srv.url, timeout=30.0, headers=OPS) as http:
        da, db = checkpoint_digest(a), checkpoint_digest(b)
        assert da != db and http.get("/v1/mtrouter/router").json()["checkpoint_digest"] == da
        old = {"X-MTRouter-Conversation": "old"}
        assert http.post("/v1/chat/completions", json=_body(0), headers=old).status_code == 200
        # a stream in flight while the checkpoint changes
        with http.stream("POST", "/v1/chat/completions", json=_body(1, True), headers=old) as s:
            lines = s.iter_lines()
            first = next(lines)
            r = http.post("/v1/mtrouter/admin/reload", json={"checkpoint": str(b)})
            assert r.status_code == 200, r.text
            assert r.json()["digest"] == db and r.json()["previous"] == da
            rest = list(lines)
        assert first.startswith("data: ") and "data: [DONE]" in rest
        assert http.get("/v1/mtrouter/router").json()["checkpoint_digest"] == db
        # refused: not an admin; a damaged checkpoint (the served one stays); a missing one
        assert httpx.post(srv.url + "/v1/mtrouter/admin/reload", json={}, headers=BOB).status_code == 403
        r = http.post("/v1/mtrouter/admin/reload", json={"checkpoint": str(bad)})
        assert r.status_code == 400 and r.json()["error"]["code"] == "checkpoint_invalid", r.text
        assert http.post("/v1/mtrouter/admin/reload",
                         json={"checkpoint": str(tmp_path / "nope")}).status_code == 400
        assert http.get("/v1/mtrouter/router").json()["checkpoint_digest"] == db
        # the open conversation keeps checkpoint a; a new one starts on b
        assert http.post("/v1/chat/completions", json=_body(2), headers=old).status_code == 200
        new = {"X-MTRouter-Conversation": "new"}
        assert http.post("/v1/chat/completions", json=_body(0), headers=new).status_code == 200
        for cid in ("old", "new"):
            assert http.post(f"/v1/mtrouter/conversations/{cid}/finish", json={}).status_code == 200
    eps = {e.meta["conversation"]: e for e in read_episodes(log)}
    assert eps["old"].meta["checkpoint"] == da and len(eps["old"].turns) == 3
    assert eps["new"].meta["checkpoint"] == db


def test_sighup_reloads_the_served_checkpoint(upstream, ckpts):
    import asyncio
    import os
    import signal

    a, _, _ = ckpts
    names = read_meta(a)["layout"]["models"]
    router = Router.from_checkpoint(a, pool=make_pool(upstream.url + "/v1", names=names))
    app = create_app(router, timeout=5.0, max_retries=0, sighup=True)

    async def main():  # the lifespan on this (main) thread's loop, as under `mtrouter serve`
        async with app.router.lifespan_context(app):
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(200):
                await asyncio.sleep(0.05)
                if app.state.reloader.count:
                    break
        return app.state.reloader.count

    assert asyncio.run(main()) == 1
    assert app.state.proxy.router is not router and app.state.proxy.router.digest == checkpoint_digest(a)


def _digest_within(http, digest, seconds=20.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if http.get("/v1/mtrouter/router").json()["checkpoint_digest"] == digest:
            return True
        time.sleep(0.05)
    return False


def test_one_reload_reaches_every_replica_and_replicas_started_later(upstream, ckpts, connect, tmp_path):
    a, b, bad = ckpts
    da, db = checkpoint_digest(a), checkpoint_digest(b)
    names = read_meta(a)["layout"]["models"]
    log = tmp_path / "live.jsonl"

    def replica():
        router = Router.from_checkpoint(a, pool=make_pool(upstream.url + "/v1", names=names), log_path=log)
        app = create_app(router, keys=KEYS, timeout=5.0, max_retries=0, state=connect(), reload_poll_s=0.05)
        return ServerThread(app).__enter__()

    srv = [replica(), replica()]
    http = [httpx.Client(base_url=s.url, timeout=30.0, headers=OPS) for s in srv]
    try:
        old = {"X-MTRouter-Conversation": "old"}
        assert http[1].post("/v1/chat/completions", json=_body(0), headers=old).status_code == 200
        r = http[0].post("/v1/mtrouter/admin/reload", json={"checkpoint": str(b)})
        assert r.status_code == 200 and r.json()["fleet"]["published"] >= 1, r.text
        assert _digest_within(http[1], db)  # the other replica loaded it on its own
        fleet = http[1].get("/v1/mtrouter/router").json()["fleet"]
        assert fleet["adopted_reloads"] == 1
        # a refused reload is not published: every replica keeps b
        assert http[1].post("/v1/mtrouter/admin/reload", json={"checkpoint": str(bad)}).status_code == 400
        # a replica started after the reload serves the fleet's checkpoint, not its own --checkpoint
        srv.append(replica())
        http.append(httpx.Client(base_url=srv[2].url, timeout=30.0, headers=OPS))
        assert _digest_within(http[2], db)
        assert http[0].get("/v1/mtrouter/router").json()["checkpoint_digest"] == db
        # the conversation opened before the reload keeps checkpoint a, on whichever replica its turns run
        assert http[0].post("/v1/chat/completions", json=_body(1), headers=old).status_code == 200
        new = {"X-MTRouter-Conversation": "new"}
        assert http[2].post("/v1/chat/completions", json=_body(0), headers=new).status_code == 200
        for cid in ("old", "new"):
            assert http[1].post(f"/v1/mtrouter/conversations/{cid}/finish", json={}).status_code == 200
    finally:
        for h in http:
            h.close()
        for s in srv:
            s.__exit__(None, None, None)
    eps = {e.meta["conversation"]: e for e in read_episodes(log)}
    assert eps["old"].meta["checkpoint"] == da and len(eps["old"].turns) == 2
    assert eps["new"].meta["checkpoint"] == db


def test_a_fleet_reload_this_replica_cannot_use_is_refused_here_and_logged(ckpts, tmp_path, caplog):
    import asyncio
    import json

    from mtrouter_jax.live.server.control import FleetReloads
    from mtrouter_jax.live.store import MemoryStore

    a, _, bad = ckpts
    names = read_meta(a)["layout"]["models"]
    app = create_app(Router.from_checkpoint(a, pool=make_pool("http://127.0.0.1:9/v1", names=names)),
                     state=MemoryStore())
    fleet: FleetReloads = app.state.reloader.fleet
    store, served = fleet.state, app.state.proxy.router.digest

    async def main():
        await store.publish_control(b"{not json")
        assert await fleet.poll_once() is None
        rec = {"checkpoint": str(bad), "digest": "0" * 16, "replica": "other"}
        await store.publish_control(json.dumps(rec).encode())
        assert await fleet.poll_once() is None
        assert await fleet.poll_once() is None  # acted on once, not retried every poll

    with caplog.at_level("ERROR", logger="mtrouter_jax.live"):
        asyncio.run(main())
    assert app.state.proxy.router.digest == served and fleet.adopted == 0 and fleet.seen == 2
    text = caplog.text
    assert "malformed" in text and "refused here" in text and str(bad) in text
