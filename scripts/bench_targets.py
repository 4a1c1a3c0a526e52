"""Does dense progress reduce the variance of the score targets? Monte-Carlo targets vs
"score still to gain" targets (``--dense-progress``) on the same logs.

    python scripts/bench_targets.py runs/sw_loop/round_a_progress.jsonl

For each variant: the targets' standard deviation (all turns; the later half of each episode),
the spread of the per-model mean targets (the signal the router ranks models by: std over models
of the mean target of the turns each model served), and their ratio. Needs logs whose turns carry
``progress`` (ScienceWorld logs do).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mtrouter_jax.estimator.dataset import TargetConfig, build_training_data
from mtrouter_jax.logs.io import read_episodes
from mtrouter_jax.core.pool import default_pool


def summary(data) -> dict:
    y, m, ep = data.score_target, data.model, data.episode
    # turn position within its episode (rows are stored episode by episode, in turn order)
    pos = np.zeros(len(y))
    for e in np.unique(ep):
        idx = np.flatnonzero(ep == e)
        pos[idx] = np.arange(len(idx)) / max(len(idx), 1)
    late = pos >= 0.5
    means = np.array([y[m == j].mean() for j in np.unique(m)])
    return {"std": float(y.std()), "std_late": float(y[late].std()), "model_spread": float(means.std()),
            "signal_to_noise": float(means.std() / y.std())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+")
    a = ap.parse_args(argv)
    eps = [e for p in a.logs for e in read_episodes(p) if e.score is not None]
    pool = default_pool()
    print(f"{len(eps)} episodes, {sum(len(e.turns) for e in eps)} turns")
    print("| targets | std | std, later half of episodes | spread of per-model means | spread / std |")
    print("|---|---|---|---|---|")
    for name, dense in (("Monte-Carlo (final score)", False), ("dense: score still to gain", True)):
        s = summary(build_training_data(eps, pool, TargetConfig(dense_progress=dense)))
        print(f"| {name} | {s['std']:.3f} | {s['std_late']:.3f} | {s['model_spread']:.3f} | {s['signal_to_noise']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
