"""The deploy worker: one job at a time, requests coalesced, decisions pure.

Everything that changes the tree or the live release goes through the single
worker loop in :class:`Deployer`: webhook/manual deploys, watched file
changes, crash recovery. So no two of them ever interleave, and any number of
requests that arrive during a deploy collapse into one next deploy of the
branch tip (the webhook payload is only a hint to look).

The decisions are plain functions: :func:`plan` (which way to move the tree,
or refuse) and :func:`Backoff` arithmetic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Iterator, Literal

from . import memory
from .child import Child, Spec, describe_exit
from .guard import Guard
from .history import DeployRecord, History
from .metrics import Metrics
from .release import Release, Releases, SwapResult, failure_report
from .watch import Expected
from .worktree import Facts, FetchError, GitFailure, GitThread, WorkTree

log = logging.getLogger("supervisor.deploy")

Action = Literal["none", "forward", "reset", "refuse"]


@dataclass(frozen=True)
class Plan:
    action: Action
    reason: str


def plan(facts: Facts, on_diverge: str, bad: dict[str, str]) -> Plan:
    """Decide how to bring the work tree to the remote tip."""
    if facts.head == facts.target:
        return Plan("none", f"already at {facts.target[:12]}")
    if facts.target in bad:
        return Plan("none", f"{facts.target[:12]} is marked bad ({bad[facts.target]}); waiting for a newer commit")
    if facts.target_is_ancestor:
        # The remote is behind us (local commits, never pushed): moving back would lose them.
        return Plan("refuse", f"diverged: local {facts.head[:12]} is ahead of remote {facts.target[:12]}; "
                              f"push the local commits or set on_diverge = \"reset\"")
    if facts.blocking:
        return Plan("refuse", "local edits would be overwritten: " + ", ".join(facts.blocking)
                    + "; commit, stash or revert them")
    if facts.head_is_ancestor:
        return Plan("forward", f"fast-forward {facts.head[:12]}..{facts.target[:12]}")
    if on_diverge == "reset":
        return Plan("reset", f"diverged: reset {facts.head[:12]} to {facts.target[:12]} (on_diverge = reset)")
    return Plan("refuse", f"diverged: local {facts.head[:12]} and remote {facts.target[:12]} have split "
                          f"(force-push or local commits); fix by hand or set on_diverge = \"reset\"")


@dataclass
class Backoff:
    """0.5 s, 1 s, 2 s ... capped; reset after a healthy stretch."""

    first: float = 0.5
    cap: float = 30.0
    healthy: float = 10.0
    failures: int = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * (2 ** self.failures))
        self.failures += 1
        return delay

    def observe_uptime(self, seconds: float) -> None:
        if seconds >= self.healthy:
            self.failures = 0


class Phases:
    """Seconds spent in each phase of one deploy: ``with phases("fetch"): ...``."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.done: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.monotonic()
        try:
            yield
        finally:
            self.done[name] = round(time.monotonic() - t, 4)

    def total(self) -> float:
        return time.monotonic() - self.started


@dataclass
class LastDeploy:
    result: str
    reason: str
    commit: str
    trigger: str = ""
    at: float = field(default_factory=time.time)
    phases: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"result": self.result, "reason": self.reason, "commit": self.commit,
                "trigger": self.trigger, "at": self.at, "phases": self.phases}


