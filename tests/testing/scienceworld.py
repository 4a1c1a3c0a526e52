"""Shared helpers of the ScienceWorld test modules."""

from __future__ import annotations

import pytest


def skip_without_scienceworld() -> None:
    """Skip the calling test (or fixture) with the reason when Java 17 or scienceworld is missing."""
    from mtrouter_jax.scienceworld.engine import ScienceWorldUnavailable, require_java

    try:
        require_java()
    except ScienceWorldUnavailable as e:
        pytest.skip(str(e))
