"""Releases: which child serves traffic, and how a new one replaces it.

With ``[app] listen`` the supervisor binds the public socket once and hands
it to every child, so a swap is *start new, wait until ready, stop old*: the
socket never closes and connections wait in its backlog rather than fail.
Without it, the app binds its own port and a swap has to be *stop old, start
new* (a short outage), still readiness-gated.

A failed swap never touches the running release: the new child is stopped
and the caller is told why (exit status or probe answer plus its last lines).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from typing import Callable

from .child import Child, Spec, describe_exit
from .config import Address, Settings
from .guard import Guard
from .readiness import Notify, Probe, wait_ready

log = logging.getLogger("supervisor.release")


@dataclass
class Release:
    commit: str
    child: Child
    live_since: float
    previous: str | None = None  # the commit it replaced, for probation rollback

    @property
    def alive(self) -> bool:
        return self.child.returncode is None


@dataclass(frozen=True)
class SwapResult:
    ok: bool
    reason: str


def bind_public(addr: Address) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((addr.host, addr.port))
    sock.listen(1024)
    return sock


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


def uses_probe_fd(argv: list[str]) -> bool:
    return any("{probe_fd}" in a for a in argv)


def failure_report(reason: str, child: Child) -> str:
    tail = " | ".join(list(child.tail)[-5:])
    return f"{reason}; last output: {tail}" if tail else reason


class Releases:
    """Owns the public socket and the live release; one swap at a time."""

    def __init__(self, settings: Settings, guard: Guard | None = None,
                 on_line: Callable[[int, str], None] | None = None) -> None:
        self.settings = settings
        self.app = settings.raw.app
        self.public: socket.socket | None = bind_public(settings.app_listen) if settings.app_listen else None
        self.live: Release | None = None
        self.starts = 0
        self._on_line = on_line
        self.guard = guard
        self._lock = asyncio.Lock()
        self.on_exit: Callable[[Release], None] | None = None
        self.children: set[Child] = set()  # every child we started and have not reaped

    @property
    def restarts(self) -> int:
        """Children put live after the first one: deploys, watched changes, crash recoveries."""
        return max(0, self.starts - 1)

    @property
    def port(self) -> int | None:
        return self.public.getsockname()[1] if self.public else None

    def spec(self) -> Spec:
        return Spec(argv=self.app.command, cwd=self.settings.app_cwd, env=self.app.env,
                    stop_signal=self.settings.stop_signal, stop_timeout=self.app.stop_timeout)

    async def _spawn(self, commit: str) -> tuple[Child, str | None]:
        spec = self.spec()
        values = {"port": str(self.port or "")}
        fds: list[int] = []
        probe_sock = None
        extra = {"SUPERVISOR_COMMIT": commit}
        if self.public is not None:
            fds.append(self.public.fileno())
            values["fd"] = "3"
            names = ["public"]
            if uses_probe_fd(list(spec.argv)):
                probe_sock = _probe_socket()
                fds.append(probe_sock.fileno())
                values["probe_fd"] = "4"
                names.append("probe")
            extra["LISTEN_FDNAMES"] = ":".join(names)
        notify = Notify() if self.app.ready.notify else None
        extra["NOTIFY_SOCKET"] = notify.name if notify else ""
        names_fds = any("{fd}" in a or "{probe_fd}" in a for a in spec.argv)
        argv = _format(list(spec.argv), values)
        spec = Spec(argv, spec.cwd, spec.env, spec.stop_signal, spec.stop_timeout)
        try:
            child = await Child.start(spec, fds=fds, extra_env=extra, listen_pid=not names_fds,
                                      guard=self.guard, on_line=self._on_line)
        except OSError as exc:
            if notify:
                notify.close()
            raise SpawnError(f"cannot start {spec.argv[0]}: {exc.strerror or exc}") from None
        finally:
            if probe_sock is not None:
                probe_port = probe_sock.getsockname()[1]
                probe_sock.close()  # the child holds its own copy
        probe = None
        if self.app.ready.http:
            if self.app.ready.http.startswith(("http://", "https://")):
                probe = Probe(self.app.ready.http)
            elif probe_sock is not None:
                probe = Probe(f"http://127.0.0.1:{probe_port}{self.app.ready.http}")
        ready = self.app.ready
        self.children.add(child)
        try:
            why = await wait_ready(child, min_uptime=ready.min_uptime, timeout=ready.timeout,
                                   notify=notify, probe=probe)
        except asyncio.CancelledError:
            await child.stop()  # shutting down mid-swap: never leave it behind
            raise
        finally:
            if notify:
                notify.close()
        return child, why

    async def start(self, commit: str, previous: str | None = None) -> SwapResult:
        """Put ``commit`` live. With a held socket the old child serves until the new one is ready."""
        async with self._lock:
            old = self.live
            if old is not None and self.public is None:
                # No shared socket: the port is the app's own, so the old one must go first.
                await self._retire(old)
                self.live = old = None  # on failure the caller restores the running commit
            try:
                child, why = await self._spawn(commit)
            except SpawnError as exc:
                return SwapResult(False, str(exc))
            if why is not None:
                report = failure_report(why, child)
                await child.stop()
                self.children.discard(child)
                log.warning("release %s failed: %s", commit[:12], report)
                return SwapResult(False, report)
            self.live = Release(commit, child, time.monotonic(), previous)
            self.starts += 1
            asyncio.create_task(self._watch(self.live), name=f"watch-{child.pid}")
            if old is not None:
                await self._retire(old)  # graceful if alive; reaps stragglers if it had crashed
            log.info("release %s live: pid %d", commit[:12], child.pid)
            return SwapResult(True, f"pid {child.pid} ready")

    async def _retire(self, release: Release) -> None:
        code = await release.child.stop()
        self.children.discard(release.child)
        log.info("release %s pid %d stopped: %s", release.commit[:12], release.child.pid, describe_exit(code))

    async def _watch(self, release: Release) -> None:
        await release.child.wait()
        if not release.child.stopping and self.live is release and self.on_exit:
            self.on_exit(release)

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
