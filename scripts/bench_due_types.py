"""What a log says about the action type due at each turn (issue 17): typed vs hindsight due tables,
and how well the due type can be told before a turn is served.

    python scripts/bench_due_types.py --logs runs17/holdout/plain.jsonl runs17/specialists/plain.jsonl

Per log: the mean gain a turn (% of the score range) of every model in the ``navigate`` and ``act``
rows, keyed by the type the model typed and by the type due in hindsight (``routing/due.py``); then
the held-out accuracy (a quarter of the episodes held out, seeded) of predicting the due type with
the majority due type of a count table keyed by what a router could know before the turn: the
previous turn's type (and whether it changed the score), the task, the number of score-raising
turns so far, or the draft's own typed type.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict

import numpy as np

# what a predictor may read, by name: each turn row has ep, task, prev, prev_sign, n_progress, model, typed, due
KEYS = {
    "majority": lambda r: 0,
    "previous type": lambda r: r["prev"],
    "previous type + its sign": lambda r: (r["prev"], r["prev_sign"]),
    "task": lambda r: r["task"],
    "task + score-raising turns so far": lambda r: (r["task"], r["n_progress"]),
    "task + raising turns + previous": lambda r: (r["task"], r["n_progress"], r["prev"], r["prev_sign"]),
    "the draft's typed type (model, type)": lambda r: (r["model"], r["typed"]),
    "draft + previous type + its sign": lambda r: (r["model"], r["typed"], r["prev"], r["prev_sign"]),
}


def turn_rows(path: str, tools: tuple[str, ...]) -> list[dict]:
    from mtrouter_jax.logs.io import iter_episodes
    from mtrouter_jax.routing.draft import episode_gains
    from mtrouter_jax.routing.due import due_types

    pos = {t: i for i, t in enumerate(tools)}
    rows = []
    for e in iter_episodes(path):
        g = episode_gains(e)
        if g is None:
            continue
        g = np.nan_to_num(g)
        k = np.array([pos.get(t.tool, len(tools) - 1) for t in e.turns], np.int64)
        due = due_types(k, g, len(tools))
        n_progress = 0
        for t in range(len(k)):
            rows.append({"ep": e.episode_id, "task": e.task_type, "prev": int(k[t - 1]) if t else -1,
                         "prev_sign": int(np.sign(g[t - 1])) if t else 0, "n_progress": n_progress,
                         "model": e.turns[t].model, "typed": int(k[t]), "due": int(due[t])})
            n_progress += int(g[t] > 1e-12)
    return rows


def held_out_accuracy(rows: list[dict], key, seed: int = 0) -> float:
    """Accuracy on a held-out quarter of the episodes of the training quarters' majority due type per key."""
    eps = sorted({r["ep"] for r in rows})
    test = set(np.random.default_rng(seed).choice(eps, len(eps) // 4, replace=False).tolist())
    table: dict = defaultdict(Counter)
    for r in rows:
        if r["ep"] not in test:
            table[key(r)][r["due"]] += 1
    overall = Counter(r["due"] for r in rows if r["ep"] not in test).most_common(1)[0][0]
    hits = [(table[key(r)].most_common(1)[0][0] if table.get(key(r)) else overall) == r["due"]
            for r in rows if r["ep"] in test]
    return float(np.mean(hits))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logs", nargs="+", required=True, help="ScienceWorld logs with per-turn progress")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from mtrouter_jax.core.pool import default_pool
    from mtrouter_jax.logs.io import iter_episodes
    from mtrouter_jax.routing.draft import fit_type_outcomes
    from mtrouter_jax.scienceworld.routed import TOOLS

    pool = default_pool()
    for path in a.logs:
        t = fit_type_outcomes(list(iter_episodes(path)), TOOLS, pool.names)
        print(f"\n## {path}\n\n| row | " + " | ".join(pool.names) + " |\n|---|" + "---|" * len(pool.names))
        for name in ("navigate", "act"):
            k = TOOLS.index(name)
            for label, mean in (("typed", t.mean[k]), ("due", t.due.mean[k])):
                print(f"| {name}, {label} | " + " | ".join(f"{100 * x:.2f}" for x in mean) + " |")
        rows = turn_rows(path, TOOLS)
        print("\n| due type told from | held-out accuracy |\n|---|---|")
        for name, key in KEYS.items():
            print(f"| {name} | {held_out_accuracy(rows, key, a.seed):.3f} |")


if __name__ == "__main__":
    main()
