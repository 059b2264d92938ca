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
from typing import Iterator, Literal

from .child import Child, Spec, describe_exit
from .guard import Guard
from .release import Release, Releases, failure_report
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
    def __init__(self, tree: WorkTree, git: GitThread, releases: Releases, expected: Expected,
                 on_diverge: str, probation: float, before_restart: list[list[str]],
                 before_restart_timeout: float) -> None:
        self.tree = tree
        self.git = git
        self.releases = releases
        self.expected = expected
        self.on_diverge = on_diverge
        self.probation = probation
        self.before_restart = before_restart
        self.before_restart_timeout = before_restart_timeout
        self.bad: dict[str, str] = {}
        self.last: LastDeploy | None = None
        self.state = "starting"
        self.deployed: str = ""
        self._wake = asyncio.Event()
        self._deploy: str | None = None  # pending deploy trigger
        self._restart: str | None = None  # pending restart trigger
        self._fetch_backoff = Backoff(first=1.0, cap=60.0)
        self._crash_backoff = Backoff()
        self._retry: asyncio.TimerHandle | None = None
        self.deploys = 0  # deploys that ended in a result (ok, refused, failed)
        self.guard: Guard | None = None
        self.runs = 0  # jobs the worker finished, including ones that found nothing to do
        releases.on_exit = self.crashed

    # -- requests (called from the event loop; never block) -----------------
    def request_deploy(self, trigger: str) -> None:
        self._deploy = self._deploy or trigger
        self._wake.set()

    def request_restart(self, trigger: str) -> None:
        self._restart = self._restart or trigger
        self._wake.set()

    def crashed(self, _release: Release) -> None:
        self._wake.set()  # the loop sees the dead release and recovers

    @property
    def queued(self) -> list[str]:
        return [t for t in (self._deploy, self._restart) if t]

    # -- the loop -----------------------------------------------------------
    async def start(self) -> None:
        """Run what the work tree holds now."""
        self.tree.check_branch()
        self.deployed = self.tree.head()
        result = await self.releases.start(self.deployed)
        self.state = "running" if result.ok else "crashed"
        if not result.ok:
            log.error("app failed to start at %s: %s", self.deployed[:12], result.reason)
            self._wake.set()  # no release is live: the loop restarts it with backoff

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._deploy:
                trigger, self._deploy = self._deploy, None
                await self._run_deploy(trigger)
            elif self._needs_recovery():
                await self._recover()
            elif self._restart:
                trigger, self._restart = self._restart, None
                await self._swap(self.deployed, trigger, previous=None)
            self.runs += 1

    def _needs_recovery(self) -> bool:
        live = self.releases.live
        return live is None or not live.alive

    async def _finish(self, result: str, reason: str, commit: str, trigger: str,
                      phases: dict[str, float] | None = None) -> None:
        self.last = LastDeploy(result, reason, commit, trigger, phases=phases or {})
        self.deploys += 1
        level = logging.INFO if result == "ok" else logging.WARNING
        log.log(level, "deploy %s: %s (%s, trigger %s)", result, reason, commit[:12], trigger)

    async def _run_deploy(self, trigger: str) -> None:
        self.state = "deploying"
        try:
            await self._deploy_once(trigger, Phases())
        finally:
            self.state = "running" if not self._needs_recovery() else "crashed"
            if self._needs_recovery():
                self._wake.set()

    async def _deploy_once(self, trigger: str, phases: "Phases") -> None:
        try:
            with phases("fetch"):
                tip = await self.git.run(self.tree.fetch)
        except FetchError as exc:
            delay = self._fetch_backoff.next()
            await self._finish("failed", f"{exc}; retrying in {delay:g}s", self.deployed, trigger, phases.done)
            self._schedule_retry(delay, trigger)
            return
        self._fetch_backoff.failures = 0
        facts = await self.git.run(self.tree.facts, tip)
        decision = plan(facts, self.on_diverge, self.bad)
        if decision.action == "none":
            log.info("nothing to deploy: %s", decision.reason)
            return
        if decision.action == "refuse":
            await self._finish("refused", decision.reason, tip, trigger, phases.done)
            return
        previous = self.deployed
        try:
            with phases("checkout"):
                await self._move(facts, backup=decision.action == "reset", reason=decision.reason)
        except GitFailure as exc:
            await self._finish("refused", str(exc), tip, trigger, phases.done)
            return
        with phases("before_restart"):
            why = await self._before_restart()
        ok = why is None
        if ok:
            with phases("start"):
                result = await self._swap(tip, trigger, previous=previous)
            ok, why = result.ok, result.reason
        if ok:
            await self._finish("ok", f"{decision.reason} in {phases.total():.2f}s", tip, trigger, phases.done)
            return
        await self._roll_back(tip, previous, why or "failed", trigger, phases)

    async def _move(self, facts: Facts, backup: bool, reason: str) -> None:
        def work() -> None:
            if backup:
                ref = self.tree.backup(facts.head)
                log.warning("saved %s as %s before reset", facts.head[:12], ref)
            self.tree.move_to(facts.target, reason)

        # The checkout's own writes must not come back as a watched change.
        self.expected.expect(facts.writes)
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
                code = await asyncio.wait_for(child.wait(), self.before_restart_timeout)
            except asyncio.TimeoutError:
                await child.stop()
                return failure_report(f"before_restart {' '.join(argv)} timed out after "
                                      f"{self.before_restart_timeout:g}s", child)
            finally:
                if child.returncode is None:
                    await child.stop()  # cancelled (shutdown): never leave it running
            await child.stop()  # reaps anything it left in its group
            if code != 0:
                return failure_report(f"before_restart {' '.join(argv)} {describe_exit(code)}", child)
        return None

    async def _swap(self, commit: str, trigger: str, previous: str | None):
        result = await self.releases.start(commit, previous=previous)
        if result.ok:
            self.deployed = commit
        return result

    async def _roll_back(self, bad: str, good: str, why: str, trigger: str, phases: "Phases") -> None:
        """The new commit failed: tree back to the running commit, old release untouched."""
        self.bad[bad] = why
        with phases("rollback"):
            await self._move_back(good)
        self.deployed = good
        await self._finish("failed", f"{bad[:12]} rolled back to {good[:12]}: {why}", bad, trigger, phases.done)
        if self._needs_recovery():
            # Nothing kept serving (no held socket, or it had crashed): bring the good one back.
            await self._recover()

    async def _recover(self) -> None:
        """The live child died on its own."""
        dead = self.releases.live
        if dead is not None:
            self._crash_backoff.observe_uptime(dead.child.uptime)
            why = f"{_exit(dead)}"
            if dead.previous and time.monotonic() - dead.live_since < self.probation:
                # Went live, then crashed within probation: it was never good.
                self.bad[dead.commit] = f"crashed {time.monotonic() - dead.live_since:.1f}s after going live: {why}"
                await self._move_back(dead.previous)
                self.deployed = dead.previous
                await self._finish("failed", f"probation: {dead.commit[:12]} {self.bad[dead.commit]}; "
                                             f"back to {dead.previous[:12]}", dead.commit, "rollback")
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


def _exit(release: Release) -> str:
    return failure_report(describe_exit(release.child.returncode), release.child)
