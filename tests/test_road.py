"""The road's decisions, with fakes: no processes, no git. What is prepared, when; what the ledger says;
what serves after a failure."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from supervisor.built import Built
from supervisor.failure import Failure
from supervisor.ledger import Ledger, Ref
from supervisor.marks import Marks
from supervisor.ops.record import Phases
from supervisor.process.workers import Workers
from supervisor.road import Attempt, Road

from .conftest import eventually

OLD, NEW = Built("a" * 40, Path("/r/1"), "1"), Built("b" * 40, Path("/r/2"), "2", fresh=True)


class FakeWeb:
    """The web process: ``fail`` names the commits whose start fails its gate."""

    def __init__(self, events: list[str], fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.events, self.fail, self.live = events, fail, None

    async def start(self, built: Built, previous: Built | None = None, phases: Phases | None = None
                    ) -> Failure | None:
        self.events.append(f"start {built.id}")
        if built.commit in self.fail:
            return Failure("not ready within 1s")
        self.live = SimpleNamespace(built=built, alive=True, probe=None)
        return None


class FakePreparation:
    def __init__(self, events: list[str], fails: bool = False) -> None:
        self.events, self.fails, self.before_restart = events, fails, [["true"]]

    def release_task(self, built: Built) -> list[str]:
        return ["migrate"]

    async def run_before_restart(self, built: Built) -> Failure | None:
        self.events.append(f"before_restart {built.id}")
        return None

    async def run_release_task(self, built: Built) -> Failure | None:
        self.events.append(f"release {built.id}")
        return Failure("release task exited with status 3") if self.fails else None


def road(events: list[str], *, fail: set[str] = frozenset(), task_fails: bool = False,  # type: ignore[assignment]
         probation: float = 0) -> Road:
    builder: Any = SimpleNamespace(mode="snapshot", seal=lambda b: events.append(f"seal {b.id}"),
                                   discard=lambda b: events.append(f"discard {b.id}"),
                                   went_live=lambda b, protect: None, kept=lambda ref: None)
    return Road(FakeWeb(events, fail), Workers(), builder, Ledger(None), FakePreparation(events, task_fails),  # type: ignore[arg-type]
                marks=Marks(), probation=probation)


async def test_a_new_release_is_prepared_once_and_a_kept_one_never() -> None:
    events: list[str] = []
    r = road(events)
    assert await r.go(Attempt("deploy", NEW, OLD), Phases()) is None
    assert events == ["before_restart 2", "seal 2", "release 2", "start 2"]
    assert r.current == NEW and r.ledger.good == Ref.of(NEW) and r.ledger.intent is None
    events.clear()
    kept = Built(NEW.commit, NEW.root, NEW.id)  # the same release, kept: no folder to fill, prepared already
    assert await r.go(Attempt("restart", kept, kept), Phases()) is None
    assert events == ["seal 2", "start 2"]
    events.clear()
    other = Built("c" * 40, Path("/r/3"), "3")
    assert await r.go(Attempt("rollback", other, kept, prepare=False), Phases()) is None
    assert events == ["seal 3", "start 3"]  # a rollback target is never prepared, even if it never was


async def test_a_failed_gate_undoes_then_the_fallback_serves_and_nothing_is_good() -> None:
    events: list[str] = []
    r = road(events, fail={NEW.commit})
    r.ledger.went_live(Ref.of(OLD), good=True)

    async def undo(why: Failure) -> None:
        events.append(f"undo: {why}")

    why = await r.go(Attempt("deploy", NEW, OLD), Phases(), undo)
    assert str(why) == "not ready within 1s"
    assert events[-3:] == ["start 2", "undo: not ready within 1s", "start 1"]
    assert r.current == OLD and r.ledger.good == Ref.of(OLD) and r.ledger.intent is None
    assert r.ledger.is_prepared(Ref.of(NEW))  # its preparation did succeed: a retry does not migrate again


async def test_a_failed_release_task_never_reaches_the_gate() -> None:
    events: list[str] = []
    r = road(events, task_fails=True)
    why = await r.go(Attempt("deploy", NEW, OLD), Phases())
    assert why is not None and "release task" in str(why)
    assert "start 2" not in events and not r.ledger.is_prepared(Ref.of(NEW))
    assert events[-1] == "start 1"  # nothing was live: the fallback starts


async def test_probation_keeps_the_intent_until_it_has_passed() -> None:
    events: list[str] = []
    r = road(events, probation=0.05)
    r.ledger.went_live(Ref.of(OLD), good=True)
    assert await r.go(Attempt("deploy", NEW, OLD, probation=True), Phases()) is None
    assert r.ledger.good == Ref.of(OLD) and r.ledger.intent is not None and r.ledger.intent["phase"] == "probation"
    await eventually(lambda: r.ledger.good == Ref.of(NEW), 5, "the promotion after probation")
    assert r.ledger.intent is None
    r.close()
