"""Learning curve of a ScienceWorld recipe: router score against logged episodes and logging dollars.

Takes one trajectory log (``mtrouter collect scienceworld``), draws nested random subsets of its
episodes (seeded; a branch travels with its base episode and counts as an episode, as issue 17
counts them), trains a checkpoint on each with ``mtrouter train`` (its defaults plus any
``--train-args``), evaluates every router spec on each checkpoint with ``mtrouter eval scienceworld``
on the same episodes (dev variations by default: curves choose recipes, the test split is read once
per default), and writes a markdown table and a plot (score ± 95 % CI vs episodes and vs dollars).

    python scripts/bench_learning_curve.py --log runs/w17s/spec_plain.jsonl --profiles specialists \\
        --sizes 100 200 400 800 --routers safe safe+draft:off --budget 0.1 --per-task 6 --out runs/w17s/curve

Every step is a real CLI run (its command is printed); a finished checkpoint or evaluated episode
is reused when the script runs again into the same ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
from pathlib import Path


def _groups(log: Path) -> list[list[str]]:
    """The log's raw lines grouped by base episode (an executed branch joins its ``branch_of``)."""
    order: list[str] = []
    lines: dict[str, list[str]] = {}
    branches: list[tuple[str, str]] = []
    with open(log, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                eid, parent = d["episode_id"], (d.get("meta") or {}).get("branch_of")
            except (ValueError, KeyError, AttributeError) as e:
                raise SystemExit(f"{log}:{i}: not a trajectory record with an episode_id ({e})") from None
            if parent is None:
                order.append(eid)
                lines[eid] = [line]
            else:
                branches.append((parent, line))
    for parent, line in branches:
        if parent in lines:  # a branch whose base is not in the log cannot be trained on alone
            lines[parent].append(line)
    return [lines[e] for e in order]


def _cost(line: str) -> float:
    return float(sum(t.get("cost") or 0.0 for t in json.loads(line).get("turns") or ()))


def _run(cmd: list[str]) -> None:
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", required=True, type=Path, help="trajectory log to subsample")
    ap.add_argument("--profiles", required=True, help="the world the log was collected in (--profiles of eval)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400], help="logged episodes per point")
    ap.add_argument("--routers", nargs="+", default=["safe", "safe+draft:off"],
                    help="router kinds evaluated on every checkpoint (default: the default router, which drafts "
                         "where the logs allow, and the same router without drafting; any of learned, safe, "
                         "safe+draft[:MODE])")
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--per-task", type=int, default=4)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--lam", type=float, default=0.0, help="λ of every learned router (calibration would use dev too)")
    ap.add_argument("--train-args", default="", help="extra `mtrouter train` options, one string")
    ap.add_argument("--seed", type=int, default=0, help="seed of the subset draw")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)

    groups = _groups(a.log)
    n_all = sum(len(g) for g in groups)
    if max(a.sizes) > n_all:
        raise SystemExit(f"--sizes: {max(a.sizes)} episodes asked for, {a.log} has {n_all}")
    random.Random(a.seed).shuffle(groups)
    a.out.mkdir(parents=True, exist_ok=True)
    points = []
    for size in sorted(set(a.sizes)):
        chosen, n = [], 0
        for g in groups:  # nested: each subset extends the smaller one
            if n >= size:
                break
            chosen += g
            n += len(g)
        data, ckpt = a.out / f"log_{size}.jsonl", a.out / f"ckpt_{size}"
        data.write_text("".join(chosen), encoding="utf-8")
        if not (ckpt / "commit_success.txt").exists():
            _run(["mtrouter", "train", "--data", str(data), "--out", str(ckpt), *shlex.split(a.train_args)])
        points.append((size, n, sum(_cost(x) for x in chosen), ckpt))
    specs = ",".join(f"{r}={p[3]}" for p in points for r in a.routers)
    from mtrouter_jax.core.pool import default_pool
    from mtrouter_jax.scienceworld.evaluate import eval_specs

    names = [n for n, _, _ in eval_specs(specs, default_pool(), None, None, None)]  # the rows the eval will name
    ev = a.out / "eval"
    _run(["mtrouter", "eval", "scienceworld", "--profiles", a.profiles, "--split", a.split, "--per-task",
          str(a.per_task), "--budgets", str(a.budget), "--lam", str(a.lam), "--routers", specs,
          "--workers", str(a.workers), "--out", str(ev)])
    res = json.loads((ev / "results.json").read_text())["routers"]
    rows = []
    for i, r in enumerate(a.routers):
        for j, (size, n, usd, ckpt) in enumerate(points):
            name = names[j * len(a.routers) + i]
            pt = res[name]["points"][0]
            rows.append({"router": r, "row": name.partition("[")[0], "size": size, "episodes": n, "usd": usd,
                         "score": pt["score"], "ci": pt["score_ci"], "cost": pt["cost"], "n_eval": pt["n_episodes"]})
    (a.out / "curve.json").write_text(json.dumps(rows, indent=1))
    md = ["| router | row (drafting?) | logged episodes | logging $ | score ± 95 % CI | $/episode | eval episodes |",
          "|---" * 7 + "|"]
    md += [f"| {x['router']} | {x['row']} | {x['episodes']} | {x['usd']:.1f} | {x['score']:.1f} ± {x['ci']:.1f} | "
           f"{x['cost']:.4f} | {x['n_eval']} |" for x in rows]
    (a.out / "curve.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    _plot(rows, a, a.out / "curve.png")
    print(f"\nwrote {a.out / 'curve.md'}, {a.out / 'curve.png'}, {a.out / 'curve.json'}")
    return 0


def _plot(rows: list[dict], a, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for r in a.routers:
        xs = [x for x in rows if x["router"] == r]
        for ax, key in zip(axes, ("episodes", "usd")):
            ax.errorbar([x[key] for x in xs], [x["score"] for x in xs], yerr=[x["ci"] for x in xs], marker="o",
                        capsize=3, label=r + (" (default)" if r == "safe" else ""))
    axes[0].set_xlabel("logged episodes")
    axes[1].set_xlabel("logging dollars")
    axes[0].set_ylabel(f"score on {a.split} (${a.budget:g}/episode, λ = {a.lam:g})")
    axes[0].legend()
    fig.suptitle(f"learning curve: {a.profiles}, {a.log.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
