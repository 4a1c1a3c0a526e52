"""Nothing acknowledged lost, bounded resources (issue 18): the log checked at start, a failed finish
kept (503, retry), unique episode ids, finish scores bounded; bodies off the event loop, the turn
deadline, idle expiry, --max-open / --max-turns, no reply text kept."""

from __future__ import annotations

import time

import httpx
import pytest

from testing.fixtures import fake_api_key, upstream  # noqa: F401  (fixtures)
from testing.live import FakeEstimator, FakeUpstream, ServerThread, make_pool
from mtrouter_jax.core.errors import UsageError
from mtrouter_jax.live import episode as episode_mod
from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server import limits as limits_mod
from mtrouter_jax.live.server.app import create_app, serve
from mtrouter_jax.live.server.limits import Limits, LogPathError, check_log_writable, parse_score_range
from mtrouter_jax.logs.io import read_episodes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
RANGE = [0, 1]


def body(text="hello"):
    return {"model": "mtrouter", "messages": [{"role": "user", "content": text}]}


def conv(cid):
    return {"X-MTRouter-Conversation": cid}


@pytest.fixture
def served(upstream, tmp_path):
    started = []

    def make(up=None, log=None, **limits):
        up = up or upstream
        log = log or tmp_path / f"l{len(started)}.jsonl"
        router = Router(FakeEstimator(make_pool(up.url + "/v1")), log_path=log)
        app = create_app(router, timeout=5.0, max_retries=0, limits=Limits(**limits))
        srv = ServerThread(app).__enter__()
        started.append(srv)
        return httpx.Client(base_url=srv.url, timeout=10.0), log, app.state.proxy

    yield make
    for s in started:
        s.__exit__(None, None, None)


# ------------------------------------------------------------------------------------- nothing acknowledged lost

def test_the_log_path_is_checked_at_start(tmp_path):
    check_log_writable(tmp_path / "new.jsonl")
    assert not (tmp_path / "new.jsonl").exists()  # the check leaves nothing behind
    for bad, what in ((tmp_path / "no" / "dir" / "x.jsonl", "does not exist"), (tmp_path, "is a directory")):
        with pytest.raises(LogPathError, match=what):
            check_log_writable(bad)
    assert issubclass(LogPathError, UsageError)  # the CLI prints it in one line (exit status 2)
    with pytest.raises(LogPathError, match="--log"):  # before any router or server is built
        serve(router="tool-heuristic", log_path=tmp_path / "missing" / "live.jsonl")


def test_a_finish_that_cannot_write_keeps_the_conversation_and_a_retry_succeeds(served, monkeypatch):
    http, log, _ = served()
    assert http.post("/v1/chat/completions", json=body(), headers=conv("w1")).status_code == 200
    real, fails = episode_mod.append_episodes, [OSError(28, "No space left on device")]

    def flaky(path, ep):
        if fails:
            raise fails.pop()
        return real(path, ep)

    monkeypatch.setattr(episode_mod, "append_episodes", flaky)
    r = http.post("/v1/mtrouter/conversations/w1/finish", json={"score": 1, "score_range": RANGE})
    assert r.status_code == 503 and r.json()["error"]["code"] == "log_unavailable"
    assert "No space left" in r.json()["error"]["message"] and "retry" in r.json()["error"]["message"]
    info = http.get("/v1/mtrouter/conversations/w1").json()
    assert info["turns"] == 1 and not info["finished"]  # still open
    assert http.post("/v1/chat/completions", json=body(), headers=conv("w1")).status_code == 200  # still usable
    r = http.post("/v1/mtrouter/conversations/w1/finish", json={"score": 1, "score_range": RANGE})
    assert r.status_code == 200 and r.json()["logged"]
    (ep,) = read_episodes(log)
    assert ep.episode_id == "w1" and len(ep.turns) == 2 and ep.score == 1


def test_episode_ids_are_unique_across_restarts_and_reuse(served, tmp_path):
    log = tmp_path / "shared.jsonl"
    for _ in range(2):  # two server runs on one log
        http, _, _ = served(log=log)
        for k in range(2):  # the same explicit id twice, the same prompt (derived id) twice
            assert http.post("/v1/chat/completions", json=body("same prompt"), headers=conv("again")).status_code == 200
            assert http.post("/v1/mtrouter/conversations/again/finish").status_code == 200
            r = http.post("/v1/chat/completions", json=body("derived prompt"))
            cid = r.headers["x-mtrouter-conversation"]
            assert http.post(f"/v1/mtrouter/conversations/{cid}/finish").status_code == 200
    eps = read_episodes(log)  # (a repeated id would be dropped here, with a DuplicateEpisodesWarning)
    ids = [e.episode_id for e in eps]
    assert len(eps) == 8 and len(set(ids)) == 8
    assert ids.count("again") == 1 and all(e.meta["conversation"] in ("again", cid) for e in eps)
    assert all(i.startswith(("again-", "h-")) for i in ids if i != "again")  # id-RUN-N: run id + counter


