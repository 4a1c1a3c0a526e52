"""mtrouter-jax: cost-aware multi-turn LLM routing (MTRouter) in JAX.

The names the docs use are importable from here, lazily (``import mtrouter_jax`` loads no JAX);
each lives in its layer (docs/architecture.md).
"""

__version__ = "0.1.0"

_EXPORTS = {
    # core
    "Pool": "core.pool", "load_pool": "core.pool", "default_pool": "core.pool", "PoolError": "core.pool",
    "call_cost": "core.pricing",
    # logs
    "Episode": "logs.io", "Turn": "logs.io", "TurnError": "logs.io", "read_episodes": "logs.io",
    "iter_episodes": "logs.io", "write_episodes": "logs.io", "append_episodes": "logs.io",
    "LogFormatError": "logs.io", "import_official_trajectories": "logs.importers",
    # routing
    "build_router": "routing.specs", "with_exploration": "routing.specs", "ToolModelMap": "routing.specs",
    "DEFAULT_LAM": "routing.meta",
    # estimator
    "TrainConfig": "estimator.train", "fit": "estimator.train", "build_training_data": "estimator.dataset",
    "TargetConfig": "estimator.dataset", "load_checkpoint": "estimator.checkpoint",
    "CheckpointError": "estimator.checkpoint",
    # live
    "Router": "live.router", "LiveEpisode": "live.episode", "BudgetExhausted": "live.accounting",
    # jobs
    "simulate_dataset": "jobs", "train_checkpoint": "jobs", "run_main_job": "jobs",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"mtrouter_jax.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mtrouter_jax' has no attribute {name!r}")


__all__ = list(_EXPORTS)
