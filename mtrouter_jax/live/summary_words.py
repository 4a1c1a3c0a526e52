"""A live conversation's ``HistorySummary`` kept on the host as one int32 vector (its "words").

A summary is 13 small leaves. As device arrays, each turn paid for them several times: the summary
advance was a jitted call of 21 arguments and 13 outputs (~0.1 ms of CPU a turn in the proxy), a
new context estimate was one more call, a decision row carried 13 arrays, and a Redis state dump
copied 13 leaves back. As words (every leaf flattened in field order, float32 leaves bit-cast to
int32, so the packing is exact), the summary is one host array: the advance is a dozen host writes
(``advance_words``: ``advance_summary``'s int32 and float32 operations, bit for bit, a property
test checks), the context estimate a host write, and the decision kernels unpack the words
themselves (``unpack_traced``).

Words are never mutated: every change makes a new (read-only) array, so episodes may share one.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from mtrouter_jax.core.features import NO_VALUE, WINDOW, HistorySummary, initial_summary


@lru_cache(maxsize=None)
def word_layout() -> tuple[tuple[tuple[str, int, int, tuple, bool], ...], int]:
    """((field, offset, size, shape, is_float32) per summary field, total words)."""
    shapes = jax.eval_shape(initial_summary, 0, 0.0, 0.0)
    out, off = [], 0
    for f in dataclasses.fields(HistorySummary):
        sd = getattr(shapes, f.name)
        n = int(np.prod(sd.shape, dtype=int))
        out.append((f.name, off, n, tuple(sd.shape), sd.dtype == jnp.float32))
        off += n
    return tuple(out), off


@lru_cache(maxsize=None)
def _offset(name: str) -> int:
    return next(o for n, o, *_ in word_layout()[0] if n == name)


def frozen(words: np.ndarray) -> np.ndarray:
    """``words`` as a read-only int32 array (an episode's words are shared, never mutated)."""
    words = np.asarray(words, np.int32)
    words.flags.writeable = False  # (in place: callers hand over arrays they made for this)
    return words


def pack(summary: HistorySummary) -> np.ndarray:
    """The words of a summary (host or device leaves; one device-to-host copy for all of them)."""
    host = jax.device_get(summary)
    parts = [np.asarray(getattr(host, name), np.float32 if fl else np.int32).reshape(-1).view(np.int32)
             for name, _, _, _, fl in word_layout()[0]]
    return frozen(np.concatenate(parts))


def unpack(words: np.ndarray) -> HistorySummary:
    """The summary of ``words``, its leaves numpy views of them."""
    words = frozen(words)
    return HistorySummary(**{name: words[o:o + n].view(np.float32 if fl else np.int32).reshape(shape)
                             for name, o, n, shape, fl in word_layout()[0]})


def pack_traced(s: HistorySummary) -> jnp.ndarray:
    """``pack`` inside a traced function."""
    return jnp.concatenate([
        (jax.lax.bitcast_convert_type(jnp.asarray(getattr(s, name), jnp.float32), jnp.int32) if fl
         else jnp.asarray(getattr(s, name), jnp.int32)).reshape(-1)
        for name, _, _, _, fl in word_layout()[0]])


def unpack_traced(words: jnp.ndarray) -> HistorySummary:
    """``unpack`` inside a traced function (``words``: (W,) int32)."""
    leaves = {}
    for name, o, n, shape, fl in word_layout()[0]:
        x = words[o:o + n].reshape(shape)
        leaves[name] = jax.lax.bitcast_convert_type(x, jnp.float32) if fl else x
    return HistorySummary(**leaves)


@lru_cache(maxsize=None)
def _offsets() -> tuple[int, ...]:
    """Word offsets of the fields ``advance_words`` writes (billed tokens and cost follow the context)."""
    o = {name: off for name, off, *_ in word_layout()[0]}
    assert o["billed_tokens"] == o["context_tokens"] + 1 and o["cost"] == o["context_tokens"] + 2
    return tuple(o[n] for n in ("turn", "recent_tools", "recent_error_kinds", "recent_severities", "prev_model",
                                "model_streak", "turns_since_error", "n_errors", "context_tokens"))


_TINY = float(np.finfo(np.float32).tiny)
_F32 = struct.Struct("<f")
_BITS = struct.Struct("<2i")  # (billed_tokens, cost) words <-> their float32 values
_FLOATS = struct.Struct("<2f")


def _f32(x: float) -> float:
    """``x`` rounded to float32 (a Python float holding it), subnormals flushed to zeros of their
    sign: XLA:CPU computes with denormals flushed, operands and results alike. A sum of two float32
    values taken in float64 and rounded once is the float32 sum (float64 has more than twice the bits)."""
    try:
        y = _F32.unpack(_F32.pack(x))[0]
    except OverflowError:  # (finite, but rounds past float32's largest value)
        return math.copysign(math.inf, x)
    return math.copysign(0.0, y) if 0.0 < abs(y) < _TINY else y


def _wrap(x: int) -> int:
    """``x`` as int32 arithmetic leaves it (two's complement wrap at 2**31, as XLA's int32 add)."""
    return (x + 2 ** 31) % 2 ** 32 - 2 ** 31


def advance_words(words: np.ndarray, model: int, tool: int, error_kind: int, severity: int,
                  input_tokens: float, output_tokens: float, cost: float, next_context_tokens: float) -> np.ndarray:
    """``advance_summary`` on words, on the host: the same int32 (wrapping) and float32 operations in
    the same order, so the words are bit for bit those of the traced function
    (``tests/live/test_summary_words.py``). A jitted call cost ~35 µs of dispatch a turn for a
    dozen scalar updates."""
    t, rt, rk, rs, pm, ms, tse, ne, cx = _offsets()
    model, tool = int(np.int32(model)), int(np.int32(tool))  # (out of int32 range: refused, as before)
    error_kind, severity = int(np.int32(error_kind)), int(np.int32(severity))
    is_err = severity >= 0
    v = words.tolist()
    v[t] = _wrap(v[t] + 1)
    for off, new in ((rt, tool), (rk, error_kind if is_err else NO_VALUE), (rs, severity if is_err else NO_VALUE)):
        v[off + 1:off + WINDOW] = v[off:off + WINDOW - 1]
        v[off] = new
    v[ms] = _wrap(v[ms] + 1) if model == v[pm] else 1
    v[pm] = model
    v[tse] = 0 if is_err else _wrap(v[tse] + 1)
    v[ne] = _wrap(v[ne] + int(is_err))
    billed, spent = (_f32(x) for x in _FLOATS.unpack(_BITS.pack(v[cx + 1], v[cx + 2])))
    tokens = _f32(_f32(input_tokens) + _f32(output_tokens))
    v[cx + 1], v[cx + 2] = _BITS.unpack(_FLOATS.pack(_f32(billed + tokens), _f32(spent + _f32(cost))))
    out = np.array(v, np.int32)
    out[cx] = np.float32(next_context_tokens).view(np.int32)  # (a copy in XLA too: not flushed)
    return frozen(out)


_initial_jit = jax.jit(lambda task, ctx, budget: pack_traced(initial_summary(task, ctx, budget)))
_INITIAL: dict = {}  # (task, context tokens, budget) -> words


def initial_words(task: int, context_tokens: float, budget: float) -> np.ndarray:
    """The words a new conversation starts from, computed once per (task, context, budget): a busy
    proxy starts conversations with a handful of budgets."""
    key = (int(task), float(np.float32(context_tokens)), float(np.float32(budget)))
    got = _INITIAL.get(key)
    if got is None:
        if len(_INITIAL) >= 4096:  # (clients choose budgets: bounded)
            _INITIAL.clear()
        got = _INITIAL[key] = frozen(np.asarray(_initial_jit(np.int32(task), np.float32(context_tokens),
                                                             np.float32(budget))))
    return got


def context_of(words: np.ndarray) -> float:
    """The summary's ``context_tokens`` (tokens the next call sends), read on the host."""
    return float(words[_offset("context_tokens")].view(np.float32))


def with_context(words: np.ndarray, context_tokens: float) -> np.ndarray:
    """New words with ``context_tokens`` replaced (float32, as the summary stores it)."""
    out = words.copy()
    out[_offset("context_tokens")] = np.float32(context_tokens).view(np.int32)
    return frozen(out)


__all__ = ["word_layout", "frozen", "pack", "unpack", "pack_traced", "unpack_traced", "advance_words",
           "initial_words", "context_of", "with_context"]
