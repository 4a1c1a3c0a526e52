"""CPU per routing decision, one at a time vs evaluated in batches (``live/batching.py``, issue 19).

    python scripts/bench_decision_batch.py --checkpoint PATH [--sizes 1 2 4 8 16] [--rounds 300]

With a real checkpoint, ``n`` conversations at different turns and budgets decide their next turn:
``single`` is ``LiveEpisode.decide`` per conversation, ``batch`` is ``DecisionBatcher.decide`` for
all ``n`` at once on one event loop (its kernels compiled first). Both arms run interleaved in one
process, so machine drift hits them alike; the figure is process CPU (all threads) per decision,
and every batched decision is checked bit-for-bit against its single twin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def conversations(router, n: int, seed: int = 0) -> list:
    """``n`` episodes at 0-4 recorded turns, each with the arguments of its next decision."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ep = router.start_episode(f"b{i}", budget=[None, 0.05, 1.0][i % 3])
        for _ in range(i % 5):
            hi = float(rng.integers(100, 3000))
            d = ep.decide(input_tokens_hi=hi, context_tokens=hi / 2)
            ep.record(d.model, {"prompt_tokens": int(hi), "completion_tokens": int(rng.integers(1, 200))},
                      tool_name="search")
        hi = float(rng.integers(100, 3000))
        out.append((ep, {"input_tokens_hi": hi, "context_tokens": hi / 2}))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint (mtrouter train)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="decisions in flight")
    p.add_argument("--rounds", type=int, default=200, help="repetitions per arm and size")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)

    from mtrouter_jax.estimator.checkpoint import load_checkpoint
    from mtrouter_jax.live.batching import DecisionBatcher
    from mtrouter_jax.live.router import Router

    router = Router(load_checkpoint(a.checkpoint), log_path=None)
    batcher = DecisionBatcher(background=False)  # compiles on first use, before the timed rounds
    rows = []
    for n in a.sizes:
        eps = conversations(router, n)

        async def batch():
            return await asyncio.gather(*(batcher.decide(ep, **kw) for ep, kw in eps))

        single = [ep.decide(**kw) for ep, kw in eps]
        batched = asyncio.run(batch())
        same = all(x.model == y.model and x.propensity == y.propensity and np.array_equal(x.values, y.values)
                   and np.array_equal(x.features, y.features) for x, y in zip(single, batched))
        cpu = {"single": 0.0, "batch": 0.0}

        async def timed():  # interleaved, on one event loop
            for _ in range(a.rounds):
                t = time.process_time()
                for ep, kw in eps:
                    ep.decide(**kw)
                cpu["single"] += time.process_time() - t
                t = time.process_time()
                await batch()
                cpu["batch"] += time.process_time() - t
        asyncio.run(timed())
        per = {k: v / (a.rounds * n) * 1e3 for k, v in cpu.items()}
        rows.append({"in_flight": n, "single_ms": per["single"], "batch_ms": per["batch"],
                     "ratio": per["batch"] / per["single"], "bit_for_bit": same})
        print(json.dumps(rows[-1]), flush=True)
    print("| decisions in flight | single (ms CPU / decision) | batched | batched / single | bit for bit |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['in_flight']} | {r['single_ms']:.3f} | {r['batch_ms']:.3f} | {r['ratio']:.2f} | "
              f"{'yes' if r['bit_for_bit'] else 'NO'} |")
    out = {"rows": rows, "evaluations_by_rows": dict(batcher.calls)}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
