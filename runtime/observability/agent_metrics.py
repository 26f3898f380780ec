"""The seed's ``AgentMetrics`` API over the runtime's metrics.

    metrics = AgentMetrics("triage", redis_url="redis://localhost:6379")
    metrics.record(latency_ms=153.2, input_tokens=812, output_tokens=95, cache_hit=False)
    metrics.get_stats()   # {"count": 1, "latency_avg": 153.2, …, "cache_hit_rate": 0.0}
    metrics.close()

A record is the runtime's ``runs_completed``, ``run_latency``, ``tokens_in``, ``tokens_out``
and ``cache_hits``/``cache_misses`` with the label ``agent=<name>``, written by a
:class:`~runtime.observability.metrics.MetricsRecorder` of the instance's own (one series per
instance and process: no sample is lost when many processes record at once). ``record`` only
buffers; a background thread (its own event loop and connection) writes every
``observability.flush_interval_seconds``; ``get_stats``, ``range`` and ``close`` write what
is buffered first. The figures are fleet-wide: they include what workers recorded for the
agent of that name.
"""

from __future__ import annotations

import atexit
import math
import numbers
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
import msgspec
import redis.asyncio

from runtime.errors import AgentsWorkerError
from runtime.keys import Keys
from runtime.observability.metrics import METRICS, MetricsRecorder, clean_label, spec_of
from runtime.observability.timeseries import MetricsStore, Total
from runtime.redis.connection import create_client
from runtime.settings.loader import load_settings
from runtime.settings.model import Settings

__all__ = ["AgentMetrics"]

# the seed's metric names → the catalogue's
SEED_NAMES = {
    "latency": "run_latency",
    "input_tokens": "tokens_in",
    "output_tokens": "tokens_out",
    "cache_hit": "cache_hits",
    "count": "runs_completed",
}
_ALL_TIME_MS = 10**13  # one bucket holding every sample (year 2286)
_open: weakref.WeakSet[AgentMetrics] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # pragma: no cover - runs at interpreter exit
    for metrics in list(_open):
        metrics.close()


def _check_amount(what: str, value: float | None) -> None:
    """:class:`ValueError` unless *value* is None or a non-negative finite number."""
    if value is None:
        return
    try:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and value >= 0
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        raise ValueError(f"{what} must be a non-negative finite number or None, not {value!r}")


