"""The write side of :class:`~runtime.observability.metrics.MetricsRecorder`: its buffer,
and the one round trip per flush that empties it.

A flush sends, in one batch (:func:`runtime.redis.connection.run_batch`): ``TS.CREATE`` (and
the roll-up's ``TS.CREATE`` + ``TS.CREATERULE``) for each series this process has not created
yet, one ``TS.MADD`` per series with its samples, ``PEXPIRE`` per series, one
``HINCRBYFLOAT`` per total and one ``HSET`` of the gauges. Each reply is checked on its own:
what Redis refused is put back in the buffer for the next flush, samples older than the
retention are dropped, and an unknown ``TS.*`` command turns the history off for the process
(totals go on). A refusal of the whole server (``OOM``, ``READONLY``, ``LOADING``…) is waited
out (the buffer's bound holds what waits); any other refusal is the command's own (a key of
another type where a series or the totals hash should be, a totals field that is not a
number): a series or a totals field refused five flushes in a row is given up, its values
dropped, counted and logged, so that one bad key never jams the flushes. A refused roll-up
(``TS.CREATE`` of the roll-up or its ``TS.CREATERULE``, other than "already exists") is a
warning, once per episode, and is tried again at the next flushes (five times).

The series known to exist are remembered by key, at most ``_KNOWN_MAX`` of them (the oldest
forgotten first: it is only created once more, "already exists").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, MutableMapping
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

# Flushes in a row a series, a totals field or a roll-up may be refused for a reason of its
# own (a key of another type in its place, a field that is not a number) before it is given
# up; refusals of the whole server never give up: the buffer's bound holds what waits.
_GIVE_UP_AFTER = 5
_SERVER_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.NoPermissionError,
    redis.exceptions.AuthenticationError,
    redis.exceptions.ConnectionError,
)
_SERVER_CODES = ("BUSY", "MISCONF", "NOREPLICAS", "NOAUTH", "NOPERM")
_KNOWN_MAX = 20_000  # series keys remembered as created, and series/fields being refused
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


def _of_server(reply: Any) -> bool:
    """Whether the error *reply* refuses every write of the server now (out of memory, a
    replica, loading…), not this command's own."""
    return isinstance(reply, _SERVER_ERRORS) or str(reply).startswith(_SERVER_CODES)


def _remember(known: MutableMapping[str, Any], key: str, value: Any) -> None:
    """``known[key] = value``, forgetting the oldest entry past ``_KNOWN_MAX``."""
    if key not in known and len(known) >= _KNOWN_MAX:
        del known[next(iter(known))]
    known[key] = value


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
        self.dropped_totals = 0
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
        # by series key: a Series object is made again when the recorder's cache is cleared
        self._created: dict[str, None] = {}
        self._refused: dict[str, int] = {}  # series key → refusals in a row
        self._rollup_refused: dict[str, int] = {}
        self._total_refused: dict[str, int] = {}  # totals field → refusals in a row
        self._rollup_failing = False
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
        self._rollups_done()
        if problems:
            self._failed(problems[0])
            return
        self._full = False  # a buffer that filled up during an outage: a new episode
        if self._failing:
            self._failing = False
            log.info("metrics.flush_recovered", failed_flushes=self.failures)

    def _rollups_done(self) -> None:
        """After a flush's replies: the roll-ups refused are tried again as their series are
        created again; one made clears its count; none left waiting ends the episode."""
        for key in [key for key in self._rollup_refused if key in self._created]:
            del self._rollup_refused[key]  # created with its roll-up this time
        if self._rollup_failing and not self._rollup_refused:
            self._rollup_failing = False

    def _failed(self, error: str) -> None:
        self.failures += 1
        if not self._failing:
            self._failing = True
            log.warning("metrics.flush_failed", error=error, effect="kept for the next flush")

    def _plan(self, drained: _Drained, batch: Batch, handlers: list[Handler]) -> None:
        if self.history is not False:
            for series, points in drained.samples.items():
                if series.key not in self._created:
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
        handler = self._rollup_handler(series)
        handlers += (handler, handler)

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
        self._refused.clear()
        self._rollup_refused.clear()
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
                _remember(self._created, series.key, None)
            return None  # a refused create shows in the samples' reply

        return handle

    def _rollup_handler(self, series: Series) -> Handler:
        """The replies of a roll-up's ``TS.CREATE`` and ``TS.CREATERULE`` ("already exists",
        "already has a src rule": made by an earlier flush). When one is refused while the
        series itself was created, the series is created again by the next flush, with its
        roll-up (at most five flushes in a row for a refusal of its own)."""

        def handle(reply: Any) -> str | None:
            key = series.key
            if not isinstance(reply, Exception) or "already" in str(reply):
                return None
            if key not in self._created:  # the series' own refusal says why; or done already
                return None
            if not self._rollup_failing:
                self._rollup_failing = True
                log.warning(
                    "metrics.rollup_refused", series=key, error=str(reply),
                    effect="no roll-up for this series yet; tried again at the next flushes",
                )  # fmt: skip
            refused = self._rollup_refused.get(key, 0) + (not _of_server(reply))
            if refused >= _GIVE_UP_AFTER:
                self._rollup_refused.pop(key, None)
                log.warning("metrics.rollup_given_up", series=key, error=str(reply))
            else:
                _remember(self._rollup_refused, key, refused)
                del self._created[key]
            return None

        return handle

    def _samples_handler(self, series: Series, points: dict[int, float]) -> Handler:
        def handle(reply: Any) -> str | None:
            if _unknown_command(reply):
                self._history_off()
                return None
            if isinstance(reply, Exception):
                return self._refused_series(series, points, reply)
            kept: dict[int, float] = {}
            error: Exception | None = None
            for (ms, value), result in zip(points.items(), reply, strict=True):
                if not isinstance(result, Exception):
                    continue
                if "older than retention" in str(result):
                    self.dropped += 1
                else:
                    kept[ms], error = value, result
            if error is None:
                self._refused.pop(series.key, None)
                return None
            return self._refused_series(series, kept, error)

        return handle

    def _refused_series(self, series: Series, points: dict[int, float], error: Exception) -> str:
        self._created.pop(series.key, None)  # e.g. "not a TSDB key": the series expired
        refused = self._refused.get(series.key, 0) + (not _of_server(error))
        if refused >= _GIVE_UP_AFTER:
            self._refused.pop(series.key, None)
            self.dropped += len(points)
            log.warning("metrics.series_dropped", series=series.key, error=str(error))
            return str(error)
        _remember(self._refused, series.key, refused)
        with self._lock:
            self._requeue_points(series, points)
        return str(error)

    def _total_handler(self, field: str, value: float) -> Handler:
        def handle(reply: Any) -> str | None:
            if not isinstance(reply, Exception):
                if self._total_refused:
                    self._total_refused.pop(field, None)
                return None
            refused = self._total_refused.get(field, 0) + (not _of_server(reply))
            if refused >= _GIVE_UP_AFTER:
                self._total_refused.pop(field, None)
                self.dropped_totals += 1
                log.warning("metrics.total_dropped", field=field, value=value, error=str(reply))
                return _text(reply)
            _remember(self._total_refused, field, refused)
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
