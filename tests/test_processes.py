"""Process types: the web process, its workers and its release task move together as one release.

Real processes: the demo web app, and a worker that takes jobs from a queue on disk (a SQLite table,
claimed in a transaction) and records which commit did each job."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import (PY, Repos, cli, deployed, eventually, git, gunicorn_app, last_is, pid_alive, running,
                       spawn_supervisor, stop_process, supervised, wait_sync, write_config)

WORKER = '''import fcntl, os, signal, sqlite3, sys, time
db = sqlite3.connect(os.environ["QUEUE_DB"], timeout=30, isolation_level=None)
commit = os.environ["SUPERVISOR_COMMIT"]
index = os.environ["SUPERVISOR_PROCESS_INDEX"]
if os.environ.get("SINGLETON_LOCK"):  # overlap = false: nobody else may hold this lock while we run
    lock = open(os.environ["SINGLETON_LOCK"], "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        open(os.environ["SINGLETON_LOCK"] + ".violated", "w").write(f"{os.getpid()} found it held\\n")
        sys.exit(9)
{EXTRA}
stop = False

def on_term(*_):
    global stop
    stop = True

signal.signal(signal.SIGTERM, on_term)
print(f"worker {index} of {commit[:12]} ready", flush=True)
while not stop:
    db.execute("BEGIN IMMEDIATE")
    row = db.execute("SELECT id FROM jobs WHERE done_by IS NULL ORDER BY id LIMIT 1").fetchone()
    if row:
        db.execute("UPDATE jobs SET done_by = ?, times = times + 1 WHERE id = ?", (commit, row[0]))
    db.execute("COMMIT")
    if not row:
        time.sleep(0.01)
'''


def worker_source(extra: str = "") -> str:
    return WORKER.replace("{EXTRA}", extra)


def make_queue(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, done_by TEXT, times INTEGER NOT NULL DEFAULT 0)")
    return path


def enqueue(path: Path, n: int) -> list[int]:
    with sqlite3.connect(path, timeout=30) as db:
        return [db.execute("INSERT INTO jobs DEFAULT VALUES").lastrowid for _ in range(n)]  # type: ignore[misc]


def jobs(path: Path) -> dict[int, tuple[str | None, int]]:
    with sqlite3.connect(path, timeout=30) as db:
        return {i: (by, times) for i, by, times in db.execute("SELECT id, done_by, times FROM jobs")}


def setup(tmp_path: Path, repos: Repos, monkeypatch: pytest.MonkeyPatch, *, worker: str | None = None,
          process: str = "", extra: str = "", deploy: str = "probation = 30") -> tuple[Path, Path]:
    queue = make_queue(tmp_path / "queue.db")
    monkeypatch.setenv("QUEUE_DB", str(queue))
    files = {"worker.py": worker or worker_source()}
    repos.commit(files, "a worker")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    table = (f'[processes.worker]\ncommand = ["{PY}", "worker.py"]\nstop_timeout = 5\n{process}\n'
             f'[processes.worker.ready]\nmin_uptime = 0.3\n')
    cfg = write_config(tmp_path / "config.toml", repos, deploy=deploy, extra=table + extra)
    return cfg, queue


def workers_of(status: dict[str, Any], name: str = "worker") -> list[dict[str, Any]]:
    return [p for p in status["processes"] if p["name"] == name]


def web_of(status: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in status["processes"] if p["name"] == "web")


async def all_done(queue: Path) -> dict[int, tuple[str | None, int]] | None:
    done = jobs(queue)
    return done if all(by is not None for by, _ in done.values()) else None


async def test_a_push_moves_web_and_worker_together_and_every_job_is_done_once(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, queue = setup(tmp_path, repos, monkeypatch)
    async with supervised(cfg, session) as (sup, client):
        first = repos.head()
        status = await client.status()
        assert [w["commit"] for w in workers_of(status)] == [first] and web_of(status)["commit"] == first
        stop = asyncio.Event()

        async def produce() -> None:  # jobs keep arriving during the deploy
            while not stop.is_set():
                enqueue(queue, 5)
                await asyncio.sleep(0.01)

        producer = asyncio.create_task(produce())
        try:
            new = await client.ship(repos, {"message.txt": "v2\n"}, "v2")
        finally:
            stop.set()
            await producer
        status = await client.status()
        assert [w["commit"] for w in workers_of(status)] == [new] and web_of(status)["commit"] == new
        assert all(p["state"] == "running" for p in status["processes"])
        after = enqueue(queue, 50)
        done = await eventually(lambda: all_done(queue), what="every job done")
        assert all(times == 1 for _, times in done.values()), "a job was done twice"
        assert {done[i][0] for i in after} == {new}  # after the swap, only the new commit works
        assert {by for by, _ in done.values()} <= {first, new}


async def test_a_worker_crash_restarts_only_the_worker_with_backoff(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    cfg, queue = setup(tmp_path, repos, monkeypatch)
    async with supervised(cfg, session) as (sup, client):
        before = await client.status()
        victim = workers_of(before)[0]["pid"]
        os.kill(victim, signal.SIGKILL)

        async def restarted() -> dict[str, Any] | None:
            st = await client.status()
            w = workers_of(st)[0]
            return st if w["pid"] not in (None, victim) and w["state"] == "running" else None

        after = await eventually(restarted, what="the worker restarted")
        assert web_of(after)["pid"] == web_of(before)["pid"]  # the web process was not touched
        # One restarts figure: the top level is the sum of every process's crash restarts.
        assert workers_of(after)[0]["restarts"] == 1 and after["restarts"] == before["restarts"] + 1
        assert after["restarts"] == sum(p["restarts"] for p in after["processes"])
        assert f"worker[{victim}] killed by SIGKILL; restarting in 0.5s" in caplog.text
        enqueue(queue, 5)
        await eventually(lambda: all_done(queue), what="the restarted worker takes jobs")
        async with session.get(f"http://127.0.0.1:{sup.control_port}/metrics") as resp:
            text = await resp.text()
        assert 'supervisor_process_restarts_total{process="worker"} 1.0' in text
        assert 'supervisor_process_up{index="0",process="worker"} 1.0' in text


async def test_a_worker_that_exits_at_start_in_the_new_release_rolls_the_web_process_back_too(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, queue = setup(tmp_path, repos, monkeypatch)
    async with supervised(cfg, session) as (sup, client):
        good = repos.head()
        before = await client.status()
        bad = repos.commit({"worker.py": "import sys\nprint('cannot connect', flush=True)\nsys.exit(2)\n",
                            "message.txt": "broken release\n"}, "a worker that dies")
        await client.push(repos, bad)

        status = await eventually(lambda: last_is(client, bad, "failed"), what="the deploy to fail")
        reason = status["last_deploy"]["reason"]
        assert "worker[0]" in reason and "exited with status 2" in reason, reason
        assert status["deployed_commit"] == good and repos.head() == good
        assert web_of(status)["commit"] == good and "broken release" not in await client.app_get()
        assert [w["pid"] for w in workers_of(status)] == [w["pid"] for w in workers_of(before)]  # never stopped
        enqueue(queue, 10)
        done = await eventually(lambda: all_done(queue), what="the old worker keeps consuming")
        assert {by for by, _ in done.values()} == {good}


async def test_overlap_false_never_runs_two_instances_at_once(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    lock = tmp_path / "scheduler.lock"
    monkeypatch.setenv("SINGLETON_LOCK", str(lock))
    cfg, _queue = setup(tmp_path, repos, monkeypatch, process="overlap = false")
    async with supervised(cfg, session) as (sup, client):
        for i in range(3):
            await client.ship(repos, {"message.txt": f"v{i}\n"}, f"v{i}")
            await client.control("POST", "/restart?process=worker&wait=1")
        assert not Path(str(lock) + ".violated").exists()
        assert "restarting in" not in caplog.text  # no instance was refused its lock and exited
        starts = [r.getMessage() for r in caplog.records if "worker" in r.getMessage()
                  and ("started: pid" in r.getMessage() or "] stopped:" in r.getMessage())]
        assert [m.startswith("worker started") for m in starts] == [True] + [False, True] * 6, starts


async def test_count_3_runs_three_instances_with_distinct_indexes(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    extra = f'open(os.path.join({str(marks)!r}, index), "w").write(str(os.getpid()))'
    cfg, _queue = setup(tmp_path, repos, monkeypatch, worker=worker_source(extra), process="count = 3")
    async with supervised(cfg, session) as (sup, client):
        status = await client.status()
        instances = workers_of(status)
        assert [w["index"] for w in instances] == [0, 1, 2]
        await eventually(lambda: sorted(p.name for p in marks.iterdir() if p.read_text()) == ["0", "1", "2"],
                         what="a mark by each instance")
        assert {int((marks / str(w["index"])).read_text()) for w in instances} == {w["pid"] for w in instances}
        assert len({w["pid"] for w in instances}) == 3


async def test_a_procfile_change_in_a_commit_adds_a_worker_and_restart_takes_a_name(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = make_queue(tmp_path / "queue.db")
    monkeypatch.setenv("QUEUE_DB", str(queue))
    repos.commit({"worker.py": worker_source(),
                  "Procfile": f"web: {PY} app.py --fd {{fd}} --fd {{probe_fd}}\n"}, "a Procfile with web only")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    cfg = write_config(tmp_path / "config.toml", repos, app={"command": []},
                       extra="[processes.worker.ready]\nmin_uptime = 0.3\n")
    text = cfg.read_text().replace("[app]\n", '[app]\nprocfile = "Procfile"\n', 1).replace("command = []\n", "")
    cfg.write_text(text)
    code, out, err = await cli(cfg, "check")  # hardening #19.8: an IndexError before, the web command in the Procfile
    assert code == 0 and "Traceback" not in err, (out, err)
    shown = json.loads(out)  # #19.10: what check shows is what a deploy reads, the Procfile's commands included
    assert shown["app"]["command"] == [PY, "app.py", "--fd", "{fd}", "--fd", "{probe_fd}"], shown["app"]
    procfile = repos.work / "Procfile"
    procfile.write_text(procfile.read_text() + f"worker: {PY} worker.py --queue\n")
    code, out, err = await cli(cfg, "check")
    worker = json.loads(out)["processes"]["worker"]
    assert worker["command"] == [PY, "worker.py", "--queue"] and worker["from"] == "Procfile", worker
    git("checkout", "--", "Procfile", cwd=repos.work)
    async with supervised(cfg, session) as (sup, client):
        assert [p["name"] for p in (await client.status())["processes"]] == ["web"]
        new = await client.ship(repos, {"Procfile": f"web: {PY} app.py --fd {{fd}} --fd {{probe_fd}}\n"
                                                   f"worker: {PY} worker.py\n"}, "add a worker")
        status = await client.status()
        assert [(p["name"], p["commit"]) for p in status["processes"]] == [("web", new), ("worker", new)]
        worker_pid, web_pid = workers_of(status)[0]["pid"], web_of(status)["pid"]
        code, body = await client.control("POST", "/restart?process=worker&wait=1")
        assert code == 200 and body["result"]["result"] == "ok", body
        assert workers_of(body["status"])[0]["pid"] != worker_pid and web_of(body["status"])["pid"] == web_pid
        code, body = await client.control("GET", "/logs?process=worker")
        assert body["lines"] and all(line["process"] == "worker" for line in body["lines"])
        assert any("ready" in line["line"] for line in body["lines"])
        code, out, _ = await cli(cfg, "logs", "--process", "worker")
        assert code == 0 and "worker[" in out and "web[" not in out, out
        code, out, _ = await cli(cfg, "restart", "worker")
        assert code == 0 and "restarted worker by hand" in out, out
        code, out, _ = await cli(cfg, "restart", "nosuch")
        assert code == 1 and "no process type nosuch" in out, out
        bad = repos.commit({"Procfile": "web python app.py\n"}, "a Procfile that does not parse")
        await client.push(repos, bad)
        await eventually(lambda: last_is(client, bad, "failed"), what="the deploy to fail")
        assert "Procfile line 1" in (await client.status())["last_deploy"]["reason"]


async def test_a_failing_release_task_leaves_everything_as_it_was(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    ran = tmp_path / "release-ran"
    release = f"import sys\nopen({str(ran)!r}, 'a').write('x')\nsys.exit(0)\n"
    repos.commit({"release.py": release}, "a release task")
    cfg, _queue = setup(tmp_path, repos, monkeypatch,
                        deploy=f'probation = 30\nrelease_command = ["{PY}", "release.py"]')
    async with supervised(cfg, session) as (sup, client):
        good = await client.ship(repos, {"message.txt": "v2\n"}, "v2")
        assert ran.read_text() == "xx"  # once per release: the first start's, then the deploy's
        before = await client.status()
        assert (before["last_deploy"]["phases"]).get("release") is not None
        bad = repos.commit({"release.py": "import sys\nprint('migration failed', flush=True)\nsys.exit(3)\n",
                            "message.txt": "v3\n"}, "a failing migration")
        await client.push(repos, bad)
        status = await eventually(lambda: last_is(client, bad, "failed"), what="the deploy to fail")
        reason = status["last_deploy"]["reason"]
        assert "release task" in reason and "migration failed" in reason, reason
        assert status["deployed_commit"] == good and "v3" not in await client.app_get()
        assert [(p["pid"], p["commit"]) for p in status["processes"]] == \
            [(p["pid"], p["commit"]) for p in before["processes"]]


def test_sigkill_of_pushcd_leaves_no_worker_behind(tmp_path: Path, repos: Repos,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import re
    import urllib.request

    cfg, _queue = setup(tmp_path, repos, monkeypatch, process="count = 2")
    port = re.search(r'\[control\]\nlisten = "127.0.0.1:(\d+)"', cfg.read_text())[1]  # type: ignore[index]

    def processes() -> list[dict[str, Any]] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
                found = json.load(resp)["processes"]
        except OSError:
            return None
        return found if len(found) == 3 and all(p["pid"] for p in found) else None

    proc = spawn_supervisor(cfg)
    try:
        pids = [p["pid"] for p in wait_sync(processes, 60, "the web process and two workers")]
        proc.kill()
        proc.wait(10)
    finally:
        stop_process(proc)
    wait_sync(lambda: not any(pid_alive(p) for p in pids), 10, "every process to die with pushcd")


async def test_status_and_page_list_every_process(tmp_path: Path, repos: Repos, session: aiohttp.ClientSession,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, _queue = setup(tmp_path, repos, monkeypatch)
    async with supervised(cfg, session) as (sup, client):
        sha = repos.head()
        await deployed(client, sha)
        code, page = await client.control("GET", "/")
        assert "id='processes'" in page["text"] and "worker[0]" in page["text"]


async def test_a_second_pushcd_on_the_same_work_tree_is_refused(tmp_path: Path, repos: Repos,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor import config
    from supervisor.ops.site import StartupError
    from supervisor.runner import build

    cfg, _queue = setup(tmp_path, repos, monkeypatch)
    other = write_config(tmp_path / "other.toml", repos)  # other ports and all, the same work tree
    async with running(cfg):
        with pytest.raises(StartupError, match=f"another pushcd \\(pid {os.getpid()}\\) already deploys"):
            build(config.load(other))
    sup = build(config.load(other))  # the first one stopped: free again
    await sup.close()


BARRIER = '''import os, pathlib, socket, time
here = pathlib.Path(os.environ["BARRIER"])
(here / os.environ["SUPERVISOR_PROCESS"]).write_text("")
while len(list(here.iterdir())) < int(os.environ["BARRIER_SIZE"]):  # every type must have started
    time.sleep(0.01)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", "\\0" + os.environ["NOTIFY_SOCKET"][1:])
while True:
    time.sleep(1)
'''


async def test_independent_process_types_are_gated_together(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hardening #19.12: 100 types in a Procfile took 102 s to deploy, each gated after the one before. Here
    each of ten types is ready only once all ten have started: one after another, none would ever be."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv("BARRIER", str(barrier))
    monkeypatch.setenv("BARRIER_SIZE", "10")
    web = f"web: {PY} app.py --fd {{fd}} --fd {{probe_fd}}\n"
    repos.commit({"barrier.py": BARRIER, "Procfile": web}, "web only")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    ready = "".join(f"[processes.w{i}.ready]\nnotify = true\ntimeout = 20\n" for i in range(10))
    cfg = write_config(tmp_path / "config.toml", repos, app={"command": []}, extra=ready)
    text = cfg.read_text().replace("[app]\n", '[app]\nprocfile = "Procfile"\n', 1)
    cfg.write_text(text.replace("command = []\n", ""))
    async with supervised(cfg, session) as (sup, client):
        procfile = web + "".join(f"w{i}: {PY} barrier.py\n" for i in range(10))
        new = await client.ship(repos, {"Procfile": procfile}, "ten worker types")
        status = await client.status()
        assert sorted(p["name"] for p in status["processes"]) == sorted(["web", *(f"w{i}" for i in range(10))])
        assert all(p["commit"] == new and p["state"] == "running" for p in status["processes"])
        assert status["last_deploy"]["result"] == "ok" and status["last_deploy"]["commit"] == new


async def test_a_heroku_procfile_with_shell_lines_and_port_runs(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    """#20, Procfiles as Heroku users write them: before, `$PORT` stayed as it was and `release: a && b` failed
    with an argparse usage error, each line being split and run with no shell."""
    gunicorn_app(repos)  # wsgi.py, committed and checked out
    marks = tmp_path / "marks"
    procfile = (f"web: {PY} -m gunicorn --workers 2 --bind 0.0.0.0:$PORT wsgi:app\n"
                f"release: {PY} -c \"open('{marks}', 'a').write('migrate ')\" && "
                f"{PY} -c \"open('{marks}', 'a').write('collectstatic')\"\n"
                f"worker: echo worker sees port $PORT > {tmp_path / 'port'} && exec {PY} -c 'import time; "
                f"time.sleep(600)'\n")
    repos.commit({"Procfile": procfile}, "a Heroku Procfile")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    cfg = write_config(tmp_path / "config.toml", repos, app={"command": []})
    text = cfg.read_text().replace("[app]\n", '[app]\nprocfile = "Procfile"\n', 1)
    cfg.write_text(text.replace("command = []\n", ""))
    async with supervised(cfg, session) as (sup, client):
        assert marks.read_text() == "migrate collectstatic"  # both halves of the release line ran
        assert "commit " + repos.head() in await client.app_get()  # gunicorn serves on the socket pushcd holds
        status = await client.status()
        assert [p["name"] for p in status["processes"]] == ["web", "worker"]
        assert (tmp_path / "port").read_text().split() == ["worker", "sees", "port", str(sup.web.port)]
        new = await client.ship(repos, {"message.txt": "v2\n"}, "v2")  # and a swap keeps working
        assert "commit " + new in await client.app_get()
