"""Live routing end to end: simulator-trained checkpoint -> proxy -> ``openai`` client -> JSONL log -> retrain.

A real checkpoint (trained on simulated episodes of the default pool) serves the OpenAI-compatible
proxy on loopback; every pool model's endpoint points at the fake upstream of ``testing.live``. A
plain ``openai.OpenAI`` client runs a 20-turn tool-using conversation under a per-episode budget
(``model="mtrouter-0.50"``) and a second one under a budget tight enough to run out (402). The
proxy's log of both then trains a new checkpoint whose layout knows the live tool types.
"""

from __future__ import annotations

import dataclasses
import math

import httpx
import numpy as np
import openai
import pytest

from testing.artifacts import simulated_episodes, trained_checkpoint
from testing.live import FakeUpstream, ServerThread
from mtrouter_jax.estimator.checkpoint import load_checkpoint
from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server.app import create_app
from mtrouter_jax.logs.io import drop_unscored, read_episodes
from mtrouter_jax.core.pool import Endpoint, Pool, default_pool
from mtrouter_jax.estimator.train import TrainConfig
from mtrouter_jax.jobs import train_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY_ENV = "MTROUTER_E2E_FAKE_KEY"
TOOLS_SPEC = [{"type": "function", "function": {"name": n, "description": d, "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}
    for n, d in [("web_search", "search the web"), ("python", "run python code"), ("read_file", "read a file"),
                 ("browse_page", "open a URL"), ("bash", "run a shell command")]]


def live_pool(base_url: str) -> Pool:
    """The default pool (same names, order and prices as the checkpoint) with fake endpoints."""
    pool = default_pool()
    return Pool(pool.name, tuple(dataclasses.replace(m, endpoint=Endpoint(base_url, f"fake-{m.name}", KEY_ENV))
                                 for m in pool.models))


def tool_result(i: int, name: str) -> str:
    if i % 4 == 1:  # python calls land here in the fake's tool cycle: some of them fail
        return ("Traceback (most recent call last):\n  File \"solve.py\", line 3, in <module>\n"
                "    print(1 / 0)\nZeroDivisionError: division by zero")
    return f"{name} result #{i}: 3 matching documents"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(proxy url, log path, pool names, checkpoint path) of a proxy serving the real checkpoint."""
    ckpt = trained_checkpoint(tmp_path_factory)
    upstream = FakeUpstream(natural_tokens=300, record=False)
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, "sk-test-not-a-real-key")
    log = tmp_path_factory.mktemp("live") / "live.jsonl"
    try:
        with ServerThread(upstream.app()) as up:
            pool = live_pool(up.url + "/v1")
            router = Router.from_checkpoint(ckpt, pool=pool, log_path=log)
            assert router.pool.names == load_checkpoint(ckpt).pool.names
            app = create_app(router, timeout=10.0, max_retries=0)
            with ServerThread(app) as proxy:
                yield proxy.url, log, pool.names, ckpt
    finally:
        mp.undo()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-client-unused", timeout=20.0, max_retries=0)


def run_conversation(url, names, cid, model, n_turns, extra_headers=None):
    """Drive up to ``n_turns`` calls; returns (models served, spends, 402 error or None, n errors sent)."""
    c = client(url)
    msgs = [{"role": "system", "content": "You are a research agent with tools."},
            {"role": "user", "content": f"Task {cid}: find the answer and verify it with python."}]
    served, spends, errors = [], [], 0
    budget = None
    for i in range(n_turns):
        try:
            raw = c.chat.completions.with_raw_response.create(
                model=model, messages=msgs, tools=TOOLS_SPEC,
                extra_headers={"X-MTRouter-Conversation": cid, **(extra_headers or {})})
        except openai.APIStatusError as e:
            return served, spends, e, errors
        r, h = raw.parse(), raw.headers
        # the response names the chosen pool model, in the body and the header
        assert r.model in names and h["x-mtrouter-model"] == r.model
        assert h["x-mtrouter-conversation"] == cid
        spent, remaining = float(h["x-mtrouter-spent"]), float(h["x-mtrouter-remaining"])
        budget = spent + remaining if budget is None else budget
        assert remaining >= 0 and spent + remaining == pytest.approx(budget, abs=1e-7)
        assert float(h["x-mtrouter-turn-cost"]) > 0
        assert not spends or spent > spends[-1]
        served.append(r.model)
        spends.append(spent)
        m = r.choices[0].message
        msgs.append(m.model_dump(exclude_none=True))
        for tc in m.tool_calls or []:
            msgs.append({"role": "tool", "tool_call_id": tc.id, "content": tool_result(i, tc.function.name)})
            errors += "Traceback" in msgs[-1]["content"] and i < n_turns - 1  # the last result is never sent
        if not m.tool_calls:
            msgs.append({"role": "user", "content": "Continue; use the tools."})
    return served, spends, None, errors


def test_live_e2e_checkpoint_proxy_log_retrain(live, tmp_path, tmp_path_factory):
    url, log, names, ckpt = live
    budget = 0.50
    served, spends, err, n_err = run_conversation(url, names, "e2e-20", f"mtrouter-{budget:.2f}", 20)
    assert err is None and len(served) == 20
    assert spends[-1] <= budget
    info = httpx.get(f"{url}/v1/mtrouter/conversations/e2e-20").json()
    assert info["turns"] == 20 and info["models"] == served and info["budget"] == budget
    assert info["errors"] == n_err >= 2
    done = httpx.post(f"{url}/v1/mtrouter/conversations/e2e-20/finish",
                      json={"score": 60.0, "score_range": [0, 100]}).json()
    assert done["logged"] and done["finished"]

    # a budget tight enough to run out: every call stays within it, then 402 budget_exhausted
    tight = 0.004
    served2, spends2, err2, _ = run_conversation(url, names, "e2e-tight", "mtrouter", 40,
                                                 {"X-MTRouter-Budget": str(tight)})
    assert err2 is not None and err2.status_code == 402 and err2.body["code"] == "budget_exhausted"
    assert 1 <= len(served2) < 40 and all(s <= tight for s in spends2)
    done2 = httpx.post(f"{url}/v1/mtrouter/conversations/e2e-tight/finish").json()
    assert done2["logged"] and "budget exhausted" in done2["ended"]

    eps = {e.episode_id: e for e in read_episodes(log, pool_models=set(names))}
    ep, ep2 = eps["e2e-20"], eps["e2e-tight"]
    assert ep.source == "live" and ep.budget == budget and ep.models == names
    assert len(ep.turns) == 20 and [t.model for t in ep.turns] == served
    assert ep.total_cost == pytest.approx(spends[-1]) and ep.total_cost <= budget
    assert ep.score == 60.0 and ep.score_range == (0.0, 100.0)
    assert all(t.propensity == 1.0 for t in ep.turns)  # the greedy learned router: deterministic
    assert sum(t.error is not None for t in ep.turns) == n_err
    assert {t.error.kind for t in ep.turns if t.error} == {"python_error"}
    assert {"search", "python", "file", "reasoning", "browse", "bash"} <= {t.tool for t in ep.turns}
    assert all(t.features is not None and all(map(math.isfinite, t.features)) for t in ep.turns)
    assert len(ep2.turns) == len(served2) and ep2.total_cost <= tight and ep2.score is None
    assert all(t.propensity == 1.0 for t in ep2.turns)

    # the proxy's log (plus simulated episodes, for enough turns) trains a new checkpoint
    sim = simulated_episodes(tmp_path_factory)[:32]
    kept, n_unscored = drop_unscored([ep, ep2] + sim)
    assert n_unscored == 1  # the tight episode was never scored: training drops it
    _, res = train_checkpoint(kept, default_pool(), tmp_path / "ckpt2",
                                 TrainConfig(max_epochs=1, batch_size=16), progress=False)
    loaded = load_checkpoint(tmp_path / "ckpt2")
    lay = loaded.layout
    assert {"browse", "bash", "search", "python", "file", "reasoning"} <= set(lay.tools)
    assert "python_error" in lay.error_kinds and "other" in lay.task_types
    assert lay.models == names and loaded.meta["data"]["n_episodes"] == len(sim) + 1
    assert math.isfinite(res.val_loss)
    # the new checkpoint routes live conversations: predictions on the new layout are finite
    r2 = Router(loaded, pool=live_pool("http://127.0.0.1:9/v1"))
    e = r2.start_episode("probe", budget=budget)
    e.record(names[0], {"prompt_tokens": 500, "completion_tokens": 50}, tool_name="bash",
             observation="bash: foo: command not found")
    d = e.decide(input_tokens_hi=800)
    assert d.model in names and np.all(np.isfinite(d.values))
    score, cost = loaded.predict(np.stack([d.features, d.features]))
    assert score.shape == cost.shape == (2, len(names)) and np.all(np.isfinite(score)) and np.all(np.isfinite(cost))

