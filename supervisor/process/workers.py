"""The process types besides the web process: workers, schedulers, consumers ([processes.NAME], Procfile).

:meth:`Workers.replace` moves every process type to one release, all or
nothing: the new instances of ``overlap`` types start first and must each pass
their readiness (min_uptime, ``READY=1``) while the old ones still run; then
each stop-first type (``overlap = false``, a singleton such as a scheduler) has
its old instances stopped before its new ones start, so two never run at once.
If any new instance fails, every type is put back as it was (the new instances
stopped, stop-first types started again from their old release) and the caller
hears why, to roll the web process back too.

An instance that exits on its own is restarted alone, after a backoff; within
``probation`` of a release going live it is reported instead (``on_early_exit``):
the whole release was never good. Each instance is a :class:`Child` (own
process group, stop signal, timeout, SIGKILL, reaped, under the guard) whose
output lines are labelled ``NAME[pid]``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from ..backoff import Backoff
from ..built import Built
from ..config import ProcSpec
from ..failure import Failure
from .child import Child, Spec, describe_exit
from .guard import Guard
from .readiness import Gate, Probe, start_ready

log = logging.getLogger("supervisor.workers")


@dataclass
class Instance:
    spec: ProcSpec
    index: int
    built: Built
    child: Child
    restarts: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    probe: Probe | None = None  # its health check ([processes.NAME.ready] http or command), watched by Health

    @property
    def alive(self) -> bool:
        return self.child.returncode is None

    def facts(self) -> dict[str, object]:
        return process_facts(self.spec.name, self.index, self.child, self.built, self.restarts)


def process_facts(name: str, index: int, child: Child, built: Built, restarts: int) -> dict[str, object]:
    """One process instance as /status lists it (the web process's too)."""
    alive = child.returncode is None
    return {"name": name, "index": index, "pid": child.pid if alive else None, "commit": built.commit,
            "release": built.id, "state": "running" if alive else "crashed", "restarts": restarts,
            "uptime": round(child.uptime, 3) if alive else 0.0}


class Workers:
    """Owns every instance of every process type; one change at a time (:attr:`_lock`)."""

    def __init__(self, guard: Guard | None = None, on_line: Callable[[str, Child, str], None] | None = None,
                 env: Callable[[Built, ProcSpec], Mapping[str, str]] | None = None,
                 unset: frozenset[str] = frozenset()) -> None:
        self.guard = guard
        self.on_line = on_line
        self.env = env or (lambda built, spec: built.environ(os.environ.get("PATH", os.defpath)))
        self.unset = unset
        self.instances: dict[tuple[str, int], Instance] = {}
        self.restarts: dict[str, int] = {}  # crash restarts per process type (a metric)
        self.probation_until = 0.0  # a release went live: an exit before this is the release's fault
        self.on_early_exit: Callable[[Failure], None] | None = None
        self._lock = asyncio.Lock()
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # watches and restarts, kept so none is collected mid-way

    def listing(self) -> list[dict[str, object]]:
        return [i.facts() for _, i in sorted(self.instances.items())]

    # -- starting one instance ------------------------------------------------------------
    async def _start(self, spec: ProcSpec, index: int, built: Built, gate: bool
                     ) -> tuple[Instance | None, Failure | None]:
        """Start one instance; with ``gate``, wait for its readiness. (instance, None) or (None, why)."""
        env = {**self.env(built, spec), **spec.env, "SUPERVISOR_PROCESS": spec.name,
               "SUPERVISOR_PROCESS_INDEX": str(index)}
        child_spec = Spec(spec.command, built.root / spec.subdir, env, spec.stop_signal, spec.stop_timeout,
                          unset=self.unset)
        label, ready = spec.name, spec.ready
        probe = (Probe(url=ready.http) if ready.http else
                 Probe(command=Spec(tuple(ready.command), child_spec.cwd, env, unset=self.unset)) if ready.command
                 else None)
        try:
            started = await start_ready(
                child_spec, Gate(ready.min_uptime, ready.timeout, ready.notify, probe) if gate else None,
                where=f"{spec.name}[{index}] of {built.commit[:12]}", label=label, guard=self.guard,
                on_line=(lambda child, line: self.on_line(label, child, line)) if self.on_line else None)
        except OSError as exc:
            return None, Failure(f"cannot start {spec.command[0]}: {exc.strerror or exc}", where=spec.name)
        if isinstance(started, Failure):
            return None, started
        instance = Instance(spec, index, built, started, probe=probe)
        self._keep(asyncio.create_task(self._watch(instance), name=f"watch-{spec.name}-{index}"))
        return instance, None

    async def _stop(self, instances: list[Instance]) -> None:
        for i in instances:
            i.child.stopping = True
        codes = await asyncio.gather(*(i.child.stop() for i in instances))
        for i, code in zip(instances, codes):
            log.info("%s[%d] stopped: %s", i.spec.name, i.child.pid, describe_exit(code))

    # -- moving every type to one release ---------------------------------------------------
    async def replace(self, built: Built, types: list[ProcSpec], only: str | None = None,
                      probation: float = 0.0, gate: bool = True) -> Failure | None:
        """Every process type (or ``only`` that one) to ``built``; None when all are ready, else why
        (and everything as it was). Without ``gate`` (nothing ran before, so nothing to go back to),
        instances are not waited for: one that fails is restarted with backoff like any crash."""
        async with self._lock:
            if only is not None:
                types = [t for t in types if t.name == only]
            wanted = {t.name for t in types}
            old = {k: i for k, i in self.instances.items() if only is None or k[0] == only}
            started: list[Instance] = []
            restored: list[tuple[ProcSpec, int, Built]] = []  # stop-first instances stopped, to start on failure
            # New beside old, every instance of every overlap type gated at once: they are independent, and
            # one after another 100 types took 100 times min_uptime.
            why = await self._start_all([t for t in types if t.overlap], built, started, gate)
            stop_first = [t for t in types if not t.overlap]
            if why is None and stop_first:
                previous = [i for k, i in old.items() if k[0] in {t.name for t in stop_first}]
                await self._stop(previous)  # never two of one at once
                restored += [(i.spec, i.index, i.built) for i in previous]
                why = await self._start_all(stop_first, built, started, gate)
            if why is not None:
                await self._stop(started)
                for spec, index, was in restored:  # put back what was stopped for a stop-first type
                    instance, again = await self._start(spec, index, was, gate=False)
                    if instance is not None:
                        self.instances[(spec.name, index)] = instance
                    else:
                        log.error("%s[%d] could not be started again: %s", spec.name, index, again)
                return why
            await self._stop([i for k, i in old.items()
                              if k[0] in {t.name for t in types if t.overlap} or k[0] not in wanted])
            for k in old:
                self.instances.pop(k, None)
            for instance in started:
                self.instances[(instance.spec.name, instance.index)] = instance
            if only is None:  # a release's own probation (none: a rollback, a start), not the one before's
                self.probation_until = time.monotonic() + probation
            return None

    async def _start_all(self, types: list[ProcSpec], built: Built, started: list[Instance], gate: bool
                         ) -> Failure | None:
        """Every instance of ``types`` started (and gated) together; the ones that came up join ``started``.
        The first failure, in declared order; without ``gate``, a failure is logged and the rest run."""
        wanted = [(spec, index) for spec in types for index in range(spec.count)]
        results = await asyncio.gather(*(self._start(spec, index, built, gate=gate) for spec, index in wanted))
        first: Failure | None = None
        for (spec, index), (instance, why) in zip(wanted, results):
            if instance is not None:
                started.append(instance)
                log.info("%s[%d] pid %d %s (%s)", spec.name, index, instance.child.pid, "ready" if gate else "started",
                         built.commit[:12])
            elif not gate:
                log.error("%s; the other process types run without it", why)
            elif first is None:
                first = why
        return first

    # -- crashes ------------------------------------------------------------------------------
    async def _watch(self, instance: Instance) -> None:
        code = await instance.child.wait()
        if instance.child.stopping or self.instances.get((instance.spec.name, instance.index)) is not instance:
            return
        why = Failure.of(describe_exit(code), instance.child, where=f"{instance.spec.name}[{instance.index}]")
        if time.monotonic() < self.probation_until and self.on_early_exit is not None:
            log.warning("%s within probation", why)
            self.on_early_exit(why)
            return
        instance.backoff.observe_uptime(instance.child.uptime)
        delay = instance.backoff.next()
        log.warning("%s[%d] %s; restarting in %gs", instance.spec.name, instance.child.pid, describe_exit(code),
                    delay)
        self._later(delay, instance)

    def _keep(self, task: "asyncio.Future[None]") -> None:
        self._tasks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]

    def _later(self, delay: float, dead: Instance) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            self._keep(asyncio.ensure_future(self._restart(dead)))

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    async def _restart(self, dead: Instance) -> None:
        async with self._lock:
            key = (dead.spec.name, dead.index)
            if self.instances.get(key) is not dead:
                return  # replaced or stopped meanwhile
            await dead.child.stop()  # reap what it left
            instance, why = await self._start(dead.spec, dead.index, dead.built, gate=False)
            if instance is None:
                delay = dead.backoff.next()
                log.error("%s; trying again in %gs", why, delay)
                self._later(delay, dead)
                return
            instance.restarts, instance.backoff = dead.restarts + 1, dead.backoff
            self.restarts[dead.spec.name] = self.restarts.get(dead.spec.name, 0) + 1
            self.instances[key] = instance

    async def stop(self) -> None:
        """Stop every instance (shutdown)."""
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        async with self._lock:
            await self._stop(list(self.instances.values()))
            self.instances.clear()
