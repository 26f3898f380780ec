"""The metric catalogue and the recorder every process writes its samples through.

    m = MetricsRecorder(keys, settings, process="host:instance:slot")
    m.count("runs_completed", 1, agent="triage")     # sync, thread-safe, no I/O
    m.observe("run_latency", 153.2, agent="triage")  # milliseconds
    m.gauge("inbox_lag", 12, target="triage")
    await m.flush(client)                            # one round trip for all buffered
    async with anyio.create_task_group() as tg:      # or: flush every
        await tg.start(m.run, client)                # observability.flush_interval_seconds

What one flush writes (one round trip, see :mod:`runtime.observability.metrics_flush`):

- per process and label set, one TimeSeries per statistic, key
  ``keys.metric_series(metric, "<process>:<stat>:<labels>")`` (``<prefix>:ts:{…}``: the
  series and its roll-up share a Redis Cluster slot, as ``TS.CREATERULE`` needs), labelled
  ``metric``, ``stat``, ``process``, ``prefix`` (the key prefix), ``res`` (``raw``) and the
  record's own labels.
  Counters have a ``sum`` series (``DUPLICATE_POLICY SUM``: samples of one millisecond add
  up, so nothing is lost however many records land in it); latencies ``sum``, ``count``
  (both SUM), ``max`` (MAX) and ``min`` (MIN); gauges ``last`` (LAST). Every write refreshes
  the key's expiry (``PEXPIRE`` = ``observability.metrics_retention_seconds``). With
  ``observability.metrics_rollup_seconds`` > 0 each series has a roll-up series (same key
  plus ``:rollup``, label ``res=rollup``, kept ``metrics_rollup_retention_seconds``) fed by a
  ``TS.CREATERULE`` (sum, max, min; max for gauges).
- fleet totals in the hash ``keys.metrics_totals()`` with ``HINCRBYFLOAT`` (counters, and a
  latency's ``_sum``, ``_count`` and cumulative ``_bucket`` figures); gauges there hold the
  latest value per label set (``HSET``, ``"<value> <ms>"``). Field names are
  :func:`encode_field`'s: ``<name>|<label>=<value>|…`` with the labels sorted.

Without the TimeSeries module the totals and gauges are still written; the history is off,
said once per process in the log (``metrics.history_off``).
"""

from __future__ import annotations

import bisect
import math
import numbers
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import anyio
import redis.asyncio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from runtime.keys import Keys
from runtime.log import get_logger
from runtime.observability.metrics_flush import Flusher
from runtime.settings.model import Settings

__all__ = [
    "LABELS",
    "LATENCY_BUCKETS_MS",
    "METRICS",
    "MetricKind",
    "MetricSpec",
    "MetricsRecorder",
    "clean_label",
    "decode_field",
    "encode_field",
    "spec_of",
]

log = get_logger(__name__)

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
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, math.inf,
)  # fmt: skip
"""Upper bounds (ms, inclusive) of the cumulative histogram buckets kept per latency: 5, 10,
25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000 and +Inf. In the totals a bucket
is the field ``<metric>_bucket`` with the label ``le`` (``"5.0"`` … ``"60000.0"``, ``"+Inf"``:
Prometheus' spelling)."""

# (stat, DUPLICATE_POLICY, roll-up aggregation) of the series each kind writes.
SERIES_STATS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "counter": (("sum", "SUM", "sum"),),
    "latency": (
        ("sum", "SUM", "sum"),
        ("count", "SUM", "sum"),
        ("max", "MAX", "max"),
        ("min", "MIN", "min"),
    ),
    "gauge": (("last", "LAST", "max"),),
}

_LABEL_VALUE_MAX = 100
_UNSAFE = re.compile(r"[^\w.\-/@+]")
_UNSAFE_PROCESS = re.compile(r"[^\w.\-/@+:]")
_CACHE_MAX = 4096


def clean_label(value: object, *, process: bool = False) -> str:
    """*value* as a label value safe in keys, TimeSeries filters and field names: every
    character other than letters, digits and ``. - / @ +`` (and ``:`` in a process name)
    becomes ``_``; at most 100 characters; never empty."""
    pattern = _UNSAFE_PROCESS if process else _UNSAFE
    text = pattern.sub("_", str(value))[:_LABEL_VALUE_MAX]
    return text or "_"


def _finite(value: float, what: str) -> float:
    """*value* as a float, or :class:`ValueError` when it is not a finite number."""
    try:
        number = float(value) if isinstance(value, numbers.Real) else math.nan
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return number


