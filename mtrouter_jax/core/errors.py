"""Errors every layer may raise for bad user input; the CLI turns them into one line and exit status 2."""

from __future__ import annotations


class UsageError(ValueError):
    """A command-line argument or option combination that cannot work (said before any work starts)."""


__all__ = ["UsageError"]
