"""Executed counterfactual pairs -> per-turn advantage labels (``collect scienceworld --branch K``).

A branch episode (``meta.branch_of`` = a base episode's id, ``meta.branch_turn`` = t) replays the
base's first t turns and serves turn t with another model; everything after is the same router
with the same random draws. So at the shared history h_t the pair gives two served models a, b and
two outcomes whose difference is (almost) only what the turn-t model did: the label
``y_b - y_a ≈ Q(h_t, b) - Q(h_t, a)`` has far less variance than either Monte-Carlo target.

Host-side helpers that turn linked episodes into row masks and pairs; the loss is
``optim.pair_loss``.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from mtrouter_jax.logs.io import Episode

BRANCH_OF, BRANCH_TURN = "branch_of", "branch_turn"


class BranchLinkWarning(UserWarning):
    """A branch episode's link could not be used (base missing, turn out of range, prefix differs)."""


def branch_links(episodes: Sequence[Episode]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
    """For E episodes: ``first`` (E,) — the first turn that is training data: 0, or t for a
    branch, whose turns before t replay its base's (a copy, not new data) —, ``group`` (E,) — the
    base's index for a branch, so a pair lands on one side of the validation split — and the pairs
    ``(base, branch, t)``.

    A branch whose base is not in ``episodes``, whose turn is out of range or whose replayed
    prefix does not match the base (models, actions) keeps its own turns from t on and forms no
    pair (one warning says how many)."""
    E = len(episodes)
    first = np.zeros(E, np.int64)
    group = np.arange(E, dtype=np.int32)
    index = {e.episode_id: i for i, e in enumerate(episodes)}
    pairs, unlinked = [], 0
    for j, e in enumerate(episodes):
        meta = e.meta or {}
        if BRANCH_OF not in meta:
            continue
        t = meta.get(BRANCH_TURN)
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < len(e.turns):
            unlinked += 1
            continue
        first[j] = t
        i = index.get(meta[BRANCH_OF])
        if i is None or i == j or t >= len(episodes[i].turns) or not _same_prefix(episodes[i], e, t):
            unlinked += 1
            continue
        group[j] = group[i]
        pairs.append((i, j, t))
    if unlinked:
        warnings.warn(f"{unlinked} branch episode(s) form no pair (base not in the data, branch_turn out of range, "
                      "or a replayed prefix that differs from its base); their own turns are kept",
                      BranchLinkWarning, stacklevel=3)
    return first, group, pairs


def _same_prefix(base: Episode, branch: Episode, t: int) -> bool:
    return all(a.model == b.model and a.action == b.action for a, b in zip(base.turns[:t], branch.turns[:t]))


def pair_rows(pairs: Sequence[tuple[int, int, int]], row_of: dict[tuple[int, int], int]) -> np.ndarray:
    """(P, 2) int32 row indices (base row, branch row) of each pair's turn t in the flat rows."""
    rows = [(row_of[(i, t)], row_of[(j, t)]) for i, j, t in pairs if (i, t) in row_of and (j, t) in row_of]
    return np.asarray(rows, np.int32).reshape(-1, 2)


def paired_advantages(score_target, rows):
    """(P,) advantage labels ``y(branch row) - y(base row)``: the branch model's gain over the base's
    at the shared history. A pair with equal outcomes gives 0. Pure jax.numpy."""
    y = jnp.asarray(score_target, jnp.float32)
    rows = jnp.asarray(rows, jnp.int32).reshape(-1, 2)
    return y[rows[:, 1]] - y[rows[:, 0]]


__all__ = ["BranchLinkWarning", "branch_links", "pair_rows", "paired_advantages"]
