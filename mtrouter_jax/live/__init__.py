"""Live routing: route real OpenAI-compatible chat calls turn by turn with any routing policy.

``router`` is the HTTP-free library (``Router``), ``episode`` one conversation (``LiveEpisode``),
``kernel`` the jitted decision, ``backends`` the upstream clients with fallback. ``accounting``
the budget arithmetic (input bound, usage parsing). The OpenAI-compatible proxy is the ``server``
package (import it explicitly; it needs the ``[live]`` extra): ``app`` (wiring, ``mtrouter serve``),
``proxy`` (request handling), ``api`` (validation, error shape), ``conversations`` (the open
conversations), ``prometheus`` (``/metrics``), ``replies`` (reading upstream replies), ``options``
(the ``mtrouter serve`` flags).
"""

_EXPORTS = {"Router": "router", "BudgetExhausted": "accounting", "PoolMismatchError": "router",
            "LiveEpisode": "episode", "Decision": "episode"}


def __getattr__(name):  # lazy: `mtrouter route --help` must not import JAX
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"mtrouter_jax.live.{_EXPORTS[name]}"), name)
    raise AttributeError(name)


__all__ = list(_EXPORTS)
