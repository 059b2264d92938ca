"""Health watched after the swap: every live process with a health check is asked every
``[deploy] probation_interval`` seconds for as long as it runs: the web process's ([app.ready] http, on its
private probe socket) and each instance of a process type with ``[processes.NAME.ready] http`` or ``command``.

``probation_failures`` failures in a row of one process:

- within probation (a release that replaced another, for ``[deploy] probation`` seconds): ``unhealthy`` is
  told, and the whole release goes back to the one before it, as for a crash within probation;
- after it: ``report`` is told (``/status`` ``health``, ``supervisor_app_healthy``, an ``unhealthy``
  notification) and, with ``[deploy] restart_unhealthy``, that process type is restarted through its gate.
  The first answer that passes again is reported too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import aiohttp

from .failure import Failure
from .process.child import Child
from .process.readiness import Probe, probe_once
from .process.web import Web
from .process.workers import Workers

log = logging.getLogger("supervisor.health")


@dataclass(frozen=True)
class Watched:
    """One live process whose health check is asked."""

    name: str  # "web", or its process type's
    child: Child
    probe: Probe
    in_probation: bool  # a failure now is the release's: it goes back


class Health:
    def __init__(self, web: Web, failures: int = 3, interval: float = 2.0,
                 probation: Callable[[], float] = lambda: 30.0, workers: Workers | None = None) -> None:
        self.web = web
        self.workers = workers
        self.failures, self.interval = failures, interval  # replaced on SIGHUP
        self.probation = probation  # [deploy] probation, as the road has it now
        self.unhealthy: Callable[[Failure], None] = lambda _why: None  # within probation: the release goes back
        self.report: Callable[[str, Failure | None], None] = lambda _name, _why: None  # after: unhealthy, or well
        self.problems: dict[str, Failure] = {}  # what each process type's check says now, when it keeps failing
        self._failed: dict[Child, int] = {}  # failures in a row, per process

    @property
    def problem(self) -> Failure | None:
        return next(iter(self.problems.values()), None)

    async def run(self) -> None:
        """Forever (a task of the supervisor's): one check of each watched process per interval."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                await asyncio.sleep(self.interval)  # the pace of the checks, not a synchronisation
                watched = list(self.watched())
                self._failed = {w.child: self._failed.get(w.child, 0) for w in watched}  # gone ones forgotten
                for name in set(self.problems) - {w.name for w in watched}:
                    self._set(name, None)  # nothing of that name runs (or is checked) any more
                answers = await asyncio.gather(*(probe_once(w.probe, session) for w in watched))
                for w, why in zip(watched, answers):
                    if w.child.returncode is None:
                        self.judge(w, why)

    def watched(self) -> Iterator[Watched]:
        now = time.monotonic()
        live = self.web.live
        if live is not None and live.alive and live.probe is not None:
            yield Watched("web", live.child, live.probe,
                          live.previous is not None and now - live.live_since < self.probation())
        if self.workers is not None:
            for instance in self.workers.instances.values():
                if instance.probe is not None and instance.alive:
                    yield Watched(instance.spec.name, instance.child, instance.probe,
                                  now < self.workers.probation_until)

    def judge(self, w: Watched, why: str | None) -> None:
        """One answer of ``w``'s check (``why`` None: it passed)."""
        if why is None:
            self._failed[w.child] = 0
            self._set(w.name, None)
            return
        self._failed[w.child] = failed = self._failed.get(w.child, 0) + 1
        if failed < self.failures:
            return
        what = f"{w.name}: health check failed {failed} times in a row{' within probation' if w.in_probation else ''}"
        if w.in_probation:
            if failed == self.failures:  # told once; the release goes back
                self.unhealthy(Failure.of(f"{what}: {why}", w.child))
        elif w.name not in self.problems:
            self._set(w.name, Failure.of(f"{what}: {why}", w.child))

    def _set(self, name: str, problem: Failure | None) -> None:
        if (problem is None) == (name not in self.problems):
            return
        if problem is None:
            del self.problems[name]
            log.info("%s: health check passes again", name)
        else:
            self.problems[name] = problem
            log.warning("the live release is unhealthy: %s", problem)
        self.report(name, problem)
