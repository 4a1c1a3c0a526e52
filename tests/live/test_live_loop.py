"""From zero logs to a trained router, over loopback (docs/live_loop.md, command for command):

1. ``mtrouter serve --router tool-heuristic --explore sticky:0.9`` (no checkpoint) routes an agent's
   conversations (``model="mtrouter-explore-0.50"``); ``mtrouter route --score`` reports outcomes;
2. ``mtrouter train --data round1.jsonl`` trains a checkpoint on those logs;
3. ``mtrouter serve --router safe --checkpoint ckpt1 --explore beta:0.5`` routes round 2
   (the paper's stage B, online); 4. ``mtrouter train --data round1.jsonl round2.jsonl``.

Every logged propensity is recomputed from the logged turns with the policy's own function.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io

import jax.numpy as jnp
import numpy as np
import openai
import pytest

from testing.live import FakeUpstream, ServerThread
from mtrouter_jax import cli
from mtrouter_jax.routing import policies as routing
from mtrouter_jax.estimator.checkpoint import load_checkpoint
from mtrouter_jax.core.features import advance_summary, initial_summary, vocab_index
from mtrouter_jax.live.router import router_from_options
from mtrouter_jax.live.server.app import create_app
from mtrouter_jax.logs.io import SEVERITIES, read_episodes
from mtrouter_jax.core.pool import Endpoint, Pool, default_pool

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
KEY_ENV = "MTROUTER_LOOP_FAKE_KEY"
TOOLS_SPEC = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
              for n in ("web_search", "python", "read_file", "browse_page", "bash")]
N_CONV, N_TURNS = 14, 8


def live_pool(base_url: str) -> Pool:
    pool = default_pool()
    return Pool(pool.name, tuple(dataclasses.replace(m, endpoint=Endpoint(base_url, f"fake-{m.name}", KEY_ENV))
                                 for m in pool.models))


def converse(url: str, cid: str, model: str) -> list[str]:
    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=20.0, max_retries=0)
    msgs = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": f"task {cid}"}]
    served = []
    for i in range(N_TURNS):
        try:
            r = c.chat.completions.create(model=model, messages=msgs, tools=TOOLS_SPEC,
                                          extra_headers={"X-MTRouter-Conversation": cid})
        except openai.APIStatusError as e:  # the budget ran out: 402, the conversation ends
            assert e.status_code == 402
            break
        served.append(r.model)
        m = r.choices[0].message
        msgs.append(m.model_dump(exclude_none=True))
        for tc in m.tool_calls or []:
            out = "Traceback (most recent call last):\nValueError: bad" if i % 5 == 2 else f"result {i}"
            msgs.append({"role": "tool", "tool_call_id": tc.id, "content": out})
    return served


def score_of(served: list[str]) -> float:
    """A synthetic outcome with a signal: more gpt-5 and deepseek turns score higher."""
    return float(np.mean([m in ("gpt-5", "deepseek-v3.2") for m in served])) if served else 0.0


def run_round(router, tag: str, model: str) -> None:
    with ServerThread(create_app(router, timeout=10.0, max_retries=0)) as proxy:
        for k in range(N_CONV):
            cid = f"{tag}-{k}"
            served = converse(proxy.url, cid, model)
            assert cli.main(["route", "--url", proxy.url, "--conversation", cid, "--score", str(score_of(served)),
                             "--score-range", "0", "1"]) == 0


def replay_probs(router, ep):
    """(logged propensity, recomputed probability) per turn: the summary is rebuilt from the logged
    turns and the policy's distribution recomputed on it (allowed = the logged set, else all)."""
    pol = router.explore_policy
    L = router.layout
    s = initial_summary(int(vocab_index(L.task_types, [ep.task_type])[0]), 0.0, np.inf)
    out = []
    for t in ep.turns:
        allowed = np.isin(router.pool.names, (t.meta or {}).get("allowed", router.pool.names))
        inputs = routing.turn_inputs(np.zeros(len(allowed)), np.zeros(len(allowed)), np.inf, allowed=allowed)
        probs = np.asarray(pol.dist(s, inputs, pol.params))
        out.append((t.propensity, float(probs[router.pool.index(t.model)]), probs, t))
        kind, sev = (router.error_of(t.error) if t.error else (-1, -1))
        s = advance_summary(s, router.pool.index(t.model), router.tool_of(t.tool)[1], kind, sev,
                            t.input_tokens, t.output_tokens, t.cost, 0.0)
    return out


def test_zero_logs_to_trained_router(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    upstream = FakeUpstream(natural_tokens=200, record=False)
    log1, log2 = tmp_path / "round1.jsonl", tmp_path / "round2.jsonl"
    ckpt1, ckpt2 = tmp_path / "ckpt1", tmp_path / "ckpt2"
    with ServerThread(upstream.app()) as up:
        pool = live_pool(up.url + "/v1")
        # 1. no checkpoint: the tool heuristic with sticky exploration
        r1 = router_from_options(pool=pool, router="tool-heuristic", explore="sticky:0.9", log_path=log1, seed=3)
        run_round(r1, "r1", "mtrouter-explore-0.50")
        eps1 = read_episodes(log1)
        assert len(eps1) == N_CONV and all(e.score is not None and e.meta["explore"] for e in eps1)
        assert len({t.model for e in eps1 for t in e.turns}) >= 4  # exploration reached beyond the heuristic's two
        for e in eps1:
            assert e.meta["policy"] == "tool-heuristic|sticky:0.9" and isinstance(e.meta["seed"], int)
            for logged, recomputed, probs, t in replay_probs(r1, e):
                assert logged == pytest.approx(recomputed, abs=1e-6)
                if "probs" in (t.meta or {}):
                    np.testing.assert_allclose(t.meta["probs"], probs, atol=1e-6)
        # 2. train on round 1
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert cli.main(["train", "--data", str(log1), "--out", str(ckpt1)]) == 0
        out = buf.getvalue()
        assert "ESS of 1/p" in out and "explored (p<1)" in out and f"checkpoint {ckpt1}" in out
        # 3. the checkpoint with beta-mixed exploration: the paper's stage B, online
        r2 = router_from_options(checkpoint=str(ckpt1), pool=pool, router="safe", explore="beta:0.5", log_path=log2,
                          seed=4)
        run_round(r2, "r2", "mtrouter-explore-0.50")
        eps2 = read_episodes(log2)
        assert len(eps2) == N_CONV
        for e in eps2:
            for t in e.turns:
                n_allowed = len((t.meta or {}).get("allowed", pool.names))
                greedy, explore = 0.5 + 0.5 / n_allowed, 0.5 / n_allowed
                assert t.propensity == pytest.approx(greedy, abs=1e-6) or t.propensity == pytest.approx(explore,
                                                                                                     abs=1e-6)
                assert sum(t.meta["probs"]) == pytest.approx(1.0, abs=1e-5)
                assert t.meta["probs"][pool.index(t.model)] == pytest.approx(t.propensity, abs=1e-6)
        # 4. retrain on both rounds
        assert cli.main(["train", "--data", str(log1), str(log2), "--out", str(ckpt2)]) == 0
    est = load_checkpoint(ckpt2)
    assert est.meta["data"]["n_episodes"] == 2 * N_CONV
    x = np.zeros((1, est.n_features), np.float32)
    assert np.isfinite(est.predict(x)[0]).all()
    assert jnp.isfinite(jnp.asarray(est.predict(x)[1])).all()
    assert {"search", "python", "file"} <= set(est.layout.tools)
    assert SEVERITIES == ("low", "medium", "high")
