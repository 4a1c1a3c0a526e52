"""End-to-end tests of the `mtrouter` command line on tiny sizes."""

from __future__ import annotations

import json
import os

import pytest

from testing.artifacts import once
from mtrouter_jax.cli import main
from mtrouter_jax.logs.io import read_episodes
from mtrouter_jax.core.pool import default_pool

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning",
                                        "ignore::ResourceWarning")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """simulate -> train once per test run (shared by xdist workers): ``(dir, data file, checkpoint dir)``."""

    def build(d):
        d.mkdir()
        assert main(["simulate", "--n", "32", "--out", str(d / "f.jsonl"), "--seed", "3"]) == 0
        assert main(["train", "--data", str(d / "f.jsonl"), "--out", str(d / "ck"), "--epochs", "2",
                     "--batch-size", "32"]) == 0

    d = once(tmp_path_factory, "cli-work", build)
    return d, d / "f.jsonl", d / "ck"


def test_simulate_writes_valid_jsonl(work):
    _, data, _ = work
    eps = read_episodes(data, pool_models=set(default_pool().names))
    assert 0 < len(eps) <= 32
    assert len({e.episode_id for e in eps}) == len(eps)
    assert all(e.turns and e.source == "sim" for e in eps)
    assert all(t.features is not None for e in eps for t in e.turns)


def test_simulate_refuses_to_overwrite_without_append(work, tmp_path, capsys):
    _, data, _ = work
    before = data.read_bytes()
    assert main(["simulate", "--n", "4", "--out", str(data)]) == 2
    assert "--append" in capsys.readouterr().err
    assert data.read_bytes() == before


def test_simulate_append_adds_episodes(tmp_path):
    from mtrouter_jax.logs.io import LogFormatError

    out = tmp_path / "a.jsonl"
    args = ["simulate", "--n", "4", "--out", str(out), "--no-budgets", "--no-features"]
    assert main(args) == 0
    n1 = len(read_episodes(out))
    assert main(args + ["--append", "--seed", "1"]) == 0
    try:
        n2 = len(read_episodes(out))
    except LogFormatError as e:
        pytest.fail(f"appended log is unreadable: {e}")
    assert n2 > n1


def test_train_writes_a_loadable_checkpoint(work):
    from mtrouter_jax.estimator.checkpoint import load_checkpoint

    _, data, ck = work
    est = load_checkpoint(ck)
    assert est.pool.names == default_pool().names
    assert est.meta["data"]["n_episodes"] == len(read_episodes(data))
    assert est.meta["training"]["batch_size"] == 32 and est.meta["training"]["max_epochs"] == 2


