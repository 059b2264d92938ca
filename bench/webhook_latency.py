#!/usr/bin/env python3
"""Issue 2 figures for pushcd alone: webhook answer latency under 50 concurrent signed
deliveries, push-to-new-version-served minus the app's own start time, supervisor RSS and
idle CPU.

    .venv/bin/python bench/webhook_latency.py --rounds 20 --concurrency 50 --deploys 10

Only 127.0.0.1; bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, free_port, pct, rss_mb, start_pushcd, wait_http  # noqa: E402
from tests.gitrepos import Repos  # noqa: E402

SECRET = b"bench-secret"


def signed(body: bytes, event: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()}


def app_start_time(work: Path, runs: int = 10) -> float:
    """The app's own start: spawn to its first answer, standalone (median of runs)."""
    times = []
    for _ in range(runs):
        port = free_port()
        t = time.monotonic()
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=work,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", 30)
            times.append(time.monotonic() - t)
        finally:
            proc.terminate()
            proc.wait(10)
    return statistics.median(times)


FLOOR_APP = """
import sys
from aiohttp import web
async def answer(request):
    await request.read()
    return web.json_response({"verdict": "ignored"})
app = web.Application()
app.router.add_post("/github", answer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


@contextlib.contextmanager
def floor_app() -> Iterator[int]:
    """An aiohttp app that only reads the body and answers (the floor of pushcd's stack), listening: its port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", FLOOR_APP, str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the bare aiohttp app did not listen within 30s") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def floor(body: bytes, rounds: int, concurrency: int) -> list[float]:
    """The same bursts against the bare aiohttp app (:func:`floor_app`): the stack's own floor."""
    with floor_app() as port:
        burst(port, body, concurrency)  # warm up
        return [t for _ in range(rounds) for t in burst(port, body, concurrency)]


def status(ctl: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ctl}/status", timeout=5) as resp:
        return json.load(resp)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the guard runs in a session of its own)."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                out.append(int(entry.name))
        except OSError:
            continue
    return out


