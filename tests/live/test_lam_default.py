"""One λ default, from one place: every entry point without --lam and without a λ table routes with
``routing.meta.DEFAULT_LAM`` and says so."""

from __future__ import annotations

import numpy as np

from testing.artifacts import trained_checkpoint

from mtrouter_jax.estimator.checkpoint import read_meta
from mtrouter_jax.live.router import Router, router_from_options
from mtrouter_jax.routing.meta import DEFAULT_LAM
from mtrouter_jax.sim.params import sim_feature_layout


def test_every_entry_point_uses_the_one_default(tmp_path_factory):
    ckpt = trained_checkpoint(tmp_path_factory)
    assert not (read_meta(ckpt).get("lam_tables") or {}), "the shared checkpoint must have no λ table here"
    routers = {
        "Router()": Router(),
        "Router.from_checkpoint": Router.from_checkpoint(ckpt),
        "serve/collect/eval options": router_from_options(checkpoint=str(ckpt)),
        "serve without a checkpoint": router_from_options(router="tool-heuristic"),
    }
    for name, r in routers.items():
        assert r.lam_for(None) == DEFAULT_LAM and r.lam_for(0.05) == DEFAULT_LAM, name
        assert r.lam_fixed is None, name
        assert f"{DEFAULT_LAM:g}" in r.lam_source() and "--lam" not in r.lam_source(), (name, r.lam_source())
        assert r.start_episode(budget=0.05).lam == DEFAULT_LAM, name
    from mtrouter_jax.sim.policies import learned_policy

    est = routers["Router.from_checkpoint"].estimator
    pol = learned_policy(est, sim_feature_layout(est.pool))
    assert np.isclose(float(pol.params["policy"]["lam"]), DEFAULT_LAM)


def test_an_explicit_lam_is_said_to_be_fixed(tmp_path_factory):
    r = router_from_options(checkpoint=str(trained_checkpoint(tmp_path_factory)), lam=0.3)
    assert r.lam_for(0.05) == 0.3 and "fixed at 0.3 (--lam)" == r.lam_source()
