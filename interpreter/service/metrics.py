"""The worker's Prometheus metrics (prometheus-client, one registry per service).

Counters and the latency histogram are updated as runs end; gauges (queue depth,
runs executing, warm sandboxes, sessions, draining) are read from the executor when
/metrics is scraped, so they are never stale.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from interpreter.result import RunResult

# Chart runs take ~0.1 s warm, heavy jobs up to the run timeout.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter("interpreter_runs", "Runs answered, by outcome (exit cause, or refused)",
                            ["outcome"], registry=self.registry)
        self.run_seconds = Histogram("interpreter_run_duration_seconds", "Time to answer a run request",
                                     buckets=LATENCY_BUCKETS, registry=self.registry)
        self.unauthorized = Counter("interpreter_unauthorized_requests", "Requests refused for a missing or wrong token",
                                    registry=self.registry)
        self.queue_depth = Gauge("interpreter_queue_depth", "Runs waiting for a sandbox slot", registry=self.registry)
        self.in_flight = Gauge("interpreter_runs_in_flight", "Runs executing now", registry=self.registry)
        self.warm = Gauge("interpreter_warm_sandboxes", "Warm sandboxes ready for a run", registry=self.registry)
        self.sessions = Gauge("interpreter_sessions", "Sessions open on this worker", registry=self.registry)
        self.draining = Gauge("interpreter_draining", "1 while the worker drains before exiting", registry=self.registry)

    def record_run(self, result: RunResult, seconds: float) -> None:
        self.runs.labels(outcome=result.exit_cause.value if result.exit_cause else "refused").inc()
        self.run_seconds.observe(seconds)

    def observe_state(self, *, queued: int, in_flight: int, warm: int, sessions: int, draining: bool) -> None:
        self.queue_depth.set(queued)
        self.in_flight.set(in_flight)
        self.warm.set(warm)
        self.sessions.set(sessions)
        self.draining.set(1 if draining else 0)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
