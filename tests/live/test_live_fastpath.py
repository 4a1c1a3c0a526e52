"""The one-call decision kernel (live/kernel.py) decides exactly as the four-call host path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testing.live import FakeEstimator, make_pool
from mtrouter_jax.live.router import BudgetExhausted, Router

TOOL_NAMES = ("web_search", "python", "read_file", None, "bash", "answer", "frobnicate")
OBSERVATIONS = ("ok", "Traceback (most recent call last):\nValueError: x", "HTTP 503 error",
                "No known action matches that input.", "")


def tiny_checkpoint(path, pool, k: int, text_dim: int, cost_target: str):
    """Save a random-init estimator (``k`` stacked members) with the checkpoint module's writer."""
    from flax import nnx

    from mtrouter_jax.estimator import checkpoint

    from mtrouter_jax.estimator import model as model_mod
    from mtrouter_jax.estimator.text import HashedNgramEncoder

    layout = FakeEstimator(pool).layout
    raw, names = model_mod.model_attribute_matrix(pool)
    attrs, mean, std = model_mod.normalise_attributes(raw)
    cfg = model_mod.EstimatorConfig(layout.n_features + text_dim, len(pool), raw.shape[1], 16, 8, 8, 4, 8, 16)
    models = [model_mod.make_estimator(cfg, attrs, seed) for seed in range(k)]
    members = None
    if k > 1:
        members = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[nnx.state(m) for m in models])
    meta = {"pool": pool.to_dict(), "layout": layout.to_dict(), "layout_blocks": [list(b) for b in layout.blocks],
            "estimator": cfg.to_dict(), "text_dim": text_dim, "cost_scale": 0.01, "cost_target": cost_target,
            "output_tokens_hi": [200.0] * len(pool), "output_tokens_mean": [80.0] * len(pool),
            "attributes": {"names": names, "mean": mean.tolist(), "std": std.tolist()}}
    if text_dim:
        meta["text_encoder"] = HashedNgramEncoder(text_dim).config()
    checkpoint.save_checkpoint(path, models[0], meta, members=members)
    return checkpoint.load_checkpoint(path)


def same_decision(a, b) -> None:
    assert (a.model, a.propensity, a.ranking, a.max_output_tokens, a.meta) == \
        (b.model, b.propensity, b.ranking, b.max_output_tokens, b.meta)
    for field in ("values", "probs", "allowed", "worst_cost", "features"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and np.array_equal(x, y), field  # bit for bit, not approximately


def drive(routers, seed: int, turns: int = 12) -> int:
    """The same random conversation through every router; decisions compared turn by turn."""
    rng = np.random.default_rng(seed)
    budget = [None, 0.002, 0.02, 1.0][seed % 4]
    explore = seed % 3 == 1 and all(r.explore_policy is not None for r in routers)
    eps = [r.start_episode(f"ep-{seed}", task_type=["qa", "science", "new"][seed % 3], budget=budget,
                           explore=explore) for r in routers]
    n = 0
    for t in range(turns):
        hi = float(rng.integers(50, 4000))
        kw = dict(input_tokens_hi=hi, context_tokens=hi * float(rng.uniform(0.2, 1.0)),
                  lam=None if rng.random() < 0.7 else float(rng.uniform(0, 2)))
        try:
            ds = [ep.decide(**kw) for ep in eps]
        except BudgetExhausted:
            for ep in eps[1:]:
                with pytest.raises(BudgetExhausted):
                    ep.decide(**kw)
            return n
        for d in ds[1:]:
            same_decision(ds[0], d)
        n += 1
        if rng.random() < 0.25 and len(ds[0].ranking) > 1:  # a fallback re-decision
            ds = [ep.decide(**kw, exclude=[ds[0].model]) for ep in eps]
            for d in ds[1:]:
                same_decision(ds[0], d)
        model = ds[0].model
        usage = {"prompt_tokens": int(hi), "completion_tokens": int(rng.integers(1, 150)),
                 "prompt_tokens_details": {"cached_tokens": int(rng.integers(0, hi // 2))}}
        tool, obs = TOOL_NAMES[rng.integers(len(TOOL_NAMES))], OBSERVATIONS[rng.integers(len(OBSERVATIONS))]
        for ep in eps:
            ep.record(model, usage, tool_name=tool)
            ep.attach_observation(obs)
    return n


@pytest.mark.parametrize("k,text_dim,cost_target", [(1, 0, "remaining"), (3, 8, "future")])
def test_fused_kernel_decides_bit_for_bit_as_the_host_path(tmp_path, k, text_dim, cost_target):
    est = tiny_checkpoint(tmp_path / "ck", make_pool(), k, text_dim, cost_target)
    fused, host = (Router(est, fused=f, explore="eps:0.4") for f in (True, False))
    assert fused._forward is not None and est.k == k
    decided = sum(drive([fused, host], seed) for seed in range(12))
    assert decided >= 60


def test_checkpoint_free_policies_fused_and_host_agree():
    for policy in ("tool-heuristic", "error-escalation", "sticky:0.6", "cheapest"):
        routers = [Router(None, make_pool(), policy=policy, explore="sticky:0.5:0.3", fused=f) for f in (True, False)]
        assert sum(drive(routers, seed, turns=8) for seed in range(4)) > 0


def test_fake_estimators_keep_the_host_path():
    r = Router(FakeEstimator(make_pool()))
    assert r._forward is None  # no JAX forward pass: predict() is called as before
    ep = r.start_episode()
    ep.decide(input_tokens_hi=100)
    assert r.estimator.calls >= 1
