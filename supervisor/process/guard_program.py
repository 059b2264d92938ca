"""The guard's own process (see :mod:`supervisor.process.guard`): reads "+PGID", "-PGID" and "exit" lines on
stdin; when stdin closes without "exit" (the supervisor died), SIGKILLs every process group still registered.

Run as a script without site (``python -S -I guard_program.py``): it must import nothing but the three
modules below, so it stays the size of a bare interpreter.
"""

import os
import signal
import sys


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin:
        line = line.strip()
        if line == "exit":
            return
        if line[:1] in "+-" and line[1:].isdigit():
            (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
    for pgid in groups:  # EOF without "exit": the supervisor died
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


if __name__ == "__main__":
    main()
