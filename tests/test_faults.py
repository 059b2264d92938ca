"""Fault injection: fuzzed and slow webhook requests, SIGKILL mid-fetch and mid-checkout,
a crash-looping app, a full state disk, and a soak of many deploys under load.

Quick cases run in the normal suite; the long soak is marked ``slow`` and runs with a
reduced count unless PUSHCD_SOAK_DEPLOYS says otherwise (see README, "Tests")."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.webhook import intake as intake_mod
from supervisor.webhook.intake import Intake, make_app

from .conftest import (DEMO_APP, SECRET, Repos, deployed, eventually, git, last_is, pid_alive, raw_request, signed_push,
                       spawn_supervisor, stop_process, supervised, try_status, wait_sync, write_config)
from .load import Load

# -- fuzzed webhook requests --------------------------------------------------------

class IntakeServer:
    """The real intake app on 127.0.0.1, in a thread with its own event loop."""

    def __init__(self) -> None:
        self.deploys = 0
        self.queued = 0
        self.statuses: list[int] = []
        self.intake = Intake(secret=SECRET.encode(), branch="main", full_name=None, allow_sha1=True,
                             request_deploy=self._deploy, on_verdict=self._verdict)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _deploy(self, _trigger: str) -> None:
        self.deploys += 1

    def _verdict(self, verdict, _event, _seconds) -> None:
        self.statuses.append(verdict.status)
        self.queued += verdict.verdict == "queued"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(make_app({"/github": self.intake}), access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def intake_server():
    server = IntakeServer()
    yield server
    server.close()


header_names = st.sampled_from(["X-GitHub-Event", "X-GitHub-Delivery", "X-Hub-Signature-256", "X-Hub-Signature",
                                "Content-Type", "Content-Encoding", "Transfer-Encoding", "X-Forwarded-For"])
header_values = st.one_of(
    st.sampled_from(["push", "ping", "sha256=", "sha1=" + "0" * 40, "application/json", "gzip", "chunked",
                     "application/x-www-form-urlencoded", "text/plain; charset=latin-1"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80))
bodies = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=500).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
                 lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                 max_leaves=20).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"ref": st.sampled_from(["refs/heads/main", "refs/tags/x", 5, None]),
                           "after": st.sampled_from(["a" * 40, "0" * 40, "x", None]),
                           "deleted": st.sampled_from([True, False, "yes"])}).map(lambda v: json.dumps(v).encode()),
    st.just(b"[" * 50_000),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(headers=st.lists(st.tuples(header_names, header_values), max_size=8), body=bodies,
       sign_it=st.sampled_from(["no", "right", "wrong"]), method=st.sampled_from(["POST", "POST", "GET", "PUT"]),
       length=st.sampled_from(["exact", "missing", "short", "long"]))
def test_fuzzed_requests_never_500_and_never_deploy_unsigned(intake_server, headers, body, sign_it, method,
                                                            length) -> None:
    before_deploys, before_queued = intake_server.deploys, intake_server.queued
    lines = [f"{method} /github HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    names = {n.lower() for n, _ in headers}
    for name, value in headers:
        if name.lower() in ("content-length",):
            continue
        lines.append(f"{name}: {value}")
    if sign_it != "no" and "x-hub-signature-256" not in names:
        key = SECRET.encode() if sign_it == "right" else b"wrong"
        lines.append("X-Hub-Signature-256: sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest())
    declared = {"exact": len(body), "short": max(0, len(body) - 1), "long": len(body) + 10}.get(length)
    if declared is not None and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {declared}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    status = raw_request(intake_server.port, data, half_close=True)
    assert status < 500, status  # 0: the server closed a request it could not parse, also fine
    assert intake_server.deploys - before_deploys == intake_server.queued - before_queued
    if sign_it != "right":
        assert intake_server.deploys == before_deploys  # nothing unsigned or mis-signed ever deploys


def test_slow_sender_gets_408_and_does_not_hold_the_server(intake_server, monkeypatch) -> None:
    monkeypatch.setattr(intake_mod, "BODY_TIMEOUT", 1.0)
    with socket.create_connection(("127.0.0.1", intake_server.port), timeout=10) as unsigned:
        # No signature: refused before a byte of the body is read, so it cannot hold a slot for long.
        unsigned.sendall(b"POST /github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: ping\r\nContent-Length: 1000\r\n\r\n{")
        assert b" 401 " in unsigned.recv(1000).split(b"\r\n", 1)[0]
    with socket.create_connection(("127.0.0.1", intake_server.port), timeout=10) as slow:
        slow.sendall(b"POST /github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: ping\r\nContent-Length: 1000\r\n"
                     b"X-Hub-Signature-256: sha256=" + b"0" * 64 + b"\r\n\r\n{")
        # Meanwhile a normal delivery is answered at once.
        body = b"{}"
        sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        ok = raw_request(intake_server.port, (f"POST /github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: ping\r\n"
                                              "Connection: close\r\n"
                                              f"X-Hub-Signature-256: {sig}\r\nContent-Length: 2\r\n\r\n").encode()
                         + body)
        assert ok == 200
        for _ in range(5):  # trickle a little, then stall
            slow.sendall(b" ")
        reply = slow.recv(1000)  # the server gives up on its own, within BODY_TIMEOUT
    assert b" 408 " in reply.split(b"\r\n", 1)[0]


# -- SIGKILL in the middle of git work ------------------------------------------------

def _consistent(repos: Repos, allowed: set[str]) -> None:
    git_dir = repos.work / ".git"
    assert not (git_dir / "index.lock").exists()
    assert git("status", "--porcelain", "--untracked-files=no", cwd=repos.work) == ""
    subprocess.run(["git", "fsck", "--no-progress"], cwd=repos.work, check=True, capture_output=True)
    assert repos.head() in allowed


def _app_pids(cfg: Path) -> list[int]:
    st = try_status(cfg)
    return [st["child_pid"]] if st and st["child_pid"] else []


def test_sigkill_mid_checkout_then_restart(tmp_path: Path, repos: Repos) -> None:
    """A commit of 20,000 files: kill -9 as soon as the move starts, then start again."""
    cfg = write_config(tmp_path / "c.toml", repos, watch="enabled = false")
    repos.head()
    big = repos.dev / "big"
    big.mkdir()
    for i in range(20_000):
        (big / f"f{i:05d}.txt").write_text(f"{i}\n")
    second = repos.commit({}, "20,000 files")
    journal = tmp_path / "state" / "git-journal.json"
    proc = spawn_supervisor(cfg)
    try:
        wait_sync(lambda: try_status(cfg), 30, "the supervisor")
        app = _app_pids(cfg)
        signed_push(cfg, repos, second)
        saw = wait_sync(lambda: journal.exists() and "move" in journal.read_text() or repos.head() == second,
                        60, "the move to start")
        proc.kill()
        proc.wait(10)
    finally:
        stop_process(proc)
    wait_sync(lambda: not any(pid_alive(p) for p in app), 10, "the app to die with the supervisor")
    half = len(list((repos.work / "big").glob("*")))  # how far the checkout got before the kill
    proc = spawn_supervisor(cfg)
    out = ""
    try:
        wait_sync(lambda: (s := try_status(cfg)) and s["deployed_commit"] == second and s["child_pid"] and s,
                  60, "the interrupted deploy to be redone")
        _consistent(repos, {second})
        assert len(list((repos.work / "big").glob("*"))) == 20_000
    except AssertionError as exc:
        out = stop_process(proc)
        raise AssertionError(f"{exc}\n--- supervisor output ---\n{out[-3000:]}") from None
    finally:
        out = out or stop_process(proc)
    assert saw
    if 0 < half < 20_000:
        assert "recovered the work tree after a crash" in out, out[-2000:]


def test_recovery_from_a_half_checked_out_tree(tmp_path: Path, repos: Repos) -> None:
    """The exact state a SIGKILL mid-checkout leaves: some files new, ref old, index.lock, journal."""
    first = repos.head()
    second = repos.commit({"message.txt": "v2\n", "a.txt": "a\n", "b.txt": "b\n"}, "v2")
    git("fetch", "-q", "origin", cwd=repos.work)
    git("checkout", f"origin/{repos.branch}", "--", "message.txt", "a.txt", cwd=repos.work)  # half of it
    (repos.work / ".git" / "index.lock").write_text("")
    state = tmp_path / "state"
    state.mkdir()
    (state / "git-journal.json").write_text(json.dumps({"op": "move", "source": first, "target": second,
                                                        "paths": ["a.txt", "b.txt", "message.txt"]}))
    cfg = write_config(tmp_path / "c.toml", repos, watch="enabled = false")
    proc = spawn_supervisor(cfg)
    try:
        wait_sync(lambda: (s := try_status(cfg)) and s["deployed_commit"] == second and s["state"] == "running",
                  60, "recovery, then the interrupted deploy")
        _consistent(repos, {second})
    finally:
        out = stop_process(proc)
    assert "recovered the work tree after a crash: interrupted move" in out
    assert "removed stale index.lock" in out


def test_sigkill_mid_fetch_then_restart(tmp_path: Path, repos: Repos) -> None:
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    origin = str(repos.origin)
    git("remote", "set-url", "origin", f"http://127.0.0.1:{hang.getsockname()[1]}/r.git", cwd=repos.work)
    cfg = write_config(tmp_path / "c.toml", repos, watch="enabled = false")
    sha = repos.commit({"message.txt": "v2\n"}, "v2")
    proc = spawn_supervisor(cfg)
    try:
        wait_sync(lambda: try_status(cfg), 30, "the supervisor")
        signed_push(cfg, repos, sha)
        conn, _ = hang.accept()  # the fetch is connected and waiting: kill now
        proc.kill()
        proc.wait(10)
        conn.close()
    finally:
        stop_process(proc)
        hang.close()
    git("remote", "set-url", "origin", origin, cwd=repos.work)  # the origin is back
    proc = spawn_supervisor(cfg)
    try:
        wait_sync(lambda: (s := try_status(cfg)) and s["deployed_commit"] == sha and s["state"] == "running",
                  60, "the interrupted deploy to be redone")
        _consistent(repos, {sha})
    finally:
        out = stop_process(proc)
    assert "interrupted fetch" in out


# -- a crash-looping app ------------------------------------------------------------

async def test_crash_looping_app_backs_off_and_a_fix_deploys(repos: Repos, tmp_path: Path, session) -> None:
    crashy = "import sys, time\nprint('starting', flush=True)\ntime.sleep(0.3)\nsys.exit(3)\n"
    repos.commit({"app.py": crashy}, "crashes")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    cfg = write_config(tmp_path / "c.toml", repos, ready={"http": None, "min_uptime": 0.1})
    async with supervised(cfg, session) as (sup, c):
        starts: list[float] = []
        original = sup.web.start

        async def counting(*a, **kw):
            starts.append(time.monotonic())
            return await original(*a, **kw)

        sup.web.start = counting  # type: ignore[method-assign]
        await eventually(lambda: len(starts) >= 4, timeout=30, what="a few restarts")
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert gaps[-1] > gaps[0]  # backing off
        assert (await c.status())["state"] in ("crashed", "running", "deploying")
        fixed = repos.commit({"app.py": DEMO_APP}, "fixed")
        await c.push(repos, fixed)
        await deployed(c, fixed, timeout=60)  # does not wait out the whole backoff


# -- a full disk for the state dir --------------------------------------------------

@pytest.mark.parametrize("mode", ["in-place", "snapshot"])
async def test_full_state_disk_keeps_deploying(repos: Repos, tmp_path: Path, session, caplog, mode: str) -> None:
    """In place, a full state disk costs history, not deploys. Releases live on that disk: there a deploy
    fails, saying so, and the running release serves on."""
    state = tmp_path / "state"
    state.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(state)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a small tmpfs for the state dir: {mounted.stderr}")
        pytest.skip("mounting a tmpfs needs root")
    try:
        cfg = write_config(tmp_path / "c.toml", repos, release=f'mode = "{mode}"')
        async with supervised(cfg, session) as (sup, c):
            first = repos.head()
            filler = state / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:  # fill the disk up, leaving nothing for history
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError:
                pass
            finally:
                os.close(fd)
            for i in range(3):
                sha = repos.commit({"message.txt": f"v{i}\n" + "x" * 5000}, f"v{i} " + "long message " * 50)
                status, _ = await c.push(repos, sha, delivery=f"full-{i}-" + "d" * 150)
                assert status == 202
                if mode == "snapshot":
                    st = await eventually(lambda: last_is(c, sha, "failed"), what="the deploy to fail")
                    assert "No space left on device" in st["last_deploy"]["reason"], st["last_deploy"]
                    assert st["deployed_commit"] == first == repos.head() and st["state"] == "running"
                    assert "v0" not in await c.app_get()
                    return
                await deployed(c, sha)
            assert "history: cannot write" in caplog.text
            st = await c.status()
            assert st["state"] == "running" and st["last_deploy"]["result"] == "ok"
            filler.unlink()
    finally:
        subprocess.run(["umount", str(state)], check=False)


# -- a soak: many deploys under load, resources flat ------------------------------------

def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.slow
async def test_many_deploys_under_load_keep_fds_and_memory_flat(repos: Repos, tmp_path: Path, session) -> None:
    count = int(os.environ.get("PUSHCD_SOAK_DEPLOYS", "30"))
    cfg = write_config(tmp_path / "c.toml", repos, ready={"min_uptime": 0.0})
    async with supervised(cfg, session) as (sup, c):
        me = os.getpid()
        samples = []
        with Load(sup.web.port, clients=4, max_requests=10**6, max_seconds=count * 3 + 60) as load:
            for i in range(count):
                await c.ship(repos, {"message.txt": f"soak {i}\n"}, f"soak {i}")
                # after a warm-up (libgit2 keeps up to PACK_FILES_OPEN packs open per handle)
                if i in (min(20, count // 2), count - 1):
                    samples.append((_fds(me), _rss_kb(me)))
        r = load.stop()
        assert r.failed == 0, (r.failures, r.examples)
        (fds_a, rss_a), (fds_b, rss_b) = samples
        assert fds_b <= fds_a + 5, (fds_a, fds_b)
        # The test process holds the load's results too; the supervisor's own share is far smaller.
        assert rss_b <= rss_a * 1.25 + 20_000, (rss_a, rss_b)
        assert len(sup.web.children) == 1  # every old child reaped
