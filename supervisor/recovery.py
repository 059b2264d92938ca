"""Recovery: the live release died. Looked at once; within probation the whole release goes back to the
one before it, otherwise it starts again after a backoff (a timer that puts a job, never a wait inside one,
so a rollback asked for meanwhile is taken at once)."""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

from .backoff import Backoff
from .built import Built
from .mailbox import Kind, Mailbox
from .ops.record import Phases
from .failure import Failure
from .process.child import describe_exit
from .road import Attempt
from .work import Result, Work

log = logging.getLogger("supervisor.deploy")


class Recovery:
    def __init__(self, work: Work, mailbox: Mailbox, start_up: Callable[[str], Awaitable[Result]]) -> None:
        self.work = work
        self.mailbox = mailbox
        self.start_up = start_up  # nothing ever started: start-up again, through the gates
        self.crash_restarts = 0  # the web process started again after it died (not deploys)
        self.due: float | None = None  # a restart is scheduled for this monotonic time
        self._backoff = Backoff()
        self._judged: object = None  # the dead release whose crash was already looked at

    def needed(self) -> bool:
        live = self.work.road.web.live
        return live is None or not live.alive

    def retry(self) -> None:
        """Try again after the next backoff step."""
        delay = self._backoff.next()
        log.info("restarting %s in %.1fs", self.work.deployed[:12], delay)
        self.due = time.monotonic() + delay
        self.mailbox.put_later(delay, Kind.RECOVER, "crash")

    async def recover(self, trigger: str, arg: Failure | None = None) -> Result:
        """``arg``: within probation, a worker of the release exited, or (``trigger`` "unhealthy") its health
        check kept failing (why): the whole release goes back."""
        w, web = self.work, self.work.road.web
        if arg is not None:
            live = web.live
            if live is not None and live.previous is not None and live.built == w.road.current:
                if trigger == "crash":
                    w.recorder.tell("crashed", live.commit, str(arg), arg.failing_line)
                return await self._probation_failed(live.built, live.previous, live.live_since, arg)
            return None
        if not self.needed():
            self.due = None  # a deploy or restart brought one up meanwhile
            return None
        if self.due is not None and time.monotonic() < self.due:
            return None  # the scheduled retry will come
        dead = web.live
        if self.due is None and dead is not None and dead is not self._judged:
            self._judged = dead
            self._backoff.observe_uptime(dead.child.uptime)
            why = Failure.of(describe_exit(dead.child.returncode), dead.child)
            w.recorder.tell("crashed", dead.commit, str(why), why.failing_line)
            if dead.previous and time.monotonic() - dead.live_since < w.road.probation:
                # Went live, then crashed within probation: it was never good.
                return await self._probation_failed(dead.built, dead.previous, dead.live_since, why)
            log.warning("app crashed (%s); restarting", why)
            self.retry()
            return None
        self.due = None
        if w.road.current is None:
            await self.start_up("crash")
            return None
        failed = await web.start(w.road.current)  # a kept release: no preparation, its own gate
        self.crash_restarts += failed is None
        if failed is not None:
            self.retry()
        return None

    async def _probation_failed(self, bad_release: Built, good_release: Built, live_since: float, why: Failure
                                ) -> Result:
        """Marked bad, the tree back, the release before it serves again. A change of config vars alone is not
        the commit's fault: the config vars go back instead."""
        w, phases = self.work, Phases()
        bad, good = bad_release.commit, good_release.commit
        what = f"failed {time.monotonic() - live_since:.1f}s after going live: {why}"
        if bad == good:
            w.config_vars.went_back(bad_release.config, good_release.config)
            what = f"config vars {bad_release.config or '(none)'} {what}"
        else:
            w.marks.mark(bad, what)
        await w.moves.follow(good, phases)  # in place, the files first: the app runs from them
        failed = await w.road.go(Attempt("rollback", good_release, None, prepare=False), phases)
        outcome = w.finish("failed", f"probation: {bad[:12]} {what}; back to {good[:12]}", bad,
                           "rollback", phases, good, failure=why, kind="rollback")
        if failed is not None:
            self.retry()
        return outcome