class AgentMetrics:
    """Per-agent metrics with the seed package's names.

    *redis_url* (default: ``redis.url``, else ``$REDIS_URL``, else ``redis://localhost:6379``)
    or *client* (its connection settings are used for a connection of the instance's own);
    *keys* (default: ``Keys(redis.key_prefix)``); *retention_ms*: how long raw samples are
    kept (``TS.INFO`` retention of the series). *settings* default to
    :func:`runtime.load_settings`; *clock* (unix seconds) stamps the samples (tests pin it).
    """

    def __init__(
        self,
        name: str,
        redis_url: str | None = None,
        *,
        client: redis.asyncio.Redis | None = None,
        keys: Keys | None = None,
        retention_ms: int = 3_600_000,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        base = settings or load_settings()
        observability = msgspec.structs.replace(
            base.observability, metrics=True, metrics_retention_seconds=retention_ms / 1000
        )
        self.name = name
        self.settings = msgspec.structs.replace(base, observability=observability)
        self.keys = keys or Keys(base.redis.key_prefix)
        self._agent = clean_label(name)
        process = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.recorder = MetricsRecorder(self.keys, self.settings, process=process, clock=clock)
        self._seen = (math.inf, -math.inf)  # this instance's latency min and max
        self._seen_lock = threading.Lock()
        url = redis_url or base.redis.url or os.environ.get("REDIS_URL")
        self._client = self._connect(url or "redis://localhost:6379", None if redis_url else client)
        self._store = MetricsStore(self._client, self.keys)
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._ready = threading.Event()
        self._closed = False
        self._thread = threading.Thread(
            target=anyio.run, args=(self._serve,), name=f"agent-metrics:{name}", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        _open.add(self)

    def _connect(self, url: str, template: redis.asyncio.Redis | None) -> redis.asyncio.Redis:
        if template is None:
            return create_client(self.settings.redis, url)
        pool: Any = template.connection_pool  # redis-py leaves its attributes untyped
        return redis.asyncio.Redis.from_pool(  # the client owns (and closes) its pool
            redis.asyncio.ConnectionPool(
                connection_class=pool.connection_class, **pool.connection_kwargs
            )
        )

    async def _serve(self) -> None:
        """The background thread's loop: flush periodically until :meth:`close`."""
        try:
            async with anyio.from_thread.BlockingPortal() as portal:
                self._portal = portal
                async with anyio.create_task_group() as tg:
                    await tg.start(self.recorder.run, self._client)
                    self._ready.set()
                    await portal.sleep_until_stopped()
                    tg.cancel_scope.cancel()  # the recorder flushes once more
        finally:
            self._ready.set()
            with anyio.CancelScope(shield=True):
                await self._client.aclose()

    def _call(self, fn: Callable[[], Any]) -> Any:
        if self._closed or self._portal is None:
            raise AgentsWorkerError(f"AgentMetrics({self.name!r}) is closed")
        return self._portal.call(fn)

    def record(
        self,
        latency_ms: float | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cache_hit: bool | None = None,
    ) -> None:
        """Record one request of the agent (buffered: no I/O, thread-safe).

        *latency_ms*, *input_tokens* and *output_tokens* are non-negative finite numbers,
        *cache_hit* a bool (each may be None): anything else is a :class:`ValueError` and
        nothing of the call is recorded."""
        for what, value in (
            ("latency_ms", latency_ms), ("input_tokens", input_tokens),
            ("output_tokens", output_tokens),
        ):  # fmt: skip
            _check_amount(what, value)
        if cache_hit is not None and not isinstance(cache_hit, bool):
            raise ValueError(f"cache_hit must be True, False or None, not {cache_hit!r}")
        rec, agent = self.recorder, self._agent
        rec.count("runs_completed", 1, agent=agent)
        if latency_ms is not None:
            rec.observe("run_latency", latency_ms, agent=agent)
            with self._seen_lock:
                low, high = self._seen
                self._seen = (min(low, latency_ms), max(high, latency_ms))
        if input_tokens is not None:
            rec.count("tokens_in", input_tokens, agent=agent)
        if output_tokens is not None:
            rec.count("tokens_out", output_tokens, agent=agent)
        if cache_hit is not None:
            rec.count("cache_hits" if cache_hit else "cache_misses", 1, agent=agent)

    async def arecord(
        self,
        latency_ms: float | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cache_hit: bool | None = None,
    ) -> None:
        """Record one request and write it (on the background thread: the caller's event
        loop is not blocked)."""
        self.record(latency_ms, input_tokens, output_tokens, cache_hit)
        await anyio.to_thread.run_sync(self.flush)

    def flush(self) -> None:
        """Write what is buffered now."""
        self._call(lambda: self.recorder.flush(self._client))

    def get_stats(self) -> dict[str, Any]:
        """``count``, ``latency_avg``/``min``/``max`` (ms), ``input_tokens_sum``,
        ``output_tokens_sum`` and ``cache_hit_rate`` (hits / requests with a cache outcome)
        of the agent, fleet-wide. Min and max come from the history (the retained samples);
        without the TimeSeries module, from this instance's own records."""
        stats: dict[str, Any] = self._call(self._stats)
        return stats

    async def aget_stats(self) -> dict[str, Any]:
        """:meth:`get_stats` without blocking the caller's event loop."""
        return await anyio.to_thread.run_sync(self.get_stats)

    async def _stats(self) -> dict[str, Any]:
        await self.recorder.flush(self._client)
        sums: dict[str, float] = {}
        for total in await self._store.totals():
            if total.labels.get("agent") == self._agent:
                sums[total.metric] = sums.get(total.metric, 0.0) + total.value
        count = sums.get("run_latency_count", 0.0)
        hits, misses = sums.get("cache_hits", 0.0), sums.get("cache_misses", 0.0)
        low, high = await self._extremes()
        return {
            "count": int(sums.get("runs_completed", 0.0)),
            "latency_avg": sums.get("run_latency_sum", 0.0) / count if count else 0.0,
            "latency_min": low if count else 0.0,
            "latency_max": high if count else 0.0,
            "input_tokens_sum": sums.get("tokens_in", 0.0),
            "output_tokens_sum": sums.get("tokens_out", 0.0),
            "cache_hit_rate": hits / (hits + misses) if hits + misses else 0.0,
        }

    async def _extremes(self) -> tuple[float, float]:
        if not await self._store.history_available():
            low, high = self._seen
            return (float(low), float(high)) if low <= high else (0.0, 0.0)
        found = []
        for stat in ("min", "max"):
            points = await self._store.range(
                "run_latency", 0, _ALL_TIME_MS - 1, bucket_ms=_ALL_TIME_MS,
                labels={"agent": self._agent}, stat=stat, reduce=stat,
            )  # fmt: skip
            found.append(points[0][1] if points else 0.0)
        return found[0], found[1]

    def range(self, metric: str, from_time: int, to_time: int) -> list[tuple[int, float]]:
        """(timestamp ms, value) per millisecond of *metric* between *from_time* and
        *to_time* (ms, inclusive), summed over the fleet's processes: ``latency`` (the
        average of the millisecond), ``input_tokens``, ``output_tokens``, ``cache_hit``
        (hits), ``count`` (requests), or a catalogue name. [] without the TimeSeries module.
        """
        name = SEED_NAMES.get(metric, metric)
        if name not in METRICS:
            raise ValueError(
                f"unknown metric {metric!r}: use one of {', '.join(SEED_NAMES)} or a name of "
                "the catalogue (runtime.observability.metrics.METRICS)"
            )
        points: list[tuple[int, float]] = self._call(lambda: self._range(name, from_time, to_time))
        return points

    async def _range(self, name: str, start: int, end: int) -> list[tuple[int, float]]:
        await self.recorder.flush(self._client)
        labels = {"agent": self._agent}
        if spec_of(name).kind == "latency":
            return await self._store.latency_range(name, start, end, bucket_ms=1, labels=labels)
        return await self._store.range(name, start, end, bucket_ms=1, labels=labels)

    def latency_histogram(self) -> tuple[list[tuple[str, float]], float, float]:
        """The agent's cumulative latency buckets ``[(le, count)]`` (ms; see
        :data:`~runtime.observability.metrics.LATENCY_BUCKETS_MS`), their sum and count."""
        totals: list[Total] = self._call(self._totals)
        buckets: dict[str, float] = {}
        total_sum = total_count = 0.0
        for total in totals:
            if total.labels.get("agent") != self._agent:
                continue
            if total.metric == "run_latency_bucket":
                le = total.labels.get("le", "+Inf")
                buckets[le] = buckets.get(le, 0.0) + total.value
            elif total.metric == "run_latency_sum":
                total_sum += total.value
            elif total.metric == "run_latency_count":
                total_count += total.value
        ordered = sorted(buckets.items(), key=lambda item: float(item[0]))
        return ordered, total_sum, total_count

    async def _totals(self) -> list[Total]:
        await self.recorder.flush(self._client)
        return await self._store.totals()

    def close(self) -> None:
        """Write what is buffered and release the connection and the thread (idempotent)."""
        if self._closed:
            return
        portal, self._closed = self._portal, True
        _open.discard(self)
        if portal is not None:
            portal.call(portal.stop)
        self._thread.join()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the caller's event loop."""
        await anyio.to_thread.run_sync(self.close)

    def __enter__(self) -> AgentMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
