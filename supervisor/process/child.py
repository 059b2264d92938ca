"""One running app process, and nothing else.

This adapter hides every process detail: its own process group (so a stop
reaches gunicorn's workers too), PR_SET_PDEATHSIG (so a SIGKILLed supervisor
leaves no orphan), handing the listening sockets over as fd 3/4 with
``LISTEN_PID`` equal to the child's own pid (systemd socket activation), and
captured output, logged line by line and kept as a short tail for reports.

>>> import asyncio
>>> async def demo():
...     child = await Child.start(Spec(["echo", "hi"], cwd="."))
...     return await child.wait()
>>> asyncio.run(demo())
0
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import logging
import os
import re
import resource
import secrets
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from . import reaper

if TYPE_CHECKING:
    from .guard import Guard

log = logging.getLogger("supervisor.child")

TAIL_LINES = 20
# The line a person wants first when a release fails: the last one that looks like an exception
# ("SyntaxError: invalid syntax (app.py, line 4)", "ModuleNotFoundError: ...", "Error: ...").
TELLING = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(?:[A-Z]\w*(?:Error|Exception)|Error)(?::\s.*)?$")
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)

# `exec 3<&100` style moves are done in preexec (below); the shell only exists
# to export LISTEN_PID=$$ - the pid the app will have after `exec`.
_SHIM = 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"'


@dataclass(frozen=True)
class Spec:
    argv: Sequence[str]
    cwd: str | os.PathLike[str]
    env: Mapping[str, str] = field(default_factory=dict)
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 10.0
    unset: frozenset[str] = frozenset()  # variables of ours the app must not see (secrets pushcd reads)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


# The app gets the RLIMIT_NOFILE pushcd was started with, as if started directly (see raise_nofile).
_nofile_for_apps: tuple[int, int] | None = None


def raise_nofile() -> None:
    """pushcd's own soft RLIMIT_NOFILE up to the hard limit: connections must not starve the app's
    sockets or git. Children still get the limit we were started with."""
    global _nofile_for_apps
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    _nofile_for_apps = (soft, hard)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def _preexec(parent: int, fds: Sequence[int]) -> Callable[[], None]:
    limits = _nofile_for_apps

    def run() -> None:
        # Die with the supervisor, even on SIGKILL; close the race where the
        # parent died before prctl ran.
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
        # Move the sockets to 3, 4, ... via numbers above those slots, so that no
        # move clobbers another socket still waiting to move (within any fd limit).
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + len(fds)) for fd in fds]
        for target, fd in enumerate(high, start=3):
            os.dup2(fd, target, inheritable=True)
            os.close(fd)
        if limits is not None:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            except (ValueError, OSError):
                pass

    return run


OnLine = Callable[["Child", str], None]  # a line of a child's output, as it arrives


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's, plus :attr:`exited`: set when the process exits. Python 3.11's ``Process.wait()`` answers only
    once every pipe is closed too, so a daemon the app left holding its stdout hid the exit (a crash was never
    restarted, a stop always waited out its timeout)."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


class Child:
    """A started process: ``wait()`` for it or ``stop()`` it; always reaped."""

    @property
    def release(self) -> str:
        """What it runs, for its output lines: its release's id, or in place its commit."""
        env = self.spec.env
        return env.get("SUPERVISOR_RELEASE") or env.get("SUPERVISOR_COMMIT", "")[:12]

    def __init__(self, proc: asyncio.subprocess.Process, exited: asyncio.Event, spec: Spec, label: str,
                 on_line: "OnLine | None", guard: "Guard | None" = None,
                 instance: str = "", sockets: frozenset[int] = frozenset()) -> None:
        self.proc = proc
        self._exited = exited  # set when the process exits, open pipes or not (see _Protocol)
        self.spec = spec
        self.pid = proc.pid
        self.label = label
        self.started = time.monotonic()
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.telling: str | None = None  # see TELLING
        self.instance = instance
        self.sockets = sockets  # inodes of the sockets it was handed: an orphan holding one after the stop is
        # something it left behind
        self.stopping = False
        self.guard = guard
        if guard is not None:
            guard.add(self.pid)  # its group dies with us even if it forked workers
        self._on_line = on_line
        self._pump = asyncio.create_task(self._read_output(), name=f"output-{self.pid}")

    @classmethod
    async def start(cls, spec: Spec, *, fds: Sequence[int] = (), extra_env: Mapping[str, str] | None = None,
                    listen_pid: bool = True, label: str = "app", guard: "Guard | None" = None,
                    on_line: "OnLine | None" = None) -> "Child":
        """Start ``spec``; ``fds`` become fd 3, 4, ... with ``LISTEN_FDS`` set.

        ``listen_pid`` sets ``LISTEN_PID`` to the child's own pid (socket
        activation). Leave it off when the command already names its fds:
        gunicorn honours both and would open fd 3 twice.
        """
        env = {k: v for k, v in os.environ.items() if k not in spec.unset}
        instance = secrets.token_hex(8)
        env.update({**spec.env, **(extra_env or {}), "SUPERVISOR_INSTANCE": instance})
        argv = list(spec.argv)
        env.pop("LISTEN_PID", None)
        if not env.get("NOTIFY_SOCKET"):
            env.pop("NOTIFY_SOCKET", None)  # systemd's socket is ours, not the app's
        if fds:
            env["LISTEN_FDS"] = str(len(fds))
            if listen_pid:
                argv = ["/bin/sh", "-c", _SHIM, "sh", *argv]
        else:
            for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
                env.pop(key, None)
        reaper.spawning += 1  # until its pid is in OURS, no sweep may mistake it for an orphan
        try:
            loop = asyncio.get_running_loop()
            transport, protocol = await loop.subprocess_exec(
                lambda: _Protocol(limit=1 << 20, loop=loop),  # as create_subprocess_exec, and told of the exit
                *argv,
                cwd=os.fspath(spec.cwd),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # own group: signals reach the workers too
                close_fds=not fds,  # with fds, preexec places them; PEP 446 keeps the rest closed
                preexec_fn=_preexec(os.getpid(), fds),
            )
            proc = asyncio.subprocess.Process(transport, protocol, loop)
            reaper.OURS.add(proc.pid)
        finally:
            reaper.spawning -= 1
        child = cls(proc, protocol.exited, spec, label, on_line, guard, instance,
                    frozenset(os.fstat(fd).st_ino for fd in fds))
        log.info("%s started: pid %d: %s", label, child.pid, " ".join(spec.argv))
        return child

    async def _read_output(self) -> None:
        assert self.proc.stdout is not None
        while True:
            try:
                raw = await self.proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue  # an over-long line: skip it rather than stop reading
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.tail.append(line)
            if TELLING.match(line.strip()):
                self.telling = line.strip()
            log.info("%s[%d] %s", self.label, self.pid, line)
            if self._on_line:
                self._on_line(self, line)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started

    async def _exit(self) -> int:
        """The exit status, once the process has exited (whoever still holds its pipes)."""
        await self._exited.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def wait(self) -> int:
        code = await self._exit()
        # Let the output pump drain so the tail holds the last words.
        try:
            await asyncio.wait_for(asyncio.shield(self._pump), 1.0)
        except asyncio.TimeoutError:
            pass
        return code

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def stop(self, timeout: float | None = None) -> int:
        """stop_signal to the group, SIGKILL after the timeout; always reaped, and so is what it left."""
        self.stopping = True
        timeout = self.spec.stop_timeout if timeout is None else timeout
        family = reaper.descendants(self.pid) if self.proc.returncode is None else set()
        if self.proc.returncode is None:
            self._signal_group(self.spec.stop_signal)
            try:
                await asyncio.wait_for(asyncio.shield(self._exit()), timeout)
            except asyncio.TimeoutError:
                log.warning("%s pid %d did not stop within %.1fs; sending SIGKILL", self.label, self.pid, timeout)
                self._signal_group(signal.SIGKILL)
        code = await self.wait()
        reaper.OURS.discard(self.pid)
        # Stragglers the app left in its group (a worker that outlived its master)...
        self._signal_group(signal.SIGKILL)
        # ...and outside it (setsid), handed to us as their subreaper.
        await reaper.stop_left_by(self.instance, family, timeout, self.sockets)
        if self.guard is not None:
            self.guard.remove(self.pid)
        self._pump.cancel()
        return code


async def run_to_end(spec: Spec, label: str, timeout: float, guard: "Guard | None" = None,
                     extra_env: Mapping[str, str] | None = None) -> tuple[int | None, Child]:
    """Run a one-off command (before_restart, an installer) to its end: its exit code, or None when it
    ran out of ``timeout``; stopped and reaped in every case, a cancel included. OSError if it cannot start."""
    child = await Child.start(spec, label=label, guard=guard, extra_env=extra_env)
    try:
        code: int | None = await asyncio.wait_for(child.wait(), timeout)
    except asyncio.TimeoutError:
        code = None
    finally:
        await child.stop()  # stops it on a timeout or a shutdown; reaps what it left in its group
    return code, child
