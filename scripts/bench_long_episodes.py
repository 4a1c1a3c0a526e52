"""Time and memory of building training data from a log with one very long episode (issue 18).

    /usr/bin/time -f "peak RSS %M KB" python scripts/bench_long_episodes.py --long 20000 --short 1000

One episode of ``--long`` turns and ``--short`` episodes of 30 turns, six models in turn;
``--cells`` sets ``build_training_data``'s ``max_padded_cells`` (0: one padded grid, as before
length buckets existed).
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--long", type=int, default=20000, help="turns of the long episode")
    ap.add_argument("--short", type=int, default=1000, help="episodes of 30 turns")
    ap.add_argument("--cells", type=int, default=None, help="max padded cells per bucket (0 = one grid)")
    a = ap.parse_args(argv)
    from mtrouter_jax.core.pool import default_pool
    from mtrouter_jax.estimator.dataset import MAX_PADDED_CELLS, build_training_data
    from mtrouter_jax.logs.records import Episode, Turn

    pool = default_pool()

    def episode(i: int, n: int) -> Episode:
        turns = tuple(Turn(pool.names[k % len(pool)], 100, 0, 20, 1e-4, "act", None, None) for k in range(n))
        return Episode(f"e{i}", "t", 1.0, None, pool.names, turns, (0.0, 1.0), "bench")

    eps = [episode(0, a.long)] + [episode(i, 30) for i in range(1, a.short + 1)]
    cells = MAX_PADDED_CELLS if a.cells is None else (a.cells or 1 << 62)
    t0 = time.perf_counter()
    data = build_training_data(eps, pool, max_padded_cells=cells)
    print(f"{data.n:,} rows from {len(eps):,} episodes in {time.perf_counter() - t0:.1f} s (max_padded_cells {cells:,})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
