"""Real agent frameworks from PyPI driven end to end through the proxy (docs/agents.md, run verbatim).

Each test takes its recipe from docs/agents.md (the fenced block after a ``<!-- test:NAME -->``
marker), so the page cannot rot: the ``mtrouter serve`` line is parsed with the real option parser
and built with ``router_from_options`` (its ``--pool``/``--log`` replaced by a pool of fake endpoints and a
temporary log), and each framework's block runs in a subprocess with only
``http://127.0.0.1:8000`` replaced by the test proxy's address. The fake upstream
(``testing.agents.ScriptedUpstream``) answers with a scripted shell task (``echo hello > x.txt``,
``cat x.txt``, submit) in the format each framework asks for; the framework really executes the
commands and feeds their output back. Then the log must hold the episode: >= 3 turns, each with a
propensity in (0, 1], and the reported score.

The subprocesses are isolated: HOME/XDG dirs in tmp (mini-swe-agent reads a global ``.env``),
framework env vars removed, and a ``sitecustomize`` network guard that refuses and records any
DNS lookup or connection to a non-loopback host (litellm's price-map download, Agents SDK
tracing, ...). A framework that is not installed is skipped (``pip install -e ".[agents]"`` for the
Agents SDK and LangChain, ``".[swe-agent]"`` for mini-swe-agent); it is looked up without importing
it here (mini-swe-agent creates its config dir and loads its ``.env`` at import).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import shlex
import site
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import mtrouter_jax
from testing.agents import SCRIPT, ScriptedUpstream, write_network_guard
from testing.live import KEY_ENV, ServerThread, make_pool
from mtrouter_jax.logs.io import read_episodes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DOC = Path(__file__).resolve().parents[2] / "docs" / "agents.md"
DOC_URL = "http://127.0.0.1:8000"
FRAMEWORK_TIMEOUT = 180  # s; a run takes a few seconds (mostly imports), much more on a loaded machine
_DROP_ENV = re.compile(r"^(OPENAI_|LITELLM_|MSWEA_|LANGCHAIN_|LANGSMITH_|ANTHROPIC_|HF_|XDG_)"
                       r"|^(PYTHONPATH|PYTHONSTARTUP|PYTHONUSERBASE|HTTPS?_PROXY|ALL_PROXY|NO_PROXY)$", re.IGNORECASE)


def doc_block(name: str) -> tuple[str, str]:
    """(language, text) of the fenced block right after ``<!-- test:NAME -->`` in docs/agents.md."""
    m = re.search(rf"<!-- test:{re.escape(name)} -->\s*\n```(\w+)\n(.*?)\n```", DOC.read_text(encoding="utf-8"),
                  re.DOTALL)
    assert m, f"docs/agents.md: no block marked <!-- test:{name} -->"
    return m.group(1), m.group(2)


def need(module: str, dist: str, extra: str = "agents") -> None:
    """Skip unless distribution ``dist`` is installed and ``module`` importable (found, not imported:
    no import side effects in the test process)."""
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{dist} is not installed (pip install -e '.[{extra}]')")
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{dist} is installed but {module!r} is not importable")


@pytest.fixture
def proxy(tmp_path, monkeypatch):
    """Scripted fake upstream + the proxy that docs/agents.md's ``mtrouter serve`` line describes."""
    from mtrouter_jax.live.router import router_from_options
    from mtrouter_jax.live.server.app import add_serve_args, create_app

    monkeypatch.setenv(KEY_ENV, "sk-test-not-a-real-key")
    lang, line = doc_block("serve")
    argv = shlex.split(line)
    assert lang == "bash" and argv[:2] == ["mtrouter", "serve"], line
    p = argparse.ArgumentParser()
    add_serve_args(p)
    a = p.parse_args(argv[2:])
    assert a.pool and a.log_path and a.checkpoint is None  # replaced below
    fake = ScriptedUpstream()
    log = tmp_path / "live.jsonl"
    with ServerThread(fake.app()) as up:
        router = router_from_options(a.checkpoint, make_pool(up.url + "/v1"), a.router, a.explore, a.tool_map, a.lam,
                              a.seed, log, a.log_text, a.strict_cache)
        app = create_app(router, token=a.token, log_text=a.log_text, timeout=10.0, max_retries=0)
        with ServerThread(app) as srv:
            srv.fake, srv.log, srv.token, srv.router = fake, log, a.token, router
            yield srv


