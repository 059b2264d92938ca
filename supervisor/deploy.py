"""The deploy worker: one job at a time, taken from one mailbox; decisions pure.

Everything that changes the tree or the live release is a job in the
:class:`~supervisor.jobs.Mailbox` (webhook and manual deploys, rollbacks,
watched file changes, crash recovery), and :meth:`Deployer.run` is its only
consumer: it takes the most urgent job and calls ``handle_<kind>``. So no two
jobs ever interleave, no request is lost, and any number of requests that
arrive during a deploy collapse into one next deploy of the branch tip (the
webhook payload is only a hint to look).

Each handler chooses a target and a fallback and hands them to the one road
(:class:`~supervisor.road.Road`): start-up, deploys, the watcher, restarts,
rollbacks and recovery all pass the same preparation and gates. The decisions
are plain functions: :func:`plan` (which way to move the tree, or refuse) and
:class:`Backoff` arithmetic. Results are written down by the
:class:`~supervisor.ops.record.Recorder`, each with its kind.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Literal, Mapping

from . import memory
from .backoff import Backoff
from .build.builder import BuildFailed, Built
from .git.thread import GitThread
from .git.tree import Facts, FetchError, GitFailure, WorkTree
from .jobs import Job, Kind, Mailbox
from .ledger import Ref
from .marks import Marks
from .moves import Moves
from .ops.record import LastDeploy, Phases, Recorder
from .pause import Pause
from .process.child import describe_exit
from .process.release import failure_report
from .road import Attempt, Road

log = logging.getLogger("supervisor.deploy")

Action = Literal["none", "forward", "back", "reset", "refuse"]
AUTOMATIC = frozenset({"webhook", "poll"})  # triggers a pause holds back


@dataclass(frozen=True)
class Plan:
    action: Action
    reason: str


def plan(facts: Facts, on_diverge: str, bad: Mapping[str, str], pinned: bool = False) -> Plan:
    """Decide how to bring the work tree to the remote tip (or, ``pinned``, to a commit a person chose)."""
    if facts.head == facts.target:
        return Plan("none", f"already at {facts.target[:12]}")
    if facts.target in bad and not pinned:
        return Plan("none", f"{facts.target[:12]} is marked bad ({bad[facts.target]}); waiting for a newer commit "
                            f"(pushcd deploy --retry deploys it anyway)")
    if facts.target_is_ancestor and pinned and not facts.blocking:
        return Plan("back", f"back to {facts.target[:12]} (chosen by hand)")
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



class State(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    DEPLOYING = "deploying"  # a deploy, rollback or restart job is under way
    CRASHED = "crashed"  # no live release is running; a recovery is queued or scheduled


Result = LastDeploy | None  # what a job's waiters hear: the recorded result, or None (nothing done)


class Deployer:
    """The single worker: chooses what each job puts live and hands it to the road, one job at a time."""

    def __init__(self, tree: WorkTree, git: GitThread, road: Road, moves: Moves, recorder: Recorder, *,
                 on_diverge: str, pause: Pause | None = None, marks: Marks | None = None) -> None:
        self.tree = tree
        self.git = git
        self.road = road
        self.moves = moves
        self.recorder = recorder
        self.on_diverge = on_diverge
        self.pause = pause or Pause()
        self.marks = marks or Marks()  # commits not to deploy again; the road reads them too
        self.mailbox = Mailbox()
        self.runs = 0  # jobs the worker finished, including ones that found nothing to do
        self.crash_restarts = 0  # the web process started again after it died (not deploys)
        self._head = ""  # the work tree's HEAD at start-up, until a release serves
        self._started = False
        self._busy: Kind | None = None
        self._fetch_backoff = Backoff(first=1.0, cap=60.0)
        self._crash_backoff = Backoff()
        self._recovery_due: float | None = None  # a crash restart is scheduled for this monotonic time
        self._judged: object = None  # the dead release whose crash was already looked at
        self._start_told = False  # a failing start is recorded once, then retried quietly
        road.releases.on_exit = self.crashed
        road.workers.on_early_exit = lambda why: self.mailbox.put(Kind.RECOVER, "crash", arg=why)

    # -- what others read ----------------------------------------------------
    @property
    def builder(self):  # type: ignore[no-untyped-def]
        return self.road.builder

    @property
    def workers(self):  # type: ignore[no-untyped-def]
        return self.road.workers

    @property
    def current(self) -> Built | None:
        """The release that serves (or, crashed, is to be started again); the road owns it."""
        return self.road.current

    @property
    def deployed(self) -> str:
        return self.road.current.commit if self.road.current else self._head

    @property
    def state(self) -> State:
        if not self._started:
            return State.STARTING
        if self._busy in (Kind.DEPLOY, Kind.ROLLBACK, Kind.RESTART):
            return State.DEPLOYING
        return State.CRASHED if self._needs_recovery() else State.RUNNING

    @property
    def last(self) -> LastDeploy | None:
        return self.recorder.last

    @property
    def deploys(self) -> int:
        """Results recorded (ok, refused, failed), of every kind."""
        return self.recorder.count

    @property
    def queued(self) -> list[str]:
        return self.mailbox.queued

    # -- requests (called from the event loop; never block) -----------------
    def request_deploy(self, trigger: str, commit: str | None = None, retry: bool = False
                       ) -> "asyncio.Future[Result]":
        """Ask for a deploy of the branch tip (or of ``commit``; ``retry``: even if it is marked bad);
        the future resolves when the worker has done it."""
        arg = commit or ("retry" if retry else None)
        return self.mailbox.put(Kind.DEPLOY, trigger, wait=True, arg=arg)  # type: ignore[return-value]

    def request_rollback(self, to: str | None = None) -> "asyncio.Future[Result]":
        """Back to the previous good release, or ``to`` (a kept release's id or commit)."""
        return self.mailbox.put(Kind.ROLLBACK, "rollback", wait=True, arg=to)  # type: ignore[return-value]

    def request_restart(self, trigger: str, process: str | None = None) -> "asyncio.Future[Result]":
        """Restart every process (or ``process``: "web" or a process type's name) of the running release."""
        return self.mailbox.put(Kind.RESTART, trigger, wait=True, arg=process)  # type: ignore[return-value]

    def hold(self, reason: str) -> None:
        """Pause automatic deploys (webhook, poll); a person's requests still run."""
        self.pause.hold(reason)
        log.warning("automatic deploys paused: %s", reason)
        self.recorder.tell("paused", self.deployed, reason)

    def resume(self) -> "asyncio.Future[Result]":
        """Automatic deploys again; the tip is deployed if it moved meanwhile."""
        self.pause.release()
        log.info("automatic deploys resumed")
        self.recorder.tell("resumed", self.deployed, "automatic deploys resumed")
        return self.request_deploy("resume")

    def crashed(self, _release: object) -> None:
        self.mailbox.put(Kind.RECOVER, "crash")

    # -- the loop -----------------------------------------------------------
    async def start(self) -> None:
        """Start-up: the last good release serves (see :meth:`handle_start`)."""
        self.tree.check_branch()
        self._head = self.tree.head()
        await self.handle_start("start")
        self._started = True

    async def run(self) -> None:
        """Take jobs, most urgent first, and dispatch each to ``handle_<kind>``; forever."""
        try:
            await self._quiet()
            while True:
                job = await self.mailbox.take()
                await self._one(job)
        finally:
            self.mailbox.close()  # shutting down: whoever still waits hears "nothing done"

    async def _one(self, job: Job) -> None:
        handler = getattr(self, f"handle_{job.kind.value}")
        self._busy = job.kind
        result: Result = None
        raised = False
        try:
            result = await handler(job.trigger, job.arg)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug or an OS error must not stop the worker
            raised = True
            log.exception("deploy worker: unexpected error in %s; the app keeps running, next request retries",
                          job.kind.value)
        finally:
            self._busy = None
            job.answer(result)  # whoever asked hears how it ended, even when it raised
            self.runs += 1
        if self._needs_recovery() and self._recovery_due is None:
            # Never crashed without a restart on the way; after an error, not at once (it may repeat).
            if raised:
                self._schedule_recovery(self._crash_backoff.next())
            else:
                self.mailbox.put(Kind.RECOVER, "crash")
        if job.kind != Kind.RECOVER and not self.mailbox.has(Kind.DEPLOY, Kind.ROLLBACK, Kind.RESTART):
            await self._quiet()

    async def _quiet(self) -> None:
        """Nothing waits: ready the next release's files, give back what git work took."""
        try:
            await self.builder.idle()
        except OSError as exc:
            log.warning("could not prepare the next release's files ahead (%s); it is built in full", exc)
        await self.git.run(self.tree.forget_caches)
        memory.release()

    def _needs_recovery(self) -> bool:
        live = self.road.releases.live
        return live is None or not live.alive

    # -- handlers: each chooses a target and a fallback, then takes the road ----------------------
    async def handle_start(self, trigger: str, _arg: str | None = None) -> Result:
        """Start-up (and its retries) is a deploy of the last good release: it serves as it is; what else the
        work tree holds (a deploy a stop interrupted, a hand pull while pushcd was down) is a new attempt
        through every gate, with the last good release as its fallback."""
        phases, ledger = Phases(), self.road.ledger
        if ledger.intent is not None:
            stopped = ledger.intent
            log.warning("the last run stopped during a %s of %s (phase %s); deciding again from the work tree",
                        stopped.get("kind"), str((stopped.get("target") or {}).get("commit", "?"))[:12],
                        stopped.get("phase"))
            ledger.end()
        good = self._last_good()
        try:
            target: Built | None = await self.builder.of_work_tree(phases, good)
            why = ""
        except BuildFailed as exc:
            target, why = None, str(exc)
        if target is not None and good is not None and Ref.of(target) == Ref.of(good):
            return await self._start(Attempt("start", good, None, prepare=False), trigger, phases)
        if target is not None and good is not None and not target.dirty and target.commit in self.marks:
            target, why = None, f"{target.commit[:12]} is marked bad ({self.marks.why(target.commit)})"
        if target is None and good is not None:  # the work tree holds nothing startable: the good release
            log.warning("the work tree's release cannot start (%s); starting the last good release %s", why,
                        good.commit[:12])
            await self.moves.follow(good.commit, phases)
            return await self._start(Attempt("start", good, None, prepare=False), trigger, phases)
        if target is None:
            return self._start_failed(why, trigger, phases)
        return await self._start(Attempt("start", target, good, probation=good is not None), trigger, phases)

    async def _start(self, attempt: Attempt, trigger: str, phases: Phases) -> Result:
        target, fallback = attempt.target, attempt.fallback
        why = await self.road.go(attempt, phases, self._undo(target, fallback))
        if why is not None:
            if fallback is not None and self.current == fallback:
                return self._finish("failed", f"{target.commit[:12]} did not come up, the last good release "
                                              f"{fallback.commit[:12]} serves: {why}", target.commit, trigger,
                                    phases, fallback.commit, tail=why, kind="start")
            return self._start_failed(why, trigger, phases, target.commit)
        self._start_told = False
        if not {"before_restart", "release"} & phases.done.keys():
            return None  # started through its gates with nothing to prepare: not worth a row
        return self._finish("ok", f"started {target.commit[:12]}" + (
            f" (the last good release {fallback.commit[:12]} stood by)" if fallback else ""), target.commit,
            trigger, phases, fallback.commit if fallback else target.commit, kind="start")

    def _start_failed(self, why: str, trigger: str, phases: Phases, commit: str = "") -> Result:
        commit = commit or self.deployed
        log.error("app failed to start at %s: %s", commit[:12], why)
        self._schedule_recovery(self._crash_backoff.next())
        if self._start_told:
            return None
        self._start_told = True
        return self._finish("failed", f"start of {commit[:12]} failed, retrying with backoff: {why}", commit,
                            trigger, phases, commit, tail=why, kind="start")

    def _last_good(self) -> Built | None:
        """The release the ledger says last went live and passed probation, if it can start as it is."""
        good = self.road.ledger.good
        if good is None:
            return None
        if self.builder.mode == "in-place":
            return Built(good.commit, self.tree.path)
        return self.builder.kept(good.id)

    def _undo(self, target: Built, fallback: Built | None) -> "Callable[[str], Awaitable[None]]":
        """After a failed attempt: the target is marked bad (unless it holds hand edits), the tree goes back."""
        async def undo(why: str) -> None:
            if fallback is None or fallback.commit == target.commit:
                return
            if not target.dirty:
                self.marks.mark(target.commit, why)
            await self.moves.follow(fallback.commit, Phases())
        return undo

    async def handle_deploy(self, trigger: str, arg: str | None = None) -> Result:
        """The branch tip; or ``arg``: a commit of the branch's history chosen by hand, or "retry"."""
        if trigger in AUTOMATIC and self.pause.reason is not None:
            log.info("deploys are paused (%s): %s does not deploy", self.pause.reason, trigger)
            return None
        phases = Phases()
        try:
            with phases("fetch"):
                tip = await self.git.run(self.tree.fetch)
        except FetchError as exc:
            delay = self._fetch_backoff.next()
            self.mailbox.put_later(delay, Kind.DEPLOY, trigger)
            return self._finish("failed", f"{exc}; retrying in {delay:g}s", self.deployed, trigger, phases,
                                self.deployed)
        self._fetch_backoff.failures = 0
        target, pinned = tip, arg not in (None, "retry")
        if arg == "retry":
            self.marks.unmark(tip)  # a person says: try it again (the cause was fixed elsewhere)
        elif pinned:
            try:
                target = await self.git.run(self.tree.commit_on_branch, arg, tip)
            except GitFailure as exc:
                return self._finish("refused", str(exc), self.deployed, trigger, phases, self.deployed)
        facts = await self.git.run(self.tree.facts, target)
        decision = plan(facts, self.on_diverge, self.marks.as_dict(), pinned=pinned)
        if decision.action == "none":
            log.info("nothing to deploy: %s", decision.reason)
            return LastDeploy("none", decision.reason, target, trigger)  # told to who asked; not recorded
        if decision.action == "refuse":
            return self._finish("refused", decision.reason, target, trigger, phases, self.deployed)
        result = await self._go(facts, decision.reason, trigger, phases, backup=decision.action == "reset")
        if self.deployed == target:
            if target != tip:
                self.hold(f"pinned to {target[:12]}")  # so the next push does not undo it
            await self._forget_older_marks(target)
        return result

    async def _forget_older_marks(self, good: str) -> None:
        """Marks of commits older than one that deployed well are moot: forget them, so the list does not only grow."""
        for sha in self.marks:
            if sha != good and await self.git.run(self.tree.is_ancestor, sha, good):
                self.marks.unmark(sha)

    async def _go(self, facts: Facts, reason: str, trigger: str, phases: Phases, backup: bool = False,
                  kind: str = "deploy") -> Result:
        """Move the tree to ``facts.target``, make its release, take the road; back if it does not come up."""
        previous, target, fallback = self.deployed, facts.target, self.current
        try:
            with phases("checkout"):
                await self.moves.move(facts, backup=backup, reason=reason)
        except GitFailure as exc:
            # The tree was put back to the running commit (all or nothing); the next push tries again.
            return self._finish("failed", f"{exc}; the tree is back at {previous[:12]}", target, trigger, phases,
                                previous, kind=kind)
        undo = self._undo(Built(target, self.tree.path), fallback or Built(previous, self.tree.path))
        try:
            built = await self.builder.of_commit(target, phases, fallback)
        except BuildFailed as exc:
            why: str | None = str(exc)
            await undo(str(why))
        else:
            why = await self.road.go(Attempt(kind, built, fallback, probation=kind == "deploy"), phases, undo)
        if why is None:
            return self._finish("ok", f"{reason} in {phases.total():.2f}s", target, trigger, phases, previous,
                                kind=kind)
        return self._finish("failed", f"{target[:12]} rolled back to {previous[:12]}: {why}", target, trigger,
                            phases, previous, tail=why, kind=kind)

    async def handle_rollback(self, trigger: str, arg: str | None = None) -> Result:
        """POST /rollback: back to the newest good release that is not the running one (or to ``arg``, a
        kept release's id or commit)."""
        phases = Phases()
        current = self.deployed
        kept = self.builder.kept(arg) if arg else None
        target = kept.commit if kept else self._commit_of(arg) if arg else self.road.rollback_target()
        if target is None:
            why = (f"{arg}: no kept release or earlier good release has that id or commit (`pushcd releases` "
                   f"lists them)" if arg else "no earlier good release to roll back to")
            return self._finish("refused", why, current, trigger, phases, current, kind="rollback")
        if target == current and (kept is None or kept == self.current):
            return self._finish("refused", f"{target[:12]} is the running release already", current, trigger,
                                phases, current, kind="rollback")
        kept = kept or self.builder.kept(target)
        if kept is not None:
            return await self._roll_back_to_kept(kept, trigger, phases)
        facts = await self.git.run(self.tree.facts, target)
        if facts.blocking:
            return self._finish("refused", "local edits would be overwritten: " + ", ".join(facts.blocking),
                                target, trigger, phases, current, kind="rollback")
        # Until a newer commit arrives, the webhook must not bring the rolled-back one back.
        self.marks.mark(current, "rolled back by hand")
        result = await self._go(facts, f"roll back {current[:12]} to {target[:12]}", trigger, phases,
                                kind="rollback")
        if self.deployed != target:
            self.marks.unmark(current)  # the rollback itself failed: current still runs (and is not bad)
        return result

    def _commit_of(self, ref: str) -> str | None:
        """A good release's full commit id from an abbreviation (7 digits or more)."""
        if len(ref) < 7:
            return None
        return next((c for c in self.road.good_releases() if c.startswith(ref)), None)

    async def _roll_back_to_kept(self, kept: Built, trigger: str, phases: Phases) -> Result:
        """Start a kept release as it is (no checkout, no preparation), then bring the work tree back to it."""
        current = self.deployed
        if kept.commit != current:
            self.marks.mark(current, "rolled back by hand")  # the webhook must not bring it back
        why = await self.road.go(Attempt("rollback", kept, self.current, prepare=False), phases)
        if why is not None:
            self.marks.unmark(current)
            return self._finish("failed", f"rollback to release {kept.id} ({kept.commit[:12]}) failed, "
                                          f"{current[:12]} keeps serving: {why}", kept.commit, trigger,
                                phases, current, tail=why, kind="rollback")
        await self.moves.follow(kept.commit, phases)
        return self._finish("ok", f"roll back {current[:12]} to {kept.commit[:12]} (kept release {kept.id}) in "
                                  f"{phases.total():.2f}s", kept.commit, trigger, phases, current, kind="rollback")

    async def handle_restart(self, trigger: str, arg: str | None = None) -> Result:
        """New processes with the current config, through the same gates: of what the work tree holds when
        watched files changed (a hand edit, a hand `git pull`: a new release is prepared first), of the
        running release when a person asked; ``arg``: only that process type."""
        if self.current is None:  # nothing ever started (the first start failed): start-up again
            return await self.handle_start(trigger)
        phases, before = Phases(), self.deployed
        if arg is not None:
            return await self._restart_one(arg, trigger, phases)
        if trigger == "watch":
            try:
                built = await self.builder.of_work_tree(phases, self.current)
            except BuildFailed as exc:
                return self._finish("failed", f"the work tree's release cannot be made, the running release keeps "
                                              f"serving: {exc}", before, trigger, phases, before, kind="restart")
            kind, why_text = ("deploy", f"{before[:12]}..{built.commit[:12]} pulled by hand") \
                if built.commit != before else ("restart", "restarted after file changes")
            attempt = Attempt(kind, built, self.current)
        else:
            kind, why_text = "restart", "restarted by hand, with the current config"
            attempt = Attempt(kind, self.current, self.current, prepare=False)
        why = await self.road.go(attempt, phases)
        if why is None:
            return self._finish("ok", why_text, self.deployed, trigger, phases, before, kind=kind)
        return self._finish("failed", f"{kind} failed, the running release keeps serving: {why}",
                            attempt.target.commit, trigger, phases, before, tail=why, kind=kind)

    async def _restart_one(self, name: str, trigger: str, phases: Phases) -> Result:
        """`pushcd restart NAME`: one process type of the running release, with its gate."""
        assert self.current is not None
        types = self.road.types(self.current)
        if name != "web" and name not in {t.name for t in types}:
            return self._finish("refused", f"no process type {name}; the running release has: "
                                           f"{', '.join(['web', *(t.name for t in types)])}", self.deployed, trigger,
                                phases, self.deployed, kind="restart")
        with phases("start"):
            if name == "web":
                result = await self.road.releases.start(self.current)
                why = None if result.ok else result.reason
            else:
                why = await self.workers.replace(self.current, types, only=name)
        if why is None:
            return self._finish("ok", f"restarted {name} by hand", self.deployed, trigger, phases, self.deployed,
                                kind="restart")
        return self._finish("failed", f"restart of {name} failed, the running instances keep running: {why}",
                            self.deployed, trigger, phases, self.deployed, tail=why, kind="restart")

    async def handle_recover(self, _trigger: str, arg: str | None = None) -> Result:
        """The live release died: look at why once, then restart it after a backoff (a timer, not a wait).
        ``arg``: a worker of the release exited within probation (why): the whole release goes back."""
        releases = self.road.releases
        if arg is not None:
            live = releases.live
            if live is not None and live.previous is not None and live.built == self.current:
                self.recorder.tell("crashed", live.commit, arg)
                return await self._probation_failed(live.built, live.previous, live.live_since, arg)
            return None
        if not self._needs_recovery():
            self._recovery_due = None  # a deploy or restart brought one up meanwhile
            return None
        if self._recovery_due is not None and time.monotonic() < self._recovery_due:
            return None  # the scheduled retry will come
        dead = releases.live
        if self._recovery_due is None and dead is not None and dead is not self._judged:
            self._judged = dead
            self._crash_backoff.observe_uptime(dead.child.uptime)
            why = failure_report(describe_exit(dead.child.returncode), dead.child)
            self.recorder.tell("crashed", dead.commit, why, dead.child.telling)
            if dead.previous and time.monotonic() - dead.live_since < self.road.probation:
                # Went live, then crashed within probation: it was never good.
                return await self._probation_failed(dead.built, dead.previous, dead.live_since, why)
            log.warning("app crashed (%s); restarting", why)
            self._schedule_recovery(self._crash_backoff.next())
            return None
        self._recovery_due = None
        if self.current is None:  # nothing ever started: start-up again, through the gates
            await self.handle_start("crash")
            return None
        result = await releases.start(self.current)  # a kept release: no preparation, its own gate
        self.crash_restarts += result.ok
        if not result.ok:
            self._schedule_recovery(self._crash_backoff.next())
        return None

    def _schedule_recovery(self, delay: float) -> None:
        log.info("restarting %s in %.1fs", self.deployed[:12], delay)
        self._recovery_due = time.monotonic() + delay
        self.mailbox.put_later(delay, Kind.RECOVER, "crash")

    async def _probation_failed(self, bad_release: Built, good_release: Built, live_since: float, why: str
                                ) -> Result:
        """A release crashed within probation: marked bad, the tree back, the release before it serves again."""
        phases = Phases()
        bad, good = bad_release.commit, good_release.commit
        self.marks.mark(bad, f"crashed {time.monotonic() - live_since:.1f}s after going live: {why}")
        await self.moves.follow(good, phases)  # in place, the files first: the app runs from them
        failed = await self.road.go(Attempt("rollback", good_release, None, prepare=False), phases)
        outcome = self._finish("failed", f"probation: {bad[:12]} {self.marks.why(bad)}; back to {good[:12]}", bad,
                               "rollback", phases, good, tail=why, kind="rollback")
        if failed is not None:
            self._schedule_recovery(self._crash_backoff.next())
        return outcome

    def _finish(self, result: str, reason: str, commit: str, trigger: str, phases: Phases,
                from_commit: str, tail: str = "", kind: str = "deploy") -> LastDeploy:
        return self.recorder.finish(result, reason, commit, trigger, phases, from_commit, tail, kind)
