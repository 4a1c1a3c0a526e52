"""The proxy's JSON sites, standard library against ``core/jsonfast.py``, on one turn's request.

    python scripts/bench_json.py [--turns 5] [--number 20000]

The request is the one ``bench_proxy.py``'s scripted agent sends at turn ``--turns`` (messages,
tool calls and results, three tool schemas); the reply is a tool-calling completion. For each
site the script times the expression the proxy used before ``jsonfast`` and the one it uses now
(best of five repeats, µs per call, both in this process) and checks that they give the same
bytes or objects.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_proxy import TOOLS, agent_step  # noqa: E402

from mtrouter_jax.core.jsonfast import dumps_compact, loads, orjson  # noqa: E402
from mtrouter_jax.live.server.api import (_SURROGATE_ESCAPE, _finite_float, _reject_constant,  # noqa: E402
                                          json_containers, parse_json)


def _request(turns: int) -> dict:
    msgs = [{"role": "system", "content": "You are an agent. Use tools."},
            {"role": "user", "content": "Task 17: find the thing and report it back with care."}]
    for t in range(turns):
        call = {"id": f"t{t}", "type": "function", "function": {"name": "web_search", "arguments": "{\"q\": \"x\"}"}}
        agent_step(msgs, {"role": "assistant", "content": None, "tool_calls": [call]}, t)
    return {"model": "mtrouter-0.05", "messages": msgs, "tools": TOOLS}


def _stdlib_compact(obj, allow_nan=True) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=allow_nan).encode("utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--number", type=int, default=20000)
    a = p.parse_args()
    body = _request(a.turns)
    raw = json.dumps(body).encode()
    reply = {"id": "c1", "object": "chat.completion", "created": 0, "model": "gpt-5",
             "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                 "role": "assistant", "content": None,
                 "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "search", "arguments": "{}"}}]}}],
             "usage": {"prompt_tokens": 300, "completion_tokens": 40, "total_tokens": 340}}
    reply_raw = json.dumps(reply).encode()
    msgs, extra = body["messages"], {"tools": body["tools"]}
    sites = [  # (site, the proxy before jsonfast, now)
        ("request decode",  # (parse_json before: the decode, the bracket count, the surrogate scan)
         lambda: (json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float), json_containers(raw),
                  _SURROGATE_ESCAPE.search(raw))[0], lambda: parse_json(raw)),
        ("input bound", lambda: len(_stdlib_compact(msgs)) + len(_stdlib_compact(extra)),
         lambda: len(dumps_compact(msgs, finite=True)) + len(dumps_compact(extra, finite=True))),
        ("upstream body", lambda: _stdlib_compact(body, False), lambda: dumps_compact(body, "raise", True)),
        ("upstream reply decode", lambda: json.loads(reply_raw),
         lambda: loads(reply_raw)),
        ("reply to the client", lambda: _stdlib_compact(reply, False), lambda: dumps_compact(reply, "null")),
    ]
    print(f"request {len(raw)} bytes (turn {a.turns}); orjson {'installed' if orjson is not None else 'MISSING'}")
    print("| site | standard library (µs) | jsonfast (µs) | ratio | same result |")
    print("|---|---|---|---|---|")
    tot = [0.0, 0.0]
    for name, old, new in sites:
        same = old() == new()
        t_old, t_new = (min(timeit.repeat(f, number=a.number, repeat=5)) / a.number * 1e6 for f in (old, new))
        tot[0] += t_old
        tot[1] += t_new
        print(f"| {name} | {t_old:.1f} | {t_new:.1f} | {t_new / t_old:.2f} | {'yes' if same else 'NO'} |")
    print(f"| all five | {tot[0]:.1f} | {tot[1]:.1f} | {tot[1] / tot[0]:.2f} | |")


if __name__ == "__main__":
    main()
