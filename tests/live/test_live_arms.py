"""Canary and shadow arms of the proxy (issue 19, ``live/server/arms.py``): the canary's share of new
conversations is binomial, the same ids get the same arms after a restart, a reload of the control
never evicts the canary, shadow decisions are logged on the served history and never served (the
served models equal a no-shadow run's), a failing shadow fails no request, and with a shared store
a conversation keeps its arm and its shadow on any replica."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest

from testing.fixtures import fake_api_key, upstream  # noqa: F401  (fixtures)
from testing.live import PREFERRED, FakeEstimator, ServerThread, make_pool
from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server.app import create_app
from mtrouter_jax.live.server.arms import CANARY, CONTROL, Arms, arm_of
from mtrouter_jax.live.server.reload import KEEP_ROUTERS
from mtrouter_jax.live.server.tenancy import ANONYMOUS
from mtrouter_jax.live.store import MemoryStore
from mtrouter_jax.logs.io import read_episodes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
         for n in ("web_search", "python", "read_file")]


def _fake_ckpt(router: Router, digest: str) -> Router:
    """A checkpoint-free router named like a checkpoint (the digest keys routers across replicas)."""
    router.digest, router.checkpoint_path = digest, None
    return router


def _arms(pool, log, fraction=0.3, seed=0, shadow=None, canary_policy="fixed:strong") -> tuple[Router, Arms]:
    control = Router(None, pool, policy="fixed:cheap", log_path=log, seed=seed)
    canary = _fake_ckpt(Router(None, pool, policy=canary_policy, log_path=log, seed=seed), "fake-canary")
    return control, Arms(canary=canary, fraction=fraction, shadow=shadow, seed=seed)


def _binom_two_sided(k: int, n: int, p: float) -> float:
    """Exact two-sided binomial p-value (sum of the outcomes no likelier than ``k``)."""
    logpmf = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
              + (n - i) * math.log1p(-p) for i in range(n + 1)]
    return min(1.0, sum(math.exp(x) for x in logpmf if x <= logpmf[k] + 1e-9))


def _new_arms(app, cids) -> list[str]:
    store = app.state.proxy.store
    return [store.get_or_start(c, False, None, None, None, tenant=ANONYMOUS).episode.arm for c in cids]


def test_the_canary_share_of_new_conversations_is_binomial_and_routes_with_the_candidate(tmp_path):
    pool = make_pool()
    control, arms = _arms(pool, None, fraction=0.3)
    app = create_app(control, timeout=1.0, max_retries=0, arms=arms)
    cids = [f"conv-{i}" for i in range(2000)]
    got = _new_arms(app, cids)
    k = got.count(CANARY)
    assert set(got) == {CANARY, CONTROL}
    assert _binom_two_sided(k, len(cids), 0.3) >= 1e-3, k
    for c, arm in zip(cids[:50], got):  # each arm's episode is on its own router
        ep = app.state.proxy.store.get(c).episode
        assert ep.router is (arms.canary if arm == CANARY else control)
    assert got == [arm_of(c, 0, 0.3) for c in cids]  # a function of the id and the seed only


def test_the_same_ids_get_the_same_arms_after_a_restart_and_another_seed_reshuffles_them():
    pool = make_pool()
    cids = [f"restart-{i}" for i in range(300)]

    def run(seed):
        control, arms = _arms(pool, None, fraction=0.5, seed=seed)
        return _new_arms(create_app(control, timeout=1.0, max_retries=0, arms=arms), cids)

    first = run(seed=0)
    assert run(seed=0) == first
    other = run(seed=1)
    assert other != first and abs(other.count(CANARY) - first.count(CANARY)) < 60


def _turn(http, cid, msgs, model="mtrouter"):
    r = http.post("/v1/chat/completions", json={"model": model, "messages": msgs, "tools": TOOLS},
                  headers={"X-MTRouter-Conversation": cid})
    assert r.status_code == 200, r.text
    m = r.json()["choices"][0]["message"]
    msgs.append(m)
    msgs += [{"role": "tool", "tool_call_id": tc["id"], "content": "ok"} for tc in m.get("tool_calls") or []]
    return r


def _conversations(urls, cids, n_turns, finish=True):
    """Each conversation's turns, turn t on replica ``urls[t % len(urls)]``; the served models and spend."""
    clients = [httpx.Client(base_url=u, timeout=30.0) for u in urls]
    try:
        served = {}
        for cid in cids:
            msgs = [{"role": "user", "content": f"task {cid}"}]
            served[cid] = [_turn(clients[t % len(clients)], cid, msgs).headers["x-mtrouter-model"]
                           for t in range(n_turns)]
            if finish:
                r = clients[0].post(f"/v1/mtrouter/conversations/{cid}/finish", json={"score": 1, "score_range": [0, 1]})
                assert r.status_code == 200, r.text
                served[cid].append(r.json()["spent"])
        return served
    finally:
        for c in clients:
            c.close()


