"""Zero-downtime, health-gated swaps and automatic rollback, under real load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from supervisor import config
from supervisor.config import ConfigError
from supervisor.process import listener

from .conftest import (DEMO_APP, PY, Client, Repos, aiohttp_app, deployed, eventually, git, gunicorn_app, running,
                       supervised, uvicorn_app, write_config)
from .load import Load



async def _restarted_from(c: Client, pid: int) -> int | None:
    st = await c.status()
    return st["child_pid"] if st["child_pid"] not in (None, pid) and st["state"] == "running" else None


async def test_deploys_and_file_changes_under_load_fail_no_request(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos, watch="debounce_ms = 50")
    async with supervised(cfg, session) as (sup, c):
        commits = {repos.head()}
        with Load(sup.web.port, clients=8, max_seconds=60) as load:
            for i in range(3):
                sha = repos.commit({"message.txt": f"release {i}\n"}, f"release {i}")
                commits.add(sha)
                await c.push(repos, sha)
                await deployed(c, sha)
            pid = (await c.status())["child_pid"]
            (repos.work / "message.txt").write_text("edited on the box\n")
            await eventually(lambda: _restarted_from(c, pid), what="the file-change restart")
            await eventually(lambda: load.results.ok > 50, what="some load after the restart")
        r = load.stop()
        assert r.failed == 0, (r.failures, r.examples)
        assert r.ok > 100
        assert set(r.commits) <= commits and len(r.commits) == 4  # every release served, nothing else


ROUNDS = int(os.environ.get("PUSHCD_SWAP_ROUNDS", "3"))


SERVERS = {  # the command, and its readiness: uvicorn takes one socket, so no probe of its own
    "gunicorn": (gunicorn_app, {"http": "/", "min_uptime": 0.3}),
    "aiohttp": (aiohttp_app, {"http": "/", "min_uptime": 0.3}),
    "uvicorn": (uvicorn_app, {"http": None, "min_uptime": 1.0}),
}


@pytest.mark.parametrize("server", SERVERS)
async def test_app_server_swaps_under_load_fail_no_request(server: str, repos: Repos, tmp_path: Path,
                                                             session) -> None:
    """A sync server and asyncio ones: deploys and a hand edit, 8 clients, not one failed request."""
    await _swaps_under_load(server, repos, tmp_path, session)


async def test_without_steering_a_shared_socket_still_swaps_gunicorn(monkeypatch, repos: Repos, tmp_path: Path,
                                                                     session) -> None:
    # A kernel or sandbox without reuseport BPF (an option number no kernel knows): the fallback.
    monkeypatch.setattr(listener, "SO_ATTACH_REUSEPORT_CBPF", 0x7FFF)
    sup = await _swaps_under_load("gunicorn", repos, tmp_path, session)
    assert not sup.web.public.steering


async def _swaps_under_load(server: str, repos: Repos, tmp_path: Path, session) -> Any:
    make_command, ready = SERVERS[server]
    cfg = write_config(tmp_path / "c.toml", repos, app={"command": make_command(repos)}, ready=ready)
    async with supervised(cfg, session) as (sup, c):
        with Load(sup.web.port, clients=8, max_requests=10**6, max_seconds=90) as load:
            for i in range(ROUNDS):
                sha = await c.ship(repos, {"message.txt": f"g{i}\n"}, f"g{i}")
            await eventually(lambda: load.results.commits[sha] > 20, what="the last release serving")
            pid = (await c.status())["child_pid"]
            (repos.work / "message.txt").write_text("edited on the box\n")
            await eventually(lambda: _restarted_from(c, pid), what="the file-change restart")
            served = load.results.ok
            await eventually(lambda: load.results.ok > served + 50, what="load served after the restart")
        r = load.stop()
        assert r.failed == 0, (r.failures, r.examples)
        assert sup.web.restarts == ROUNDS + 1
    return sup


BROKEN = {
    "import error": ({"app.py": "import no_such_module_pushcd\n"}, {}, "exited with status 1"),
    "exits at once": ({"app.py": "import sys\nprint('bye', flush=True)\nsys.exit(3)\n"}, {}, "exited with status 3"),
    "never ready": ({"app.py": "import time\nprint('thinking', flush=True)\ntime.sleep(600)\n"},
                    {"timeout": 2}, "not ready within 2s"),
    "probe answers 500": ({"app.py": DEMO_APP.replace("self.send_response(200)",
                                                 "self.send_response(500 if self.path == '/health' else 200)")},
                          {"timeout": 2}, "answered 500"),
    "before_restart fails": ({"broken-flag": "x"}, {}, "before_restart"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
async def test_broken_commit_keeps_the_old_release_serving(kind: str, repos: Repos, tmp_path: Path, session) -> None:
    files, ready, reason = BROKEN[kind]
    check = ("import pathlib, sys\n"
             "sys.exit('requirements failed' if pathlib.Path('broken-flag').exists() else 0)\n")
    cfg = write_config(tmp_path / "c.toml", repos, ready=ready,
                       deploy=f"before_restart = [[{json.dumps(PY)}, \"-c\", {json.dumps(check)}]]")
    async with supervised(cfg, session) as (sup, c):
        good = repos.head()
        before = await c.status()
        with Load(sup.web.port, clients=4, max_seconds=60) as load:
            bad = repos.commit(files, f"broken: {kind}")
            await c.push(repos, bad)
            last = await eventually(lambda: (d := sup.deployer.last) and d.commit == bad and d, timeout=30,
                                    what="the failed deploy")
        r = load.stop()
        assert last.result == "failed" and last.commit == bad and reason in last.reason, last
        st = await c.status()
        assert st["child_pid"] == before["child_pid"]  # the same process, untouched
        assert st["restarts"] == before["restarts"]
        assert st["deployed_commit"] == good == repos.head()
        assert st["last_deploy"]["result"] == "failed" and st["last_deploy"]["commit"] == bad
        assert bad in st["bad_commits"]
        assert git("status", "--porcelain", cwd=repos.work) == ""
        assert r.failed == 0, (r.failures, r.examples)
        assert set(r.commits) == {good}  # 100% answered by the old release, even while it was probed
        # Not retried until a newer commit arrives...
        runs = sup.deployer.runs
        await c.push(repos, bad)
        await eventually(lambda: sup.deployer.runs > runs, what="the worker to look again")
        assert sup.deployer.last is last
        # ...and a fixed commit goes out normally.
        await c.ship(repos, {"app.py": DEMO_APP, "broken-flag": None}, "fix")


async def test_rollback_does_not_trigger_the_watcher(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos, watch="debounce_ms = 50")
    async with supervised(cfg, session) as (sup, c):
        pid = (await c.status())["child_pid"]
        bad = repos.commit({"app.py": "raise SystemExit(4)\n", "extra/new.txt": "x"}, "broken")
        await c.push(repos, bad)
        await eventually(lambda: sup.deployer.last, what="the failed deploy")
        await eventually(lambda: sup.expected.dropped >= 1, what="the watcher to see the checkout and reset")
        assert sup.expected.batches == sup.expected.dropped
        st = await c.status()
        assert st["child_pid"] == pid and st["restarts"] == 0 and not (repos.work / "extra").exists()


async def test_kill_9_of_the_live_child_connections_wait(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        pid = (await c.status())["child_pid"]
        os.kill(pid, signal.SIGKILL)
        # Straight away, before any restart: the held socket queues the connection.
        text = await c.app_get()
        assert f"commit {repos.head()}" in text and f"pid {pid}" not in text


async def test_probation_crash_goes_back_to_the_previous_release(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos, deploy="probation = 30")
    async with supervised(cfg, session) as (sup, c):
        good = repos.head()
        crashy = DEMO_APP.replace("    notify_ready()\n",
                                  "    notify_ready()\n    threading.Timer(1.0, os._exit, (7,)).start()\n")
        bad = repos.commit({"app.py": crashy}, "crashes after a second")
        await c.push(repos, bad)
        await deployed(c, bad)  # it passed readiness and went live...
        last = await eventually(lambda: sup.deployer.last if sup.deployer.last.result == "failed" else None,
                                what="the probation failure")
        assert "probation" in last.reason and "exited with status 7" in last.reason
        st = await deployed(c, good)  # ...then the previous release came back
        assert bad in st["bad_commits"] and repos.head() == good
        assert f"commit {good}" in await c.app_get()


async def test_proven_release_that_crashes_is_just_restarted(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos, deploy="probation = 0.5")
    async with supervised(cfg, session) as (sup, c):
        sha = repos.commit({"message.txt": "v2\n"}, "v2")
        await c.push(repos, sha)
        st = await deployed(c, sha)
        await asyncio.sleep(0.6)  # let probation (0.5 s) pass: this is the scenario, not a sync
        os.kill(st["child_pid"], signal.SIGKILL)
        await eventually(lambda: _restarted_from(c, st["child_pid"]), what="the restart")
        st = await c.status()
        assert st["deployed_commit"] == sha and not st["bad_commits"]


async def test_without_a_held_socket_swaps_are_stop_then_start(repos: Repos, tmp_path: Path, session) -> None:
    from .conftest import free_port

    port = free_port()
    cfg = write_config(tmp_path / "c.toml", repos, app={"command": [PY, "app.py", "--port", str(port)], "listen": None},
                       ready={"http": f"http://127.0.0.1:{port}/health"})
    async with supervised(cfg, session) as (sup, c):
        good = repos.head()
        assert sup.web.port is None
        sha = await c.ship(repos, {"message.txt": "v2\n"}, "v2")
        async with session.get(f"http://127.0.0.1:{port}/") as resp:
            assert f"commit {sha}" in await resp.text()
        bad = repos.commit({"app.py": "raise SystemExit(5)\n"}, "broken")
        await c.push(repos, bad)
        last = await eventually(lambda: sup.deployer.last if sup.deployer.last.commit == bad else None,
                                what="the failed deploy")
        assert last.result == "failed"
        await deployed(c, sha)  # the running commit was started again
        async with session.get(f"http://127.0.0.1:{port}/") as resp:
            assert f"commit {sha}" in await resp.text()
        assert repos.head() == sha != good


async def test_notify_readiness(repos: Repos, tmp_path: Path, session) -> None:
    # the silent release waits out the timeout: 5 s, not the suite's 15, is still ample for a good one
    cfg = write_config(tmp_path / "c.toml", repos, ready={"notify": True, "http": None, "min_uptime": 0, "timeout": 5})
    async with supervised(cfg, session) as (sup, c):
        await c.ship(repos, {"message.txt": "v2\n"}, "v2")
        silent = DEMO_APP.replace("    notify_ready()\n", "")
        bad = repos.commit({"app.py": silent}, "never notifies")
        await c.push(repos, bad)
        last = await eventually(lambda: sup.deployer.last if sup.deployer.last.commit == bad else None,
                                what="the failed deploy", timeout=30)
        assert "READY=1" in last.reason


ENV_APP = """import os, json, socket
names = os.environ.get("LISTEN_FDNAMES")
fds = int(os.environ.get("LISTEN_FDS", 0))
kinds = [socket.socket(fileno=os.dup(3 + i)).getsockname()[0] for i in range(fds)]
print(json.dumps({"pid": os.getpid(), "listen_pid": os.environ.get("LISTEN_PID"), "fds": fds,
                  "names": names, "kinds": kinds}), flush=True)
import time; time.sleep(600)
"""


@pytest.mark.parametrize("command, fds, names, pid_set", [
    ([PY, "envapp.py"], 1, "public", True),
    ([PY, "envapp.py", "{probe_fd}"], 2, "public:probe", False),
])
async def test_socket_activation_environment(command, fds, names, pid_set, repos: Repos, tmp_path: Path) -> None:
    repos.commit({"envapp.py": ENV_APP}, "env app")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    cfg = write_config(tmp_path / "c.toml", repos, app={"command": command}, ready={"http": None, "min_uptime": 0.1})
    async with running(cfg) as sup:
        child = sup.web.live.child
        line = await eventually(lambda: next((l for l in child.tail if l.startswith("{")), None), what="env line")
        info = json.loads(line)
        assert info["fds"] == fds and info["names"] == names
        assert (info["listen_pid"] == str(info["pid"])) is pid_set  # see README: gunicorn reads both
        assert info["kinds"][0] == "127.0.0.1"


async def test_probe_without_probe_fd_is_refused_at_startup(repos: Repos, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", repos, app={"command": [PY, "app.py", "--fd", "{fd}"]})
    with pytest.raises(ConfigError, match=r"cannot reach the new child alone: add \{probe_fd\}"):
        config.load(cfg)

