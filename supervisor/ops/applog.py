"""The app's output on disk: one file per process type (and per scheduled job), rotated by size, read back
across restarts and rotations.

Lines arrive on the event loop (:meth:`AppLog.line`) and go to a bounded queue; one thread writes them.
So a slow or full disk never blocks the event loop, and never a child (its pipe is read on the event
loop as always); if the disk falls that far behind, lines are dropped and the next write says how many.

Each file is JSON lines: ``{"t": time, "pid": pid, "p": process, "r": release, "line": text}``. A file
passing ``[log] max_bytes`` becomes ``NAME.log.1`` (older ones move up, past ``keep`` they are
deleted), and the rotated files of all processes together stay under ``max_total``: what the defaults
can hold is bounded, whatever the app prints.

>>> import tempfile, pathlib
>>> where = pathlib.Path(tempfile.mkdtemp())
>>> log = AppLog(where, max_bytes=300, keep=2, max_total=10_000)
>>> for n in range(20):
...     log.line("web", 7, "r1", f"line {n}")
>>> log.close()
>>> sorted(p.name for p in where.iterdir() if p.name != "web.log")  # rotated: two kept, older ones gone
['web.log.1', 'web.log.2']
>>> [r["line"] for r in read(where, limit=3)]
['line 17', 'line 18', 'line 19']
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO, Iterator

log = logging.getLogger("supervisor.applog")

QUEUED = 20_000  # lines waiting for the writer; past it they are dropped (and counted)
NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")


class AppLog:
    def __init__(self, where: Path, *, max_bytes: int, keep: int, max_total: int) -> None:
        self.dir = where
        self.max_bytes = max_bytes
        self.keep = keep
        self.max_total = max_total
        self.dropped = 0  # since the last line that said so
        self.dropped_total = 0  # since start (/status)
        self.problem: str | None = None  # why lines are not being written (a disk error), for /status
        self._queue: deque[tuple[float, int, str, str, str]] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._files: dict[str, BinaryIO] = {}  # open for appending, by file name
        self._sizes: dict[str, int] = {}
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._write_forever, name="applog", daemon=True)
        self._thread.start()

    def line(self, process: str, pid: int, release: str, text: str) -> None:
        """One line of a process's output (called on the event loop: never waits for the disk)."""
        if len(self._queue) >= QUEUED:
            self.dropped += 1
            self.dropped_total += 1
            return
        self._queue.append((time.time(), pid, process, release, text))
        with self._wake:
            self._wake.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within ``timeout``), then stop the writer."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)

    # -- the writer thread --------------------------------------------------------------------
    def _write_forever(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                closing = self._closing
            batch = []
            while self._queue:
                batch.append(self._queue.popleft())
            try:
                self._write(batch)
            except OSError as exc:
                if self.problem is None:
                    log.error("app output: cannot write to %s (%s); lines are dropped until it can",
                              self.dir, exc.strerror or exc)
                self.problem = f"cannot write to {self.dir}: {exc.strerror or exc}"
                self.dropped += len(batch)
                self.dropped_total += len(batch)
                self._close_files()
            else:
                self.problem = None
            if closing and not self._queue:
                self._close_files()
                return

    def _write(self, batch: list[tuple[float, int, str, str, str]]) -> None:
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            batch.insert(0, (time.time(), 0, "pushcd", "", f"{dropped} lines of app output dropped: the disk "
                                                            f"fell behind"))
        for t, pid, process, release, text in batch:
            name = process if NAME.match(process) else "other"
            f = self._files.get(name)
            if f is None:
                f = self._files[name] = open(self.dir / f"{name}.log", "ab")
                self._sizes[name] = f.seek(0, os.SEEK_END)
            data = json.dumps({"t": round(t, 6), "pid": pid, "p": process, "r": release, "line": text}) + "\n"
            self._sizes[name] += f.write(data.encode())
            if self._sizes[name] >= self.max_bytes:
                self._rotate(name)
        for f in self._files.values():
            f.flush()

    def _rotate(self, name: str) -> None:
        self._files.pop(name).close()
        base = self.dir / f"{name}.log"
        for n in range(self.keep, 0, -1):
            older = Path(f"{base}.{n}")
            if n == self.keep:
                older.unlink(missing_ok=True)
            elif older.exists():
                older.rename(f"{base}.{n + 1}")
        if self.keep:
            base.rename(f"{base}.1")
        else:
            base.unlink()
        self._cap_total()

    def _cap_total(self) -> None:
        """The rotated files of every process together stay under max_total: the oldest go first."""
        rotated = sorted(((p, p.stat()) for p in self.dir.glob("*.log.*")), key=lambda ps: ps[1].st_mtime)
        total = sum(st.st_size for _, st in rotated)
        for path, st in rotated:
            if total <= self.max_total:
                return
            total -= st.st_size
            path.unlink(missing_ok=True)

    def _close_files(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except OSError:
                pass
        self._files.clear()


def since_of(text: str, now: float) -> float:
    """``--since``: a duration back from ``now`` (``90s``, ``10m``, ``2h``, ``1d``) or a local time
    (``2026-12-07 14:00``, ``2026-12-07T14:00:00``); seconds since the epoch.

    >>> since_of("10m", 1000.0), since_of("90s", 1000.0), since_of("2h", 10_000.0)
    (400.0, 910.0, 2800.0)
    >>> since_of("soon", 0)
    Traceback (most recent call last):
    ...
    ValueError: --since soon: give a duration (90s, 10m, 2h, 1d) or a time (2026-12-07 14:00)
    """
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        return now - float(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(text.strip(), fmt))
        except ValueError:
            continue
    raise ValueError(f"--since {text}: give a duration (90s, 10m, 2h, 1d) or a time (2026-12-07 14:00)")


# -- reading back (the control API in a thread, or the CLI while pushcd is down) -----------------------

def read(where: Path, *, process: str | None = None, since: float = 0.0, release: str | None = None,
         limit: int = 200) -> list[dict[str, Any]]:
    """The newest ``limit`` lines (oldest first) after ``since`` of ``process`` (default every one) from
    ``release`` (an id or a commit's start), across rotations: files are read from their end. Each as the API,
    the CLI and the page show it: ``{"time", "pid", "process", "release", "line"}``."""
    names = ([process] if process else
             sorted({p.name.split(".log")[0] for p in where.glob("*.log*")}) if where.is_dir() else [])
    out: list[dict[str, Any]] = []
    for name in names:
        if not NAME.match(name):
            continue
        found = []
        for record in _newest_first(where, name):
            if record.get("t", 0) <= since:
                break
            if release and not str(record.get("r", "")).startswith(release):
                continue
            found.append({"time": record.get("t", 0), "pid": record.get("pid", 0), "process": record.get("p", name),
                          "release": record.get("r", ""), "line": record.get("line", "")})
            if len(found) >= limit:
                break
        out.extend(found)
    out.sort(key=lambda r: r["time"])
    return out[-limit:]


def _newest_first(where: Path, name: str) -> Iterator[dict[str, Any]]:
    paths = [where / f"{name}.log"] + sorted(where.glob(f"{name}.log.*"),
                                             key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    for path in paths:
        for raw in _lines_backwards(path):
            try:
                yield json.loads(raw)
            except ValueError:
                continue  # a line cut by a crash mid-write


def _lines_backwards(path: Path, block: int = 65536) -> Iterator[bytes]:
    """A file's lines, last first, reading it from the end in blocks (a 10 MB file for the last 40 lines
    costs one block)."""
    try:
        f = open(path, "rb")
    except OSError:
        return
    with f:
        end = f.seek(0, os.SEEK_END)
        rest = b""
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start) + rest
            end = start
            lines = chunk.split(b"\n")
            rest = lines.pop(0)  # maybe the end of a line that starts in the block before
            for line in reversed(lines):
                if line:
                    yield line
        if rest:
            yield rest
