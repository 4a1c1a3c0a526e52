"""Training settings and what a fit returns (one member or an ensemble of K)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from mtrouter_jax.estimator.model import OutcomeEstimator


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (paper defaults except batch size, raised for CPU throughput)."""

    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-5
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    batch_size: int = 256
    max_epochs: int = 100
    patience: int = 3
    val_frac: float = 0.1
    l2_residual: float = 1e-4  # L2 on the per-model residual embeddings
    # weight of the cost head's MSE; None = var(score target) / var(cost target), so neither head's
    # scale dominates the shared trunk (cost targets vary ~10x more than scores)
    cost_weight: float | None = None
    # weight of the executed-counterfactual pair loss (optim.pair_loss), used when the logs hold
    # linked branches (collect scienceworld --branch K); 0 = treat branches as ordinary episodes
    pair_weight: float = 1.0
    seed: int = 0
    max_seconds: float | None = None  # stop early (best weights kept) after this much wall time


@dataclasses.dataclass
class TrainResult:
    """A fit: ``model`` is the (first) member; for an ensemble, ``members`` holds every member's
    parameters stacked along a leading (K,) axis and ``graphdef`` one eval-mode member's graph."""

    model: OutcomeEstimator
    history: list[dict]  # per epoch: train_loss, val_loss, seconds (+ member_val_loss for K > 1)
    best_epoch: int
    val_loss: float
    baseline_val_loss: float  # per-model-mean predictor on the same validation split
    attr_mean: np.ndarray
    attr_std: np.ndarray
    attr_names: list[str]
    turns_per_second: float  # steady-state (first epoch excluded when possible), all members counted
    cost_weight: float
    members: Any = None  # nnx.State with a leading (K,) axis on every array; None for one member
    graphdef: Any = None
    member_val_loss: list | None = None  # (K,) best validation loss per member

    @property
    def k(self) -> int:
        """Number of members."""
        return 1 if self.members is None else int(jax.tree_util.tree_leaves(self.members)[0].shape[0])


__all__ = ["TrainConfig", "TrainResult"]
