"""The one road to a running release: every start, deploy, restart, rollback and recovery takes it.

:meth:`Road.go` reads like the steps it takes:

1. write the intent (kind, target, fallback) in the :class:`~supervisor.ledger.Ledger`;
2. prepare the target when it serves for the first time: ``before_restart`` in a
   fresh folder, seal it, the release task (once per release);
3. the gate: the web process, then every process type, each ready or none;
4. live: the target is the current release, recorded good (at once, or when its
   probation has passed);
5. or, on any failure: the caller's undo (the work tree goes back), then the
   fallback serves again, as it was.

The road is the one owner of the current release (:attr:`Road.current`): what
serves, or, crashed, what is to be started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterator

from .built import Built
from .releases.builder import Builder
from .config import ProcSpec, procfile_types
from .failure import Failure
from .ledger import Ledger, Ref
from .marks import Marks
from .ops.history import History
from .ops.record import Phases
from .prepare import Preparation
from .process.web import Web
from .process.workers import Workers

log = logging.getLogger("supervisor.deploy")

Undo = Callable[[Failure], Awaitable[None]]  # called with why the attempt failed, before the fallback starts


@dataclass(frozen=True)
class Attempt:
    kind: str  # deploy, restart, rollback, start, config (what history and notifications call it)
    target: Built
    fallback: Built | None  # what serves if the target does not (None: nothing to go back to)
    prepare: bool = True  # a release serving for the first time runs its preparation; a kept one never
    probation: bool = False  # a crash within [deploy] probation of going live sends it back to the fallback


class Road:
    def __init__(self, web: Web, workers: Workers, builder: Builder, ledger: Ledger,
                 preparation: Preparation, *, marks: Marks, history: History | None = None,
                 processes: dict[str, ProcSpec] | None = None, probation: float = 30.0) -> None:
        self.web = web
        self.workers = workers
        self.builder = builder
        self.ledger = ledger
        self.preparation = preparation
        self.marks = marks
        self.history = history
        self.processes = dict(processes or {})  # [processes.NAME]; replaced whole on SIGHUP
        self.probation = probation
        self.current: Built | None = None
        self.in_use: Callable[[], list[Built]] = lambda: []  # releases something still runs in (a scheduled job)
        self._promotion: asyncio.TimerHandle | None = None

    async def go(self, attempt: Attempt, phases: Phases, undo: Undo | None = None) -> Failure | None:
        """Put ``attempt.target`` live through every gate; None when it serves, else why not (and the
        fallback serves again)."""
        target, fallback = attempt.target, attempt.fallback
        self.ledger.begin(attempt.kind, Ref.of(target), Ref.of(fallback) if fallback else None)
        why = await self._prepare(attempt, phases)
        if why is None:
            self.ledger.phase("gate")
            why = await self._gate(target, fallback, attempt.probation, phases)
        if why is None:
            self._went_live(target, attempt.probation)
            return None
        if undo is not None:
            await undo(why)
        if fallback is not None:
            await self._fall_back(fallback, phases)
        self.ledger.end()
        return why

    async def _prepare(self, attempt: Attempt, phases: Phases) -> Failure | None:
        """before_restart in a fresh folder (in place: in a new release), then sealed; the release task once."""
        built, ref = attempt.target, Ref.of(attempt.target)
        new = attempt.prepare and not self.ledger.is_prepared(ref)
        if self.preparation.before_restart and (built.fresh or (new and self.builder.mode == "in-place")):
            with phases("before_restart"):
                why = await self.preparation.run_before_restart(built)
            if why is not None:
                self.builder.discard(built)
                return why
        self.builder.seal(built)
        if not new:
            return None
        if self.preparation.release_task(built):
            self.ledger.phase("release")
            with phases("release"):
                why = await self.preparation.run_release_task(built)
            if why is not None:
                return why
        self.ledger.prepared_ok(ref)
        return None

    async def _gate(self, built: Built, fallback: Built | None, probation: bool, phases: Phases) -> Failure | None:
        """The web process, then every process type, to ``built``; None when all are ready. Process types
        are gated only when something can go back (at start they are retried with backoff instead)."""
        why = await self.web.start(built, previous=fallback if probation else None, phases=phases)
        if why is not None:
            return why
        types = self.types(built)
        with phases("workers") if types else contextlib.nullcontext():
            why = await self.workers.replace(built, types, probation=self.probation if probation else 0,
                                             gate=fallback is not None)
        if why is not None:
            log.warning("release %s: %s; the web process goes back too", built.commit[:12], why)
        return why

    async def _fall_back(self, fallback: Built, phases: Phases) -> None:
        """After a failed attempt (and its undo): the fallback serves, web process and process types."""
        if self.builder.mode == "in-place":  # its Procfile as the tree holds it now that it is back
            fallback = dataclasses.replace(await self.builder.of_commit(fallback.commit, phases, None),
                                           config=fallback.config)
        live = self.web.live
        if live is None or not live.alive or live.built != fallback:
            with phases("fallback"):
                why = await self.web.start(fallback)
            if why is not None:
                log.error("the fallback release %s did not come back: %s", fallback.commit[:12], why)
                return  # nothing live: the worker schedules a recovery
        self.current = fallback
        if self.types(fallback) and not self.workers.instances:  # nothing ran before (start-up)
            await self.start_workers(fallback)

    async def start_workers(self, built: Built) -> None:
        why = await self.workers.replace(built, self.types(built))
        if why is not None:
            log.error("the process types of %s did not come back: %s", built.commit[:12], why)

    def _went_live(self, built: Built, probation: bool) -> None:
        self.current = built
        if self.history and not built.dirty:  # a rollback goes to commits, never to a hand edit
            self.history.record_release(built.commit, built.config)
        self.builder.went_live(built, [self.previous_release(), *self.in_use()])
        good = not probation or self.probation <= 0
        self.ledger.went_live(Ref.of(built), good=good)
        if self._promotion is not None:
            self._promotion.cancel()
            self._promotion = None
        if not good:
            self._promotion = asyncio.get_running_loop().call_later(self.probation, self._promote, built)

    def _promote(self, built: Built) -> None:
        """Probation passed: ``built`` is the last good release, the fallback from now on."""
        self._promotion = None
        live = self.web.live
        if self.current == built and live is not None and live.alive:
            self.ledger.went_live(Ref.of(built), good=True)

    # -- what a rollback would go to ------------------------------------------------------------
    def good_releases(self) -> Iterator[tuple[str, str]]:
        """(commit, config vars digest) of the releases that went live and passed their checks, newest first."""
        return self.history.good_releases() if self.history else iter(())

    def rollback_target(self) -> tuple[str, str] | None:
        """The newest good release that is not the running one: its commit and config vars digest (a config
        change is a release of its own, so the release before it may be the same commit)."""
        current = (self.current.commit, self.current.config) if self.current else ("", "")
        return next((r for r in self.good_releases() if r != current and r[0] not in self.marks), None)

    def config_of(self, commit: str) -> str:
        """The config vars a commit last went live with ("" when it never went live with any)."""
        return next((config for c, config in self.good_releases() if c == commit), "")

    def previous_release(self) -> Built | None:
        """The kept release a rollback would start (None in place, or when there is none)."""
        target = self.rollback_target()
        return self.builder.kept(target[0]) if target else None

    def types(self, built: Built) -> list[ProcSpec]:
        return procfile_types(self.processes, built.procfile)

    def close(self) -> None:
        if self._promotion is not None:
            self._promotion.cancel()
