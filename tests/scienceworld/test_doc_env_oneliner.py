"""docs/scienceworld.md's Gymnasium one-liner, run as written in a fresh interpreter (issue 20): it
prints a task name and exits cleanly — no 'Exception ignored' noise on stderr from the JVM or py4j
being torn down at interpreter exit."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path


from testing.scienceworld import skip_without_scienceworld

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "scienceworld.md"


def doc_env_oneliner() -> str:
    """The ``python -c '... gym.make("mtrouter/ScienceWorldRouting-v0") ...'`` line of the doc."""
    lines = [ln.strip() for ln in DOC.read_text(encoding="utf-8").splitlines()
             if re.match(r"\s*python -c .*mtrouter/ScienceWorldRouting-v0", ln)]
    assert len(lines) == 1, f"docs/scienceworld.md: expected one Gymnasium env one-liner, found {lines}"
    return lines[0]


def test_doc_env_oneliner_exits_without_exception_noise():
    skip_without_scienceworld()
    argv = shlex.split(doc_env_oneliner())
    assert argv[:2] == ["python", "-c"], argv
    r = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Exception ignored" not in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert re.fullmatch(r"[a-z0-9-]+", r.stdout.strip().splitlines()[-1]), r.stdout
