"""The public socket: one listening socket per release, and the kernel told which one gets new connections.

Handing one shared socket to the old and the new child is not enough for a
clean swap: until the old child has been told to stop it keeps accepting, and
an asyncio server (aiohttp, uvicorn) that accepts a connection in the same
instant it handles SIGTERM closes it unanswered, as an idle connection. So each
release gets its own socket, all bound to the same address with SO_REUSEPORT,
and a one-instruction classic BPF program (``SO_ATTACH_REUSEPORT_CBPF``) names
the one socket the kernel gives new connections to. A swap is then: start the
new child on a fresh socket, wait until it is ready, steer connections to it,
let the old socket's backlog run dry, and only then stop the old child, which
by then has nothing left to accept.

The supervisor keeps its own copy of every socket, so one whose child died
stays open and its connections wait in the backlog for the next child (which
is given that same socket) instead of being refused.

>>> from supervisor.config import Address
>>> group = Listeners(Address("127.0.0.1", 0))
>>> fresh = group.fresh()
>>> group.steer(fresh)
>>> group.backlog(fresh), group.current is fresh
(0, True)
>>> group.close()
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import socket
import struct
import time

from ..config import Address

log = logging.getLogger("supervisor.listener")

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>; Linux >= 4.6 for TCP
_BPF_RET_K = 0x06  # BPF_RET | BPF_K: "return the constant k"
BACKLOG = 1024


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


class ListenError(Exception):
    pass


def _family(addr: Address) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr.host else socket.AF_INET


def _check_free(addr: Address) -> None:
    # SO_REUSEPORT would let a second supervisor (same user, same config) share
    # the port silently. A plain bind first makes that an "address in use".
    probe = socket.socket(_family(addr), socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((addr.host, addr.port))
    except OSError as exc:
        raise ListenError(_cannot_bind(addr, exc)) from None
    finally:
        probe.close()


def _cannot_bind(addr: Address, exc: OSError) -> str:
    hint = "another process (or another pushcd) listens there: stop it or pick another port" \
        if exc.errno == errno.EADDRINUSE else "pick another address or port"
    return f"[app] listen = \"{addr}\": cannot bind ({exc.strerror or exc}); {hint}"


def _tcp_backlog(sock: socket.socket) -> int:
    # For a listening socket, tcp_info.tcpi_unacked is the accept queue length.
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, 24)[0]


class Listeners:
    """The group of listening sockets on the public address; ``current`` gets new connections."""

    def __init__(self, addr: Address) -> None:
        _check_free(addr)
        self.addr = addr
        # Mirrors the kernel's reuseport array: a socket joins at the end when it
        # listens, and a leaving socket's slot is taken by the last one. The BPF
        # program returns an index into this array.
        self._group: list[socket.socket] = []
        self.current = self._join(addr.port)
        self.port: int = self.current.getsockname()[1]
        self.steering = True
        try:
            self.steer(self.current)
        except OSError as exc:
            # A kernel (or a sandbox) without reuseport BPF: fall back
            # to one socket shared by old and new child. Sync servers still swap
            # cleanly; asyncio ones may drop a request or two per swap (README).
            self.steering = False
            log.warning("[app] listen: cannot steer connections between sockets (SO_ATTACH_REUSEPORT_CBPF: %s); "
                        "old and new releases will share one socket", exc.strerror or exc)

    def _join(self, port: int) -> socket.socket:
        sock = socket.socket(_family(self.addr), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.addr.host, port))
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise ListenError(_cannot_bind(self.addr, exc)) from None
        self._group.append(sock)
        return sock

    def fresh(self) -> socket.socket:
        """A new socket on the public address that gets no connections until steered to.

        Without steering, the one shared socket.
        """
        return self._join(self.port) if self.steering else self.current

    def steer(self, sock: socket.socket) -> None:
        """From now on the kernel puts every new connection in ``sock``'s backlog."""
        code = (_SockFilter * 1)(_SockFilter(_BPF_RET_K, 0, 0, self._group.index(sock)))
        prog = _SockFprog(1, code)
        # The program belongs to the whole group; setting it on any member replaces it.
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                        ctypes.string_at(ctypes.addressof(prog), ctypes.sizeof(prog)))
        self.current = sock

    def backlog(self, sock: socket.socket) -> int:
        """Connections waiting in ``sock``'s accept queue."""
        return _tcp_backlog(sock)

    async def drained(self, sock: socket.socket, timeout: float, settle: float = 0.1) -> bool:
        """Wait (at most ``timeout``) until ``sock``'s backlog is empty; steer elsewhere first.

        ``settle`` then gives the old child time to read a request it accepted an
        instant ago: asyncio servers close accepted-but-unread connections as idle
        when they stop.
        """
        deadline = time.monotonic() + timeout
        while self.backlog(sock) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(settle)
        return self.backlog(sock) == 0

    def retire(self, sock: socket.socket) -> None:
        """Take ``sock`` out of the group for good; connections still waiting in it are reset."""
        if sock is self.current:
            raise ValueError("steer new connections elsewhere before retiring their socket")
        waiting = self.backlog(sock)
        if waiting:
            log.warning("%d connection(s) waiting for a stopped release were reset", waiting)
        # shutdown() unhashes it now, even if a straggler process still holds a copy.
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        i = self._group.index(sock)
        last = self._group.pop()
        if last is not sock:
            self._group[i] = last
        self.steer(self.current)  # its index may have moved

    def close(self) -> None:
        for sock in self._group:
            sock.close()
        self._group.clear()
