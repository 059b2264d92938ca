"""Memory under a flood of deliveries nobody signed: pushcd's RSS before, at the peak, and after.

Bounded and loopback only: 12 connections each send 24 MB with a forged signature and stall one byte
short; then 8 gzip bodies (24 MB inflated each) and one 500 KB gzip bomb (500 MB inflated). Prints
RSS before, while the stallers hold their connections, the peak (VmHWM) and after they went away.

    .venv/bin/python bench/flood.py              # this checkout
    .venv/bin/python bench/flood.py --checkout /path/to/another/checkout   # e.g. an older commit, side by side
"""

from __future__ import annotations

import argparse
import gzip
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import rss_mb, start_pushcd  # noqa: E402
from tests.gitrepos import Repos  # noqa: E402
from tests.load import stall_unsigned  # noqa: E402

SIZE = 24 * 1024 * 1024


def compressed(port: int, body: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall((f"POST /github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nContent-Encoding: gzip\r\n"
                   f"X-Hub-Signature-256: sha256={'0' * 64}\r\nContent-Length: {len(body)}\r\n\r\n").encode())
        try:
            s.sendall(body)
            return s.recv(100).split(b"\r\n", 1)[0]
        except OSError as exc:
            return f"closed ({exc.__class__.__name__})".encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the pushcd checkout to run (default: this one)")
    args = parser.parse_args()
    common.ROOT = args.checkout.resolve()  # start_pushcd runs `python -m supervisor` there
    with tempfile.TemporaryDirectory() as tmp:
        repos = Repos(Path(tmp) / "r")
        proc, _app, hook, _ctl = start_pushcd(Path(tmp), repos.work, [sys.executable, "app.py", "--fd", "{fd}",
                                                                     "--fd", "{probe_fd}"], "bench-secret")
        try:
            before = rss_mb(proc.pid)
            release, sent = threading.Event(), []
            stallers = [threading.Thread(target=stall_unsigned, args=(hook, SIZE, release, sent),
                                         kwargs={"timeout": 60}) for _ in range(12)]
            for t in stallers:
                t.start()
            deadline = time.monotonic() + 120
            while len(sent) < len(stallers) and time.monotonic() < deadline:
                time.sleep(0.05)
            held = rss_mb(proc.pid)
            answers = [compressed(hook, gzip.compress(b"\0" * SIZE)) for _ in range(8)]
            answers.append(compressed(hook, gzip.compress(b"\0" * (500 << 20), compresslevel=9)))
            release.set()
            for t in stallers:
                t.join(120)
            time.sleep(2)  # a bench, not a test: let the last closes be read
            print(f"checkout: {common.ROOT}")
            print(f"RSS before {before:.1f} MB; while 12 x 24 MB unsigned bodies stall {held:.1f} MB; "
                  f"peak {rss_mb(proc.pid, 'VmHWM'):.1f} MB; after {rss_mb(proc.pid):.1f} MB")
            print("gzip answers:", sorted({a.decode(errors='replace') for a in answers}))
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