class Deployer:
    """The single worker: deploys, restarts, rollbacks and crash recovery, one at a time."""

    def __init__(self, tree: WorkTree, git: GitThread, releases: Releases, expected: Expected,
                 on_diverge: str, probation: float, before_restart: list[list[str]],
                 before_restart_timeout: float, history: History | None = None,
                 metrics: Metrics | None = None) -> None:
        self.tree = tree
        self.git = git
        self.releases = releases
        self.expected = expected
        self.on_diverge = on_diverge
        self.probation = probation
        self.before_restart = before_restart
        self.before_restart_timeout = before_restart_timeout
        self.history = history
        self.metrics = metrics
        self.bad: dict[str, str] = history.bad_commits() if history else {}
        self.last: LastDeploy | None = None
        self.state = "starting"
        self.deployed: str = ""
        self._wake = asyncio.Event()
        self._deploy: str | None = None  # pending deploy trigger
        self._restart: str | None = None  # pending restart trigger
        self._rollback = False
        self._waiters: list[asyncio.Future[LastDeploy | None]] = []  # for the next deploy or rollback
        self._fetch_backoff = Backoff(first=1.0, cap=60.0)
        self._crash_backoff = Backoff()
        self._retry: asyncio.TimerHandle | None = None
        self.deploys = 0  # deploys that ended in a result (ok, refused, failed)
        self.guard: Guard | None = None
        self.runs = 0  # jobs the worker finished, including ones that found nothing to do
        releases.on_exit = self.crashed

    # -- requests (called from the event loop; never block) -----------------
    def request_deploy(self, trigger: str) -> "asyncio.Future[LastDeploy | None]":
        """Ask for a deploy of the branch tip; the future resolves when the worker has done it."""
        self._deploy = self._deploy or trigger
        return self._wait_and_wake()

    def request_rollback(self) -> "asyncio.Future[LastDeploy | None]":
        self._rollback = True
        return self._wait_and_wake()

    def request_restart(self, trigger: str) -> None:
        self._restart = self._restart or trigger
        self._wake.set()

    def crashed(self, _release: Release) -> None:
        if self.state == "running":
            self.state = "crashed"
        self._wake.set()  # the loop sees the dead release and recovers

    def _wait_and_wake(self) -> "asyncio.Future[LastDeploy | None]":
        future: asyncio.Future[LastDeploy | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._wake.set()
        return future

    @property
    def queued(self) -> list[str]:
        return [t for t in (self._deploy, self._restart, "rollback" if self._rollback else None) if t]

    # -- the loop -----------------------------------------------------------
    async def start(self) -> None:
        """Run what the work tree holds now."""
        self.tree.check_branch()
        self.deployed = self.tree.head()
        result = await self.releases.start(self.deployed)
        self.state = "running" if result.ok else "crashed"
        if result.ok:
            self._went_live(self.deployed)
        else:
            log.error("app failed to start at %s: %s", self.deployed[:12], result.reason)
            self._wake.set()  # no release is live: the loop restarts it with backoff

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._one_job()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug or an OS error must not stop the worker
                log.exception("deploy worker: unexpected error; the app keeps running, next request retries")
                self.state = "running" if not self._needs_recovery() else "crashed"
                await asyncio.sleep(1.0)  # do not spin if the error repeats at once

    async def _one_job(self) -> None:
        if self._rollback or self._deploy:
            waiters, self._waiters = self._waiters, []
            before = self.last
            try:
                if self._rollback:
                    self._rollback = False
                    await self._run_job(self._roll_back_by_hand())
                else:
                    trigger, self._deploy = self._deploy, None
                    await self._run_job(self._deploy_once(trigger, Phases()))
            finally:
                # Whoever asked for this job hears how it ended, even when it raised;
                # requests made meanwhile wait for the next job.
                for w in waiters:
                    if not w.done():
                        w.set_result(self.last if self.last is not before else None)
            if not (self._deploy or self._rollback):  # quiet again: give back what git work took
                await self.git.run(self.tree.forget_caches)
                memory.release()
        elif self._needs_recovery():
            self.state = "crashed"
            await self._recover()
            self.state = "crashed" if self._needs_recovery() else "running"
        elif self._restart:
            trigger, self._restart = self._restart, None
            await self._run_job(self._restart_in_place(trigger))
        self.runs += 1

    async def _restart_in_place(self, trigger: str) -> None:
        """A watched file changed: the same commit, a new child, the same health gate."""
        phases = Phases()
        with phases("start"):
            result = await self._swap(self.deployed, trigger, previous=None)
        if result.ok:
            await self._finish("ok", "restarted after file changes", self.deployed, trigger, phases, self.deployed)
        else:
            await self._finish("failed", f"restart after file changes failed, the running release keeps serving: "
                                         f"{result.reason}", self.deployed, trigger, phases, self.deployed,
                               tail=result.reason)

    def _needs_recovery(self) -> bool:
        live = self.releases.live
        return live is None or not live.alive

    async def _run_job(self, job: "Awaitable[None]") -> None:
        self.state = "deploying"
        try:
            await job
        finally:
            self.state = "running" if not self._needs_recovery() else "crashed"
            if self._needs_recovery():
                self._wake.set()

    async def _finish(self, result: str, reason: str, commit: str, trigger: str, phases: Phases,
                      from_commit: str, tail: str = "") -> None:
        self.last = LastDeploy(result, reason, commit, trigger, phases=phases.done)
        self.deploys += 1
        level = logging.INFO if result == "ok" else logging.WARNING
        duration = phases.total()
        log.log(level, "deploy %s: %s (%s, trigger %s)", result, reason, commit[:12], trigger,
                extra={"commit": commit, "duration": round(duration, 4), "result": result, "trigger": trigger})
        if self.metrics:
            self.metrics.deploys.labels(result).inc()
            self.metrics.deploy_duration.observe(duration)
        if self.history:
            self.history.record_deploy(DeployRecord(from_commit, commit, trigger, phases.started_wall,
                                                    time.time(), result, reason, tail, phases.done))

    def _mark_bad(self, sha: str, reason: str) -> None:
        self.bad[sha] = reason
        if self.history:
            self.history.mark_bad(sha, reason)

    def _unmark_bad(self, sha: str) -> None:
        if self.bad.pop(sha, None) is not None and self.history:
            self.history.unmark_bad(sha)

    async def _deploy_once(self, trigger: str, phases: Phases) -> None:
        try:
            with phases("fetch"):
                tip = await self.git.run(self.tree.fetch)
        except FetchError as exc:
            delay = self._fetch_backoff.next()
            await self._finish("failed", f"{exc}; retrying in {delay:g}s", self.deployed, trigger, phases,
                               self.deployed)
            self._schedule_retry(delay, trigger)
            return
        self._fetch_backoff.failures = 0
        facts = await self.git.run(self.tree.facts, tip)
        decision = plan(facts, self.on_diverge, self.bad)
        if decision.action == "none":
            log.info("nothing to deploy: %s", decision.reason)
            return
        if decision.action == "refuse":
            await self._finish("refused", decision.reason, tip, trigger, phases, self.deployed)
            return
        await self._go(facts, tip, decision.reason, trigger, phases, backup=decision.action == "reset")

    async def _go(self, facts: Facts, target: str, reason: str, trigger: str, phases: Phases,
                  backup: bool = False) -> None:
        """Move the tree to ``target`` and swap the release; roll back if it does not come up."""
        previous = self.deployed
        try:
            with phases("checkout"):
                await self._move(facts, backup=backup, reason=reason)
        except GitFailure as exc:
            await self._finish("refused", str(exc), target, trigger, phases, previous)
            return
        with phases("before_restart"):
            why = await self._before_restart()
        if why is None:
            with phases("start"):
                result = await self._swap(target, trigger, previous=previous)
            if result.ok:
                await self._finish("ok", f"{reason} in {phases.total():.2f}s", target, trigger, phases, previous)
                return
            why = result.reason
        await self._roll_back(target, previous, why, trigger, phases)

    async def _roll_back_by_hand(self) -> None:
        """POST /rollback: back to the newest good release that is not the running one."""
        phases = Phases()
        current = self.deployed
        target = next((c for c in (self.history.good_releases() if self.history else [])
                       if c != current and c not in self.bad), None)
        if target is None:
            await self._finish("refused", "no earlier good release to roll back to", current, "rollback",
                               phases, current)
            return
        facts = await self.git.run(self.tree.facts, target)
        if facts.blocking:
            await self._finish("refused", "local edits would be overwritten: " + ", ".join(facts.blocking),
                               target, "rollback", phases, current)
            return
        # Until a newer commit arrives, the webhook must not bring the rolled-back one back.
        self._mark_bad(current, "rolled back by hand")
        await self._go(facts, target, f"roll back {current[:12]} to {target[:12]}", "rollback", phases)
        if self.deployed != target:
            self._unmark_bad(current)  # the rollback itself failed: current still runs (and is not bad)

    async def _move(self, facts: Facts, backup: bool, reason: str) -> None:
        def work() -> None:
            if backup:
                ref = self.tree.backup(facts.head)
                log.warning("saved %s as %s before reset", facts.head[:12], ref)
            self.tree.move_to(facts.target, reason, facts.changed)

        # The checkout's own writes must not come back as a watched change.
        self.expected.expect(facts.writes)
        with self.expected.writing():
            await self.git.run(work)

    async def _move_back(self, to: str) -> None:
        facts = await self.git.run(self.tree.facts, to)
        await self._move(facts, backup=False, reason=f"roll back to {to[:12]}")

    async def _before_restart(self) -> str | None:
        """Run [deploy] before_restart in app.cwd; None when all succeeded."""
        for argv in self.before_restart:
            spec = Spec(argv, self.releases.settings.app_cwd, self.releases.app.env, stop_timeout=5)
            try:
                child = await Child.start(spec, label="before_restart", guard=self.guard)
            except OSError as exc:
                return f"before_restart {argv[0]}: {exc.strerror or exc}"
            try:
                code: int | None = await asyncio.wait_for(child.wait(), self.before_restart_timeout)
            except asyncio.TimeoutError:
                code = None
            finally:
                await child.stop()  # stops it on a timeout or a shutdown; reaps what it left in its group
            if code is None:
                return failure_report(f"before_restart {' '.join(argv)} timed out after "
                                      f"{self.before_restart_timeout:g}s", child)
            if code != 0:
                return failure_report(f"before_restart {' '.join(argv)} {describe_exit(code)}", child)
        return None

    async def _swap(self, commit: str, trigger: str, previous: str | None) -> SwapResult:
        result = await self.releases.start(commit, previous=previous)
        if result.ok:
            self.deployed = commit
            self._went_live(commit)
        return result

    def _went_live(self, commit: str) -> None:
        if self.history:
            self.history.record_release(commit)

    async def _back_to(self, good: str, bad: str, why: str, phases: Phases) -> None:
        """Mark ``bad``, return the tree to ``good`` (the watcher ignores it) and call it deployed."""
        self._mark_bad(bad, why)
        with phases("rollback"):
            await self._move_back(good)
        self.deployed = good

    async def _roll_back(self, bad: str, good: str, why: str, trigger: str, phases: Phases) -> None:
        """The new commit failed: tree back to the running commit, old release untouched."""
        await self._back_to(good, bad, why, phases)
        await self._finish("failed", f"{bad[:12]} rolled back to {good[:12]}: {why}", bad, trigger, phases,
                           good, tail=why)
        if self._needs_recovery():
            # Nothing kept serving (no [app] listen, or it had crashed): bring the good one back.
            await self._recover()

    async def _recover(self) -> None:
        """The live child died on its own."""
        dead = self.releases.live
        if dead is not None:
            self._crash_backoff.observe_uptime(dead.child.uptime)
            why = failure_report(describe_exit(dead.child.returncode), dead.child)
            if dead.previous and time.monotonic() - dead.live_since < self.probation:
                # Went live, then crashed within probation: it was never good.
                phases = Phases()
                await self._back_to(dead.previous, dead.commit,
                                    f"crashed {time.monotonic() - dead.live_since:.1f}s after going live: {why}", phases)
                await self._finish("failed", f"probation: {dead.commit[:12]} {self.bad[dead.commit]}; "
                                             f"back to {dead.previous[:12]}", dead.commit, "rollback", phases,
                                   dead.previous, tail=why)
                result = await self.releases.start(dead.previous)
                if result.ok:
                    return
            else:
                log.warning("app crashed (%s); restarting", why)
        delay = self._crash_backoff.next()
        log.info("restarting %s in %.1fs", self.deployed[:12], delay)
        try:
            await asyncio.wait_for(self._wait_for_deploy(), delay)
        except asyncio.TimeoutError:
            pass
        if self._deploy:
            self._wake.set()  # a new commit may fix it: deploy first
            return
        result = await self.releases.start(self.deployed)
        if not result.ok:
            self._wake.set()

    async def _wait_for_deploy(self) -> None:
        while not self._deploy:
            await self._wake.wait()
            self._wake.clear()

    def _schedule_retry(self, delay: float, trigger: str) -> None:
        if self._retry:
            self._retry.cancel()
        self._retry = asyncio.get_running_loop().call_later(delay, self.request_deploy, trigger)
