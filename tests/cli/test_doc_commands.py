"""Every fenced command block of README.md and docs/live_loop.md runs, as written (issue 20).

Each document is run top to bottom in a fresh directory: ``export`` sets the variables, ``python -c``
runs its code, ``mtrouter ...`` runs the CLI (in this process). Every ``mtrouter`` command is first
parsed by the real parser, skipped or not, so an option renamed in the code fails here. What the
test changes, and only that:

* the network: ``mtrouter pool --out FILE`` is followed by pointing FILE's ``base_url``s at a
  loopback fake upstream (testing.live.FakeUpstream), and a ``serve`` without ``--pool`` gets the
  default pool so redirected; ``mtrouter serve`` starts its app on a free
  loopback port in a thread instead of blocking (a new ``serve`` stops the previous one, as the
  docs say to), and ``127.0.0.1:8000`` in the other commands is rewritten to that port;
* an agent: after each ``serve``, a scripted agent holds a few conversations (a real one would hold
  hundreds), and each ``mtrouter route`` command is also run for every one of them (with ``ID``, the
  placeholder, only for them);
* sizes: TINY below (simulate/train/sweep sizes), so that the whole page runs in the suite;
* a ``toml`` block (live_loop's optional tool-heuristic map) is appended to the pool file;
* keys: every key variable of the default pool is set to a dummy (as for a user who has them: the
  README's cheat sheet serves before its live section exports them);
  test_docs_export_every_key_variable checks that the docs' ``export`` lines name them all.

Skipped, with the reason: SKIP below.
"""

from __future__ import annotations

import contextlib
import glob
import io
import re
import shlex
import threading
import time
from pathlib import Path

import openai
import pytest

