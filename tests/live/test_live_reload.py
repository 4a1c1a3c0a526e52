"""Checkpoints swapped live (issue 19): ``POST /v1/mtrouter/admin/reload`` loads, verifies and swaps a
checkpoint for new conversations; open ones (and a stream in flight) keep theirs, and the log
records each episode's checkpoint digest. A damaged checkpoint is refused and the served one stays."""

from __future__ import annotations

import shutil

import httpx
import pytest

from testing.artifacts import trained_checkpoint
from testing.fixtures import fake_api_key, upstream  # noqa: F401  (fixtures)
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
