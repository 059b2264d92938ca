"""One road to a running release (#18): every start, restart and recovery passes the same gates.

One test per reproduction of the issue, with real processes, real git and real signals: a first
start runs the release task; a deploy stopped by SIGTERM or SIGKILL during its preparation is
resolved at the next start with the last good release as the fallback; a hand pull runs the
release task; SIGTERM is honoured during start-up; a restart is recorded as a restart; a release
folder is not reused when [release] link changed."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from .conftest import (DEMO_APP, PY, RELEASE_MODE, Client, Repos, cli, deployed, eventually, git, last_is, pid_alive,
                       running, signed_push, spawn_supervisor, stop_process, supervised, try_status, wait_sync,
                       write_config)

# /health answers 500 until the release task has "migrated" this commit (a line in MIGRATED).
NEEDS_MIGRATION = DEMO_APP.replace(
    "        self.send_response(200)\n",
    "        done = open(os.environ['MIGRATED']).read().split() if os.path.exists(os.environ['MIGRATED']) else []\n"
    "        self.send_response(500 if self.path == '/health' and COMMIT not in done else 200)\n")
MIGRATE = "import os\nopen(os.environ['MIGRATED'], 'a').write(os.environ['SUPERVISOR_COMMIT'] + '\\n')\n"


def migrations(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def with_migrations(tmp_path: Path, repos: Repos, monkeypatch: pytest.MonkeyPatch, deploy: str = "") -> Path:
    """An app whose health needs its release task, committed and checked out: a fresh clone, never started."""
    migrated = tmp_path / "migrated"
    monkeypatch.setenv("MIGRATED", str(migrated))
    assert NEEDS_MIGRATION != DEMO_APP
    repos.commit({"app.py": NEEDS_MIGRATION, "migrate.py": MIGRATE}, "needs its migration")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    return write_config(tmp_path / "c.toml", repos, ready={"timeout": 10},
                        deploy=f'probation = 30\nrelease_command = ["{PY}", "migrate.py"]\n{deploy}')


async def test_a_first_start_runs_the_release_task_once(tmp_path: Path, repos: Repos, session: aiohttp.ClientSession,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Reproduction 1: before, the web process of a fresh clone failed its health check for good."""
    cfg = with_migrations(tmp_path, repos, monkeypatch)
    first = repos.head()
    async with supervised(cfg, session) as (sup, c):
        st = await deployed(c, first)
        assert migrations(tmp_path / "migrated") == [first]
        assert st["last_deploy"]["kind"] == "start" and st["last_deploy"]["result"] == "ok"
        assert "release" in st["last_deploy"]["phases"]
    async with running(cfg) as sup:  # a restart of pushcd: the release was prepared already
        await deployed(Client(sup, session), first)
        assert migrations(tmp_path / "migrated") == [first]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_deploy_stopped_during_its_preparation_is_resolved_at_the_next_start(
        tmp_path: Path, repos: Repos, sig: int) -> None:
    """Reproduction 2: before, the next start ran the half-deployed commit ungated and crash-looped."""
    hold, began = tmp_path / "hold", tmp_path / "began"
    wait = (f"import os, pathlib, time\npathlib.Path({str(began)!r}).write_text('')\n"
            f"while os.path.exists({str(hold)!r}): time.sleep(0.01)\n")
    cfg = write_config(tmp_path / "c.toml", repos, watch="enabled = false", ready={"timeout": 5},
                       deploy=f"probation = 30\nbefore_restart = [[{json.dumps(PY)}, \"-c\", {json.dumps(wait)}]]")
    good = repos.head()
    proc = spawn_supervisor(cfg)
    try:
        first = wait_sync(lambda: (s := try_status(cfg)) and s["child_pid"] and s, 30, "pushcd")
        hold.write_text("")
        began.unlink(missing_ok=True)  # the first start ran it too
        bad = repos.commit({"app.py": "import nosuchmodule\n"}, "fails at import")
        signed_push(cfg, repos, bad)
        wait_sync(began.exists, 30, "before_restart of the new commit to run")
        stopped_at = time.monotonic()
        proc.send_signal(sig)
        proc.wait(20)
        assert time.monotonic() - stopped_at < 5 + 5  # [app] stop_timeout + 5 s
    finally:
        out = stop_process(proc)
    wait_sync(lambda: not pid_alive(first["child_pid"]), 10, "the app to stop with pushcd")
    hold.unlink()
    proc = spawn_supervisor(cfg)
    try:
        st = wait_sync(lambda: (s := try_status(cfg)) and s["state"] == "running" and s["child_pid"]
                       and (s["last_deploy"] or {}).get("commit") == bad and s, 60, "the stopped deploy resolved")
        assert st["deployed_commit"] == good and bad in st["bad_commits"], st
        assert st["last_deploy"]["kind"] == "start" and st["last_deploy"]["result"] == "failed", st["last_deploy"]
        assert "nosuchmodule" in st["last_deploy"]["reason"]
        assert repos.head() == good  # the work tree follows the release that serves
        assert (tmp_path / "state" / "ledger.json").exists()
        wait_sync(lambda: (s := try_status(cfg)) and s["child_pid"] == st["child_pid"] and s["state"] == "running",
                  5, "the good release to stay up")
    finally:
        out = stop_process(proc)
    assert "the last run stopped during a deploy" in out, out[-3000:]


