"""A routed turn's plan (``Proxy._plan``) and the money headers of its reply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mtrouter_jax.live.episode import LiveEpisode

if TYPE_CHECKING:
    from mtrouter_jax.live.server.proxy import Proxy


@dataclass
class Plan:
    """A turn's plan (``Proxy._plan``): its input bounds, decisions, the models to try in order, their
    completion caps, the shadow's decision; ``guess``: (model, worst case) reserved with the lease."""

    proxy: Proxy
    episode: LiveEpisode
    hi: float
    est: float
    decisions: dict
    ranking: list
    caps: dict
    shadow: dict | None
    client_limits: list
    guess: tuple[str, float] | None = None

    def limit_for(self, model) -> int | None:
        """The one completion limit sent to ``model``: min of the client's limits and the cap."""
        cap = self.caps.get(model)
        return min(self.client_limits + ([] if cap is None else [cap]), default=None)

    def worst_case(self, model: str) -> float:
        """USD an attempt on ``model`` may be billed at most (what it reserves)."""
        out = self.proxy._completion_hi(model, self.limit_for(model))
        return self.episode.router.turn_cost(model, self.hi, 0, out)


def money_headers(ep: LiveEpisode) -> dict:
    """The spent / remaining USD headers of a reply (``X-MTRouter-Spent``, ``-Remaining``)."""
    return {"X-MTRouter-Spent": f"{ep.spent:.8f}",
            "X-MTRouter-Remaining": "none" if ep.remaining is None else f"{ep.remaining:.8f}"}


__all__ = ["Plan", "money_headers"]