def test_canary_episodes_log_their_arm_and_digest_and_a_control_reload_keeps_the_canary(upstream, tmp_path):
    pool = make_pool(upstream.url + "/v1")
    log = tmp_path / "arms.jsonl"
    control, arms = _arms(pool, log, fraction=0.5)
    n = [0]

    def build(path):  # reloads of the control: each a new "checkpoint"
        n[0] += 1
        return _fake_ckpt(Router(None, pool, policy="fixed:mid", log_path=log), f"reload-{n[0]}")

    app = create_app(_fake_ckpt(control, "fake-control"), timeout=5.0, max_retries=0, arms=arms, reload_build=build)
    with ServerThread(app) as srv:
        cids = [f"e2e-{i}" for i in range(12)]
        served = _conversations([srv.url], cids, 2)
        proxy = app.state.proxy
        for i in range(KEEP_ROUTERS + 3):
            asyncio.run(app.state.reloader.reload(f"/ckpt/{i}"))
        assert "fake-canary" in proxy.routers and len(proxy.routers) == KEEP_ROUTERS
        after = _conversations([srv.url], [f"late-{i}" for i in range(12)], 1)
    eps = {e.meta["conversation"]: e for e in read_episodes(log)}
    for cid, models in {**served, **after}.items():
        arm = arm_of(eps[cid].episode_id, 0, 0.5)
        assert eps[cid].meta["arm"] == arm
        want = "strong" if arm == CANARY else ("cheap" if cid.startswith("e2e") else "mid")
        assert models[:-1] == [want] * (len(models) - 1), (cid, arm, models)
        assert eps[cid].meta["checkpoint"] == ("fake-canary" if arm == CANARY else
                                               "fake-control" if cid.startswith("e2e") else f"reload-{n[0]}")
    assert {e.meta["arm"] for e in eps.values()} == {CANARY, CONTROL}


def _shadowed_app(pool, log, shadow_est=None):
    control = Router(None, pool, policy="uniform", log_path=log, seed=7)  # stochastic: the seed decides
    shadow = None if shadow_est is False else Router(shadow_est or FakeEstimator(pool), log_path=log)
    return create_app(control, timeout=5.0, max_retries=0, arms=Arms(shadow=shadow, seed=7))


def test_shadow_decisions_are_logged_on_the_served_history_and_never_served(upstream, tmp_path):
    pool = make_pool(upstream.url + "/v1")
    cids = [f"sh-{i}" for i in range(5)]
    runs = {}
    for name in ("shadow", "plain"):
        log = tmp_path / f"{name}.jsonl"
        upstream._cache.clear()  # (its prompt-cache hits are per conversation text: each run starts cold)
        with ServerThread(_shadowed_app(pool, log, None if name == "shadow" else False)) as srv:
            runs[name] = (_conversations([srv.url], cids, 5), read_episodes(log))
    assert runs["shadow"][0] == runs["plain"][0]  # the same served models and the same spend
    assert all("shadow" not in (t.meta or {}) for e in runs["plain"][1] for t in e.turns)
    agree = 0
    for e in runs["shadow"][1]:
        prev = None
        for t in e.turns:
            sh = t.meta["shadow"]
            # the fake estimator prefers the model of the last tool type: the shadow saw the served history
            assert sh["model"] == PREFERRED.get(prev, "strong") and sh["propensity"] == 1.0, (e.episode_id, prev, sh)
            agree += sh["model"] == t.model
            prev = t.tool
    assert 0 < agree < sum(len(e.turns) for e in runs["shadow"][1])  # the arms differ: a real comparison


