"""Start-up is a deploy of the last good release.

The ledger names the release that last went live and passed probation: it
serves as it is. What else the work tree holds (a deploy a stop interrupted, a
hand pull while pushcd was down) is a new attempt through every gate, with the
last good release as its fallback. With no good release yet (a first start),
a failure is recorded once and retried with backoff while pushcd keeps
answering its API.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

from .built import Built
from .releases.builder import BuildFailed
from .failure import Failure
from .ledger import Ref
from .ops.record import Phases
from .road import Attempt
from .work import Result, Work

log = logging.getLogger("supervisor.deploy")


class Startup:
    def __init__(self, work: Work, retry: Callable[[], None]) -> None:
        self.work = work
        self.retry = retry  # schedules the next try, with backoff
        self._told = False  # a failing start is recorded once, then retried quietly

    async def run(self, trigger: str) -> Result:
        w, phases, ledger = self.work, Phases(), self.work.road.ledger
        if ledger.intent is not None:
            stopped = ledger.intent
            log.warning("the last run stopped during a %s of %s (phase %s); deciding again from the work tree",
                        stopped.get("kind"), str((stopped.get("target") or {}).get("commit", "?"))[:12],
                        stopped.get("phase"))
            ledger.end()
        good = self._last_good()
        try:
            target: Built | None = w.new_release(await w.road.builder.of_work_tree(phases, good))
            why = Failure("")
        except BuildFailed as exc:
            target, why = None, Failure(str(exc))
        if target is not None and good is not None and Ref.of(target) == Ref.of(good):
            return await self._start(Attempt("start", good, None, prepare=False), trigger, phases)
        if target is not None and good is not None and not target.dirty and target.commit in w.marks:
            target, why = None, Failure(f"{target.commit[:12]} is marked bad ({w.marks.why(target.commit)})")
        if target is None and good is not None:  # the work tree holds nothing startable: the good release
            log.warning("the work tree's release cannot start (%s); starting the last good release %s", why,
                        good.commit[:12])
            await w.moves.follow(good.commit, phases)
            return await self._start(Attempt("start", good, None, prepare=False), trigger, phases)
        if target is None:
            return self._failed(why, trigger, phases)
        return await self._start(Attempt("start", target, good, probation=good is not None), trigger, phases)

    def _last_good(self) -> Built | None:
        """The release the ledger says last went live and passed probation, if it can start as it is."""
        w = self.work
        good = w.road.ledger.good
        if good is None:
            return None
        if not w.config_vars.knows(good.config):
            log.error("the last good release ran with config vars %s, which are no longer kept", good.config)
            return None
        if w.road.builder.mode == "in-place":
            return Built(good.commit, w.tree.path, config=good.config)
        kept = w.road.builder.kept(good.id)
        # A folder is shared by the commits with its content (a revert): it starts as the commit that was good.
        return dataclasses.replace(kept, commit=good.commit, config=good.config) if kept is not None else None

    async def _start(self, attempt: Attempt, trigger: str, phases: Phases) -> Result:
        w, target, fallback = self.work, attempt.target, attempt.fallback
        why = await w.road.go(attempt, phases, w.undo(target, fallback))
        if why is not None:
            if fallback is not None and w.road.current == fallback:
                return w.finish("failed", f"{target.commit[:12]} did not come up, the last good release "
                                          f"{fallback.commit[:12]} serves: {why}", target.commit, trigger, phases,
                                fallback.commit, failure=why, kind="start")
            return self._failed(why, trigger, phases, target.commit)
        self._told = False
        if not {"before_restart", "release"} & phases.done.keys():
            return None  # started through its gates with nothing to prepare: not worth a row
        return w.finish("ok", f"started {target.commit[:12]}" + (
            f" (the last good release {fallback.commit[:12]} stood by)" if fallback else ""), target.commit,
            trigger, phases, fallback.commit if fallback else target.commit, kind="start")

    def _failed(self, why: Failure, trigger: str, phases: Phases, commit: str = "") -> Result:
        commit = commit or self.work.deployed
        log.error("app failed to start at %s: %s", commit[:12], why)
        self.retry()
        if self._told:
            return None
        self._told = True
        return self.work.finish("failed", f"start of {commit[:12]} failed, retrying with backoff: {why}", commit,
                                trigger, phases, commit, failure=why, kind="start")
