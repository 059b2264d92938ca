"""The core loop end to end, in one event loop: signed webhook -> fetch and
fast-forward -> the real app restarted and serving the new commit."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from pathlib import Path

from .conftest import Repos, deployed, eventually, git, gunicorn_app, payload, sign, supervised, write_config


async def test_real_push_payload_deploys_the_branch_tip(tmp_path: Path, session) -> None:
    repos = Repos(tmp_path / "r", branch="master")
    cfg = write_config(tmp_path / "c.toml", repos, repo_extra='full_name = "binkkatal/sample_app"')
    async with supervised(cfg, session) as (sup, c):
        first = repos.head()
        assert (await c.status())["deployed_commit"] == first
        assert f"commit {first}" in await c.app_get()
        sha = repos.commit({"message.txt": "second release\n"}, "second release")
        # The payload's own `after` names a commit we never had: it is only a hint.
        status, body = await c.deliver(payload("github/push.json"))
        assert status == 202 and body["verdict"] == "queued"
        st = await deployed(c, sha)
        assert st["last_deploy"]["result"] == "ok" and st["last_deploy"]["commit"] == sha
        assert st["deployed_message"] == "second release"
        text = await c.app_get()
        assert f"commit {sha}" in text and "second release" in text
        assert git("status", "--porcelain", cwd=repos.work) == ""


async def test_ignored_events_deploy_nothing(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos, repo_extra='full_name = "Codertocat/Hello-World"')
    async with supervised(cfg, session) as (sup, c):
        pid = (await c.status())["child_pid"]
        repos.commit({"message.txt": "not to be deployed\n"}, "v2")
        for name, event in [("github/push-tag.json", "push"), ("github/push-tag-deleted.json", "push"),
                            ("github/ping.json", "ping"), ("github/pull_request.opened.json", "pull_request"),
                            ("github/create.json", "create"), ("github/push-deleted.json", "push"),
                            ("github/push.json", "push")]:
            status, body = await c.deliver(payload(name), event)
            assert 200 <= status < 300 and body["verdict"] in ("ignored", "ping"), (name, body)
        status, body = await c.deliver(payload("github/push.json"), signature="sha256=" + "0" * 64)
        assert status == 401 and body["verdict"] == "unauthorized"
        status, body = await c.deliver(b"{oops", signature=sign(b"{oops"))
        assert status == 400
        st = await c.status()
        assert st["child_pid"] == pid and st["last_deploy"] is None and sup.deployer.deploys == 0
        assert st["deployed_commit"] == repos.head() != git("rev-parse", "HEAD", cwd=repos.dev)


async def test_body_over_25_mb_is_413(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        big = b"x" * (25 * 1024 * 1024 + 1)
        status, _ = await c.deliver(big, signature="sha256=" + "0" * 64)
        assert status == 413
        status, _ = await c.deliver(b"{}", "ping")
        assert status == 200


async def test_redelivery_is_a_duplicate_and_deploys_once(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        sha = repos.commit({"message.txt": "v2\n"}, "v2")
        status, body = await c.push(repos, sha, delivery="same-id")
        assert status == 202
        await deployed(c, sha)
        status, body = await c.push(repos, sha, delivery="same-id")
        assert status == 200 and body["verdict"] == "duplicate" and "duplicate" in body["reason"]
        assert sup.deployer.deploys == 1


async def test_push_that_changes_nothing_restarts_nothing(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        before = await c.status()
        runs = sup.deployer.runs
        status, _ = await c.push(repos, repos.head())
        assert status == 202
        await eventually(lambda: sup.deployer.runs > runs, what="the deploy worker to look")
        after = await c.status()
        assert after["child_pid"] == before["child_pid"] and after["restarts"] == before["restarts"]


async def test_pushes_during_a_deploy_coalesce(repos: Repos, tmp_path: Path, session) -> None:
    # A slow before_restart keeps the first deploy busy while more pushes arrive.
    gate, hold = tmp_path / "gate", tmp_path / "hold"  # held only once started: the first start prepares too
    script = (f"import os,time\nwhile os.path.exists({str(hold)!r}) and not os.path.exists({str(gate)!r}): "
              f"time.sleep(0.01)\n")
    cfg = write_config(tmp_path / "c.toml", repos,
                       deploy=f"before_restart = [[{_q(os.sys.executable)}, \"-c\", {_q(script)}]]")
    async with supervised(cfg, session) as (sup, c):
        hold.write_text("")
        first = repos.commit({"message.txt": "v2\n"}, "v2")
        await c.push(repos, first)
        await eventually(lambda: sup.deployer.state == "deploying", what="first deploy to start")
        last = first
        for i in range(5):
            last = repos.commit({"message.txt": f"v{3 + i}\n"}, f"v{3 + i}")
            assert (await c.push(repos, last))[0] == 202
        gate.write_text("go")
        await deployed(c, last)
        # The first start prepared its release (a row of its own); then the first deploy, and one for all five.
        assert [d["kind"] for d in sup.history.deploys(10)] == ["deploy", "deploy", "start"]
        st = await c.status()
        assert st["swaps"] == 2 and st["restarts"] == 0  # two new releases; no crash restarts


def _q(s: str) -> str:
    import json

    return json.dumps(s)


async def test_slow_git_remote_does_not_delay_the_answer(repos: Repos, tmp_path: Path, session) -> None:
    """A remote that accepts and never answers: the fetch hangs in the git thread, the webhook does not."""
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(hang.accept()[0]), daemon=True).start()
    git("remote", "set-url", "origin", f"http://127.0.0.1:{hang.getsockname()[1]}/repo.git", cwd=repos.work)
    cfg = write_config(tmp_path / "c.toml", repos, repo_extra="fetch_timeout = 30")
    try:
        async with supervised(cfg, session) as (sup, c):
            await c.push(repos, "a" * 40)
            await eventually(lambda: accepted, what="the fetch to connect to the hung remote")
            worst = 0.0
            for _ in range(20):
                t = time.perf_counter()
                status, _ = await c.deliver(b"{}", "ping")
                worst = max(worst, time.perf_counter() - t)
                assert status == 200
            assert sup.deployer.state == "deploying"  # the fetch is still hanging
            assert worst < 0.5, f"webhook answer took {worst:.3f}s while git was busy"
            for s in accepted:
                s.close()  # the remote goes away: the fetch fails and is retried
            st = await eventually(lambda: sup.deployer.last, what="the failed fetch to be recorded")
            assert st.result == "failed" and "retrying" in st.reason
    finally:
        hang.close()


async def test_unreachable_origin_is_retried_until_it_returns(repos: Repos, tmp_path: Path, session) -> None:
    origin = str(repos.origin)
    git("remote", "set-url", "origin", str(repos.root / "moved.git"), cwd=repos.work)
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        pid = (await c.status())["child_pid"]
        sha = repos.commit({"message.txt": "v2\n"}, "v2")
        await c.push(repos, sha)
        st = await eventually(lambda: sup.deployer.last, what="fetch failure")
        assert st.result == "failed" and "retrying in" in st.reason
        assert (await c.status())["child_pid"] == pid  # the app keeps running
        git("remote", "set-url", "origin", origin, cwd=repos.work)  # origin is back
        await deployed(c, sha)


async def test_diverged_branch_is_refused_then_reset_keeps_a_backup(repos: Repos, tmp_path: Path, session) -> None:
    (repos.work / "local.txt").write_text("server-only commit\n")
    git("add", "local.txt", cwd=repos.work)
    git("-c", "user.name=x", "-c", "user.email=x@y", "commit", "-qm", "local", cwd=repos.work)
    local = repos.head()
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        sha = repos.commit({"message.txt": "upstream\n"}, "upstream")
        await c.push(repos, sha)
        st = await eventually(lambda: sup.deployer.last, what="the refusal")
        assert st.result == "refused" and "diverged" in st.reason
        status = await c.status()
        assert status["last_deploy"]["result"] == "refused" and "diverged" in status["last_deploy"]["reason"]
        assert status["deployed_commit"] == local == repos.head()

    cfg = write_config(tmp_path / "c2.toml", repos, repo_extra='on_diverge = "reset"')
    async with supervised(cfg, session) as (sup, c):
        await c.push(repos, sha)
        await deployed(c, sha)
        refs = git("for-each-ref", "--format=%(objectname) %(refname)", "refs/supervisor/backup/", cwd=repos.work)
        assert refs.startswith(local) and "refs/supervisor/backup/" in refs


async def test_dirty_tree_is_refused_naming_the_files(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos, watch="enabled = false")
    async with supervised(cfg, session) as (sup, c):
        (repos.work / "message.txt").write_text("edited on the server\n")
        sha = repos.commit({"message.txt": "v2\n", "README.md": "changed\n"}, "v2")
        await c.push(repos, sha)
        st = await eventually(lambda: sup.deployer.last, what="the refusal")
        assert st.result == "refused" and "message.txt" in st.reason and "README.md" not in st.reason
        assert (repos.work / "message.txt").read_text() == "edited on the server\n"


async def test_crash_is_restarted_with_backoff(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        pid = (await c.status())["child_pid"]
        os.kill(pid, signal.SIGKILL)

        async def new_pid() -> int | None:
            st = await c.status()
            return st["child_pid"] if st["child_pid"] not in (None, pid) and st["state"] == "running" else None

        await eventually(new_pid, what="a restarted child")
        assert f"commit {repos.head()}" in await c.app_get()


async def test_file_change_restarts_and_ignored_files_do_not(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos, watch='debounce_ms = 50\nignore = ["*.log", "tmp/*"]')
    async with supervised(cfg, session) as (sup, c):
        pid = (await c.status())["child_pid"]
        batches = sup.expected.batches
        (repos.work / "server.log").write_text("noise\n")
        (repos.work / "__pycache__").mkdir(exist_ok=True)
        (repos.work / "__pycache__" / "x.pyc").write_bytes(b"\0")
        (repos.work / ".git" / "pushcd-test").write_text("x")
        (repos.work / "message.txt").write_text("edited in place\n")  # like gunicorn --reload would see

        async def restarted() -> str | None:
            st = await c.status()
            return st["child_pid"] if st["child_pid"] not in (None, pid) and st["state"] == "running" else None

        await eventually(restarted, what="a restart from the watcher")
        assert "edited in place" in await c.app_get()
        assert sup.expected.batches == batches + 1  # the ignored files made no batch of their own
        st = await c.status()
        assert st["swaps"] == 1 and st["restarts"] == 0  # a new release, not a crash restart


async def test_one_deploy_is_exactly_one_restart(repos: Repos, tmp_path: Path, session) -> None:
    cfg = write_config(tmp_path / "c.toml", repos, watch="debounce_ms = 50")
    async with supervised(cfg, session) as (sup, c):
        sha = repos.commit({"message.txt": "v2\n", "static/site.css": "body {}\n"}, "v2")
        await c.push(repos, sha)
        st = await deployed(c, sha)
        # Wait until the watcher has seen (and dropped) the deploy's own writes.
        await eventually(lambda: sup.expected.dropped >= 1, what=f"the watcher to see the checkout {sup.expected.__dict__}")
        pid = st["child_pid"]
        after = await c.status()
        assert after["swaps"] == 1 and after["child_pid"] == pid
        assert sup.expected.batches == sup.expected.dropped


async def test_gunicorn_app_is_deployed(repos: Repos, tmp_path: Path, session) -> None:
    cmd = gunicorn_app(repos)
    cfg = write_config(tmp_path / "c.toml", repos, app={"command": cmd}, ready={"http": "/", "min_uptime": 0.3})
    async with supervised(cfg, session) as (sup, c):
        assert f"commit {repos.head()}" in await c.app_get()
        sha = await c.ship(repos, {"message.txt": "gunicorn v2\n"}, "v2")
        text = await c.app_get()
        assert "gunicorn v2" in text and f"commit {sha}" in text


async def test_a_job_that_raises_still_answers_who_asked_and_the_worker_goes_on(repos: Repos, tmp_path: Path,
                                                                             session, monkeypatch) -> None:
    cfg = write_config(tmp_path / "c.toml", repos)
    async with supervised(cfg, session) as (sup, c):
        real = sup.deployer.handle_deploy

        async def broken(trigger: str, _arg: object = None) -> None:
            raise RuntimeError("a bug in the deploy job")

        monkeypatch.setattr(sup.deployer, "handle_deploy", broken)
        # POST /deploy?wait=1 waits on this future: it must not hang until WAIT_LIMIT.
        assert await asyncio.wait_for(sup.deployer.request_deploy("manual"), 10) is None
        monkeypatch.setattr(sup.deployer, "handle_deploy", real)
        await c.ship(repos, {"message.txt": "after the bug\n"}, "v2")
