"""Decisions evaluated in batches (live/batching.py) are bit-for-bit those evaluated one at a time."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from testing.live import make_pool
from mtrouter_jax.live import batching
from mtrouter_jax.live.batching import DecisionBatcher, chunk_sizes
from mtrouter_jax.live.router import Router
from test_live_fastpath import OBSERVATIONS, TOOL_NAMES, same_decision, tiny_checkpoint


def _episodes(router: Router, n: int, seed: int):
    """``n`` conversations at different turns, budgets, λ and policies (explore or not), each with
    the arguments of its next decision."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ep = router.start_episode(f"ep-{i}", task_type=["qa", "science", "new"][i % 3],
                                  budget=[None, 0.05, 1.0][i % 3], explore=router.explore_policy is not None and i % 4 == 1)
        for t in range(int(rng.integers(0, 5))):
            hi = float(rng.integers(50, 2000))
            d = ep.decide(input_tokens_hi=hi, context_tokens=hi / 2)
            ep.record(d.model, {"prompt_tokens": int(hi), "completion_tokens": int(rng.integers(1, 100))},
                      tool_name=TOOL_NAMES[rng.integers(len(TOOL_NAMES))])
            ep.attach_observation(OBSERVATIONS[rng.integers(len(OBSERVATIONS))])
        hi = float(rng.integers(50, 2000))
        out.append((ep, dict(input_tokens_hi=hi, context_tokens=hi * float(rng.uniform(0.2, 1.0)),
                             lam=None if i % 3 else float(rng.uniform(0, 2)))))
    return out


async def _batched(batcher, eps):
    return await asyncio.gather(*(batcher.decide(ep, **kw) for ep, kw in eps))


@pytest.mark.parametrize("k,text_dim,cost_target", [(1, 0, "remaining"), (3, 8, "future")])
def test_batched_decisions_are_bit_for_bit_the_single_ones(tmp_path, k, text_dim, cost_target):
    est = tiny_checkpoint(tmp_path / "ck", make_pool(), k, text_dim, cost_target)
    router = Router(est, explore="eps:0.4")
    eps = _episodes(router, 23, seed=k)
    single = [ep.decide(**kw) for ep, kw in eps]
    batcher = DecisionBatcher(background=False)
    batched = asyncio.run(_batched(batcher, eps))
    for a, b in zip(single, batched):
        same_decision(a, b)
    assert max(batcher.calls) > 1  # they were batched (23 = 16 + 4 + 2 + 1 over two policies)


def test_checkpoint_free_policies_batch_too():
    router = Router(None, make_pool(), policy="sticky:0.6", explore="sticky:0.5:0.3")
    eps = _episodes(router, 9, seed=3)
    single = [ep.decide(**kw) for ep, kw in eps]
    batcher = DecisionBatcher(background=False)
    for a, b in zip(single, asyncio.run(_batched(batcher, eps))):
        same_decision(a, b)
    assert max(batcher.calls) > 1


def test_a_cancelled_request_leaves_the_batch_intact(tmp_path):
    est = tiny_checkpoint(tmp_path / "ck", make_pool(), 1, 0, "remaining")
    eps = _episodes(Router(est), 5, seed=0)
    single = [ep.decide(**kw) for ep, kw in eps]
    batcher = DecisionBatcher(background=False)

    async def main():
        tasks = [asyncio.ensure_future(batcher.decide(ep, **kw)) for ep, kw in eps]
        await asyncio.sleep(0)  # every task queued its decision; the flush has not run yet
        tasks[2].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return done

    done = asyncio.run(main())
    assert isinstance(done[2], asyncio.CancelledError)
    for i in (0, 1, 3, 4):
        same_decision(single[i], done[i])


def test_a_batch_kernel_that_fails_to_compile_leaves_the_single_kernel(tmp_path, monkeypatch, caplog):
    est = tiny_checkpoint(tmp_path / "ck", make_pool(), 1, 0, "remaining")
    eps = _episodes(Router(est), 4, seed=1)
    single = [ep.decide(**kw) for ep, kw in eps]
    batcher = DecisionBatcher(background=False)
    group = batching.batch_group(eps[0][0])

    def broken(*_):
        raise RuntimeError("kernel failed")
    monkeypatch.setattr(batching, "batch_group", lambda ep, g=group: (g[0], broken, g[2]))
    done = asyncio.run(asyncio.wait_for(_gather_errors(batcher, eps), 30))
    for a, b in zip(single, done):
        same_decision(a, b)
    assert set(batcher.calls) == {1} and "could not compile" in caplog.text
    state = batcher.describe()  # a failed size is reported as such, not as still compiling
    assert state["failed"] == [2, 4] and state["compiling"] == [] and state["compiled"] == []
    batcher.compiled.update((group[0], s) for s in batcher.sizes)  # as if compiled, failing when run
    done = asyncio.run(asyncio.wait_for(_gather_errors(batcher, eps), 30))
    assert all(isinstance(d, RuntimeError) and "kernel failed" in str(d) for d in done)


async def _gather_errors(batcher, eps):
    return await asyncio.gather(*(batcher.decide(ep, **kw) for ep, kw in eps), return_exceptions=True)


def test_batch_sizes_compile_in_the_background_meanwhile_rows_go_one_by_one(tmp_path):
    est = tiny_checkpoint(tmp_path / "ck", make_pool(), 1, 0, "remaining")
    router = Router(est)
    batcher = DecisionBatcher(sizes=(4,))
    eps = _episodes(router, 4, seed=2)
    single = [ep.decide(**kw) for ep, kw in eps]
    from mtrouter_jax.live.batching import _COMPILER
    # hold the compiler thread until the first batch is served: otherwise a kernel that XLA has
    # cached already (the same shapes, earlier in this process) can finish "compiling" before the
    # flush picks its chunk sizes, and the first batch legitimately runs as one call of 4
    gate = threading.Event()
    held = _COMPILER.submit(gate.wait, 120)
    try:
        first = asyncio.run(_batched(batcher, eps))
    finally:
        gate.set()
    assert held.result(timeout=120)
    for a, b in zip(single, first):
        same_decision(a, b)
    _COMPILER.submit(lambda: None).result(timeout=120)  # the queued compilation has run
    key = batching.batch_group(eps[0][0])[0]
    assert (key, 4) in batcher.compiled and batcher.calls[4] == 0
    for a, b in zip(single, asyncio.run(_batched(batcher, eps))):
        same_decision(a, b)
    assert batcher.calls[4] == 1


def test_chunk_sizes_cover_every_row_with_compiled_sizes():
    for n in range(0, 70):
        sizes = chunk_sizes(n, (16, 8, 4, 2))
        assert sum(sizes) == n and all(s in (16, 8, 4, 2, 1) for s in sizes)
        assert sizes.count(1) <= 1  # at most one row alone
