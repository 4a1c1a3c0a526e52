"""Bad input to `mtrouter` (issue 20): exit status 2, one line on stderr saying what was wrong and
what to do, no traceback — and nothing simulated, trained or written before the check."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mtrouter_jax.cli import main
from testing.live import free_port


def _error(capsys, argv):
    """(exit status, stderr lines) of ``mtrouter ARGV``; argparse errors exit through SystemExit."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


def _one_line(rc, lines, *needles):
    assert rc == 2, (rc, lines)
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize("argv, needles", [
    (["simulate", "--n", "-5"], ["argument --n", "an integer > 0", "'-5'"]),
    (["simulate", "--n", "0"], ["argument --n", "an integer > 0"]),
    (["simulate", "--n", "abc"], ["argument --n", "'abc'"]),
    (["train", "--simulate", "-3"], ["argument --simulate", "an integer >= 0"]),
    (["train", "--simulate", "8", "--epochs", "-1"], ["argument --epochs", "an integer > 0"]),
    (["train", "--simulate", "8", "--ensemble", "0"], ["argument --ensemble"]),
    (["train", "--simulate", "8", "--lr", "nan"], ["argument --lr", "a number > 0"]),
    (["train", "--simulate", "8", "--aec-scale", "-1"], ["argument --aec-scale", ">= 0"]),
    (["run", "--episodes", "0"], ["argument --episodes"]),
    (["run", "--rho", "1.5"], ["argument --rho", "[0, 1]"]),
    (["run", "--ensemble", "0"], ["argument --ensemble", "an integer > 0"]),
    (["run", "--snapshot-fits", "0"], ["argument --snapshot-fits", "an integer > 0"]),
    (["sweep", "--ckpt", "x", "--budgets", "0.1", "-1"], ["argument --budgets", "a number > 0"]),
    (["route", "--conversation", "c", "--score", "inf"], ["argument --score", "a finite number"]),
    (["collect", "scienceworld", "--budget", "abc"], ["argument --budget", "a number > 0 USD", "'abc'"]),
    (["collect", "scienceworld", "--budget", "-1"], ["argument --budget", "a number > 0 USD", "'-1'"]),
    (["eval", "scienceworld", "--budgets", "0.1", "abc"], ["argument --budgets", "a number > 0 USD", "'abc'"]),
])
def test_bad_numbers_are_one_line_naming_the_option(tmp_path, capsys, argv, needles):
    out = tmp_path / "out"
    if "--out" not in argv and argv[0] in ("simulate", "train", "run", "collect"):
        argv = [*argv, "--out", str(out)]
    line = _one_line(*_error(capsys, argv), *needles, f"`mtrouter {argv[0]} --help`")
    assert "_budget" not in line and "usage:" not in line
    assert not out.exists()


def test_missing_required_option_is_one_line(capsys):
    _one_line(*_error(capsys, ["simulate", "--out", "x.jsonl"]), "--n", "required")


def test_train_refuses_a_non_empty_out_before_training(tmp_path, capsys):
    out = tmp_path / "ck"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # --simulate would take a while: the refusal must come first (nothing simulated, nothing printed)
    rc, lines = _error(capsys, ["train", "--simulate", "100000", "--out", str(out)])
    _one_line(rc, lines, str(out), "not empty", "new directory")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_train_accepts_an_empty_out_dir_check():
    from mtrouter_jax.cli_commands import check_fresh_dir

    check_fresh_dir("/nonexistent/dir/for/sure")  # a new directory is fine


def test_empty_jsonl_says_the_file_is_empty(tmp_path, capsys):
    empty = tmp_path / "round1.jsonl"
    empty.write_text("\n\n")
    line = _one_line(*_error(capsys, ["train", "--data", str(empty), "--out", str(tmp_path / "ck")]),
                     str(empty), "is empty", "mtrouter simulate", "mtrouter serve --log")
    assert "give --data" not in line
    assert not (tmp_path / "ck").exists()


def test_all_unscored_log_says_how_to_score(tmp_path, capsys):
    from mtrouter_jax.core.pool import default_pool
    from mtrouter_jax.logs.io import Episode, Turn, write_episodes

    turns = (Turn("gpt-5", 900, 0, 40, 0.001, "search", None, 0.5),)
    write_episodes(tmp_path / "u.jsonl", [Episode("u1", "qa", None, None, default_pool().names, turns, (0.0, 1.0),
                                                  "live", None)])
    rc, lines = _error(capsys, ["train", "--data", str(tmp_path / "u.jsonl"), "--out", str(tmp_path / "ck")])
    assert rc == 2 and "unscored" in lines[-1] and "mtrouter route" in lines[-1]
    assert not any("Traceback" in x for x in lines)


