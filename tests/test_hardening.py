"""Hardening: what a stranger sends, or a fault, cannot change state or leave the tree half-moved.

One test (or more) per reproduction in the hardening issue, with real processes, real
git repositories, real sockets on 127.0.0.1 and a real headless browser.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from aiohttp import web

from supervisor import config
from supervisor.config import ConfigError
from supervisor.git.tree import WorkTree
from supervisor.ops.page import page_token

from .conftest import (PY, SECRET, Client, Repos, deployed, eventually, git, last_is, pid_alive, raw_request, running,
                       signed_push, spawn_supervisor, stop_process, supervised, try_status, wait_sync, write_config)
from .load import stall_unsigned

# -- the control API: other origins, other hosts, no token --------------------------------------------


async def test_posts_need_the_token_and_a_foreign_origin_or_host_is_refused(repos: Repos, tmp_path: Path,
                                                                           session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        base = f"http://127.0.0.1:{sup.control_port}"
        token = {"Authorization": f"Bearer {sup.control_token.decode()}"}
        token_file = tmp_path / "state" / "control-token"
        assert token_file.read_text().strip().encode() == sup.control_token
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        runs = sup.deployer.runs
        for headers, status in [
            ({}, 401),  # loopback is no credential: any local web page can POST there
            ({"Authorization": "Bearer wrong"}, 401),
            ({**token, "Origin": "http://attacker.example"}, 403),  # curl -H 'Origin: ...' with a stolen token
            ({**token, "Sec-Fetch-Site": "cross-site"}, 403),
            ({**token, "Origin": "null"}, 403),  # a sandboxed page or a file:// page
            ({**token, "Host": "attacker.example:80"}, 403),  # DNS rebinding
        ]:
            for path in ("/deploy", "/rollback"):
                async with session.post(base + path, headers=headers) as resp:
                    assert resp.status == status, (path, headers, await resp.text())
        async with session.get(base + "/status", headers={"Host": "rebound.attacker.example"}) as resp:
            assert resp.status == 403  # a rebound name cannot read either
        page = page_token(sup.control_token)  # what the page's own buttons send
        for headers, status in [({"X-Pushcd-Page": page}, 401),  # without a browser's same-origin mark
                                ({"X-Pushcd-Page": page, "Origin": "http://attacker.example"}, 403),
                                ({"X-Pushcd-Page": "0" * 64, "Sec-Fetch-Site": "same-origin"}, 401)]:
            async with session.post(base + "/pause", headers=headers) as resp:
                assert resp.status == status, headers
        assert sup.deployer.runs == runs and sup.deployer.queued == []  # nothing was asked of the worker
        for host in ("localhost", f"127.0.0.1:{sup.control_port}", f"localhost:{sup.control_port}"):
            async with session.get(base + "/status", headers={"Host": host}) as resp:
                assert resp.status == 200, host
        no_host = await asyncio.get_running_loop().run_in_executor(None, lambda: raw_request(
            sup.control_port, b"GET /status HTTP/1.0\r\n\r\n"))  # HTTP/1.0 without Host: not a browser
        assert no_host == 200
        # The page's own origin with the token is fine; so is the CLI (no Origin at all).
        status, body = await c.control("POST", "/deploy?wait=1", headers={"Origin": base,
                                                                          "Sec-Fetch-Site": "same-origin"})
        assert status == 200 and body["done"], body


async def test_a_cross_site_form_and_fetch_in_chromium_change_nothing(repos: Repos, tmp_path: Path, session,
                                                                      caplog) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    caplog.set_level(logging.WARNING, "supervisor.control")
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        v1 = repos.head()
        await c.ship(repos, {"message.txt": "v2\n"}, "v2")  # so that a rollback would have somewhere to go
        target = f"http://127.0.0.1:{sup.control_port}"
        # The attacker's page, on another origin (another port of this machine).
        pages = {
            "/form": f"""<form id=f method=POST action="{target}/rollback" enctype="text/plain">
                         <input name=x value=y></form><script>document.getElementById('f').submit()</script>""",
            "/fetch": f"""<script>fetch("{target}/deploy", {{method: "POST", mode: "no-cors", body: "x"}});
                          fetch("{target}/rollback", {{method: "POST", mode: "no-cors",
                                headers: {{"Content-Type": "text/plain"}}, body: "x"}})</script>""",
        }
        app = web.Application()
        for path, html in pages.items():
            async def page(_request: web.Request, html: str = html) -> web.Response:
                return web.Response(text=html, content_type="text/html")

            app.router.add_get(path, page)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        evil = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        runs = sup.deployer.runs
        try:
            for path in pages:
                proc = await asyncio.create_subprocess_exec(
                    browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / ('chrome' + path.strip('/'))}", "--virtual-time-budget=5000",
                    "--dump-dom", evil + path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                await asyncio.wait_for(proc.wait(), 90)
            # The browser did send them (and they were refused): two from the fetch page, one from the form.
            await eventually(lambda: caplog.text.count("control: refused POST") >= 3, 30,
                             "the cross-site requests to arrive and be refused")
        finally:
            await runner.cleanup()
        st = await c.status()
        assert st["deployed_commit"] == repos.head() != v1 and st["bad_commits"] == {}
        assert sup.deployer.runs == runs and "(403)" in caplog.text


async def test_unauthenticated_requests_get_4xx_not_500(repos: Repos, tmp_path: Path, session, caplog) -> None:
    caplog.set_level(logging.ERROR)
    cfg = write_config(tmp_path / "c.toml", repos)
    async with running(cfg) as sup:
        async with session.get(f"http://127.0.0.1:{sup.control_port}/logs?since=abc") as resp:
            assert resp.status == 400
        # A body that does not decompress, and a sender that hangs up in the middle of its body.
        for raw in (b"POST /github HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nabcde",
                    b"POST /github HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\nabcde"):
            # blocking: in a thread, as the server runs on this loop
            status = await asyncio.get_running_loop().run_in_executor(
                None, lambda raw=raw: raw_request(sup.webhook_port, raw, half_close=True))
            assert status == 0 or 400 <= status < 500, status
        await eventually(lambda: sup.history.deliveries(5), what="the deliveries to be recorded")
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text, caplog.text


# -- secrets -----------------------------------------------------------------------------------------------


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def test_the_app_does_not_inherit_our_secrets_unless_named(repos: Repos, tmp_path: Path, session,
                                                                 monkeypatch) -> None:
    monkeypatch.setenv("PUSHCD_TEST_TOKEN", "control-tok")
    monkeypatch.setenv("PUSHCD_GIT_TOKEN", "git-tok")
    monkeypatch.setenv("UNRELATED", "kept")
    cfg = write_config(tmp_path / "c.toml", repos, repo_extra="[repo.auth]\ntoken_env = \"PUSHCD_GIT_TOKEN\"")
    cfg.write_text(cfg.read_text().replace("[control]\n", '[control]\ntoken_env = "PUSHCD_TEST_TOKEN"\n'))
    async with running(cfg) as sup:
        env = environ(sup.web.live.child.pid)
        assert "PUSHCD_TEST_SECRET" not in env and "PUSHCD_TEST_TOKEN" not in env and "PUSHCD_GIT_TOKEN" not in env
        assert SECRET not in "\n".join(env.values())
        assert env["UNRELATED"] == "kept" and env["SUPERVISOR_COMMIT"] == repos.head()
    # Named in [app.env], the app gets it (the operator chose to).
    cfg.write_text(cfg.read_text().replace('[app.env]\n', '[app.env]\nPUSHCD_GIT_TOKEN = "for-the-app"\n'))
    async with running(cfg) as sup:
        assert environ(sup.web.live.child.pid)["PUSHCD_GIT_TOKEN"] == "for-the-app"


async def test_url_credentials_never_reach_log_status_page_or_history(repos: Repos, tmp_path: Path, session,
                                                                      caplog) -> None:
    caplog.set_level(logging.DEBUG)
    password = "hunter2-s3cret"
    git("remote", "set-url", "origin", f"http://deploy:{password}@127.0.0.1:9/app.git", cwd=repos.work)
    cfg = write_config(tmp_path / "c.toml", repos, repo_extra="fetch_timeout = 5")
    async with supervised(cfg, session) as (sup, c):
        _, body = await c.control("POST", "/deploy?wait=1")
        assert body["result"]["result"] == "failed" and "deploy:***@127.0.0.1" in body["result"]["reason"]
        texts = [json.dumps(body)]
        for path in ("/", "/status", "/history", "/logs", "/metrics"):
            async with session.get(f"http://127.0.0.1:{sup.control_port}{path}") as resp:
                texts.append(await resp.text())
    db = (tmp_path / "state" / "history.db").read_bytes()
    wal = tmp_path / "state" / "history.db-wal"
    texts += [caplog.text, db.decode("latin-1"), wal.read_bytes().decode("latin-1") if wal.exists() else ""]
    for text in texts:
        assert password not in text
    assert "deploy:***@" in caplog.text


async def test_state_is_private(repos: Repos, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    cfg = write_config(tmp_path / "c.toml", repos)
    async with running(cfg):
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for name in ("history.db", "control-token"):
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name


# -- configuration mistakes that went live ---------------------------------------------------------------


def test_a_probe_url_on_the_public_address_is_refused(repos: Repos, tmp_path: Path) -> None:
    port = 8200
    cfg = write_config(tmp_path / "c.toml", repos, app={"listen": f"127.0.0.1:{port}"},
                       ready={"http": f"http://127.0.0.1:{port}/health"})
    with pytest.raises(ConfigError) as err:
        config.load(cfg)
    text = str(err.value)
    assert "probes the public address" in text and "old release answers" in text and "{probe_fd}" in text
    # The hint for a path without {probe_fd} no longer suggests a URL of the app's own port.
    cfg = write_config(tmp_path / "c.toml", repos, app={"command": [PY, "app.py", "--fd", "{fd}"]})
    with pytest.raises(ConfigError) as err:
        config.load(cfg)
    assert "own port" not in str(err.value) and "{probe_fd}" in str(err.value)


async def test_a_file_written_right_after_start_restarts_the_app(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with running(cfg) as sup:
        first = sup.web.live.child.pid
        (repos.work / "message.txt").write_text("edited the instant pushcd said it was ready\n")
        c = Client(sup, session)
        await eventually(lambda: sup.deployer.last and sup.deployer.last.reason == "restarted after file changes",
                         20, "the restart for the edit")
        assert sup.web.live.child.pid != first
        assert "edited the instant" in await c.app_get()


async def test_a_corrupt_history_db_is_reported_not_fatal(repos: Repos, tmp_path: Path, session) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "history.db").write_bytes(b"this is not a database" * 100)
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        st = await c.status()
        assert st["history"]["ok"] is False and "history.db" in st["history"]["problem"]
        await c.ship(repos, {"message.txt": "v2\n"}, "v2")  # deploys still work, recorded in memory
        assert sup.history.deploys(5)[0]["result"] == "ok"
        async with session.get(f"http://127.0.0.1:{sup.control_port}/") as resp:
            assert "running without history" in await resp.text()


# -- big changes are linear ----------------------------------------------------------------------------------


class CountingRepo:
    """A pygit2 repository that counts status look-ups (a proxy: everything else passes through)."""

    def __init__(self, repo: Any) -> None:
        self._repo = repo
        self.calls = {"status": 0, "status_file": 0}

    def __getattr__(self, name: str) -> Any:
        if name in self.calls:
            self.calls[name] += 1
        return getattr(self._repo, name)

    def __getitem__(self, key: str) -> Any:
        return self._repo[key]


@pytest.mark.parametrize("files", [50, 2000])
def test_facts_look_at_the_tree_once_whatever_the_size_of_the_change(repos: Repos, files: int) -> None:
    big = repos.dev / "big"
    big.mkdir()
    for i in range(files):
        (big / f"f{i:05d}.txt").write_text(f"{i}\n")
    sha = repos.commit({}, f"{files} files")
    (repos.work / "README.md").write_text("a local edit elsewhere\n")
    tree = WorkTree(repos.work, "origin", repos.branch)
    tree.fetch()
    tree.repo = counting = CountingRepo(tree.repo)  # type: ignore[assignment]
    facts = tree.facts(sha)
    assert len(facts.changed) == files and facts.blocking == ()
    assert counting.calls == {"status": 1, "status_file": 0}  # one pass, not one per changed path
    tree.move_to(sha, "test", facts)
    assert repos.head() == sha


# -- a deploy is all or nothing ----------------------------------------------------------------------------


def assert_untouched(repos: Repos, head: str, message: str) -> None:
    assert repos.head() == head
    assert git("status", "--porcelain", "--ignore-submodules=none", cwd=repos.work) == ""
    assert (repos.work / "message.txt").read_text() == message


async def fails_then_recovers(c: Client, repos: Repos, bad: str, why: str) -> None:
    """``bad`` fails with ``why``, the tree stays as it was, and the next push deploys normally."""
    head, message = repos.head(), (repos.work / "message.txt").read_text()
    status, body = await c.control("POST", "/deploy?wait=1")
    result = body["result"]
    assert result["result"] == "failed" and why in result["reason"] and result["commit"] == bad, result
    assert_untouched(repos, head, message)
    st = await c.status()
    assert st["deployed_commit"] == head and st["state"] == "running"
    assert message.strip() in await c.app_get()


async def test_a_failing_submodule_puts_files_and_ref_back(repos: Repos, tmp_path: Path, session) -> None:
    lib = Repos(tmp_path / "lib")
    lib.commit({"lib.txt": "lib\n"}, "lib")
    git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib.origin), "vendor_lib", cwd=repos.dev)
    git("config", "-f", ".gitmodules", "submodule.vendor_lib.url", str(tmp_path / "gone" / "lib.git"), cwd=repos.dev)
    bad = repos.commit({"message.txt": "v2 with a submodule that cannot be fetched\n"}, "add vendor_lib")
    cfg = write_config(tmp_path / "c.toml", repos, repo_extra=f'submodule_urls = ["{tmp_path}/*"]')
    async with supervised(cfg, session) as (sup, c):
        await fails_then_recovers(c, repos, bad, "submodule update failed")
        assert not (repos.work / "vendor_lib").exists() and not (repos.work / ".gitmodules").exists()
        git("rm", "-q", "vendor_lib", cwd=repos.dev)
        await c.ship(repos, {"message.txt": "v3 without it\n"}, "drop vendor_lib")
        assert "v3 without it" in await c.app_get()


async def test_a_local_submodule_url_is_refused_by_default(repos: Repos, tmp_path: Path, session) -> None:
    private = Repos(tmp_path / "private")
    private.commit({"secret.txt": "private data\n"}, "private")
    git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(private.origin), "stolen", cwd=repos.dev)
    bad = repos.commit({"message.txt": "v2\n"}, "add a submodule of a private local repository")
    cfg = write_config(tmp_path / "c.toml", repos)
    async with running(cfg) as sup:
        await fails_then_recovers(Client(sup, session), repos, bad, "is a local path; list it in [repo] submodule_urls")
    assert not (repos.work / "stolen").exists() and not (repos.work / ".git" / "modules").exists()


async def test_a_stale_index_lock_writes_nothing_and_the_next_push_deploys(repos: Repos, tmp_path: Path,
                                                                         session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        bad = repos.commit({"message.txt": "v2\n", "new.txt": "new\n"}, "v2")
        lock = repos.work / ".git" / "index.lock"
        lock.write_text("")
        await fails_then_recovers(c, repos, bad, "index.lock exists")
        assert not (repos.work / "new.txt").exists()
        lock.unlink()
        await c.push(repos, bad)
        await deployed(c, bad)
        assert "v2" in await c.app_get()


def _tree_with_a_duplicate_entry(repos: Repos) -> str:
    """A commit whose tree holds a symlink and a folder of one name (git fsck calls it duplicateEntries)."""
    def obj(kind: str, data: bytes, *flags: str) -> str:
        return subprocess.run(["git", "hash-object", "-w", "-t", kind, *flags, "--stdin"], cwd=repos.dev,
                              input=data, capture_output=True, check=True).stdout.decode().strip()

    head = git("rev-parse", "HEAD", cwd=repos.dev)
    entries = git("ls-tree", "HEAD", cwd=repos.dev).splitlines()
    rows = []
    for line in entries:
        meta, name = line.split("\t", 1)
        mode, _, sha = meta.split()
        if name == "message.txt":
            sha = obj("blob", b"v2 from a broken tree\n")
        rows.append((name, mode, sha))
    inner = obj("tree", b"100644 f.txt\0" + bytes.fromhex(obj("blob", b"inside\n")), "--literally")
    rows += [("dup", "120000", obj("blob", b"message.txt")), ("dup", "40000", inner)]
    rows.sort(key=lambda r: r[0] + ("/" if r[1] == "40000" else ""))
    data = b"".join(f"{mode} {name}".encode() + b"\0" + bytes.fromhex(sha) for name, mode, sha in rows)
    tree = obj("tree", data, "--literally")
    env = {**os.environ, "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "T",
           "GIT_COMMITTER_EMAIL": "t@x"}
    commit = subprocess.run(["git", "commit-tree", tree, "-p", head, "-m", "duplicate entries"], cwd=repos.dev,
                            capture_output=True, check=True, env=env).stdout.decode().strip()
    git("push", "-q", "--force", "origin", f"{commit}:refs/heads/{repos.branch}", cwd=repos.dev)
    return commit


async def test_a_tree_with_a_duplicate_entry_is_put_back(repos: Repos, tmp_path: Path, session) -> None:
    bad = _tree_with_a_duplicate_entry(repos)
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        await fails_then_recovers(c, repos, bad, "failed")
        assert not (repos.work / "dup").exists() and not (repos.work / "dup").is_symlink()
        await c.ship(repos, {"message.txt": "v3 from a good tree\n"}, "v3")
        assert "v3 from a good tree" in await c.app_get()


# -- connections are bounded ----------------------------------------------------------------------------------


async def test_idle_and_slow_connections_are_closed_and_capped(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos, webhook_extra="header_timeout = 1\nmax_connections = 20")
    async with supervised(cfg, session) as (sup, c):
        loop = asyncio.get_running_loop()

        def hold(n: int) -> list[float | None]:
            """Open n connections (one trickles header bytes); seconds until the server closed each."""
            # each from its own loopback address: the cap, not the per-address limit, is what this test is about
            socks = [connect_from(f"127.0.1.{i + 1}", sup.webhook_port) for i in range(n)]
            start = time.monotonic()
            closed: list[float | None] = [None] * n
            poller = select.poll()
            for s in socks:
                poller.register(s, select.POLLIN | select.POLLHUP)
            index = {s.fileno(): i for i, s in enumerate(socks)}
            socks[0].sendall(b"POST /github HTTP/1.1\r\n")
            try:
                while time.monotonic() - start < 10 and None in closed:
                    if closed[0] is None:
                        try:
                            socks[0].sendall(b"X")  # headers at a byte per pass: slowloris
                        except OSError:
                            closed[0] = time.monotonic() - start
                    for fd, _event in poller.poll(50):
                        i = index[fd]
                        try:
                            data = socks[i].recv(1)
                        except OSError:
                            data = b""
                        if data == b"" and closed[i] is None:
                            closed[i] = time.monotonic() - start
                            poller.unregister(fd)
            finally:
                for s in socks:
                    s.close()
            return closed

        holder = loop.run_in_executor(None, hold, 25)
        closed = await holder
        assert None not in closed, closed  # every one closed by the server within 10 s
        at_once = sorted(t for t in closed if t is not None)[:5]
        assert max(at_once) < 0.9, closed  # the five over the cap: before the header timeout
        assert sum(t > 0.9 for t in closed if t is not None) >= 19, closed  # the rest: by the header timeout
        await c.ship(repos, {"message.txt": "v2\n"}, "v2")  # and deliveries are answered again


def connect_from(address: str, port: int) -> socket.socket:
    """A connection to 127.0.0.1:port from another loopback address: another peer, as the server sees it."""
    s = socket.socket()
    s.settimeout(15)
    s.bind((address, 0))
    s.connect(("127.0.0.1", port))
    return s


async def test_strangers_cannot_take_the_slots_deliveries_need(repos: Repos, tmp_path: Path, session) -> None:
    """Hardening #19.5: partial headers held all the connection slots (for up to 30 s) and a signed delivery
    sent meanwhile was reset. One address now holds an eighth of them; outside allow_from, none at all."""
    cfg = write_config(tmp_path / "c.toml", repos, webhook_extra="header_timeout = 30\nmax_connections = 64")
    loop = asyncio.get_running_loop()

    def partial(address: str, n: int, port: int) -> list[socket.socket]:
        socks = [connect_from(address, port) for _ in range(n)]
        for s in socks:
            try:
                s.sendall(b"POST /github HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
            except OSError:
                pass  # closed on connect
        return socks

    async with supervised(cfg, session) as (sup, c):
        capped = sup._sites[0].capped
        strangers = await loop.run_in_executor(None, partial, "127.0.0.2", 64, sup.webhook_port)
        try:
            await eventually(lambda: capped.open + capped.refused >= 64, 10, "every stranger accepted or closed")
            await c.ship(repos, {"message.txt": "v2\n"}, "v2")  # a delivery from another address gets through
            assert capped.by_peer["127.0.0.2"] == 8  # the stranger's share: an eighth of the slots
        finally:
            for s in strangers:
                s.close()
    text = cfg.read_text()
    cfg.write_text(text.replace("max_connections = 64", 'max_connections = 64\nallow_from = ["127.0.0.1/32"]'))
    async with supervised(cfg, session) as (sup, c):
        capped = sup._sites[0].capped
        strangers = await loop.run_in_executor(None, partial, "127.0.0.3", 4, sup.webhook_port)
        try:
            await eventually(lambda: capped.refused >= 4 and not capped.by_peer["127.0.0.3"], 10,
                             "strangers closed on connect")
            assert not any(_answer(s) for s in strangers)  # closed before a byte was read: no answer at all
            await c.ship(repos, {"message.txt": "v3\n"}, "v3")
        finally:
            for s in strangers:
                s.close()


def _answer(s: socket.socket) -> bytes:
    """What the server said on ``s`` before it closed (a reset says nothing)."""
    try:
        return s.recv(100)
    except ConnectionResetError:
        return b""


def _limited(n: int) -> Any:
    def preexec() -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return preexec


def test_connections_cannot_use_up_file_descriptors(tmp_path: Path, repos: Repos) -> None:
    """520 idle connections against a soft limit of 512, scaled down: 200 against a hard limit of 128.

    Before: accept() failed for lack of descriptors (55 MB of log in 25 s), and the app, killed
    meanwhile, could not be started again (EMFILE for its probe socket) and stayed down for good.
    """
    cfg = write_config(tmp_path / "c.toml", repos, webhook_extra="header_timeout = 60\nmax_connections = 500")
    log = tmp_path / "pushcd.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([PY, "-m", "supervisor", "run", "--config", str(cfg)], cwd=Path(__file__).parents[1],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=_limited(128))
    socks: list[socket.socket] = []
    try:
        first = wait_sync(lambda: (s := try_status(cfg)) and s["child_pid"] and s, 30, "pushcd")
        assert "max_connections lowered" in log.read_text()
        port = int(cfg.read_text().split('[webhook]\nlisten = "127.0.0.1:')[1].split('"')[0])
        for _ in range(200):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        os.kill(first["child_pid"], signal.SIGKILL)
        back = wait_sync(lambda: (s := try_status(cfg)) and s["child_pid"] and s["child_pid"] != first["child_pid"]
                         and s["state"] == "running" and s, 30, "the app to come back while the connections are held")
        assert back["deployed_commit"] == first["deployed_commit"]
        for s in socks:
            s.close()
        socks.clear()
        v2 = repos.commit({"message.txt": "v2\n"}, "v2")

        def delivered() -> bool:  # until the server has seen the closes, the cap still refuses at once
            try:
                signed_push(cfg, repos, v2)
            except OSError:
                return False
            return True

        wait_sync(delivered, 30, "a delivery to be accepted once the connections are gone")
        wait_sync(lambda: (s := try_status(cfg)) and s["deployed_commit"] == v2, 30, "a deploy afterwards")
    finally:
        for s in socks:
            s.close()
        stop_process(proc)
    text = log.read_text()
    assert "unexpected error" not in text and "crashed for good" not in text, text[-3000:]
    # asyncio may still fail an accept() in a burst (it accepts a whole batch before we can close the
    # refused ones): reported at most once a second, with a count, not once per failure.
    assert text.count("out of system resource") <= 15 and log.stat().st_size < 100_000, text[-3000:]


# -- what the app leaves behind ------------------------------------------------------------------------------

DAEMONIZING_APP = textwrap.dedent("""
    import os, sys, time
    record = os.environ["GRANDCHILDREN"]
    def linger():
        os.setsid()  # out of the app's process group: a group stop misses it
        with open(record, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(3600)  # holding fd 3, the public socket, as it was inherited
        os._exit(0)
    if os.fork() == 0:
        linger()
    if os.fork() == 0:  # the classic daemon: fork again, and the middle one exits at once
        if os.fork() == 0:
            linger()
        os._exit(0)
    os.execvp(sys.executable, [sys.executable, "app.py", *sys.argv[1:]])
""")


def leaves_daemons(tmp_path: Path, repos: Repos, source: str) -> tuple[Path, Callable[[], list[int]]]:
    """An app (``source``, run as daemon.py) whose daemons note their pids; its config, and the pids so far."""
    repos.commit({"daemon.py": source}, "an app that leaves daemons behind")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    record = tmp_path / "grandchildren.txt"
    record.write_text("")
    cfg = write_config(tmp_path / "c.toml", repos, app={"command": [PY, "daemon.py", "--fd", "{fd}", "--fd",
                                                                    "{probe_fd}"]})
    cfg.write_text(cfg.read_text().replace("[app.env]\n", f'[app.env]\nGRANDCHILDREN = "{record}"\n'))
    return cfg, lambda: [int(p) for p in record.read_text().split()]


def test_a_setsid_grandchild_does_not_outlive_its_release_or_pushcd(tmp_path: Path, repos: Repos) -> None:
    cfg, pids = leaves_daemons(tmp_path, repos, DAEMONIZING_APP)
    proc = spawn_supervisor(cfg)
    try:
        wait_sync(lambda: (s := try_status(cfg)) and s["child_pid"], 30, "pushcd")
        wait_sync(lambda: len(pids()) == 2, 10, "the first release's two daemons")
        first = pids()
        v2 = repos.commit({"message.txt": "v2\n"}, "v2")
        signed_push(tmp_path / "c.toml", repos, v2)
        wait_sync(lambda: (s := try_status(cfg)) and s["deployed_commit"] == v2, 30, "the deploy")
        wait_sync(lambda: not any(pid_alive(p) for p in first), 15, "the old release's daemons to be stopped")
        assert all(pid_alive(p) for p in pids()[2:])  # the live release's are left alone
    finally:
        out = stop_process(proc)
    wait_sync(lambda: not any(pid_alive(p) for p in pids()), 10, "every daemon to be gone with pushcd")
    assert "left behind" in out
    proc = spawn_supervisor(cfg)  # the address is free again
    try:
        wait_sync(lambda: (s := try_status(cfg)) and s["child_pid"], 30, "pushcd to start again")
    finally:
        stop_process(proc)
    wait_sync(lambda: not any(pid_alive(p) for p in pids()), 10, "no daemon left")


# The app's process exits (a crash) while a daemon it started (its own session) keeps the output pipe open.
CRASHES_LEAVING_A_DAEMON = textwrap.dedent("""
    import os, sys, time
    record = os.environ["GRANDCHILDREN"]
    if os.fork() == 0:
        os.setsid()
        with open(record, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(3600)  # holding stdout, the pipe pushcd reads the app's output from
        os._exit(0)
    if os.environ.get("CRASH_FILE") and os.path.exists(os.environ["CRASH_FILE"]):
        os.remove(os.environ["CRASH_FILE"])
        os.execvp(sys.executable, [sys.executable, "-c", "import time; time.sleep(1.5); raise SystemExit(3)"])
    os.execvp(sys.executable, [sys.executable, "app.py", *sys.argv[1:]])
""")


def test_a_crash_is_seen_although_a_daemon_still_holds_the_output_pipe(tmp_path: Path, repos: Repos) -> None:
    """Python 3.11's asyncio answers Process.wait() only once every pipe is closed: a process that exited while
    a daemon of it held stdout was never seen to exit, so its crash was never restarted (and every stop of it
    waited out stop_timeout, then SIGKILL)."""
    crash = tmp_path / "crash"
    crash.touch()  # the first start crashes 1.5 s after it is ready; the next one serves
    cfg, pids = leaves_daemons(tmp_path, repos, CRASHES_LEAVING_A_DAEMON)
    cfg.write_text(cfg.read_text().replace("[app.env]\n", f'[app.env]\nCRASH_FILE = "{crash}"\n')
                   .replace('http = "/health"\n', ""))
    proc = spawn_supervisor(cfg)
    try:
        wait_sync(lambda: (s := try_status(cfg)) and s["state"] == "running" and s["child_pid"] and
                  s["restarts"] >= 1, 30, "the crash seen and the app restarted")
    finally:
        stop_process(proc)
    wait_sync(lambda: not any(pid_alive(p) for p in pids()), 10, "every daemon to be gone with pushcd")


def test_sigterm_during_a_hung_fetch_exits_within_the_stop_timeout(tmp_path: Path, repos: Repos) -> None:
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # accepts (the kernel does) and never answers
    git("remote", "set-url", "origin", f"http://127.0.0.1:{hung.getsockname()[1]}/app.git", cwd=repos.work)
    cfg = write_config(tmp_path / "c.toml", repos, repo_extra="fetch_timeout = 60")
    proc = spawn_supervisor(cfg)
    try:
        wait_sync(lambda: (s := try_status(cfg)) and s["child_pid"], 30, "pushcd")
        signed_push(cfg, repos, repos.commit({"message.txt": "v2\n"}, "v2"))
        wait_sync(lambda: (s := try_status(cfg)) and s["state"] == "deploying", 10, "the fetch to hang")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(5 + 5 + 3)  # stop_timeout + 5 s, and a little: raises TimeoutExpired otherwise
        assert time.monotonic() - started < 13 and proc.returncode == 0
    finally:
        stop_process(proc)
        hung.close()


# -- memory before the signature (#19.1) ---------------------------------------------------------------------

def _kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_unsigned_bodies_and_compressed_bodies_cost_no_memory(tmp_path: Path, repos: Repos) -> None:
    """Before: 12 connections sending 24 MB and stalling took RSS 60 -> 352 MB (and kept it); 8 gzip bodies of
    ~24 KB inflating to 24 MB each took +370 MB; one 500 KB gzip bomb +212 MB. Unsigned bytes are now hashed
    as they stream and spooled (256 KB in memory each, 64 MB in flight in all), and no body is inflated."""
    import gzip
    import threading

    cfg = write_config(tmp_path / "c.toml", repos, watch="enabled = false")
    port = int(cfg.read_text().split('[webhook]\nlisten = "127.0.0.1:')[1].split('"')[0])
    proc = spawn_supervisor(cfg)
    try:
        wait_sync(lambda: (s := try_status(cfg)) and s["child_pid"], 30, "pushcd")
        before = _kb(proc.pid, "VmRSS")
        size, release, sent_all = 24 * 1024 * 1024, threading.Event(), []

        stallers = [threading.Thread(target=stall_unsigned, args=(port, size, release, sent_all),
                                     kwargs={"timeout": 30}) for _ in range(12)]
        for t in stallers:
            t.start()
        wait_sync(lambda: len(sent_all) == len(stallers), 60, "every staller to have sent what it will")
        answers = []
        for body in [gzip.compress(b"\0" * size)] * 8 + [gzip.compress(b"\0" * (500 << 20), compresslevel=9)]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall((f"POST /github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nContent-Encoding: gzip"
                           f"\r\nX-Hub-Signature-256: sha256={'0' * 64}\r\nContent-Length: {len(body)}\r\n\r\n"
                           ).encode())
                answers.append(s.recv(100).split(b"\r\n", 1)[0])  # answered on the headers alone
        held = _kb(proc.pid, "VmRSS")
        release.set()
        for t in stallers:
            t.join(60)
        peak = _kb(proc.pid, "VmHWM")
        assert peak - before < 80 * 1024, f"RSS {before} kB before, peak {peak} kB, {held} kB while held"
        assert answers == [b"HTTP/1.1 415 Unsupported Media Type"] * 9, answers
        assert try_status(cfg)["child_pid"]  # and pushcd is as it was
    finally:
        stop_process(proc)


CLEAN_ENV_DAEMON_APP = textwrap.dedent("""
    import os, sys
    record = os.environ["GRANDCHILDREN"]
    if os.fork() == 0:  # a daemon that forgets who started it: setsid, and an exec with an empty environment
        os.setsid()
        if os.fork() == 0:
            with open(record, "a") as f:
                f.write(f"{os.getpid()}\\n")
            os.execve(sys.executable, [sys.executable, "-c", "import time; time.sleep(3600)"], {})  # keeps fd 3
        os._exit(0)
    os.execvp(sys.executable, [sys.executable, "app.py", *sys.argv[1:]])
""")


def test_a_daemon_with_a_clean_environment_does_not_outlive_its_release(tmp_path: Path, repos: Repos) -> None:
    """Hardening #19.6: a daemon that double-forks and execs with a clean environment (no SUPERVISOR_INSTANCE)
    but keeps fd 3 stayed, one per deploy, each holding an old release's socket, until pushcd exited."""
    cfg, pids = leaves_daemons(tmp_path, repos, CLEAN_ENV_DAEMON_APP)
    proc = spawn_supervisor(cfg)
    try:
        wait_sync(lambda: (s := try_status(cfg)) and s["child_pid"], 30, "pushcd")
        first = wait_sync(lambda: pids(), 10, "the first release's daemon")
        assert b"SUPERVISOR_INSTANCE" not in Path(f"/proc/{first[0]}/environ").read_bytes()
        for n in (2, 3):
            sha = repos.commit({"message.txt": f"v{n}\n"}, f"v{n}")
            signed_push(cfg, repos, sha)
            wait_sync(lambda: (s := try_status(cfg)) and s["deployed_commit"] == sha, 30, f"deploy {n}")
            wait_sync(lambda: len(pids()) == n, 10, f"release {n}'s daemon")
        wait_sync(lambda: [p for p in pids() if pid_alive(p)] == pids()[-1:], 15,
                  "only the live release's daemon left")
    finally:
        stop_process(proc)
    wait_sync(lambda: not any(pid_alive(p) for p in pids()), 10, "every daemon gone with pushcd")


async def test_a_failed_deploy_across_a_type_change_goes_back_and_is_recorded(repos: Repos, tmp_path: Path,
                                                                               session) -> None:
    """Hardening #19.4: the rollback of a commit that made a file a folder met "local edits would be
    overwritten: conf": "deploy worker: unexpected error", the tree left on the bad commit, nothing recorded."""
    repos.commit({"conf": "a file\n"}, "conf is a file")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        good = repos.head()
        (repos.dev / "conf").unlink()
        (repos.dev / "conf").mkdir()
        (repos.dev / "conf" / "x").write_text("in a folder\n")
        bad = repos.commit({"app.py": "import nothing_here\n"}, "conf is a folder, and the app fails")
        await c.push(repos, bad)
        st = await eventually(lambda: last_is(c, bad, "failed"), what="the failed deploy to be recorded")
        assert st["deployed_commit"] == good and repos.head() == good and (repos.work / "conf").is_file()
        assert "could not follow" not in st["last_deploy"]["reason"], st["last_deploy"]
        assert git("status", "--porcelain", cwd=repos.work) == ""