async def test_a_hand_pull_runs_the_release_task_and_a_restart_is_a_restart(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reproductions 3 and 5: a `git pull` by hand is prepared like a deploy; `pushcd restart` is recorded as
    a restart (history, status, metrics), and prepares nothing."""
    cfg = with_migrations(tmp_path, repos, monkeypatch)
    migrated = tmp_path / "migrated"
    async with supervised(cfg, session) as (sup, c):
        pulled = repos.commit({"message.txt": "pulled by hand\n"}, "a new migration")
        git("pull", "-q", "--ff-only", cwd=repos.work)
        st = await deployed(c, pulled)
        assert migrations(migrated)[-1] == pulled and "pulled by hand" in await c.app_get()
        assert st["last_deploy"]["kind"] == "deploy" and st["last_deploy"]["trigger"] == "watch"
        pid = st["child_pid"]
        code, out, _ = await cli(cfg, "restart")
        assert code == 0, out
        st = await eventually(lambda: last_is(c, pulled, "ok"), what="the restart")
        assert st["last_deploy"]["kind"] == "restart" and st["child_pid"] != pid
        assert st["restarts"] == sum(p["restarts"] for p in st["processes"]) == 0  # no crash restarts
        assert migrations(migrated)[-1] == pulled and len(migrations(migrated)) == 2  # nothing prepared again
        kinds = [(d["kind"], d["trigger"]) for d in sup.history.deploys(5)]
        assert kinds[:2] == [("restart", "manual"), ("deploy", "watch")], kinds
        code, body = await c.control("GET", "/metrics")
        for kind in ("start", "deploy", "restart"):  # each kind counted as itself, once
            assert f'supervisor_deploys_total{{kind="{kind}",result="ok"}} 1.0' in body["text"], kind


def test_sigterm_during_the_first_start_stops_within_stop_timeout(tmp_path: Path, repos: Repos) -> None:
    """Reproduction 4: before, SIGTERM waited out [app.ready] timeout (60 s) and systemd SIGKILLed pushcd."""
    repos.commit({"app.py": "import time\nprint('never ready', flush=True)\ntime.sleep(600)\n"}, "never ready")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    cfg = write_config(tmp_path / "c.toml", repos, ready={"timeout": 60})
    proc = spawn_supervisor(cfg)
    try:
        wait_sync(lambda: (s := try_status(cfg)) and s["state"] == "starting", 30, "pushcd to be starting")
        app = wait_sync(lambda: children_running(proc.pid, "app.py"), 30, "the app to be started")
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        took = time.monotonic() - stopped_at
    finally:
        out = stop_process(proc)
    assert took < 5 + 5, f"took {took:.1f}s\n{out[-2000:]}"  # [app] stop_timeout + 5 s
    assert proc.returncode == 0 and not any(pid_alive(p) for p in app)


def children_running(parent: int, script: str) -> list[int]:
    """Pids of ``parent``'s children whose command line names ``script``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and script.encode() in cmd:
            found.append(int(pid))
    return found


def running_in(folder: Path) -> list[int]:
    """Pids of live processes whose working directory is inside ``folder`` (the apps of a test)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(str(folder)) and pid_alive(int(pid)):
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.skipif(RELEASE_MODE == "in-place", reason="release folders exist in snapshot mode only")
async def test_a_changed_link_or_before_restart_makes_a_new_release_folder(tmp_path: Path, repos: Repos,
                                                                 session: aiohttp.ClientSession) -> None:
    """Reproduction 6: before, the folder made without the link was reused as it was."""
    cfg = write_config(tmp_path / "c.toml", repos)
    async with running(cfg) as sup:
        before = sup.deployer.current
        assert before is not None and not (before.root / "data").exists()
    cfg.write_text(cfg.read_text().replace("[release]\n", '[release]\nlink = ["data/"]\n'))
    async with supervised(cfg, session) as (sup, c):
        await deployed(c, repos.head())
        after = sup.deployer.current
        assert after is not None and after.id != before.id
        assert (after.root / "data").is_symlink() and (repos.work / "data").is_dir()
    # before_restart writes into a fresh folder (collectstatic): a new command makes a new folder too
    make = "import pathlib; pathlib.Path('collected').write_text('static')"
    cfg.write_text(cfg.read_text().replace("[deploy]\n", f"[deploy]\nbefore_restart = [[{json.dumps(PY)}, "
                                                         f"\"-c\", {json.dumps(make)}]]\n"))
    async with supervised(cfg, session) as (sup, c):
        await deployed(c, repos.head())
        again = sup.deployer.current
        assert again is not None and again.id not in (before.id, after.id)
        assert (again.root / "collected").read_text() == "static"


# -- SIGTERM and SIGKILL at each phase of an attempt ---------------------------------------------------------

# The web process notes when it starts and waits (unready) while HOLD_READY exists; the release task notes
# its begin and end and waits while HOLD_RELEASE exists. JOURNAL then tells whether anything ran ungated.
JOURNALED_APP = NEEDS_MIGRATION.replace(
    "class Handler(", "open(os.environ['JOURNAL'], 'a').write(f'web {COMMIT}\\n')\n"
    "import time as _t\nwhile os.path.exists(os.environ['HOLD_READY']):\n    _t.sleep(0.01)\n\n\nclass Handler(", 1)
JOURNALED_TASK = ("import os, time\nj = os.environ['JOURNAL']\nc = os.environ['SUPERVISOR_COMMIT']\n"
                  "open(j, 'a').write(f'begin {c}\\n')\n"
                  "while os.path.exists(os.environ['HOLD_RELEASE']):\n    time.sleep(0.01)\n" + MIGRATE +
                  "open(j, 'a').write(f'release {c}\\n')\n")


def journal(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in path.read_text().splitlines()] if path.exists() else []  # type: ignore


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("phase", ["release task", "readiness", "probation"])
def test_a_stop_at_each_phase_is_resolved_through_the_gates(tmp_path: Path, repos: Repos, phase: str, sig: int,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    log, hold_ready, hold_release = tmp_path / "journal", tmp_path / "hold-ready", tmp_path / "hold-release"
    for name, path in [("JOURNAL", log), ("HOLD_READY", hold_ready), ("HOLD_RELEASE", hold_release),
                       ("MIGRATED", tmp_path / "migrated")]:
        monkeypatch.setenv(name, str(path))
    assert JOURNALED_APP.count("HOLD_READY") == 1
    repos.commit({"app.py": JOURNALED_APP, "migrate.py": JOURNALED_TASK}, "journaled")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    cfg = write_config(tmp_path / "c.toml", repos, watch="enabled = false", ready={"timeout": 30},
                       deploy=f'probation = 30\nrelease_command = ["{PY}", "migrate.py"]')
    proc = spawn_supervisor(cfg)
    try:
        first = wait_sync(lambda: (s := try_status(cfg)) and s["child_pid"] and s, 30, "pushcd")
        {"release task": hold_release, "readiness": hold_ready, "probation": tmp_path / "none"}[phase].write_text("")
        new = repos.commit({"message.txt": "v2\n"}, "v2")
        signed_push(cfg, repos, new)
        reached = {"release task": lambda: ("begin", new) in journal(log),
                   "readiness": lambda: ("web", new) in journal(log),
                   "probation": lambda: (s := try_status(cfg)) and s["deployed_commit"] == new}[phase]
        wait_sync(reached, 30, f"the {phase} phase of the deploy")
        stopped_at = time.monotonic()
        proc.send_signal(sig)
        proc.wait(20)
        assert time.monotonic() - stopped_at < 5 + 5  # [app] stop_timeout + 5 s
    finally:
        stop_process(proc)
    wait_sync(lambda: not pid_alive(first["child_pid"]) and not running_in(tmp_path), 10, "no process left behind")
    hold_ready.unlink(missing_ok=True)
    hold_release.unlink(missing_ok=True)
    proc = spawn_supervisor(cfg)
    try:
        wait_sync(lambda: (s := try_status(cfg)) and s["deployed_commit"] == new and s["state"] == "running"
                  and s["child_pid"], 60, "the new commit to serve after the restart")
    finally:
        out = stop_process(proc)
    events = journal(log)
    done = [i for i, e in enumerate(events) if e == ("release", new)]
    assert len(done) == 1, events  # prepared exactly once, whatever stopped it
    assert all(i > done[0] for i, e in enumerate(events) if e == ("web", new)), events  # nothing ungated ran
    assert repos.head() == new, out[-2000:]
