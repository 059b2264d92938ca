"""Prometheus metrics (prometheus-client), one registry per supervisor.

Counters and histograms are updated as things happen; the child's state and
the deployed commit are read at scrape time, so they are never stale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class LiveFacts:
    """What a scrape reads of the running state."""

    up: bool
    restarts: int
    commit: str
    message: str
    paused: bool = False
    processes: tuple[tuple[str, int, bool], ...] = ()  # (process type, index, up)
    process_restarts: dict[str, int] = field(default_factory=dict)  # crash restarts per process type
    healthy: bool = True  # the live web process's health check passes
    app: str = ""  # the app's name


class _Live:
    def __init__(self, facts: Callable[[], LiveFacts]) -> None:
        self.facts = facts

    def collect(self) -> Iterator[Metric]:
        now = self.facts()
        up = GaugeMetricFamily("supervisor_child_up", "1 when the app child is running")
        up.add_metric([], 1.0 if now.up else 0.0)
        yield up
        restarts = CounterMetricFamily("supervisor_child_restarts", "crash restarts of every process, the web process "
                                       "included (the sum of supervisor_process_restarts)")
        restarts.add_metric([], float(now.restarts))
        yield restarts
        info = InfoMetricFamily("supervisor_deployed_commit", "the commit the live release runs")
        info.add_metric([], {"app": now.app, "commit": now.commit, "message": now.message[:200]})
        yield info
        healthy = GaugeMetricFamily("supervisor_app_healthy", "1 while the live web process's health check passes")
        healthy.add_metric([], 1.0 if now.healthy else 0.0)
        yield healthy
        paused = GaugeMetricFamily("supervisor_paused", "1 while automatic deploys are paused")
        paused.add_metric([], 1.0 if now.paused else 0.0)
        yield paused
        process_up = GaugeMetricFamily("supervisor_process_up", "1 when a process instance is running",
                                       labels=["process", "index"])
        for name, index, alive in now.processes:
            process_up.add_metric([name, str(index)], 1.0 if alive else 0.0)
        yield process_up
        process_restarts = CounterMetricFamily("supervisor_process_restarts", "restarts per process type",
                                               labels=["process"])
        for name, count in sorted(now.process_restarts.items()):
            process_restarts.add_metric([name], float(count))
        yield process_restarts


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.deliveries = Counter("supervisor_deliveries", "webhook deliveries by verdict", ["verdict"],
                                  registry=self.registry)
        self.deploys = Counter("supervisor_deploys", "recorded results by result and kind (deploy, restart, rollback, "
                               "start)", ["result", "kind"], registry=self.registry)
        self.notifications = Counter("supervisor_notifications", "notifications by receiver kind and result",
                                     ["kind", "result"], registry=self.registry)
        self.job_runs = Counter("supervisor_job_runs", "scheduled job runs by job and result (ok, failed, timeout, "
                                "skipped, stopped)", ["job", "result"], registry=self.registry)
        self.job_last_success = Gauge("supervisor_job_last_success_timestamp_seconds",
                                      "when each scheduled job last ended well", ["job"], registry=self.registry)
        self.webhook_phase = Histogram(
            "supervisor_webhook_phase_seconds", "where a delivery's answer time goes: headers (what they alone "
            "decide), body (read and hashed), judge (parse, filter), queue (duplicates noted, the deploy asked for)",
            ["phase"], buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1),
            registry=self.registry)
        self.deploy_duration = Histogram(
            "supervisor_deploy_duration_seconds", "time from fetch to the new release live (or refused/failed)",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=self.registry)
        self.webhook_latency = Histogram(
            "supervisor_webhook_latency_seconds", "time to answer a webhook delivery",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=self.registry)

    def watch(self, facts: Callable[[], LiveFacts]) -> None:
        self.registry.register(_Live(facts))  # type: ignore[arg-type]

    def render(self) -> bytes:
        return generate_latest(self.registry)
