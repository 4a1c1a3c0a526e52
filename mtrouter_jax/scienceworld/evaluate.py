"""The library behind ``mtrouter collect scienceworld`` and ``mtrouter eval scienceworld`` (options: ``commands``).

collect: route episodes of training variations with a behaviour policy (default: the sticky
roulette) and append them, with observation and action text, to a trajectory log.
eval: run every router on the same test variations (same scripted draws: common random numbers)
under every budget, then report them through the simulator sweep's reporting path.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from mtrouter_jax.core.pool import Pool
from mtrouter_jax.routing.meta import lam_for_budget

from .engine import DEFAULT_EVAL_BASELINES, DEFAULT_TASKS, require_java
from .runner import Job, RouterSpec, make_jobs, plan_variations, run_jobs


def default_eval_routers(checkpoint: str | Path | None) -> str:
    """The routers eval runs when none are named: the baselines, after (with a ``checkpoint``) the
    router ``mtrouter serve`` would serve it with — ``safe`` (drafting where its logs allow) for an
    ensemble with a fitted reference, else ``learned`` (``routing.meta.serves_safe_meta``)."""
    if not checkpoint:
        return DEFAULT_EVAL_BASELINES
    from mtrouter_jax.estimator.checkpoint import read_meta
    from mtrouter_jax.routing.meta import serves_safe_meta

    return f"{'safe' if serves_safe_meta(read_meta(checkpoint)) else 'learned'},{DEFAULT_EVAL_BASELINES}"


def _workers(n: int | None) -> int:
    return max(1, n if n is not None else min(2, os.cpu_count() or 1))


def validate_spec(spec: RouterSpec, pool: Pool, backend: str = "scripted") -> None:
    """Fail fast (before any JVM starts) on a bad router, exploration, tool map or checkpoint."""
    from mtrouter_jax.routing.specs import RouterSpecError, ToolModelMap, build_router, parse_explore

    from .routed import TOOLS

    if spec.explore:
        parse_explore(spec.explore)
    if spec.router.strip() == "privileged-bound":
        if backend != "scripted":
            raise RouterSpecError("privileged-bound reads the scripted agents' profiles: use --backend scripted",
                                  "--routers")
        return
    if spec.router.strip() in ("learned", "safe"):
        if not spec.checkpoint:
            raise RouterSpecError(f"--router {spec.router} needs --checkpoint CKPT", "--checkpoint")
        from mtrouter_jax.estimator.checkpoint import read_meta

        tools = set(((read_meta(spec.checkpoint).get("layout") or {}).get("tools")) or ())
        if not tools & {"explore", "navigate", "act", "focus"}:
            raise RouterSpecError(
                f"checkpoint {spec.checkpoint} was trained on another vocabulary (tool types: "
                f"{', '.join(sorted(tools)) or 'none'}), not on ScienceWorld turns ({', '.join(TOOLS)}): "
                "every turn would look unknown to it. Train on ScienceWorld logs: mtrouter collect scienceworld "
                "--out sw.jsonl, then mtrouter train --data sw.jsonl --out CKPT", "--checkpoint")
        if spec.draft and not read_meta(spec.checkpoint).get("type_outcomes"):
            raise RouterSpecError(f"{spec.name}: checkpoint {spec.checkpoint} has no per-type turn outcomes "
                                  "(trained before draft routing existed): retrain it with mtrouter train", "--routers")
        return
    build_router(spec.router, pool, TOOLS, tool_map=ToolModelMap.from_file(spec.tool_map) if spec.tool_map else None)


def collect(out: str | Path, pool: Pool, spec: RouterSpec, *, per_task: int = 1, runs: int = 1,
            split: str = "train", tasks: Sequence[str] = DEFAULT_TASKS, budget: float | None = None,
            backend: str = "scripted", workers: int | None = None, seed: int = 0, step_limit: int = 100,
            profiles: str | None = None, progress: bool = True, branch: int = 0) -> list:
    """Collect routed episodes into ``out`` (resumable: ids already there are skipped); ``branch``
    executed counterfactuals per episode (``scienceworld.branch``), logged linked to it."""
    validate_spec(spec, pool, backend)
    require_java()
    plan = plan_variations(tasks, split, per_task, seed)
    jobs = make_jobs(spec, plan, split, runs, budget, branch=branch)
    return list(run_jobs(jobs, pool, lambda j: out, backend=backend, workers=_workers(workers), scripted_seed=seed,
                         step_limit=step_limit, profiles=profiles, progress=progress))


def _draft_of(kind: str) -> tuple[str, bool | str]:
    """``safe`` -> (safe, auto); ``safe+draft`` -> (safe, True); ``safe+draft:MODE`` -> (safe, MODE)."""
    base, plus, mode = kind.partition("+draft")
    if not plus:
        return kind, "auto"
    if not mode:
        return base, True
    from mtrouter_jax.routing.draft import DRAFT_MODES
    from mtrouter_jax.routing.specs import RouterSpecError

    if not mode.startswith(":") or mode[1:] not in DRAFT_MODES:
        raise RouterSpecError(f"--routers {kind}: after +draft expected nothing or :MODE with MODE one of "
                              f"{', '.join(DRAFT_MODES)}", "--routers")
    return base, mode[1:]


def _resolved_draft(draft: bool | str, checkpoint: str) -> bool | str:
    """``auto`` made explicit for a row: True where the router built from ``checkpoint`` would draft
    (``routing.draft.draft_setup``, as ``Router`` decides; the row then says so in its name), else
    False; other modes as given (``off``: False)."""
    if draft == "off":
        return False
    if draft != "auto":
        return draft
    from mtrouter_jax.estimator.checkpoint import CheckpointError, read_meta
    from mtrouter_jax.routing.draft import draft_setup

    try:
        meta = read_meta(checkpoint)
        layout = meta["layout"]
        return draft_setup("auto", meta, None, layout["tools"], layout["models"])[0] is not None
    except (CheckpointError, KeyError, TypeError, ValueError):  # validate_spec reports a bad checkpoint, naming the flag
        return False


def eval_specs(routers: str, pool: Pool, checkpoint: str | None, lam: float | None, tool_map: str | None
               ) -> list[tuple[str, str, RouterSpec]]:
    """(report name, report kind, spec) per router of a comma-separated list; ``fixed:*`` = every
    pool model (run without a budget); ``capped:MODEL`` / ``capped:*`` = a single model held to each
    budget like the routers (an episode ends when its next turn might not fit: what that model alone
    scores on the budget); ``learned`` uses ``checkpoint``, ``learned=PATH`` another checkpoint."""
    out = []
    for r in [x.strip() for x in routers.split(",") if x.strip()]:
        if r == "fixed:*":
            out += [(m, "single", RouterSpec(f"fixed:{m}", label=m)) for m in pool.names]
        elif r.startswith("capped:"):
            names = pool.names if r == "capped:*" else [r[len("capped:"):]]
            out += [(f"capped:{m}", "baseline", RouterSpec(f"fixed:{m}", label=f"capped:{m}")) for m in names]
        elif r.partition("=")[0].partition("+draft")[0] in ("learned", "safe"):
            kind_, _, path = r.partition("=")
            kind_, draft = _draft_of(kind_)
            path = path or checkpoint
            if not path:
                from mtrouter_jax.routing.specs import RouterSpecError

                raise RouterSpecError(f"--routers {kind_} needs --checkpoint CKPT (or {kind_}=PATH)", "--checkpoint")
            draft = _resolved_draft(draft, str(path))
            base = ("mtrouter" if kind_ == "learned" else "mtrouter-safe") + (
                "" if not draft else "+draft" if draft is True else f"+draft:{draft}")
            name = base if "=" not in r else f"{base}[{Path(path).name}]"
            out.append((name, "learned", RouterSpec(kind_, checkpoint=str(path), lam=lam, label=name, draft=draft)))
        elif r == "privileged-bound":
            out.append((r, "oracle", RouterSpec(r, label=r)))
        elif r.startswith("fixed:"):
            out.append((r[6:], "single", RouterSpec(r, label=r[6:])))
        else:
            kind = "heuristic" if r == "tool-heuristic" else "baseline"
            out.append((r, kind, RouterSpec(r, tool_map=tool_map, label=r)))
    return out


def checkpoint_tag(path: str | Path) -> str:
    """8 hex digits naming what a checkpoint routes with — its parameters' digests and its reference
    policy, not the λ tables an evaluation writes into it — so that logged evaluation episodes are
    reused only for the very same router (a retrained or re-referenced checkpoint runs afresh)."""
    import hashlib
    import json

    from mtrouter_jax.estimator.checkpoint import read_meta

    meta = read_meta(path)
    what = {"arrays": (meta.get("integrity") or {}).get("arrays"), "reference": meta.get("reference"),
            "estimator": meta.get("estimator")}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _run_label(name: str, tag: str | None, lam: float | None) -> str:
    """The label in a learned router's episode ids: report name, checkpoint tag and λ."""
    return name + (f"@{tag}" if tag else "") + (f"-lam{lam:g}" if lam is not None else "")


