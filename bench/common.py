"""Helpers shared by the benchmarks: ports, waiting, /proc readings, percentiles, and
starting pushcd itself with a config written for the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.ports import free_port, free_ports  # noqa: F401 - re-exported for the benchmarks

ROOT = Path(__file__).resolve().parents[1]


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (OSError, urllib.error.HTTPError):
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:  # field 6: session id
                pids.append(int(entry))
    return pids


def rss_mb(pid: int, kind: str = "VmRSS") -> float:
    """Resident memory in MB; ``kind`` "RssAnon" leaves out mapped files (pack files, libraries)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(kind + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]




def start_pushcd(folder: Path, work: Path, command: list[str], secret: str, log: Path | None = None,
                 extra: str = "") -> tuple[subprocess.Popen, int, int, int]:
    """Write a config (held socket, probe on {probe_fd}) and start pushcd; (proc, app, hook, control) ports."""
    app, hook, ctl = free_ports(3)
    cfg = folder / "pushcd.toml"
    argv = ", ".join(f'"{a}"' for a in command)
    cfg.write_text(f"""
[webhook]
listen = "127.0.0.1:{hook}"
secret_env = "WEBHOOK_SECRET"
max_connections = 1024  # the benches' bursts come from one address: a peer may hold an eighth
[repo]
path = "{work}"
[app]
command = [{argv}]
listen = "127.0.0.1:{app}"
[app.ready]
http = "/health"
min_uptime = 0.0
timeout = 30
[control]
listen = "127.0.0.1:{ctl}"
[state]
dir = "{folder / 'state'}"
{extra}
""")
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "run", "--config", str(cfg)], cwd=ROOT,
                            env={**os.environ, "WEBHOOK_SECRET": secret}, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_http(f"http://127.0.0.1:{app}/health", 120)
    return proc, app, hook, ctl
