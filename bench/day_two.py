"""Day two figures: what keeping the app's output on disk costs, and how late a scheduled job starts.

1. App logs: lines of 100 bytes through :class:`AppLog` as the event loop hands them over, with
   rotation (1 MB files, keep 5, 8 MB in all) against one file never rotated: the caller's cost per
   line (what the event loop pays), the writer's lines per second, the bytes on disk at the end.
2. Scheduler jitter: a real pushcd with a job due every second (``* * * * * *``, command ``true``)
   for ``--seconds``; from history, how long after its due time each run started, and how many runs
   were missed or skipped.

    .venv/bin/python bench/day_two.py --seconds 30
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import start_pushcd  # noqa: E402
from supervisor.ops.applog import AppLog  # noqa: E402
from tests.gitrepos import Repos, git  # noqa: E402


def logs(lines: int) -> None:
    """Lines handed over in batches of 1,000, each batch once the writer has taken the last (as output read
    from pipes arrives), so the figure is the writer's pace; then a burst of all of them at once."""
    text = "x" * 100
    for label, max_bytes in (("rotated (1 MB, keep 5, 8 MB cap)", 1_000_000), ("one file, never rotated", 10**12)):
        for burst in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                where = Path(tmp) / "logs"
                log = AppLog(where, max_bytes=max_bytes, keep=5, max_total=8_000_000)
                handed = 0.0
                started = time.perf_counter()
                for i in range(0, lines, 1000):
                    t = time.perf_counter()
                    for _ in range(1000):
                        log.line("web", 1234, "r1", text)
                    handed += time.perf_counter() - t
                    deadline = time.monotonic() + 10
                    while not burst and log._queue and time.monotonic() < deadline:
                        time.sleep(0.0005)  # the bench's pacing: wait for the writer to take the batch
                log.close(timeout=120)
                written = time.perf_counter() - started
                disk = sum(p.stat().st_size for p in where.iterdir()) / 1e6
                print(f"| {label}{', all at once' if burst else ''} | {handed / lines * 1e6:.2f} us | "
                      f"{(lines - log.dropped_total) / written:,.0f} lines/s | {disk:.1f} MB in "
                      f"{len(list(where.iterdir()))} files | {log.dropped_total:,} |")


def jitter(seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="pushcd-jobs-") as tmp:
        root = Path(tmp)
        repos = Repos(root / "repos")
        work = root / "work"
        git("clone", "-q", "-b", repos.branch, str(repos.origin), str(work), cwd=root)
        extra = '[watch]\nenabled = false\n[jobs.tick]\nschedule = "* * * * * *"\ncommand = ["true"]\n'
        proc, *_ = start_pushcd(root, work, ["python3", "app.py", "--fd", "{fd}", "--fd", "{probe_fd}"], "s",
                                root / "log.txt", extra)
        try:
            time.sleep(seconds)  # the bench's own measuring window, not a synchronisation
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
        db = sqlite3.connect(str(root / "state" / "history.db"))
        rows = db.execute("SELECT scheduled_at, started_at, result FROM job_runs ORDER BY seq").fetchall()
        late = sorted((s - d) * 1000 for d, s, r in rows if s is not None)
        due = {round(d) for d, _, _ in rows}
        missed = int(max(due) - min(due) + 1 - len(due)) if due else 0
        print(f"| {len(rows)} runs in {seconds:g} s | p50 {statistics.median(late):.1f} ms | "
              f"p99 {late[int(len(late) * 0.99) - 1]:.1f} ms | max {late[-1]:.1f} ms | "
              f"{sum(1 for r in rows if r[2] != 'ok')} not ok, {missed} due times missed |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    print("| app logs | per line, caller | writer | on disk | dropped |\n|---|---|---|---|---|")
    logs(args.lines)
    print("\n| scheduler | started after due | | | |\n|---|---|---|---|---|")
    jitter(args.seconds)


if __name__ == "__main__":
    main()