def _learned_lams(spec: RouterSpec, name: str, caps, lam_grid, cal_plan, split_cal, runs, pool, run, by_id_of,
                  tag: str | None = None) -> dict:
    """Per budget, the λ of ``lam_grid`` for this router, run on the calibration episodes and
    chosen by ``routing.meta.select_lambda`` (the smallest λ unless another is significantly better
    there, paired)."""
    import dataclasses

    from mtrouter_jax.reporting.points import pair_key
    from mtrouter_jax.routing.meta import select_lambda

    jobs, groups = [], {}
    for lam in lam_grid:
        s = dataclasses.replace(spec, lam=float(lam), label=_run_label(name, tag, float(lam)))
        for b in caps:
            js = make_jobs(s, cal_plan, split_cal, runs, b)
            jobs += js
            groups[(lam, b)] = [j.episode_id for j in js]
    run(jobs)
    by_id = by_id_of()
    chosen = {}
    for b in caps:
        chosen[b] = select_lambda({float(lam): {pair_key(by_id[i]): by_id[i].score for i in groups[(lam, b)]
                                                if i in by_id and by_id[i].score is not None}
                                   for lam in lam_grid})
    return chosen


def _mean_cost(groups, by_id, name, b, empty: float = float("inf")) -> float:
    """Mean USD per episode of the row ``name`` at budget ``b``; ``empty`` where it logged none."""
    eps = [by_id[i] for i in groups.get((name, b), ()) if i in by_id]
    return sum(e.total_cost for e in eps) / len(eps) if eps else empty


