"""The write side of :class:`~runtime.observability.metrics.MetricsRecorder`: its buffer,
and the one round trip per flush that empties it.

A flush sends, in one batch (:func:`runtime.redis.connection.run_batch`): ``TS.CREATE`` (and
the roll-up's ``TS.CREATE`` + ``TS.CREATERULE``) for each series this process has not created
yet, one ``TS.MADD`` per series with its samples, ``PEXPIRE`` per series, one
``HINCRBYFLOAT`` per total and one ``HSET`` of the gauges. Each reply is checked on its own:
what Redis refused is put back in the buffer for the next flush (a series whose own key is
refused five flushes in a row, a key of another type in its place, is given up and logged),
samples older than the retention are dropped, and an
unknown ``TS.*`` command turns the history off for the process (totals go on).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis.asyncio
import redis.exceptions

from runtime.keys import Keys
from runtime.log import get_logger
from runtime.redis.connection import Batch, run_batch
from runtime.settings.model import Settings

if TYPE_CHECKING:
    from runtime.observability.metrics import Family, Series

__all__ = ["Flusher"]

log = get_logger("runtime.observability.metrics")

# Flushes in a row a series' own key may be refused (a key of another type where the series
# should be) before its samples are dropped; refusals of the whole server (OOM, READONLY,
# LOADING…) never give up: the buffer's bound holds them.
_GIVE_UP_AFTER = 5
_KEY_ERRORS = ("TSDB", "WRONGTYPE")
_history_off_said = threading.Event()  # `metrics.history_off` is logged once per process

Handler = Callable[[Any], str | None]  # reply → an error text when something was kept


def _combine(policy: str, old: float, new: float) -> float:
    if policy == "SUM":
        return old + new
    if policy == "MAX":
        return max(old, new)
    if policy == "MIN":
        return min(old, new)
    return new  # LAST


def _text(reply: Any) -> str:
    return str(reply)


def _unknown_command(reply: Any) -> bool:
    return isinstance(reply, redis.exceptions.ResponseError) and str(reply).lower().startswith(
        "unknown command"
    )


class _Drained:
    """What one flush takes out of the buffer."""

    def __init__(
        self,
        samples: dict[Series, dict[int, float]],
        totals: dict[str, float],
        gauges: dict[str, tuple[float, int]],
    ) -> None:
        self.samples = samples
        self.totals = totals
        self.gauges = gauges

    def __bool__(self) -> bool:
        return bool(self.samples or self.totals or self.gauges)


class Flusher:
    """The buffer of one recorder; its ``add_*``/``set_gauge`` run under the recorder's lock."""

    def __init__(
        self, keys: Keys, settings: Settings, process: str, lock: threading.Lock, max_pending: int
    ) -> None:
        obs = settings.observability
        self._totals_key = keys.metrics_totals()
        self.history: bool | None = None
        self.failures = 0
        self.dropped = 0
        self._lock = lock
        self._max = max_pending
        self._labels = ("process", process, "prefix", keys.prefix)
        self._retention = int(obs.metrics_retention_seconds * 1000)
        self._rollup_retention = int(obs.metrics_rollup_retention_seconds * 1000)
        self._rollup_bucket = int(obs.metrics_rollup_seconds * 1000)
        self._samples: dict[Series, dict[int, float]] = {}
        self._n = 0
        self._totals: dict[str, float] = {}
        self._buckets: dict[Family, list[int]] = {}
        self._gauges: dict[str, tuple[float, int]] = {}
        self._created: set[Series] = set()
        self._refused: dict[Series, int] = {}
        self._failing = False
        self._full = False

    # --- the buffer (callers hold the lock) ----------------------------------------------
    def add_sample(self, series: Series, ms: int, value: float) -> None:
        if self.history is False:
            return
        points = self._samples.get(series)
        if points is None:
            points = self._samples[series] = {}
        old = points.get(ms)
        if old is not None:
            points[ms] = _combine(series.policy, old, value)
        elif self._n < self._max:
            points[ms] = value
            self._n += 1
        else:
            self._drop(1)

    def _drop(self, n: int) -> None:
        self.dropped += n
        if not self._full:
            self._full = True
            log.warning("metrics.buffer_full", max_pending=self._max, effect="samples dropped")

    def add_total(self, field: str, value: float) -> None:
        self._totals[field] = self._totals.get(field, 0.0) + value

    def add_bucket(self, family: Family, index: int) -> None:
        counts = self._buckets.get(family)
        if counts is None:
            counts = self._buckets[family] = [0] * (len(family.fields) - 2)
        counts[index] += 1

    def set_gauge(self, field: str, value: float, ms: int, *, only_if_newer: bool = False) -> None:
        old = self._gauges.get(field)
        if old is None or old[1] <= ms or not only_if_newer:
            self._gauges[field] = (value, ms)

    def _drain(self) -> _Drained:
        with self._lock:
            drained = _Drained(self._samples, self._totals, self._gauges)
            for family, counts in self._buckets.items():
                cumulative = 0
                for index, count in enumerate(counts):
                    cumulative += count
                    if cumulative:
                        field = family.fields[2 + index]
                        drained.totals[field] = drained.totals.get(field, 0.0) + cumulative
            self._samples, self._totals, self._gauges, self._buckets = {}, {}, {}, {}
            self._n = 0
        return drained

    def _requeue(self, drained: _Drained) -> None:
        with self._lock:
            for series, points in drained.samples.items():
                self._requeue_points(series, points)
            for field, value in drained.totals.items():
                self.add_total(field, value)
            for field, (value, ms) in drained.gauges.items():
                self.set_gauge(field, value, ms, only_if_newer=True)

    def _requeue_points(self, series: Series, points: dict[int, float]) -> None:
        """Put refused samples back (lock held); newer LAST samples win over them."""
        for ms, value in points.items():
            mine = self._samples.get(series)
            if mine is not None and ms in mine and series.policy == "LAST":
                continue
            self.add_sample(series, ms, value)

    # --- the flush ---------------------------------------------------------------------
    async def flush(self, client: redis.asyncio.Redis) -> None:
        drained = self._drain()
        if not drained:
            return
        batch, handlers = Batch(), list[Handler]()
        self._plan(drained, batch, handlers)
        try:
            replies = await run_batch(client, batch)
        except (redis.exceptions.RedisError, OSError) as exc:
            self._requeue(drained)
            self._failed(str(exc) or type(exc).__name__)
            return
        except BaseException:
            self._requeue(drained)
            raise
        problems = [text for handler, reply in zip(handlers, replies, strict=True)
                    if (text := handler(reply)) is not None]  # fmt: skip
        if problems:
            self._failed(problems[0])
            return
        self._full = False  # a buffer that filled up during an outage: a new episode
        if self._failing:
            self._failing = False
            log.info("metrics.flush_recovered", failed_flushes=self.failures)

    def _failed(self, error: str) -> None:
        self.failures += 1
        if not self._failing:
            self._failing = True
            log.warning("metrics.flush_failed", error=error, effect="kept for the next flush")

    def _plan(self, drained: _Drained, batch: Batch, handlers: list[Handler]) -> None:
        if self.history is not False:
            for series, points in drained.samples.items():
                if series not in self._created:
                    self._plan_create(series, batch, handlers)
                self._plan_samples(series, points, batch, handlers)
        for field, value in drained.totals.items():
            batch.execute_command("HINCRBYFLOAT", self._totals_key, field, repr(value))
            handlers.append(self._total_handler(field, value))
        if drained.gauges:
            flat = [part for field, (value, ms) in drained.gauges.items()
                    for part in (field, f"{value!r} {ms}")]  # fmt: skip
            batch.execute_command("HSET", self._totals_key, *flat)
            handlers.append(self._gauges_handler(drained.gauges))

    def _series_labels(self, series: Series, res: str) -> list[str]:
        labels = ["metric", series.metric, "stat", series.stat, "res", res, *self._labels]
        for key, value in series.labels:
            labels += (key, value)
        return labels

    def _plan_create(self, series: Series, batch: Batch, handlers: list[Handler]) -> None:
        batch.execute_command(
            "TS.CREATE", series.key, "RETENTION", self._retention,
            "DUPLICATE_POLICY", series.policy, "LABELS", *self._series_labels(series, "raw"),
        )  # fmt: skip
        handlers.append(self._create_handler(series))
        if series.rollup_key is None:
            return
        batch.execute_command(
            "TS.CREATE", series.rollup_key, "RETENTION", self._rollup_retention,
            "DUPLICATE_POLICY", "LAST", "LABELS", *self._series_labels(series, "rollup"),
        )  # fmt: skip
        batch.execute_command(
            "TS.CREATERULE", series.key, series.rollup_key,
            "AGGREGATION", series.rollup_aggregation, self._rollup_bucket,
        )  # fmt: skip
        handlers += (self._rollup_handler, self._rollup_handler)

    def _plan_samples(
        self, series: Series, points: dict[int, float], batch: Batch, handlers: list[Handler]
    ) -> None:
        args: list[Any] = []
        for ms, value in points.items():
            args += (series.key, ms, repr(value))
        batch.execute_command("TS.MADD", *args)
        handlers.append(self._samples_handler(series, points))
        batch.execute_command("PEXPIRE", series.key, self._retention)
        handlers.append(_ignore)
        if series.rollup_key is not None:
            batch.execute_command("PEXPIRE", series.rollup_key, self._rollup_retention)
            handlers.append(_ignore)

    # --- replies -----------------------------------------------------------------------
    def _history_off(self) -> None:
        self.history = False
        with self._lock:
            self._n -= sum(len(points) for points in self._samples.values())
            self._samples.clear()
        self._created.clear()
        if not _history_off_said.is_set():
            _history_off_said.set()
            log.warning(
                "metrics.history_off",
                reason="the Redis server does not load the TimeSeries module",
                effect="metric totals are still kept; history (charts, TS.MRANGE) is off",
            )

    def _create_handler(self, series: Series) -> Handler:
        def handle(reply: Any) -> str | None:
            if _unknown_command(reply):
                self._history_off()
            elif not isinstance(reply, Exception) or "already exists" in str(reply):
                self.history = True
                self._created.add(series)
            return None  # a refused create shows in the samples' reply

        return handle

    def _rollup_handler(self, reply: Any) -> str | None:
        # "already exists" / "already has a src rule": made by an earlier flush
        if isinstance(reply, Exception) and "already" not in str(reply):
            log.debug("metrics.rollup_refused", error=str(reply))
        return None

    def _samples_handler(self, series: Series, points: dict[int, float]) -> Handler:
        def handle(reply: Any) -> str | None:
            if _unknown_command(reply):
                self._history_off()
                return None
            if isinstance(reply, Exception):
                return self._refused_series(series, points, str(reply))
            kept: dict[int, float] = {}
            error = None
            for (ms, value), result in zip(points.items(), reply, strict=True):
                if not isinstance(result, Exception):
                    continue
                if "older than retention" in str(result):
                    self.dropped += 1
                else:
                    kept[ms], error = value, str(result)
            if error is None:
                self._refused.pop(series, None)
                return None
            return self._refused_series(series, kept, error)

        return handle

    def _refused_series(self, series: Series, points: dict[int, float], error: str) -> str:
        self._created.discard(series)  # e.g. "not a TSDB key": the series expired or went
        refused = self._refused.get(series, 0) + any(e in error for e in _KEY_ERRORS)
        if refused >= _GIVE_UP_AFTER:
            self._refused.pop(series, None)
            self.dropped += len(points)
            log.warning("metrics.series_dropped", series=series.key, error=error)
            return error
        self._refused[series] = refused
        with self._lock:
            self._requeue_points(series, points)
        return error

    def _total_handler(self, field: str, value: float) -> Handler:
        def handle(reply: Any) -> str | None:
            if not isinstance(reply, Exception):
                return None
            with self._lock:
                self.add_total(field, value)
            return _text(reply)

        return handle

    def _gauges_handler(self, gauges: dict[str, tuple[float, int]]) -> Handler:
        def handle(reply: Any) -> str | None:
            if not isinstance(reply, Exception):
                return None
            with self._lock:
                for field, (value, ms) in gauges.items():
                    self.set_gauge(field, value, ms, only_if_newer=True)
            return _text(reply)

        return handle


def _ignore(reply: Any) -> str | None:
    return None
