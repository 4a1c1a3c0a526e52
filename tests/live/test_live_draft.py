"""`mtrouter serve --draft` over loopback: a draft whose tool type the logs say another model is much
better at is re-served by that model; the client sees one reply, the log one turn with both costs."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from testing.fixtures import fake_api_key, upstream  # noqa: F401  (fixtures)
from testing.live import ServerThread, make_pool
from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server.app import create_app
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
        assert info["test"] == "overlap" and info["escalations"] == {bad: {"cheap": "strong"}}
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


def test_draft_needs_a_table_and_no_shared_state():
    from mtrouter_jax.routing.specs import RouterSpecError
    from mtrouter_jax.live.router import router_from_options
    with pytest.raises(RouterSpecError, match="--draft needs --checkpoint"):
        router_from_options(router="cheapest", draft=True)
    assert router_from_options(router="cheapest", draft="auto").draft_table is None  # the default: quietly off
    with pytest.raises(RouterSpecError, match="--draft: unknown draft mode"):
        router_from_options(router="cheapest", draft="sometimes")
    from mtrouter_jax.live.server.app import serve
    with pytest.raises(RouterSpecError, match="--draft is not supported with --state redis"):
        serve(router="cheapest", state="redis://127.0.0.1:1/0", draft="overlap")  # refused before anything starts


def test_draft_test_is_chosen_by_name_on_the_router_and_the_serve_flag(upstream):  # noqa: F811
    import argparse

    from mtrouter_jax.live.server.options import add_serve_args

    pool = make_pool(upstream.url + "/v1")
    plain = Router(None, pool, policy="fixed:cheap")
    table = _table(plain, plain.tool_of("python")[0])
    assert Router(None, pool, policy="fixed:cheap", draft=True, type_outcomes=table).draft_test == "overlap"
    assert Router(None, pool, policy="fixed:cheap", draft="difference", type_outcomes=table).draft_test == "difference"
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
    assert p.parse_args(["--draft"]).draft == "overlap"
    assert p.parse_args(["--draft", "difference"]).draft == "difference"
    assert p.parse_args(["--draft", "off"]).draft == "off"
    with pytest.raises(SystemExit):
        p.parse_args(["--draft", "bayes"])