def _budget_mixes(matched, learned, groups, jobs_at, run, by_id_of, by_id):
    """For each learned row that spends more than a matched cost: run it at the budgets halving from
    the budget down to the matched cap, then once more between the two that bracket the matched cost,
    and record the budget mix that spends it on average (``reporting.points.budget_mix``) as
    ``m["mix"][row]``. The comparison at equal cost without the cap's cut of long episodes."""
    from mtrouter_jax.reporting.points import budget_mix

    def costs_of(name, m):
        bs = {b for (n, b) in groups if n == name and b is not None and m["cap_usd"] <= b <= m["budget"]}
        return {b: _mean_cost(groups, by_id, name, b) for b in bs}

    todo = [(m, name, spec) for m in matched if m["cap_usd"] for name, spec in learned
            if _mean_cost(groups, by_id, name, m["budget"]) > m["cost_usd"]]
    ladder = lambda m: [round(m["budget"] / 2 ** k, 6) for k in range(1, 12)  # noqa: E731
                        if m["budget"] / 2 ** k > m["cap_usd"]]
    run([j for m, name, spec in todo for b in ladder(m) for j in jobs_at(name, spec, b)])
    by_id = by_id_of()
    mids = []
    for m, name, spec in todo:
        lo, hi, _ = budget_mix(costs_of(name, m), m["cost_usd"]) or (0, 0, 0)  # None: the cap was unplayable
        if lo and hi > lo * 1.2:
            mids.append((name, spec, round(math.sqrt(lo * hi), 6)))
    run([j for name, spec, b in mids for j in jobs_at(name, spec, b)])
    by_id = by_id_of()
    for m, name, spec in todo:
        costs = costs_of(name, m)
        if (mix := budget_mix(costs, m["cost_usd"])) is None:
            continue
        lo, hi, w = mix
        m.setdefault("mix", {})[name] = {"lo": lo, "hi": hi, "w_lo": w, "cost_lo": costs[lo], "cost_hi": costs[hi]}
    return by_id


