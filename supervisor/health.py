"""The live web process's health, watched after the swap: its health check ([app.ready] http, on its private
probe socket) is asked every ``[deploy] probation_interval`` seconds for as long as it runs.

``probation_failures`` failures in a row:

- within probation (a release that replaced another, for ``[deploy] probation`` seconds): ``unhealthy`` is
  told, and the release goes back to the one before it, as for a crash within probation;
- after it: ``report`` is told (``/status`` ``health``, ``supervisor_app_healthy``, an ``unhealthy``
  notification) and, with ``[deploy] restart_unhealthy``, the web process is restarted through its gate.
  The first answer that passes again is reported too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import aiohttp

from .failure import Failure
from .process.readiness import probe_once
from .process.web import Web, WebProcess

log = logging.getLogger("supervisor.health")


class Health:
    def __init__(self, web: Web, failures: int = 3, interval: float = 2.0,
                 probation: Callable[[], float] = lambda: 30.0) -> None:
        self.web = web
        self.failures, self.interval = failures, interval  # replaced on SIGHUP
        self.probation = probation  # [deploy] probation, as the road has it now
        self.unhealthy: Callable[[Failure], None] = lambda _why: None  # within probation: the release goes back
        self.report: Callable[[Failure | None], None] = lambda _why: None  # after it: unhealthy, or well again
        self.problem: Failure | None = None  # what the live process's check says now, when it keeps failing
        self._watched: WebProcess | None = None
        self._failed = 0

    async def run(self) -> None:
        """Forever (a task of the supervisor's): one check of the live web process per interval."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                await asyncio.sleep(self.interval)  # the pace of the checks, not a synchronisation
                live = self.web.live
                if live is None or not live.alive or live.probe is None:
                    continue
                if live is not self._watched:  # a new process: its own count, and no problem yet
                    self._watched, self._failed = live, 0
                    self._set(None)
                self.judge(live, await probe_once(live.probe, session))

    def judge(self, live: WebProcess, why: str | None) -> None:
        """One answer of ``live``'s check (``why`` None: it passed)."""
        if why is None:
            self._failed = 0
            self._set(None)
            return
        self._failed += 1
        if self._failed < self.failures:
            return
        in_probation = live.previous is not None and time.monotonic() - live.live_since < self.probation()
        what = f"health check failed {self._failed} times in a row{' within probation' if in_probation else ''}"
        if in_probation:
            self._watched = None  # told once; the release goes back
            self.unhealthy(Failure.of(f"{what}: {why}", live.child))
        elif self.problem is None:
            self._set(Failure.of(f"{what}: {why}", live.child))

    def _set(self, problem: Failure | None) -> None:
        if (problem is None) == (self.problem is None):
            return
        self.problem = problem
        if problem is None:
            log.info("health check passes again")
        else:
            log.warning("the live release is unhealthy: %s", problem)
        self.report(problem)
