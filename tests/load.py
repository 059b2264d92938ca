"""A bounded HTTP load from threads: N clients, each stops after a count, a
time limit, or when told to. Every failure is kept by kind."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Results:
    ok: int = 0
    failures: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    commits: Counter = field(default_factory=Counter)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (start, seconds)
    events: list[tuple[float, str | None, str | None]] = field(default_factory=list)  # (start, failure, commit)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class Load:
    def __init__(self, port: int, clients: int = 8, max_requests: int = 20_000, max_seconds: float = 90.0,
                 path: str = "/", timeout: float = 10.0) -> None:
        self.port = port
        self.clients = clients
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.path = path
        self.timeout = timeout
        self.results = Results()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> "Load":
        self._deadline = time.monotonic() + self.max_seconds
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Results:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        return self.results

    def _record(self, kind: str | None, detail: str, started: float, commit: str | None = None) -> None:
        with self._lock:
            self.results.latencies.append((started, time.monotonic() - started))
            self.results.events.append((started, kind, commit))
            if kind is None:
                self.results.ok += 1
                if commit:
                    self.results.commits[commit] += 1
            else:
                self.results.failures[kind] += 1
                if len(self.results.examples) < 10:
                    self.results.examples.append(f"{kind}: {detail}")

    def _client(self) -> None:
        per_client = self.max_requests // self.clients
        for _ in range(per_client):
            if self._stop.is_set() or time.monotonic() > self._deadline:
                return
            started = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read().decode("utf-8", "replace")
                if resp.status >= 500:
                    self._record("5xx", f"{resp.status} {body[:200]}", started)
                elif resp.status != 200:
                    self._record("other", str(resp.status), started)
                else:
                    commit = next((line.split()[1] for line in body.splitlines() if line.startswith("commit ")), None)
                    self._record(None, "", started, commit)
            except ConnectionRefusedError as exc:
                self._record("refused", repr(exc), started)
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as exc:
                self._record("reset", repr(exc), started)
            except (socket.timeout, TimeoutError) as exc:
                self._record("timeout", repr(exc), started)
            except OSError as exc:
                self._record("error", repr(exc), started)
            finally:
                conn.close()


def stall_unsigned(port: int, size: int, release: threading.Event, sent: list[int], *, timeout: float) -> None:
    """One delivery with a forged signature (so its body is read): all of its ``size`` bytes but the last, then
    silence until ``release`` is set (at most twice ``timeout``). ``sent`` gets a 1 once it has sent what it
    will (a refusal closing the connection first included)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall((f"POST /github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nContent-Length: {size}\r\n"
                       f"X-Hub-Signature-256: sha256={'0' * 64}\r\n\r\n").encode())
            for _ in range(size // (1 << 20) - 1):
                s.sendall(b"x" * (1 << 20))
            s.sendall(b"x" * ((1 << 20) - 1))
        except OSError:
            pass  # answered 503 once the unverified budget was spent, and closed
        sent.append(1)
        release.wait(2 * timeout)
