"""The web process: which child serves traffic, and how a new one replaces it.

With ``[app] listen`` the supervisor owns the public address for its whole
life (see ``listener``), so a swap is *start new on a fresh socket, wait until
ready, steer connections to it, let the old backlog run dry, stop old*:
connections wait in a backlog rather than fail. A child that died leaves its
socket, and the connections waiting in it, to the next one. Without it, the
app binds its own port and a swap has to be *stop old, start new* (a short
outage), still readiness-gated.

A failed swap never touches the running release: the new child is stopped
and the caller is told why (exit status or probe answer plus its last lines).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from ..built import Built
from ..config import AppSpec, probe_problem
from ..failure import Failure
from ..ops.record import Phases
from .child import Child, OnLine, Spec, describe_exit
from .guard import Guard
from .listener import Listeners
from .procfile import held_socket
from .readiness import Gate, Probe, start_ready

log = logging.getLogger("supervisor.release")
BYTECODE_SET = frozenset({"PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"})  # the operator decided already


@dataclass
class WebProcess:
    built: Built  # what it runs: commit, folder, environment
    child: Child
    live_since: float
    previous: Built | None = None  # the release it replaced, for probation rollback
    sock: socket.socket | None = None  # its public socket, with [app] listen
    app: AppSpec | None = None  # the config it was started with
    probe: Probe | None = None  # its health check ([app.ready] http on its private socket), watched in probation

    @property
    def commit(self) -> str:
        return self.built.commit

    @property
    def alive(self) -> bool:
        return self.child.returncode is None


def _probe_socket() -> socket.socket:
    # Private to one child and to this machine: loopback, a fresh port each time.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def _format(argv: list[str], values: dict[str, str]) -> list[str]:
    out = []
    for arg in argv:
        for key, value in values.items():
            arg = arg.replace("{" + key + "}", value)
        out.append(arg)
    return out


class Web:
    """Owns the public sockets and the live release; one swap at a time."""

    def __init__(self, app: AppSpec, guard: Guard | None = None,
                 on_line: OnLine | None = None, public: Listeners | None = None,
                 config_vars: Callable[[str], Mapping[str, str]] | None = None) -> None:
        self.app = app  # replaced whole on SIGHUP; read at each start
        self.config_vars = config_vars or (lambda _name: {})  # a release's config vars, by their digest
        self.public = public  # the sockets of [app] listen (bound by the caller), or None
        self.live: WebProcess | None = None
        self.starts = 0
        self._on_line = on_line
        self.guard = guard
        self._lock = asyncio.Lock()
        self.on_exit: Callable[[WebProcess], None] | None = None
        self.children: set[Child] = set()  # every child we started and have not reaped
        self._watches: set[asyncio.Task[None]] = set()  # kept, so none is collected while it waits

    @property
    def restarts(self) -> int:
        """Children put live after the first one: deploys, watched changes, crash recoveries."""
        return max(0, self.starts - 1)

    @property
    def port(self) -> int | None:
        return self.public.port if self.public else None

    def app_for(self, built: Built) -> AppSpec:
        """The web process of ``built``: [app], with the command of its Procfile's web: line if it has one
        (binding the public port itself, a known server is pointed at the socket pushcd holds on it)."""
        web = (built.procfile or {}).get("web")
        if web and self.public is not None:
            web = held_socket(web)
        return dataclasses.replace(self.app, command=tuple(web)) if web else self.app

    def spec(self, built: Built) -> Spec:
        """How a process of ``built`` starts: in its folder ([app] cwd within it), with its environment."""
        app = self.app_for(built)
        env = {**app.env, **self.config_vars(built.config)}  # config vars over [app.env]
        env.update(built.environ(env.get("PATH", os.environ.get("PATH", os.defpath))))
        if self.port and "PORT" not in env:
            env["PORT"] = str(self.port)  # the public port, as Heroku gives it (Procfile lines say $PORT)
        if built.pycache is not None and not BYTECODE_SET & (set(os.environ) | set(env)):
            # Python cannot write __pycache__ into the read-only release: it keeps bytecode there instead.
            # Not when bytecode writing is off (the prefix would also hide the stdlib's own __pycache__).
            env["PYTHONPYCACHEPREFIX"] = str(built.pycache)
        return Spec(argv=app.command, cwd=built.root / app.subdir, env=env, stop_signal=app.stop_signal,
                    stop_timeout=app.stop_timeout, unset=app.unset)

    async def _spawn(self, built: Built, sock: socket.socket | None) -> tuple[Child | Failure, Probe | None]:
        """Start a child for ``built`` and wait until it is ready; SpawnError if it cannot even start."""
        try:
            app, spec = self.app_for(built), self.spec(built)
        except ValueError as exc:  # its config vars are gone (ConfigVarsError)
            raise SpawnError(str(exc)) from None
        if not app.command:
            raise SpawnError("no web process: [app] procfile has no web: line and [app] command is empty")
        problem = probe_problem(app)
        if problem:
            raise SpawnError(f"{problem} (the Procfile's web: line)")
        values = {"port": str(self.port or "")}
        fds: list[int] = []
        probe_sock = None
        extra: dict[str, str] = {}
        try:
            if sock is not None:
                fds.append(sock.fileno())
                values["fd"] = "3"
                names = ["public"]
                if app.uses_probe_fd:
                    probe_sock = _probe_socket()
                    fds.append(probe_sock.fileno())
                    values["probe_fd"] = "4"
                    names.append("probe")
                extra["LISTEN_FDNAMES"] = ":".join(names)
            probe = None
            if app.ready.http and app.ready.http.startswith(("http://", "https://")):
                probe = Probe(app.ready.http)
            elif app.ready.http and probe_sock is not None:
                probe = Probe(f"http://127.0.0.1:{probe_sock.getsockname()[1]}{app.ready.http}")
            spec = dataclasses.replace(spec, argv=_format(list(spec.argv), values))
            born: list[Child] = []  # known to stop() from its first moment, mid-start included
            gate = Gate(app.ready.min_uptime, app.ready.timeout, app.ready.notify, probe)
            result: Child | Failure = await start_ready(
                spec, gate, fds=fds, extra_env=extra, listen_pid=not app.names_fds, label="web", guard=self.guard,
                on_line=self._on_line, started=lambda child: (born.append(child), self.children.add(child)))
            if isinstance(result, Failure):
                self.children.difference_update(born)  # stopped and reaped already
            return result, probe
        except OSError as exc:
            # Not on PATH, or out of file descriptors (EMFILE) for the probe socket: a failed start,
            # which the worker retries with backoff like any other.
            raise SpawnError(f"cannot start {spec.argv[0]}: {exc.strerror or exc}") from None
        finally:
            if probe_sock is not None:
                probe_sock.close()  # the child holds its own copy

    async def start(self, built: Built, previous: Built | None = None, phases: Phases | None = None
                    ) -> Failure | None:
        """Put ``built`` live (None), or say why not. With ``[app] listen`` the old child serves until the new
        one is ready. ``phases`` gets "ready" (spawn until the gate passed: mostly the app's own start) and
        "handover" (steering, the old backlog drained, the old process stopped)."""
        phases = phases or Phases()
        async with self._lock:
            old = self.live
            if old is not None and self.public is None:
                # No [app] listen: the port is the app's own, so the old one must go first.
                await self._retire(old)
                self.live = old = None  # on failure the caller restores the running commit
            sock = None
            if self.public is not None:
                # A dead release's socket holds the connections that waited for it: the next child takes it.
                sock = self.public.fresh() if old is not None and old.alive else self.public.current
            app = self.app  # what _spawn starts it with (a SIGHUP may replace self.app meanwhile)
            try:
                with phases("ready"):
                    started, probe = await self._spawn(built, sock)
            except SpawnError as exc:
                self._drop_unused(sock)
                return Failure(str(exc))
            if isinstance(started, Failure):
                self._drop_unused(sock)
                log.warning("release %s failed: %s", built.commit[:12], started)
                return started
            child = started
            self.live = WebProcess(built, child, time.monotonic(), previous, sock, app, probe)
            self.starts += 1
            watch = asyncio.create_task(self._watch(self.live), name=f"watch-{child.pid}")
            self._watches.add(watch)
            watch.add_done_callback(self._watches.discard)
            if old is not None:
                with phases("handover"):
                    await self._hand_over(old, sock)
            log.info("release %s live: pid %d%s", built.commit[:12], child.pid,
                     f" (release {built.id}{', with hand edits' if built.dirty else ''})" if built.id else "")
            return None

    def _drop_unused(self, sock: socket.socket | None) -> None:
        if self.public is not None and sock is not None and sock is not self.public.current:
            self.public.retire(sock)  # never steered to: nothing waits in it

    async def _hand_over(self, old: WebProcess, sock: socket.socket | None) -> None:
        """The new release is ready: give it the traffic, then stop the old one with nothing left to accept."""
        if self.public is None or sock is None or old.sock is None or sock is old.sock:
            await self._retire(old)  # graceful if alive; reaps stragglers if it had crashed
            return
        self.public.steer(sock)
        if old.alive and not await self.public.drained(old.sock, timeout=self.app.stop_timeout):
            log.warning("release %s pid %d: backlog not empty after %ss; stopping it anyway",
                        old.commit[:12], old.child.pid, self.app.stop_timeout)
        await self._retire(old)
        self.public.retire(old.sock)

    async def _retire(self, process: WebProcess) -> None:
        code = await process.child.stop()
        self.children.discard(process.child)
        log.info("release %s pid %d stopped: %s", process.commit[:12], process.child.pid, describe_exit(code))

    async def _watch(self, process: WebProcess) -> None:
        await process.child.wait()
        if not process.child.stopping and self.live is process and self.on_exit:
            self.on_exit(process)

    async def stop(self) -> None:
        """Stop every child (live or mid-swap) gracefully; used at shutdown."""
        children = list(self.children)
        await asyncio.gather(*(c.stop() for c in children))
        self.children.clear()

    def close(self) -> None:
        if self.public is not None:
            self.public.close()


class SpawnError(Exception):
    pass
