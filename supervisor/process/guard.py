"""A watchdog that outlives a SIGKILLed supervisor just long enough to clean up.

PR_SET_PDEATHSIG only reaches the app's main process; a worker it forked
(gunicorn's, or anything that ignores its parent dying) would be orphaned.
So every process group we start is registered with this small helper over a
pipe; when the pipe closes without a clean ``exit`` (the supervisor died), it
SIGKILLs every group still registered, then exits itself.

The helper is :mod:`supervisor.process.guard_program`, run as a plain script without ``site``
(``python -S -I``): it imports nothing but ``os``, ``signal`` and ``sys``, so it costs a bare interpreter
(about 9 MB), not pushcd's imports.
"""

from __future__ import annotations

import subprocess
import sys

from pathlib import Path

from . import reaper

PROGRAM = Path(__file__).with_name("guard_program.py")


class Guard:
    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-S", "-I", str(PROGRAM)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for us must not kill the guard first
        )
        reaper.OURS.add(self._proc.pid)  # ours, waited for below: not an orphan to reap

    def _send(self, line: str) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(line.encode() + b"\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the guard is gone; PDEATHSIG still covers the main processes

    def add(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def remove(self, pgid: int) -> None:
        self._send(f"-{pgid}")

    def close(self) -> None:
        self._send("exit")
        if self._proc.stdin:
            self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        reaper.OURS.discard(self._proc.pid)
