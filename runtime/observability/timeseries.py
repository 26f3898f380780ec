"""Reading the metrics back: fleet totals, latest gauges and TimeSeries history.

    store = MetricsStore(client, keys)
    await store.totals()        # [Total("runs_completed", {"agent": "triage"}, 4000.0), …]
    await store.gauges()        # latest value per label set: [Total("inbox_lag", {…}, 12.0, at)]
    now = int(time.time() * 1000)
    await store.range("runs_completed", now - 3_600_000, now, bucket_ms=60_000)
    await store.latency_range("run_latency", now - 3_600_000, now, bucket_ms=60_000)

What the :class:`~runtime.observability.metrics.MetricsRecorder` of each process wrote is
aggregated here across processes: the totals hash holds fleet sums already; a range is one
``TS.MRANGE … FILTER prefix=… metric=… stat=… res=… GROUPBY metric REDUCE …``. Without the
TimeSeries module :meth:`MetricsStore.history_available` is False and ranges are empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio
import redis.exceptions

from runtime.keys import Keys
from runtime.observability.metrics import clean_labels, decode_field, spec_of
from runtime.redis.connection import Batch, read_server_info, run_batch, translate_errors

__all__ = ["MetricsStore", "Total"]

_SUFFIXES = ("_sum", "_count", "_bucket")
_REDUCERS = ("sum", "min", "max", "avg", "count", "range")
_STATS = {"counter": ("sum",), "latency": ("count", "sum", "max", "min"), "gauge": ("last",)}
# per-series aggregation of a bucket, by statistic (gauges: the last value of the bucket,
# the maximum in roll-ups, which already hold per-bucket maxima)
_AGGREGATION = {"sum": "sum", "count": "sum", "max": "max", "min": "min", "last": "last"}


@dataclass(frozen=True)
class Total:
    """One figure of the fleet: *metric* with its *labels* and its *value*.

    *metric* is a counter's catalogue name, or a latency's ``<name>_sum``, ``<name>_count``
    or ``<name>_bucket`` (with the label ``le``: cumulative, Prometheus' histogram), or a
    gauge's name (then *at* is when it was written, unix seconds).
    """

    metric: str
    labels: dict[str, str] = field(default_factory=dict)
    value: float = 0.0
    at: float | None = None

    @property
    def family(self) -> str:
        """The catalogue name (``run_latency`` for ``run_latency_bucket``)."""
        for suffix in _SUFFIXES:
            base = self.metric.removesuffix(suffix)
            if base != self.metric and _is_latency(base):
                return base
        return self.metric


def _is_latency(name: str) -> bool:
    try:
        return spec_of(name).kind == "latency"
    except ValueError:
        return False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _sort_key(total: Total) -> tuple[str, list[tuple[str, str]]]:
    return total.metric, sorted(total.labels.items())


def _groups(reply: Any) -> list[tuple[str, list[Any]]]:
    """``TS.MRANGE`` groups as (name, samples), from a RESP2 list or a RESP3 map."""
    if isinstance(reply, dict):
        return [(_text(name), list(parts[-1])) for name, parts in reply.items()]
    return [(_text(parts[0]), list(parts[-1])) for parts in reply]


def _samples(samples: list[Any]) -> list[tuple[int, float]]:
    return [(int(stamp), float(value)) for stamp, value in samples]


class MetricsStore:
    """Reads what the :class:`~runtime.observability.metrics.MetricsRecorder`\\ s wrote.

    *gauge_max_age_seconds*: gauges written longer ago are left out of :meth:`gauges`
    (e.g. an inbox nobody samples any more); None keeps them all.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: Keys,
        *,
        gauge_max_age_seconds: float | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.gauge_max_age_seconds = gauge_max_age_seconds
        self._history: bool | None = None

    async def history_available(self) -> bool:
        """Whether the server loads the TimeSeries module (asked once per store)."""
        if self._history is None:
            info = await read_server_info(self.client)
            self._history = info.has("timeseries")
        return self._history

    async def _fields(self) -> list[tuple[str, dict[str, str], str]]:
        with translate_errors("read the metric totals"):
            raw = await self.client.hgetall(self.keys.metrics_totals())
        fields = []
        for name, value in raw.items():
            metric, labels = decode_field(_text(name))
            fields.append((metric, labels, _text(value)))
        return fields

    async def totals(self) -> list[Total]:
        """Counters, latency sums, counts and buckets of the whole fleet, sorted by name and
        labels (gauges excluded: see :meth:`gauges`)."""
        totals = []
        for metric, labels, value in await self._fields():
            family = Total(metric).family
            try:
                kind = spec_of(family).kind
            except ValueError:  # a field of a newer version: not ours to show
                continue
            number = _number(value)  # a field someone else wrote: not a number, left out
            if kind != "gauge" and number is not None:
                totals.append(Total(metric, labels, number))
        return sorted(totals, key=_sort_key)

    async def gauges(self) -> list[Total]:
        """The latest value of every gauge per label set (the last written by any process:
        two supervisors sampling one inbox are not added up)."""
        now = await self._now()
        gauges = []
        for metric, labels, value in await self._fields():
            try:
                if spec_of(metric).kind != "gauge":
                    continue
            except ValueError:
                continue
            text, _, stamp = value.partition(" ")
            number = _number(text)
            if number is None or (stamp and not stamp.isdigit()):
                continue  # not what a recorder writes
            at = int(stamp) / 1000 if stamp else None
            limit = self.gauge_max_age_seconds
            if limit is not None and at is not None and now - at > limit:
                continue
            gauges.append(Total(metric, labels, number, at))
        return sorted(gauges, key=_sort_key)

    async def _now(self) -> float:
        if self.gauge_max_age_seconds is None:
            return 0.0
        with translate_errors("read the server time"):
            seconds, micros = await self.client.time()
        return float(seconds) + micros / 1e6

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
        """*metric* per bucket of *bucket_ms* across the fleet: [(bucket start ms, value)],
        buckets without samples left out; [] without the TimeSeries module.

        Each process's series is aggregated per bucket (sum for counters, the last value of
        a gauge), then the processes are combined with *reduce* (``sum``, ``max``, ``min``,
        ``avg``, ``count``; default ``sum``, ``max`` for gauges: two supervisors sampling
        one inbox are not added up). *labels* narrows to records with those labels. A
        latency has several series, chosen by *stat* (``count`` (default), ``sum``,
        ``max``, ``min``); :meth:`latency_range` gives the average. *resolution*
        ``rollup`` reads the roll-up series (``observability.metrics_rollup_seconds``), kept
        longer than the raw samples.
        """
        kind = spec_of(metric).kind
        stat = stat or _STATS[kind][0]
        if stat not in _STATS[kind]:
            raise ValueError(f"a {kind} has the statistics {', '.join(_STATS[kind])}, not {stat!r}")
        reduce = reduce or ("max" if kind == "gauge" else "sum")
        if reduce not in _REDUCERS:
            raise ValueError(f"reduce must be one of {', '.join(_REDUCERS)}, not {reduce!r}")
        aggregation = _AGGREGATION[stat] if resolution == "raw" or stat != "last" else "max"
        groups = await self._mrange(
            metric, start_ms, end_ms, bucket_ms, aggregation,
            [f"stat={stat}", *self._filters(labels, resolution)], ("metric", reduce),
        )  # fmt: skip
        return _samples(groups[0][1]) if groups else []

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
        """Average milliseconds of the latency *metric* per bucket across the fleet: the
        bucket's sum divided by its count, exactly (one ``TS.MRANGE … GROUPBY stat``)."""
        spec_of(metric, "latency")
        groups = dict(
            await self._mrange(
                metric, start_ms, end_ms, bucket_ms, "sum",
                ["stat=(sum,count)", *self._filters(labels, resolution)], ("stat", "sum"),
            )
        )  # fmt: skip
        counts = dict(_samples(groups.get("stat=count", [])))
        return [
            (stamp, total / counts[stamp])
            for stamp, total in _samples(groups.get("stat=sum", []))
            if counts.get(stamp)
        ]

    def _filters(self, labels: dict[str, str] | None, resolution: str) -> list[str]:
        if resolution not in ("raw", "rollup"):
            raise ValueError(f"resolution must be 'raw' or 'rollup', not {resolution!r}")
        pairs = clean_labels(labels or {})  # unknown keys: ValueError naming the catalogue
        return [f"res={resolution}", *(f"{key}={value}" for key, value in pairs)]

    async def _mrange(
        self,
        metric: str,
        start_ms: int,
        end_ms: int,
        bucket_ms: int,
        aggregation: str,
        filters: list[str],
        group: tuple[str, str],
    ) -> list[tuple[str, list[Any]]]:
        if bucket_ms < 1:
            raise ValueError(f"bucket_ms must be at least 1, not {bucket_ms}")
        if not await self.history_available():
            return []
        batch = Batch()
        batch.execute_command(
            "TS.MRANGE", int(start_ms), int(end_ms), "AGGREGATION", aggregation, int(bucket_ms),
            "FILTER", f"prefix={self.keys.prefix}", f"metric={metric}", *filters,
            "GROUPBY", group[0], "REDUCE", group[1],
        )  # fmt: skip
        with translate_errors(f"read the history of {metric}"):
            (reply,) = await run_batch(self.client, batch)
            if isinstance(reply, redis.exceptions.RedisError):
                raise reply
        return _groups(reply)