def test_a_score_needs_a_range_and_huge_ones_are_refused(served):
    http, _, _ = served()
    assert http.post("/v1/chat/completions", json=body(), headers=conv("s1")).status_code == 200
    for bad, code in (({"score": 1}, "score_range_required"), ({"score": 1e300, "score_range": [-1e300, 1e300]}, None),
                      ({"score": 5, "score_range": RANGE}, None)):
        r = http.post("/v1/mtrouter/conversations/s1/finish", json=bad)
        assert r.status_code == 400, bad
        assert code is None or r.json()["error"]["code"] == code
    http2, log2, _ = served(score_range=(-100.0, 100.0))  # --score-range -100:100
    for cid in ("c1", "c2", "c3"):
        assert http2.post("/v1/chat/completions", json=body(), headers=conv(cid)).status_code == 200
    assert http2.post("/v1/mtrouter/conversations/c1/finish", json={"score": 35}).status_code == 200
    assert http2.post("/v1/mtrouter/conversations/c2/finish", json={"score": 350}).status_code == 400
    assert http2.post("/v1/mtrouter/conversations/c2/finish", json={"score": 1, "score_range": [0, 1000]}).status_code == 400
    assert http2.post("/v1/mtrouter/conversations/c3/finish", json={"score": 1, "score_range": [0, 1]}).status_code == 200
    assert sorted(e.score_range for e in read_episodes(log2)) == [(-100.0, 100.0), (0.0, 1.0)]
    assert parse_score_range("0:1") == (0.0, 1.0)
    for bad in ("1:0", "0:1e300", "x", "0:inf"):
        with pytest.raises(UsageError, match="--score-range"):
            parse_score_range(bad)


# ------------------------------------------------------------------------------------------------- bounded resources

def test_big_bodies_are_decoded_off_the_event_loop_and_object_floods_refused(served, monkeypatch):
    http, _, _ = served()
    seen = []
    real = limits_mod.anyio.to_thread.run_sync

    async def spy(fn, *args, **kw):
        seen.append(fn.__name__)
        return await real(fn, *args, **kw)

    monkeypatch.setattr(limits_mod.anyio.to_thread, "run_sync", spy)
    big = body("x" * (limits_mod.INLINE_BODY_BYTES + 10))
    assert http.post("/v1/chat/completions", json=big, headers=conv("big")).status_code == 200
    assert seen == ["_decode"]
    assert http.post("/v1/chat/completions", json=body(), headers=conv("small")).status_code == 200
    assert seen == ["_decode"]  # small bodies inline
    monkeypatch.setattr(limits_mod, "MAX_JSON_CONTAINERS", 1000)
    flood = b'{"model": "mtrouter", "messages": [{"role": "user", "content": "a"}], "x": [' + b"{}," * 2000 + b"{}]}"
    r = http.post("/v1/chat/completions", content=flood, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_the_turn_deadline_covers_every_attempt(served):
    slow = FakeUpstream(latency=3.0, record=False)
    with ServerThread(slow.app()) as srv:
        slow.url = srv.url
        http, _, proxy = served(up=slow, turn_deadline=0.5)
        t0 = time.perf_counter()
        r = http.post("/v1/chat/completions", json=body(), headers=conv("slow"))
        took = time.perf_counter() - t0
    assert r.status_code == 504 and r.json()["error"]["code"] == "turn_deadline" and took < 2.5
    assert "--turn-deadline" in r.json()["error"]["message"]
    assert proxy.store.get("slow").episode.spent == 0  # nothing billed, the conversation still usable


def test_idle_conversations_expire_logged_unscored(served):
    http, log, proxy = served(idle_timeout=0.3)
    assert http.post("/v1/chat/completions", json=body(), headers=conv("idle")).status_code == 200
    for _ in range(50):
        time.sleep(0.1)
        if not proxy.store.open:
            break
    assert http.get("/health").json()["open_conversations"] == 0
    for _ in range(30):  # its log line is written in the background
        if log.exists():
            break
        time.sleep(0.1)
    (ep,) = read_episodes(log)
    assert ep.episode_id == "idle" and ep.score is None and ep.meta["closed"] == "idle"


def test_max_open_refuses_new_conversations_without_evicting(served):
    http, _, _ = served(max_open=2)
    for cid in ("o1", "o2"):
        assert http.post("/v1/chat/completions", json=body(), headers=conv(cid)).status_code == 200
    r = http.post("/v1/chat/completions", json=body(), headers=conv("o3"))
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_conversations"
    assert http.post("/v1/chat/completions", json=body(), headers=conv("o1")).status_code == 200
    assert http.get("/v1/mtrouter/conversations/o2").json()["turns"] == 1  # not evicted
    assert http.post("/v1/mtrouter/conversations/o2/finish").status_code == 200
    assert http.post("/v1/chat/completions", json=body(), headers=conv("o3")).status_code == 200  # room again


def test_max_turns_per_conversation(served):
    http, _, _ = served(max_turns=2)
    for _ in range(2):
        assert http.post("/v1/chat/completions", json=body(), headers=conv("t")).status_code == 200
    r = http.post("/v1/chat/completions", json=body(), headers=conv("t"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "max_turns_reached"
    assert http.post("/v1/mtrouter/conversations/t/finish").json()["turns"] == 2


def test_reply_text_is_not_kept_without_log_text(served):
    http, _, proxy = served()
    msgs = body()["messages"]
    for i in range(3):
        r = http.post("/v1/chat/completions", json={"model": "mtrouter", "messages": msgs}, headers=conv("txt"))
        msgs = msgs + [r.json()["choices"][0]["message"], {"role": "user", "content": f"observation {i}"}]
    turns = proxy.store.get("txt").episode.turns
    assert all(t.action is None and t.observation is None for t in turns)


def test_limits_are_checked():
    for bad in ({"max_open": 0}, {"max_turns": 0}, {"turn_deadline": -1}, {"idle_timeout": float("nan")}):
        with pytest.raises(UsageError):
            Limits(**bad)
