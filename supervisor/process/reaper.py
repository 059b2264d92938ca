"""What the app leaves behind is ours to stop and reap.

Stopping a child's process group does not reach a grandchild that called
``setsid()``: it outlives the stop, keeps the listening socket it inherited,
and is handed to init, so pushcd cannot even start again on that address.
With ``PR_SET_CHILD_SUBREAPER`` such orphans are handed to us instead
(``pushcd run`` turns it on, first thing). Then:

- when a child stops, the processes it left are stopped too: its
  descendants as they were just before the stop, any adopted process whose
  environment carries its ``SUPERVISOR_INSTANCE`` (a daemon that double-forked
  earlier), and any adopted process holding one of the sockets it was handed
  (a daemon that also emptied its environment still holds the release's socket);
- at shutdown, every adopted process is stopped;
- adopted processes that exit on their own are reaped, so none stays a zombie.

Only adopted processes are touched: those whose parent is us and that we did
not start ourselves (:data:`OURS`).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger("supervisor.reaper")

_PR_SET_CHILD_SUBREAPER = 36
OURS: set[int] = set()  # pids we started (asyncio waits for them): never reaped here
spawning = 0  # starts in flight: their pid may not be in OURS yet, so no sweep meanwhile
_enabled = False


def become_subreaper() -> bool:
    """Orphaned descendants become our children (Linux); call once, in ``pushcd run``."""
    global _enabled
    libc = ctypes.CDLL(None, use_errno=True)
    _enabled = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    if not _enabled:
        log.warning("PR_SET_CHILD_SUBREAPER refused (errno %d): a process the app detaches with setsid() "
                    "will outlive its stop", ctypes.get_errno())
    return _enabled


def children(pid: int | str = "self") -> set[int]:
    """Direct children of a process (all its threads')."""
    out: set[int] = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out.update(int(p) for p in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return out


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (a snapshot; taken before a stop)."""
    seen: set[int] = set()
    todo = [pid]
    while todo:
        for kid in children(todo.pop()):
            if kid not in seen:
                seen.add(kid)
                todo.append(kid)
    return seen


def adopted() -> set[int]:
    """Our children that we did not start: orphans handed to us."""
    if not _enabled or spawning:
        return set()
    return children() - OURS


def _carries(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _reap(pids: set[int]) -> set[int]:
    """Reap those that have exited; return the ones still running."""
    left = set()
    for pid in pids:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue  # not ours (any more)
        if not done:
            left.add(pid)
    return left


def _signal(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


async def stop(pids: set[int], timeout: float, why: str) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; every one reaped."""
    pids = _reap(pids)
    if not pids:
        return
    log.warning("stopping %d process(es) %s: %s", len(pids), why, ", ".join(map(str, sorted(pids))))
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        pids = _reap(pids)
    if pids:
        _signal(pids, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            pids = _reap(pids)


def _holds(pid: int, sockets: frozenset[int]) -> bool:
    """Whether ``pid`` has one of these sockets (by inode) open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and int(link[8:-1]) in sockets:
            return True
    return False


async def stop_left_by(instance: str, before: set[int], timeout: float, sockets: frozenset[int] = frozenset()
                       ) -> None:
    """After a child stopped: stop what it left (see the module doc); ``sockets``: the inodes of the sockets
    it was handed."""
    orphans = adopted()
    if not orphans:
        return
    marker = f"SUPERVISOR_INSTANCE={instance}".encode()
    left = {p for p in orphans if p in before or _carries(p, marker) or (sockets and _holds(p, sockets))}
    await stop(left, timeout, "left behind by a stopped app process")


def reap_exited() -> None:
    """Reap adopted processes that exited on their own (no zombies); cheap, call often."""
    _reap(adopted())
