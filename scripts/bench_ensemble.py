"""Ensemble training cost: K estimators in one vmapped step vs one estimator, on the same data.

    python scripts/bench_ensemble.py --episodes 2048 --epochs 4 --k 5 [--data logs.jsonl]

Trains a single estimator (``train.fit``, k=1) and an ensemble (``train.fit``, k=K) on the same
training data in one run, and reports wall time (compile included) and steady-state seconds per
epoch (first epoch excluded), and their ratio. The issue's bar: an ensemble of 5 in well under 5x.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax

from mtrouter_jax.estimator.dataset import build_training_data
from mtrouter_jax.core.pool import default_pool
from mtrouter_jax.estimator.train import TrainConfig, fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=2048, help="simulated episodes (ignored with --data)")
    ap.add_argument("--data", nargs="*", default=[], help="trajectory logs to train on instead")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    pool = default_pool()
    if a.data:
        from mtrouter_jax.logs.io import drop_unscored, read_episodes

        eps = drop_unscored(read_episodes(a.data))[0]
    else:
        from mtrouter_jax.sim.collect import sticky_behaviour
        from mtrouter_jax.jobs import simulate_dataset

        eps = simulate_dataset(0, a.episodes, pool, behaviour=sticky_behaviour(0.9), progress=False,
                               with_features=False)
    data = build_training_data(eps, pool)
    cfg = TrainConfig(max_epochs=a.epochs, patience=a.epochs, batch_size=a.batch_size)
    rows = {}
    for name, run in (("single", lambda: fit(data, pool, cfg, progress=False)),
                      (f"ensemble{a.k}", lambda: fit(data, pool, cfg, a.k, progress=False))):
        t0 = time.perf_counter()
        res = run()
        wall = time.perf_counter() - t0
        steady = [h["seconds"] for h in res.history[1:]] or [res.history[0]["seconds"]]
        rows[name] = {"wall_s": wall, "epoch_s": sum(steady) / len(steady), "val_loss": res.val_loss}
        print(f"{name}: {wall:.1f} s in all, {rows[name]['epoch_s']:.2f} s per steady epoch, val loss {res.val_loss:.4f}")
    single, ens = rows["single"], rows[f"ensemble{a.k}"]
    print(f"{data.n} turns on {jax.devices()[0].platform}: ensemble of {a.k} / single = "
          f"{ens['wall_s'] / single['wall_s']:.2f}x wall, {ens['epoch_s'] / single['epoch_s']:.2f}x per epoch")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
