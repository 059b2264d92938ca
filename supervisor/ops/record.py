"""What one job's result leaves behind: a log line, metrics, a history row.

The deploy worker decides; :class:`Recorder` is the one place a result is
written down, so log, metrics, history and ``/status`` always agree, and every
reason passes :func:`~supervisor.ops.redact.redact` on its way.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..failure import Failure
from .history import DeployRecord, History
from .metrics import Metrics
from .notify import Event
from .redact import redact

log = logging.getLogger("supervisor.deploy")


class Phases:
    """Seconds spent in each phase of one deploy: ``with phases("fetch"): ...``."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.done: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.monotonic()
        try:
            yield
        finally:
            self.done[name] = round(time.monotonic() - t, 4)

    def total(self) -> float:
        return time.monotonic() - self.started


def event_of(kind: str, result: str) -> str:
    """The notification a result sends: each kind names itself.

    >>> event_of("deploy", "ok"), event_of("restart", "ok"), event_of("restart", "failed"), event_of("rollback", "ok")
    ('deploy_ok', 'restarted', 'restart_failed', 'rolled_back')
    """
    if kind == "rollback":
        return "rolled_back"
    if kind == "restart":
        return "restarted" if result == "ok" else "restart_failed"
    return "deploy_ok" if result == "ok" else "deploy_failed"


@dataclass
class LastDeploy:
    result: str
    reason: str
    commit: str
    trigger: str = ""
    at: float = field(default_factory=time.time)
    phases: dict[str, float] = field(default_factory=dict)
    kind: str = "deploy"  # deploy, restart, rollback or start (a crash restart is counted, not recorded)

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "result": self.result, "reason": self.reason, "commit": self.commit,
                "trigger": self.trigger, "at": self.at, "phases": self.phases}


class Recorder:
    """Writes down results; holds the last one for ``/status``."""

    def __init__(self, history: History | None = None, metrics: Metrics | None = None,
                 notify: Callable[[Event], None] | None = None) -> None:
        self.history = history
        self.metrics = metrics
        self.notify = notify
        self.last: LastDeploy | None = None
        self.count = 0  # results recorded (ok, refused, failed)

    def finish(self, result: str, reason: str, commit: str, trigger: str, phases: Phases,
               from_commit: str, failure: Failure | None = None, kind: str = "deploy", config: str = ""
               ) -> LastDeploy:
        """``config``: the config vars digest of the release serving now."""
        reason, tail = redact(reason), redact(str(failure) if failure else "")
        failing = redact(failure.failing_line) if failure and failure.failing_line else None
        self.last = LastDeploy(result, reason, commit, trigger, phases=phases.done, kind=kind)
        self.count += 1
        level = logging.INFO if result == "ok" else logging.WARNING
        duration = phases.total()
        log.log(level, "%s %s: %s (%s, trigger %s)", kind, result, reason, commit[:12], trigger,
                extra={"commit": commit, "duration": round(duration, 4), "result": result, "trigger": trigger})
        if self.metrics:
            self.metrics.deploys.labels(result, kind).inc()
            self.metrics.deploy_duration.observe(duration)
        if self.history:
            self.history.record_deploy(DeployRecord(from_commit, commit, trigger, phases.started_wall,
                                                    time.time(), result, reason, tail, phases.done, kind,
                                                    config))
        self.tell(event_of(kind, result), commit, reason, failing, round(duration, 3))
        return self.last

    def tell(self, event: str, commit: str, reason: str, failing: str | None = None,
             duration: float | None = None) -> None:
        """An event for the notifications (crashed, paused, resumed come from the worker directly)."""
        if self.notify is not None:
            self.notify(Event(event, commit, redact(reason), failing, duration))