class _Broken(FakeEstimator):
    def predict(self, features):
        raise RuntimeError("shadow estimator down")


def test_a_failing_shadow_fails_no_request_and_is_counted(upstream, tmp_path):
    pool = make_pool(upstream.url + "/v1")
    log = tmp_path / "broken.jsonl"
    app = _shadowed_app(pool, log, _Broken(pool))
    with ServerThread(app) as srv:
        _conversations([srv.url], ["b-1", "b-2"], 3)
        metrics = httpx.get(srv.url + "/metrics").text
    turns = [t for e in read_episodes(log) for t in e.turns]
    assert len(turns) == 6 and all("RuntimeError: shadow estimator down" in t.meta["shadow"]["error"] for t in turns)
    assert 'mtrouter_shadow_failures_total{stage="decide"} 6.0' in metrics


def test_a_shadow_whose_record_fails_is_dropped_and_logged_missing(upstream, tmp_path):
    pool = make_pool(upstream.url + "/v1")
    log = tmp_path / "dropped.jsonl"
    app = _shadowed_app(pool, log)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30.0) as http:
        msgs = [{"role": "user", "content": "task"}]
        _turn(http, "d-1", msgs)
        ep = app.state.proxy.store.get("d-1").episode

        def boom(*a, **k):
            raise ValueError("mirror broke")
        ep.shadow.record = boom
        _turn(http, "d-1", msgs)
        _turn(http, "d-1", msgs)
        assert http.post("/v1/mtrouter/conversations/d-1/finish", json={}).status_code == 200
    (e,) = read_episodes(log)
    assert "model" in e.turns[0].meta["shadow"] and "model" in e.turns[1].meta["shadow"]
    assert e.turns[2].meta["shadow"]["missing"] == "record failed: ValueError"


@pytest.fixture(params=["memory", "redis"])
def make_store(request, tmp_path_factory):
    """``make_store(tag)`` -> a client of the store named ``tag`` (one per tag: separate runs)."""
    if request.param == "memory":
        stores: dict = {}
        yield lambda tag: stores.setdefault(tag, MemoryStore())
        return
    from test_store import _start_redis
    from mtrouter_jax.live.store.redis import RedisStore

    server = _start_redis(tmp_path_factory)
    yield lambda tag: RedisStore(server.url, prefix=f"arms-{tag}:", timeout_s=2.0)
    server.kill()


def _replica(pool, log, store, shadow=True, canary=True):
    control = _fake_ckpt(Router(None, pool, policy="uniform", log_path=log, seed=5), "fake-control")
    arms = Arms(canary=_fake_ckpt(Router(None, pool, policy="fixed:strong", log_path=log, seed=5), "fake-canary")
                if canary else None, fraction=0.5, seed=5,
                shadow=Router(FakeEstimator(pool), log_path=log) if shadow else None)
    return create_app(control, timeout=5.0, max_retries=0, state=store, arms=arms)


def test_with_a_shared_store_a_conversation_keeps_its_arm_and_its_shadow_on_any_replica(upstream, tmp_path,
                                                                                        make_store):
    pool = make_pool(upstream.url + "/v1")
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    cids = [f"rep-{i}" for i in range(8)]
    upstream._cache.clear()  # (its prompt-cache hits are per conversation text: each run starts cold)
    with ServerThread(_replica(pool, one, make_store("one"))) as a:
        single = _conversations([a.url], cids, 4)
    upstream._cache.clear()
    with ServerThread(_replica(pool, two, make_store("two"))) as a, \
            ServerThread(_replica(pool, None, make_store("two"))) as b:
        handed = _conversations([a.url, b.url], cids, 4)  # turns alternate replicas
    assert handed == single  # the same arms, draws and spend as on one replica
    eps1 = {e.meta["conversation"]: e for e in read_episodes(one)}
    eps2 = {e.meta["conversation"]: e for e in read_episodes(two)}
    assert set(eps2) == set(cids)
    for cid in cids:
        e1, e2 = eps1[cid], eps2[cid]
        assert e2.meta["arm"] == e1.meta["arm"] == arm_of(cid, 5, 0.5)
        assert e2.meta["checkpoint"] == ("fake-canary" if e2.meta["arm"] == CANARY else "fake-control")
        assert [t.meta["shadow"] for t in e2.turns] == [t.meta["shadow"] for t in e1.turns]
        prev = None
        for t in e2.turns:  # the shadow followed the conversation across replicas
            assert t.meta["shadow"]["model"] == PREFERRED.get(prev, "strong"), (cid, t.meta["shadow"])
            prev = t.tool
    assert {e.meta["arm"] for e in eps2.values()} == {CANARY, CONTROL}


