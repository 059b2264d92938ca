"""Our two HTTP listeners (webhook, control), bounded so that no client can exhaust them.

- a connection must send a complete request within ``header_timeout`` seconds of
  opening (or of its previous answer), else it is closed: an idle connection or
  headers at one byte a second cannot hold a slot (aiohttp's keep-alive timer,
  which runs from the moment a connection is made);
- at most ``max_connections`` are open at once; one more is closed at once,
  before anything is read, so file descriptors stay for deliveries, the app's
  sockets and the git thread;
- one address holds at most an eighth of them (:func:`per_peer`), and a peer the
  listener does not admit (outside ``[webhook] allow_from``) is closed on connect,
  before a byte is read: strangers cannot take the slots deliveries need;
- bodies are bounded in size and time by the webhook handler itself.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import ssl
from collections import Counter
from typing import Any, Callable

from aiohttp import http_exceptions, web

from ..config import Address

log = logging.getLogger("supervisor.site")


class StartupError(Exception):
    """Something a person must fix before we can start; one line, exit 2."""


class ClientErrorFilter(logging.Filter):
    """A malformed request is the client's mistake (a 400), not our error: one warning line, no traceback.

    aiohttp logs each one with ``logger.exception``, so any stranger could fill the log with
    tracebacks by sending bad bytes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (http_exceptions.HttpProcessingError, web.RequestPayloadError, ConnectionError)):
            what = getattr(exc, "message", "") or str(exc)
            record.msg = f"{record.getMessage()}: bad request ({type(exc).__name__}: {what})".replace("\n", " ")
            record.args = None
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _quiet_client_errors() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrorFilter) for f in server_log.filters):
        server_log.addFilter(ClientErrorFilter())


class _Refuse(asyncio.Protocol):
    """Over the connection cap: close at once, read nothing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()


def per_peer(limit: int) -> int:
    """Connections one address may hold: an eighth of the cap (at least 2).

    >>> per_peer(256), per_peer(64), per_peer(4)
    (32, 8, 2)
    """
    return max(2, limit // 8)


class _Counted(asyncio.Protocol):
    """aiohttp's handler for one connection, counted from accept to close; handed over only once its peer is
    admitted (the factory cannot see the peer, the transport can)."""

    def __init__(self, inner: Any, capped: "Capped") -> None:
        self.inner = inner
        self.capped = capped
        self.peer: str | None = None  # counted against its address once admitted
        capped.open += 1  # counted at accept time: a batch of accepts cannot overshoot the cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = (transport.get_extra_info("peername") or ("?",))[0]
        why = self.capped.refusal(peer)
        if why is not None:
            self.capped.refuse(why)
            transport.abort()  # nothing read, nothing answered
            return
        self.peer = peer
        self.capped.by_peer[peer] += 1
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.capped.open -= 1
        if self.peer is None:
            return  # refused on connect: aiohttp never had it
        self.capped.by_peer[self.peer] -= 1
        if not self.capped.by_peer[self.peer]:
            del self.capped.by_peer[self.peer]
        self.inner.connection_lost(exc)


class Capped:
    """A protocol factory that gives aiohttp's handler to at most ``limit`` open connections, at most
    :func:`per_peer` of them from one address, and none to a peer ``admits`` refuses."""

    def __init__(self, server: web.Server, limit: int, name: str,
                 admits: Callable[[str], bool] = lambda _peer: True,
                 unlimited: Callable[[str], bool] = lambda _peer: False) -> None:
        self.server = server
        self.limit = limit
        self.name = name
        self.admits = admits  # e.g. [webhook] allow_from (and the trusted proxies); read at each connection
        self.unlimited = unlimited  # addresses many senders share (a trusted proxy): no per-address limit
        self.open = 0
        self.refused = 0
        self.by_peer: Counter[str] = Counter()

    def refusal(self, peer: str) -> str | None:
        if not self.admits(peer):
            return f"peer {peer} is not admitted (allow_from)"
        if self.by_peer[peer] >= per_peer(self.limit) and not self.unlimited(peer):
            return f"peer {peer} holds {self.by_peer[peer]} connections already"
        return None

    def refuse(self, why: str) -> None:
        self.refused += 1
        if self.refused in (1, 10, 100) or self.refused % 1000 == 0:  # a flood is not a log line per connection
            log.warning("%s: closed a connection on connect (%s); %d so far", self.name, why, self.refused)

    def __call__(self) -> asyncio.BaseProtocol:
        if self.open >= self.limit:
            self.refuse(f"{self.limit} connections open, max_connections")
            return _Refuse()
        return _Counted(self.server(), self)


class Site:
    """One listening HTTP server: an aiohttp app on an address, capped; ``port`` is the bound one."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server, capped: Capped) -> None:
        self.runner = runner
        self.server = server
        self.capped = capped
        self.port: int = server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.server.close()
        await self.runner.cleanup()


