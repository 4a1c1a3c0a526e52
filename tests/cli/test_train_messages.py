"""What `mtrouter train` says about a log far too small to learn from (issue 20)."""

from __future__ import annotations

from mtrouter_jax.cli import main


def test_four_episodes_warn_and_print_no_nan_baseline(tmp_path, capsys):
    log = tmp_path / "e.jsonl"
    assert main(["simulate", "--n", "4", "--out", str(log)]) == 0
    assert main(["train", "--data", str(log), "--out", str(tmp_path / "ck"), "--epochs", "1",
                 "--ensemble", "1", "--bootstrap-iterations", "0"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "only 4 episodes: far too few" in out
    assert "nan" not in out and "no validation split" in out
