"""The public socket group: the kernel gives new connections to the steered socket only."""

from __future__ import annotations

import socket

import pytest

from supervisor.config import Address
from supervisor.process import listener
from supervisor.process.listener import ListenError, Listeners

from .conftest import wait_sync


def _connect(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


def _accept_all(sock: socket.socket) -> int:
    sock.setblocking(False)
    n = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def test_new_connections_go_to_the_steered_socket_only() -> None:
    group = Listeners(Address("127.0.0.1", 0))
    try:
        a = group.current
        b = group.fresh()
        c = group.fresh()
        clients = _connect(group.port, 20)  # steered to a: b and c are in the group but get nothing
        wait_sync(lambda: group.backlog(a) == 20, what="20 connections waiting in a")
        assert (group.backlog(b), group.backlog(c)) == (0, 0)
        assert _accept_all(a) == 20
        group.steer(b)
        group.retire(a)  # the kernel moves c into a's slot; steering must follow
        clients += _connect(group.port, 10)
        wait_sync(lambda: group.backlog(b) == 10, what="10 connections waiting in b")
        assert group.backlog(c) == 0
        group.steer(c)
        clients += _connect(group.port, 5)
        wait_sync(lambda: group.backlog(c) == 5, what="5 connections waiting in c")
        assert group.backlog(b) == 10
        with pytest.raises(ValueError):
            group.retire(c)  # the socket new connections go to
        for s in clients:
            s.close()
    finally:
        group.close()


async def test_drained_waits_for_the_backlog_to_empty() -> None:
    group = Listeners(Address("127.0.0.1", 0))
    try:
        old = group.current
        clients = _connect(group.port, 3)
        wait_sync(lambda: group.backlog(old) == 3, what="3 waiting")
        group.steer(group.fresh())
        assert not await group.drained(old, timeout=0.2, settle=0)  # nobody accepts them
        assert _accept_all(old) == 3
        assert await group.drained(old, timeout=0.2, settle=0)
        for s in clients:
            s.close()
    finally:
        group.close()


def test_a_second_supervisor_on_the_same_address_is_refused() -> None:
    first = Listeners(Address("127.0.0.1", 0))
    try:
        with pytest.raises(ListenError, match="another pushcd"):
            Listeners(Address("127.0.0.1", first.port))
    finally:
        first.close()


def test_without_reuseport_bpf_old_and_new_share_one_socket(monkeypatch, caplog) -> None:
    # A kernel or sandbox without SO_ATTACH_REUSEPORT_CBPF, made here with an option number no kernel knows.
    monkeypatch.setattr(listener, "SO_ATTACH_REUSEPORT_CBPF", 0x7FFF)
    group = Listeners(Address("127.0.0.1", 0))
    try:
        assert not group.steering
        assert group.fresh() is group.current
        assert "will share one socket" in caplog.text
        clients = _connect(group.port, 2)
        wait_sync(lambda: group.backlog(group.current) == 2, what="2 waiting on the shared socket")
        for s in clients:
            s.close()
    finally:
        group.close()
