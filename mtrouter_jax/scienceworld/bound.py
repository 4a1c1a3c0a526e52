"""The privileged bound of per-turn routing in a scripted world (``--routers privileged-bound``).

Scripted agents only: before each turn it reads the type of the gold action due next (which no real
router can see) and serves the turn with the model whose frozen profile types that action best,
among the models the budget allows now (ties: the cheaper per output token). It shows what knowing
each turn's action type is worth — a privileged reference, not a router to deploy, and not a
ceiling: it is greedy per turn and blind to the budget's future, so a router can beat it.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .agent import action_type
from .scripted import AgentProfile

BOUND = "privileged-bound"


def p_gold(profile: AgentProfile, kind: str) -> float:
    """P(the scripted model types the gold command | an action of type ``kind`` is due)."""
    if kind not in profile.no_action:
        kind = "other"
    wrong = profile.wrong_focus if kind == "focus" else 0.0
    return 1.0 - profile.no_action[kind] - profile.invalid[kind] - profile.wasted[kind] - wrong


def bound_choice(profiles: Mapping[str, AgentProfile], names, price_out, allowed: np.ndarray, kind: str) -> str:
    """The allowed model most likely to type the due action (ties: the cheapest per output token)."""
    best = max((i for i in range(len(names)) if allowed[i]),
               key=lambda i: (round(p_gold(profiles[names[i]], kind), 9), -float(price_out[i])))
    return names[best]


def run_bound(ep, profiles: Mapping[str, AgentProfile]) -> None:
    """Play a ``RoutedEpisode`` to its end with the privileged choice on every turn."""
    names = ep.router.pool.names
    price_out = np.array([ep.router.pool[m].price_output for m in names])
    while not ep.done:
        allowed = ep.allowed()
        if not allowed.any():
            ep.step(names[int(np.argmin(price_out))])  # truncates: nothing fits the budget
            continue
        ep.step(bound_choice(profiles, names, price_out, allowed, action_type(ep.session.expected_action())))


__all__ = ["BOUND", "p_gold", "bound_choice", "run_bound"]