def test_route_without_a_server_names_the_url(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    _one_line(*_error(capsys, ["route", "--url", url, "--conversation", "c1", "--score", "1"]),
              url, "is `mtrouter serve` running")


def test_route_with_a_wrong_token_says_pass_the_token():
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from mtrouter_jax.cli import build_parser
    from mtrouter_jax.cli_commands import cmd_route
    from mtrouter_jax.core.errors import UsageError
    from testing.live import ServerThread

    app = FastAPI()

    @app.post("/v1/mtrouter/conversations/{cid}/finish")
    def finish(cid: str):
        return JSONResponse({"error": {"message": "missing or wrong bearer token", "type": "auth"}}, status_code=401)

    with ServerThread(app) as s:  # (no capsys here: uvicorn's log handlers would outlive the capture)
        args = build_parser().parse_args(["route", "--url", s.url, "--conversation", "c1", "--score", "1"])
        with pytest.raises(UsageError) as e:
            cmd_route(args)
    msg = str(e.value)
    assert "\n" not in msg and "server answered 401" in msg and "wrong bearer token" in msg and "--token" in msg


def test_serve_with_a_missing_key_is_one_line(tmp_path, capsys, monkeypatch):
    pool = tmp_path / "pool.toml"
    pool.write_text('[[model]]\nname = "m"\nprice_input = 1.0\nprice_output = 2.0\n'
                    '[model.endpoint]\nbase_url = "http://127.0.0.1:9/v1"\nmodel_id = "m"\n'
                    'api_key_env = "MTROUTER_TEST_UNSET_KEY"\n')
    monkeypatch.delenv("MTROUTER_TEST_UNSET_KEY", raising=False)
    capsys.readouterr()
    rc = main(["serve", "--pool", str(pool), "--router", "fixed:m", "--port", str(free_port())])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    last = [x for x in err.splitlines() if x.strip()][-1]  # after the start-up log lines
    assert last.startswith("mtrouter serve: error: ") and "MTROUTER_TEST_UNSET_KEY" in last
    assert "--allow-missing-keys" in last


def test_route_help_documents_every_option():
    from mtrouter_jax.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "cmd").choices["route"]
    undocumented = [a.option_strings for a in sub._actions if a.option_strings and not a.help]
    assert not undocumented


def test_library_noise_is_quiet_unless_the_user_set_a_level():
    """jax's "Unable to initialize backend 'tpu'" (INFO) and orbax's absl INFO lines stay quiet even
    when the root logger is at INFO (as `serve` sets it); a level the user set is left alone."""
    code = ("import logging, sys\nlogging.basicConfig(level=logging.INFO)\n"
            "logging.getLogger('mine').setLevel(logging.DEBUG)\n"
            "from mtrouter_jax.cli import main\nmain(['pool'])\n"
            "import jax\njax.devices()\nfrom absl import logging as al\nal.info('absl-chatter')\n"
            "logging.getLogger('mine').info('user-line')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert "Unable to initialize backend" not in r.stderr and "absl-chatter" not in r.stderr, r.stderr[-2000:]
    assert "user-line" in r.stderr


def test_our_warnings_print_as_one_line_naming_the_command(tmp_path):
    """A TrainingQualityWarning from `mtrouter train` (too few episodes to tell the models apart) is one
    line on stderr, `mtrouter train: warning: ...`, without the library source line that raised it."""
    import subprocess
    import sys

    from mtrouter_jax.core.pool import default_pool
    from mtrouter_jax.logs.io import Episode, Turn, write_episodes

    names = default_pool().names
    eps = [Episode(f"e{i}", "t", float(i % 2), None, names,
                   tuple(Turn(names[(i + j) % 2], 100, 0, 10, 1e-4, "search", None, 1.0) for j in range(3)),
                   (0.0, 1.0)) for i in range(12)]
    write_episodes(tmp_path / "d.jsonl", eps)
    r = subprocess.run([sys.executable, "-m", "mtrouter_jax.cli", "train", "--data", str(tmp_path / "d.jsonl"),
                        "--out", str(tmp_path / "ck"), "--epochs", "1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if "TrainingQualityWarning" in x or "warning:" in x]
    assert any(x.startswith("mtrouter train: warning: ") for x in lines), r.stderr
    assert not any("TrainingQualityWarning" in x for x in lines) and "train_checkpoint(" not in r.stderr
