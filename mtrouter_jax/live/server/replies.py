"""What the proxy reads from upstream replies: the tool a turn invoked, its action text, error messages."""

from __future__ import annotations

import re

from mtrouter_jax.live.backends import UpstreamError

_FENCE_LANG = re.compile(r"```([A-Za-z_][\w-]*)[ \t]*\n")
# text-mode agents (mini-swe-agent, the official MTRouter harness) put the command in a fenced block
_FENCE_TOOLS = {"bash": "bash", "sh": "bash", "shell": "bash", "console": "bash", "mswea_bash_command": "bash",
                "python": "python", "py": "python", "ipython": "python"}


def text_tool(content: str | None) -> str | None:
    """The tool a text-mode reply invokes through its first fenced block's language (```bash -> bash)."""
    m = _FENCE_LANG.search(content or "")
    return _FENCE_TOOLS.get(m.group(1).lower()) if m else None


def tool_and_action(resp: dict) -> tuple[str | None, str | None]:
    """(first tool-call name — else the language of a fenced command block —, action text: content
    or tool-call arguments) of a completion."""
    try:
        msg = resp["choices"][0]["message"]
        calls = msg.get("tool_calls") or []
    except (KeyError, IndexError, TypeError, AttributeError):
        return None, None
    content = msg.get("content") if isinstance(msg.get("content"), str) else None
    name = None if calls else text_tool(content)
    parts = [content or ""]
    for c in calls if isinstance(calls, list) else []:
        fn = (c.get("function") if isinstance(c, dict) else None) or {}
        name = name or (fn.get("name") if isinstance(fn.get("name"), str) else None)
        parts.append(f"{fn.get('name')}({fn.get('arguments')})")
    return name, "\n".join(p for p in parts if p) or None


def upstream_message(e: UpstreamError) -> str:
    """The upstream's own error message when it sent one in OpenAI's shape."""
    if isinstance(e.body, dict) and isinstance(e.body.get("error"), dict):
        return str(e.body["error"].get("message", e.message))
    return e.message


__all__ = ["text_tool", "tool_and_action", "upstream_message"]
