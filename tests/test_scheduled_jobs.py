"""Scheduled jobs (#21, second part): cron schedules run in the live release, never twice at once, finish in their
release across a deploy, catch up a run missed while pushcd was down, and are recorded, counted and notified."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from supervisor.ops.history import History

from .conftest import RELEASE_MODE, Repos, cli, eventually, git, site_of, supervised, write_config

# A job that says where it runs, then waits for the test's go file (a condition, not a sleep) or a deadline.
JOB = """import json, os, sys, time
from pathlib import Path
journal = Path(sys.argv[1])
def say(what):
    with journal.open("a") as f:
        f.write(json.dumps({"what": what, "pid": os.getpid(), "commit": os.environ["SUPERVISOR_COMMIT"],
                            "cwd": os.getcwd(), "job": os.environ["SUPERVISOR_JOB"],
                            "files": Path("app.py").exists()}) + "\\n")
say("start")
go = journal.with_name("go")
deadline = time.monotonic() + float(os.environ.get("JOB_WAIT", "0"))
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
say("end")
print("job output", flush=True)
sys.exit(int(os.environ.get("JOB_EXIT", "0")))
"""


def job_config(journal: Path, *, schedule: str = "* * * * * *", wait: float = 0, extra: str = "",
               concurrency: str = "skip", exit_code: int = 0) -> str:
    return (f'[jobs.report]\nschedule = "{schedule}"\ncommand = ["python3", "job.py", "{journal}"]\n'
            f'concurrency = "{concurrency}"\ntimeout = 60\n{extra}\n'
            f'[jobs.report.env]\nJOB_WAIT = "{wait}"\nJOB_EXIT = "{exit_code}"\n')


def entries(journal: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []


def never_overlapping(journal: Path) -> None:
    open_runs = 0
    for entry in entries(journal):
        open_runs += 1 if entry["what"] == "start" else -1
        assert open_runs in (0, 1), entries(journal)  # never two runs of one job at once


@pytest.mark.skipif(RELEASE_MODE == "in-place", reason="in place, the files a job runs from change under it")
async def test_a_running_job_finishes_in_its_release_across_deploys_and_the_next_run_takes_the_new_one(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    repos.commit({"job.py": JOB}, "a job")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    journal = tmp_path / "journal"
    cfg = write_config(tmp_path / "c.toml", repos, release="keep = 1", extra=job_config(journal, wait=60))
    async with supervised(cfg, session) as (sup, c):
        first = sup.deployer.current
        await eventually(lambda: entries(journal), 20, "the first run to start")
        # Two deploys while it runs: with keep = 1 its release would be pruned, were it not in use.
        await c.ship(repos, {"message.txt": "v2\n"}, "v2")
        v3 = await c.ship(repos, {"message.txt": "v3\n"}, "v3")
        assert first.root.is_dir()
        skipped = await eventually(lambda: [r for r in sup.history.job_runs("report", 200) if r["result"] == "skipped"],
                                   20, "a run due while the first one runs")
        assert "still running" in skipped[0]["reason"]  # recorded, not silent
        (tmp_path / "go").touch()
        await eventually(lambda: any(e["what"] == "end" for e in entries(journal)), 20, "the run to end")
        start, end = entries(journal)[:2]
        assert start["pid"] == end["pid"] and end["commit"] == first.commit and end["cwd"] == str(first.root)
        assert end["files"] is True  # its folder was there to the end
        await eventually(lambda: any(e["commit"] == v3 for e in entries(journal)), 20, "a run in the new release")
        never_overlapping(journal)
        runs = sup.history.job_runs("report", 200)
        assert any(r["result"] == "ok" and r["commit_sha"] == first.commit for r in runs)


async def test_manual_runs_failures_metrics_notification_and_the_page(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    repos.commit({"job.py": JOB}, "a job")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    got: list[dict[str, object]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(text="ok")

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    journal = tmp_path / "journal"
    async with site_of(receiver) as base:
        # Due once a year: only the runs asked for happen.
        cfg = write_config(tmp_path / "c.toml", repos, extra=job_config(journal, schedule="0 0 1 1 *", exit_code=3)
                           + f'\n[[notify]]\nurl = "{base}/hook"\n')
        async with supervised(cfg, session) as (sup, c):
            code, out, err = await cli(cfg, "jobs", "run", "report")
            assert code == 1 and out.startswith("failed: exited with status 3") and "job output" in out, (out, err)
            code, out, _ = await cli(cfg, "jobs")
            assert "report" in out and "0 0 1 1 *" in out and "failed" in out, out
            code, out, err = await cli(cfg, "jobs", "run", "nope")
            assert code == 1 and "no job nope" in err, err
            _, metrics = await c.control("GET", "/metrics")
            assert 'supervisor_job_runs_total{job="report",result="failed"} 1.0' in metrics["text"]
            await eventually(lambda: [e for e in got if e["event"] == "job_failed"], 20, "the job_failed notice")
            notice = next(e for e in got if e["event"] == "job_failed")
            assert "report failed" in str(notice["reason"]) and notice["failing_line"] == "job output"
            async with session.get(f"http://127.0.0.1:{sup.control_port}/") as resp:
                page = await resp.text()
            assert "id='jobs'" in page and "/jobs/run?name=report" in page
            code, out, _ = await cli(cfg, "logs", "--process", "job.report")
            assert "job output" in out, out  # a job's output is kept as a process type's is


async def test_queue_runs_the_next_after_the_running_one(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    repos.commit({"job.py": JOB}, "a job")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    journal = tmp_path / "journal"
    cfg = write_config(tmp_path / "c.toml", repos,
                       extra=job_config(journal, schedule="0 0 1 1 *", wait=60, concurrency="queue"))
    async with supervised(cfg, session) as (sup, c):
        _, first = await c.control("POST", "/jobs/run?name=report")
        _, second = await c.control("POST", "/jobs/run?name=report")  # queued behind the first, not skipped
        await eventually(lambda: entries(journal), 20, "the first run")
        assert sup.scheduler.queued.keys() == {"report"} and len(entries(journal)) == 1
        (tmp_path / "go").touch()
        await eventually(lambda: len([e for e in entries(journal) if e["what"] == "end"]) == 2, 20, "both runs")
        never_overlapping(journal)
        await eventually(lambda: [r["result"] for r in sup.history.job_runs("report")] == ["ok", "ok"], 20,
                         "both runs recorded")


async def test_catch_up_runs_a_missed_run_once_at_start(
        tmp_path: Path, repos: Repos, session: aiohttp.ClientSession) -> None:
    repos.commit({"job.py": JOB}, "a job")
    git("pull", "-q", "--ff-only", cwd=repos.work)
    journal = tmp_path / "journal"
    other = tmp_path / "other-journal"
    # Due once a year: the last due time (1 January) is after the seeded run; the next is not during the test.
    extra = (job_config(journal, schedule="0 0 1 1 *", extra="catch_up = true")
             + f'[jobs.quiet]\nschedule = "0 0 1 1 *"\ncommand = ["python3", "job.py", "{other}"]\n'
               f'[jobs.quiet.env]\nJOB_WAIT = "0"\n')
    cfg = write_config(tmp_path / "c.toml", repos, extra=extra)
    (tmp_path / "state").mkdir()
    history = History(tmp_path / "state" / "history.db")  # as the last pushcd left it: both last ran long ago
    long_ago = time.time() - 2 * 366 * 86400
    for job in ("report", "quiet"):
        history.record_job_run({"job": job, "trigger": "schedule", "scheduled_at": long_ago,
                                "started_at": long_ago, "ended_at": long_ago + 1, "result": "ok",
                                "exit_code": 0, "release": "", "commit_sha": "", "reason": "", "output_tail": ""})
    history.close()
    async with supervised(cfg, session) as (sup, c):
        await eventually(lambda: [e for e in entries(journal) if e["what"] == "end"], 20, "the caught-up run")
        await eventually(lambda: not sup.scheduler.running, 20, "the run to end")
        assert [r["trigger"] for r in sup.history.job_runs("report")] == ["catch_up", "schedule"]
        assert len(entries(journal)) == 2 and not other.exists()  # once; the job without catch_up waits
