"""Proxy replicas on one state store (issue 19): two apps (uvicorn threads, each with its own event
loop and its own store client) on one real ``redis-server`` (or one shared ``MemoryStore``) in front
of one fake upstream. Turns of one conversation interleaved across replicas never exceed its
budget, a finish on either replica is logged exactly once, a lease held by a dead replica hands
the conversation over when it expires, Redis down -> 503 with a message, Redis back -> served."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from test_store import _start_redis  # the real redis-server fixture's helpers
from testing.fixtures import fake_api_key, upstream  # noqa: F401  (fixtures)
from testing.live import FakeEstimator, ServerThread, make_pool
from mtrouter_jax.live.episode_state import dumps_state, episode_state, restore_episode
from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server.app import create_app
from mtrouter_jax.live.server.shared import conv_key, episode_key
from mtrouter_jax.live.store import MemoryStore
from mtrouter_jax.logs.io import read_episodes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
BUDGET = 0.0004  # a handful of turns of the fake upstream


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = _start_redis(tmp_path_factory)
    yield server
    server.kill()


class Replicas:
    """``n`` proxy apps on one store (``kind``: "redis" or "memory") and one log file."""

    def __init__(self, upstream, log, kind, server=None, n=2, lease_ms=None, **kw):
        from mtrouter_jax.live.store.redis import RedisStore

        self.prefix = f"t{uuid.uuid4().hex[:8]}:"
        self.shared = MemoryStore() if kind == "memory" else None
        self.server, self.log, self.threads = server, log, []
        pool = make_pool(upstream.url + "/v1")
        for _ in range(n):
            store = self.shared if kind == "memory" else RedisStore(server.url, prefix=self.prefix, timeout_s=0.5)
            app = create_app(Router(FakeEstimator(pool), log_path=log), timeout=5.0, max_retries=0, state=store,
                             lease_ms=lease_ms, **kw)
            self.threads.append(ServerThread(app).__enter__())
        self.http = [httpx.Client(base_url=t.url, timeout=30.0) for t in self.threads]

    def store(self):
        """A fresh client of the same store (for a test's own look at it, on its own loop)."""
        if self.shared is not None:
            return self.shared
        from mtrouter_jax.live.store.redis import RedisStore
        return RedisStore(self.server.url, prefix=self.prefix)

    def close(self):
        for h in self.http:
            h.close()
        for t in self.threads:
            t.__exit__(None, None, None)


@pytest.fixture(params=["redis", "memory"])
def replicas(request, upstream, tmp_path):
    made = []

    def make(**kw):
        server = request.getfixturevalue("redis_server") if request.param == "redis" else None
        r = Replicas(upstream, tmp_path / f"live{len(made)}.jsonl", request.param, server, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def _turn_body(i: int) -> dict:
    msgs = [{"role": "user", "content": "solve it"}]
    for j in range(i):
        msgs += [{"role": "assistant", "content": f"step {j}"}, {"role": "user", "content": "go on " * 20}]
    return {"model": f"mtrouter-{BUDGET}", "messages": msgs}


async def _interleaved(urls, cid, plan):
    """Send the turns of ``plan`` (replica index per turn, in waves of concurrent requests)."""
    async with httpx.AsyncClient(timeout=60.0) as c:
        codes, costs, i = [], [], 0
        for wave in plan:
            reqs = []
            for rep in wave:
                reqs.append(c.post(urls[rep] + "/v1/chat/completions", json=_turn_body(i),
                                   headers={"X-MTRouter-Conversation": cid}))
                i += 1
            for r in await asyncio.gather(*reqs):
                codes.append(r.status_code)
                costs.append(float(r.headers.get("x-mtrouter-turn-cost", 0)))
        return codes, costs


def _spent(store_factory, cid, eid=None):
    async def main():
        s = store_factory()
        try:
            got = await s.get(conv_key("", cid))
            st = json.loads(got.data)["episode"]
            return st, await s.spent(episode_key(st["episode_id"])), await s.reserved(episode_key(st["episode_id"]))
        finally:
            await s.close()
    return asyncio.run(main())


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(plan=hs.lists(hs.lists(hs.integers(0, 1), min_size=1, max_size=3), min_size=3, max_size=6))
def test_interleaved_turns_across_replicas_never_exceed_the_budget(replicas, plan):
    reps = getattr(replicas, "_made", None) or replicas()
    replicas._made = reps  # one pair of replicas for every example (starting them is the slow part)
    cid = f"c-{uuid.uuid4().hex[:8]}"
    codes, costs = asyncio.run(_interleaved([t.url for t in reps.threads], cid, plan))
    assert set(codes) <= {200, 402}, codes
    st, spent, held = _spent(reps.store, cid)
    billed = sum(t["cost"] for t in st["turns"])
    assert sum(costs) == pytest.approx(billed, abs=1e-12)  # what the replicas answered = what is stored
    assert len(st["turns"]) == codes.count(200)  # every served turn is in the shared state, once
    assert billed <= BUDGET + 1e-12 and spent == pytest.approx(billed, abs=1e-12) and held == 0


def _wait_for_log(reps, n: int) -> None:
    """Until the replicas' log holds ``n`` episodes (10 s at most), then half a second more: a
    duplicate would arrive within the writers' next drains."""
    deadline = time.time() + 10
    while time.time() < deadline and not (reps.log.exists() and len(read_episodes(reps.log)) >= n):
        time.sleep(0.1)
    time.sleep(0.5)


def test_a_finish_on_either_replica_is_logged_exactly_once(replicas):
    reps = replicas()
    cids = [f"f-{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]
    for k, cid in enumerate(cids):
        for i in range(2):
            r = reps.http[(k + i) % 2].post("/v1/chat/completions", json=_turn_body(i) | {"model": "mtrouter"},
                                            headers={"X-MTRouter-Conversation": cid})
            assert r.status_code == 200, r.text

    async def race(cid):  # both replicas finish the same conversation at once
        async with httpx.AsyncClient(timeout=30.0) as c:
            rs = await asyncio.gather(*(c.post(f"{t.url}/v1/mtrouter/conversations/{cid}/finish",
                                               json={"score": 1, "score_range": [0, 1]}) for t in reps.threads))
            return sorted(r.status_code for r in rs)

    for cid in cids:
        assert asyncio.run(race(cid)) == [200, 404]
    _wait_for_log(reps, len(cids))
    lines = [json.loads(x) for x in reps.log.read_text().splitlines()]
    assert sorted(x["meta"]["conversation"] for x in lines) == sorted(cids)  # each once, none twice
    assert all(len(x["turns"]) == 2 for x in lines)


def test_a_lease_left_by_a_dead_replica_hands_the_conversation_over(replicas):
    # the dead replica's grab expires after 600 ms; the replicas' own leases are longer, so that a loaded
    # machine stalling a turn's event loop past 600 ms (as a first restore can) does not lose them
    reps = replicas(lease_ms=3_000)
    cid = f"l-{uuid.uuid4().hex[:6]}"
    assert reps.http[0].post("/v1/chat/completions", json=_turn_body(0),
                             headers={"X-MTRouter-Conversation": cid}).status_code == 200

    async def grab():  # a replica that takes the lease and dies mid-turn (never releases it)
        s = reps.store()
        lease = await s.acquire_lease(conv_key("", cid), 600)
        if reps.shared is None:
            await s.close()
        return lease

    assert asyncio.run(grab()) is not None
    t0 = time.monotonic()
    r = reps.http[1].post("/v1/chat/completions", json=_turn_body(1), headers={"X-MTRouter-Conversation": cid})
    waited = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert 0.2 < waited < 5.0  # it waited for the expiry, then ran the turn
    st, spent, _ = _spent(reps.store, cid)
    assert len(st["turns"]) == 2 and spent == pytest.approx(sum(t["cost"] for t in st["turns"]))


def test_redis_down_is_a_503_with_a_message_and_back_it_serves_again(upstream, tmp_path, tmp_path_factory):
    server = _start_redis(tmp_path_factory)  # its own server: this test kills it
    reps = Replicas(upstream, tmp_path / "down.jsonl", "redis", server)
    try:
        cid = "d-1"
        assert reps.http[0].post("/v1/chat/completions", json=_turn_body(0),
                                 headers={"X-MTRouter-Conversation": cid}).status_code == 200
        n_calls = len(upstream.requests)
        server.kill()
        for h in reps.http:
            r = h.post("/v1/chat/completions", json=_turn_body(1), headers={"X-MTRouter-Conversation": cid})
            assert r.status_code == 503, r.text
            err = r.json()["error"]
            assert err["code"] == "state_unavailable" and "unreachable" in err["message"]
            assert "no turn was run" in err["message"]
            assert h.get("/health").status_code == 503
        assert len(upstream.requests) == n_calls  # nothing reached the upstream, nothing was billed
        server.start()  # same port; no persistence: the conversation starts over
        r = reps.http[1].post("/v1/chat/completions", json=_turn_body(0), headers={"X-MTRouter-Conversation": cid})
        assert r.status_code == 200, r.text
        assert reps.http[0].get("/health").json()["status"] == "ok"
    finally:
        reps.close()
        server.kill()


def test_a_schema_1_state_still_restores_and_words_of_another_layout_do_not():
    """States written before the summaries were stored as words (schema 1: named lists) restore to
    the same episode; words under another layout tag are refused, not misread."""
    import dataclasses

    from mtrouter_jax.live import summary_words
    from mtrouter_jax.live.episode_state import EpisodeStateError

    r = Router(FakeEstimator(make_pool()))
    ep = r.start_episode("e1", "qa", 0.5)
    for tool in ("web_search", "python"):
        d = ep.decide(input_tokens_hi=1000)
        ep.record(d.model, {"prompt_tokens": 500, "completion_tokens": 50}, tool_name=tool)
        ep.attach_observation("Error: invalid action")
    st = json.loads(dumps_state(episode_state(ep)))
    assert st["schema"] == 2

    def named(w):
        s = summary_words.unpack(w)
        return {f.name: getattr(s, f.name).tolist() for f in dataclasses.fields(s)}

    v1 = {**st, "schema": 1, "summary": named(ep._words), "before_last": named(ep._before_words)}
    del v1["words"]
    for stored in (st, json.loads(json.dumps(v1))):
        ep2 = restore_episode(r, stored)
        assert (ep2._words == ep._words).all() and (ep2._before_words == ep._before_words).all()
        a, b = ep.decide(input_tokens_hi=1200), ep2.decide(input_tokens_hi=1200)
        assert (a.model, a.propensity) == (b.model, b.propensity) and (a.features == b.features).all()
        ep.last_decision = None
    with pytest.raises(EpisodeStateError, match="layout"):
        restore_episode(r, {**st, "words": "another"})


def test_a_restored_episode_decides_exactly_as_the_original():
    r = Router(FakeEstimator(make_pool()), explore="beta:0.5")
    ep = r.start_episode("e1", "qa", 0.5, explore=True)
    rng = random.Random(0)
    for _ in range(6):
        d = ep.decide(input_tokens_hi=1000 + rng.randrange(500))
        ep.record(d.model, {"prompt_tokens": 500, "completion_tokens": 50},
                  tool_name=rng.choice(["web_search", "python", None]))
        ep.attach_observation(rng.choice(["ok", "Error: invalid action"]))
        ep2 = restore_episode(r, json.loads(dumps_state(episode_state(ep))))
        a, b = ep.decide(input_tokens_hi=1200), ep2.decide(input_tokens_hi=1200)
        assert (a.model, a.propensity) == (b.model, b.propensity) and (a.features == b.features).all()
        assert ep2.to_episode().to_dict() == ep.to_episode().to_dict()
        ep.last_decision = None


@settings(max_examples=200, deadline=None)
@given(hs.integers(1, 10**6), hs.integers(1, 10**6), hs.booleans())
def test_the_stored_version_is_read_off_the_documents_first_bytes(written, held, infinite_budget):
    """``begin`` asks the store to send the state back only when it is not the version the replica
    holds (``known``, compared with the stored bytes): the prefix test agrees with decoding it, for
    every pair of versions (1 vs 12, ...) and either encoder path."""
    from mtrouter_jax.live.server.shared_docs import known_prefix as _known

    doc = {"v": written, "episode": {"budget": float("inf") if infinite_budget else 0.5, "turns": []},
           "conv": {"n_seen": 3}}
    data = dumps_state(doc)
    assert data.startswith(_known(held)) == (json.loads(data)["v"] == held)
    assert _known(0) is None and _known(-1) is None


class CountingStore(MemoryStore):
    """A memory store that counts the calls of a turn's steps (``begin_turn`` with a reservation
    sent along counted apart)."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    async def begin_turn(self, conv_id, lease_ttl_ms, budget_conv_id=None, known=None, reservation=None):
        got = await super().begin_turn(conv_id, lease_ttl_ms, budget_conv_id, known, reservation)
        if conv_id.startswith("c:"):
            self.calls.append("begin+reserve" if got.reserved else "begin")
        return got

    async def reserve(self, *a, **kw):
        self.calls.append("reserve")
        return await super().reserve(*a, **kw)

    async def end_turn(self, *a, **kw):
        self.calls.append("end")
        return await super().end_turn(*a, **kw)


def _obs_body(i: int, task: str = "solve it", budget: float = 0.01) -> dict:
    msgs = [{"role": "user", "content": task}]
    for j in range(i):
        msgs += [{"role": "assistant", "content": f"step {j}"},
                 {"role": "user", "content": "No known action matches that input." if j % 3 == 1 else f"result {j} " * (j + 1)}]
    return {"model": f"mtrouter-{budget}", "messages": msgs}


def test_a_turn_after_the_replicas_own_reserves_with_its_lease_and_a_stale_guess_is_decided_again(upstream, tmp_path):
    """The replica that wrote a conversation's last version decides on its copy and reserves in the
    lease's step (two store steps a turn); where another replica wrote since, the guess is dropped,
    the stored copy adopted, and the turn decided again: the served history is the one a single
    replica serves for the same requests (each observation attached once, the same models and bills)."""
    store = CountingStore()
    pool = make_pool(upstream.url + "/v1")
    threads = [ServerThread(create_app(Router(FakeEstimator(pool), log_path=tmp_path / "g.jsonl"), timeout=5.0,
                                       max_retries=0, state=store)).__enter__() for _ in range(2)]
    try:
        http = [httpx.Client(base_url=t.url, timeout=30.0) for t in threads]
        served = [0, 0, 0, 1, 0, 0, 1, 1]
        steps = []
        for cid, plan in (("mixed", served), ("alone", [0] * len(served))):
            for i, rep in enumerate(plan):
                store.calls.clear()
                # (tasks of one length that differ at once: the fake upstream's prompt cache treats both alike)
                r = http[rep].post("/v1/chat/completions", json=_obs_body(i, f"{cid[0]} solve it"),
                                   headers={"X-MTRouter-Conversation": cid})
                assert r.status_code == 200, r.text
                steps.append(list(store.calls))
        n = len(served)
        assert steps[:n] == [["begin", "reserve", "end"],  # a new conversation
                             ["begin+reserve", "end"], ["begin+reserve", "end"],
                             ["begin", "reserve", "end"],  # replica 1 had no copy
                             ["begin", "reserve", "end"],  # replica 0's copy was stale: decided again
                             ["begin+reserve", "end"],
                             ["begin", "reserve", "end"], ["begin+reserve", "end"]]
        assert steps[n:] == [["begin", "reserve", "end"]] + [["begin+reserve", "end"]] * (n - 1)

        async def turns(cid):
            got = await store.get(conv_key("", cid))
            return json.loads(got.data)["episode"]["turns"]

        mixed, alone = asyncio.run(turns("mixed")), asyncio.run(turns("alone"))
        keep = ("model", "cost", "error", "propensity", "input_tokens", "cached_tokens", "output_tokens", "features")
        assert len(mixed) == n and [{k: t.get(k) for k in keep} for t in mixed] == \
            [{k: t.get(k) for k in keep} for t in alone]
        assert sum("error" in t for t in mixed) == 2  # each observation attached once, to its turn (None is left out)
        for h in http:
            h.close()
    finally:
        for t in threads:
            t.__exit__(None, None, None)


def test_a_long_episode_is_encoded_off_the_event_loop_and_logged_once(replicas, monkeypatch):
    """A finished episode over ``LINE_IN_THREAD_TURNS`` turns is validated and encoded in a worker
    thread (the loop keeps serving); its log line is the same as on the loop, and written once."""
    import threading

    from mtrouter_jax.live.server import shared
    from mtrouter_jax.logs.io import episode_line

    threads = []

    def recording(ep):
        threads.append(threading.current_thread().name)
        return episode_line(ep)

    monkeypatch.setattr(shared, "episode_line", recording)
    monkeypatch.setattr(shared, "LINE_IN_THREAD_TURNS", 2)
    reps = replicas()
    for n, cid in ((2, "short-" + uuid.uuid4().hex[:6]), (3, "long-" + uuid.uuid4().hex[:6])):
        for i in range(n):
            r = reps.http[i % 2].post("/v1/chat/completions", json=_turn_body(i) | {"model": "mtrouter"},
                                      headers={"X-MTRouter-Conversation": cid})
            assert r.status_code == 200, r.text
        r = reps.http[0].post(f"/v1/mtrouter/conversations/{cid}/finish", json={"score": 1, "score_range": [0, 1]})
        assert r.status_code == 200, r.text
    # the 2-turn episode on replica 0's event loop (its server thread), the 3-turn one in a worker
    assert threads[0] == reps.threads[0].thread.name and len(threads) == 2 and threads[1] != threads[0]
    _wait_for_log(reps, 2)
    eps = read_episodes(reps.log)
    assert sorted(len(e.turns) for e in eps) == [2, 3]