def evaluate(out_dir: str | Path, pool: Pool, routers: str = "", *, checkpoint: str | None = None,
             budgets: Sequence[float] = (), per_task: int = 1, runs: int = 1, split: str = "test",
             tasks: Sequence[str] = DEFAULT_TASKS, backend: str = "scripted", workers: int | None = None,
             seed: int = 0, step_limit: int = 100, lam: float | None = None, tool_map: str | None = None,
             profiles: str | None = None, progress: bool = True, lam_grid: Sequence[float] = (),
             calibration_split: str = "dev", calibration_per_task: int = 1, match_cost: str | None = None) -> dict:
    """Run every router (``routers``; empty: ``default_eval_routers``) on the same episodes under every
    budget; returns the sweep ``results`` dict
    (``report.write_results`` writes it) and logs every episode to ``out_dir/episodes.jsonl``.

    With ``lam_grid``, the λ of each learned router is first calibrated per budget on
    ``calibration_split`` episodes (never the evaluation split) and written into its checkpoint's
    ``lam_tables["scienceworld"]`` — what ``mtrouter serve`` then uses for budgeted requests.

    ``match_cost`` (a router of the list, e.g. ``tool-heuristic``): afterwards every other budgeted
    row (learned, capped, bound) also runs at each budget's *matched cap*: that router's mean cost
    per episode there, rounded down to a micro-dollar. A cap is a hard per-episode limit, so a row
    run at it spends no more on average than the matched router: the comparison "at equal or lower
    cost", on the same episodes (``results["meta"]["cost_matched"]``). A learned row that spends
    more than the matched router also runs at budgets between the cap and the budget, and
    ``cost_matched[i]["mix"][row]`` is the budget mix that spends the matched cost on average.
    """
    import dataclasses

    from mtrouter_jax.reporting.points import point_from_episodes
    from mtrouter_jax.logs.io import iter_episodes

    from .routed import TOOLS

    if not routers.strip():
        routers = default_eval_routers(checkpoint)
    specs = eval_specs(routers, pool, checkpoint, lam, tool_map)
    if match_cost is not None:
        from mtrouter_jax.core.errors import UsageError

        budgeted = [n for n, kind, _ in specs if kind != "single"]
        if match_cost not in budgeted:
            raise UsageError(f"--match-cost {match_cost!r} is not a budgeted router of --routers ({', '.join(budgeted)})")
        if not budgets:
            raise UsageError("--match-cost needs --budgets: it matches the router's cost at each budget")
    for _, _, spec in specs:
        validate_spec(spec, pool, backend)
    require_java()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "episodes.jsonl"
    plan = plan_variations(tasks, split, per_task, seed)
    caps: list[float | None] = [float(b) for b in budgets] or [None]

    def run(jobs):
        list(run_jobs(jobs, pool, lambda j: log, backend=backend, workers=_workers(workers), scripted_seed=seed,
                      step_limit=step_limit, profiles=profiles, progress=progress))

    def by_id_of():
        return {e.episode_id: e for e in iter_episodes(log)}

    # the id of a learned router's episodes names the checkpoint and λ: a changed router never reuses episodes
    tags = {name: checkpoint_tag(spec.checkpoint) for name, _, spec in specs if spec.checkpoint}
    lam_tables: dict[str, dict] = {}
    if lam_grid and lam is None:
        cal_plan = plan_variations(tasks, calibration_split, calibration_per_task, seed + 1)
        for name, kind, spec in specs:
            if kind == "learned":
                lam_tables[name] = _learned_lams(spec, name, caps, list(lam_grid), cal_plan, calibration_split, 1,
                                                 pool, run, by_id_of, tags.get(name))
    groups: dict[tuple[str, float | None], list[str]] = {}

    def jobs_at(name, spec, b) -> list[Job]:
        s = spec
        if name in tags:
            lam_b = (lam_tables[name].get(b, lam_for_budget([{"budget": k, "lam": v} for k, v in
                                                             lam_tables[name].items()], b))
                     if name in lam_tables else spec.lam)
            s = dataclasses.replace(spec, lam=lam_b, label=_run_label(name, tags[name], lam_b))
        js = make_jobs(s, plan, split, runs, b)
        groups[(name, b)] = [j.episode_id for j in js]
        return js

    run([j for name, kind, spec in specs for b in ([None] if kind == "single" else caps)
         for j in jobs_at(name, spec, b)])
    by_id = by_id_of()
    matched = []
    if match_cost is not None:
        for b in caps:
            cost = _mean_cost(groups, by_id, match_cost, b, empty=0.0)  # 0: no cap (its first turn never fit)
            cap = math.floor(cost * 1e6) / 1e6  # down, so that a row held to it spends no more on average
            matched.append({"router": match_cost, "budget": b, "cost_usd": cost, "cap_usd": cap or None})
        run([j for m in matched if m["cap_usd"] and m["cap_usd"] not in caps
             for name, kind, spec in specs if kind != "single" and name != match_cost
             for j in jobs_at(name, spec, m["cap_usd"])])
        by_id = by_id_of()
        by_id = _budget_mixes(matched, [(n, s) for n, kind, s in specs if kind == "learned" and n != match_cost],
                              groups, jobs_at, run, by_id_of, by_id)
    results: dict = {"routers": {}, "meta": {
        "benchmark": "scienceworld", "backend": backend, "split": split, "n_episodes": len(plan) * runs,
        "seed": seed, "pool": list(pool.names), "tools": list(TOOLS), "budgets": [b for b in caps if b is not None],
        "currency": "USD", "checkpoint": checkpoint, "tasks": list(tasks), "per_task": per_task, "runs": runs,
        "step_limit": step_limit, "episodes_log": str(log), "cost_matched": matched,
        "lam_calibration": {n: {"grid": list(lam_grid), "split": calibration_split,
                                "per_task": calibration_per_task,
                                "chosen": [{"budget": b, "lam": v} for b, v in t.items()]}
                            for n, t in lam_tables.items()}}}
    unplayable = results["meta"]["unplayable"] = []
    for name, kind, spec in specs:
        pts = []
        for b in sorted((b for n, b in groups if n == name), key=lambda x: -1.0 if x is None else x):
            eps = [by_id[i] for i in groups[(name, b)] if i in by_id]
            if not eps:  # (an episode with no turn is not logged: e.g. capped:gpt-5 on two cents)
                unplayable.append({"router": name, "budget": b, "why": "no episode took a turn: the router's "
                                   "first turn never fits this budget"})
                continue
            lam_used = eps[0].meta.get("lam") if kind == "learned" else None
            pts.append(point_from_episodes(eps, b, lam_used, pool, TOOLS))
        if pts:
            results["routers"][name] = {"kind": kind, "points": pts}
    for name, kind, spec in specs:
        if name in lam_tables and spec.checkpoint:
            from mtrouter_jax.estimator.checkpoint import write_lam_table  # lazy: pulls in orbax

            write_lam_table(spec.checkpoint, "scienceworld", lam_tables[name])
    return results


__all__ = ["collect", "evaluate", "eval_specs", "validate_spec", "checkpoint_tag", "default_eval_routers"]
