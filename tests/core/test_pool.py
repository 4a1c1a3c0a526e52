"""Pool files: the default pool loads; every class of bad input names file, field and problem."""

import pytest

from mtrouter_jax.core.pool import PoolError, default_pool, load_pool

GOOD = """
[pool]
name = "tiny"

[[model]]
name = "a"
price_input = 1.0
price_cached_input = 0.1
price_output = 4.0
[model.sim]
success = { search = 0.5, file = 0.5, python = 0.5, reasoning = 0.5, answer = 0.5 }
error_rate = 0.1
severity_mix = [0.5, 0.3, 0.2]
output_tokens = 400
[model.endpoint]
base_url = "https://example.invalid/v1"
model_id = "a-1"
api_key_env = "A_API_KEY"

[[model]]
name = "b"
price_input = 0.2
price_output = 0.8
"""


def test_default_pool_loads():
    pool = default_pool()
    assert pool.names == ("gpt-5", "deepseek-v3.2", "minimax-m2", "kimi-k2", "gemini-2.5-flash-lite",
                          "gpt-oss-120b")
    assert all(m.sim is not None and m.price_cached_input <= m.price_input for m in pool.models)
    assert all(m.endpoint is not None and m.endpoint.api_key_env for m in pool.models)


def test_good_file_loads(tmp_path):
    path = tmp_path / "pool.toml"
    path.write_text(GOOD)
    pool = load_pool(path)
    assert pool.name == "tiny" and pool.names == ("a", "b")
    assert pool["b"].price_cached_input == 0.2  # defaults to the uncached price
    assert load_pool(str(path)).to_dict() == pool.to_dict()


BAD = {
    # case: (edit of GOOD, field the message must name, problem the message must state)
    "missing price": (("price_output = 4.0\n", ""), "price_output", "missing"),
    "negative price": (("price_input = 1.0", "price_input = -1.0"), "price_input", ">= 0"),
    "cached above input": (("price_cached_input = 0.1", "price_cached_input = 2.0"), "price_cached_input",
                           "exceeds price_input"),
    "severity_mix sum": (("[0.5, 0.3, 0.2]", "[0.5, 0.3, 0.3]"), "severity_mix", "summing to 1"),
    "severity_mix length": (("[0.5, 0.3, 0.2]", "[0.5, 0.5]"), "severity_mix", "3 non-negative"),
    "inline api key": (('api_key_env = "A_API_KEY"', 'api_key = "sk-secret"'), "api_key",
                       "must not be stored"),
    "duplicate names": (('name = "b"', 'name = "a"'), "model", "duplicate model name 'a'"),
    "invalid toml": (("price_output = 0.8", "price_output = = 0.8"), "", "not valid TOML"),
    "unknown key": (("price_output = 0.8", "price_output = 0.8\nprice_outptu = 1.0"), "model 'b'",
                    "unknown key 'price_outptu' (did you mean 'price_output'?)"),
    "unknown endpoint key": (('model_id = "a-1"', 'model_id = "a-1"\nbaseurl = "x"'), "model 'a'",
                             "[model.endpoint]: unknown key 'baseurl' (did you mean 'base_url'?)"),
    "unknown sim key": (("error_rate = 0.1", "error_rate = 0.1\nwobble = 2"), "model 'a'",
                        "[model.sim]: unknown key 'wobble' (known keys: success, error_rate"),
    "unnamed model": (('name = "b"', 'nam = "b"'), "model[1]", "name: expected a non-empty string"),
    "success out of range": (("python = 0.5", "python = 1.5"), "success.python", "<= 1.0"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_pool_file_gives_clear_error(tmp_path, case):
    (old, new), field, problem = BAD[case]
    assert old in GOOD
    path = tmp_path / "bad_pool.toml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(PoolError) as e:
        load_pool(path)
    msg = str(e.value)
    assert str(path) in msg and field in msg and problem in msg, msg
    if case == "inline api key":
        assert "sk-secret" not in msg  # never echo a secret


def test_typo_names_the_model_and_the_key_it_meant(tmp_path):
    path = tmp_path / "pool.toml"
    path.write_text(GOOD.replace("price_output = 4.0", "price_ouput = 4.0"))
    with pytest.raises(PoolError) as e:
        load_pool(path)
    assert str(e.value) == f"{path}: model 'a': unknown key 'price_ouput' (did you mean 'price_output'?)"


def test_misspelt_model_array_is_named(tmp_path):
    path = tmp_path / "pool.toml"
    path.write_text(GOOD.replace("[[model]]", "[[models]]"))
    with pytest.raises(PoolError, match=r"found 'models': did you mean \[\[model\]\]"):
        load_pool(path)


def test_default_pool_text_is_the_default_pool():
    import tomllib

    from mtrouter_jax.core.pool import default_pool_text, pool_from_dict

    text = default_pool_text()
    assert text.startswith("# Default model pool")
    assert pool_from_dict(tomllib.loads(text)).to_dict() == default_pool().to_dict()


def test_missing_file_and_empty_pool(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_pool(tmp_path / "nope.toml")
    path = tmp_path / "empty.toml"
    path.write_text('[pool]\nname = "x"\n')
    with pytest.raises(PoolError, match="non-empty array"):
        load_pool(path)


def test_tool_heuristic_table_is_kept(tmp_path):
    path = tmp_path / "pool.toml"
    path.write_text(GOOD + '\n[tool_heuristic.tools]\nsearch = "cheap"\n[tool_heuristic.classes]\ncheap = "b"\n')
    pool = load_pool(path)
    assert pool.tool_heuristic == {"tools": {"search": "cheap"}, "classes": {"cheap": "b"}}
    assert load_pool(path).to_dict()["tool_heuristic"] == pool.tool_heuristic
    assert pool.subset(["b"]).tool_heuristic == pool.tool_heuristic
    assert default_pool().tool_heuristic is None and "tool_heuristic" not in default_pool().to_dict()
    path.write_text('tool_heuristic = 3\n' + GOOD)
    with pytest.raises(PoolError, match="tool_heuristic: expected a table"):
        load_pool(path)
