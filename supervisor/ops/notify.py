"""Telling people: deploy results, crashes, pauses, sent to ``[[notify]]`` receivers.

Off the deploy path: an event is put in a bounded queue and one sender task delivers it, so a
deploy never waits for a receiver, and a slow or dead receiver costs at most the queue.
Each delivery is retried with backoff for a bounded time; a failure is logged and counted
(``supervisor_notifications_total{kind,result}``), never raised.

Kinds:

- ``json``: the event as a JSON object; with ``secret_env`` (or ``secret_file``), signed as GitHub signs its
  webhooks: ``X-Pushcd-Signature-256: sha256=<HMAC-SHA256 of the body, hex>``.
- ``slack``: an incoming-webhook message (``{"text": ...}``).
- ``github``: a commit status on the commit (``POST {api_url}/repos/{owner}/{repo}/statuses/{sha}``),
  so GitHub shows whether that commit is live.

>>> body = payload(Event("deploy_failed", "a" * 40, "rolled back: SyntaxError: x", failing="SyntaxError: x"),
...                "fix the app", "http://127.0.0.1:9001/")
>>> body["event"], body["commit"][:4], body["failing_line"], body["link"]
('deploy_failed', 'aaaa', 'SyntaxError: x', 'http://127.0.0.1:9001/')
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp

from ..config import Notify as Target
from .metrics import Metrics

log = logging.getLogger("supervisor.notify")

QUEUE = 100  # events waiting; more are dropped (and counted)
RETRY_FOR = 120.0  # seconds a delivery is retried for
TIMEOUT = 10.0  # seconds per attempt
DROPS_SAID_EVERY = 60.0  # seconds between two log lines about dropped events (each drop is counted anyway)


@dataclass(frozen=True)
class Event:
    name: str  # one of config.EVENTS
    commit: str
    reason: str
    failing: str | None = None  # the most telling line of a failed release's output
    duration: float | None = None
    at: float = field(default_factory=time.time)


def payload(event: Event, message: str, link: str | None, app: str = "") -> dict[str, Any]:
    return {"app": app, "event": event.name, "commit": event.commit, "message": message, "reason": event.reason,
            "failing_line": event.failing, "duration": event.duration, "at": event.at, "link": link}


def _slack_text(body: dict[str, Any]) -> str:
    mark = {"deploy_ok": ":white_check_mark:", "restarted": ":arrows_counterclockwise:", "resumed": ":arrow_forward:",
            "paused": ":pause_button:"}.get(
        body["event"], ":x:")
    app = f" {body['app']}" if body.get("app") else ""
    text = f"{mark} pushcd{app} {body['event']}: `{body['commit'][:12]}` {body['message']}\n{body['reason']}"
    if body["failing_line"]:
        text += f"\n> {body['failing_line']}"
    return text + (f"\n{body['link']}" if body["link"] else "")


def request_for(target: Target, body: dict[str, Any], full_name: str | None, secret: bytes | None = None,
                token: bytes | None = None) -> tuple[str, bytes, dict[str, str]]:
    """(url, body, headers) of one delivery to ``target``, signed with ``secret`` or authorized by ``token``
    (read from the target's ``*_env`` or ``*_file`` when the config was loaded)."""
    headers = {"Content-Type": "application/json", "User-Agent": "pushcd"}
    if target.kind == "github":
        state = {"deploy_ok": "success", "restarted": "success", "resumed": "success", "paused": "pending"}.get(
            body["event"], "failure")
        description = f"{body['event']}: {body['reason']}"[:140]  # GitHub's limit
        data = json.dumps({"state": state, "context": "pushcd", "description": description,
                           **({"target_url": body["link"]} if body["link"] else {})}).encode()
        headers["Authorization"] = f"Bearer {(token or b'').decode()}"
        headers["Accept"] = "application/vnd.github+json"
        return f"{target.api_url.rstrip('/')}/repos/{full_name}/statuses/{body['commit']}", data, headers
    data = json.dumps({"text": _slack_text(body)} if target.kind == "slack" else body).encode()
    if target.kind == "json" and secret:
        headers["X-Pushcd-Signature-256"] = "sha256=" + hmac.new(secret, data, hashlib.sha256).hexdigest()
    return target.url, data, headers


class Notifier:
    def __init__(self, targets: list[Target], metrics: Metrics, *, full_name: str | None, link: str | None,
                 describe: Callable[[str], Awaitable[dict[str, str]]],
                 secrets: tuple[tuple[bytes | None, bytes | None], ...] = (), app: str = "") -> None:
        self.app = app  # which app the events are about (several pushcds may tell one channel)
        self.configure(targets, secrets)
        self.metrics = metrics
        self.full_name = full_name
        self.link = link
        self.describe = describe
        self.queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE)
        self.retry_for = RETRY_FOR
        self.dropped = 0  # events dropped since the last line that said so
        self._said_at: float | None = None  # when that line was logged (monotonic)

    def configure(self, targets: list[Target], secrets: tuple[tuple[bytes | None, bytes | None], ...]) -> None:
        """The receivers and their (signing secret, token), replaced together (start-up, SIGHUP)."""
        padded = list(secrets) + [(None, None)] * (len(targets) - len(secrets))
        self.targets: list[tuple[Target, bytes | None, bytes | None]] = [(t, *s) for t, s in zip(targets, padded)]

    def send(self, event: Event) -> None:
        """Queue ``event`` for every target that wants it; never blocks, never raises."""
        if not any(event.name in t.events for t, _, _ in self.targets):
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            for t, _, _ in self.targets:
                self.metrics.notifications.labels(t.kind, "dropped").inc()
            self._dropped(event)

    def _dropped(self, event: Event) -> None:
        """A summary line at most every DROPS_SAID_EVERY seconds, not one per event: a hung receiver and a
        burst of events must not flood the log (supervisor_notifications_total{result="dropped"} counts each)."""
        self.dropped += 1
        now = time.monotonic()
        if self._said_at is not None and now - self._said_at < DROPS_SAID_EVERY:
            return
        since = f" in the last {now - self._said_at:.0f}s" if self._said_at is not None else ""
        log.warning("notify: %d events waiting, the receivers are behind; %d dropped%s (the last: %s for %s)",
                    QUEUE, self.dropped, since, event.name, event.commit[:12])
        self.dropped, self._said_at = 0, now

    async def run(self) -> None:
        """The sender: one event at a time, each target in turn."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
            while True:
                event = await self.queue.get()
                try:
                    message = (await self.describe(event.commit))["message"] if event.commit else ""
                except Exception:  # noqa: BLE001 - a message is nice to have, never a reason not to tell
                    message = ""
                body = payload(event, message, self.link, self.app)
                for target, secret, token in self.targets:
                    if event.name in target.events:
                        await self._deliver(session, target, body, secret, token)

    async def _deliver(self, session: aiohttp.ClientSession, target: Target, body: dict[str, Any],
                       secret: bytes | None, token: bytes | None) -> None:
        url, data, headers = request_for(target, body, self.full_name, secret, token)
        deadline = time.monotonic() + self.retry_for
        delay, why = 1.0, ""
        while True:
            try:
                async with session.post(url, data=data, headers=headers) as resp:
                    if resp.status < 300:
                        self.metrics.notifications.labels(target.kind, "sent").inc()
                        return
                    why = f"answered {resp.status}"
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        break  # our request is wrong (a bad token, a wrong URL): retrying will not help
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            if time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)  # a backoff between attempts, not a synchronisation
            delay = min(delay * 2, 30.0)
        self.metrics.notifications.labels(target.kind, "failed").inc()
        log.warning("notify: %s to %s %s failed: %s", body["event"], target.kind, url.split("?")[0], why)
