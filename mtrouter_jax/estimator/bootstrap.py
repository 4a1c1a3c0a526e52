"""Fitted-Q training: a Monte-Carlo fit, then refits on n-step targets bootstrapped from the last fit."""

from __future__ import annotations

import dataclasses

import numpy as np

from mtrouter_jax.core.pool import Pool
from mtrouter_jax.estimator.config import TrainConfig, TrainResult
from mtrouter_jax.estimator.dataset import TrainingData
from mtrouter_jax.estimator.members import pool_fits
from mtrouter_jax.estimator.predict import AGGREGATES, ensemble_scores
from mtrouter_jax.estimator.targets import bootstrapped_score_targets, greedy_state_values, nstep_successors
from mtrouter_jax.estimator.train import fit
from mtrouter_jax.routing.policies import budget_allowed


def fit_bootstrapped(data: TrainingData, pool: Pool, cfg: TrainConfig = TrainConfig(), *, n_steps: int,
                     iterations: int, progress: bool = True, devices: list | None = None, ensemble: int = 1,
                     aggregate: str = "mean", target_ensemble: int | None = None, snapshot: int = 1
                     ) -> tuple[TrainResult, list[dict]]:
    """Fit on the Monte-Carlo AEC targets, then ``iterations`` times refit on n-step targets
    bootstrapped from the previous fit (``targets.bootstrapped_score_targets``).

    The bootstrap value of a state is the previous fit's best score over the models the router's
    budget rule allows there (``routing.budget_allowed``, paced) — its own greedy choice at
    lambda = 0; with an ensemble the members' predictions are aggregated by ``aggregate`` first
    (``ensemble_scores``). The last fit has ``ensemble`` members; the fits before it, which only
    make targets, have ``target_ensemble`` (default: ``ensemble``) — every fit starts afresh, so a
    one-member chain with an ensemble last buys the final members' spread at one fit's price.
    ``snapshot`` > 1 returns the members of the last ``snapshot`` fits (all of them if fewer) pooled
    into one ensemble (``members.pool_fits``): an ensemble at no extra training. The cost head keeps
    its Monte-Carlo target. Returns the last fit (or the pooled ensemble) and one summary dict per fit.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if data.turn_cost_hi is None or data.remaining_budget is None:
        raise ValueError("bootstrapping needs TrainingData.turn_cost_hi and remaining_budget "
                         "(build it with dataset.build_training_data)")
    n_fits = iterations + 1

    target_ensemble = ensemble if target_ensemble is None else target_ensemble
    if target_ensemble < 1:
        raise ValueError(f"target_ensemble must be >= 1, got {target_ensemble}")
    if snapshot < 1:
        raise ValueError(f"snapshot must be >= 1, got {snapshot}")

    def one_fit(d, i, what):
        k = ensemble if i == iterations else target_ensemble
        return fit(d, pool, cfg, k, progress=progress, devices=devices, label=f"fit {i + 1}/{n_fits} ({what})")

    mc = np.asarray(data.score_target, np.float32)
    succ, valid = (np.asarray(a) for a in nstep_successors(data.episode, n_steps))
    first = np.r_[True, data.episode[1:] != data.episode[:-1]]
    prev = np.where(first, -1, np.r_[-1, data.model[:-1]])  # model of the turn before each row
    allowed = np.asarray(budget_allowed(data.turn_cost_hi, data.remaining_budget[:, None], data.pace_cost, prev))
    result = one_fit(data, 0, "monte-carlo")
    kept = [result]
    log = [{"iteration": 0, "targets": "monte-carlo", "val_loss": result.val_loss,
            "baseline_val_loss": result.baseline_val_loss, "best_epoch": result.best_epoch, "members": result.k}]
    for it in range(1, iterations + 1):
        values = greedy_state_values(ensemble_scores(result, data.features, aggregate), allowed)
        targets = np.asarray(bootstrapped_score_targets(mc, succ, valid, values), np.float32)
        result = one_fit(dataclasses.replace(data, score_target=targets), it, f"{n_steps}-step bootstrapped")
        kept = (kept + [result])[-snapshot:]
        log.append({"iteration": it, "targets": f"{n_steps}-step bootstrapped", "val_loss": result.val_loss,
                    "baseline_val_loss": result.baseline_val_loss, "best_epoch": result.best_epoch,
                    "mean_target_shift": float(np.mean(targets - mc)), "aggregate": aggregate,
                    "members": result.k})
    if len(kept) > 1:
        log[-1]["snapshot_of"] = [f["iteration"] for f in log[-len(kept):]]
    return pool_fits(kept), log


__all__ = ["fit_bootstrapped"]