def test_inspect_prints_metadata(work, capsys):
    _, _, ck = work
    capsys.readouterr()
    assert main(["inspect", str(ck)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["schema"] == "mtrouter-ckpt/1"
    assert info["models"] == list(default_pool().names)
    assert set(info["training"]) == {"best_epoch", "val_loss", "baseline_val_loss", "turns_per_second"}
    assert info["turn_outcomes"] == "none: the logs have no per-turn progress"  # simulated logs have none


def test_sweep_writes_results(work, tmp_path):
    _, _, ck = work
    out = tmp_path / "sw"
    assert main(["sweep", "--ckpt", str(ck), "--budgets", "0.05", "0.2", "--episodes", "16", "--out", str(out)]) == 0
    for name in ("results.json", "results.csv", "cost_score.png", "summary.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["budgets"] == pytest.approx([0.05, 0.2])
    pts = res["routers"]["mtrouter"]["points"]
    assert len(pts) == 2 and all(p["over_budget_rate"] == 0 for p in pts)
    assert {"oracle", "random", "cheapest"} <= set(res["routers"])
    # the calibrated budget -> λ table went into the checkpoint (re-sealed: it still loads)
    from mtrouter_jax.estimator.checkpoint import load_checkpoint

    table = load_checkpoint(ck).meta["lam_tables"]["sim"]
    assert [r["budget"] for r in table] == pytest.approx([0.05, 0.2])
    assert [r["lam"] for r in table] == pytest.approx([p["lam"] for p in pts])


def test_sweep_of_some_routers_only(work, tmp_path, capsys):
    _, _, ck = work
    out = tmp_path / "some"
    base = ["sweep", "--ckpt", str(ck), "--budgets", "0.05", "0.2", "--episodes", "8", "--no-lam-table"]
    assert main(base + ["--out", str(out), "--routers", "mtrouter", "gpt-5"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["routers"]) == ["mtrouter", "gpt-5"]
    rc, err = _error(capsys, base + ["--out", str(tmp_path / "bad"), "--routers", "mtrouter", "gpt-6"])
    assert rc == 2 and "--routers: no router named gpt-6" in err and "tool-heuristic" in err
    assert not (tmp_path / "bad").exists()


def test_sweep_refuses_a_checkpoint_trained_on_another_vocabulary(tmp_path, capsys):
    from mtrouter_jax.logs.io import Episode, Turn, write_episodes

    turns = tuple(Turn("gpt-5" if i % 2 else "gpt-oss-120b", 900, 0, 40, 0.001, ("look", "act")[i % 2], None, 0.5)
                  for i in range(12))
    eps = [Episode(f"sw{i}", "boil", 50.0, None, default_pool().names, turns, (-100.0, 100.0), "scienceworld", None)
           for i in range(16)]
    write_episodes(tmp_path / "sw.jsonl", eps)
    ck = tmp_path / "swck"
    assert main(["train", "--data", str(tmp_path / "sw.jsonl"), "--out", str(ck), "--epochs", "1",
                 "--bootstrap-iterations", "0", "--ensemble", "1"]) == 0
    rc, err = _error(capsys, ["sweep", "--ckpt", str(ck), "--episodes", "8", "--out", str(tmp_path / "o")])
    assert rc == 2 and "lacks the simulator's task types" in err and "mtrouter eval scienceworld" in err
    assert not (tmp_path / "o").exists()


def _error(capsys, argv):
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_bad_jsonl_line_is_reported_with_file_and_line(tmp_path, capsys):
    bad = tmp_path / "f.jsonl"
    bad.write_text("{not json}\n")
    rc, err = _error(capsys, ["train", "--data", str(bad), "--out", str(tmp_path / "ck")])
    assert rc == 2 and "f.jsonl:1:" in err and "Traceback" not in err
    assert not (tmp_path / "ck").exists()


def test_missing_data_file(tmp_path, capsys):
    rc, err = _error(capsys, ["train", "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "ck")])
    assert rc == 2 and "nope.jsonl" in err and "not found" in err


def test_missing_checkpoint(tmp_path, capsys):
    rc, err = _error(capsys, ["sweep", "--ckpt", str(tmp_path / "nock"), "--budgets", "0.1", "--episodes", "16",
                              "--out", str(tmp_path / "sw")])
    assert rc == 2 and "no such checkpoint" in err
    rc, err = _error(capsys, ["inspect", str(tmp_path / "nock")])
    assert rc == 2 and "nock" in err


def test_non_positive_budget(work, tmp_path, capsys):
    _, _, ck = work
    argv = ["sweep", "--ckpt", str(ck), "--budgets", "0.1", "0", "--episodes", "16", "--out", str(tmp_path / "sw")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # refused while parsing: before the checkpoint is even loaded
        main(argv)
    assert e.value.code == 2 and "argument --budgets: expected a number > 0, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize("content", ["[[model]\nname = ", '[[model]]\nname = "x"\n'], ids=["toml", "schema"])
def test_bad_pool_file(tmp_path, capsys, content):
    pool = tmp_path / "pool.toml"
    pool.write_text(content)
    rc, err = _error(capsys, ["simulate", "--n", "4", "--out", str(tmp_path / "o.jsonl"), "--pool", str(pool)])
    assert rc == 2 and "pool.toml" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_missing_pool_file(tmp_path, capsys):
    rc, err = _error(capsys, ["simulate", "--n", "4", "--out", str(tmp_path / "o.jsonl"),
                              "--pool", str(tmp_path / "none.toml")])
    assert rc == 2 and "none.toml" in err


@pytest.mark.skipif(not os.environ.get("MTROUTER_SLOW_TESTS"),
                    reason="~40 s even at the tiniest sizes (many router compiles); set MTROUTER_SLOW_TESTS=1")
def test_run_main_job_tiny(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--episodes", "64", "--rounds", "1", "--sweep-episodes", "16",
                 "--n-budgets", "2", "--epochs", "1", "--batch-size", "32"]) == 0
    for name in ("data_round1.jsonl", "ckpt_round1", "results.json", "summary.md", "cost_score.png"):
        assert (out / name).exists(), name
    res = json.loads((out / "results.json").read_text())
    assert len(res["meta"]["budgets"]) == 2 and len(res["meta"]["rounds"]) == 1
    assert len(res["routers"]["mtrouter"]["points"]) == 2
    phases = res["meta"]["phase_seconds"]
    assert list(phases) == ["simulate", "train", "sweep"] and all(v > 0 for v in phases.values())


@pytest.mark.parametrize("seconds, text", [(0.84, "0.8 s"), (42.4, "42 s"), (215.2, "3 min 35 s"), (59.6, "1 min 0 s")])
def test_the_main_jobs_durations_read_as_minutes_and_seconds(seconds, text):
    from mtrouter_jax.reporting.fmt import duration

    assert duration(seconds) == text


def test_two_behaviours_at_one_seed_do_not_collide(tmp_path):
    """README's cheat sheet simulates the roulette and the heuristic at seed 0, then trains on both."""
    a, b = tmp_path / "sim.jsonl", tmp_path / "mix.jsonl"
    assert main(["simulate", "--n", "3", "--out", str(a), "--no-features"]) == 0
    assert main(["simulate", "--n", "3", "--out", str(b), "--no-features", "--router", "tool-heuristic",
                 "--explore", "eps:0.3"]) == 0
    ids_a, ids_b = ({e.episode_id for e in read_episodes(p)} for p in (a, b))
    assert len(ids_a) == len(ids_b) == 3 and not ids_a & ids_b
    assert all(i.startswith("sim-s0-") for i in ids_a) and all(i.startswith("sim-tool-heuristic+eps:0.3-s0-")
                                                              for i in ids_b)


def test_run_trains_the_ensemble_it_is_given(tmp_path, monkeypatch):
    """`mtrouter run --ensemble K` trains K members and pools the last ``--snapshot-fits`` fits
    (checked at the hand-off, before any training)."""
    import mtrouter_jax.jobs as jobs

    seen = {}

    class Stop(Exception):
        pass

    def fake_train(episodes, pool, out, *args, **kw):
        seen.update(kw, n=len(episodes))
        raise Stop

    monkeypatch.setattr(jobs, "train_checkpoint", fake_train)
    with pytest.raises(Stop):
        main(["run", "--out", str(tmp_path / "run"), "--episodes", "4", "--ensemble", "3"])
    assert seen["ensemble"] == 3 and seen["n"] == 4
    # the job's checkpoint pools the last two fits by default (docs/benchmarks.md, "Main job")
    assert seen["snapshot"] == 2
    with pytest.raises(Stop):
        main(["run", "--out", str(tmp_path / "run1"), "--episodes", "4", "--snapshot-fits", "1"])
    assert seen["snapshot"] == 1


def test_the_sim_lam_table_is_the_default_routers():
    """A sweep's λ table goes with the router `mtrouter serve` uses by default for the checkpoint:
    the safe router's row where the sweep has one (an ensemble), else the learned router's."""
    from mtrouter_jax.jobs import sim_lam_table

    learned = {"kind": "learned", "points": [{"budget": 0.1, "lam": 0.02}, {"budget": 0.5, "lam": 0.0}]}
    safe = {"kind": "learned", "points": [{"budget": 0.1, "lam": 0.0}, {"budget": 0.5, "lam": 0.04}]}
    assert sim_lam_table({"routers": {"mtrouter": learned}}) == {0.1: 0.02, 0.5: 0.0}
    assert sim_lam_table({"routers": {"mtrouter": learned, "mtrouter-safe": safe}}) == {0.1: 0.0, 0.5: 0.04}
    # a sweep of some rows (--routers) that left out the serving router writes no table, not another's
    assert sim_lam_table({"meta": {"serving_router": "mtrouter-safe"}, "routers": {"mtrouter": learned}}) == {}
    assert sim_lam_table({"routers": {"gpt-5": {"kind": "single", "points": []}}}) == {}


def test_train_on_logs_with_progress_says_which_model_each_type_needs(tmp_path, capsys):
    """ScienceWorld-like logs (per-turn progress): after training, one line names per action type the
    model best when it was due in hindsight."""
    import numpy as np

    from mtrouter_jax.logs.io import Episode, Turn, write_episodes

    names, rng, eps = default_pool().names, np.random.default_rng(0), []
    for i in range(40):
        model, p = (names[0], 0.9) if i % 2 else (names[-1], 0.3)  # names[0] hits the due act far more often
        turns, score = [], 0.0
        for hit in list(rng.random(6) < p) + [True]:
            score += 10.0 if hit else 0.0
            turns.append(Turn(model, 100, 0, 10, 1e-4, "act" if hit else "explore", None, 1.0, progress=score))
        eps.append(Episode(f"e{i}", "t", score, None, names, tuple(turns), (-100.0, 100.0), "live",
                           {"initial_score": 0.0}))
    write_episodes(tmp_path / "d.jsonl", eps)
    capsys.readouterr()
    assert main(["train", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "ck"), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert f"best when due (mean gain a turn, % of the score range): act {names[0]} " in out
    assert "draft escalations:" in out
