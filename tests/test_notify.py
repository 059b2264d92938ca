"""Notifications with no sender running: what the queue does when the receivers are behind."""

from __future__ import annotations

import logging

import pytest

from supervisor.config import Notify
from supervisor.ops import notify
from supervisor.ops.metrics import Metrics
from supervisor.ops.notify import Event, Notifier


async def test_dropped_events_are_summed_up_not_logged_one_by_one(caplog: pytest.LogCaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Hardening #19.7: 10,000 events against a hung receiver logged 11,042 lines, one per dropped event."""
    async def nothing(_sha: str) -> dict[str, str]:
        return {"message": ""}

    metrics = Metrics()
    n = Notifier([Notify(url="http://127.0.0.1:9/hook", events=["deploy_failed"])], metrics, full_name=None,
                 link=None, describe=nothing)  # the sender never runs: the queue only fills
    caplog.set_level(logging.WARNING, "supervisor")
    for i in range(10_000):
        n.send(Event("deploy_failed", f"{i:040d}", "crashed"))
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 1 and "1 dropped" in lines[0], lines  # the first drop is said at once; the rest wait
    clock = [0.0]
    monkeypatch.setattr(notify.time, "monotonic", lambda: clock[0])
    n._said_at = 0.0
    clock[0] = notify.DROPS_SAID_EVERY + 1
    n.send(Event("deploy_failed", "f" * 40, "crashed"))
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 2 and f"{10_000 - notify.QUEUE} dropped in the last" in lines[1], lines
    dropped = metrics.registry.get_sample_value("supervisor_notifications_total", {"kind": "json",
                                                                                  "result": "dropped"})
    assert dropped == 10_000 - notify.QUEUE + 1  # every one counted
