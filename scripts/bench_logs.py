"""Peak memory and speed of reading a large trajectory log: ``iter_episodes`` vs ``read_episodes``.

Writes a synthetic ``mtrouter-traj/2`` JSONL file of ``--turns`` turns (``--turns-per-episode``
per line; each line and turn carries unknown fields, as users' logs do, unless ``--no-extra``)
into a temporary directory, then measures each reader in a fresh Python process (peak RSS from
``resource.getrusage`` is per process and never goes down): the RSS growth over the process after
imports, the tracemalloc peak of the Python heap (a second, slower run), and the wall time.
Usage:

    python scripts/bench_logs.py [--turns 1000000] [--turns-per-episode 50] [--no-extra] [--features N]
        [--baseline SRC] [--json out.json]

``--features N`` gives every turn a feature vector of N numbers, as simulated logs carry;
``--baseline SRC`` reads the same file with the package of another source tree (a ``git worktree``
of an earlier commit) too, in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def write_log(path: Path, n_turns: int, per_episode: int, extra: bool, features: int = 0) -> tuple[int, int]:
    """Write the synthetic log line by line (the writer holds one line); (episodes, bytes)."""
    models = ["gpt-5", "deepseek-v3.2", "minimax-m2", "kimi-k2", "gemini-2.5-flash-lite", "gpt-oss-120b"]
    tools = ["search", "python", "file", "browse", "answer", None]
    n_eps = -(-n_turns // per_episode)
    with open(path, "w") as fh:
        for e in range(n_eps):
            k = min(per_episode, n_turns - e * per_episode)
            turns = []
            for t in range(k):
                i = e * per_episode + t
                turn = {"model": models[i % 6], "input_tokens": 1000 + i % 977, "cached_tokens": 800,
                        "output_tokens": 40 + i % 61, "cost": 0.001 + (i % 13) * 1e-4, "tool": tools[i % 6],
                        "error": {"kind": "invalid_action", "severity": "high"} if i % 9 == 0 else None,
                        "propensity": 1 / 6}
                if extra:
                    turn["latency_ms"] = 300 + i % 500
                if features:
                    turn["features"] = [round(((i * 7919 + j * 104729) % 100003) / 100003 - 0.5, 5)
                                        for j in range(features)]
                turns.append(turn)
            rec = {"schema": "mtrouter-traj/2", "episode_id": f"ep-{e}", "task_type": f"task{e % 30}",
                   "score": float(e % 201 - 100), "score_range": [-100, 100], "budget": None,
                   "models": models, "turns": turns, "source": "import"}
            if extra:
                rec.update(variation=e % 100, steps=k)
            fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
    return n_eps, path.stat().st_size


def child(mode: str, path: str, trace: bool) -> dict:
    """Run one reader in this (fresh) process and measure it."""
    import gc
    import tracemalloc

    import mtrouter_jax
    from mtrouter_jax.logs.io import iter_episodes, read_episodes

    warnings.simplefilter("ignore")  # the unknown-field summary warning is expected here
    gc.collect()
    base = peak_rss_mib()
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    n_eps = n_turns = 0
    if mode == "iter":
        for ep in iter_episodes(path):
            n_eps += 1
            n_turns += len(ep.turns)
    else:
        eps = read_episodes(path)
        n_eps, n_turns = len(eps), sum(len(e.turns) for e in eps)
    dt = time.perf_counter() - t0
    out = {"mode": mode, "package": str(Path(mtrouter_jax.__file__).parent), "episodes": n_eps, "turns": n_turns,
           "seconds": dt, "rss_base_mib": base, "rss_peak_mib": peak_rss_mib(), "rss_growth_mib": peak_rss_mib() - base}
    if trace:
        out["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    return out


def measure(mode: str, path: Path, trace: bool, src: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(path)] + (["--trace"] if trace else [])
    env = None if src is None else {**os.environ, "PYTHONPATH": str(src.resolve())}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--turns", type=int, default=1_000_000)
    ap.add_argument("--turns-per-episode", type=int, default=50)
    ap.add_argument("--no-extra", action="store_true", help="no unknown fields in the generated log")
    ap.add_argument("--features", type=int, default=0, help="numbers in each turn's feature vector (0 = none)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="also read with the package of this source tree (e.g. a git worktree of an older commit)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], a.trace)))
        return
    with tempfile.TemporaryDirectory(prefix="bench_logs_") as tmp:
        path = Path(tmp) / "log.jsonl"
        t0 = time.perf_counter()
        n_eps, size = write_log(path, a.turns, a.turns_per_episode, not a.no_extra, a.features)
        print(f"wrote {a.turns:,} turns in {n_eps:,} episodes, {size / 2**20:.0f} MiB, "
              f"in {time.perf_counter() - t0:.1f} s ({'with' if not a.no_extra else 'no'} unknown fields, "
              f"{a.features} features a turn)")
        rows = []
        trees = [None] + ([a.baseline] if a.baseline else [])
        for mode, src in [(m, t) for m in ("iter", "read") for t in trees]:
            r = measure(mode, path, trace=False, src=src)
            r.update({k: v for k, v in measure(mode, path, trace=True, src=src).items() if k == "tracemalloc_peak_mib"})
            r["tree"] = "this" if src is None else str(src)
            rows.append(r)
            print(f"[{r['tree']}: {r['package']}] {'iter_episodes' if mode == 'iter' else 'read_episodes'}: "
                  f"{r['turns']:,} turns in {r['seconds']:.1f} s ({r['turns'] / r['seconds']:,.0f} turns/s); peak RSS "
                  f"+{r['rss_growth_mib']:.0f} MiB over {r['rss_base_mib']:.0f} MiB after imports; "
                  f"tracemalloc peak {r['tracemalloc_peak_mib']:.1f} MiB")
    result = {"turns": a.turns, "episodes": n_eps, "file_mib": size / 2**20, "extra_fields": not a.no_extra,
              "features": a.features,
              "python": platform.python_version(), "cpu_count": os.cpu_count(), "runs": rows}
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