def run_block(name: str, proxy, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """Run a docs block in a fresh working dir with an isolated env; returns (process, workdir)."""
    lang, text = doc_block(name)
    text = text.replace(DOC_URL, proxy.url)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    home = tmp_path / "home"
    guard = tmp_path / "guard"
    write_network_guard(guard)
    pythonpath = os.pathsep.join([str(guard), str(Path(mtrouter_jax.__file__).resolve().parents[1])])
    env = {k: v for k, v in os.environ.items() if not _DROP_ENV.search(k)}
    bindir = str(Path(sys.executable).parent)  # `python`, `mini`, `mtrouter` of this interpreter
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"),
               XDG_DATA_HOME=str(home / ".local" / "share"), PATH=bindir + os.pathsep + env.get("PATH", ""),
               PYTHONPATH=pythonpath, MTROUTER_NET_GUARD_LOG=str(tmp_path / "net.log"),
               NO_PROXY="127.0.0.1,localhost", MSWEA_SILENT_STARTUP="1", PYTHONDONTWRITEBYTECODE="1",
               # a proxy error fails the run at once instead of mini's ~4 minutes of back-off
               MSWEA_MODEL_RETRY_STOP_AFTER_ATTEMPT="1",
               # a user-site install stays visible under the fake HOME
               PYTHONUSERBASE=site.getuserbase(),
               # as in a user's shell: with a key set, an un-disabled Agents SDK tracer would post to
               # api.openai.com (the guard catches it)
               OPENAI_API_KEY="sk-test-not-a-real-key")
    if lang == "python":
        script = tmp_path / f"{name}.py"
        script.write_text(text)
        cmd = [sys.executable, str(script)]
    else:
        assert lang == "bash", lang
        cmd = ["bash", "-euo", "pipefail", "-c", text]
    r = subprocess.run(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=FRAMEWORK_TIMEOUT)
    assert r.returncode == 0, f"{name} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    net = tmp_path / "net.log"
    assert not net.exists(), f"{name} tried to reach the network: {net.read_text()}"
    return r, work


def check_run(proxy, work: Path, *, n_requests: int, bash_tool: bool) -> None:
    """The agent executed the script and fed the results back through the proxy."""
    assert (work / "x.txt").read_text() == "hello\n"
    fake = proxy.fake
    assert len(fake.requests) == n_requests
    cat_obs = fake.last_observation(fake.requests[2])  # the request after `cat x.txt`
    assert "hello" in cat_obs
    for body, hdr in zip(fake.requests, fake.headers):
        assert body["model"].startswith("fake-")  # the proxy resolved the routed name to a pool model
        assert not any(k.startswith("x-mtrouter") for k in hdr)  # routing headers stay at the proxy
        assert any(t["function"]["name"] == "bash" for t in body.get("tools") or []) == bash_tool


def check_logged(proxy, conversation: str, *, tools: list) -> None:
    """The log holds the episode with every turn's tool type, propensity and the reported score."""
    eps = [e for e in read_episodes(proxy.log) if e.meta.get("conversation") == conversation]  # (derived ids: 
    # the episode id adds a per-process run id)
    assert len(eps) == 1, [e.episode_id for e in read_episodes(proxy.log)]
    (ep,) = eps
    assert ep.source == "live" and ep.budget == pytest.approx(0.5)
    assert len(ep.turns) >= 3 and [t.tool for t in ep.turns] == tools  # docs/agents.md, "What the log holds"
    assert all(t.model in proxy.router.pool.names for t in ep.turns)
    assert all(t.propensity is not None and 0.0 < t.propensity <= 1.0 for t in ep.turns), \
        [t.propensity for t in ep.turns]
    assert ep.score == 1.0 and ep.score_range == (0.0, 1.0) and not ep.meta.get("unscored")
    assert 0 < ep.total_cost <= 0.5


def test_mini_swe_agent_cli(proxy, tmp_path):
    """`mini` (tool-call mode) with the conversation header, then `mtrouter route` reports the score."""
    need("minisweagent", "mini-swe-agent", "swe-agent")
    r, work = run_block("mini-cli", proxy, tmp_path)
    check_run(proxy, work, n_requests=len(SCRIPT), bash_tool=True)
    info = httpx.get(f"{proxy.url}/v1/mtrouter/conversations/swe-task-1",
                     headers={"Authorization": f"Bearer {proxy.token}"}).json()
    assert info["turns"] == len(SCRIPT) and not info["finished"] and info["explore"]
    r2, _ = run_block("route", proxy, tmp_path)
    assert '"finished": true' in r2.stdout
    check_logged(proxy, "swe-task-1", tools=["bash"] * len(SCRIPT))


def test_mini_swe_agent_python_without_header(proxy, tmp_path):
    """mini-swe-agent's Python API (text-based mode), no header: the derived id finds the episode."""
    need("minisweagent", "mini-swe-agent", "swe-agent")
    r, work = run_block("mini-python", proxy, tmp_path)
    check_run(proxy, work, n_requests=len(SCRIPT), bash_tool=False)
    cid = r.stdout.split()[-3]
    assert cid.startswith("h-") and r.stdout.strip().endswith(f"{len(SCRIPT)} turns")
    check_logged(proxy, cid, tools=["bash"] * len(SCRIPT))  # commands in ```mswea_bash_command blocks


def test_openai_agents_sdk(proxy, tmp_path):
    """OpenAI Agents SDK (Chat Completions model, function tool), header via default_headers."""
    need("agents", "openai-agents")
    r, work = run_block("openai-agents", proxy, tmp_path)
    check_run(proxy, work, n_requests=len(SCRIPT) + 1, bash_tool=True)  # + the final text answer
    assert "Done" in r.stdout
    check_logged(proxy, "agents-task-1", tools=["bash"] * len(SCRIPT) + ["reasoning"])


def test_langchain(proxy, tmp_path):
    """LangChain ChatOpenAI with bound tools, header via default_headers."""
    need("langchain_openai", "langchain-openai")
    r, work = run_block("langchain", proxy, tmp_path)
    check_run(proxy, work, n_requests=len(SCRIPT) + 1, bash_tool=True)
    assert "Done" in r.stdout
    check_logged(proxy, "langchain-task-1", tools=["bash"] * len(SCRIPT) + ["reasoning"])
