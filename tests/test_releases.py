"""Releases: each runs from its own read-only folder and its own Python environment ([release] mode =
"snapshot", the default). Real git, real children, a real installer (uv) installing tiny wheels made here
with --no-index --find-links: no network."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from supervisor.releases.pyenv import uv_binary

from .conftest import Client, Repos, cli, deployed, eventually, git, last_is, running, supervised, write_config
from .wheels import make_wheel

# Standard library only: in a release with an environment, `python` is the environment's interpreter.
APP = '''import json, os, socket, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
try:
    import tinydep
    DEP = tinydep.VERSION
except ImportError:
    DEP = "none"
VARS = {VARS}
gate = os.environ.get("GATE_FILE")
while {SLOW} and gate and not os.path.exists(gate):  # a slow start-up the test lets go of
    time.sleep(0.02)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            if self.path == "/style.css":
                body = open("static/style.css").read()
            elif self.path == "/info":
                body = json.dumps({"dep": DEP, "commit": os.environ["SUPERVISOR_COMMIT"],
                                   "release": os.environ.get("SUPERVISOR_RELEASE"), "cwd": os.getcwd(),
                                   "release_dir": os.environ.get("SUPERVISOR_RELEASE_DIR"),
                                   "python": sys.executable, "pycache": os.environ.get("PYTHONPYCACHEPREFIX")})
            elif self.path == "/data":
                with open("media/hits", "a") as f:
                    f.write("x")
                body = open(".env").read().strip() + " hits=" + str(len(open("media/hits").read()))
            elif self.path == "/health":
                body = "ok"
            else:
                body = open("template.txt").read().format(**VARS)
            code = 200
        except Exception as exc:
            body, code = repr(exc), 500
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

servers = []
for fd in map(int, sys.argv[1:]):
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    server = ThreadingHTTPServer(sock.getsockname()[:2], Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    servers.append(server)
import signal, threading
signal.signal(signal.SIGTERM, lambda *a: [threading.Thread(target=s.shutdown).start() for s in servers])
threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}) for s in servers]
for t in threads:
    t.start()
for t in threads:
    t.join()
'''


def app_source(vars: dict[str, str], slow: bool = False) -> str:
    return APP.replace("{VARS}", repr(vars)).replace("{SLOW}", repr(slow))


def first_files(title: str = "old") -> dict[str, str | None]:
    return {"relapp.py": app_source({"title": title}), "template.txt": "Title: {title}",
            "static/style.css": "body { color: red }", ".gitignore": ".env\nmedia/\ndb.sqlite3\n"}


def setup(tmp_path: Path, repos: Repos, files: dict[str, str | None], release: str = "",
          deploy: str = "probation = 30") -> Path:
    repos.commit(files, "release app")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    return write_config(tmp_path / "config.toml", repos, app={"command": ["python", "relapp.py", "{fd}", "{probe_fd}"]},
                        deploy=deploy, release=f'mode = "snapshot"\n{release}')


async def get(session: aiohttp.ClientSession, port: int, path: str = "/") -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, await resp.text()


async def info(client: Client) -> dict[str, Any]:
    return json.loads((await get(client.session, client.sup.web.port, "/info"))[1])


async def test_the_old_release_serves_its_own_template_and_static_file_while_a_slow_new_one_starts(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    # The scenario of the issue: in place, the old code rendered the new template (500) meanwhile.
    gate = tmp_path / "go"
    monkeypatch.setenv("GATE_FILE", str(gate))
    cfg = setup(tmp_path, repos, first_files())
    async with supervised(cfg, session) as (sup, client):
        port = sup.web.port
        assert await get(session, port) == (200, "Title: old")
        new = repos.commit({"relapp.py": app_source({"title": "new", "user": "ann"}, slow=True),
                            "template.txt": "Title: {title} User: {user}",
                            "static/style.css": "body { color: blue }"}, "new template")
        await client.push(repos, new)
        await eventually(lambda: repos.head() == new, what="the work tree moved to the new commit")
        await eventually(lambda: sup.web.starts == 1 and len(sup.web.children) == 2,
                         what="the new release is starting")
        for _ in range(5):  # all of it while the new one is still starting
            assert await get(session, port) == (200, "Title: old")
            assert await get(session, port, "/style.css") == (200, "body { color: red }")
        gate.touch()
        await deployed(client, new)
        assert await get(session, port) == (200, "Title: new User: ann")
        assert await get(session, port, "/style.css") == (200, "body { color: blue }")
        facts = await info(client)
        status = await client.status()
        assert facts["release"] == status["release"]["id"] and facts["commit"] == new
        assert facts["cwd"] == facts["release_dir"] == status["release"]["dir"]
        assert Path(facts["cwd"]).parent == tmp_path / "state" / "releases"
        assert status["last_deploy"]["phases"].keys() >= {"fetch", "checkout", "build", "ready", "handover"}


async def test_release_files_are_read_only_shared_by_hard_link_never_with_the_work_tree_and_pruned_to_keep(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)  # bytecode on: kept outside the release
    cfg = setup(tmp_path, repos, first_files(), release="keep = 2")
    releases = tmp_path / "state" / "releases"
    async with supervised(cfg, session) as (sup, client):
        pycache = tmp_path / "state" / "pycache"
        assert (await info(client))["pycache"] == str(pycache)
        assert list(pycache.rglob("*.pyc"))  # what the app imported, compiled once
        first = (await client.status())["release"]
        root = Path(first["dir"])
        css = root / "static" / "style.css"
        assert stat.S_IMODE(css.stat().st_mode) == 0o444
        assert stat.S_IMODE(root.stat().st_mode) == stat.S_IMODE((root / "static").stat().st_mode) == 0o555
        assert css.stat().st_ino != (repos.work / "static" / "style.css").stat().st_ino
        shas = [await client.ship(repos, {"template.txt": f"Title: {{title}} {i}"}, f"change {i}") for i in range(4)]
        status = await client.status()
        assert status["deployed_commit"] == shas[-1]
        live = Path(status["release"]["dir"])
        assert (live / "template.txt").read_text() == "Title: {title} 3"
        kept = sorted(p.name for p in releases.iterdir() if p.is_dir())
        assert len(kept) <= 3, kept  # keep = 2, plus the release a rollback would go to
        assert status["release"]["id"] in kept
        assert first["id"] not in kept  # the oldest went
        code, out, _ = await cli(cfg, "releases", "--json")
        listed = json.loads(out)["releases"]
        assert code == 0 and {r["id"] for r in listed} == set(kept)
        assert [r["state"] for r in listed if r["id"] == status["release"]["id"]] == ["live"]
        previous = releases / next(r["id"] for r in listed if r["state"] == "previous")
        # The unchanged file is one inode shared by the releases; the changed one is each release's own.
        assert (live / "static" / "style.css").stat().st_ino == (previous / "static" / "style.css").stat().st_ino
        assert (live / "template.txt").stat().st_ino != (previous / "template.txt").stat().st_ino
        assert (previous / "template.txt").read_text() == "Title: {title} 2"


async def test_failed_releases_go_first_and_a_rollback_to_one_asks_for_force(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    """Hardening #19.9: failed releases took [release] keep slots (4 of 5 kept were failed commits, pushing the
    good rollback targets out), and `rollback --to` one of them went ahead without a word."""
    cfg = setup(tmp_path, repos, first_files(), release="keep = 2")
    async with supervised(cfg, session) as (sup, client):
        good = [repos.head(), await client.ship(repos, {"template.txt": "Title: {title} 2"}, "good 2")]
        bad = []
        for i in range(3):  # each builds a release that never goes live
            bad.append(repos.commit({"template.txt": f"Title: {{title}} bad {i}", "relapp.py": "import nothing_here\n"},
                                    f"bad {i}"))
            await client.push(repos, bad[-1])
            await eventually(lambda: last_is(client, bad[-1], "failed"), what=f"bad {i} to fail")
        code, out, _ = await cli(cfg, "rollback", "--to", bad[-1][:12])
        assert code == 1 and "never went live" in out and "--force" in out, out
        code, out, _ = await cli(cfg, "rollback", "--to", bad[-1][:12], "--force")
        assert "never went live" not in out and "rollback to release" in out, out  # tried: it fails to start
        fixed = {"template.txt": "Title: {title} 3", "relapp.py": app_source({"title": "old"})}
        good.append(await client.ship(repos, fixed, "good 3"))
        code, out, _ = await cli(cfg, "releases", "--json")
        listed = {r["commit"]: r["state"] for r in json.loads(out)["releases"]}
        assert not set(bad) & set(listed), listed  # the failed ones went first
        assert listed.get(good[2]) == "live" and listed.get(good[1]) == "previous", listed  # the good ones stayed


async def test_rollback_starts_a_kept_release_with_no_checkout_and_no_install(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "tinydep", "1.0")
    make_wheel(wheels, "tinydep", "2.0")
    files = {**first_files(), "requirements.txt": "tinydep==1.0\n"}
    cfg = setup(tmp_path, repos, files, release=f'install_args = ["--no-index", "--find-links", "{wheels}"]')
    async with supervised(cfg, session) as (sup, client):
        first = await info(client)
        assert first["dep"] == "1.0"
        assert Path(first["python"]).parent.parent.parent == tmp_path / "state" / "envs"
        second = await client.ship(repos, {"requirements.txt": "tinydep==2.0\n"}, "tinydep 2")
        assert (await info(client))["dep"] == "2.0"
        status = await client.status()
        assert "install" in status["last_deploy"]["phases"]
        code, body = await client.control("POST", "/rollback?wait=1")
        assert code == 200 and body["result"]["result"] == "ok", body
        phases = body["result"]["phases"]
        assert "ready" in phases and not {"checkout", "build", "install", "before_restart"} & phases.keys(), phases
        back = await info(client)
        assert back == first, (back, first)  # the same folder, the same environment
        assert repos.head() != second  # the work tree followed
        code, body = await client.control("POST", f"/rollback?wait=1&to={second[:10]}")
        assert code == 200 and body["result"]["result"] == "ok", body
        assert (await info(client))["dep"] == "2.0"


async def test_a_requirement_that_cannot_install_fails_with_the_installers_error_and_nothing_changes(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "tinydep", "1.0")
    files = {**first_files(), "requirements.txt": "tinydep==1.0\n"}
    cfg = setup(tmp_path, repos, files, release=f'install_args = ["--no-index", "--find-links", "{wheels}"]')
    async with supervised(cfg, session) as (sup, client):
        before = await info(client)
        env = Path(before["python"]).parent.parent
        listing = sorted((str(p.relative_to(env)), p.lstat().st_mtime_ns) for p in env.rglob("*"))
        bad = repos.commit({"requirements.txt": "tinydep==99\n"}, "a version that does not exist")
        await client.push(repos, bad)
        status = await eventually(lambda: last_is(client, bad, "failed"), what="the deploy failed")
        reason = status["last_deploy"]["reason"]
        assert "tinydep==99" in reason and ("No solution found" in reason or "ERROR" in reason), reason
        assert "install" in status["last_deploy"]["phases"]
        assert status["deployed_commit"] == before["commit"] and repos.head() == before["commit"]
        assert await info(client) == before
        assert sorted((str(p.relative_to(env)), p.lstat().st_mtime_ns) for p in env.rglob("*")) == listing
        code, out, _ = await cli(cfg, "history")
        assert "tinydep==99" in out


async def test_linked_env_file_and_data_folder_are_shared_by_two_releases(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    (repos.work / ".env").write_text("SECRET=one")
    (repos.work / "db.sqlite3").write_text("")  # ignored and not linked: the log says the app will not find it
    cfg = setup(tmp_path, repos, first_files(), release='link = [".env", "media/"]')
    async with running(cfg) as sup:
        warning = next(r.getMessage() for r in caplog.records if "no [release] link covers" in r.getMessage())
        assert "db.sqlite3" in warning and ".env" not in warning
        client = Client(sup, session)
        port = sup.web.port
        assert await get(session, port, "/data") == (200, "SECRET=one hits=1")
        first = (await client.status())["release"]["id"]
        await client.ship(repos, {"template.txt": "Title: {title}!"}, "another release")
        assert (await client.status())["release"]["id"] != first
        assert await get(session, port, "/data") == (200, "SECRET=one hits=2")
        assert (repos.work / "media" / "hits").read_text() == "xx"  # the data lives in the work tree
        restarts = sup.web.restarts
        for _ in range(3):
            assert (await get(session, port, "/data"))[0] == 200
        # Writes through a link are data, not code: the watcher does not restart the app for them.
        (repos.work / "media" / "canary.txt").write_text("")
        (repos.work / "template.txt").write_text("Title: {title}?")
        await eventually(lambda: sup.web.restarts > restarts, what="a restart for the code edit")
        assert sup.web.restarts == restarts + 1


async def test_a_link_through_a_pushed_symlink_is_refused_and_nothing_outside_is_touched(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    """Hardening #2: a commit with `shared -> <a folder outside>` made pushcd delete that folder's `data`, then
    plant its own link there."""
    victim = tmp_path / "victim"
    (victim / "data").mkdir(parents=True)
    (victim / "data" / "precious").write_text("keep me")
    cfg = setup(tmp_path, repos, first_files(), release='link = ["shared/data"]')
    async with supervised(cfg, session) as (sup, client):
        good = repos.head()
        (repos.dev / "shared").symlink_to(victim)  # committed as a symlink, as Capistrano layouts have it
        bad = repos.commit({}, "shared is a symlink now")
        await client.push(repos, bad)
        status = await eventually(lambda: last_is(client, bad, "failed"), what="the deploy to be refused")
        reason = status["last_deploy"]["reason"]
        assert '[release] link "shared/data": shared is a symlink in the commit' in reason, reason
        assert (victim / "data" / "precious").read_text() == "keep me" and not (victim / "data").is_symlink()
        assert sorted(p.name for p in victim.iterdir()) == ["data"]
        assert status["deployed_commit"] == good and await get(session, sup.web.port) == (200, "Title: old")


async def test_a_hand_git_pull_and_a_hand_edit_are_reported_truthfully(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    cfg = setup(tmp_path, repos, first_files())
    async with supervised(cfg, session) as (sup, client):
        port = sup.web.port
        new = repos.commit({"template.txt": "Title: {title} pulled"}, "pulled by hand")
        git("pull", "-q", "--ff-only", cwd=repos.work)
        status = await deployed(client, new)
        assert status["release"]["dirty"] is False
        assert (await info(client))["commit"] == new
        assert await get(session, port) == (200, "Title: old pulled")
        (repos.work / "template.txt").write_text("Title: {title} edited")
        status = await eventually(lambda: _dirty(client), what="a release with the hand edit")
        assert status["deployed_commit"] == new and status["state"] == "running"
        assert await get(session, port) == (200, "Title: old edited")


async def _dirty(client: Client) -> dict[str, Any] | None:
    status = await client.status()
    return status if status["release"]["dirty"] and not status["queue"] else None


@pytest.mark.skipif(uv_binary() is None, reason="uv is a dependency of pushcd; this checks its fallback")
async def test_venv_and_pip_build_the_environment_where_uv_is_not_wanted(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "tinydep", "1.0")
    files = {**first_files(), "requirements.txt": "tinydep==1.0\n"}
    cfg = setup(tmp_path, repos, files,
                release=f'installer = "pip"\ninstall_args = ["--no-index", "--find-links", "{wheels}"]')
    async with supervised(cfg, session) as (sup, client):
        assert (await info(client))["dep"] == "1.0"
        assert os.path.exists(Path((await info(client))["python"]).parent / "pip")