from mtrouter_jax import cli
from mtrouter_jax.core.pool import default_pool_text
from testing.live import FakeUpstream, ServerThread, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/live_loop.md"]
SKIP = {  # how a command starts -> why the suite does not run it
    "pip install": "installs the package (network); the suite runs on the installed package",
    "python -m pytest": "the test suite itself",
    "mtrouter run": "the main job takes minutes; tests/cli/test_cli.py::test_run_main_job_tiny runs it at tiny "
                    "sizes (MTROUTER_SLOW_TESTS=1)",
    "mtrouter sweep": "compiles a sweep per router (minutes on 2 cores); tests/cli/test_cli.py::test_sweep_writes_results "
                      "runs it on the suite's checkpoint",
    "mtrouter collect scienceworld": "needs ScienceWorld's JVM and minutes; tests/scienceworld/ run collect",
    "mtrouter eval scienceworld": "needs ScienceWorld's JVM and minutes; tests/scienceworld/ run eval",
    "redis-server": "starts a server; tests/live/test_replicas.py and test_live_reload.py start a real one",
    "mtrouter serve --state": "replicas on Redis: tests/live/test_replicas.py and test_live_reload.py run them on a "
                              "real redis-server (the command is still parsed here)",
    "curl": "the admin reload of the replicas above; tests/live/test_live_reload.py reloads across replicas",
    "mtrouter compare-arms": "needs finished episodes of a serve --canary/--shadow (the docs' serve logs none); "
                             "tests/reporting/test_compare_arms.py runs it on such a log",
}
TINY = {  # subcommand -> (option -> value) replaced or added, to fit the suite
    "simulate": {"--n": "12"},
    "train": {"--epochs": "1", "--ensemble": "2", "--bootstrap-iterations": "0", "--batch-size": "32"},
}
N_CONV, N_TURNS = 4, 4
TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
         for n in ("web_search", "python", "read_file")]


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def commands(body: str) -> list[list[str]]:
    """The shell commands of a block: lines joined while a quote is open, comments dropped, ``&&`` split."""
    out, buf = [], ""
    for line in body.splitlines():
        buf = f"{buf}\n{line}" if buf else line
        try:
            argv = shlex.split(buf, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        buf = ""
        while argv:
            cut = argv.index("&&") if "&&" in argv else len(argv)
            out.append(argv[:cut])
            argv = argv[cut + 1:]
    assert not buf, f"unclosed quote in {body!r}"
    return [c for c in out if c]


def skip_reason(argv: list[str]) -> str | None:
    words = " ".join(argv)
    return next((why for start, why in SKIP.items() if words.startswith(start)), None)


def tiny(argv: list[str]) -> list[str]:
    argv = list(argv)
    for opt, value in TINY.get(argv[1], {}).items():
        if opt in argv:
            argv[argv.index(opt) + 1] = value
        else:
            argv += [opt, value]
    return argv


class Session:
    """One document's run: the working directory, the fake upstream, the proxy of the last `serve`."""

    def __init__(self, tmp: Path, upstream_url: str):
        self.tmp, self.upstream_url = tmp, upstream_url
        self.port = free_port()
        self.server = self.thread = None
        self.token = None
        self.conversations: list[str] = []
        self.pool_file: Path | None = None
        self.ran: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # the stand-in for uvicorn.run: start the proxy in a thread and return
    def start(self, app, **_kw):
        import uvicorn

        self.stop()
        self.conversations = []  # the previous server's are gone with it
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            assert time.time() - t0 < 20 and self.thread.is_alive(), "the proxy did not start"
            time.sleep(0.02)

    def stop(self):
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(10)
            self.server = None

    def agent(self, round_tag: str):
        """A scripted agent: N_CONV conversations of up to N_TURNS tool-calling turns, exploring."""
        c = openai.OpenAI(base_url=self.url + "/v1", api_key=self.token or "unused", timeout=20.0, max_retries=0)
        for k in range(N_CONV):
            cid = f"agent-{round_tag}-{k}"
            msgs = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": f"task {cid}"}]
            for _ in range(N_TURNS):
                try:
                    r = c.chat.completions.create(model="mtrouter-explore-0.50", messages=msgs, tools=TOOLS,
                                                  extra_headers={"X-MTRouter-Conversation": cid})
                except openai.APIStatusError as e:  # the budget ran out
                    assert e.status_code == 402
                    break
                m = r.choices[0].message
                msgs.append(m.model_dump(exclude_none=True))
                msgs += [{"role": "tool", "tool_call_id": tc.id, "content": "ok"} for tc in m.tool_calls or []]
            self.conversations.append(cid)

    def mtrouter(self, argv: list[str]) -> None:
        argv = [re.sub(r"127\.0\.0\.1:8000", f"127.0.0.1:{self.port}", a) for a in argv]
        args = [g for a in argv[1:] for g in (sorted(glob.glob(a)) or [a] if "*" in a else [a])]
        sub = args[0]
        if sub in TINY:
            args = tiny(["mtrouter", *args])[1:]
        if sub == "serve":
            self.token = args[args.index("--token") + 1] if "--token" in args else None
            if "--pool" not in args:  # the default pool's real endpoints -> the fake upstream
                args += ["--pool", str(self.redirect(self.tmp / ".default_pool_via_fake_upstream.toml",
                                                     default_pool_text()))]
        if sub == "route":
            cid = args[args.index("--conversation") + 1]
            todo = ([] if cid == "ID" else [cid]) + self.conversations
            if "--url" not in args:
                args += ["--url", self.url]
            for c in todo:
                run = list(args)
                run[run.index("--conversation") + 1] = c
                assert cli.main(run) == 0, run
            self.conversations = []
            return
        assert cli.main(args) == 0, args
        if sub == "pool" and "--out" in args:  # the network: endpoints -> the fake upstream
            self.pool_file = Path(args[args.index("--out") + 1])
            self.redirect(self.pool_file, self.pool_file.read_text())
        if sub == "serve":
            self.agent(f"r{sum(x.startswith('mtrouter serve') for x in self.ran)}")

    def redirect(self, path: Path, pool_text: str) -> Path:
        path.write_text(re.sub(r'base_url = "[^"]*"', f'base_url = "{self.upstream_url}"', pool_text))
        return path

    def python_c(self, code: str) -> str:
        code = code.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<python -c>", "exec"), {"__name__": "__main__"})
        return out.getvalue()

    def run(self, lang: str, body: str, monkeypatch) -> None:
        if lang == "toml":  # live_loop's optional map: into the pool file it describes
            assert self.pool_file is not None, "a toml block before `mtrouter pool --out`"
            self.pool_file.write_text(self.pool_file.read_text() + "\n" + body)
            return
        for argv in commands(body):
            if argv[0] == "mtrouter":
                try:
                    cli.build_parser().parse_args(argv[1:])  # every documented command parses, run or not
                except SystemExit:
                    pytest.fail(f"a documented command does not parse: {' '.join(argv)}")
            if skip_reason(argv):
                continue
            if argv[0] == "export":
                for kv in argv[1:]:
                    k, _, v = kv.partition("=")
                    monkeypatch.setenv(k, v)
            elif argv[:2] == ["mkdir", "-p"]:
                for d in argv[2:]:
                    Path(d).mkdir(parents=True, exist_ok=True)
            elif argv[:2] == ["python", "-c"]:
                printed = self.python_c(argv[2])
                assert printed.strip() in cli._pool(self.pool_file).names, printed
            elif argv[0] == "mtrouter":
                self.mtrouter(argv)
            else:
                pytest.fail(f"no rule to run {argv} (add one here, or a reason to SKIP)")
            self.ran.append(" ".join(argv))


def test_commands_are_found():
    text = (ROOT / "README.md").read_text()
    cmds = [c for lang, b in fenced_blocks(text) if lang == "bash" for c in commands(b)]
    assert ["mtrouter", "run"] in cmds and any(c[:2] == ["python", "-c"] for c in cmds)
    assert ["mtrouter", "pool", "--out", "my_pool.toml"] in cmds and ["mtrouter", "pool"] in cmds


@pytest.mark.parametrize("doc", DOCS)
def test_docs_export_every_key_variable(doc):
    from mtrouter_jax.core.pool import default_pool

    text = (ROOT / doc).read_text()
    exported = {kv.partition("=")[0] for lang, b in fenced_blocks(text) if lang == "bash"
                for c in commands(b) if c[0] == "export" for kv in c[1:]}
    assert {m.endpoint.api_key_env for m in default_pool().models} <= exported, exported


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_block_runs(doc, tmp_path, monkeypatch):
    import uvicorn

    from mtrouter_jax.core.pool import default_pool

    for m in default_pool().models:
        monkeypatch.setenv(m.endpoint.api_key_env, "sk-dummy")
    monkeypatch.chdir(tmp_path)
    with ServerThread(FakeUpstream(natural_tokens=150, record=False).app()) as up:
        s = Session(tmp_path, up.url + "/v1")
        monkeypatch.setattr(uvicorn, "run", s.start)
        try:
            blocks = [(lang, b) for lang, b in fenced_blocks((ROOT / doc).read_text()) if lang in ("bash", "toml")]
            assert blocks
            for lang, body in blocks:
                s.run(lang, body, monkeypatch)
        finally:
            s.stop()
    assert any(r.startswith("mtrouter serve") for r in s.ran) and any(r.startswith("mtrouter train") for r in s.ran)
    # the loop closed: the last checkpoint was trained on both rounds' logs
    from mtrouter_jax.logs.io import read_episodes

    for log in ("runs/round1.jsonl", "runs/round2.jsonl"):
        eps = read_episodes(tmp_path / log)
        assert eps and all(e.score is not None for e in eps), log
