"""Waiting longer after each failure in a row: crash restarts, fetch retries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    """0.5 s, 1 s, 2 s ... capped; reset after a healthy stretch."""

    first: float = 0.5
    cap: float = 30.0
    healthy: float = 10.0
    failures: int = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * (2 ** self.failures))
        self.failures += 1
        return delay

    def observe_uptime(self, seconds: float) -> None:
        if seconds >= self.healthy:
            self.failures = 0
