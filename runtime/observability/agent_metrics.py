"""The seed's ``AgentMetrics`` API over the runtime's metrics.

Stub: the implementation follows.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio

from runtime.keys import Keys

__all__ = ["AgentMetrics"]


class AgentMetrics:
    """Per-agent metrics with the seed package's names."""

    def __init__(
        self,
        name: str,
        redis_url: str | None = None,
        *,
        client: redis.asyncio.Redis | None = None,
        keys: Keys | None = None,
        retention_ms: int = 3_600_000,
    ) -> None:
        self.name = name

    def record(
        self,
        latency_ms: float | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cache_hit: bool | None = None,
    ) -> None:
        """Record one request of the agent (buffered, no I/O)."""

    async def arecord(
        self,
        latency_ms: float | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cache_hit: bool | None = None,
    ) -> None:
        """Record one request and write it."""

    def get_stats(self) -> dict[str, Any]:
        """count, latency_avg/min/max, input_tokens_sum, output_tokens_sum, cache_hit_rate."""
        return {}

    def range(self, metric: str, from_time: int, to_time: int) -> list[tuple[int, float]]:
        """(timestamp ms, value) of *metric* between *from_time* and *to_time* (ms)."""
        return []

    def close(self) -> None:
        """Write what is buffered and release the connection."""
