"""Health watched after the swap (#21): a release that passes its gate and then turns unhealthy within
probation goes back, as a crash within probation does."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from .conftest import DEMO_APP, Repos, eventually, git, last_is, supervised, write_config

# Healthy for its first second (so it passes its gate), then /health answers 500.
TURNS_SICK = DEMO_APP.replace("HERE = Path(", "import time\nSTARTED = time.monotonic()\nHERE = Path(", 1).replace(
    "        self.send_response(200)\n",
    "        sick = self.path == '/health' and time.monotonic() - STARTED > 1\n"
    "        body = b'database is gone\\n' if sick else body\n"
    "        self.send_response(500 if sick else 200)\n", 1)


async def test_a_release_that_turns_unhealthy_within_probation_goes_back(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    """Before: a release answering 500 on its health check after going live stayed live until a person
    noticed; a process exit was the only thing probation watched."""
    assert TURNS_SICK.count("STARTED") == 2 and "sick" in TURNS_SICK
    cfg = write_config(tmp_path / "c.toml", repos,
                       deploy="probation = 30\nprobation_failures = 3\nprobation_interval = 0.2")
    async with supervised(cfg, session) as (sup, c):
        good = repos.head()
        bad = repos.commit({"app.py": TURNS_SICK}, "healthy at first, then not")
        await c.push(repos, bad)
        st = await eventually(lambda: last_is(c, bad, "failed"), 30, "the unhealthy release to go back")
        assert st["deployed_commit"] == good and bad in st["bad_commits"], st
        reason = st["last_deploy"]["reason"]
        assert "health check failed 3 times in a row within probation" in reason, reason
        assert "answered 500: database is gone" in reason and st["last_deploy"]["kind"] == "rollback", reason
        assert "commit " + good in await c.app_get()


async def test_after_probation_an_unhealthy_release_is_reported(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    repos.commit({"app.py": TURNS_SICK}, "healthy at first, then not")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    cfg = write_config(tmp_path / "c.toml", repos, deploy="probation = 30\nprobation_interval = 0.2")
    async with supervised(cfg, session) as (sup, c):  # a first start: nothing to go back to, so told
        st = await eventually(lambda: _unhealthy(c), 20, "the health problem to be reported")
        assert "health check failed 3 times in a row: " in st["health"]["problem"], st["health"]
        assert "answered 500: database is gone" in st["health"]["problem"]
        code, body = await c.control("GET", "/metrics")
        assert "supervisor_app_healthy 0.0" in body["text"]
        assert st["deployed_commit"] == repos.head() and st["child_pid"]  # reported, not restarted


async def test_after_probation_an_unhealthy_web_process_can_be_restarted(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    repos.commit({"app.py": TURNS_SICK}, "healthy at first, then not")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    cfg = write_config(tmp_path / "c.toml", repos,
                       deploy="probation = 30\nprobation_interval = 0.2\nrestart_unhealthy = true")
    async with supervised(cfg, session) as (sup, c):
        first = (await c.status())["child_pid"]
        row = await eventually(lambda: next((d for d in sup.history.deploys(20) if d["trigger"] == "unhealthy"),
                                            None), 20, "a restart for the failing health check")
        assert row["kind"] == "restart" and row["result"] == "ok", row
        assert (await c.status())["child_pid"] != first


async def _unhealthy(c: object) -> dict | None:
    st = await c.status()  # type: ignore[attr-defined]
    return st if st["health"]["problem"] else None


# A worker whose own health check ([processes.worker.ready] command) fails once the test names its commit sick.
CHECK = ("import os, sys\nfrom pathlib import Path\n"
         "sick = Path(os.environ['SICK_FILE'])\n"
         "if sick.exists() and sick.read_text() == os.environ['SUPERVISOR_COMMIT']:\n"
         "    print('queue is stuck'); sys.exit(1)\n")


async def test_a_worker_whose_health_check_fails_within_probation_sends_the_release_back(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    """#21.1, the optional part: process types are watched through probation by a check of their own, not only
    by their liveness."""
    sick = tmp_path / "sick"
    repos.commit({"check.py": CHECK, "worker.py": "import time\ntime.sleep(600)\n"}, "a worker with a check")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    cfg = write_config(tmp_path / "c.toml", repos,
                       deploy="probation = 30\nprobation_failures = 3\nprobation_interval = 0.2",
                       extra=f'[processes.worker]\ncommand = ["python3", "worker.py"]\n'
                             f'[processes.worker.env]\nSICK_FILE = "{sick}"\n'
                             f'[processes.worker.ready]\nmin_uptime = 0.2\ncommand = ["python3", "check.py"]\n')
    async with supervised(cfg, session) as (sup, c):
        good = repos.head()
        bad = await c.ship(repos, {"message.txt": "v2\n"}, "v2: passes its gate")
        sick.write_text(bad)  # then its worker's check fails
        st = await eventually(lambda: last_is(c, bad, "failed"), 30, "the release to go back")
        assert st["deployed_commit"] == good and bad in st["bad_commits"], st
        reason = st["last_deploy"]["reason"]
        assert "worker: health check failed 3 times in a row within probation" in reason, reason
        assert "exited with status 1: queue is stuck" in reason, reason
        # After probation (a first start has none): reported, the worker named.
        sick.write_text(good)
        st = await eventually(lambda: _unhealthy(c), 20, "the worker's problem reported")
        assert st["health"]["problem"].startswith("worker: health check failed 3 times in a row: ")
