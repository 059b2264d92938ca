"""The deploy worker: one request at a time, taken from one mailbox, dispatched to its handler.

Everything that changes the tree or the live release is a request in the
:class:`~supervisor.mailbox.Mailbox` (webhook and manual deploys, rollbacks,
watched file changes, crash recovery), and :meth:`Deployer.run` is its only
consumer: it takes the most urgent request and calls ``handle_<kind>``. So no two
requests ever interleave, no request is lost, and any number of requests that
arrive during a deploy collapse into one next deploy of the branch tip (the
webhook payload is only a hint to look).

Each handler is a few lines in its own module (:mod:`.startup`,
:mod:`.deploys`, :mod:`.restarts`, :mod:`.recovery`) that chooses a target and
a fallback and takes the one road (:class:`~supervisor.road.Road`): every way a
release comes to run passes the same preparation and gates.
"""

from __future__ import annotations

import asyncio
import enum
import logging

from . import memory
from .built import Built
from .configvars import ConfigVars
from .deploys import ConfigChange, Deploys, RollbackTo
from .failure import Failure
from .git.thread import GitThread
from .git.tree import WorkTree
from .mailbox import Kind, Mailbox, Request
from .marks import Marks
from .moves import Moves
from .ops.record import LastDeploy, Recorder
from .pause import Pause
from .process.workers import Workers
from .recovery import Recovery
from .restarts import Restarts
from .road import Road
from .startup import Startup
from .work import Result, Work

log = logging.getLogger("supervisor.deploy")


