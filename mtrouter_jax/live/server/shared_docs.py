"""What replicas keep in the shared store for a conversation (``shared.py``): its keys, the state
document a turn writes, the first bytes that name its version, and the answer to a state request."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mtrouter_jax.core import jsonfast
from mtrouter_jax.live.episode_state import episode_state
from mtrouter_jax.live.server.api import ApiError
from mtrouter_jax.live.store import Lease, StoredState, StoreUnavailable

if TYPE_CHECKING:
    from mtrouter_jax.live.server.conversations import Conversation


def conv_key(tenant: str, cid: str) -> str:
    """The store id of a tenant's conversation (unambiguous for any tenant name and id)."""
    return f"c:{len(tenant)}:{tenant}/{cid}"


def episode_key(eid: str) -> str:
    """The store id of an episode's budget and finish marker."""
    return f"e:{eid}"


def unavailable(e: StoreUnavailable) -> ApiError:
    """The 503 of a turn the store could not start."""
    return ApiError(503, f"{e}; no turn was run: retry when it is back (the proxy does not fall back to "
                         "per-replica state or budgets)", "api_error", "state_unavailable")


@dataclass
class TurnHandle:
    """A turn in progress under a lease: its reservations (model -> id) and its renewal (the timer
    before the next one, or the renewal in flight)."""

    lease: Lease
    n_turns: int
    reservations: dict[str, str] = field(default_factory=dict)
    renewer: asyncio.TimerHandle | asyncio.Task | None = None
    lost: bool = False


def state_doc(conv: "Conversation", shadow: dict | None) -> dict:
    """``conv``'s next version (``{"v": N, ...}`` first: ``known_prefix`` relies on it)."""
    router = conv.episode.router
    c = {"n_seen": conv.n_seen, "derived": conv.derived, "last_used": conv.last_used,
         "checkpoint": getattr(router, "digest", None), "checkpoint_path": getattr(router, "checkpoint_path", None)}
    # (None left out, as in the episode's state: a document without a null is encoded without a check)
    doc = {"v": conv.version + 1, "episode": episode_state(conv.episode),
           "conv": {k: v for k, v in c.items() if v is not None}}
    if shadow is not None:
        doc["shadow"] = shadow
    return doc


def doc_of(got: StoredState | None) -> dict | None:
    """The decoded state document, or None when nothing is stored."""
    return None if got is None else jsonfast.loads(got.data)


def known_prefix(version: int) -> bytes | None:
    """The first bytes of version ``version`` (> 0) of a state ``state_doc`` made (``{"v":N,`` opens
    every one): sent as ``begin_turn``'s ``known``, so the usual turn (this replica wrote the last
    version) is not sent back the whole episode only to compare one number."""
    return b'{"v":%d,' % version if version > 0 else None


def conversation_info(doc: dict) -> dict:
    """The ``GET /v1/mtrouter/conversations/{id}`` answer for an open stored conversation."""
    st = doc["episode"]
    turns = st["turns"]
    budget, spent = st.get("budget"), st["spent"]  # (a state leaves out fields that are None)
    rem = None if budget is None else max(budget - spent, 0.0)
    return {"episode_id": st["episode_id"], "task_type": st.get("task_type"), "budget": budget,
            "spent": spent, "remaining": rem, "turns": len(turns), "tokens": st["tokens"],
            "models": [t["model"] for t in turns], "errors": sum(t.get("error") is not None for t in turns),
            "ended": st.get("ended"), "finished": False, "lam": st.get("lam"), "policy": st["policy"],
            "explore": st.get("explore"), "seed": st.get("seed")}


__all__ = ["TurnHandle", "conv_key", "conversation_info", "doc_of", "episode_key", "known_prefix", "state_doc",
           "unavailable"]
