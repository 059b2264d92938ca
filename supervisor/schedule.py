"""Scheduled jobs (``[jobs.NAME]``): each run in the release live at that moment, supervised as every child is.

The rules users of cron-beside-a-deploy-tool ask for, each kept here:

- **never two runs of a job at once**: a run due while the last one still runs is skipped and
  recorded (``concurrency = "skip"``), or waits and starts when it ends (``"queue"``, one at most);
- **a deploy never kills a run**: it finishes in its release, whose folder is kept until it ends
  (:attr:`Scheduler.in_use`, which the road protects from pruning); the next run takes the new release;
- **a run missed while pushcd was down** runs once at start, with ``catch_up = true``;
- **nothing is silent**: every run, skipped ones too, is a history row, a metric and, failed, a
  ``job_failed`` notification.

Each run is a child in its own process group with the guard, output to ``[log] dir/job.NAME.log``,
stopped with its ``stop_signal`` past its ``timeout`` and at shutdown, and always reaped.

>>> from datetime import timezone
>>> next_due("*/15 * * * *", timezone.utc, 0.0), last_due("*/15 * * * *", timezone.utc, 1000.0)
(900.0, 900.0)
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, tzinfo
from typing import Any, Callable

from .built import Built
from .config import JobSpec
from .ops.applog import AppLog
from .ops.history import History
from .ops.metrics import Metrics
from .ops.notify import Event
from .ops.redact import redact
from .process.child import Child, Spec, describe_exit
from .process.guard import Guard
from .process.web import Web

log = logging.getLogger("supervisor.jobs")

RECHECK = 60.0  # the longest sleep: a clock set forward or back is noticed within this


def next_due(schedule: str, tz: tzinfo, after: float) -> float:
    """The first time ``schedule`` is due after ``after`` (seconds since the epoch)."""
    from cronsim import CronSim  # imported with the first job, not by every pushcd

    return next(CronSim(schedule, datetime.fromtimestamp(after, tz))).timestamp()


def last_due(schedule: str, tz: tzinfo, before: float) -> float:
    """The last time ``schedule`` was due at or before ``before``."""
    from cronsim import CronSim

    return next(CronSim(schedule, datetime.fromtimestamp(before, tz), reverse=True)).timestamp()


@dataclass
class JobRun:
    """One run of a job, as history keeps it."""

    job: str
    trigger: str  # schedule, catch_up, manual
    scheduled_at: float
    started_at: float | None = None
    ended_at: float = 0.0
    result: str = ""  # ok, failed, timeout, skipped, stopped
    exit_code: int | None = None
    release: str = ""
    commit_sha: str = ""
    reason: str = ""
    output_tail: str = ""


class Scheduler:
    def __init__(self, jobs: dict[str, JobSpec], web: Web, current: Callable[[], Built | None], *,
                 guard: Guard | None, applog: AppLog | None, history: History, metrics: Metrics | None,
                 notify: Callable[[Event], None] | None) -> None:
        self.jobs = dict(jobs)  # replaced whole on SIGHUP (configure)
        self.web = web  # how a process of a release starts: folder, environment (config vars included)
        self.current = current  # the release live now (the road owns it)
        self.guard = guard
        self.applog = applog
        self.history = history
        self.metrics = metrics
        self.notify = notify
        self.running: dict[str, tuple[JobRun, Built]] = {}
        self.queued: dict[str, JobRun] = {}  # concurrency = "queue": the one run waiting for the running one
        self.due: dict[str, float] = {}
        self._runs: set[asyncio.Task[None]] = set()
        self._by_job: dict[str, asyncio.Task[None]] = {}  # the running run's task of each job
        self._wake = asyncio.Event()
        self._stopping = False
        for job, last in history.last_job_runs().items():  # the metric says the truth from the first scrape
            if metrics is not None and last.get("last_success"):
                metrics.job_last_success.labels(job).set(last["last_success"])

    def in_use(self) -> list[Built]:
        """The releases a run is running in: their folders are kept until it ends."""
        return [built for _, built in self.running.values()]

    def configure(self, jobs: dict[str, JobSpec]) -> None:
        """SIGHUP: the jobs replaced whole; a job whose schedule changed is due by its new one."""
        old, self.jobs = self.jobs, dict(jobs)
        self.due = {name: due for name, due in self.due.items()
                    if name in jobs and (jobs[name].schedule, jobs[name].tz) == (old[name].schedule, old[name].tz)}
        self._wake.set()

    async def run_now(self, name: str, wait: float) -> JobRun:
        """`pushcd jobs run NAME`: a run now (or queued, or skipped, by its concurrency); with ``wait``, its end
        (within that many seconds)."""
        run = self.fire(name, "manual")
        task = self._by_job.get(name)
        if wait > 0 and task is not None and self.running.get(name, (None,))[0] is run:
            await asyncio.wait({task}, timeout=wait)
        return run

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Forever (a task of the supervisor's): start what is due, then sleep until the next is."""
        self._catch_up(time.time())
        while True:
            now = time.time()
            for name, job in self.jobs.items():
                if name not in self.due:
                    self.due[name] = next_due(job.schedule, job.tz, now)
                elif self.due[name] <= now:
                    self.fire(name, "schedule", self.due[name])
                    self.due[name] = next_due(job.schedule, job.tz, now)  # runs missed meanwhile are not piled up
            sleep = min([RECHECK, *(due - time.time() for due in self.due.values())])
            self._wake.clear()
            try:  # asyncio.timeout, not wait_for: in 3.11 wait_for loses a cancel that meets a set event
                async with asyncio.timeout(max(0.0, sleep)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _catch_up(self, now: float) -> None:
        """A run missed while pushcd was down runs once now (for jobs that ask for it and ran before)."""
        last = self.history.last_job_runs()
        for name, job in self.jobs.items():
            missed = last_due(job.schedule, job.tz, now)
            ran = last.get(name, {}).get("scheduled_at")
            if job.catch_up and ran is not None and ran < missed:
                log.info("job %s: the run due at %s was missed while pushcd was down; running it now", name,
                         time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(missed)))
                self.fire(name, "catch_up", missed)

    def fire(self, name: str, trigger: str, scheduled_at: float | None = None) -> JobRun:
        """Start a run of ``name`` now (or queue or skip it, by its concurrency); the run as it stands."""
        job = self.jobs[name]
        run = JobRun(name, trigger, time.time() if scheduled_at is None else scheduled_at)
        if name in self.running:
            if job.concurrency == "queue":
                self.queued[name] = run
                return run
            ongoing = self.running[name][0]
            return self._skipped(run, f"the run started {time.time() - (ongoing.started_at or 0):.0f}s ago is still "
                                      f"running (concurrency = \"skip\")")
        built = self.current()
        live = self.web.live
        if built is None or live is None or not live.alive or self._stopping:
            return self._skipped(run, "no release is live" if not self._stopping else "pushcd is stopping")
        run.started_at, run.release, run.commit_sha = time.time(), built.id or built.commit[:12], built.commit
        self.running[name] = (run, built)
        task = asyncio.create_task(self._run(job, run, built), name=f"job-{name}")
        self._runs.add(task)
        self._by_job[name] = task
        task.add_done_callback(self._runs.discard)
        return run

    async def _run(self, job: JobSpec, run: JobRun, built: Built) -> None:
        label = f"job.{job.name}"
        on_line = (lambda child, line: self.applog.line(label, child.pid, child.release, line)) if self.applog else None
        child: Child | None = None
        try:
            spec = self.web.spec(built)  # the release's folder and environment, its config vars included
            child_spec = Spec(job.argv, built.root / job.subdir, {**spec.env, **job.env, "SUPERVISOR_JOB": job.name},
                              job.stop_signal, job.stop_timeout, unset=spec.unset)
            log.info("job %s: starting in release %s (%s)", job.name, run.release, run.trigger)
            child = await Child.start(child_spec, label=label, guard=self.guard, on_line=on_line)
            try:
                code: int | None = await asyncio.wait_for(child.wait(), job.timeout)
            except asyncio.TimeoutError:
                code = None
            await child.stop()
            run.exit_code = code
            run.result = "ok" if code == 0 else "timeout" if code is None else "failed"
            run.reason = (f"ran past its timeout ({job.timeout:g}s) and was stopped" if code is None
                          else describe_exit(code))
        except OSError as exc:
            run.result, run.reason = "failed", f"cannot start {job.argv[0]}: {exc.strerror or exc}"
        except ValueError as exc:  # ConfigVarsError: the release's config vars are no longer kept
            run.result, run.reason = "failed", f"cannot start: {exc}"
        except asyncio.CancelledError:  # pushcd is stopping: the run is stopped, reaped, and said so
            if child is not None:
                await asyncio.shield(child.stop())
            run.result, run.reason = "stopped", "pushcd stopped while it ran"
            raise
        finally:
            run.ended_at = time.time()
            run.output_tail = redact("\n".join(child.tail)) if child is not None else ""
            self.running.pop(job.name, None)
            self._ended(run)
            waiting = self.queued.pop(job.name, None)
            if waiting is not None and not self._stopping and job.name in self.jobs:
                self.fire(job.name, waiting.trigger, waiting.scheduled_at)

    def _skipped(self, run: JobRun, why: str) -> JobRun:
        run.result, run.reason, run.ended_at = "skipped", why, time.time()
        log.warning("job %s: run skipped: %s", run.job, why)
        self._ended(run)
        return run

    def _ended(self, run: JobRun) -> None:
        if run.result != "skipped":
            log.log(logging.INFO if run.result == "ok" else logging.WARNING, "job %s: %s (%s) in %.2fs", run.job,
                    run.result, run.reason, run.ended_at - (run.started_at or run.ended_at))
        self.history.record_job_run(asdict(run))
        if self.metrics is not None:
            self.metrics.job_runs.labels(run.job, run.result).inc()
            if run.result == "ok":
                self.metrics.job_last_success.labels(run.job).set(run.ended_at)
        if run.result in ("failed", "timeout") and self.notify is not None:
            failing = run.output_tail.splitlines()[-1] if run.output_tail else None
            self.notify(Event("job_failed", run.commit_sha, f"job {run.job} {run.result}: {run.reason}", failing,
                              round(run.ended_at - (run.started_at or run.ended_at), 3)))

    # -- what the control API reads -------------------------------------------------------------------
    def listing(self) -> list[dict[str, Any]]:
        last = self.history.last_job_runs()
        out = []
        for name, job in sorted(self.jobs.items()):
            running = self.running.get(name)
            out.append({"name": name, "schedule": job.schedule, "timezone": str(job.tz),
                        "concurrency": job.concurrency, "next_run": self.due.get(name),
                        "running": asdict(running[0]) if running else None, "queued": name in self.queued,
                        "last": {k: v for k, v in last.get(name, {}).items() if k != "output_tail"} or None})
        return out

    async def stop(self) -> None:
        """Shutdown: nothing new starts; running runs are stopped (their stop_signal, then SIGKILL) and reaped."""
        self._stopping = True
        self.queued.clear()
        for task in list(self._runs):
            task.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
