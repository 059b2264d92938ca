"""Is a freshly started child ready to take traffic?

Every configured check must pass before the deadline; the child exiting
fails at once. The checks answer one question each:

- ``min_uptime``: has it stayed alive this long?
- ``notify``: has it sent ``READY=1`` on its ``NOTIFY_SOCKET`` (sd_notify)?
- ``http``: does a GET sent to *this* child alone answer 2xx?

>>> import asyncio
>>> from supervisor.process.child import Child, Spec
>>> async def demo():
...     child = await Child.start(Spec(["sleep", "5"], cwd="."))
...     why = await wait_ready(child, min_uptime=0.1, timeout=2)
...     await child.stop()
...     return why
>>> asyncio.run(demo()) is None
True
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from dataclasses import dataclass

from typing import Callable, Mapping, Sequence

import aiohttp

from ..failure import Failure
from .child import Child, OnLine, Spec, describe_exit, run_to_end
from .guard import Guard

COMMAND_TIMEOUT = 10.0  # a health check command must end within this


class Notify:
    """A private sd_notify socket for one child (abstract namespace: no file to clean up)."""

    _ids = itertools.count()

    def __init__(self) -> None:
        self.name = f"@pushcd-{os.getpid()}-{next(self._ids)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self.sock.bind("\0" + self.name[1:])
        self.ready = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        if "READY=1" in data.decode("utf-8", "replace").splitlines():
            self.ready.set()

    def close(self) -> None:
        try:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        except RuntimeError:
            pass
        self.sock.close()


@dataclass(frozen=True)
class Probe:
    """A health check: a GET of ``url`` answered 2xx, or ``command`` run to its end with status 0."""

    url: str = ""
    command: Spec | None = None

    @property
    def pace(self) -> float:
        """Seconds between two tries while a process starts: a command costs a process each time."""
        return 0.5 if self.command is not None else 0.05


@dataclass(frozen=True)
class Gate:
    """What ready means for one process: [app.ready] or [processes.NAME.ready]."""

    min_uptime: float
    timeout: float
    notify: bool = False  # wait for READY=1 on a private NOTIFY_SOCKET
    probe: Probe | None = None  # wait for a 2xx from this URL (the web process's private probe socket)


async def start_ready(spec: Spec, gate: Gate | None, *, where: str = "", fds: Sequence[int] = (),
                      extra_env: Mapping[str, str] | None = None, listen_pid: bool = True, label: str = "app",
                      guard: Guard | None = None, on_line: OnLine | None = None,
                      started: Callable[[Child], None] | None = None) -> Child | Failure:
    """Start one process and, with a ``gate``, wait until it is ready: the web process and every instance of a
    process type start so. The child, or why it is not ready (then it is stopped and reaped; a cancel stops
    it too). OSError when it cannot even start. ``started`` hears of the child as soon as it runs."""
    notify = Notify() if gate is not None and gate.notify else None
    env = {**(extra_env or {}), "NOTIFY_SOCKET": notify.name if notify else ""}
    try:
        child = await Child.start(spec, fds=fds, extra_env=env, listen_pid=listen_pid, label=label, guard=guard,
                                  on_line=on_line)
    except BaseException:
        if notify is not None:
            notify.close()
        raise
    if started is not None:
        started(child)
    if gate is None:
        return child
    try:
        why = await wait_ready(child, min_uptime=gate.min_uptime, timeout=gate.timeout, notify=notify,
                               probe=gate.probe)
    except asyncio.CancelledError:
        await child.stop()  # shutting down mid-start: never leave it behind
        raise
    finally:
        if notify is not None:
            notify.close()
    if why is None:
        return child
    failure = Failure.of(why, child, where)
    await child.stop()
    return failure


@dataclass
class Progress:
    last_probe: str = ""


async def probe_once(probe: Probe, session: aiohttp.ClientSession) -> str | None:
    """One try of a health check: None when it passes, else what it said (an HTTP status and the start of its
    body, a command's exit and last line) or why there was no answer."""
    if probe.command is not None:
        shown = " ".join(probe.command.argv)[:80]
        try:
            code, child = await run_to_end(probe.command, "check", COMMAND_TIMEOUT)
        except OSError as exc:
            return f"check {shown} cannot start: {exc.strerror or exc}"
        if code == 0:
            return None
        last = f": {child.tail[-1][:120]}" if child.tail else ""
        return f"check {shown} {describe_exit(code) if code is not None else 'timed out'}{last}"
    try:
        async with session.get(probe.url, allow_redirects=False) as resp:
            if 200 <= resp.status < 300:
                return None
            body = (await resp.content.read(200)).decode("utf-8", "replace").strip()
            return f"{probe.url} answered {resp.status}" + (f": {body[:120]}" if body else "")
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return f"{probe.url} failed: {type(exc).__name__}"


async def _probe_passes(probe: Probe, deadline: float, progress: Progress) -> str | None:
    """Try the check until it passes; None then, else its last answer."""
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < deadline:
            why = await probe_once(probe, session)
            if why is None:
                return None
            progress.last_probe = why
            await asyncio.sleep(probe.pace)
    return progress.last_probe or f"{probe.url or 'the check'}: no answer"


async def wait_ready(child: Child, *, min_uptime: float = 1.0, timeout: float = 60.0,
                     notify: Notify | None = None, probe: Probe | None = None) -> str | None:
    """None when ready; otherwise why not (exit status, probe answer or timeout)."""
    deadline = child.started + timeout
    progress = Progress()

    async def checks() -> str | None:
        if notify is not None:
            await notify.ready.wait()
        if probe is not None:
            why = await _probe_passes(probe, deadline, progress)
            if why:
                return why
        remaining = child.started + min_uptime - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)
        return None

    check = asyncio.ensure_future(checks())
    exited = asyncio.ensure_future(child.wait())
    try:
        done, _ = await asyncio.wait({check, exited}, timeout=max(0.0, deadline - time.monotonic()),
                                     return_when=asyncio.FIRST_COMPLETED)
        if exited in done or child.returncode is not None:
            await exited
            return f"{describe_exit(child.returncode)} before it was ready"
        if check in done:
            why = check.result()
            if why is None and child.returncode is not None:
                return f"{describe_exit(child.returncode)} before it was ready"
            return why
        waiting = []
        if notify is not None and not notify.ready.is_set():
            waiting.append("READY=1")
        if probe is not None:
            waiting.append(progress.last_probe or (f"a 2xx from {probe.url}" if probe.url else "the check to pass"))
        return f"not ready within {timeout:g}s" + (f" (waiting for {'; '.join(waiting)})" if waiting else "")
    finally:
        for task in (check, exited):
            if not task.done():
                task.cancel()
