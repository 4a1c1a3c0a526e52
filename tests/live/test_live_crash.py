"""``kill -9`` of a loaded ``mtrouter serve`` process: the log keeps whole lines and every acknowledged episode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from testing.live import FakeUpstream, ServerThread, free_port
from mtrouter_jax.logs.io import read_episodes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def pool_file(path, base_url: str):
    models = [("cheap", 0.2, 0.4), ("mid", 1.0, 2.0), ("strong", 5.0, 20.0)]
    path.write_text("".join(f'[[model]]\nname = "{n}"\nprice_input = {pi}\nprice_output = {po}\n'
                            f'[model.endpoint]\nbase_url = "{base_url}"\nmodel_id = "fake-{n}"\n'
                            for n, pi, po in models))
    return path


def test_sigkill_under_load_leaves_whole_lines_and_every_acknowledged_episode(tmp_path):
    fake = FakeUpstream(record=False, latency=0.01)
    with ServerThread(fake.app()) as up:
        port, log = free_port(), tmp_path / "live.jsonl"
        cmd = [sys.executable, "-m", "mtrouter_jax.live.server.app", "--pool", str(pool_file(tmp_path / "pool.toml",
               up.url + "/v1")), "--log", str(log), "--port", str(port), "--router", "tool-heuristic",
               "--max-retries", "0"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):  # JAX import and first compile: seconds
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    if proc.poll() is not None:
                        pytest.fail(f"server exited: {proc.stderr.read()[-2000:]}")
                    time.sleep(0.1)
            acknowledged: list[str] = []
            lock, enough = threading.Lock(), threading.Event()

            def conversation(i: int) -> None:
                cid = f"crash-{i}"
                msgs = [{"role": "user", "content": f"task {i}"}]
                try:
                    with httpx.Client(base_url=base, timeout=10) as http:
                        for _ in range(3):
                            r = http.post("/v1/chat/completions", json={"model": "mtrouter", "messages": msgs},
                                          headers={"X-MTRouter-Conversation": cid})
                            r.raise_for_status()
                            msgs += [r.json()["choices"][0]["message"], {"role": "user", "content": "go on"}]
                        r = http.post(f"/v1/mtrouter/conversations/{cid}/finish", json={"score": 0.5, "score_range": [0, 1]})
                        if r.status_code == 200:
                            with lock:
                                acknowledged.append(cid)
                                if len(acknowledged) >= 12:
                                    enough.set()
                except httpx.HTTPError:
                    pass  # the server was killed under this conversation

            with ThreadPoolExecutor(8) as ex:
                futures = [ex.submit(conversation, i) for i in range(200)]
                assert enough.wait(120), "the proxy did not finish 12 conversations"
                os.kill(proc.pid, signal.SIGKILL)  # mid-load: other conversations are between turns/finishes
                proc.wait(10)
                for f in futures:
                    f.result()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert len(acknowledged) < 200  # it really died mid-way
    episodes = read_episodes(log)  # raises on any partial or corrupt line
    logged = {e.episode_id for e in episodes}
    assert set(acknowledged) <= logged  # a 200 from finish means the line is on disk
    assert all(len(e.turns) == 3 and e.score == 0.5 for e in episodes)
    assert log.read_bytes().endswith(b"\n")