def test_a_conversation_from_a_replica_without_the_shadow_logs_it_missing(upstream, tmp_path):
    pool = make_pool(upstream.url + "/v1")
    log = tmp_path / "mixed.jsonl"
    store = MemoryStore()
    with ServerThread(_replica(pool, log, store, shadow=False, canary=False)) as a, \
            ServerThread(_replica(pool, None, store, canary=False)) as b:
        _conversations([a.url, b.url], ["m-1"], 2)
    (e,) = read_episodes(log)
    assert "shadow" not in (e.turns[0].meta or {})
    assert "without this --shadow" in e.turns[1].meta["shadow"]["missing"]


@pytest.mark.parametrize("flags, needle", [
    (["--canary", "ckpt"], "expected CKPT:FRACTION"),
    (["--canary", ":0.1"], "expected CKPT:FRACTION"),
    (["--canary", "ckpt:1.5"], "in (0, 1)"),
    (["--canary", "ckpt:0"], "in (0, 1)"),
    (["--canary", "ckpt:abc"], "in (0, 1)"),
    (["--canary", "/no/such/ckpt:0.1"], "--canary: no checkpoint at /no/such/ckpt"),
    (["--shadow", "/no/such/ckpt"], "--shadow: no checkpoint at /no/such/ckpt"),
])
def test_bad_canary_and_shadow_flags_are_one_line_with_status_2(capsys, flags, needle):
    from mtrouter_jax.cli import main

    capsys.readouterr()
    rc = main(["serve", "--router", "fixed:cheap", "--allow-missing-keys", *flags])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("mtrouter serve: error: ") and needle in err[0], err


def test_serve_loads_and_verifies_the_candidates_like_a_reload(tmp_path, tmp_path_factory, monkeypatch, capsys):
    import shutil

    import uvicorn

    from testing.artifacts import trained_checkpoint
    from mtrouter_jax.cli import main
    from mtrouter_jax.estimator.checkpoint import update_meta
    from mtrouter_jax.live.server.reload import checkpoint_digest

    src = trained_checkpoint(tmp_path_factory)
    a, b, bad = tmp_path / "a", tmp_path / "b", tmp_path / "bad"
    for d in (a, b, bad):
        shutil.copytree(src, d)
    update_meta(b, {"note": "retrained"})  # re-sealed: another digest
    victim = max((f for f in bad.rglob("*") if f.is_file() and f.suffix != ".json"), key=lambda f: f.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    base = ["serve", "--checkpoint", str(a), "--allow-missing-keys", "--seed", "3"]
    assert main([*base, "--canary", f"{b}:0.25", "--shadow", str(b)]) == 0
    proxy = apps[0].state.proxy
    assert proxy.arms.canary.digest == checkpoint_digest(b) != proxy.router.digest == checkpoint_digest(a)
    assert proxy.arms.shadow.digest == checkpoint_digest(b) and proxy.arms.fraction == 0.25 and proxy.arms.seed == 3
    assert proxy.routers[checkpoint_digest(b)] is proxy.arms.canary
    capsys.readouterr()
    for flag in ("--canary", "--shadow"):
        rc = main([*base, flag, f"{bad}:0.1" if flag == "--canary" else str(bad)])
        last = [x for x in capsys.readouterr().err.splitlines() if x.strip()][-1]
        assert rc == 2 and f"{flag}: checkpoint {bad} cannot be used" in last, last
