"""Health watched through probation: a release that went live and then answers its health check with an
error (or not at all) is as bad as one that crashed there.

While a release is in probation, its web process's health check ([app.ready] http, on its private probe
socket) is asked every ``[deploy] probation_interval`` seconds; ``probation_failures`` failures in a row
are reported (``unhealthy``: a job in the mailbox), and the release goes back to the one before it, as
for a crash within probation, the failing answer and the output tail as the reason.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import aiohttp

from .failure import Failure
from .process.readiness import probe_once
from .process.web import WebProcess


class Health:
    def __init__(self, failures: int = 3, interval: float = 2.0,
                 unhealthy: Callable[[Failure], None] = lambda _why: None) -> None:
        self.failures = failures  # replaced on SIGHUP, with interval
        self.interval = interval
        self.unhealthy = unhealthy  # the deploy worker puts a job in its mailbox
        self._task: asyncio.Task[None] | None = None

    def watch(self, process: WebProcess, until: float) -> None:
        """Watch ``process`` until the monotonic time ``until`` (the end of its probation)."""
        self.stop()
        if process.probe is not None:
            self._task = asyncio.create_task(self._run(process, until), name=f"health-{process.child.pid}")

    async def _run(self, process: WebProcess, until: float) -> None:
        assert process.probe is not None
        failed = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while process.alive and time.monotonic() < until:
                await asyncio.sleep(self.interval)  # the pace of the checks, not a synchronisation
                why = await probe_once(process.probe, session)
                failed = failed + 1 if why else 0
                if why and failed >= self.failures and process.alive:
                    self.unhealthy(Failure.of(f"health check failed {failed} times in a row within probation: "
                                              f"{why}", process.child))
                    return

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
