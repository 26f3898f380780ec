"""The metric catalogue and the recorder every process writes its samples through.

    m = MetricsRecorder(keys, settings, process="host:instance:slot")
    m.count("runs_completed", 1, agent="triage")     # sync, thread-safe, no I/O
    m.observe("run_latency", 153.2, agent="triage")  # milliseconds
    m.gauge("inbox_lag", 12, target="triage")
    await m.flush(client)                            # one round trip for all buffered
    async with anyio.create_task_group() as tg:      # or: flush every
        await tg.start(m.run, client)                # observability.flush_interval_seconds

Stub: the implementation follows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import redis.asyncio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from runtime.keys import Keys
from runtime.settings.model import Settings

__all__ = [
    "LABELS",
    "LATENCY_BUCKETS_MS",
    "METRICS",
    "MetricKind",
    "MetricSpec",
    "MetricsRecorder",
]

MetricKind = Literal["counter", "latency", "gauge"]


@dataclass(frozen=True)
class MetricSpec:
    """What a metric is: its kind and the help text `/metrics` shows."""

    kind: MetricKind
    help: str


METRICS: dict[str, MetricSpec] = {
    "runs_submitted": MetricSpec("counter", "Runs submitted by apps."),
    "runs_started": MetricSpec("counter", "Run attempts started by workers."),
    "runs_completed": MetricSpec("counter", "Runs that completed."),
    "runs_failed": MetricSpec("counter", "Runs that failed for good."),
    "runs_cancelled": MetricSpec("counter", "Runs cancelled."),
    "model_calls": MetricSpec("counter", "Model calls made by agents."),
    "tokens_in": MetricSpec("counter", "Input tokens of model calls."),
    "tokens_out": MetricSpec("counter", "Output tokens of model calls."),
    "tool_calls": MetricSpec("counter", "Tool calls made by agents."),
    "retries": MetricSpec("counter", "Deliveries scheduled again after a failure."),
    "reclaims": MetricSpec("counter", "Entries taken back from a consumer that went away."),
    "dead_letters": MetricSpec("counter", "Entries moved to a dead-letter stream."),
    "cache_hits": MetricSpec("counter", "Model responses served from the cache."),
    "cache_misses": MetricSpec("counter", "Model calls the cache could not serve."),
    "run_latency": MetricSpec("latency", "Time from a run's start to its end (ms)."),
    "turn_latency": MetricSpec("latency", "Time of one agent turn (ms)."),
    "handler_latency": MetricSpec("latency", "Time a task handler ran (ms)."),
    "queue_wait": MetricSpec("latency", "Time an entry waited in its inbox (ms)."),
    "inbox_lag": MetricSpec("gauge", "Entries of an inbox not yet delivered to a worker."),
    "inbox_pending": MetricSpec("gauge", "Entries of an inbox delivered and not yet acked."),
    "inbox_oldest_pending_age": MetricSpec(
        "gauge", "Age of an inbox's oldest delivered, unacked entry (seconds)."
    ),
}

LABELS: tuple[str, ...] = ("target", "agent", "tool", "model", "status")
"""The label keys a record may carry (all optional, string values)."""

LATENCY_BUCKETS_MS: tuple[float, ...] = (
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, float("inf"),
)  # fmt: skip
"""Upper bounds (ms, inclusive) of the cumulative histogram buckets kept per latency."""


class MetricsRecorder:
    """Buffers metric records in memory and writes them to Redis in one round trip per flush."""

    def __init__(
        self,
        keys: Keys,
        settings: Settings,
        *,
        process: str,
        clock: Callable[[], float] = time.time,
        max_pending: int = 100_000,
    ) -> None:
        self.keys = keys
        self.settings = settings
        self.process = process
        self.dropped = 0

    def count(self, metric: str, value: float = 1, **labels: str | None) -> None:
        """Add *value* to the counter *metric*."""

    def observe(self, metric: str, value_ms: float, **labels: str | None) -> None:
        """Record one latency *value_ms* (milliseconds) of *metric*."""

    def gauge(self, metric: str, value: float, **labels: str | None) -> None:
        """Set the gauge *metric* to *value*."""

    async def flush(self, client: redis.asyncio.Redis) -> None:
        """Write everything buffered in one round trip; never raises on a Redis error."""

    async def run(
        self,
        client: redis.asyncio.Redis,
        *,
        task_status: TaskStatus[None] = TASK_STATUS_IGNORED,
    ) -> None:
        """Flush every ``observability.flush_interval_seconds`` until cancelled."""
        task_status.started()
