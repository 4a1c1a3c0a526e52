"""The layout cannot decay: layer contracts (import-linter), a JAX-free ``mtrouter --help``, module sizes."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mtrouter_jax"


def test_import_contracts_hold():
    pytest.importorskip("importlinter", reason="import-linter is in the [test] extra")
    from importlinter.cli import lint_imports

    cwd = os.getcwd()
    os.chdir(ROOT)  # the contracts live in pyproject.toml
    try:
        assert lint_imports(no_cache=True) == 0, "an import breaks a layer contract (run `lint-imports`)"
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["serve", "--help"], ["collect", "--help"]])
def test_cli_help_does_not_import_jax(argv):
    code = ("import sys\nfrom mtrouter_jax.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('jax', 'flax', 'orbax', 'optax') if m in sys.modules)\n"
            "print('HEAVY=' + ','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY=", out.stdout[-300:]


def test_module_sizes():
    sizes = {p.relative_to(ROOT).as_posix(): sum(1 for _ in p.open()) for p in PACKAGE.rglob("*.py")}
    too_long = {p: n for p, n in sizes.items() if n > 400}
    assert not too_long, f"modules over 400 lines (split them): {too_long}"
    assert statistics.median(sizes.values()) <= 200


def test_public_api_is_lazy_and_resolves():
    code = ("import sys, mtrouter_jax\nassert 'jax' not in sys.modules\n"
            "missing = [n for n in mtrouter_jax.__all__ if getattr(mtrouter_jax, n, None) is None]\n"
            "print('MISSING=' + ','.join(missing))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "MISSING=", out.stdout[-300:]