def le_text(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``5.0``, ``+Inf``)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def encode_field(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    """The totals-hash field of *name* with *labels* (sorted pairs of cleaned values)."""
    return "|".join([name, *(f"{key}={value}" for key, value in labels)])


def decode_field(field: str) -> tuple[str, dict[str, str]]:
    """The name and labels of a totals-hash field (inverse of :func:`encode_field`)."""
    name, *pairs = field.split("|")
    labels = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
    return name, labels


def spec_of(metric: str, kind: MetricKind | None = None) -> MetricSpec:
    """The catalogue entry of *metric*; :class:`ValueError` naming the catalogue when it is
    unknown or (with *kind*) of another kind."""
    spec = METRICS.get(metric)
    if spec is None:
        raise ValueError(
            f"unknown metric {metric!r}; the catalogue (runtime.observability.metrics.METRICS)"
            f" has: {', '.join(METRICS)}"
        )
    if kind is not None and spec.kind != kind:
        verb = {"counter": "count()", "latency": "observe()", "gauge": "gauge()"}[spec.kind]
        raise ValueError(f"metric {metric!r} is a {spec.kind}: record it with {verb}")
    return spec


def clean_labels(labels: Mapping[str, object | None]) -> tuple[tuple[str, str], ...]:
    """Known label keys with cleaned values, sorted; None values left out."""
    pairs = []
    for key, value in labels.items():
        if key not in LABELS:
            raise ValueError(
                f"unknown metric label {key!r}; the labels of the catalogue "
                f"(runtime.observability.metrics.LABELS) are: {', '.join(LABELS)}"
            )
        if value is not None:
            pairs.append((key, clean_label(value)))
    return tuple(sorted(pairs))


@dataclass(frozen=True, eq=False)
class Series:
    """One TimeSeries a process writes (one statistic of one metric and label set)."""

    metric: str
    stat: str
    labels: tuple[tuple[str, str], ...]
    key: str
    rollup_key: str | None
    policy: str
    rollup_aggregation: str


@dataclass(frozen=True, eq=False)
class Family:
    """A metric with one label set, as one process writes it: its series and total fields."""

    metric: str
    kind: MetricKind
    labels: tuple[tuple[str, str], ...]
    series: tuple[Series, ...]
    fields: tuple[str, ...]  # counter/gauge: (field,); latency: (sum, count, *buckets)


def build_family(
    keys: Keys, process: str, metric: str, kind: MetricKind, labels: tuple[tuple[str, str], ...],
    rollup: bool,
) -> Family:  # fmt: skip
    """The series and fields of *metric* with *labels*, written by *process*."""
    part = ",".join(f"{key}={value}" for key, value in labels) or "-"
    series = []
    for stat, policy, aggregation in SERIES_STATS[kind]:
        key = keys.metric_series(metric, f"{process}:{stat}:{part}")
        rollup_key = key + ":rollup" if rollup else None
        series.append(Series(metric, stat, labels, key, rollup_key, policy, aggregation))
    if kind == "latency":
        fields = [encode_field(f"{metric}_sum", labels), encode_field(f"{metric}_count", labels)]
        for bound in LATENCY_BUCKETS_MS:
            with_le = tuple(sorted((*labels, ("le", le_text(bound)))))
            fields.append(encode_field(f"{metric}_bucket", with_le))
    else:
        fields = [encode_field(metric, labels)]
    return Family(metric, kind, labels, tuple(series), tuple(fields))


class MetricsRecorder:
    """Buffers metric records in memory and writes them to Redis in one round trip per flush.

    The record methods (:meth:`count`, :meth:`observe`, :meth:`gauge`) are synchronous,
    thread-safe and do no I/O: they validate the metric and labels (:class:`ValueError`
    naming the catalogue when unknown, and for a value that is not a finite number) and add
    to the buffer. Samples of one series and one
    millisecond are combined in the buffer (summed for counters). The buffer keeps at most
    *max_pending* samples of history (series × millisecond); past that, new samples of
    history are dropped and counted in :attr:`dropped` (logged once per episode), while the
    totals stay exact. A flush that meets a Redis error keeps what was not written for the
    next flush, logs once per episode of failures and never raises it; what Redis refuses
    for a reason of its own (not a full, read-only or loading server) five flushes in a row
    is given up, counted (:attr:`dropped`, :attr:`dropped_totals`) and logged.

    With ``observability.metrics`` off the recorder accepts every call and writes nothing.
    *clock* (unix seconds) stamps the samples; tests pin it.
    """

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
        self.process = clean_label(process, process=True)
        self.enabled = settings.observability.metrics
        self._clock = clock
        self._rollup = settings.observability.metrics_rollup_seconds > 0
        self._families: dict[tuple[object, ...], Family] = {}
        self._lock = threading.Lock()
        self._flusher = Flusher(keys, settings, self.process, self._lock, max_pending)

    @property
    def history(self) -> bool | None:
        """Whether metric history is written: None until the first flush tells."""
        return self._flusher.history

    @property
    def dropped(self) -> int:
        """Samples of history dropped (buffer full, older than the retention, refused)."""
        return self._flusher.dropped

    @property
    def dropped_totals(self) -> int:
        """Totals increments given up: a field Redis refused five flushes in a row (e.g. a
        field of the totals hash that is not a number), logged as ``metrics.total_dropped``."""
        return self._flusher.dropped_totals

    @property
    def flush_failures(self) -> int:
        """Flushes that met a Redis error (what they could not write was kept)."""
        return self._flusher.failures

    def _family(self, metric: str, kind: MetricKind, labels: dict[str, str | None]) -> Family:
        cache_key = (metric, kind, *labels.items())
        family = self._families.get(cache_key)
        if family is None:
            spec_of(metric, kind)
            cleaned = clean_labels(labels)
            family = build_family(self.keys, self.process, metric, kind, cleaned, self._rollup)
            if len(self._families) >= _CACHE_MAX:
                self._families.clear()
            self._families[cache_key] = family
        return family

    def count(self, metric: str, value: float = 1, **labels: str | None) -> None:
        """Add *value* (a finite number: :class:`ValueError` for NaN or ±inf, which Redis
        would refuse) to the counter *metric* (a catalogue counter) for *labels*."""
        family = self._family(metric, "counter", labels)
        value = _finite(value, f"count of {metric!r}")
        if not self.enabled or not value:
            return
        ms = int(self._clock() * 1000)
        with self._lock:
            self._flusher.add_total(family.fields[0], value)
            self._flusher.add_sample(family.series[0], ms, value)

    def observe(self, metric: str, value_ms: float, **labels: str | None) -> None:
        """Record one latency *value_ms* (milliseconds; negative counts as 0) of *metric*."""
        family = self._family(metric, "latency", labels)
        if not math.isfinite(value_ms):
            raise ValueError(f"latency of {metric!r} must be a finite number, not {value_ms!r}")
        if not self.enabled:
            return
        value = max(0.0, float(value_ms))
        ms = int(self._clock() * 1000)
        bucket = bisect.bisect_left(LATENCY_BUCKETS_MS, value)
        total, count, maximum, minimum = family.series
        with self._lock:
            flusher = self._flusher
            flusher.add_total(family.fields[0], value)
            flusher.add_total(family.fields[1], 1)
            flusher.add_bucket(family, bucket)
            flusher.add_sample(total, ms, value)
            flusher.add_sample(count, ms, 1)
            flusher.add_sample(maximum, ms, value)
            flusher.add_sample(minimum, ms, value)

    def observe_many(self, metric: str, values_ms: Sequence[float], **labels: str | None) -> None:
        """Record many latencies of *metric* at once, as many :meth:`observe` calls would
        (totals, buckets, sum/count/max/min), stamped now: for a recorder of many records
        per second that aggregates them off its hot path (the worker core)."""
        family = self._family(metric, "latency", labels)
        if not math.isfinite(sum(values_ms)):  # NaN and ±inf stay so in a sum
            raise ValueError(f"latencies of {metric!r} must be finite numbers")
        if not self.enabled or not values_ms:
            return
        values = [float(v) if v > 0 else 0.0 for v in values_ms]
        bounds = LATENCY_BUCKETS_MS
        buckets = [bisect.bisect_left(bounds, v) for v in values]
        added, n = sum(values), len(values)
        ms = int(self._clock() * 1000)
        total, count, maximum, minimum = family.series
        with self._lock:
            flusher = self._flusher
            flusher.add_total(family.fields[0], added)
            flusher.add_total(family.fields[1], n)
            for bucket in buckets:
                flusher.add_bucket(family, bucket)
            flusher.add_sample(total, ms, added)
            flusher.add_sample(count, ms, n)
            flusher.add_sample(maximum, ms, max(values))
            flusher.add_sample(minimum, ms, min(values))

    def gauge(self, metric: str, value: float, **labels: str | None) -> None:
        """Set the gauge *metric* to *value* for *labels*."""
        family = self._family(metric, "gauge", labels)
        if not math.isfinite(value):
            raise ValueError(f"gauge {metric!r} must be a finite number, not {value!r}")
        if not self.enabled:
            return
        ms = int(self._clock() * 1000)
        with self._lock:
            self._flusher.set_gauge(family.fields[0], float(value), ms)
            self._flusher.add_sample(family.series[0], ms, float(value))

    async def flush(self, client: redis.asyncio.Redis) -> None:
        """Write everything buffered in one round trip; never raises on a Redis error (what
        could not be written is kept for the next flush)."""
        if self.enabled:
            await self._flusher.flush(client)

    async def run(
        self,
        client: redis.asyncio.Redis,
        *,
        task_status: TaskStatus[None] = TASK_STATUS_IGNORED,
    ) -> None:
        """Flush every ``observability.flush_interval_seconds`` until cancelled, then once
        more. A flush under way is never cut by the cancellation (it would leave unknown
        what Redis applied); the last one is bounded by ``redis.socket_timeout``."""
        interval = self.settings.observability.flush_interval_seconds
        task_status.started()
        try:
            while True:
                await anyio.sleep(interval)
                with anyio.CancelScope(shield=True):
                    await self.flush(client)
        finally:
            with anyio.CancelScope(shield=True):
                await self.flush(client)
