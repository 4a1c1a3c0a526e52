"""A live summary kept as host words (live/summary_words.py) is exactly the ``HistorySummary`` it packs."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mtrouter_jax.core.features import WINDOW, HistorySummary, advance_summary, initial_summary
from mtrouter_jax.live import summary_words as words

f32 = st.floats(width=32, allow_nan=False, allow_infinity=True)
i32 = st.integers(-(2 ** 31), 2 ** 31 - 1)
small = st.integers(-1, 7)


@st.composite
def summaries(draw):
    win = lambda: np.array(draw(st.lists(small, min_size=WINDOW, max_size=WINDOW)), np.int32)  # noqa: E731
    return HistorySummary(
        task=np.int32(draw(small)), turn=np.int32(draw(st.integers(0, 10_000))), recent_tools=win(),
        recent_error_kinds=win(), recent_severities=win(), prev_model=np.int32(draw(small)),
        model_streak=np.int32(draw(i32)), turns_since_error=np.int32(draw(i32)), n_errors=np.int32(draw(i32)),
        context_tokens=np.float32(draw(f32)), billed_tokens=np.float32(draw(f32)), cost=np.float32(draw(f32)),
        budget=np.float32(draw(f32)))


def _bits(s: HistorySummary) -> list:
    return [np.asarray(x).tobytes() for x in jax.tree_util.tree_leaves(jax.device_get(s))]


@settings(max_examples=60, deadline=None)
@given(summaries())
def test_pack_unpack_round_trip_is_exact(s):
    w = words.pack(s)
    assert w.dtype == np.int32 and w.shape == (words.word_layout()[1],) and not w.flags.writeable
    back = words.unpack(w)
    assert _bits(back) == _bits(s)
    assert [np.asarray(x).dtype for x in jax.tree_util.tree_leaves(back)] == \
        [np.asarray(x).dtype for x in jax.tree_util.tree_leaves(s)]


_ADVANCE = jax.jit(advance_summary)


@settings(max_examples=300, deadline=None)
@given(summaries(), small, small, small, st.integers(-1, 2), f32, f32, f32, f32)
def test_advance_words_is_advance_summary_bit_for_bit(s, model, tool, kind, sev, inp, out, cost, ctx):
    """The host advance against the traced one (infinities included: inf - inf is the same NaN;
    int32 counters at 2**31 - 1 wrap the same way)."""
    want = _ADVANCE(s, np.int32(model), np.int32(tool), np.int32(kind), np.int32(sev), np.float32(inp),
                    np.float32(out), np.float32(cost), np.float32(ctx))
    got = words.advance_words(words.pack(s), model, tool, kind, sev, inp, out, cost, ctx)
    assert _bits(words.unpack(got)) == _bits(want)
    assert not got.flags.writeable and got.dtype == np.int32


SUB = float(np.float32(1e-40))  # a float32 subnormal: XLA:CPU flushes them, so must the host advance


@pytest.mark.parametrize("billed,cost0,inp,out,cost,ctx", [
    (SUB, SUB, 0.0, 0.0, 0.0, SUB), (0.0, 0.0, SUB, -SUB, SUB, -SUB), (1e-38, -1e-38, 2e-38, -3e-38, 1.5e-38, 0.0),
    (np.inf, -np.inf, -np.inf, 1.0, np.inf, np.inf), (3.4e38, 3.4e38, 3.4e38, 3.4e38, 3.4e38, 1e-45)])
def test_advance_words_flushes_subnormals_as_xla_does(billed, cost0, inp, out, cost, ctx):
    s = initial_summary(np.int32(1), np.float32(10.0), np.float32(1.0))
    s = s.replace(billed_tokens=np.float32(billed), cost=np.float32(cost0))
    want = _ADVANCE(s, np.int32(1), np.int32(2), np.int32(0), np.int32(-1), np.float32(inp), np.float32(out),
                    np.float32(cost), np.float32(ctx))
    got = words.advance_words(words.pack(s), 1, 2, 0, -1, inp, out, cost, ctx)
    assert _bits(words.unpack(got)) == _bits(want)


def test_advance_words_wraps_counters_and_leaves_its_input_alone():
    s = initial_summary(np.int32(1), np.float32(10.0), np.float32(1.0))
    s = s.replace(turn=np.int32(2 ** 31 - 1), model_streak=np.int32(2 ** 31 - 1), prev_model=np.int32(3),
                  n_errors=np.int32(2 ** 31 - 1))
    w = words.pack(s)
    got = words.advance_words(w, 3, 2, 1, 2, 5.0, 6.0, 0.5, 11.0)
    want = _ADVANCE(s, np.int32(3), np.int32(2), np.int32(1), np.int32(2), np.float32(5.0), np.float32(6.0),
                    np.float32(0.5), np.float32(11.0))
    assert _bits(words.unpack(got)) == _bits(want)
    assert int(words.unpack(got).turn) == -(2 ** 31)  # wrapped, as XLA's int32 add does
    assert _bits(words.unpack(w)) == _bits(s)


@settings(max_examples=30, deadline=None)
@given(summaries(), f32)
def test_with_context_replaces_only_the_context(s, ctx):
    w = words.pack(s)
    got = words.unpack(words.with_context(w, ctx))
    assert _bits(got) == _bits(s.replace(context_tokens=np.float32(ctx)))
    assert words.context_of(words.with_context(w, ctx)) == float(np.float32(ctx))
    assert _bits(words.unpack(w)) == _bits(s)  # the original words are untouched


@pytest.mark.parametrize("budget", [0.05, np.inf])
def test_initial_words_are_the_initial_summary_and_shared_read_only(budget):
    w = words.initial_words(2, 123.5, budget)
    assert _bits(words.unpack(w)) == _bits(initial_summary(np.int32(2), np.float32(123.5), np.float32(budget)))
    assert words.initial_words(2, 123.5, budget) is w
    with pytest.raises(ValueError):
        w[0] = 1  # shared between episodes: never written
