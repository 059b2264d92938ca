"""The supervisor as a real process: signals, shutdown, and no orphans."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

from .conftest import PY, Repos, pid_alive, spawn_supervisor, stop_process, wait_sync, write_config

# An app whose every process (it forks a worker) records its pid, and that
# ignores SIGTERM when asked to, so the SIGKILL path is exercised.
STUBBORN = r"""
import os, signal, sys, time
ignore = "--ignore-term" in sys.argv
if ignore:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
worker = os.fork()
if worker == 0:
    if ignore:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1)
with open(sys.argv[1], "w") as f:  # the release's folder is read-only: write where the test says
    f.write(f"{os.getpid()} {worker}")
print("up", flush=True)
if not ignore:
    signal.signal(signal.SIGTERM, lambda *a: (os.kill(worker, signal.SIGTERM), sys.exit(0)))
while True:
    time.sleep(1)
"""


def _status(cfg_text: str) -> dict:
    port = re.search(r'\[control\]\nlisten = "127.0.0.1:(\d+)"', cfg_text)[1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
        return json.load(resp)


def _start(tmp_path: Path, repos: Repos, *args: str, stop_timeout: float = 5) -> tuple[subprocess.Popen, list[int]]:
    (repos.work / "stubborn.py").write_text(STUBBORN)
    cfg = write_config(tmp_path / "c.toml", repos, ready={"http": None, "min_uptime": 0.2},
                       app={"command": [PY, "stubborn.py", str(tmp_path / "pids"), *args], "listen": None,
                            "stop_timeout": stop_timeout},
                       watch="enabled = false")
    proc = spawn_supervisor(cfg)
    pids_file = tmp_path / "pids"
    wait_sync(lambda: pids_file.exists() and len(pids_file.read_text().split()) == 2, 30, "the app to start")
    pids = [int(p) for p in pids_file.read_text().split()]
    wait_sync(lambda: _status(cfg.read_text())["child_pid"] == pids[0], 30, "status to show the child")
    return proc, pids


def test_sigterm_stops_the_app_gracefully_and_exits_0(tmp_path: Path, repos: Repos) -> None:
    proc, pids = _start(tmp_path, repos)
    out = stop_process(proc, signal.SIGTERM)
    assert proc.returncode == 0, out
    assert "stopped" in out and "Traceback" not in out
    assert not any(pid_alive(p) for p in pids)


def test_sigint_too(tmp_path: Path, repos: Repos) -> None:
    proc, pids = _start(tmp_path, repos)
    out = stop_process(proc, signal.SIGINT)
    assert proc.returncode == 0, out
    assert not any(pid_alive(p) for p in pids)


def test_app_ignoring_sigterm_is_killed_after_stop_timeout(tmp_path: Path, repos: Repos) -> None:
    proc, pids = _start(tmp_path, repos, "--ignore-term", stop_timeout=1)
    out = stop_process(proc, signal.SIGTERM)
    assert proc.returncode == 0, out
    assert "did not stop within 1.0s; sending SIGKILL" in out
    assert not any(pid_alive(p) for p in pids)


def test_sigkill_of_the_supervisor_leaves_no_orphan(tmp_path: Path, repos: Repos) -> None:
    proc, pids = _start(tmp_path, repos)
    proc.kill()
    proc.wait(10)
    # The master dies with us (PR_SET_PDEATHSIG); its forked worker, which does not
    # watch its parent, is killed by the guard with the rest of the group.
    wait_sync(lambda: not pid_alive(pids[0]), 10, "the app master to die with the supervisor")
    wait_sync(lambda: not pid_alive(pids[1]), 10, "the app worker to die with the supervisor")


def test_startup_errors_are_one_line(tmp_path: Path, repos: Repos) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cfg = write_config(tmp_path / "c.toml", repos, app={"listen": f"127.0.0.1:{port}"})
    result = subprocess.run([PY, "-m", "supervisor", "run", "--config", str(cfg)], capture_output=True,
                            text=True, timeout=60, env=os.environ.copy())
    taken.close()
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert f'[app] listen = "127.0.0.1:{port}": cannot bind' in result.stderr.strip().splitlines()[-1]
