"""The method's loop on real ScienceWorld episodes (scripted backends), end to end, with the CLI.

    python scripts/bench_scienceworld_loop.py --out runs/sw_loop [--stage all|collect|train|eval|roundb]

1. collect: the sticky roulette (rho 0.9) and the uniform roulette on training variations;
2. train: Monte-Carlo targets, bootstrapped targets, bootstrapped + text features (ensembles of 5);
3. eval: every learned variant (greedy and safe), the tool heuristic, error escalation and every
   single model on the same test variations, under every budget, λ calibrated on dev variations;
4. roundb: the paper's stage B — the bootstrapped router with beta-mixed exploration on training
   variations — then retrain on both rounds and evaluate the new checkpoint on the same episodes.
Every step is a plain `mtrouter` command (printed), resumable: finished episodes are skipped.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path


def sh(*argv: str) -> None:
    cmd = ["mtrouter", *argv]
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/sw_loop")
    ap.add_argument("--stage", default="all", choices=["all", "collect", "train", "eval", "roundb"])
    ap.add_argument("--train-per-task", type=int, default=9)
    ap.add_argument("--test-per-task", type=int, default=5)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--budgets", default="0.01 0.05 0.14 0.35")
    ap.add_argument("--lam-grid", default="0 0.1 0.3")
    ap.add_argument("--workers", default="2")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    logs, w = out / "round_a.jsonl", ["--workers", a.workers]
    stages = [a.stage] if a.stage != "all" else ["collect", "train", "eval", "roundb"]
    variants = {"mc": ["--bootstrap-iterations", "0"], "boot": [], "boot_text": ["--text"]}
    if "collect" in stages:
        for router, seed in (("sticky:0.9", "0"), ("uniform", "1")):
            sh("collect", "scienceworld", "--router", router, "--per-task", str(a.train_per_task), "--runs",
               str(a.runs), "--split", "train", "--seed", seed, "--out", str(logs), *w)
    if "train" in stages:
        for name, extra in variants.items():
            if not (out / f"ckpt_{name}").exists():
                sh("train", "--data", str(logs), "--out", str(out / f"ckpt_{name}"), *extra)
    evaluate = ["eval", "scienceworld", "--per-task", str(a.test_per_task), "--runs", str(a.runs), "--split", "test",
                "--budgets", *a.budgets.split(), "--lam-grid", *a.lam_grid.split(), *w]
    if "eval" in stages:
        routers = [f"learned={out / f'ckpt_{n}'}" for n in variants] + [
            f"safe={out / 'ckpt_mc'}", f"safe={out / 'ckpt_boot'}", "tool-heuristic", "error-escalation", "fixed:*"]
        sh(*evaluate, "--routers", ",".join(routers), "--out", str(out / "eval"))
    if "roundb" in stages:
        logs_b = out / "round_b.jsonl"
        sh("collect", "scienceworld", "--router", "learned", "--checkpoint", str(out / "ckpt_boot"), "--explore",
           "beta:0.5", "--per-task", str(a.train_per_task), "--runs", "1", "--split", "train", "--seed", "2",
           "--out", str(logs_b), *w)
        if not (out / "ckpt_boot_ab").exists():
            sh("train", "--data", str(logs), str(logs_b), "--out", str(out / "ckpt_boot_ab"))
        routers = [f"learned={out / 'ckpt_boot_ab'}", f"safe={out / 'ckpt_boot_ab'}", "tool-heuristic",
                   "error-escalation", "fixed:*"]
        eval_b = out / "eval_b"
        eval_b.mkdir(exist_ok=True)
        if not (eval_b / "episodes.jsonl").exists() and (out / "eval" / "episodes.jsonl").exists():
            # the baselines' episodes are the same jobs: reuse them (the runner skips logged ids)
            (eval_b / "episodes.jsonl").write_bytes((out / "eval" / "episodes.jsonl").read_bytes())
        sh(*evaluate, "--routers", ",".join(routers), "--out", str(eval_b))


if __name__ == "__main__":
    sys.exit(main())
