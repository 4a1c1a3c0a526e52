"""What a draft's action type says about the action that was due: hindsight due types (issue 17).

The draft table (``routing/draft.py``) keys a turn by the type of the action its model *typed*. A
wasted turn is typed as something else than what was due (a "look around" where an ``act`` was
due), so it lands in another row, and the ``act`` row holds only the turns where a model did type
an act: every model's act row looks alike, however often it misses the act (docs/benchmarks.md,
"A world no default was chosen on"). What the privileged bound reads — the type *due* — is not in
the log, but it is in hindsight: the type of the first later turn (this one included) that changed
the score. A turn that made no progress but was followed by an ``act`` that did was, in hindsight,
an ``act`` turn that missed. Turns after the last score change are due ``none`` (their gains are
all zero by construction).

From that label, per model ``d`` and typed type ``k``, the log gives the mix ``pi_dk(j)`` of due
types behind ``d``'s typed-``k`` turns, and per (due type ``j``, model ``a``) the mean gain
``mu_a(j)`` of ``a``'s turns when ``j`` was due (hits and misses alike). An alternative ``a``'s value
for a turn whose draft by ``d`` typed ``k`` is then ``V_a = sum_j pi_dk(j) mu_a(j)`` — the learned
form of the bound, under its assumption that the due type is what decides a model's turn. Its
variance: the cells' sampling variance plus that of the mix,
``sum_j pi_j^2 var_a(j)/n_a(j) + sum_j pi_j (mu_a(j) - V_a)^2 / n_dk``.

Pure numpy over tiny arrays; a decision costs microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS_GAIN = 1e-12  # a score change smaller than this is no change (float noise of normalised progress)


def due_types(tool_idx: np.ndarray, gains: np.ndarray, none: int) -> np.ndarray:
    """(T,) hindsight due type of each turn of one episode: the type (``tool_idx``) of the first turn at
    or after it whose ``gains`` is not zero; ``none`` after the episode's last score change."""
    tool_idx = np.asarray(tool_idx, np.int64)
    out = np.full(tool_idx.shape, none, np.int64)
    nxt = none
    for t in range(len(tool_idx) - 1, -1, -1):  # backwards: the next change seen from each turn
        if abs(float(gains[t])) > _EPS_GAIN:
            nxt = int(tool_idx[t])
        out[t] = nxt
    return out


@dataclass(frozen=True)
class DueOutcomes:
    """Hindsight due types in a log: per (due type, model) ``n``/``mean``/``var`` of turn gains, shape
    (K + 1, M), the last row ``none``; per (model, typed type, due type) turn counts ``mix`` (M, K, K + 1)."""

    n: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    mix: np.ndarray

    def to_meta(self) -> dict:
        return {"n": self.n.tolist(), "mean": self.mean.tolist(), "var": self.var.tolist(), "mix": self.mix.tolist()}

    @classmethod
    def from_meta(cls, d: dict) -> "DueOutcomes":
        return cls(*(np.asarray(d[k], np.float64) for k in ("n", "mean", "var", "mix")))

    def alternative_values(self, tool: int, draft: int, n_min: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(value, variance, known), each (M,): every model's expected gain on a turn whose draft by model
        ``draft`` typed ``tool`` (module docstring); ``known`` where each due type behind that draft has
        ``n_min`` logged turns of the model (the ``none`` row is zero by construction, always known)."""
        counts = self.mix[draft, tool]  # (K + 1,)
        n_dk = counts.sum()
        M = self.n.shape[1]
        if n_dk <= 0:
            return np.zeros(M), np.full(M, np.inf), np.zeros(M, bool)
        pi = counts / n_dk
        mean, var, n = self.mean.copy(), self.var.copy(), self.n.copy()
        mean[-1], var[-1], n[-1] = 0.0, 0.0, np.inf  # after the last score change every gain is zero
        value = pi @ mean  # (M,)
        var = np.where((pi[:, None] > 0) & (n < 2), np.inf, var)  # one turn: no variance to go by
        cell = (pi[:, None] ** 2 * var / np.maximum(n, 1.0)).sum(0)
        mixing = (pi[:, None] * np.square(mean - value[None, :])).sum(0) / n_dk
        known = np.all((pi[:, None] == 0) | (n >= n_min), axis=0)
        return value, cell + mixing, known


def best_when_due(due: DueOutcomes, tools, models, n_min: float = 20.0) -> dict[str, dict]:
    """Readable summary: per due type (``none`` left out), the model with the highest mean gain when it
    was due, among those with ``n_min`` logged turns of it, its gain in % of the score range a turn,
    the runner-up's and the turns behind the best one (``{}`` for a type no model has ``n_min`` of)."""
    out: dict[str, dict] = {}
    for k, tool in enumerate(tools):
        ok = due.n[k] >= n_min
        if not ok.any():
            continue
        order = [int(i) for i in np.argsort(-np.where(ok, due.mean[k], -np.inf)) if ok[i]]
        best = order[0]
        out[tool] = {"model": models[best], "gain_pct": round(100 * float(due.mean[k, best]), 3),
                     "turns": int(due.n[k, best])}
        if len(order) > 1:
            out[tool]["runner_up"] = {"model": models[order[1]],
                                      "gain_pct": round(100 * float(due.mean[k, order[1]]), 3)}
    return out


def grouped_moments(row_idx: np.ndarray, model_idx: np.ndarray, gains: np.ndarray, R: int, M: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, mean, unbiased variance), each (R, M), of ``gains`` grouped by (``row_idx``, ``model_idx``)."""
    n, s, s2 = np.zeros((R, M)), np.zeros((R, M)), np.zeros((R, M))
    np.add.at(n, (row_idx, model_idx), 1.0)
    np.add.at(s, (row_idx, model_idx), gains)
    np.add.at(s2, (row_idx, model_idx), np.square(gains))
    mean = s / np.maximum(n, 1.0)
    var = np.maximum(s2 / np.maximum(n, 1.0) - mean ** 2, 0.0) * n / np.maximum(n - 1.0, 1.0)
    return n, mean, var


def fit_due(tool_idx: np.ndarray, due_idx: np.ndarray, model_idx: np.ndarray, gains: np.ndarray, K: int,
            M: int) -> DueOutcomes:
    """The ``DueOutcomes`` of N logged turns: typed ``tool_idx`` (< K), hindsight ``due_idx`` (≤ K, K =
    none), ``model_idx`` and ``gains``, all (N,)."""
    n, mean, var = grouped_moments(due_idx, model_idx, gains, K + 1, M)
    mix = np.zeros((M, K, K + 1))
    np.add.at(mix, (model_idx, tool_idx, due_idx), 1.0)
    return DueOutcomes(n, mean, var, mix)


__all__ = ["DueOutcomes", "due_types", "fit_due", "best_when_due", "grouped_moments"]
