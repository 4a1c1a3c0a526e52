"""The one billing formula: what a call costs at per-token prices (simulator, log replay, live, ScienceWorld)."""

from __future__ import annotations


def call_cost(input_tokens, cached_tokens, output_tokens, price_input, price_cached, price_output):
    """USD of one call: the uncached input, the cached input and the completion, each at its per-token
    price. Plain arithmetic (numpy, jax or floats), so every caller bills with the same expression."""
    return (input_tokens - cached_tokens) * price_input + cached_tokens * price_cached + output_tokens * price_output


__all__ = ["call_cost"]