async def listen(app: web.Application, addr: Address, key: str, *, header_timeout: float,
                 max_connections: int, ssl_context: ssl.SSLContext | None = None,
                 admits: Callable[[str], bool] = lambda _peer: True,
                 unlimited: Callable[[str], bool] = lambda _peer: False) -> Site:
    """Serve ``app`` on ``addr``; a StartupError naming ``key`` if the address cannot be had."""
    _quiet_client_errors()
    # auto_decompress off: a body is never inflated for us (the webhook refuses a Content-Encoding at once)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=header_timeout,
                           auto_decompress=False)
    await runner.setup()
    assert runner.server is not None
    capped = Capped(runner.server, max_connections, key.split()[0], admits, unlimited)
    try:
        server = await asyncio.get_running_loop().create_server(
            capped, addr.host, addr.port, reuse_address=True, backlog=1024, ssl=ssl_context)
    except OSError as exc:
        await runner.cleanup()
        hint = "pick another port" if exc.errno == errno.EADDRINUSE else "check the address"
        raise StartupError(f"{key} = \"{addr}\": cannot listen ({exc.strerror}); {hint} in {key.split()[0]}") from None
    return Site(runner, server, capped)


FD_RESERVE = 64  # descriptors kept for the app's sockets and pipes, git's packs, SQLite, the watcher


def connection_caps(wanted: dict[str, int]) -> dict[str, int]:
    """The connection caps, lowered where needed so that connections alone can never use up the
    file descriptors (asyncio spins on accept() when they are gone, and nothing could be started).

    >>> connection_caps({"[webhook]": 256, "[control]": 64})["[webhook]"] <= 256
    True
    """
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 32
    budget = soft - in_use - FD_RESERVE
    total = sum(wanted.values())
    if total <= budget or soft == resource.RLIM_INFINITY:
        return dict(wanted)
    caps = {key: max(1, n * max(budget, 0) // total) for key, n in wanted.items()}
    log.warning("file descriptor limit %d leaves room for %d connections: max_connections lowered to %s; "
                "raise the limit (LimitNOFILE= in the systemd unit, ulimit -n) to allow more", soft,
                max(budget, 0), ", ".join(f"{k} {v}" for k, v in caps.items()))
    return caps


def quiet_exception_handler(interval: float = 1.0) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """The loop's error reports, each kind at most once per ``interval`` seconds.

    Out of file descriptors, asyncio reports every failed accept() (with a
    traceback): 55 MB of log in 25 s. The first of a kind is logged, the rest
    are counted and summed up in the next line of that kind.
    """
    last: dict[str, float] = {}
    hidden: dict[str, int] = {}

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        key = str(context.get("message", ""))
        now = loop.time()
        if now - last.get(key, -interval) < interval:
            hidden[key] = hidden.get(key, 0) + 1
            return
        last[key] = now
        more = hidden.pop(key, 0)
        if more:
            context = {**context, "message": f"{key} (and {more} more like it)"}
        loop.default_exception_handler(context)

    return handle
