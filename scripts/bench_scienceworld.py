"""ScienceWorld collection throughput with the scripted backend: 1 vs N worker processes.

    python scripts/bench_scienceworld.py --episodes 54 --workers 1 2 [--warm]

Runs ``mtrouter collect scienceworld``'s engine (``runner.run_jobs``) on the same episodes (the
sticky roulette on training variations of every default task) once per worker count, into fresh
temporary logs, and prints episodes/s, turns/s and the speed-up. ``--warm`` first generates the
gold paths of those variations (cached on disk), so the timed runs measure routing, not the
JVM's one-off gold-path search; JVM start-up and worker spawn are inside the timing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.scienceworld.engine import DEFAULT_TASKS, ScienceWorldEngine
from mtrouter_jax.scienceworld.runner import RouterSpec, make_jobs, plan_variations, run_jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=54, help="episodes per run (spread over the default tasks)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--warm", action="store_true", help="generate (and cache) the gold paths first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the numbers here")
    a = ap.parse_args()
    per_task = max(1, -(-a.episodes // len(DEFAULT_TASKS)))
    plan = plan_variations(DEFAULT_TASKS, "train", per_task, a.seed)[: a.episodes]
    if a.warm:
        with ScienceWorldEngine() as eng:
            for t, v in plan:
                eng.gold_actions(t, v)
    pool = default_pool()
    rows = []
    for w in a.workers:
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "bench.jsonl"
            jobs = make_jobs(RouterSpec("sticky:0.9", seed=a.seed), plan, "train")
            t0 = time.perf_counter()
            eps = list(run_jobs(jobs, pool, lambda j: out, workers=w, scripted_seed=a.seed, progress=False))
            dt = time.perf_counter() - t0
        turns = sum(len(e.turns) for e in eps)
        rows.append({"workers": w, "episodes": len(eps), "turns": turns, "seconds": dt,
                     "episodes_per_s": len(eps) / dt, "turns_per_s": turns / dt})
        print(f"{w} worker(s): {len(eps)} episodes, {turns} turns in {dt:.1f} s -> "
              f"{len(eps) / dt:.2f} episodes/s, {turns / dt:.1f} turns/s")
    if len(rows) > 1:
        print(f"speed-up {rows[-1]['workers']} vs {rows[0]['workers']} worker(s): "
              f"{rows[-1]['episodes_per_s'] / rows[0]['episodes_per_s']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
