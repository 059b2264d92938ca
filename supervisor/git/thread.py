"""The one thread all git work runs in: calls are serialised and off the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")
Call = tuple["concurrent.futures.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class GitThread:
    """One thread for all git work: calls are serialised and off the event loop.

    A daemon thread, so a call stuck in libgit2 (a fetch from a remote that stopped
    answering) cannot hold the process at exit: :meth:`close` waits a bounded time.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="git", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args = call
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up before it started
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                future.set_exception(exc)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((future, fn, args))
        return await asyncio.wrap_future(future)

    def close(self, timeout: float | None = None) -> bool:
        """Finish the call under way (waiting at most ``timeout`` s) and stop; True if the thread ended."""
        self._calls.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()
