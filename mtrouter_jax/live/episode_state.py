"""A live episode as JSON and back (issue 19): what proxy replicas share through the state store.

``episode_state(ep)`` is everything a ``LiveEpisode`` needs to continue on another process with the
same router: the ``HistorySummary`` (and the one before the last turn, which
``attach_observation`` re-advances from), the turns so far (``TurnRecord``), spend and token counts,
the policy (by its exploration flag; the spec is kept to check), λ, seed, start time, why it
ended and its canary arm (the shadow's mirrored episode is stored beside it: ``server/arms.py``).
``restore_episode(router, state)`` rebuilds it: decisions after a restore are those the original
object would have made (same summary, same seed, same turn count; tested in
``tests/live/test_replicas.py``). Floats round-trip exactly (float32 values are stored as the
float64 they widen to).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from mtrouter_jax.core.features import HistorySummary
from mtrouter_jax.core.jsonfast import dumps_compact
from mtrouter_jax.logs.io import TurnError
from mtrouter_jax.live import summary_words as words
from mtrouter_jax.live.turns import TurnRecord

if TYPE_CHECKING:
    from mtrouter_jax.live.episode import LiveEpisode
    from mtrouter_jax.live.router import Router

STATE_SCHEMA = 1
_FLOAT_FIELDS = {"context_tokens", "billed_tokens", "cost", "budget"}
_LAST_ARGS = (np.int32, np.int32, np.float32, np.float32, np.float32, np.float32)


class EpisodeStateError(ValueError):
    """A stored state that this router cannot continue (another pool, policy or schema)."""


def _summary_out(w: np.ndarray | None) -> dict | None:
    if w is None:
        return None
    s = words.unpack(w)
    return {f.name: getattr(s, f.name).tolist() for f in dataclasses.fields(s)}


def _summary_in(d: dict | None) -> np.ndarray | None:
    if d is None:
        return None
    return words.pack(HistorySummary(**{k: np.asarray(v, np.float32 if k in _FLOAT_FIELDS else np.int32)
                                        for k, v in d.items()}))


_TURN_FIELDS = tuple(f.name for f in dataclasses.fields(TurnRecord))


def _turn_out(t: TurnRecord) -> dict:
    # the fields as they are (``dataclasses.asdict`` deep-copies every meta dict, ~50 us a turn,
    # for a dict that is only serialised)
    d = {k: getattr(t, k) for k in _TURN_FIELDS}
    d["error"] = None if t.error is None else t.error.to_dict()
    d["features"] = None if t.features is None else list(t.features)
    return d


def _turn_in(d: dict) -> TurnRecord:
    d = dict(d)
    err = d.pop("error")
    if err is not None:
        err = dict(err)
        kind, sev = err.pop("kind"), err.pop("severity")
        err = TurnError(kind, sev, err or None)
    feats = d.pop("features")
    return TurnRecord(error=err, features=None if feats is None else tuple(feats), **d)


def episode_state(ep: "LiveEpisode") -> dict:
    """The JSON-able state of ``ep`` (see the module docstring)."""
    return {"schema": STATE_SCHEMA, "episode_id": ep.episode_id, "task_type": ep.task_type, "budget": ep.budget,
            "lam": ep.lam, "explore": ep.explore, "seed": ep.seed, "policy": ep.policy.spec,
            "pool": list(ep.router.pool.names), "summary": _summary_out(ep._words),
            "before_last": _summary_out(ep._before_words),
            "last_args": None if ep._last_args is None else [float(x) for x in ep._last_args],
            "turns": [_turn_out(t) for t in ep.turns], "spent": ep.spent, "tokens": ep.tokens,
            "last_prompt": ep.last_prompt, "last_completion": ep.last_completion, "ended": ep.ended,
            "started": ep.started, "nonfinite_decisions": ep.nonfinite_decisions, "arm": ep.arm}


def restore_episode(router: "Router", st: dict) -> "LiveEpisode":
    """A ``LiveEpisode`` of ``router`` continuing the stored state ``st``."""
    from mtrouter_jax.live.episode import LiveEpisode

    if st.get("schema") != STATE_SCHEMA:
        raise EpisodeStateError(f"stored episode state has schema {st.get('schema')!r}, expected {STATE_SCHEMA}")
    if tuple(st["pool"]) != tuple(router.pool.names):
        raise EpisodeStateError(f"stored episode {st['episode_id']!r} was routed over {st['pool']}, this router's "
                                f"pool is {list(router.pool.names)}")
    ep = LiveEpisode(router, st["episode_id"], st["task_type"], st["budget"], st["lam"], 0.0, st["explore"],
                     st["seed"])
    if ep.policy.spec != st["policy"]:
        raise EpisodeStateError(f"stored episode {st['episode_id']!r} was routed by {st['policy']!r}, this "
                                f"router's policy is {ep.policy.spec!r}")
    ep._words = _summary_in(st["summary"])
    ep._before_words = _summary_in(st["before_last"])
    la = st["last_args"]
    ep._last_args = None if la is None else tuple(t(x) for t, x in zip(_LAST_ARGS, la))
    ep.turns = [_turn_in(t) for t in st["turns"]]
    ep.spent, ep.tokens = float(st["spent"]), int(st["tokens"])
    ep.last_prompt, ep.last_completion = int(st["last_prompt"]), int(st["last_completion"])
    ep.ended, ep.started, ep.nonfinite_decisions = st["ended"], float(st["started"]), int(st["nonfinite_decisions"])
    ep.arm = st.get("arm")  # (states written before canaries existed have none)
    return ep


def dumps_state(obj: Any) -> bytes:
    """Compact JSON bytes (infinite summary budgets are written as ``Infinity``: internal data only)."""
    return dumps_compact(obj)  # (json.dumps's bytes, at orjson's speed where they agree)


__all__ = ["episode_state", "restore_episode", "dumps_state", "EpisodeStateError", "STATE_SCHEMA"]
