"""The trace model (:class:`SpanRecord`, :class:`TraceSummary`) and :class:`TraceRecorder`,
which buffers spans without I/O and writes them to Redis in batches, off the agent's path.

    rec = TraceRecorder(keys, settings, resource={"worker": "w1", "app": "support"})
    attempt = rec.span(tid, "attempt 1", "attempt", parent_id=submit_span_id)
    ...
    rec.end_span(attempt)
    async with anyio.create_task_group() as tg:
        await tg.start(rec.run, client)      # flushes every observability.flush_interval_seconds

Redis layout (see :mod:`runtime.keys`): ``keys.trace_spans(tid)`` is a hash span id → the
span as JSON (written at start with status ``running``, again at end); ``keys.trace(tid)``
is a hash of the trace's summary fields; both expire after ``runs.result_ttl_seconds``,
refreshed by every flush that touches them. ``keys.traces()`` is a stream with one entry per
ended trace, trimmed with ``MAXLEN ~ observability.traces_maxlen``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import anyio
import msgspec

from runtime.errors import RedisError
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.observability.tracecontext import new_span_id
from runtime.redis.connection import translate_errors

if TYPE_CHECKING:
    import redis.asyncio

    from runtime.settings import Settings

__all__ = [
    "MAX_ATTR_CHARS",
    "MAX_BUFFERED_SPANS",
    "Deferred",
    "SpanListener",
    "SpanRecord",
    "SpanStatus",
    "TraceRecorder",
    "TraceSummary",
    "clip",
    "queue_span",
    "queue_summary",
    "summary_fields",
]

log = get_logger(__name__)

SpanStatus = Literal["ok", "error", "running"]

#: Longest text kept in one attribute or error (characters); longer text is cut and marked.
MAX_ATTR_CHARS = 4096
#: Spans a recorder buffers at most between flushes; beyond it the oldest are dropped.
MAX_BUFFERED_SPANS = 20_000
_MAX_DEPTH = 4
_MAX_ITEMS = 100
_FINAL_FLUSH_SECONDS = 5.0


class SpanRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One span of a trace, as stored in Redis (JSON) and served by the API."""

    trace_id: str
    span_id: str
    parent_id: str | None = None
    name: str
    kind: str
    start: float
    end: float | None = None
    status: SpanStatus = "running"
    error: str | None = None
    attrs: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        """Seconds from start to end; None while the span runs."""
        return None if self.end is None else max(0.0, self.end - self.start)


class TraceSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What one trace was: its name, run, agent, times, outcome and number of spans."""

    trace_id: str
    name: str
    run_id: str | None = None
    agent: str | None = None
    start: float
    end: float | None = None
    status: SpanStatus = "running"
    error: str | None = None
    spans: int = 0


SpanListener = Callable[[SpanRecord], None]


class Deferred:
    """A span to be built at the next flush, in a worker thread: what the SDK's processor
    records, so converting its spans costs the agent's loop nothing."""

    __slots__ = ("_make", "_value", "ended")

    def __init__(self, make: Callable[[], SpanRecord], *, ended: bool) -> None:
        self._make: Callable[[], SpanRecord] | None = make
        self._value: SpanRecord | None = None
        self.ended = ended

    def get(self) -> SpanRecord | None:
        """The span (built once); None when building it failed (logged)."""
        make = self._make
        if make is not None:
            self._make = None
            try:
                self._value = make()
            except Exception:
                log.exception("tracing.span_unreadable")
        return self._value


Pending = SpanRecord | Deferred


def _resolve(items: Iterable[Pending]) -> list[SpanRecord]:
    out = []
    for item in items:
        span = item.get() if isinstance(item, Deferred) else item
        if span is not None:
            out.append(span)
    return out


_ENCODER = msgspec.json.Encoder()


