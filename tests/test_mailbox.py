"""The job mailbox and the worker loop, with fakes: no processes, no git, no sockets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from supervisor.releases.builder import Built, InPlace
from supervisor.deploy import Deployer, State
from supervisor.mailbox import Kind, Mailbox
from supervisor.ledger import Ledger
from supervisor.marks import Marks
from supervisor.ops.record import LastDeploy, Phases, Recorder
from supervisor.prepare import Preparation
from supervisor.failure import Failure
from supervisor.process.workers import Workers
from supervisor.road import Road

from .conftest import eventually


async def test_same_kind_coalesces_and_every_waiter_hears_the_one_result() -> None:
    box = Mailbox()
    waiters = [box.put(Kind.DEPLOY, t, wait=True) for t in ("webhook", "manual", "poll")]
    assert box.queued == ["webhook"]
    job = await box.take()
    assert job.trigger == "webhook" and len(job.waiters) == 3 and box.queued == []
    job.answer("ok")
    assert [await w for w in waiters] == ["ok", "ok", "ok"]


async def test_precedence_is_the_declared_order_not_arrival() -> None:
    box = Mailbox()
    for kind in (Kind.RESTART, Kind.RECOVER, Kind.CONFIG, Kind.DEPLOY, Kind.ROLLBACK):
        box.put(kind, kind.value)
    taken = [(await box.take()).kind for _ in range(5)]
    assert taken == [Kind.ROLLBACK, Kind.DEPLOY, Kind.CONFIG, Kind.RECOVER, Kind.RESTART] == list(Kind)


async def test_take_waits_for_a_put_made_while_it_waits() -> None:
    box = Mailbox()
    taker = asyncio.ensure_future(box.take())
    await asyncio.sleep(0)
    assert not taker.done()
    box.put(Kind.RESTART, "watch")
    assert (await asyncio.wait_for(taker, 5)).kind is Kind.RESTART


async def test_put_later_arrives_and_close_answers_everyone() -> None:
    box = Mailbox()
    box.put_later(0.01, Kind.RECOVER, "crash")
    assert (await asyncio.wait_for(box.take(), 5)).trigger == "crash"
    waiting = box.put(Kind.ROLLBACK, "rollback", wait=True)
    box.put_later(0.01, Kind.DEPLOY, "retry")
    box.close()
    assert await waiting is None and box.queued == []
    assert await box.put(Kind.DEPLOY, "late", wait=True) is None  # after close: answered at once
    await asyncio.sleep(0.05)  # the cancelled timer must not bring the retry back
    assert box.queued == []


# -- the worker loop, with fake parts ------------------------------------------------

class FakeGit:
    async def run(self, fn: Any, *args: Any) -> Any:
        return fn(*args)


def fake_child(alive: bool) -> SimpleNamespace:
    return SimpleNamespace(returncode=None if alive else 1, uptime=0.1, tail=["boom"], telling=None, pid=1)


class FakeWeb:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.live: Any = SimpleNamespace(alive=True, child=fake_child(True), previous=None, commit="c" * 40,
                                         live_since=0.0)
        self.on_exit: Any = None

    async def start(self, built: Built, previous: Built | None = None, phases: Phases | None = None
                    ) -> Failure | None:
        self.events.append(f"start {built.commit[:1]}")
        self.live = SimpleNamespace(alive=True, child=fake_child(True), previous=previous, commit=built.commit,
                                    built=built, live_since=0.0)
        return None

    def die(self) -> None:
        self.live.alive = False
        self.live.child = fake_child(False)
        self.on_exit(self.live)


def worker(events: list[str]) -> tuple[Deployer, FakeWeb]:
    web = FakeWeb(events)
    tree = SimpleNamespace(forget_caches=lambda: None, check_branch=lambda: None, head=lambda: "c" * 40,
                           path=Path("."))
    git = FakeGit()
    road = Road(web, Workers(), InPlace(tree, git), Ledger(None), Preparation(web),  # type: ignore[arg-type]
                marks=Marks(), probation=0)
    d = Deployer(tree, git, road, SimpleNamespace(), Recorder(), on_diverge="refuse")  # type: ignore[arg-type]
    return d, web


async def test_a_rollback_asked_during_a_crash_backoff_is_taken_at_once() -> None:
    """The lost wake-up: a recovery waiting out its backoff used to swallow the wake of a rollback."""
    events: list[str] = []
    d, web = worker(events)
    await d.start()

    async def rollback(trigger: str, _arg: object = None) -> LastDeploy:
        events.append("rollback")
        return LastDeploy("ok", "rolled back", "b" * 40, trigger)

    d.handle_rollback = rollback  # type: ignore[method-assign]
    loop = asyncio.create_task(d.run())
    try:
        events.clear()
        web.die()
        await eventually(lambda: d._recovery_due is not None, 5, "the crash restart to be scheduled")
        assert d.state is State.CRASHED
        result = await asyncio.wait_for(d.request_rollback(), 5)
        assert result is not None and result.result == "ok"
        await eventually(lambda: "start c" in events, 10, "the scheduled restart")
        assert events == ["rollback", "start c"]  # the rollback did not wait for the backoff
        await eventually(lambda: d.state is State.RUNNING, 5, "running again")
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


@pytest.mark.parametrize("outcome", ["ok", "raises"])
async def test_waiters_hear_the_end_of_their_job_and_the_worker_goes_on(outcome: str) -> None:
    events: list[str] = []
    d, _ = worker(events)
    await d.start()

    async def deploy(trigger: str, _arg: object = None) -> LastDeploy:
        events.append(trigger)
        if outcome == "raises" and trigger == "first":
            raise RuntimeError("a bug in a handler")
        return LastDeploy("ok", "deployed", "d" * 40, trigger)

    d.handle_deploy = deploy  # type: ignore[method-assign]
    events.clear()
    loop = asyncio.create_task(d.run())
    try:
        first = await asyncio.wait_for(d.request_deploy("first"), 5)
        assert (first is None) is (outcome == "raises")
        second = await asyncio.wait_for(d.request_deploy("second"), 5)
        assert second is not None and second.trigger == "second" and events == ["first", "second"]
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_shutdown_answers_queued_waiters() -> None:
    d, _ = worker([])
    await d.start()
    gate = asyncio.Event()

    async def slow(trigger: str, _arg: object = None) -> None:
        await gate.wait()

    d.handle_deploy = slow  # type: ignore[method-assign]
    loop = asyncio.create_task(d.run())
    running = d.request_deploy("first")
    await eventually(lambda: d.state is State.DEPLOYING, 5, "the first job to start")
    queued = d.request_rollback()
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    assert await asyncio.wait_for(queued, 5) is None
    assert await asyncio.wait_for(running, 5) is None


async def test_a_recovery_that_keeps_failing_backs_off_instead_of_spinning() -> None:
    events: list[str] = []
    d, web = worker(events)
    await d.start()
    calls = 0

    async def broken(_trigger: str, _arg: object = None) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug in recovery")

    d.handle_recover = broken  # type: ignore[method-assign]
    loop = asyncio.create_task(d.run())
    try:
        web.die()
        # Before: the failed recovery queued the next one at once, thousands a second; now a backoff timer.
        await eventually(lambda: calls >= 1 and d._recovery_due is not None, 5, "a retry scheduled after the error")
        assert calls == 1 and d._recovery_due > time.monotonic() and d.queued == []
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
