"""Test doubles for driving real agent frameworks through the proxy (tests/test_live_agents.py).

* ``ScriptedUpstream``: a fake OpenAI-compatible upstream (FastAPI, run it with
  ``testing.live.ServerThread``) whose replies are a fixed script of shell commands, in whichever
  form the caller understands: a ``bash`` tool call when the request offers a function tool named
  ``bash`` (mini-swe-agent's default tool-call mode, our OpenAI Agents SDK / LangChain recipes),
  else a ```` ```mswea_bash_command ```` block (mini-swe-agent's text-based mode). Once the script
  is used up it answers with plain text (what ends an Agents SDK / LangChain tool loop). The step
  is the number of assistant messages in the request, so the fake is stateless per conversation.
* ``write_network_guard(dir)``: a ``sitecustomize.py`` that, in any Python process started with
  ``PYTHONPATH=dir``, refuses (``OSError``) and records every DNS lookup or socket connection to a
  host other than loopback — proof that an agent framework does not phone home during the test.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

SUBMIT = "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"  # mini-swe-agent's completion marker command
SCRIPT = ("echo hello > x.txt", "cat x.txt", SUBMIT)
FINAL_TEXT = "Done: x.txt contains hello."


def _nbytes(obj) -> int:
    return len(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _offers_bash_tool(body: dict) -> bool:
    for t in body.get("tools") or []:
        fn = t.get("function") or {}
        if t.get("type") == "function" and fn.get("name") == "bash":
            return True
    return False


def _text(content) -> str:
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


class ScriptedUpstream:
    """Fake upstream answering with ``script[k]`` at the k-th assistant turn of a conversation."""

    def __init__(self, script=SCRIPT, final_text: str = FINAL_TEXT):
        self.script, self.final_text = tuple(script), final_text
        self.requests: list[dict] = []  # request bodies as received (after the proxy)
        self.headers: list[dict] = []  # their headers (lower-cased)
        self._lock = threading.Lock()

    def reply(self, body: dict) -> tuple[dict, str]:
        """(assistant message, finish_reason) for a request body."""
        msgs = body["messages"]
        step = sum(m.get("role") == "assistant" for m in msgs)
        if step >= len(self.script):
            return {"role": "assistant", "content": self.final_text}, "stop"
        cmd = self.script[step]
        thought = f"THOUGHT: step {step + 1} of the scripted task."
        if _offers_bash_tool(body):
            return {"role": "assistant", "content": thought,
                    "tool_calls": [{"id": f"call_{step}", "type": "function",
                                    "function": {"name": "bash", "arguments": json.dumps({"command": cmd})}}]
                    }, "tool_calls"
        return {"role": "assistant", "content": f"{thought}\n\n```mswea_bash_command\n{cmd}\n```"}, "stop"

    def last_observation(self, body: dict) -> str:
        """Text of the request's last tool/user message (what the agent fed back)."""
        for m in reversed(body["messages"]):
            if m.get("role") in ("tool", "user"):
                return _text(m.get("content"))
        return ""

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = json.loads(await request.body())
            with self._lock:
                self.requests.append(body)
                self.headers.append({k.lower(): v for k, v in request.headers.items()})
            if body.get("stream"):
                return JSONResponse({"error": {"message": "the scripted fake does not stream",
                                               "type": "invalid_request_error"}}, status_code=400)
            msg, finish = self.reply(body)
            prompt = sum(_nbytes(m) for m in body["messages"]) // 4 + _nbytes(body.get("tools") or []) // 4
            completion = _nbytes(msg) // 4
            return {"id": f"chatcmpl-scripted-{len(self.requests)}", "object": "chat.completion",
                    "created": int(time.time()), "model": body["model"],
                    "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}}

        return app


_GUARD = '''\
"""Installed by tests/testing/agents.py: refuse and record non-loopback network access."""
import os as _os
import sys as _sys

_LOG = _os.environ.get("MTROUTER_NET_GUARD_LOG")
_LOCAL = {"127.0.0.1", "::1", "localhost", "0.0.0.0", None}


def _host(h):
    return h.decode() if isinstance(h, bytes) else h


def _guard(event, args):
    if event == "socket.getaddrinfo":
        host = _host(args[0])
    elif event == "socket.connect":
        addr = args[1]
        if not isinstance(addr, tuple) or not addr:  # AF_UNIX
            return
        host = _host(addr[0])
    else:
        return
    if host in _LOCAL or (isinstance(host, str) and host.startswith("127.")):
        return
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(f"{event} {host!r}\\n")
    raise OSError(f"network guard: {event} to {host!r} refused (tests may only use loopback)")


_sys.addaudithook(_guard)
'''


def write_network_guard(directory: str | Path) -> Path:
    """Write the guard as ``directory/sitecustomize.py``; put ``directory`` on ``PYTHONPATH`` and
    set ``MTROUTER_NET_GUARD_LOG`` to a file to collect refused attempts."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    p = d / "sitecustomize.py"
    p.write_text(_GUARD)
    return p
