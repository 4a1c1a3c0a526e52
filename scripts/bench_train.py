"""Training throughput and memory of the outcome estimator (``train.fit``) on simulated episodes.

Simulates ``--episodes`` logged episodes (uniform behaviour policy), builds the per-turn training
arrays with ``dataset.build_training_data``, and times ``train.fit`` for a fixed number of epochs
(no early stopping). Steady-state turns/s excludes the first epoch, which includes the jit compile.

``--turns N`` (e.g. 1000000): the built arrays are *tiled* (replicated, with fresh episode ids) up
to N turns before training -- simulating ~55k episodes through Python ``Episode`` objects is slow,
and throughput/memory depend only on the array sizes, not on the values. The output says so.

``--devices N`` sets ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before jax is imported,
so ``fit`` trains data-parallel over N (virtual CPU) devices; run once with 1 and once with N and
compare. On one CPU the virtual devices share the same cores, so this shows that the sharded path
runs, not a speed-up. Usage:

    python scripts/bench_train.py [--episodes 2048] [--epochs 3] [--turns 1000000] [--devices 2]
        [--batch-size 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np


def rss_mb() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


ARRAYS = ("features", "model", "score_target", "cost_target", "weight", "episode")


def tile_to(data, n_turns: int):
    """``data`` replicated (episode ids offset per copy) and cut to exactly ``n_turns`` rows."""
    import dataclasses

    reps = -(-n_turns // data.n)
    if reps <= 1:
        sel = slice(0, n_turns)
        return dataclasses.replace(data, **{k: getattr(data, k)[sel] for k in ARRAYS},
                                   n_episodes=int(data.episode[:n_turns].max()) + 1), 1
    out = {k: np.concatenate([getattr(data, k)] * reps)[:n_turns] for k in ARRAYS if k != "episode"}
    ep = np.concatenate([data.episode + r * data.n_episodes for r in range(reps)])[:n_turns].astype(np.int32)
    return dataclasses.replace(data, **out, episode=ep, n_episodes=int(ep.max()) + 1), reps


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=2048, help="episodes to simulate (default 2048)")
    p.add_argument("--epochs", type=int, default=3, help="epochs to time (>= 2 for a compile-free rate)")
    p.add_argument("--turns", type=int, default=None,
                   help="tile the built arrays up to this many turns (e.g. 1000000) before training")
    p.add_argument("--devices", type=int, default=1, help="virtual host devices for data-parallel training")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = p.parse_args(argv)
    if a.epochs < 1:
        p.error("--epochs must be >= 1")

    if a.devices > 1:  # must happen before jax is imported anywhere
        if "jax" in sys.modules:
            raise RuntimeError("--devices must be set before jax is imported")
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={a.devices}".strip()

    import jax

    from bench_sweep import cpu_model  # after XLA_FLAGS: bench_sweep imports jax
    from rich.console import Console
    from rich.table import Table

    from mtrouter_jax.estimator import dataset

    from mtrouter_jax import jobs as workflow
    from mtrouter_jax.core.pool import default_pool
    from mtrouter_jax.estimator.train import TrainConfig, fit

    devices = jax.devices()
    if len(devices) != a.devices:
        raise RuntimeError(f"asked for {a.devices} devices, jax sees {len(devices)} ({devices})")
    pool = default_pool()
    rss0 = rss_mb()

    t0 = time.perf_counter()
    episodes = workflow.simulate_dataset(a.seed, a.episodes, pool, progress=False, with_features=False)
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = dataset.build_training_data(episodes, pool)
    t_build = time.perf_counter() - t0
    built_turns, built_episodes = data.n, data.n_episodes
    del episodes
    rss_built = rss_mb()

    reps = 1
    if a.turns is not None and a.turns != data.n:
        data, reps = tile_to(data, a.turns)
    array_bytes = sum(getattr(data, k).nbytes for k in ARRAYS)
    rss_data = rss_mb()

    cfg = TrainConfig(max_epochs=a.epochs, patience=10**9, batch_size=a.batch_size, seed=a.seed)
    t0 = time.perf_counter()
    res = fit(data, pool, cfg, progress=False, devices=devices)
    t_fit = time.perf_counter() - t0
    rss_fit = rss_mb()

    # turns trained per epoch = n_batches * batch_size (fit drops the last partial batch)
    train_idx, _ = dataset.split_by_episode(data, cfg.val_frac, cfg.seed)
    per_epoch = (len(train_idx) // cfg.batch_size) * cfg.batch_size
    secs = [h["seconds"] for h in res.history]
    steady = secs[1:]
    steady_rate = per_epoch * len(steady) / sum(steady) if steady else None
    first_rate = per_epoch / secs[0]

    out = {
        "episodes_simulated": a.episodes, "simulate_s": t_sim, "build_s": t_build,
        "built_turns": built_turns, "built_episodes": built_episodes,
        "tiled": reps > 1 or (a.turns is not None and a.turns != built_turns), "tile_reps": reps,
        "turns": data.n, "episodes": data.n_episodes, "train_turns_per_epoch": per_epoch,
        "features": int(data.features.shape[1]), "array_bytes": int(array_bytes),
        "epochs": len(secs), "epoch_seconds": secs, "fit_s": t_fit,
        "first_epoch_turns_per_s": first_rate, "steady_turns_per_s": steady_rate,
        "batch_size": cfg.batch_size, "devices": len(devices),
        "train_loss": [h["train_loss"] for h in res.history], "val_loss": [h["val_loss"] for h in res.history],
        "peak_rss_mb": {"start": rss0, "after_build": rss_built, "after_tile": rss_data, "after_fit": rss_fit},
        "cpus": os.cpu_count(), "cpu_model": cpu_model(), "jax": jax.__version__, "loadavg_end": os.getloadavg(),
        "backend": jax.default_backend(), "python": platform.python_version(),
    }

    t = Table(title="bench_train: train.fit throughput and memory")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("simulated episodes (s)", f"{a.episodes} ({t_sim:.1f} s)")
    t.add_row("build_training_data: turns (s)", f"{built_turns:,} ({t_build:.1f} s)")
    if out["tiled"]:
        t.add_row("training turns", f"{data.n:,} [arrays TILED x{reps} from the {built_turns:,} built]")
    else:
        t.add_row("training turns", f"{data.n:,}")
    t.add_row("turns trained per epoch", f"{per_epoch:,} (90% train split, full batches)")
    t.add_row("training arrays", f"{array_bytes / 2**20:.1f} MiB ({out['features']} features, float32)")
    t.add_row("devices / batch size", f"{len(devices)} x {jax.default_backend()} / {cfg.batch_size}")
    t.add_row("epoch seconds", ", ".join(f"{s:.2f}" for s in secs))
    t.add_row("epoch 1 turns/s (incl. compile)", f"{first_rate:,.0f}")
    t.add_row("steady turns/s (epochs 2+)", f"{steady_rate:,.0f}" if steady_rate else "n/a (1 epoch)")
    t.add_row("train / val loss (last)", f"{res.history[-1]['train_loss']:.4f} / "
                                          f"{res.history[-1]['val_loss']:.4f}")
    t.add_row("peak RSS after build / tile / fit (MiB)", f"{rss_built:.0f} / {rss_data:.0f} / {rss_fit:.0f}")
    t.add_row("machine", f"{os.cpu_count()} CPUs, {out['cpu_model']}, jax {jax.__version__}")
    t.add_row("load average (1 min) at end", f"{os.getloadavg()[0]:.1f} (other processes share the cores)")
    Console(width=120).print(t)
    if out["tiled"]:
        print(f"note: the {data.n:,} training turns are the {built_turns:,} simulated turns replicated "
              f"{reps}x (episode ids offset per copy); throughput and memory depend only on array sizes.")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
