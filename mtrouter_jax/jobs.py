"""End-to-end jobs composed from the functional core: simulate -> train -> sweep -> report.

The CLI and scripts are thin argument parsers over these functions.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from mtrouter_jax.estimator.checkpoint import LoadedEstimator, load_checkpoint, save_checkpoint
from mtrouter_jax.sim.collect import (sample_budgets, simulate_batches, sticky_behaviour, to_episodes,
                                  uniform_behaviour)
from mtrouter_jax.estimator.dataset import TargetConfig, build_training_data
from mtrouter_jax.sim.sweep import LAMBDA_GRID, calibrate_lambda, evaluate_budgets, summarise_point, with_lambdas
from mtrouter_jax.logs.io import Episode, append_episodes
from mtrouter_jax.sim.policies import (SimPolicy, escalation_policy, fixed_policy, learned_policy,
                                 oracle_policy, random_policy, tool_heuristic_policy, cheapest_policy)
from mtrouter_jax.core.errors import UsageError
from mtrouter_jax.core.pool import Pool, default_pool
from mtrouter_jax.core.jsonable import to_jsonable
from mtrouter_jax.sim.params import WorldConfig, make_sim_params, sim_feature_layout
from mtrouter_jax.estimator.bootstrap import fit_bootstrapped
from mtrouter_jax.estimator.train import TrainConfig, TrainResult, fit
from mtrouter_jax.routing.meta import serves_safe


def _bar(enabled: bool, total: int, label: str):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    p = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    p.start()
    return p, p.add_task(label, total=total)


def reference_cost(pool: Pool, world: WorldConfig, seed: int = 0, n: int = 512) -> float:
    """Mean episode cost of the most expensive single model, uncapped (the budget scale)."""
    sim = make_sim_params(pool, world)
    costs = []
    for name in pool.names:
        res = evaluate_budgets(jax.random.PRNGKey(seed + 7), fixed_policy(pool, name), sim, [np.inf], n)
        costs.append(float(res["cost"][0]))
    return max(costs)


def logging_budget_range(ref: float) -> tuple[float, float]:
    """Budgets for logged episodes: 2%..150% of the reference cost (the priciest model's mean)."""
    return 0.02 * ref, 1.5 * ref


def simulate_dataset(seed: int, n_episodes: int, pool: Pool | None = None, world: WorldConfig | None = None,
                     behaviour: SimPolicy | None = None, budget_range: tuple[float, float] | None = "auto",
                     out: str | Path | None = None, progress: bool = True, with_features: bool = True,
                     id_prefix: str = "sim", batch_size: int = 2048, start_id: int = 0) -> list[Episode]:
    """Generate ``n_episodes`` logged episodes with a behaviour policy (default: uniform per turn).

    Budgets are drawn log-uniformly in ``budget_range`` USD (``"auto"``: ``logging_budget_range``
    of the reference cost; ``None``: no budgets). Appends to ``out`` if given.
    """
    pool = pool or default_pool()
    world = world or WorldConfig()
    sim = make_sim_params(pool, world)
    behaviour = behaviour or uniform_behaviour()
    if budget_range == "auto":
        budget_range = logging_budget_range(reference_cost(pool, world, seed))
    key = jax.random.PRNGKey(seed)
    k_budget, k_sim = jax.random.split(key)
    budgets = sample_budgets(k_budget, n_episodes, *(budget_range or (None, None)))
    episodes: list[Episode] = []
    bar = _bar(progress, n_episodes, "simulate")
    done = 0
    for host, n in simulate_batches(k_sim, behaviour, sim, budgets, batch_size=min(batch_size, n_episodes)):
        batch = to_episodes(host, n, pool, world, start_id=start_id + done, with_features=with_features,
                            id_prefix=id_prefix)
        done += n
        episodes += batch
        if out is not None:
            append_episodes(out, batch)
        if bar:
            bar[0].update(bar[1], completed=done)
    if bar:
        bar[0].stop()
    return episodes


class UnknownRouterError(UsageError):
    """A sweep asked for rows (``include``) it does not have."""


class TrainingQualityWarning(UserWarning):
    """The fit is no better than predicting each model's mean target: the logs teach it little."""


def check_fit(result: TrainResult, data) -> None:
    """Refuse a diverged fit before anything is written; warn when it does not beat the baseline."""
    from mtrouter_jax.estimator.checkpoint import CheckpointError

    leaves = jax.tree_util.tree_leaves(result.members if result.members is not None else _params_of(result.model))
    floats = [x for x in leaves if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
              and jax.dtypes.issubdtype(x.dtype, np.floating)]  # skip RNG key leaves of the members
    finite = np.isfinite(result.val_loss) and all(np.isfinite(np.asarray(x)).all() for x in floats)
    if not finite:
        span = (float(np.min(data.score_target)), float(np.max(data.score_target)))
        raise CheckpointError(f"training diverged (validation loss {result.val_loss}); no checkpoint was written. "
                              f"Score targets span {span[0]:.3g}..{span[1]:.3g}: are the logged scores on the "
                              "scale their score_range says (or 0..1 without one)?")
    base = result.baseline_val_loss
    if np.isfinite(base) and result.val_loss >= base:
        import warnings

        warnings.warn(f"the fit's validation loss {result.val_loss:.4g} is no better than predicting each model's "
                      f"mean target ({base:.4g}): the logs barely tell the models apart; the router will lean on "
                      "its reference policy (collect more, or more varied, episodes)", TrainingQualityWarning,
                      stacklevel=3)


def _params_of(model):
    from flax import nnx

    return nnx.state(model, nnx.Param)


def train_checkpoint(episodes: Sequence[Episode], pool: Pool, out: str | Path,
                     train_cfg: TrainConfig = TrainConfig(), target_cfg: TargetConfig = TargetConfig(),
                     text_encoder=None, progress: bool = True, ensemble: int = 1,
                     aggregate: str = "mean", target_ensemble: int | None = None, snapshot: int = 1
                     ) -> tuple[LoadedEstimator, TrainResult]:
    """Build targets, fit the estimator (an ensemble of ``ensemble`` members trained in one vmapped
    step when > 1; ``target_ensemble`` members in the bootstrap fits before the last, default the
    same; ``snapshot`` > 1: the members of the last ``snapshot`` fits pooled), fit the reference
    policy the logs vouch for (``reference.fit_reference``, for the safe router), save an orbax
    checkpoint with full metadata, reload it."""
    from mtrouter_jax.routing.draft import draft_pricing, fit_type_outcomes
    from mtrouter_jax.routing.reference import fit_reference

    data = build_training_data(episodes, pool, target_cfg, text_encoder=text_encoder)
    if target_cfg.bootstrap_iterations:
        result, fits = fit_bootstrapped(data, pool, train_cfg, n_steps=target_cfg.bootstrap_steps,
                                        iterations=target_cfg.bootstrap_iterations, progress=progress,
                                        ensemble=ensemble, aggregate=aggregate, target_ensemble=target_ensemble,
                                        snapshot=snapshot)
    else:
        result, fits = fit(data, pool, train_cfg, ensemble, progress=progress), []
    check_fit(result, data)
    # per (action type, model) outcomes of single turns, for draft routing (routing/draft.py)
    type_outcomes = fit_type_outcomes(episodes, data.layout.tools, data.layout.models, target_cfg.default_score_range)
    reference = fit_reference(episodes, data.layout, pool, target_cfg.default_score_range,
                              drafting=draft_pricing(episodes, type_outcomes, pool,
                                                     data.output_tokens_hi, target_cfg.default_score_range))
    meta = {
        "pool": pool.to_dict(),
        "layout": data.layout.to_dict(),
        "layout_blocks": [list(b) for b in data.layout.blocks],
        "estimator": result.model.cfg.to_dict(),
        "text_dim": data.text_dim,
        "text_encoder": text_encoder.config() if text_encoder is not None and hasattr(text_encoder, "config") else None,
        "cost_scale": data.cost_scale,
        "output_tokens_hi": [float(x) for x in data.output_tokens_hi],
        "output_tokens_mean": [float(x) for x in data.output_tokens_mean],
        "cost_target": target_cfg.cost_target,
        "attributes": {"names": result.attr_names, "mean": [float(x) for x in result.attr_mean],
                       "std": [float(x) for x in result.attr_std]},
        "targets": {"default_score_range": list(target_cfg.default_score_range),
                    "expected_steps": data.expected_steps, "success_threshold": target_cfg.success_threshold,
                    "aec": dataclasses.asdict(target_cfg.aec), "propensity_weighting": target_cfg.propensity_weighting,
                    "bootstrap_steps": target_cfg.bootstrap_steps,
                    "bootstrap_iterations": target_cfg.bootstrap_iterations, "fits": fits,
                    "dense_progress": target_cfg.dense_progress, "immediate": target_cfg.immediate},
        "training": {**dataclasses.asdict(train_cfg), "best_epoch": result.best_epoch,
                     "val_loss": result.val_loss, "baseline_val_loss": result.baseline_val_loss,
                     "history": result.history, "turns_per_second": result.turns_per_second},
        "data": {"fingerprint": data.fingerprint, "n_episodes": data.n_episodes, "n_turns": data.n,
                 "sources": sorted({e.source or "?" for e in episodes})},
        "reference": reference.to_meta(),
        "type_outcomes": type_outcomes.to_meta(),
        "bootstrap_aggregate": aggregate,
    }
    if getattr(result, "members", None) is not None:
        meta["training"]["member_val_loss"] = result.member_val_loss
    save_checkpoint(out, result.model, to_jsonable(meta), members=getattr(result, "members", None))
    return load_checkpoint(out), result


def default_budgets(pool: Pool, world: WorldConfig, n: int = 8, seed: int = 0, ref: float | None = None
                    ) -> np.ndarray:
    """Log-spaced per-episode budgets from 5% to 120% of the priciest single model's mean cost
    (``ref``, computed with ``reference_cost`` when not given)."""
    ref = reference_cost(pool, world, seed) if ref is None else ref
    return np.geomspace(0.05 * ref, 1.2 * ref, n).astype(np.float32)


def sweep_jobs(estimator: LoadedEstimator | None, pool: Pool, world: WorldConfig
               ) -> list[tuple[str, str, SimPolicy, bool]]:
    """The rows of a sweep, in order: ``(name, kind, policy, λ calibrated)``."""
    layout = sim_feature_layout(pool, world)
    jobs: list[tuple[str, str, SimPolicy, bool]] = []
    if estimator is not None:
        jobs.append(("mtrouter", "learned", learned_policy(estimator, layout), True))
        if serves_safe(estimator):  # the row `mtrouter serve` routes an ensemble checkpoint with
            jobs.append(("mtrouter-safe", "learned", learned_policy(estimator, layout, safe=True), True))
    cost_scale = estimator.cost_scale if estimator is not None else 0.25
    jobs.append(("oracle", "oracle", oracle_policy(0.0, cost_scale), True))
    jobs.append(("tool-heuristic", "heuristic", tool_heuristic_policy(pool, world.tools), False))
    jobs.append(("error-escalation", "baseline", escalation_policy(pool), False))
    jobs.append(("random", "baseline", random_policy(), False))
    jobs.append(("cheapest", "baseline", cheapest_policy(), False))
    singles = [(n, "single", fixed_policy(pool, n), False) for n in pool.names]
    return jobs + singles


def sweep(estimator: LoadedEstimator | None, pool: Pool, world: WorldConfig, budgets, n_episodes: int = 256,
          seed: int = 0, lambda_grid=None, progress: bool = True, include: Sequence[str] | None = None) -> dict:
    """Every router over every budget -> the results dict consumed by ``report``.

    Learned router and oracle get a per-budget lambda calibrated on separate episodes; single
    models run uncapped (one point each); the other baselines run under each hard budget.
    ``include``: only these rows (names from ``sweep_jobs``; AIQ's cost range then comes from them).
    """
    sim = make_sim_params(pool, world)
    budgets = np.asarray(budgets, np.float32)
    k_cal, k_eval = jax.random.split(jax.random.PRNGKey(seed))
    routers: dict[str, dict] = {}
    every = sweep_jobs(estimator, pool, world)
    names = [j[0] for j in every]
    unknown = sorted(set(include or ()) - set(names))
    if unknown:
        raise UnknownRouterError(f"no router named {', '.join(unknown)} in this sweep; its routers: {', '.join(names)}")
    # the row `mtrouter serve` routes this checkpoint with, whether or not ``include`` keeps it
    serving = None if estimator is None else "mtrouter-safe" if serves_safe(estimator) else "mtrouter"
    all_jobs = [j for j in every if include is None or j[0] in include]
    bar = _bar(progress, len(all_jobs), "sweep")
    t0 = time.perf_counter()
    for i, (name, kind, pol, tune) in enumerate(all_jobs):
        quick = kind != "learned"  # no estimator in the rollout: compile time dominates (sim.sweep)
        if kind == "single":
            res = evaluate_budgets(k_eval, pol, sim, [np.inf], n_episodes, quick_compile=quick)
            points = [summarise_point(res, 0, None, None, pool.names, world.tools)]
        elif tune:
            lams = calibrate_lambda(k_cal, pol, sim, budgets, max(64, n_episodes // 2),
                                    grid=lambda_grid or LAMBDA_GRID, quick_compile=quick)
            res = evaluate_budgets(k_eval, pol, sim, budgets, n_episodes, with_lambdas(pol, lams), quick)
            points = [summarise_point(res, j, float(b), float(l), pool.names, world.tools)
                      for j, (b, l) in enumerate(zip(budgets, lams))]
        else:
            res = evaluate_budgets(k_eval, pol, sim, budgets, n_episodes, quick_compile=quick)
            points = [summarise_point(res, j, float(b), None, pool.names, world.tools) for j, b in enumerate(budgets)]
        routers[name] = {"kind": kind, "points": points}
        if bar:
            bar[0].update(bar[1], completed=i + 1)
    if bar:
        bar[0].stop()
    return {
        "meta": {"n_episodes": int(n_episodes), "seed": int(seed), "pool": list(pool.names),
                 "tools": list(world.tools), "budgets": [float(b) for b in budgets], "currency": "USD",
                 "seconds": time.perf_counter() - t0, "serving_router": serving,
                 "checkpoint": str(estimator.path) if estimator is not None else None},
        "routers": routers,
    }


def sim_lam_table(results: dict) -> dict:
    """The budget -> λ table a sweep calibrated for the router ``mtrouter serve`` uses by default
    with this checkpoint: the safe router's row for an ensemble, else the learned router's
    (``meta.serving_router`` of a ``sweep``; from the rows present where a results dict lacks it).
    No table ({}) where the sweep left that row out (``include``), rather than another router's."""
    row = results.get("meta", {}).get("serving_router") or (
        "mtrouter-safe" if "mtrouter-safe" in results["routers"] else "mtrouter")
    if row not in results["routers"]:
        return {}
    return {p["budget"]: p["lam"] for p in results["routers"][row]["points"] if p.get("lam") is not None}


def beta_mixed_round(estimator: LoadedEstimator, pool: Pool, world: WorldConfig, seed: int, n_episodes: int,
                     beta: float = 0.5, lams: Sequence[float] = (0.0, 0.03, 0.1, 0.3), rho: float = 0.0,
                     per_episode: bool = True, progress: bool = True, out=None,
                     budget_range: tuple[float, float] | None | str = "auto") -> list[Episode]:
    """The paper's second data round: the current estimator's greedy choice with probability beta,
    else the roulette (sticky with ``rho``; 0 = the paper's uniform).

    ``per_episode=True`` flips the coin once per episode (a beta share of whole episodes routed
    greedily, spread over ``lams``; the rest by the roulette) so logged futures stay coherent —
    per-turn mixing makes every logged trajectory switch models constantly. ``False`` mixes per
    turn as in the paper, with the mixture's propensities.
    """
    layout = sim_feature_layout(pool, world)
    if budget_range == "auto":  # once for all the simulate calls below
        budget_range = logging_budget_range(reference_cost(pool, world, seed))
    if not per_episode:
        spec = f"beta:{beta:g}" if rho == 0 else f"sticky:{rho:g}:{1.0 - beta:g}"
        behaviour = learned_policy(estimator, layout, lam=lams[0], explore=spec)
        return simulate_dataset(seed, n_episodes, pool, world, behaviour=behaviour, out=out, progress=progress,
                                id_prefix=f"sim-beta{beta:g}", budget_range=budget_range)
    n_greedy = int(round(beta * n_episodes))
    episodes: list[Episode] = []
    per_lam = [n_greedy // len(lams) + (i < n_greedy % len(lams)) for i in range(len(lams))]
    for i, (lam, n) in enumerate(zip(lams, per_lam)):
        if n:
            episodes += simulate_dataset(seed * 1000 + i, n, pool, world, out=out, progress=progress,
                                         behaviour=learned_policy(estimator, layout, lam=lam),
                                         id_prefix=f"sim-greedy-lam{lam:g}-s{seed}", budget_range=budget_range)
    roulette = sticky_behaviour(rho) if rho > 0 else None
    episodes += simulate_dataset(seed * 1000 + 999, n_episodes - n_greedy, pool, world, behaviour=roulette,
                                 out=out, progress=progress, id_prefix=f"sim-roulette-s{seed}",
                                 budget_range=budget_range)
    return episodes


def run_main_job(out_dir: str | Path, n_episodes: int = 8192, rounds: int = 2, sweep_episodes: int = 256,
                 n_budgets: int = 8, seed: int = 0, train_cfg: TrainConfig = TrainConfig(),
                 pool: Pool | None = None, world: WorldConfig | None = None, beta: float = 0.5,
                 rho: float = 0.9, target_cfg: TargetConfig = TargetConfig(),
                 progress: bool = True, ensemble: int = 1, target_ensemble: int | None = None,
                 snapshot: int = 1) -> tuple[dict, dict]:
    """simulate (sticky roulette, ``rho``; 0 = the paper's uniform) -> train (``ensemble`` members
    in the last fit, ``target_ensemble`` in the bootstrap fits before it, the last ``snapshot`` fits' members
    pooled into the checkpoint)
    -> [beta-mixed round -> retrain on all] x (rounds-1) -> sweep -> report.

    Writes ``data_round{k}.jsonl``, ``ckpt_round{k}/``, and the sweep report into ``out_dir``.
    Returns ``(results, written paths)``; ``results["meta"]["rounds"]`` has per-round numbers.
    """
    import shutil

    from mtrouter_jax.reporting.tables import write_results

    pool = pool or default_pool()
    world = world or WorldConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ref = reference_cost(pool, world, seed)  # once: it sets both the sweep's and the logs' budgets
    budgets = default_budgets(pool, world, n_budgets, seed, ref=ref)
    log_budgets = logging_budget_range(ref)
    episodes: list[Episode] = []
    round_info = []
    est = None
    phases = dict.fromkeys(("simulate", "train", "sweep"), 0.0)  # seconds, for the job's last line
    t = time.perf_counter()
    for r in range(1, max(rounds, 1) + 1):
        data_path = out / f"data_round{r}.jsonl"
        data_path.unlink(missing_ok=True)
        if r == 1:
            new = simulate_dataset(seed, n_episodes, pool, world, out=data_path, progress=progress,
                                   behaviour=sticky_behaviour(rho) if rho > 0 else None,
                                   budget_range=log_budgets)
        else:
            new = beta_mixed_round(est, pool, world, seed + r, n_episodes, beta=beta, rho=rho,
                                   progress=progress, out=data_path, budget_range=log_budgets)
        episodes += new
        phases["simulate"] += time.perf_counter() - t
        t = time.perf_counter()
        ckpt = out / f"ckpt_round{r}"
        shutil.rmtree(ckpt, ignore_errors=True)
        est, res = train_checkpoint(episodes, pool, ckpt, train_cfg, target_cfg, progress=progress, ensemble=ensemble,
                                    target_ensemble=target_ensemble, snapshot=snapshot)
        info = {"round": r, "episodes": len(episodes), "val_loss": res.val_loss,
                "baseline_val_loss": res.baseline_val_loss, "best_epoch": res.best_epoch, "checkpoint": str(ckpt)}
        if rounds > 1:  # the gain per round, on the same held-out episodes for every round
            quick = sweep(est, pool, world, budgets[-1:], max(128, sweep_episodes // 2), seed + 1000,
                          progress=False, include=["mtrouter"])
            p = quick["routers"]["mtrouter"]["points"][0]
            info.update(score_at_max_budget=p["score"], cost_at_max_budget=p["cost"])
        round_info.append(info)
        phases["train"] += time.perf_counter() - t
        t = time.perf_counter()
    results = sweep(est, pool, world, budgets, sweep_episodes, seed, progress=progress)
    results["meta"]["rounds"] = round_info
    phases["sweep"] = time.perf_counter() - t
    t = time.perf_counter()
    results["meta"]["phase_seconds"] = dict(phases)
    from mtrouter_jax.estimator.checkpoint import write_lam_table

    # `mtrouter serve --checkpoint` then brings the λ calibrated for each budget
    write_lam_table(ckpt, "sim", sim_lam_table(results))
    paths = write_results(results, out)
    # the λ table, results and plots; after results.json is written, so only in the returned dict
    results["meta"]["phase_seconds"]["report"] = time.perf_counter() - t
    return results, paths
