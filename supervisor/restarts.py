"""Restarts: new processes of the running release (a person asked), or of what the work tree holds
(watched files changed: a hand edit or a hand `git pull`, a new release prepared first)."""

from __future__ import annotations

from typing import Awaitable, Callable

from .releases.builder import BuildFailed
from .ops.record import Phases
from .road import Attempt
from .work import Result, Work


class Restarts:
    def __init__(self, work: Work, start_up: Callable[[str], Awaitable[Result]]) -> None:
        self.work = work
        self.start_up = start_up  # nothing ever started: a restart is start-up again

    async def restart(self, trigger: str, arg: str | None = None) -> Result:
        """Every process, through the same gates; ``arg``: only that process type ("web" or a type's name)."""
        w = self.work
        current = w.road.current
        if current is None:
            return await self.start_up(trigger)
        phases, before = Phases(), w.deployed
        if arg is not None:
            return await self._one(arg, trigger, phases)
        if trigger == "watch":
            try:
                built = w.new_release(await w.road.builder.of_work_tree(phases, current))
            except BuildFailed as exc:
                return w.finish("failed", f"the work tree's release cannot be made, the running release keeps "
                                          f"serving: {exc}", before, trigger, phases, before, kind="restart")
            kind, done = ("deploy", f"{before[:12]}..{built.commit[:12]} pulled by hand") \
                if built.commit != before else ("restart", "restarted after file changes")
            attempt = Attempt(kind, built, current)
        elif w.config_vars.current != current.config:  # config vars set with --no-restart apply now
            kind, done = "config", f"restarted by hand with config vars {w.config_vars.current or '(none)'}"
            attempt = Attempt(kind, w.new_release(current), current, probation=True)
        else:
            kind, done = "restart", "restarted by hand, with the current config"
            attempt = Attempt(kind, current, current, prepare=False)
        why = await w.road.go(attempt, phases)
        if why is None:
            return w.finish("ok", done, w.deployed, trigger, phases, before, kind=kind)
        return w.finish("failed", f"{kind} failed, the running release keeps serving: {why}", attempt.target.commit,
                        trigger, phases, before, failure=why, kind=kind)

    async def _one(self, name: str, trigger: str, phases: Phases) -> Result:
        """`pushcd restart NAME`: one process type of the running release, with its gate."""
        w, current = self.work, self.work.road.current
        assert current is not None
        types = w.road.types(current)
        if name != "web" and name not in {t.name for t in types}:
            return w.finish("refused", f"no process type {name}; the running release has: "
                                       f"{', '.join(['web', *(t.name for t in types)])}", w.deployed, trigger, phases,
                            w.deployed, kind="restart")
        if name == "web":
            why = await w.road.web.start(current, phases=phases)
        else:
            with phases("workers"):
                why = await w.road.workers.replace(current, types, only=name)
        if why is None:
            return w.finish("ok", f"restarted {name} by hand", w.deployed, trigger, phases, w.deployed,
                            kind="restart")
        return w.finish("failed", f"restart of {name} failed, the running instances keep running: {why}",
                        w.deployed, trigger, phases, w.deployed, failure=why, kind="restart")
