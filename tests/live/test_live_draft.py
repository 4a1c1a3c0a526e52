"""`mtrouter serve --draft` over loopback: a draft whose tool type the logs say another model is much
better at is re-served by that model; the client sees one reply, the log one turn with both costs."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import numpy as np
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_store import connect, redis_server  # noqa: F401  (fixtures: one shared store, memory or Redis)
from testing.fixtures import fake_api_key, upstream  # noqa: F401  (fixtures)
from testing.live import ServerThread, make_pool
from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server.app import create_app
from mtrouter_jax.live.server.drafting import buffered_sse
from mtrouter_jax.live.server.shared import conv_key, episode_key
from mtrouter_jax.live.store import MemoryStore
from mtrouter_jax.logs.io import read_episodes
from mtrouter_jax.routing.draft import fit_table

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TOOLS_SPEC = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
              for n in ("web_search", "python", "read_file", "browse_page", "bash")]


def _table(router: Router, bad_type: str):
    """Logs in which 'cheap' fails at ``bad_type`` turns and 'strong' succeeds (40 turns each)."""
    k = router.layout.tools.index(bad_type)
    c, s = router.pool.index("cheap"), router.pool.index("strong")
    rng = np.random.default_rng(0)
    gains = np.r_[rng.normal(-0.3, 0.05, 40), rng.normal(0.2, 0.05, 40)]
    return fit_table(np.full(80, k), np.r_[np.full(40, c), np.full(40, s)], gains, router.layout.tools,
                     router.pool.names)


def test_draft_escalation_is_one_reply_and_one_logged_turn(upstream, tmp_path):  # noqa: F811
    upstream.fail.clear()
    pool = make_pool(upstream.url + "/v1")
    plain = Router(None, pool, policy="fixed:cheap")
    bad = plain.tool_of("python")[0]
    log = tmp_path / "draft.jsonl"
    router = Router(None, pool, policy="fixed:cheap", log_path=log, draft=True, type_outcomes=_table(plain, bad))
    with ServerThread(create_app(router, timeout=5.0, max_retries=0)) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", timeout=10.0, max_retries=0)
        msgs = [{"role": "system", "content": "agent"}, {"role": "user", "content": "task"}]
        served, n_before = [], len(upstream.requests)
        for i in range(6):
            r = c.chat.completions.with_raw_response.create(model="mtrouter", messages=msgs, tools=TOOLS_SPEC,
                                                          extra_headers={"X-MTRouter-Conversation": "d1"})
            reply = r.parse()
            served.append(r.headers["X-MTRouter-Model"])
            assert reply.model == served[-1]
            msg = reply.choices[0].message
            msgs.append(msg.model_dump(exclude_none=True))
            msgs.append({"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": f"ok {i}"} if msg.tool_calls
                        else {"role": "user", "content": f"go on {i}"})
        calls = [b["model"] for b in upstream.requests[n_before:]]
        info = c._client.get(srv.url + "/v1/mtrouter/router").json()["draft"]  # what drafting will do, said
        assert info["test"] == "difference" and info["escalations"] == {bad: {"cheap": "strong"}}
        httpx_finish = c._client.post(srv.url + "/v1/mtrouter/conversations/d1/finish", json={"score": 1.0,
                                                                                           "score_range": [0, 1]})
        assert httpx_finish.status_code == 200
    ep = read_episodes(log)[-1]
    tools = [plain.tool_of(t)[0] for t in ("web_search", "python", "python", "read_file", None, "browse_page")]
    for t, turn, model in zip(tools, ep.turns, served):
        assert turn.model == model
        if t == bad:  # the draft called python: re-served by strong, the draft billed in the same turn
            assert model == "strong" and turn.meta["draft"]["model"] == "cheap"
            assert turn.cost > turn.meta["draft"]["cost"] > 0
        else:
            assert model == "cheap" and "draft" not in (turn.meta or {})
    assert calls.count("fake-strong") == served.count("strong") == 2  # one extra upstream call per escalation
    assert len(calls) == len(served) + 2


def test_draft_needs_a_table():
    from mtrouter_jax.routing.specs import RouterSpecError
    from mtrouter_jax.live.router import router_from_options
    with pytest.raises(RouterSpecError, match="--draft needs --checkpoint"):
        router_from_options(router="cheapest", draft=True)
    assert router_from_options(router="cheapest", draft="auto").draft_table is None  # the default: quietly off
    with pytest.raises(RouterSpecError, match="--draft: unknown draft mode"):
        router_from_options(router="cheapest", draft="sometimes")


def test_draft_test_is_chosen_by_name_on_the_router_and_the_serve_flag(upstream):  # noqa: F811
    import argparse

    from mtrouter_jax.live.server.options import add_serve_args

    pool = make_pool(upstream.url + "/v1")
    plain = Router(None, pool, policy="fixed:cheap")
    table = _table(plain, plain.tool_of("python")[0])
    assert Router(None, pool, policy="fixed:cheap", draft=True, type_outcomes=table).draft_test == "difference"
    assert Router(None, pool, policy="fixed:cheap", draft="overlap", type_outcomes=table).draft_test == "overlap"
    with pytest.raises(ValueError, match="unknown draft mode 'bayes': use one of auto, off, overlap, difference"):
        Router(None, pool, policy="fixed:cheap", draft="bayes", type_outcomes=table)
    # auto (serve's default): the table where it has outcomes; none for an empty one or none at all
    assert Router(None, pool, policy="fixed:cheap", draft="auto", type_outcomes=table).draft_table is table
    empty = fit_table(np.zeros(0, int), np.zeros(0, int), np.zeros(0), plain.layout.tools, plain.pool.names)
    assert Router(None, pool, policy="fixed:cheap", draft="auto", type_outcomes=empty).draft_table is None
    k, rng = plain.layout.tools.index(plain.tool_of("python")[0]), np.random.default_rng(1)
    alike = fit_table(np.full(80, k), np.r_[np.zeros(40, int), np.ones(40, int)], rng.normal(0.0, 0.1, 80),
                      plain.layout.tools, plain.pool.names)  # outcomes, but no model significantly better
    assert Router(None, pool, policy="fixed:cheap", draft="auto", type_outcomes=alike).draft_table is None
    assert Router(None, pool, policy="fixed:cheap", draft="overlap", type_outcomes=alike).draft_table is alike
    assert Router(None, pool, policy="fixed:cheap", draft="auto").draft_table is None
    from mtrouter_jax.live.draft import why_not_drafting
    assert why_not_drafting(Router(None, pool, policy="fixed:cheap")) == "the checkpoint's logs have no per-turn outcomes"
    assert Router(None, pool, policy="fixed:cheap", draft="off", type_outcomes=table).draft_table is None
    with pytest.raises(ValueError, match="draft routing needs per-"):
        Router(None, pool, policy="fixed:cheap", draft="overlap")  # asked for explicitly: no table is an error
    p = argparse.ArgumentParser()
    add_serve_args(p)
    assert p.parse_args([]).draft == "auto"
    assert p.parse_args(["--draft"]).draft == "difference"
    assert p.parse_args(["--draft", "difference"]).draft == "difference"
    assert p.parse_args(["--draft", "off"]).draft == "off"
    with pytest.raises(SystemExit):
        p.parse_args(["--draft", "bayes"])


# ---------------------------------------------------------------- drafting with a shared state store

class _Proxies:
    """``n`` drafting proxies (``fixed:cheap``, python turns escalate to strong), each with its own client
    ``connect()`` of one shared store (None: one proxy, the in-process state), in front of the fake
    upstream; ``turns`` sends one conversation."""

    def __init__(self, upstream, connect=None, n=2):
        pool = make_pool(upstream.url + "/v1")
        plain = Router(None, pool, policy="fixed:cheap")
        table = _table(plain, plain.tool_of("python")[0])
        self.threads = [ServerThread(create_app(Router(None, pool, policy="fixed:cheap", draft=True,
                                                       type_outcomes=table), timeout=5.0, max_retries=0,
                                                state=connect and connect())).__enter__()
                        for _ in range(n if connect else 1)]

    def turns(self, n: int, budget: float, cid: str | None = None, between=None) -> list[tuple]:
        """(served model, turn cost) of each turn, alternating proxies, or (status,) for a refusal (the
        conversation then stops); ``between(cid)`` runs after the first turn."""
        cid = cid or uuid.uuid4().hex[:10]
        msgs = [{"role": "system", "content": f"agent {cid}"}, {"role": "user", "content": "task"}]  # no shared cache
        out = []
        with httpx.Client(timeout=30.0) as h:
            for i in range(n):
                r = h.post(self.threads[i % len(self.threads)].url + "/v1/chat/completions",
                           json={"model": f"mtrouter-{budget!r}", "messages": msgs, "tools": TOOLS_SPEC},
                           headers={"X-MTRouter-Conversation": cid})
                if r.status_code != 200:
                    return out + [(r.status_code,)]
                msg = r.json()["choices"][0]["message"]
                out.append((r.headers["x-mtrouter-model"], float(r.headers["x-mtrouter-turn-cost"])))
                msgs += [{k: v for k, v in msg.items() if v is not None},
                         {"role": "tool", "tool_call_id": msg["tool_calls"][0]["id"], "content": f"ok {i}"}]
                if between is not None and i == 0:
                    between(cid)
        return out

    def close(self):
        for t in self.threads:
            t.__exit__(None, None, None)


def _stored(connect, cid):
    """(stored episode state, spent, held) of conversation ``cid`` in the shared store."""
    async def main():
        s = connect()
        try:
            st = json.loads((await s.get(conv_key("", cid))).data)["episode"]
            ekey = episode_key(st["episode_id"])
            return st, await s.spent(ekey), await s.reserved(ekey)
        finally:
            if not isinstance(s, MemoryStore):
                await s.close()
    return asyncio.run(main())


def test_with_a_shared_store_a_draft_escalates_exactly_where_the_in_process_budget_lets_it(upstream, connect):  # noqa: F811
    """The draft's reservation (its worst case) is held while the escalation reserves: the escalation
    holds its worst case less what the draft's hold over-covers, so the two replicas escalate at the
    same budget as one proxy with the state in memory, to the 0.1 micro-dollar (holding the draft's
    worst case as well refused escalations the in-process budget allowed)."""
    upstream.fail.clear()
    alone, shared = _Proxies(upstream), _Proxies(upstream, connect, n=2)
    try:
        lo, hi = 0.0, 1.0  # the least budget at which the second turn (a python call) is re-served
        while hi - lo > 1e-7:
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if alone.turns(2, mid)[1][0] == "strong" else (mid, hi)
        for budget, second in ((hi + 1e-7, "strong"), (lo - 1e-7, "cheap")):
            cid = uuid.uuid4().hex[:10]
            got = shared.turns(3, budget, cid)
            assert got[:2] == alone.turns(2, budget)[:2] and got[1][0] == second
            st, spent, held = _stored(connect, cid)
            billed = [t["cost"] for t in st["turns"]]
            assert billed == pytest.approx([c for _, c in got[:len(billed)]], abs=1e-12)
            assert spent == pytest.approx(sum(billed), abs=1e-12) and held == 0 and spent <= budget
    finally:
        alone.close()
        shared.close()


def test_an_escalation_the_shared_store_will_not_hold_serves_the_draft(upstream, connect):  # noqa: F811
    """Another replica's turn (say, one that died) holds most of the budget: the escalation's
    reservation is refused, so the draft — already held and paid for — is the reply, billed once."""
    upstream.fail.clear()
    proxies = _Proxies(upstream, connect, n=2)
    budget, dead_hold = 1.0, 0.9

    def hold(cid):
        async def main():
            s = connect()
            st = json.loads((await s.get(conv_key("", cid))).data)["episode"]
            assert await s.reserve(episode_key(st["episode_id"]), "a-dead-replica", dead_hold, budget)
            if not isinstance(s, MemoryStore):
                await s.close()
        asyncio.run(main())

    try:
        cid = uuid.uuid4().hex[:10]
        got = proxies.turns(2, budget, cid, between=hold)
        assert [m for m, _ in got] == ["cheap", "cheap"]  # the python turn's draft was served
        st, spent, held = _stored(connect, cid)
        turn = st["turns"][-1]
        assert turn["meta"]["draft_escalation_failed"] == {"model": "strong", "error": "budget_held"}
        assert "draft" not in turn["meta"]
        assert spent == pytest.approx(sum(c for _, c in got), abs=1e-12)
        assert held == pytest.approx(dead_hold)  # only the dead replica's hold is left
    finally:
        proxies.close()


# ---------------------------------------------------------------- streamed requests

def _streamed_turns(url: str, cid: str, n: int) -> list[dict]:
    """``n`` streamed turns of one conversation: per turn the served model (header), the assembled
    message, its finish reason and usage (``include_usage``)."""
    c = openai.OpenAI(base_url=url + "/v1", api_key="x", timeout=10.0, max_retries=0)
    msgs = [{"role": "system", "content": f"agent {cid}"}, {"role": "user", "content": "task"}]
    out = []
    for i in range(n):
        raw = c.chat.completions.with_raw_response.create(
            model="mtrouter", messages=msgs, tools=TOOLS_SPEC, stream=True, stream_options={"include_usage": True},
            extra_headers={"X-MTRouter-Conversation": cid})
        text, calls, finish, usage = [], {}, None, None
        for ch in raw.parse():
            usage = ch.usage or usage
            for choice in ch.choices:
                finish = choice.finish_reason or finish
                text.append(choice.delta.content or "")
                for tc in choice.delta.tool_calls or []:
                    got = calls.setdefault(tc.index, {"id": tc.id, "name": "", "arguments": ""})
                    got["name"] += (tc.function.name or "") if tc.function else ""
                    got["arguments"] += (tc.function.arguments or "") if tc.function else ""
        out.append({"model": raw.headers["X-MTRouter-Model"], "calls": calls, "finish": finish, "usage": usage})
        call = calls[0]
        msgs.append({"role": "assistant", "content": "".join(text) or None, "tool_calls": [
            {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}]})
        msgs.append({"role": "tool", "tool_call_id": call["id"], "content": f"ok {i}"})
    return out


def test_a_streamed_turn_is_held_back_where_its_draft_can_be_re_served(upstream, tmp_path):  # noqa: F811
    """cheap's drafts can be re-served: a streamed turn is decided before any byte goes out (the
    upstream calls unstreamed) and the client gets the decided reply as SSE, usage chunk included;
    the turns are the non-streamed ones'. mid's drafts never are: its turns stream through."""
    upstream.fail.clear()
    pool = make_pool(upstream.url + "/v1")
    plain = Router(None, pool, policy="fixed:cheap")
    table = _table(plain, plain.tool_of("python")[0])
    log = tmp_path / "streamed.jsonl"
    for policy, held in (("fixed:cheap", True), ("fixed:mid", False)):
        router = Router(None, pool, policy=policy, log_path=log, draft=True, type_outcomes=table)
        with ServerThread(create_app(router, timeout=5.0, max_retries=0)) as srv:
            n_before = len(upstream.requests)
            got = _streamed_turns(srv.url, f"s-{policy}", 4)
            bodies = upstream.requests[n_before:]
            with httpx.Client() as h:
                assert h.post(srv.url + f"/v1/mtrouter/conversations/s-{policy}/finish",
                              json={"score": 1.0, "score_range": [0, 1]}).status_code == 200
        assert all(("stream" in b) != held for b in bodies)  # held back: every upstream call unstreamed
        want = ["cheap", "strong", "strong", "cheap"] if held else ["mid"] * 4  # tool cycle: search, python, python, file
        assert [g["model"] for g in got] == want
        assert [g["calls"][0]["name"] for g in got] == ["web_search", "python", "python", "read_file"]
        assert all(g["finish"] == "tool_calls" and g["usage"].completion_tokens > 0 for g in got)
        ep = read_episodes(log)[-1]
        assert [t.model for t in ep.turns] == want
        assert [t.meta is not None and "draft" in t.meta for t in ep.turns] == [m == "strong" for m in want]
        assert [t.output_tokens for t in ep.turns] == [g["usage"].completion_tokens for g in got]
    assert len([b for b in upstream.requests if b["model"] == "fake-strong"]) >= 2


_call = st.fixed_dictionaries({"id": st.text(min_size=1, max_size=8), "type": st.just("function"),
                               "function": st.fixed_dictionaries({"name": st.text(min_size=1, max_size=12),
                                                                  "arguments": st.text(max_size=40)})})


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=60)), st.lists(_call, max_size=3),
       st.sampled_from(["stop", "tool_calls", "length"]), st.booleans())
def test_a_held_back_reply_streams_as_the_same_message(content, calls, finish, include_usage):
    """Reassembled as a client does (deltas concatenated by tool-call index), the SSE body of a held-back
    turn is the decided reply: its content, tool calls, finish reason and, where asked, usage."""
    msg = {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
    usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    resp = {"id": "x", "object": "chat.completion", "created": 1, "model": "strong",
            "choices": [{"index": 0, "message": msg, "finish_reason": finish}], "usage": usage}
    body = buffered_sse(resp, include_usage, {"model": "strong"}).decode()
    events = [ln[len("data: "):] for ln in body.split("\n\n") if ln.startswith("data: ")]
    assert events[-1] == "[DONE]" and f': mtrouter {json.dumps({"model": "strong"})}' in body
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(ch["model"] == "strong" and ch["object"] == "chat.completion.chunk" for ch in chunks)
    text, got_calls, got_finish, got_usage = [], {}, None, None
    for ch in chunks:
        got_usage = ch.get("usage") or got_usage
        for c in ch["choices"]:
            got_finish = c["finish_reason"] or got_finish
            text.append(c["delta"].get("content") or "")
            for tc in c["delta"].get("tool_calls") or []:
                got_calls[tc["index"]] = tc
    assert "".join(text) == (content or "") and got_finish == finish
    assert [{k: v for k, v in got_calls[i].items() if k != "index"} for i in sorted(got_calls)] == calls
    assert got_usage == (usage if include_usage else None)


def test_the_shadow_mirror_of_a_re_served_turn_pays_for_its_draft_too(upstream, tmp_path):  # noqa: F811
    """The shadow decides on the served history, budget included: its mirror of a re-served turn
    bills the draft as the served episode does, so the two spends stay equal."""
    from mtrouter_jax.live.server.arms import Arms
    from testing.live import FakeEstimator

    upstream.fail.clear()
    pool = make_pool(upstream.url + "/v1")
    plain = Router(None, pool, policy="fixed:cheap")
    router = Router(None, pool, policy="fixed:cheap", draft=True, type_outcomes=_table(plain, plain.tool_of("python")[0]))
    app = create_app(router, timeout=5.0, max_retries=0, arms=Arms(shadow=Router(FakeEstimator(pool)), seed=7))
    with ServerThread(app) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", timeout=10.0, max_retries=0)
        msgs = [{"role": "system", "content": "agent shadowed"}, {"role": "user", "content": "task"}]
        for i in range(4):
            msg = c.chat.completions.create(model="mtrouter", messages=msgs, tools=TOOLS_SPEC,
                                            extra_headers={"X-MTRouter-Conversation": "sh"}).choices[0].message
            msgs += [msg.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": f"ok {i}"}]
        ep = app.state.proxy.store.get("sh").episode
        drafted = [t for t in ep.turns if "draft" in (t.meta or {})]
        assert len(drafted) == 2 and ep.shadow is not None
        assert ep.shadow.spent == pytest.approx(ep.spent, abs=1e-12)
        assert [t.cost for t in ep.shadow.turns] == pytest.approx([t.cost for t in ep.turns], abs=1e-12)
        assert ep.shadow.tokens == ep.tokens
