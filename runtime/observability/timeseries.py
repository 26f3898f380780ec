"""Reading the metrics back: fleet totals, latest gauges and TimeSeries history.

Stub: the implementation follows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import redis.asyncio

from runtime.keys import Keys

__all__ = ["MetricsStore", "Total"]


@dataclass(frozen=True)
class Total:
    """One figure of the fleet: *metric* with its *labels* and its *value*."""

    metric: str
    labels: dict[str, str] = field(default_factory=dict)
    value: float = 0.0
    at: float | None = None


class MetricsStore:
    """Reads what :class:`~runtime.observability.metrics.MetricsRecorder`\\ s wrote."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: Keys,
        *,
        gauge_max_age_seconds: float | None = None,
    ) -> None:
        self.client = client
        self.keys = keys

    async def history_available(self) -> bool:
        """Whether the server loads the TimeSeries module."""
        return False

    async def totals(self) -> list[Total]:
        """Counters, latency sums, counts and buckets of the whole fleet."""
        return []

    async def gauges(self) -> list[Total]:
        """The latest value of every gauge, per label set."""
        return []

    async def range(
        self,
        metric: str,
        start_ms: int,
        end_ms: int,
        *,
        bucket_ms: int,
        labels: dict[str, str] | None = None,
        reduce: str | None = None,
        stat: str | None = None,
        resolution: Literal["raw", "rollup"] = "raw",
    ) -> list[tuple[int, float]]:
        """*metric* per bucket across the fleet (``TS.MRANGE … GROUPBY … REDUCE``)."""
        return []

    async def latency_range(
        self,
        metric: str,
        start_ms: int,
        end_ms: int,
        *,
        bucket_ms: int,
        labels: dict[str, str] | None = None,
        resolution: Literal["raw", "rollup"] = "raw",
    ) -> list[tuple[int, float]]:
        """Average milliseconds of the latency *metric* per bucket (sum / count)."""
        return []
