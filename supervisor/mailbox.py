"""The request mailbox: one queue, one consumer, nothing lost.

Everything that changes the tree or the live release is a request put here
(from a webhook, the control API, the watcher, a crash, a timer); the deploy
worker is the only one that takes from it. A request is a value: its kind,
what asked for it, and the futures of whoever waits for its result.

Two rules, both here and nowhere else:

- **Coalescing**: a request like one already queued (same kind, same
  argument) joins it: its waiters are added, the first trigger names the request.
  Any number of pushes during a deploy become one next deploy of the branch
  tip; a deploy of a given commit is a request of its own.
- **Precedence**: :class:`Kind` is declared in the order requests are taken:
  a person's rollback first, then a deploy, then a change of config vars,
  then crash recovery, then a restart (watched files, or asked for); within a kind, first come first
  served. A crash-restart waiting out its backoff is a
  timer that puts a request later, never a wait inside the worker, so a rollback
  asked for meanwhile is taken at once.

>>> import asyncio
>>> async def demo():
...     box = Mailbox()
...     box.put(Kind.RESTART, "watch")
...     first = box.put(Kind.DEPLOY, "webhook", wait=True)
...     second = box.put(Kind.DEPLOY, "manual", wait=True)
...     request = await box.take()
...     request.answer("done")
...     return request.kind.value, request.trigger, await first, await second, box.queued
>>> asyncio.run(demo())
('deploy', 'webhook', 'done', 'done', ['watch'])
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import Any


class Kind(enum.Enum):
    """Request kinds, in the order the worker takes them (first = most urgent)."""

    ROLLBACK = "rollback"  # a person asked to go back
    DEPLOY = "deploy"  # bring the branch tip live
    CONFIG = "config"  # the running release again, with new config vars
    RECOVER = "recover"  # the live release died
    RESTART = "restart"  # watched files changed: same commit, new process


@dataclass
class Request:
    kind: Kind
    trigger: str
    arg: Any = None  # what exactly: a commit to deploy, "retry", a Failure to recover from; None = the usual
    waiters: list["asyncio.Future[Any]"] = field(default_factory=list)

    def answer(self, result: Any) -> None:
        """Tell everyone who asked how it ended (None: nothing was done)."""
        for w in self.waiters:
            if not w.done():
                w.set_result(result)


class Mailbox:
    """Single-consumer queue of requests with coalescing and precedence (see module doc)."""

    def __init__(self) -> None:
        self._queued: dict[tuple[Kind, Any], Request] = {}  # in arrival order
        self._ready = asyncio.Event()  # set while _queued is not empty: a put can never be missed
        self._timers: set[asyncio.TimerHandle] = set()
        self.closed = False

    def put(self, kind: Kind, trigger: str, *, wait: bool = False, arg: Any = None
            ) -> "asyncio.Future[Any] | None":
        """Queue a request (or join the queued one); with ``wait``, a future for its result."""
        future: asyncio.Future[Any] | None = None
        if wait:
            future = asyncio.get_running_loop().create_future()
            if self.closed:
                future.set_result(None)
                return future
        if self.closed:
            return future
        request = self._queued.setdefault((kind, arg), Request(kind, trigger, arg))
        if future is not None:
            request.waiters.append(future)
        self._ready.set()
        return future

    def put_later(self, delay: float, kind: Kind, trigger: str) -> None:
        """Queue a request after ``delay`` seconds (a retry, a backoff); the worker stays free meanwhile."""
        def fire() -> None:
            self._timers.discard(handle)
            self.put(kind, trigger)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    async def take(self) -> Request:
        """The most urgent queued request; waits while there is none."""
        while not self._queued:
            self._ready.clear()
            await self._ready.wait()
        order = list(Kind)
        key = min(self._queued, key=lambda k: order.index(k[0]))  # min keeps the first of equals: FIFO
        request = self._queued.pop(key)
        if not self._queued:
            self._ready.clear()
        return request

    def has(self, *kinds: Kind) -> bool:
        return any(kind in kinds for kind, _ in self._queued)

    @property
    def queued(self) -> list[str]:
        """Triggers of the queued requests, most urgent first (for /status)."""
        order = list(Kind)
        return [request.trigger for _, request in sorted(self._queued.items(), key=lambda kv: order.index(kv[0][0]))]

    def close(self) -> None:
        """Shutting down: answer every waiter (None), forget timers, accept nothing more."""
        self.closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for request in self._queued.values():
            request.answer(None)
        self._queued.clear()
