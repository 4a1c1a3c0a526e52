"""Build expensive test artifacts (simulated episodes, a trained checkpoint) once per test session.

With pytest-xdist every worker runs its own session-scoped fixtures; the artifacts here are built
by the first worker that asks (under a file lock) and read by the others.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
from pathlib import Path
from typing import Callable

N_EPISODES = 96  # simulated episodes shared by the dataset/train/checkpoint/evaluate tests
SEED = 0


def shared_root(tmp_path_factory) -> Path:
    """A directory shared by all xdist workers of this run (the base temp dir otherwise)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """Path of artifact ``name``; ``build(staging_path)`` writes it the first time (file-locked)."""
    root = shared_root(tmp_path_factory)
    path = root / name
    with open(root / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if not path.exists():
            staging = root / f"{name}.staging"
            shutil.rmtree(staging, ignore_errors=True)
            build(staging)
            staging.rename(path)
    return path


def simulated_episodes(tmp_path_factory):
    """``N_EPISODES`` uniform-behaviour simulated episodes (with per-turn features)."""

    def build(p: Path):
        from mtrouter_jax.jobs import simulate_dataset

        eps = simulate_dataset(SEED, N_EPISODES, progress=False, with_features=True)
        p.write_bytes(pickle.dumps(eps))

    return pickle.loads(once(tmp_path_factory, "episodes96.pkl", build).read_bytes())


def trained_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint trained for two epochs on the shared episodes (treat as read-only)."""

    def build(p: Path):
        from mtrouter_jax.core.pool import default_pool
        from mtrouter_jax.estimator.train import TrainConfig
        from mtrouter_jax.jobs import train_checkpoint

        train_checkpoint(simulated_episodes(tmp_path_factory), default_pool(), p,
                         TrainConfig(max_epochs=2, patience=2, batch_size=64), progress=False)

    return once(tmp_path_factory, "ckpt96", build)
