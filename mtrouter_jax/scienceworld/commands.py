"""``mtrouter collect scienceworld`` and ``mtrouter eval scienceworld``: their options and commands.

A thin shell (argparse, printing) that imports nothing heavy until a command runs, so building the
CLI parser stays JAX-free; the work is in ``scienceworld.evaluate``.
"""

from __future__ import annotations

import argparse
import math

from .engine import DEFAULT_EVAL_BASELINES, DEFAULT_TASKS, SPLITS
from .scripted import WORLDS



def _budget(text: str) -> float:
    try:
        b = float(text)
    except ValueError:
        b = math.nan
    if not math.isfinite(b) or b <= 0:
        raise argparse.ArgumentTypeError(f"budget must be a number > 0 USD, got {text!r}")
    return b


def _common(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument("benchmark", choices=["scienceworld"], help="the benchmark (ScienceWorld, needs Java 17)")
    p.add_argument("--pool", default=None, help="pool file (default: the embedded six-model pool)")
    p.add_argument("--backend", choices=["scripted", "live"], default="scripted",
                   help="scripted stand-in agents (no keys) or the pool's real endpoints")
    p.add_argument("--profiles", default=None, metavar="WORLD|FILE",
                   help="scripted agents: a frozen world (" + ", ".join(WORLDS) + "; default: paper) or a profile file")
    p.add_argument("--per-task", type=int, default=1, help="variations per task")
    p.add_argument("--runs", type=int, default=1, help="episodes per variation")
    p.add_argument("--split", choices=SPLITS, default=split)
    p.add_argument("--tasks", nargs="*", default=None, help=f"tasks (default: the {len(DEFAULT_TASKS)} with gold "
                                                            "paths of at most 80 steps)")
    p.add_argument("--workers", type=int, default=None, help="worker processes, one JVM each (default: min(2, cores))")
    p.add_argument("--step-limit", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)


def add_collect_args(p: argparse.ArgumentParser) -> None:
    _common(p, "train")
    p.add_argument("--router", default="sticky:0.9",
                   help="behaviour policy (default: the sticky roulette); see `mtrouter serve --help`")
    p.add_argument("--explore", default=None, help="exploration around --router: eps:E, beta:B, sticky:RHO[:E]")
    p.add_argument("--checkpoint", default=None, help="checkpoint for --router learned")
    p.add_argument("--tool-map", default=None)
    p.add_argument("--lam", type=float, default=None)
    p.add_argument("--budget", type=_budget, default=None, help="USD per episode (default: none)")
    p.add_argument("--branch", type=int, default=0, metavar="K",
                   help="executed counterfactuals: after each episode, K branches that replay its first t turns, "
                        "serve turn t with another model and continue with the same router and draws, logged "
                        "linked (meta.branch_of, branch_turn); the trainer uses each pair as a per-turn label")
    p.add_argument("--out", required=True, help="trajectory JSONL (appended; ids already there are skipped)")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    _common(p, "test")
    p.add_argument("--checkpoint", default=None, help="checkpoint of the learned router")
    p.add_argument("--routers", default="", help="comma-separated (default: the checkpoint's router as serve "
                                                 "would route it, safe or learned, then "
                                                 f"{DEFAULT_EVAL_BASELINES}; "
                                                 "learned/safe only with --checkpoint; learned=PATH, safe=PATH "
                                                 "for more checkpoints; learned/safe draft where the checkpoint's "
                                                 "logs have per-turn outcomes (named +draft then), safe+draft:off "
                                                 "never, safe+draft[:overlap|difference|due|due-difference] always; "
                                                 "fixed:MODEL runs a model without a budget, "
                                                 "capped:MODEL or capped:* held to each --budgets value)")
    p.add_argument("--budgets", type=_budget, nargs="*", default=[], help="USD per episode (default: none)")
    p.add_argument("--lam", type=float, default=None, help="λ of the learned router (default: the checkpoint's)")
    p.add_argument("--lam-grid", type=float, nargs="*", default=[],
                   help="calibrate λ per budget over this grid on --calibration-split episodes first, and write the "
                        "table into the checkpoint (e.g. 0 0.1 0.3)")
    p.add_argument("--calibration-split", choices=SPLITS, default="dev")
    p.add_argument("--calibration-per-task", type=int, default=2)
    p.add_argument("--tool-map", default=None)
    p.add_argument("--match-cost", default=None, metavar="ROUTER",
                   help="also run every other budgeted row at ROUTER's mean cost per episode under each budget "
                        "(rounded down; e.g. tool-heuristic): the comparison at equal or lower cost; a learned row that "
                        "spends more also runs at the budgets between, for the budget mix that spends ROUTER's cost")
    p.add_argument("--out", required=True, help="output directory (episodes.jsonl, results, plots, summary)")


def _checks(a):
    from mtrouter_jax.core.errors import UsageError
    from mtrouter_jax.core.pool import load_pool

    from .engine import check_task

    for n, v in (("--per-task", a.per_task), ("--runs", a.runs), ("--step-limit", a.step_limit)):
        if v < 1:
            raise UsageError(f"{n} must be >= 1, got {v}")
    if getattr(a, "branch", 0) < 0:
        raise UsageError(f"--branch must be >= 0, got {a.branch}")
    if a.workers is not None and a.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {a.workers}")
    tasks = [check_task(t) for t in (a.tasks or DEFAULT_TASKS)]
    return load_pool(a.pool), tasks


def cmd_collect(a) -> int:
    from .evaluate import collect
    from .runner import RouterSpec

    pool, tasks = _checks(a)
    spec = RouterSpec(a.router, a.explore, a.checkpoint, a.tool_map, a.lam, a.seed)
    eps = collect(a.out, pool, spec, per_task=a.per_task, runs=a.runs, split=a.split, tasks=tasks, budget=a.budget,
                  backend=a.backend, workers=a.workers, seed=a.seed, step_limit=a.step_limit, profiles=a.profiles,
                  branch=a.branch)
    n_turns = sum(len(e.turns) for e in eps)
    from .branch import BRANCH_OF, real_cost

    n_br = sum(1 for e in eps if BRANCH_OF in (e.meta or {}))
    spent = sum(real_cost(e) for e in eps)
    print(f"appended {len(eps)} episodes{f' ({n_br} of them branches)' if n_br else ''} ({n_turns} turns, "
          f"${spent:.4f} spent) to {a.out}")
    return 0


def cmd_eval(a) -> int:
    from mtrouter_jax.reporting.tables import print_results, write_results
    from mtrouter_jax.reporting.summary import summary_markdown

    from .evaluate import evaluate

    pool, tasks = _checks(a)
    results = evaluate(a.out, pool, a.routers, checkpoint=a.checkpoint, budgets=a.budgets, per_task=a.per_task,
                       runs=a.runs, split=a.split, tasks=tasks, backend=a.backend, workers=a.workers, seed=a.seed,
                       step_limit=a.step_limit, lam=a.lam, tool_map=a.tool_map, profiles=a.profiles,
                       lam_grid=a.lam_grid, calibration_split=a.calibration_split,
                       calibration_per_task=a.calibration_per_task, match_cost=a.match_cost)
    print_results(results)
    print(summary_markdown(results))
    for k, v in write_results(results, a.out).items():
        print(f"wrote {k}: {v}")
    return 0


__all__ = ["add_collect_args", "add_eval_args", "cmd_collect", "cmd_eval"]
