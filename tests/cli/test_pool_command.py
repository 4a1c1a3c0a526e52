"""`mtrouter pool`: the embedded default pool file, printed or written (a starting point to edit)."""

from __future__ import annotations

import pytest

from mtrouter_jax.cli import main
from mtrouter_jax.core.pool import default_pool, default_pool_text, load_pool


def test_pool_prints_the_default_pool(capsys):
    assert main(["pool"]) == 0
    out = capsys.readouterr().out
    assert out == default_pool_text()
    assert all(f'api_key_env = "{m.endpoint.api_key_env}"' in out for m in default_pool().models)


def test_pool_out_writes_a_loadable_file_and_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "pool.toml"
    assert main(["pool", "--out", str(path)]) == 0
    assert load_pool(path).to_dict()["model"] == default_pool().to_dict()["model"]
    assert f"--pool {path}" in capsys.readouterr().err
    path.write_text("# mine\n")
    assert main(["pool", "--out", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "--force" in err
    assert path.read_text() == "# mine\n"
    assert main(["pool", "--out", str(path), "--force"]) == 0
    assert path.read_text() == default_pool_text()


def test_written_pool_is_accepted_by_simulate(tmp_path):
    path = tmp_path / "pool.toml"
    assert main(["pool", "--out", str(path)]) == 0
    out = tmp_path / "s.jsonl"
    assert main(["simulate", "--n", "2", "--out", str(out), "--pool", str(path), "--no-features"]) == 0
    assert out.stat().st_size > 0


@pytest.mark.parametrize("edit, message", [
    (("price_output = 10.0", "price_ouput = 10.0"),
     "model 'gpt-5': unknown key 'price_ouput' (did you mean 'price_output'?)"),
    (('base_url = "https://api.openai.com/v1"', 'baseurl = "https://api.openai.com/v1"'),
     "model 'gpt-5': [model.endpoint]: unknown key 'baseurl' (did you mean 'base_url'?)"),
])
def test_a_typo_in_the_pool_file_is_one_line_naming_the_model(tmp_path, capsys, edit, message):
    path = tmp_path / "pool.toml"
    path.write_text(default_pool_text().replace(*edit, 1))
    capsys.readouterr()
    assert main(["simulate", "--n", "2", "--out", str(tmp_path / "s.jsonl"), "--pool", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"mtrouter simulate: error: {path}: {message}\n"
    assert not (tmp_path / "s.jsonl").exists()
