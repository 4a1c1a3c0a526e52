"""Executed counterfactuals: branch a logged ScienceWorld episode at one turn (``collect --branch K``).

A branch restores the state after turns 0..t-1 of a logged episode by replaying its commands
(``RoutedEpisode.replay``: no model is called, the logged usage is billed again, the score after
every replayed command is checked against the log), serves turn t with another model, and lets
the *same* router continue with the *same* random draws: the scripted agents' replies depend only
on (seed, episode id, step) and the router's draws on (episode seed, turn), so the two
continuations differ only by what the turn-t model did. Both are logged; the branch carries
``meta.branch_of`` (the base episode's id), ``meta.branch_turn`` (t, 0-based) and
``meta.branch_cost`` (what the branch really cost: turns t..end; the replayed prefix is not a new
call). The trainer turns each pair into a per-turn advantage label (``estimator.pairs``).

With real endpoints the prefix replay is exact (commands and usage come from the log), but the
continuation is not a common-random-numbers draw: a sampled LLM answers differently each time, so
a pair's difference is noisier than with the scripted stand-in.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from mtrouter_jax.estimator.pairs import BRANCH_OF, BRANCH_TURN
from mtrouter_jax.logs.io import Episode

BRANCH_COST = "branch_cost"


def branch_rng(seed: int, base_id: str) -> np.random.Generator:
    """The draws of an episode's branches (turns and alternative models): explicit and stable."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(base_id.encode())])


def real_cost(episode: Episode) -> float:
    """What collecting ``episode`` cost: a branch's own turns (its replayed prefix is no new call)."""
    return float((episode.meta or {}).get(BRANCH_COST, episode.total_cost))


def branch_turns(n_turns: int, k: int, rng: np.random.Generator) -> list[int]:
    """``k`` distinct turns of an ``n_turns``-turn episode (all of them when k >= n_turns), uniform."""
    if n_turns <= 0 or k <= 0:
        return []
    return sorted(int(t) for t in rng.choice(n_turns, size=min(k, n_turns), replace=False))


def run_branch(make_episode, base: Episode, t: int, rng: np.random.Generator, names: Sequence[str],
               run_continuation, alt: str | None = None) -> Episode | None:
    """One branch of ``base`` at turn ``t``.

    ``make_episode(log_id, seed)`` builds a fresh ``RoutedEpisode`` of the base's task, variation,
    budget and scripted-draw id; ``run_continuation(ep)`` plays it to its end with the router (or
    the privileged bound). The alternative model is drawn uniformly from the models other than the
    logged one that the budget allows at the restored state (``alt``: this one instead, e.g. the
    logged model itself, which must reproduce the base); None when none is allowed.
    """
    served = base.turns[t].model
    ep = make_episode(f"{base.episode_id}~t{t}", int((base.meta or {}).get("seed", 0)))
    for turn in base.turns[:t]:
        ep.replay(turn)
    if ep.done:
        return None
    allowed = ep.allowed()
    alts = [m for i, m in enumerate(names) if allowed[i] and (m == alt if alt is not None else m != served)]
    if not alts:
        return None
    spent_before = ep.live.spent
    ep.step(alts[int(rng.integers(len(alts)))] if alt is None else alts[0])
    if not ep.done:
        run_continuation(ep)
    logged = ep.finish()
    if logged is None:
        return None
    meta = {**(logged.meta or {}), BRANCH_OF: base.episode_id, BRANCH_TURN: int(t),
            BRANCH_COST: float(logged.total_cost - spent_before)}
    return Episode(logged.episode_id, logged.task_type, logged.score, logged.budget, logged.models, logged.turns,
                   logged.score_range, logged.source, meta, logged.extra)


__all__ = ["BRANCH_OF", "BRANCH_TURN", "BRANCH_COST", "branch_rng", "branch_turns", "real_cost", "run_branch"]
