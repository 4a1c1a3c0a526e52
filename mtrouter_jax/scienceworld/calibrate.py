"""Single-model scripted runs on real ScienceWorld, in worker processes (one JVM each).

Used by ``scripts/calibrate_scienceworld.py`` to check that the scripted profiles rank like the
paper's ScienceWorld table; also a throughput benchmark of the engine + scripted backend.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mtrouter_jax.core.stats import ci95, paired_mean_ci

from .engine import DEFAULT_TASKS, ScienceWorldEngine, check_task, variations
from .scripted import ScriptedBackend, load_profiles
from .session import Session

# The paper's ScienceWorld test scores (-100..100) of the single models, for the table.
PAPER_SCORES = {"gpt-5": 48.4, "gpt-oss-120b": 26.6, "deepseek-v3.2": 13.1, "kimi-k2": 5.2,
                "gemini-2.5-flash-lite": 4.2, "minimax-m2": -0.5}


@dataclass(frozen=True)
class EpisodeResult:
    """One finished single-model episode."""

    model: str
    episode: int
    task: str
    variation: int
    score: int
    steps: int
    terminated: bool  # completed or failed before the step limit
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    no_action: int  # replies without a command
    invalid: int  # commands the parser rejected
    seconds: float


def sample_episodes(n: int, seed: int, tasks: Sequence[str] = DEFAULT_TASKS, split: str = "train") -> list[tuple[int, str, int]]:
    """``n`` (episode id, task, variation): task uniform over ``tasks``, variation uniform in ``split``."""
    for t in tasks:
        check_task(t)
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        task = tasks[int(rng.integers(len(tasks)))]
        vs = variations(task, split)
        out.append((i, task, int(vs[int(rng.integers(len(vs)))])))
    return out


def run_episode(engine: ScienceWorldEngine, backend, model: str, task: str, variation: int,
                episode_id: int, max_steps: int = 100) -> EpisodeResult:
    """Play one episode with ``model`` serving every turn, up to ``max_steps`` replies."""
    t0 = time.perf_counter()
    ep = Session(engine, task, variation, episode_id=episode_id)
    tok = np.zeros(3, np.int64)
    no_action = invalid = 0
    while not ep.terminated and ep.steps < max_steps:
        text, usage = backend.complete(model, ep.messages(), ep)
        tok += (usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"], usage["completion_tokens"])
        out = ep.apply_reply(text)
        no_action += out.action is None
        invalid += out.action is not None and not out.parsed
    return EpisodeResult(model, episode_id, task, variation, ep.score, ep.steps, ep.terminated, *map(int, tok),
                         no_action, invalid, time.perf_counter() - t0)


_WORKER: dict = {}


def _init_worker(profiles_path: str | None, seed: int, gold_cache) -> None:
    _WORKER["engine"] = ScienceWorldEngine(gold_cache=gold_cache)
    _WORKER["backend"] = ScriptedBackend(load_profiles(profiles_path), seed)


def _run_job(job: tuple[tuple[str, ...], int, str, int, int]) -> list[EpisodeResult]:
    models, i, task, variation, max_steps = job
    return [run_episode(_WORKER["engine"], _WORKER["backend"], m, task, variation, i, max_steps) for m in models]


def run_single_models(models: Iterable[str], episodes: int, *, seed: int = 0, tasks: Sequence[str] = DEFAULT_TASKS,
                      split: str = "train", max_steps: int = 100, workers: int = 2,
                      profiles_path: str | Path | None = None, gold_cache=True) -> list[EpisodeResult]:
    """Every model plays the same ``episodes`` sampled episodes (paired comparison), in ``workers`` processes."""
    models = list(models)
    load_profiles(profiles_path, models)  # fail fast, in the parent, on a bad file or missing model
    # one job = one episode for every model: its gold path is generated (or read) once, in one process
    jobs = [(tuple(models), i, t, v, max_steps) for i, t, v in sample_episodes(episodes, seed, tasks, split)]
    args = (None if profiles_path is None else str(profiles_path), seed, gold_cache)
    if workers <= 1:
        _init_worker(*args)
        try:
            return [r for j in jobs for r in _run_job(j)]
        finally:
            _WORKER.pop("engine").close()
    # spawn: the parent may hold JAX threads or a JVM, which fork would copy in a broken state
    with mp.get_context("spawn").Pool(workers, _init_worker, args) as pool:
        return [r for rs in pool.imap(_run_job, jobs) for r in rs]


def summarise(results: Sequence[EpisodeResult], pool=None) -> list[dict]:
    """Per model: mean score, its 95 % CI half-width, steps, tokens and $ per episode (pool prices)."""
    from mtrouter_jax.core.pricing import call_cost  # the one billing formula of the project

    rows = []
    for m in dict.fromkeys(r.model for r in results):
        rs = [r for r in results if r.model == m]
        s = np.array([r.score for r in rs], float)
        row = {"model": m, "episodes": len(rs), "score": float(s.mean()),
               "ci95": ci95(s, ddof=1, single=float("nan")),
               "paper": PAPER_SCORES.get(m), "success": float(np.mean(s >= 100)), "failed": float(np.mean(s < 0)),
               "steps": float(np.mean([r.steps for r in rs])),
               **{k: float(np.mean([getattr(r, k) for r in rs]))
                  for k in ("prompt_tokens", "cached_tokens", "completion_tokens", "no_action", "invalid")}}
        if pool is not None and m in pool.names:
            p = pool[m]
            row["cost"] = float(np.mean([call_cost(r.prompt_tokens, r.cached_tokens, r.completion_tokens,
                                                   p.price_input, p.price_cached_input, p.price_output)
                                         for r in rs])) / 1e6
        rows.append(row)
    return rows


def paired_gaps(results: Sequence[EpisodeResult], order: Sequence[str]) -> list[tuple[str, str, float, float]]:
    """(better, worse, mean score difference, 95 % CI half-width) for neighbours in ``order``, paired by episode."""
    eps = sorted({r.episode for r in results})
    scores: dict = {}
    for r in results:
        scores.setdefault(r.model, {})[r.episode] = r.score
    by = {m: {e: scores[m][e] for e in eps if e in scores.get(m, {})} for m in order}
    return [(a, b, *paired_mean_ci(by[a], by[b], ddof=1, single=float("nan"))[:2]) for a, b in zip(order, order[1:])]


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows of :func:`summarise` as a markdown table, best score first."""
    head = ("| model | score ± 95% CI | paper | success | failed (-100) | steps | prompt tok | cached tok "
            "| completion tok | $/episode |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in sorted(rows, key=lambda r: -r["score"]):
        paper = "" if r["paper"] is None else f"{r['paper']:.1f}"
        cost = f"{r['cost']:.4f}" if "cost" in r else ""
        lines.append(f"| {r['model']} | {r['score']:.1f} ± {r['ci95']:.1f} | {paper} | {r['success']:.0%} "
                     f"| {r['failed']:.0%} | {r['steps']:.1f} | {r['prompt_tokens']:,.0f} | {r['cached_tokens']:,.0f} "
                     f"| {r['completion_tokens']:,.0f} | {cost} |")
    return "\n".join(lines)


__all__ = ["EpisodeResult", "PAPER_SCORES", "sample_episodes", "run_episode", "run_single_models", "summarise",
           "markdown_table", "paired_gaps"]
