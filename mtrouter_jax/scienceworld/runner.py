"""Run many routed ScienceWorld episodes in worker processes (one JVM each), appending as they finish.

``run_jobs`` is the engine of ``mtrouter collect scienceworld`` and ``mtrouter eval scienceworld``:
jobs are (router spec, task, variation, run, budget); each worker keeps one ScienceWorld engine,
one chat backend and one ``Router`` per spec; every finished episode is appended atomically to its
log as soon as it arrives (a crash or Ctrl-C loses nothing finished), and jobs whose episode id is
already in the log are skipped (resumable). A rich progress bar shows episodes/s and dollars spent.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from mtrouter_jax.logs.io import Episode, append_episodes, episode_from_dict, id_safe, iter_episodes
from mtrouter_jax.core.pool import Pool, pool_from_dict

from .branch import real_cost
from .engine import DEFAULT_TASKS, check_task, variations


@dataclass(frozen=True)
class RouterSpec:
    """How a worker builds its router: the ``mtrouter serve`` options, plus the episode budget."""

    router: str = "tool-heuristic"
    explore: str | None = None
    checkpoint: str | None = None
    tool_map: str | None = None
    lam: float | None = None
    seed: int = 0
    label: str = ""  # names the episodes of this router in logs and reports
    draft: bool | str = False  # draft-and-escalate turns (routing/draft.py; a str names the escalation test)

    @property
    def name(self) -> str:
        return self.label or (self.router + (f"+{self.explore}" if self.explore else ""))


@dataclass(frozen=True)
class Job:
    """One episode to run."""

    spec: RouterSpec
    task: str
    variation: int
    run: int = 0
    budget: float | None = None
    split: str = "train"
    base_id: str = field(default="", compare=False)
    branch: int = 0  # executed counterfactuals per episode (scienceworld.branch)

    @property
    def episode_id(self) -> str:
        """Logged id: the common-random-numbers id + the router (and budget)."""
        b = "" if self.budget is None else f"-b{self.budget:g}"
        return f"{self.base_id}-{id_safe(self.spec.name)}{b}"


def plan_variations(tasks: Sequence[str], split: str, per_task: int, seed: int = 0) -> list[tuple[str, int]]:
    """``per_task`` variations of each task drawn (without replacement, seeded) from ``split``."""
    rng = np.random.default_rng(seed)
    out = []
    for t in tasks:
        t = check_task(t)
        vs = list(variations(t, split))
        pick = rng.permutation(len(vs))[:per_task]
        out += [(t, int(vs[i])) for i in sorted(pick)]
    return out


def make_jobs(spec: RouterSpec, plan: Iterable[tuple[str, int]], split: str, runs: int = 1,
              budget: float | None = None, branch: int = 0) -> list[Job]:
    """Jobs of one router over a plan; the base id (scripted draws) ignores the router. ``branch``:
    executed counterfactuals per episode, run right after it in the same worker."""
    return [Job(spec, t, v, r, budget, split, base_id=f"sw-{split}-{t}-v{v}-r{r}", branch=branch)
            for t, v in plan for r in range(runs)]


# ------------------------------------------------------------------------------------------- workers

_W: dict = {}


def _init_worker(pool_dict: dict, backend: str, scripted_seed: int, step_limit: int, log_text: bool,
                 profiles: str | None) -> None:
    from .engine import ScienceWorldEngine

    pool = pool_from_dict(pool_dict, "<runner pool>")
    _W.update(pool=pool, engine=ScienceWorldEngine(), routers={}, step_limit=step_limit, log_text=log_text)
    if backend == "scripted":
        from .scripted import ScriptedBackend

        _W["backend"] = ScriptedBackend.from_file(profiles, seed=scripted_seed, models=pool.names)
    else:
        from mtrouter_jax.live.backends import Backends

        from .routed import LiveChatBackend

        _W["backend"] = LiveChatBackend(Backends(pool))


def _router_for(spec: RouterSpec):
    r = _W["routers"].get(spec)
    if r is None:
        from mtrouter_jax.live.router import router_from_options

        from .routed import TOOLS

        kw = dict(pool=_W["pool"], router=spec.router, explore=spec.explore, tool_map=spec.tool_map, lam=spec.lam,
                  seed=spec.seed, log_text=_W["log_text"], draft=spec.draft)
        if spec.router == "privileged-bound":  # it decides itself (scienceworld/bound.py); the router bills
            kw["router"] = "cheapest"
        if spec.checkpoint:
            r = router_from_options(checkpoint=spec.checkpoint, **kw)
        else:
            from mtrouter_jax.live.router import Router
            from mtrouter_jax.routing.specs import ToolModelMap

            r = Router(None, _W["pool"], policy=kw["router"], explore=spec.explore, tools=TOOLS,
                       task_types=DEFAULT_TASKS, seed=spec.seed, log_text=_W["log_text"],
                       tool_models=ToolModelMap.from_file(spec.tool_map) if spec.tool_map else None)
        _W["routers"][spec] = r
    return r


def _run_job(job: Job) -> dict:
    from .routed import RoutedEpisode

    router = _router_for(job.spec)
    t0 = time.perf_counter()

    def make(log_id: str, seed: int | None = None) -> RoutedEpisode:
        return RoutedEpisode(_W["engine"], _W["backend"], router, job.task, job.variation, episode_id=job.base_id,
                             log_id=log_id, budget=job.budget, step_limit=_W["step_limit"],
                             explore=job.spec.explore is not None, split=job.split, seed=seed)

    def play(ep: RoutedEpisode) -> None:
        if job.spec.router == "privileged-bound":
            from .bound import run_bound

            if not hasattr(_W["backend"], "profiles"):
                raise RuntimeError("privileged-bound needs the scripted backend (it reads the agents' profiles)")
            run_bound(ep, _W["backend"].profiles)
        else:
            ep.run()

    ep = make(job.episode_id)
    play(ep)
    logged = ep.finish()
    out = [] if logged is None else [logged.to_dict()]
    if logged is not None and job.branch > 0:
        from .branch import branch_rng, branch_turns, run_branch

        rng = branch_rng(router.seed, logged.episode_id)
        for t in branch_turns(len(logged.turns), job.branch, rng):
            br = run_branch(make, logged, t, rng, router.pool.names, play)
            if br is not None:
                out.append(br.to_dict())
    return {"episodes": out, "seconds": time.perf_counter() - t0, "id": job.episode_id}


def existing_ids(path: str | Path) -> set[str]:
    """Episode ids already in a log (for resuming); empty when the file does not exist."""
    p = Path(path)
    if not p.exists():
        return set()
    return {e.episode_id for e in iter_episodes(p)}


def run_jobs(jobs: Sequence[Job], pool: Pool, out_for, *, backend: str = "scripted", workers: int = 1,
             scripted_seed: int = 0, step_limit: int = 100, log_text: bool = True, profiles: str | None = None,
             progress: bool = True) -> Iterator[Episode]:
    """Run ``jobs`` (skipping ids already in their logs) and yield each finished episode after it
    was appended to ``out_for(job)`` (a path). ``workers`` processes, one JVM each."""
    jobs = list(jobs)
    done_ids: dict[Path, set[str]] = {}
    todo = []
    for j in jobs:
        path = Path(out_for(j))
        if path not in done_ids:
            done_ids[path] = existing_ids(path)
        if j.episode_id not in done_ids[path]:
            todo.append(j)
    by_id = {j.episode_id: j for j in todo}
    init = (pool.to_dict(), backend, scripted_seed, step_limit, log_text, profiles)
    bar = _Bar(progress, len(todo), len(jobs) - len(todo))
    try:
        if workers <= 1:
            _init_worker(*init)
            results = map(_run_job, todo)
            yield from _consume(results, by_id, out_for, bar)
        else:
            ctx = mp.get_context("spawn")  # JAX and the JVM bridge are not fork-safe
            with ctx.Pool(workers, initializer=_init_worker, initargs=init) as procs:
                yield from _consume(procs.imap_unordered(_run_job, todo), by_id, out_for, bar)
    finally:
        bar.close()
        if workers <= 1 and "engine" in _W:
            _W.pop("engine").close()
            _W.clear()


def _consume(results, by_id, out_for, bar) -> Iterator[Episode]:
    for res in results:
        eps = [episode_from_dict(d) for d in res["episodes"]]
        if eps:  # an episode and its branches land together (a resumed run skips the whole job)
            append_episodes(out_for(by_id[res["id"]]), eps)
        bar.advance(sum(real_cost(e) for e in eps))
        yield from eps


class _Bar:
    """Episodes done, episodes/s and dollars spent (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, skipped: int):
        self.p, self.spent, self.t0 = None, 0.0, time.perf_counter()
        if enabled and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            label = "episodes" + (f" ({skipped} already logged)" if skipped else "")
            self.p = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[rate]:.2f} ep/s  ${task.fields[spent]:.4f}"),
                              TimeElapsedColumn())
            self.task = self.p.add_task("run", total=total, rate=0.0, spent=0.0)
            self.p.start()
        self.n = 0

    def advance(self, cost: float) -> None:
        self.n += 1
        self.spent += cost
        if self.p:
            rate = self.n / max(time.perf_counter() - self.t0, 1e-9)
            self.p.update(self.task, advance=1, rate=rate, spent=self.spent)

    def close(self) -> None:
        if self.p:
            self.p.stop()


__all__ = ["RouterSpec", "Job", "plan_variations", "make_jobs", "run_jobs", "existing_ids"]
