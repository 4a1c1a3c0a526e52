"""A live episode as JSON and back (issue 19): what proxy replicas share through the state store.

``episode_state(ep)`` is everything a ``LiveEpisode`` needs to continue on another process with the
same router: the ``HistorySummary`` (and the one before the last turn, which
``attach_observation`` re-advances from), the turns so far (``TurnRecord``), spend and token counts,
the policy (by its exploration flag; the spec is kept to check), λ, seed, start time, why it
ended and its canary arm (the shadow's mirrored episode is stored beside it: ``server/arms.py``).
``restore_episode(router, state)`` rebuilds it: decisions after a restore are those the original
object would have made (same summary, same seed, same turn count; tested in
``tests/live/test_replicas.py``). Floats round-trip exactly (float32 values are stored as the
float64 they widen to). Schema 2 stores the summaries as their int32 words (``summary_words``,
float32 leaves bit-cast, with a tag of the word layout): a summary unpacked into named lists was
~60 of the ~85 us a 5-turn state took to build, its words ~1 us. Schema 1 states (named lists)
are still read.
"""

from __future__ import annotations

import dataclasses
import hashlib
from functools import lru_cache
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

STATE_SCHEMA = 2
_READABLE = (1, 2)
_FLOAT_FIELDS = {"context_tokens", "billed_tokens", "cost", "budget"}
_LAST_ARGS = (np.int32, np.int32, np.float32, np.float32, np.float32, np.float32)


class EpisodeStateError(ValueError):
    """A stored state that this router cannot continue (another pool, policy or schema)."""


def _summary_in(d: dict | None) -> np.ndarray | None:
    if d is None:
        return None
    return words.pack(HistorySummary(**{k: np.asarray(v, np.float32 if k in _FLOAT_FIELDS else np.int32)
                                        for k, v in d.items()}))


@lru_cache(maxsize=None)
def words_tag() -> str:
    """A short digest of the summary's word layout: words are read back only under the same one."""
    return hashlib.sha256(repr(words.word_layout()).encode()).hexdigest()[:12]


def _words_in(w: list | None, tag: str | None) -> np.ndarray | None:
    if w is None:
        return None
    if tag != words_tag() or len(w) != words.word_layout()[1]:
        raise EpisodeStateError(f"stored summary words have layout {tag!r} ({len(w)} words), this process's is "
                                f"{words_tag()!r} ({words.word_layout()[1]} words)")
    return words.frozen(np.asarray(w, np.int32))


_TURN_FIELDS = tuple(f.name for f in dataclasses.fields(TurnRecord))
_TURN_NONE = {k: None for k in _TURN_FIELDS if k != "meta"}


def _turn_out(t: TurnRecord) -> dict:
    # the fields as they are (``dataclasses.asdict`` deep-copies every meta dict, ~50 us a turn,
    # for a dict that is only serialised); fields that are None are left out (``dumps_state``)
    d = {k: v for k in _TURN_FIELDS if (v := getattr(t, k)) is not None}
    if t.error is not None:
        d["error"] = t.error.to_dict()
    if t.features is not None:
        d["features"] = list(t.features)
    return d


def _turn_in(d: dict) -> TurnRecord:
    d = {**_TURN_NONE, **d}  # (a field left out was None)
    err = d.pop("error")
    if err is not None:
        err = dict(err)
        kind, sev = err.pop("kind"), err.pop("severity")
        err = TurnError(kind, sev, err or None)
    feats = d.pop("features")
    return TurnRecord(error=err, features=None if feats is None else tuple(feats), **d)


def episode_state(ep: "LiveEpisode") -> dict:
    """The JSON-able state of ``ep`` (see the module docstring; fields that are None are left out)."""
    st = {"schema": STATE_SCHEMA, "episode_id": ep.episode_id, "task_type": ep.task_type, "budget": ep.budget,
            "lam": ep.lam, "explore": ep.explore, "seed": ep.seed, "policy": ep.policy.spec,
            "pool": list(ep.router.pool.names), "words": words_tag(),
            "summary": None if ep._words is None else ep._words.tolist(),
            "before_last": None if ep._before_words is None else ep._before_words.tolist(),
            "last_args": None if ep._last_args is None else [float(x) for x in ep._last_args],
            "turns": [_turn_out(t) for t in ep.turns], "spent": ep.spent, "tokens": ep.tokens,
            "last_prompt": ep.last_prompt, "last_completion": ep.last_completion, "ended": ep.ended,
            "started": ep.started, "nonfinite_decisions": ep.nonfinite_decisions, "arm": ep.arm}
    return {k: v for k, v in st.items() if v is not None}


def restore_episode(router: "Router", st: dict) -> "LiveEpisode":
    """A ``LiveEpisode`` of ``router`` continuing the stored state ``st``."""
    from mtrouter_jax.live.episode import LiveEpisode

    if st.get("schema") not in _READABLE:
        raise EpisodeStateError(f"stored episode state has schema {st.get('schema')!r}, expected one of {_READABLE}")
    if tuple(st["pool"]) != tuple(router.pool.names):
        raise EpisodeStateError(f"stored episode {st['episode_id']!r} was routed over {st['pool']}, this router's "
                                f"pool is {list(router.pool.names)}")
    ep = LiveEpisode(router, st["episode_id"], st.get("task_type"), st.get("budget"), st.get("lam"), 0.0,
                     st.get("explore"), st.get("seed"))
    if ep.policy.spec != st["policy"]:
        raise EpisodeStateError(f"stored episode {st['episode_id']!r} was routed by {st['policy']!r}, this "
                                f"router's policy is {ep.policy.spec!r}")
    if st["schema"] == 1:
        ep._words, ep._before_words = _summary_in(st["summary"]), _summary_in(st["before_last"])
    else:
        tag = st["words"]
        ep._words, ep._before_words = _words_in(st.get("summary"), tag), _words_in(st.get("before_last"), tag)
    la = st.get("last_args")
    ep._last_args = None if la is None else tuple(t(x) for t, x in zip(_LAST_ARGS, la))
    ep.turns = [_turn_in(t) for t in st["turns"]]
    ep.spent, ep.tokens = float(st["spent"]), int(st["tokens"])
    ep.last_prompt, ep.last_completion = int(st["last_prompt"]), int(st["last_completion"])
    ep.ended, ep.started, ep.nonfinite_decisions = st.get("ended"), float(st["started"]), int(st["nonfinite_decisions"])
    ep.arm = st.get("arm")  # (states written before canaries existed have none)
    return ep


def dumps_state(obj: Any) -> bytes:
    """Compact JSON bytes (a non-finite number is written as ``Infinity``/``NaN``: internal data only).
    A state holds no null of its own (None fields are left out), so orjson's bytes are taken without
    decoding them back, unless a ``null`` shows (``jsonfast.dumps_compact``): ~15 us, not ~50, for
    a 5-turn state."""
    return dumps_compact(obj)  # (json.dumps's bytes, at orjson's speed where they agree)


__all__ = ["episode_state", "restore_episode", "dumps_state", "EpisodeStateError", "STATE_SCHEMA"]
