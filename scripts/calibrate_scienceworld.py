"""Single-model scripted runs on real ScienceWorld, compared with the MTRouter paper's table.

    python scripts/calibrate_scienceworld.py --episodes 400 --seed 0 --workers 2 [--profiles my.toml]

Every model serves every turn of the same sampled episodes (train variations of DEFAULT_TASKS,
100-step limit, no budget); prints score ± 95 % CI, steps, tokens and $ per episode (pool prices).
Needs Java 17 and ``pip install scienceworld==1.2.3``.
"""

from __future__ import annotations

import argparse
import json
import time

from mtrouter_jax.core.pool import load_pool
from mtrouter_jax.scienceworld.calibrate import markdown_table, paired_gaps, run_single_models, summarise
from mtrouter_jax.scienceworld.engine import DEFAULT_TASKS, SPLITS


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=400, help="episodes per model (the same ones for every model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="processes, one ScienceWorld JVM each")
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--split", choices=SPLITS, default="train")
    ap.add_argument("--tasks", nargs="*", default=list(DEFAULT_TASKS))
    ap.add_argument("--models", nargs="*", default=None, help="default: every model of the pool")
    ap.add_argument("--pool", default=None, help="pool file for prices (default: the embedded pool)")
    ap.add_argument("--profiles", default=None, help="profile file (default: the embedded one)")
    ap.add_argument("--json", default=None, help="also write per-model rows to this JSON file")
    a = ap.parse_args(argv)
    pool = load_pool(a.pool)
    t0 = time.perf_counter()
    results = run_single_models(a.models or pool.names, a.episodes, seed=a.seed, tasks=a.tasks, split=a.split,
                                max_steps=a.max_steps, workers=a.workers, profiles_path=a.profiles)
    wall = time.perf_counter() - t0
    rows = summarise(results, pool)
    print(markdown_table(rows))
    order = [r["model"] for r in sorted(rows, key=lambda r: -r["score"])]
    print("\npaired score gaps (same episodes): " + "; ".join(
        f"{x} - {y}: {d:+.1f} ± {ci:.1f}" for x, y, d, ci in paired_gaps(results, order)))
    print(f"\n{len(results)} episodes in {wall:.0f} s ({len(results) / wall:.2f} episodes/s, {a.workers} workers)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
