"""Names every layer shares, in one JAX-free home (log schema, rules, features, simulator)."""

from __future__ import annotations

SEVERITIES = ("low", "medium", "high")  # error severities, lowest first: the order of the AEC multipliers

__all__ = ["SEVERITIES"]
