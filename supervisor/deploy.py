"""The deploy worker: one job at a time, taken from one mailbox; decisions pure.

Everything that changes the tree or the live release is a job in the
:class:`~supervisor.jobs.Mailbox` (webhook and manual deploys, rollbacks,
watched file changes, crash recovery), and :meth:`Deployer.run` is its only
consumer: it takes the most urgent job and calls ``handle_<kind>``. So no two
jobs ever interleave, no request is lost, and any number of requests that
arrive during a deploy collapse into one next deploy of the branch tip (the
webhook payload is only a hint to look).

The decisions are plain functions: :func:`plan` (which way to move the tree,
or refuse) and :class:`Backoff` arithmetic. Results are written down by the
:class:`~supervisor.ops.record.Recorder`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass
from typing import Iterator, Literal

from . import memory
from .backoff import Backoff
from .build.builder import Builder, BuildFailed, Built, InPlace
from .config import ProcSpec, procfile_types
from .git.thread import GitThread
from .git.tree import Facts, FetchError, GitFailure, WorkTree
from .jobs import Job, Kind, Mailbox
from .ops.history import History
from .ops.record import LastDeploy, Phases, Recorder
from .pause import Pause
from .process.child import Spec, describe_exit, run_to_end
from .process.guard import Guard
from .process.release import Releases, SwapResult, failure_report
from .process.workers import Workers
from .watch import Expected

log = logging.getLogger("supervisor.deploy")

Action = Literal["none", "forward", "back", "reset", "refuse"]
AUTOMATIC = frozenset({"webhook", "poll"})  # triggers a pause holds back


@dataclass(frozen=True)
class Plan:
    action: Action
    reason: str


def plan(facts: Facts, on_diverge: str, bad: dict[str, str], pinned: bool = False) -> Plan:
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
    """The single worker: deploys, restarts, rollbacks and crash recovery, one at a time."""

    def __init__(self, tree: WorkTree, git: GitThread, releases: Releases, expected: Expected,
                 recorder: Recorder, *, on_diverge: str, probation: float, before_restart: list[list[str]],
                 before_restart_timeout: float, history: History | None = None,
                 guard: Guard | None = None, pause: Pause | None = None, bad: dict[str, str] | None = None,
                 builder: Builder | None = None, workers: Workers | None = None,
                 processes: dict[str, ProcSpec] | None = None, release_command: list[str] | None = None,
                 release_timeout: float = 300.0) -> None:
        self.tree = tree
        self.workers = workers or Workers(guard)
        self.processes = dict(processes or {})  # [processes.NAME]; replaced whole on SIGHUP
        self.release_command = list(release_command or [])
        self.release_timeout = release_timeout
        self.workers.on_early_exit = lambda why: self.mailbox.put(Kind.RECOVER, "crash", arg=why)
        self.builder: Builder = builder or InPlace(tree, git)
        self.git = git
        self.releases = releases
        self.expected = expected
        self.recorder = recorder
        self.on_diverge = on_diverge
        self.probation = probation
        self.before_restart = before_restart
        self.before_restart_timeout = before_restart_timeout
        self.history = history
        self.guard = guard
        self.pause = pause or Pause()
        self.mailbox = Mailbox()
        self.bad: dict[str, str] = dict(bad or {})  # commit -> why; kept in the history too
        self.deployed: str = ""
        self.current: Built | None = None  # the release that serves (or, crashed, is to be restarted)
        self.runs = 0  # jobs the worker finished, including ones that found nothing to do
        self.crash_restarts = 0  # the web process started again after it died (not deploys)
        self._started = False
        self._busy: Kind | None = None
        self._fetch_backoff = Backoff(first=1.0, cap=60.0)
        self._crash_backoff = Backoff()
        self._recovery_due: float | None = None  # a crash restart is scheduled for this monotonic time
        self._judged: object = None  # the dead release whose crash was already looked at
        releases.on_exit = self.crashed

    # -- what others read ----------------------------------------------------
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
        """Deploys that ended in a result (ok, refused, failed)."""
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
        """Run what the work tree holds now."""
        self.tree.check_branch()
        self.deployed = self.tree.head()
        result = await self._start_work_tree(Phases())
        self._started = True
        if not result.ok:
            log.error("app failed to start at %s: %s", self.deployed[:12], result.reason)
            self._schedule_recovery(self._crash_backoff.next())

    async def _start_work_tree(self, phases: Phases) -> SwapResult:
        """A release of what the work tree holds (HEAD and any hand edits), put live."""
        try:
            built = await self.builder.of_work_tree(phases, self.current)
        except BuildFailed as exc:
            return SwapResult(False, str(exc))
        self.builder.seal(built)
        with phases("start"):
            return await self._swap(built, previous=None)

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
        live = self.releases.live
        return live is None or not live.alive

    # -- handlers: one per job kind -----------------------------------------
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
            self._unmark_bad(tip)  # a person says: try it again (the cause was fixed elsewhere)
        elif pinned:
            try:
                target = await self.git.run(self.tree.commit_on_branch, arg, tip)
            except GitFailure as exc:
                return self._finish("refused", str(exc), self.deployed, trigger, phases, self.deployed)
        facts = await self.git.run(self.tree.facts, target)
        decision = plan(facts, self.on_diverge, self.bad, pinned=pinned)
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
        for sha in list(self.bad):
            if sha != good and await self.git.run(self.tree.is_ancestor, sha, good):
                self._unmark_bad(sha)

    def _good_releases(self) -> Iterator[str]:
        """Commits that went live and passed their checks, newest first."""
        return self.history.good_releases() if self.history else iter(())

    def rollback_target(self) -> str | None:
        """The newest good release that is not the running one."""
        return next((c for c in self._good_releases() if c != self.deployed and c not in self.bad), None)

    def previous_release(self) -> Built | None:
        """The kept release a rollback would start (None in place, or when there is none)."""
        target = self.rollback_target()
        return self.builder.kept(target) if target else None

    async def handle_rollback(self, trigger: str, arg: str | None = None) -> Result:
        """POST /rollback: back to the newest good release that is not the running one (or to ``arg``, a
        kept release's id or commit)."""
        phases = Phases()
        current = self.deployed
        kept = self.builder.kept(arg) if arg else None
        target = kept.commit if kept else self._commit_of(arg) if arg else self.rollback_target()
        if target is None:
            why = (f"{arg}: no kept release or earlier good release has that id or commit (`pushcd releases` "
                   f"lists them)" if arg else "no earlier good release to roll back to")
            return self._finish("refused", why, current, trigger, phases, current)
        if target == current and (kept is None or kept == self.current):
            return self._finish("refused", f"{target[:12]} is the running release already", current, trigger,
                                phases, current)
        kept = kept or self.builder.kept(target)
        if kept is not None:
            return await self._roll_back_to_kept(kept, trigger, phases)
        facts = await self.git.run(self.tree.facts, target)
        if facts.blocking:
            return self._finish("refused", "local edits would be overwritten: " + ", ".join(facts.blocking),
                                target, trigger, phases, current)
        # Until a newer commit arrives, the webhook must not bring the rolled-back one back.
        self._mark_bad(current, "rolled back by hand")
        result = await self._go(facts, f"roll back {current[:12]} to {target[:12]}", trigger, phases)
        if self.deployed != target:
            self._unmark_bad(current)  # the rollback itself failed: current still runs (and is not bad)
        return result

    async def _restart_one(self, name: str, trigger: str, phases: Phases) -> Result:
        """`pushcd restart NAME`: one process type of the running release, with its gate."""
        assert self.current is not None
        types = self._types(self.current)
        if name != "web" and name not in {t.name for t in types}:
            return self._finish("refused", f"no process type {name}; the running release has: "
                                           f"{', '.join(['web', *(t.name for t in types)])}", self.deployed, trigger,
                                phases, self.deployed)
        with phases("start"):
            if name == "web":
                result = await self.releases.start(self.current)
                why = None if result.ok else result.reason
            else:
                why = await self.workers.replace(self.current, types, only=name)
        if why is None:
            return self._finish("ok", f"restarted {name} by hand", self.deployed, trigger, phases, self.deployed)
        return self._finish("failed", f"restart of {name} failed, the running instances keep running: {why}",
                            self.deployed, trigger, phases, self.deployed, tail=why)

    def _types(self, built: Built) -> list[ProcSpec]:
        return procfile_types(self.processes, built.procfile)

    def _commit_of(self, ref: str) -> str | None:
        """A good release's full commit id from an abbreviation (7 digits or more)."""
        if len(ref) < 7:
            return None
        return next((c for c in self._good_releases() if c.startswith(ref)), None)

    async def _roll_back_to_kept(self, kept: Built, trigger: str, phases: Phases) -> Result:
        """Start a kept release as it is (no checkout, no install), then bring the work tree back to it."""
        current = self.deployed
        if kept.commit != current:
            self._mark_bad(current, "rolled back by hand")  # the webhook must not bring it back
        with phases("start"):
            result = await self._swap(kept, previous=None)
        if not result.ok:
            self._unmark_bad(current)
            return self._finish("failed", f"rollback to release {kept.id} ({kept.commit[:12]}) failed, "
                                          f"{current[:12]} keeps serving: {result.reason}", kept.commit, trigger,
                                phases, current, tail=result.reason)
        await self._tree_to(kept.commit, phases)
        return self._finish("ok", f"roll back {current[:12]} to {kept.commit[:12]} (kept release {kept.id}) in "
                                  f"{phases.total():.2f}s", kept.commit, trigger, phases, current)

    async def _tree_to(self, commit: str, phases: Phases) -> None:
        """After a kept release went live: the work tree follows it (the watcher ignores the move)."""
        with phases("rollback"):
            facts = await self.git.run(self.tree.facts, commit)
            if facts.head == commit:
                return
            if facts.blocking:
                log.warning("the work tree stays at %s: local edits would be overwritten (%s); the release "
                            "runs from its own folder", facts.head[:12], ", ".join(facts.blocking))
                return
            try:
                await self._move(facts, backup=False, reason=f"roll back to {commit[:12]}")
            except GitFailure as exc:
                log.warning("the work tree stays at %s: %s; the release runs from its own folder",
                            facts.head[:12], exc)

    async def handle_restart(self, trigger: str, arg: str | None = None) -> Result:
        """New processes with the current config, the same health gates: of what the work tree holds when
        watched files changed (a hand edit, a hand `git pull`), of the running release when a person
        asked (e.g. to apply an [app] change reloaded with SIGHUP); ``arg``: only that process type."""
        why = "after file changes" if trigger == "watch" else "by hand, with the current config"
        phases, before = Phases(), self.deployed
        if arg is not None and self.current is not None:
            return await self._restart_one(arg, trigger, phases)
        if trigger == "watch" or self.current is None:
            result = await self._start_work_tree(phases)
        else:
            with phases("start"):
                result = await self._swap(self.current, previous=None)
        if result.ok:
            return self._finish("ok", f"restarted {why}", self.deployed, trigger, phases, before)
        return self._finish("failed", f"restart {why} failed, the running release keeps serving: "
                                      f"{result.reason}", self.deployed, trigger, phases, before,
                            tail=result.reason)

    async def handle_recover(self, _trigger: str, arg: str | None = None) -> Result:
        """The live release died: look at why once, then restart it after a backoff (a timer, not a wait).
        ``arg``: a worker of the release exited within probation (why): the whole release goes back."""
        if arg is not None:
            live = self.releases.live
            if live is not None and live.previous is not None and live.built == self.current:
                self.recorder.tell("crashed", live.commit, arg)
                return await self._probation_failed(live.built, live.previous, live.live_since, arg)
            return None
        if not self._needs_recovery():
            self._recovery_due = None  # a deploy or restart brought one up meanwhile
            return None
        if self._recovery_due is not None and time.monotonic() < self._recovery_due:
            return None  # the scheduled retry will come
        dead = self.releases.live
        if self._recovery_due is None and dead is not None and dead is not self._judged:
            self._judged = dead
            self._crash_backoff.observe_uptime(dead.child.uptime)
            why = failure_report(describe_exit(dead.child.returncode), dead.child)
            self.recorder.tell("crashed", dead.commit, why, dead.child.telling)
            if dead.previous and time.monotonic() - dead.live_since < self.probation:
                # Went live, then crashed within probation: it was never good.
                return await self._probation_failed(dead.built, dead.previous, dead.live_since, why)
            log.warning("app crashed (%s); restarting", why)
            self._schedule_recovery(self._crash_backoff.next())
            return None
        self._recovery_due = None
        if self.current is None:  # nothing was ever built (the first build failed): try again
            result = await self._start_work_tree(Phases())
        else:
            result = await self.releases.start(self.current)
        self.crash_restarts += result.ok
        if not result.ok:
            self._schedule_recovery(self._crash_backoff.next())
        return None

    # -- the steps ----------------------------------------------------------
    def _schedule_recovery(self, delay: float) -> None:
        log.info("restarting %s in %.1fs", self.deployed[:12], delay)
        self._recovery_due = time.monotonic() + delay
        self.mailbox.put_later(delay, Kind.RECOVER, "crash")

    async def _probation_failed(self, bad_release: Built, good_release: Built, live_since: float, why: str
                                ) -> Result:
        phases = Phases()
        bad, good = bad_release.commit, good_release.commit
        crash = f"crashed {time.monotonic() - live_since:.1f}s after going live: {why}"
        in_place = self.builder.mode == "in-place"
        if in_place:
            await self._back_to(good, bad, crash, phases)  # the files first: the app runs from them
        else:
            self._mark_bad(bad, crash)
        with phases("start"):  # a kept release needs nothing: it starts as it is
            result = await self.releases.start(good_release)
            await self._workers_to(good_release)
        if not in_place:
            await self._tree_to(good, phases)  # then the tree follows
        self.deployed, self.current = good, good_release
        outcome = self._finish("failed", f"probation: {bad[:12]} {self.bad[bad]}; back to {good[:12]}", bad,
                               "rollback", phases, good, tail=why)
        if not result.ok:
            self._schedule_recovery(self._crash_backoff.next())
        return outcome

    def _finish(self, result: str, reason: str, commit: str, trigger: str, phases: Phases,
                from_commit: str, tail: str = "") -> LastDeploy:
        return self.recorder.finish(result, reason, commit, trigger, phases, from_commit, tail)

    def _mark_bad(self, sha: str, reason: str) -> None:
        self.bad[sha] = reason
        if self.history:
            self.history.mark_bad(sha, reason)

    def _unmark_bad(self, sha: str) -> None:
        if self.bad.pop(sha, None) is not None and self.history:
            self.history.unmark_bad(sha)

    async def _go(self, facts: Facts, reason: str, trigger: str, phases: Phases, backup: bool = False) -> Result:
        """Move the tree to ``facts.target``, make its release, swap; roll back if it does not come up."""
        previous, target = self.deployed, facts.target
        try:
            with phases("checkout"):
                await self._move(facts, backup=backup, reason=reason)
        except GitFailure as exc:
            # The tree was put back to the running commit (all or nothing); the next push tries again.
            return self._finish("failed", f"{exc}; the tree is back at {previous[:12]}", target, trigger, phases,
                                previous)
        try:
            built = await self._ready_release(target, phases)
        except BuildFailed as exc:
            why = str(exc)
        else:
            with phases("start"):
                result = await self._swap(built, previous=self.current, web_back=False)
            if result.ok:
                return self._finish("ok", f"{reason} in {phases.total():.2f}s", target, trigger, phases, previous)
            why = result.reason
        await self._back_to(good=previous, bad=target, why=why, phases=phases)
        live = self.releases.live
        if live is not None and self.current is not None and live.built != self.current:
            # A worker failed after the web process moved: it goes back too, now that its files are (in place).
            await self.releases.start(self.current)
        return self._finish("failed", f"{target[:12]} rolled back to {previous[:12]}: {why}", target, trigger,
                            phases, previous, tail=why)

    async def _ready_release(self, target: str, phases: Phases) -> Built:
        """``target``'s release made (or found), before_restart run in it, sealed, the release task done;
        BuildFailed says why not, and nothing of the live release changed."""
        built = await self.builder.of_commit(target, phases, self.current)
        if built.fresh or self.builder.mode == "in-place":  # a kept release has had its before_restart
            with phases("before_restart"):
                why = await self._before_restart(built)
            if why is not None:
                self.builder.discard(built)
                raise BuildFailed(why)
        self.builder.seal(built)
        why = await self._release_task(built, phases)
        if why is not None:
            raise BuildFailed(why)
        return built

    async def _move(self, facts: Facts, backup: bool, reason: str) -> None:
        def work() -> None:
            if backup:
                ref = self.tree.backup(facts.head)
                log.warning("saved %s as %s before reset", facts.head[:12], ref)
            self.tree.move_to(facts.target, reason, facts)

        # The checkout's own writes (and a repair's) must not come back as a watched change.
        self.expected.expect(facts.writes)
        with self.expected.writing():  # the watcher judges nothing until this block ends
            try:
                await self.git.run(work)
            except GitFailure:
                self.expected.expect(facts.undo)  # the repair wrote the running commit's files back
                raise

    async def _before_restart(self, built: Built) -> str | None:
        """Run [deploy] before_restart in the new release ([app] cwd in its folder, its environment);
        None when all succeeded."""
        for argv in self.before_restart:
            why = await self._run_in(built, argv, "before_restart", "before_restart", self.before_restart_timeout)
            if why is not None:
                return why
        return None

    async def _run_in(self, built: Built, argv: list[str], label: str, what: str, timeout: float,
                      env: dict[str, str] | None = None) -> str | None:
        """One command run to its end in ``built`` (its folder, its environment); None when it exited 0,
        else why, ``what`` first: its exit, or its timeout, with the telling line of its output."""
        spec = self.releases.spec(built)
        spec = Spec(argv, spec.cwd, {**spec.env, **(env or {})}, stop_timeout=5, unset=spec.unset)
        try:
            code, child = await run_to_end(spec, label, timeout, self.guard)
        except OSError as exc:
            return f"{what} {argv[0]}: {exc.strerror or exc}"
        if code is None:
            return failure_report(f"{what} {' '.join(argv)} timed out after {timeout:g}s", child)
        return failure_report(f"{what} {' '.join(argv)} {describe_exit(code)}", child) if code else None

    async def _swap(self, built: Built, previous: Built | None, web_back: bool = True) -> SwapResult:
        """The web process, then every process type, to ``built``; all of them or none (``web_back``
        False: the caller puts the web process back, after the files it runs from)."""
        before = self.current
        result = await self.releases.start(built, previous=previous)
        if result.ok:
            why = await self.workers.replace(built, self._types(built), probation=self.probation if previous else 0,
                                             gate=before is not None)  # at start there is nothing to go back to
            if why is not None:  # a worker of the new release is not ready: the web process goes back too
                log.warning("release %s: %s; the web process goes back to %s", built.commit[:12], why,
                            before.commit[:12] if before else "nothing")
                if before is not None and web_back:
                    await self.releases.start(before)
                result = SwapResult(False, why)
        if result.ok:
            self.deployed, self.current = built.commit, built
            self._went_live(built)
        return result

    async def _workers_to(self, built: Built) -> None:
        why = await self.workers.replace(built, self._types(built))
        if why is not None:
            log.error("the workers of %s did not come back: %s", built.commit[:12], why)

    async def _release_task(self, built: Built, phases: Phases) -> str | None:
        """[deploy] release_command (or the Procfile's release: line): once per deploy, before anything of
        the new release serves; None when it succeeded."""
        argv = (built.procfile or {}).get("release") or self.release_command
        if not argv:
            return None
        with phases("release"):
            return await self._run_in(built, argv, "release", "release task", self.release_timeout,
                                      {"SUPERVISOR_PROCESS": "release"})

    def _went_live(self, built: Built) -> None:
        if self.history and not built.dirty:  # a rollback goes to commits, never to a hand edit
            self.history.record_release(built.commit)
        self.builder.went_live(built, [self.previous_release()])

    async def _back_to(self, good: str, bad: str, why: str, phases: Phases) -> None:
        """Mark ``bad``, return the tree to ``good`` (the watcher ignores it) and call it deployed."""
        self._mark_bad(bad, why)
        with phases("rollback"):
            facts = await self.git.run(self.tree.facts, good)
            await self._move(facts, backup=False, reason=f"roll back to {good[:12]}")
        self.deployed = good