def clip(value: Any, limit: int = MAX_ATTR_CHARS, _depth: int = 0) -> Any:
    """*value* with every text longer than *limit* characters cut (and marked as cut),
    containers cut to 100 items and 4 levels; numbers, booleans and None as they are."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        return value[:limit] + f"… [cut: {len(value)} characters]"
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if _depth >= _MAX_DEPTH:
        return clip(repr(value), limit)
    if isinstance(value, dict):
        items = list(value.items())[:_MAX_ITEMS]
        return {str(k): clip(v, limit, _depth + 1) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [clip(v, limit, _depth + 1) for v in value[:_MAX_ITEMS]]
    return clip(str(value), limit)


def _field(value: object) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def summary_fields(summary: TraceSummary) -> dict[str, str]:
    """The summary as the string fields of its hash and of its recent-traces entry (None
    fields are left out)."""
    fields = msgspec.structs.asdict(summary)
    return {k: _field(v) for k, v in fields.items() if v is not None}


def queue_span(pipe: Any, keys: Keys, span: SpanRecord, ttl_ms: int) -> None:
    """Queue the write of *span* (and the refresh of its trace's TTL) on a pipeline; for code
    that writes a span in a round trip of its own (e.g. a submit)."""
    spans_key = keys.trace_spans(span.trace_id)
    pipe.hset(spans_key, span.span_id, _ENCODER.encode(span))
    pipe.pexpire(spans_key, ttl_ms)


def queue_summary(
    pipe: Any, keys: Keys, summary: TraceSummary, ttl_ms: int, *, stream: str | None, maxlen: int
) -> None:
    """Queue the summary's hash write (and TTL); with *stream*, also its recent-traces entry."""
    key = keys.trace(summary.trace_id)
    fields = summary_fields(summary)
    pipe.hset(key, mapping=fields)
    pipe.pexpire(key, ttl_ms)
    if stream is not None:
        pipe.xadd(stream, fields, maxlen=maxlen, approximate=True)


class _Buffer:
    """What a recorder holds between flushes (guarded by the recorder's lock)."""

    __slots__ = ("ended", "spans", "started", "summaries")

    def __init__(self) -> None:
        self.spans: deque[Pending] = deque()
        self.started: deque[TraceSummary] = deque()
        self.summaries: deque[TraceSummary] = deque()
        self.ended: deque[Pending] = deque()


class TraceRecorder:
    """Buffers spans and trace summaries (sync, thread-safe, no I/O) and writes them to Redis
    in one pipeline per flush.

    The buffer is bounded (*max_spans*): beyond it the oldest spans are dropped, counted in
    :attr:`dropped` and logged once per episode. A flush that fails keeps its batch for the
    next one. Made with ``observability.tracing`` off, it writes nothing (listeners still get
    ended spans, e.g. for metrics).
    """

    def __init__(
        self,
        keys: Keys,
        settings: Settings,
        resource: dict[str, str] | None = None,
        *,
        stream: str | None = None,
        ttl_seconds: float | None = None,
        max_spans: int = MAX_BUFFERED_SPANS,
    ) -> None:
        obs = settings.observability
        self.keys = keys
        self.resource: dict[str, str] = dict(resource or {})
        self.enabled = obs.tracing
        self.stream = stream or keys.traces()
        self.maxlen = obs.traces_maxlen
        self.interval = obs.flush_interval_seconds
        ttl = settings.runs.result_ttl_seconds if ttl_seconds is None else ttl_seconds
        self.ttl_ms = max(1, int(ttl * 1000))
        self.max_spans = max_spans
        self.dropped = 0
        self._lock = threading.Lock()
        self._buf = _Buffer()
        self._listeners: list[SpanListener] = []
        self._dropping = False
        self._failing = False
        self._flush_lock: anyio.Lock | None = None

    # --- recording (sync, no I/O) -------------------------------------------------------
    def record(self, span: SpanRecord | Deferred) -> None:
        """Buffer *span* (a start, status running, or an end; or one to build at the flush);
        never blocks on I/O."""
        if not self.enabled and not self._listeners:
            return
        ended = span.ended if isinstance(span, Deferred) else span.end is not None
        with self._lock:
            if self.enabled:
                self._buf.spans.append(span)
                self._trim()
            if self._listeners and ended:
                self._buf.ended.append(span)
                while len(self._buf.ended) > self.max_spans:
                    self._buf.ended.popleft()

    def span(
        self,
        trace_id: str,
        name: str,
        kind: str,
        *,
        parent_id: str | None = None,
        start: float | None = None,
        end: float | None = None,
        attrs: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> SpanRecord:
        """Build a span of the runtime's own (a new 16-hex span id) and record it."""
        status: SpanStatus = "running" if end is None else ("error" if error else "ok")
        record = SpanRecord(
            trace_id=trace_id,
            span_id=new_span_id(),
            parent_id=parent_id,
            name=name,
            kind=kind,
            start=time.time() if start is None else start,
            end=end,
            status=status,
            error=clip(error) if error is not None else None,
            attrs={**self.resource, **clip(attrs)} if attrs else dict(self.resource),
        )
        self.record(record)
        return record

    def end_span(
        self, span: SpanRecord, end: float | None = None, error: str | None = None
    ) -> SpanRecord:
        """Record the ended copy of *span* (status ``error`` when *error* is given)."""
        ended = msgspec.structs.replace(
            span,
            end=time.time() if end is None else end,
            status="error" if error else "ok",
            error=clip(error) if error is not None else span.error,
        )
        self.record(ended)
        return ended

    def start_trace(self, summary: TraceSummary) -> None:
        """Write the summary of a trace that has begun (its hash only; no stream entry)."""
        if self.enabled:
            with self._lock:
                self._buf.started.append(summary)

    def end_trace(self, summary: TraceSummary) -> None:
        """Record the summary of an ended trace: its hash and its recent-traces entry."""
        if self.enabled:
            with self._lock:
                self._buf.summaries.append(summary)
                while len(self._buf.summaries) > self.max_spans:
                    self._buf.summaries.popleft()
                    self._count_drop(1)

    def add_listener(self, fn: SpanListener) -> None:
        """Call *fn(span)* for every ended span, from the flusher, in a worker thread (never
        on the agent's loop). A listener that raises is logged and keeps its place."""
        self._listeners.append(fn)

    def pending(self) -> int:
        """Spans and summaries waiting for the next flush."""
        with self._lock:
            buf = self._buf
            return len(buf.spans) + len(buf.started) + len(buf.summaries)

    def _trim(self) -> None:
        excess = len(self._buf.spans) - self.max_spans
        for _ in range(max(0, excess)):
            self._buf.spans.popleft()
        if excess > 0:
            self._count_drop(excess)

    def _count_drop(self, count: int) -> None:
        self.dropped += count
        if not self._dropping:
            self._dropping = True
            log.warning("tracing.buffer_full", cap=self.max_spans, dropped_total=self.dropped)

    # --- flushing ------------------------------------------------------------------------
    def _take(self) -> tuple[list[Pending], list[TraceSummary], list[TraceSummary]]:
        with self._lock:
            buf = self._buf
            taken = (list(buf.spans), list(buf.started), list(buf.summaries))
            buf.spans.clear()
            buf.started.clear()
            buf.summaries.clear()
            return taken

    def _take_ended(self) -> list[Pending]:
        with self._lock:
            ended = list(self._buf.ended)
            self._buf.ended.clear()
            return ended

    def _restore(
        self, spans: list[SpanRecord], started: list[TraceSummary], ended: list[TraceSummary]
    ) -> None:
        with self._lock:
            buf = self._buf
            buf.spans.extendleft(reversed(spans))
            buf.started.extendleft(reversed(started))
            buf.summaries.extendleft(reversed(ended))
            self._trim()

    def _prepare(self, spans: list[Pending], ended: list[Pending]) -> list[SpanRecord]:
        """Build the deferred spans and call the listeners (in a worker thread)."""
        built = _resolve(spans)
        for span in _resolve(ended):
            for fn in list(self._listeners):
                try:
                    fn(span)
                except Exception:
                    log.exception("tracing.listener_failed", listener=repr(fn), span=span.name)
        return built

    async def flush(self, client: redis.asyncio.Redis) -> int:
        """Write everything buffered in one pipeline; returns the number of items written.

        The deferred spans are built and the listeners get the ended spans first, in a
        worker thread. On a Redis error the batch is put back (the buffer's bound still
        holds) and the translated error raised.
        """
        if self._flush_lock is None:
            self._flush_lock = anyio.Lock()
        async with self._flush_lock:
            ended = self._take_ended()
            pending, started, summaries = self._take()
            spans: list[SpanRecord] = []
            if pending or ended:
                spans = await anyio.to_thread.run_sync(self._prepare, pending, ended)
            if not (spans or started or summaries):
                return 0
            try:
                await self._write(client, spans, started, summaries)
            except RedisError:
                self._restore(spans, started, summaries)
                raise
            if self._dropping:
                self._dropping = False
                log.info("tracing.buffer_recovered", dropped_total=self.dropped)
            return len(spans) + len(started) + len(summaries)

    async def _write(
        self,
        client: redis.asyncio.Redis,
        spans: list[SpanRecord],
        started: list[TraceSummary],
        summaries: list[TraceSummary],
    ) -> None:
        latest = {span.span_id: span for span in spans}  # a start and its end: the end only
        pipe = client.pipeline(transaction=False)
        for span in latest.values():
            queue_span(pipe, self.keys, span, self.ttl_ms)
        for summary in started:
            queue_summary(pipe, self.keys, summary, self.ttl_ms, stream=None, maxlen=self.maxlen)
        for summary in summaries:
            queue_summary(
                pipe, self.keys, summary, self.ttl_ms, stream=self.stream, maxlen=self.maxlen
            )
        with translate_errors("write traces"):
            await pipe.execute()

    async def _flush_quietly(self, client: redis.asyncio.Redis) -> None:
        try:
            await self.flush(client)
        except RedisError as exc:
            if not self._failing:
                self._failing = True
                log.warning("tracing.flush_failed", error=str(exc), pending=self.pending())
            return
        except Exception:
            log.exception("tracing.flush_crashed")
            return
        if self._failing:
            self._failing = False
            log.info("tracing.flush_recovered")

    async def run(
        self,
        client: redis.asyncio.Redis,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Flush every ``observability.flush_interval_seconds`` until cancelled, then once
        more (shielded, for at most 5 s). Flush failures are logged once per outage and the
        batch is retried; they never end this task."""
        task_status.started()
        try:
            while True:
                await anyio.sleep(self.interval)
                await self._flush_quietly(client)
        finally:
            with anyio.move_on_after(_FINAL_FLUSH_SECONDS, shield=True):
                await self._flush_quietly(client)