def answer_phases(ctl: int) -> dict[str, float]:
    """Mean seconds per delivery of each phase of the answer (supervisor_webhook_phase_seconds)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{ctl}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "supervisor_webhook_phase_seconds_sum":
                sums[s.labels["phase"]] = s.value
            elif s.name == "supervisor_webhook_phase_seconds_count":
                counts[s.labels["phase"]] = s.value
    return {phase: sums[phase] / counts[phase] for phase in sums if counts.get(phase)}


def burst(port: int, body: bytes, n: int, path: str = "/github", event: str = "push") -> list[float]:
    """n signed deliveries sent at the same instant on n open connections; each one's answer time.

    Raw sockets, so the figure is the server's and not a Python HTTP client's.
    """
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    reqs = []
    for _ in range(n):
        head = "".join(f"{k}: {v}\r\n" for k, v in signed(body, event).items())
        reqs.append(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
                    f"Connection: close\r\n{head}\r\n".encode() + body)
    sel = selectors.DefaultSelector()
    sent: dict[socket.socket, float] = {}
    for c, r in zip(conns, reqs):
        sent[c] = time.perf_counter()
        c.sendall(r)
        sel.register(c, selectors.EVENT_READ)
    done: list[float] = []
    deadline = time.monotonic() + 30
    while len(done) < n and time.monotonic() < deadline:
        for key, _ in sel.select(1.0):
            c = key.fileobj
            if not c.recv(65536):  # the server closes after the answer (Connection: close)
                done.append(time.perf_counter() - sent[c])
                sel.unregister(c)
                c.close()
    for c in conns:
        c.close()
    if len(done) < n:
        raise RuntimeError(f"only {len(done)} of {n} answers within 30s")
    return done


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="pushcd-bench-") as tmp:
        repos = Repos(Path(tmp) / "r")
        proc, app, hook, ctl = start_pushcd(Path(tmp), repos.work, [sys.executable, "app.py", "--fd", "{fd}",
                                                                    "--fd", "{probe_fd}"], SECRET.decode())
        try:
            time.sleep(1.0)  # settle, then measure idle (the scenario, not a sync)
            c0 = cpu_seconds([proc.pid])
            time.sleep(5.0)
            idle = (cpu_seconds([proc.pid]) - c0) / 5.0 * 100
            rss_idle = rss_mb(proc.pid)
            url = f"http://127.0.0.1:{hook}/github"
            # Deliveries for another branch: verified, judged and answered, with no deploy, so
            # the figure is the answer path alone; then pushes to the branch (queued, coalesced).
            other = json.dumps({"ref": "refs/heads/other", "after": "a" * 40}).encode()
            lat: list[float] = []
            burst(hook, other, args.concurrency)  # warm up
            one_by_one = [burst(hook, other, 1)[0] for _ in range(args.rounds * 20)]
            for _ in range(args.rounds):
                lat += burst(hook, other, args.concurrency)
            phases_in = answer_phases(ctl)
            queued: list[float] = []
            for _ in range(args.rounds):
                sha = repos.commit({"message.txt": f"{uuid.uuid4()}\n"}, "burst")
                body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
                queued += burst(hook, body, args.concurrency)
            async with aiohttp.ClientSession() as s:
                # push -> new version served, minus the app's own start (spawn -> ready)
                totals: list[float] = []
                phases: list[dict] = []
                for i in range(args.deploys):
                    deadline = time.monotonic() + 60
                    while status(ctl)["state"] != "running" and time.monotonic() < deadline:
                        time.sleep(0.01)
                    sha = repos.commit({"message.txt": f"deploy {i}\n"}, f"deploy {i}")
                    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
                    t = time.monotonic()
                    async with s.post(url, data=body, headers=signed(body, "push")) as resp:
                        await resp.read()
                    while time.monotonic() < deadline:
                        async with s.get(f"http://127.0.0.1:{app}/") as resp:
                            if sha in await resp.text():
                                break
                    totals.append(time.monotonic() - t)
                    phases.append(status(ctl)["last_deploy"]["phases"])
            rss_after = rss_mb(proc.pid)
            rss_guard = max((rss_mb(pid) for pid in children(proc.pid)
                             if "guard_program" in Path(f"/proc/{pid}/cmdline").read_text()), default=0.0)
            own = app_start_time(repos.work)
            bare = floor(other, args.rounds, args.concurrency)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"webhook answer, one at a time, {len(one_by_one)} deliveries (no deploy): "
          f"p50 {pct(one_by_one, 50) * 1000:.2f} ms, p99 {pct(one_by_one, 99) * 1000:.2f} ms")
    print("  inside the handler, mean per delivery: "
          + ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in phases_in.items()))
    print(f"webhook answer, {args.concurrency} concurrent, {len(lat)} deliveries (no deploy): "
          f"p50 {pct(lat, 50) * 1000:.2f} ms, p99 {pct(lat, 99) * 1000:.2f} ms")
    print(f"webhook answer, {args.concurrency} concurrent pushes that queue deploys, {len(queued)} deliveries: "
          f"p50 {pct(queued, 50) * 1000:.2f} ms, p99 {pct(queued, 99) * 1000:.2f} ms")
    print(f"  the same bursts at a bare aiohttp app that only reads and answers (the floor of this stack "
          f"and client): p50 {pct(bare, 50) * 1000:.2f} ms, p99 {pct(bare, 99) * 1000:.2f} ms")
    over = [t - own for t in totals]
    print(f"push -> new version served: median {statistics.median(totals) * 1000:.0f} ms, max "
          f"{max(totals) * 1000:.0f} ms ({args.deploys} deploys); the app's own start (spawn -> first answer, "
          f"standalone) median {own * 1000:.0f} ms; difference median {statistics.median(over) * 1000:.0f} ms, "
          f"max {max(over) * 1000:.0f} ms")
    keys = list(dict.fromkeys(k for p in phases for k in p))  # every phase a deploy recorded, in order
    for key in keys:
        vals = [p.get(key, 0.0) for p in phases]
        print(f"  phase {key}: median {statistics.median(vals) * 1000:.1f} ms")
    # "ready" is spawn until the gate passed: the app's own start (its probe waits in the held socket's
    # backlog, so no poll interval is added). The rest of push -> served is pushcd's: the answer, the queue,
    # fetch, checkout, the release folder, steering, and the client's next request.
    own_share = [t - p.get("ready", 0.0) for t, p in zip(totals, phases)]
    print(f"  pushcd's own share (push -> served minus phase ready): median "
          f"{statistics.median(own_share) * 1000:.1f} ms, max {max(own_share) * 1000:.1f} ms")
    print(f"supervisor RSS: {rss_idle:.1f} MB idle, {rss_after:.1f} MB after the run; guard {rss_guard:.1f} MB; "
          f"idle CPU {idle:.2f}% of one core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--deploys", type=int, default=10)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