class State(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    DEPLOYING = "deploying"  # a deploy, rollback or restart request is under way
    CRASHED = "crashed"  # no live release is running; a recovery is queued or scheduled


class Deployer:
    """The single worker: takes requests and dispatches them, one at a time."""

    def __init__(self, tree: WorkTree, git: GitThread, road: Road, moves: Moves, recorder: Recorder, *,
                 on_diverge: str, pause: Pause | None = None, marks: Marks | None = None,
                 config_vars: ConfigVars | None = None) -> None:
        self.work = Work(tree, git, road, moves, recorder, marks or Marks(),
                         config_vars=config_vars or ConfigVars(None))
        self.mailbox = Mailbox()
        self.pause = pause or Pause()
        self.recovery = Recovery(self.work, self.mailbox, start_up=lambda trigger: self.startup.run(trigger))
        self.startup = Startup(self.work, retry=self.recovery.retry)
        self.deploying = Deploys(self.work, self.mailbox, self.pause, self.hold, on_diverge=on_diverge)
        self.restarts = Restarts(self.work, start_up=self.startup.run)
        self.runs = 0  # requests the worker finished, including ones that found nothing to do
        self._started = False
        self._busy: Kind | None = None
        road.web.on_exit = lambda _release: self.mailbox.put(Kind.RECOVER, "crash")
        road.workers.on_early_exit = lambda why: self.mailbox.put(Kind.RECOVER, "crash", arg=why)


    # -- handlers: one per request kind -------------------------------------------
    async def handle_deploy(self, trigger: str, arg: str | None = None) -> Result:
        return await self.deploying.deploy(trigger, arg)

    async def handle_rollback(self, trigger: str, arg: RollbackTo | None = None) -> Result:
        return await self.deploying.rollback(trigger, arg)

    async def handle_config(self, trigger: str, arg: ConfigChange) -> Result:
        return await self.deploying.configure(trigger, arg)

    async def handle_restart(self, trigger: str, arg: str | None = None) -> Result:
        return await self.restarts.restart(trigger, arg)

    async def handle_recover(self, trigger: str, arg: Failure | None = None) -> Result:
        return await self.recovery.recover(trigger, arg)

    # -- what others read ----------------------------------------------------
    @property
    def road(self) -> Road:
        return self.work.road

    @property
    def marks(self) -> Marks:
        return self.work.marks

    @property
    def builder(self):  # type: ignore[no-untyped-def]  # the Builder protocol of [release] mode
        return self.work.road.builder

    @property
    def workers(self) -> Workers:
        return self.work.road.workers

    @property
    def current(self) -> Built | None:
        """The release that serves (or, crashed, is to be started again); the road owns it."""
        return self.work.road.current

    @property
    def deployed(self) -> str:
        return self.work.deployed

    @property
    def on_diverge(self) -> str:
        return self.deploying.on_diverge

    @on_diverge.setter
    def on_diverge(self, value: str) -> None:
        self.deploying.on_diverge = value

    @property
    def crash_restarts(self) -> int:
        return self.recovery.crash_restarts

    @property
    def _recovery_due(self) -> float | None:
        return self.recovery.due

    @property
    def state(self) -> State:
        if not self._started:
            return State.STARTING
        if self._busy in (Kind.DEPLOY, Kind.ROLLBACK, Kind.CONFIG, Kind.RESTART):
            return State.DEPLOYING
        return State.CRASHED if self.recovery.needed() else State.RUNNING

    @property
    def last(self) -> LastDeploy | None:
        return self.work.recorder.last

    @property
    def deploys(self) -> int:
        """Results recorded (ok, refused, failed), of every kind."""
        return self.work.recorder.count

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

    def request_rollback(self, to: str | None = None, force: bool = False) -> "asyncio.Future[Result]":
        """Back to the previous good release, or ``to`` (a kept release's id or commit; ``force``: even one that
        never went live)."""
        arg = RollbackTo(to, force) if to else None
        return self.mailbox.put(Kind.ROLLBACK, "rollback", wait=True, arg=arg)  # type: ignore[return-value]

    def request_restart(self, trigger: str, process: str | None = None) -> "asyncio.Future[Result]":
        """Restart every process (or ``process``: "web" or a process type's name) of the running release."""
        return self.mailbox.put(Kind.RESTART, trigger, wait=True, arg=process)  # type: ignore[return-value]

    def request_config(self, set_: dict[str, str], unset: list[str], restart: bool = True
                       ) -> "asyncio.Future[Result] | str":
        """New config vars: the current ones with ``set_`` and without ``unset`` (ConfigVarsError if a key is
        wrong). With ``restart``, a future of the request that puts them live; without, their digest: they apply
        at the next deploy."""
        store = self.work.config_vars
        values = store.changed(set_, unset)  # a wrong key is refused here, before anything is queued
        if not restart:
            name = store.add(values)
            store.make_current(name)
            return name
        change = ConfigChange(tuple(sorted(set_.items())), tuple(unset))  # applied to what is current then
        return self.mailbox.put(Kind.CONFIG, "config", wait=True, arg=change)  # type: ignore[return-value]

    def hold(self, reason: str) -> None:
        """Pause automatic deploys (webhook, poll); a person's requests still run."""
        self.pause.hold(reason)
        log.warning("automatic deploys paused: %s", reason)
        self.work.recorder.tell("paused", self.deployed, reason)

    def resume(self) -> "asyncio.Future[Result]":
        """Automatic deploys again; the tip is deployed if it moved meanwhile."""
        self.pause.lift()
        log.info("automatic deploys resumed")
        self.work.recorder.tell("resumed", self.deployed, "automatic deploys resumed")
        return self.request_deploy("resume")

    # -- the loop -----------------------------------------------------------
    async def start(self) -> None:
        """Start-up: the last good release serves (see :mod:`.startup`)."""
        self.work.tree.check_branch()
        self.work.head = self.work.tree.head()
        await self.startup.run("start")
        self._started = True

    async def run(self) -> None:
        """Take requests, most urgent first, and dispatch each to ``handle_<kind>``; forever."""
        try:
            await self._quiet()
            while True:
                request = await self.mailbox.take()
                await self._one(request)
        finally:
            self.mailbox.close()  # shutting down: whoever still waits hears "nothing done"

    async def _one(self, request: Request) -> None:
        handler = getattr(self, f"handle_{request.kind.value}")
        self._busy = request.kind
        result: Result = None
        raised = False
        try:
            result = await handler(request.trigger, request.arg)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug or an OS error must not stop the worker
            raised = True
            log.exception("deploy worker: unexpected error in %s; the app keeps running, next request retries",
                          request.kind.value)
        finally:
            self._busy = None
            request.answer(result)  # whoever asked hears how it ended, even when it raised
            self.runs += 1
        if self.recovery.needed() and self.recovery.due is None:
            # Never crashed without a restart on the way; after an error, not at once (it may repeat).
            if raised:
                self.recovery.retry()
            else:
                self.mailbox.put(Kind.RECOVER, "crash")
        if request.kind != Kind.RECOVER and not self.mailbox.has(Kind.DEPLOY, Kind.ROLLBACK, Kind.CONFIG, Kind.RESTART):
            await self._quiet()

    async def _quiet(self) -> None:
        """Nothing waits: ready the next release's files, give back what git work took."""
        w = self.work
        try:
            await w.road.builder.idle(w.road.current)
        except OSError as exc:
            log.warning("could not prepare the next release's files ahead (%s); it is built in full", exc)
        await w.git.run(w.tree.forget_caches)
        memory.give_back()
