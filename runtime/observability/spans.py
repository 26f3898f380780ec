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
ended trace, trimmed with ``MAXLEN ~ observability.traces_maxlen``. Per process, a trace
gets at most 5,000 spans and one recent-traces entry
(:mod:`runtime.observability.trace_budget`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from runtime.errors import RedisError
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.observability.trace_budget import MAX_SPANS_PER_TRACE, Booked, TraceBook
from runtime.observability.trace_model import (
    MAX_ATTR_CHARS,
    Deferred,
    Pending,
    SpanRecord,
    SpanStatus,
    TraceSummary,
    clip,
    resolve,
    summary_fields,
)
from runtime.observability.tracecontext import new_span_id
from runtime.redis.connection import Batch, first_error, run_batch, translate_errors

if TYPE_CHECKING:
    import redis.asyncio

    from runtime.settings import Settings

__all__ = [
    "MAX_ATTR_CHARS",
    "MAX_BUFFERED_SPANS",
    "MAX_SPANS_PER_TRACE",
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

#: Spans a recorder buffers at most between flushes; beyond it the oldest are dropped.
MAX_BUFFERED_SPANS = 20_000
_FINAL_FLUSH_SECONDS = 5.0


SpanListener = Callable[[SpanRecord], None]


_ENCODER = msgspec.json.Encoder()
_OPTIONAL = ("run_id", "agent", "error")  # summary fields a merged summary may lose


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
    """What a recorder holds between flushes (guarded by the recorder's lock): what was
    recorded, and what a flush that failed had admitted (sent first by the next one)."""

    __slots__ = ("ended", "kept", "kept_summaries", "spans", "started", "summaries")

    def __init__(self) -> None:
        self.spans: deque[Pending] = deque()
        self.started: deque[TraceSummary] = deque()
        self.summaries: deque[TraceSummary] = deque()
        self.ended: deque[Pending] = deque()
        self.kept: deque[SpanRecord] = deque()
        self.kept_summaries: deque[Booked] = deque()


class _Taken(msgspec.Struct):
    """What one flush took out of the buffer."""

    spans: list[Pending]
    started: list[TraceSummary]
    summaries: list[TraceSummary]
    ended: list[Pending]
    kept: list[SpanRecord]
    kept_summaries: list[Booked]

    def empty(self) -> bool:
        return not (
            self.spans or self.started or self.summaries or self.ended or self.kept
            or self.kept_summaries
        )  # fmt: skip


class _Prepared(msgspec.Struct):
    """One flush's writes: the spans and summaries admitted, encoded as one batch."""

    spans: list[SpanRecord]
    summaries: list[Booked]
    batch: Batch

    def count(self) -> int:
        return len(self.spans) + len(self.summaries)


def _cap(items: deque[Any], limit: int) -> int:
    """Drop the oldest of *items* beyond *limit*; how many were dropped."""
    excess = len(items) - limit
    for _ in range(max(0, excess)):
        items.popleft()
    return max(0, excess)


class TraceRecorder:
    """Buffers spans and trace summaries (sync, thread-safe, no I/O) and writes them to Redis
    in one round trip per flush.

    The buffer is bounded (*max_spans* spans, as many begun and as many ended traces): beyond
    it the oldest are dropped, counted in :attr:`dropped` and logged once per episode; so is
    the queue of ended spans for the listeners (:attr:`listener_dropped`). Each trace is
    bounded too (:class:`~runtime.observability.trace_budget.TraceBook`: at most
    *max_spans_per_trace* spans per trace id, one recent-traces entry per trace id). A flush
    that fails or is cancelled keeps what it had admitted for the next one. Made with
    ``observability.tracing`` off, it writes nothing (listeners still get ended spans, e.g.
    for metrics).
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
        max_spans_per_trace: int = MAX_SPANS_PER_TRACE,
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
        self.listener_dropped = 0
        self.book = TraceBook(max_spans_per_trace)
        self._lock = threading.Lock()
        self._buf = _Buffer()
        self._listeners: list[SpanListener] = []
        self._dropping = False
        self._listener_dropping = False
        self._failing = False
        self._flush_lock: anyio.Lock | None = None

    # --- recording (sync, no I/O) -------------------------------------------------------
    def record(self, span: SpanRecord | Deferred) -> None:
        """Buffer *span* (a start, status running, or an end; or one to build at the flush);
        never blocks on I/O."""
        listeners = self._listeners
        if not self.enabled and not listeners:
            return
        ended = span.ended if isinstance(span, Deferred) else span.end is not None
        with self._lock:
            buf = self._buf
            if self.enabled:
                buf.spans.append(span)
                if len(buf.spans) + len(buf.kept) > self.max_spans:
                    self._trim()
            if ended and listeners:
                buf.ended.append(span)
                if len(buf.ended) > self.max_spans:
                    self._drop_ended()

    def defer(self, item: Deferred) -> None:
        """:meth:`record` for a span to build at the flush (the SDK processor's path, twice
        per span: kept lean)."""
        listeners = self._listeners
        enabled = self.enabled
        if not enabled and not listeners:
            return
        with self._lock:
            buf = self._buf
            if enabled:
                spans = buf.spans
                spans.append(item)
                if len(spans) + len(buf.kept) > self.max_spans:
                    self._trim()
            if listeners and item.ended:
                buf.ended.append(item)
                if len(buf.ended) > self.max_spans:
                    self._drop_ended()

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
                self._count_drop(_cap(self._buf.started, self.max_spans))

    def end_trace(self, summary: TraceSummary) -> None:
        """Record the summary of an ended trace: its hash and (the first time this process
        ends this trace) its recent-traces entry."""
        if self.enabled:
            with self._lock:
                self._buf.summaries.append(summary)
                self._count_drop(_cap(self._buf.summaries, self.max_spans))

    def add_listener(self, fn: SpanListener) -> None:
        """Call *fn(span)* for every ended span, from the flusher, in a worker thread (never
        on the agent's loop). A listener that raises is logged and keeps its place."""
        self._listeners.append(fn)

    def pending(self) -> int:
        """Spans and summaries waiting for the next flush."""
        with self._lock:
            buf = self._buf
            return (
                len(buf.spans) + len(buf.kept) + len(buf.started) + len(buf.summaries)
                + len(buf.kept_summaries)
            )  # fmt: skip

    def _trim(self) -> None:
        """Drop the oldest spans beyond the bound: those a failed flush kept first."""
        buf = self._buf
        excess = len(buf.spans) + len(buf.kept) - self.max_spans
        if excess <= 0:
            return
        from_kept = min(excess, len(buf.kept))
        for _ in range(from_kept):
            buf.kept.popleft()
        for _ in range(excess - from_kept):
            buf.spans.popleft()
        self._count_drop(excess)

    def _count_drop(self, count: int) -> None:
        if count <= 0:
            return
        self.dropped += count
        if not self._dropping:
            self._dropping = True
            log.warning("tracing.buffer_full", cap=self.max_spans, dropped_total=self.dropped)

    def _drop_ended(self) -> None:
        self.listener_dropped += _cap(self._buf.ended, self.max_spans)
        if not self._listener_dropping:
            self._listener_dropping = True
            log.warning(
                "tracing.listener_buffer_full", cap=self.max_spans,
                dropped_total=self.listener_dropped,
            )  # fmt: skip

    # --- flushing ------------------------------------------------------------------------
    def _take(self) -> _Taken:
        with self._lock:
            buf = self._buf
            taken = _Taken(
                list(buf.spans), list(buf.started), list(buf.summaries), list(buf.ended),
                list(buf.kept), list(buf.kept_summaries),
            )  # fmt: skip
            for items in (buf.spans, buf.started, buf.summaries, buf.ended, buf.kept):
                items.clear()
            buf.kept_summaries.clear()
            return taken

    def _keep(self, prepared: _Prepared) -> None:
        """Put back what a flush that did not complete had admitted (before anything newer;
        the bounds still hold)."""
        with self._lock:
            buf = self._buf
            buf.kept.extendleft(reversed(prepared.spans))
            buf.kept_summaries.extendleft(reversed(prepared.summaries))
            self._trim()
            self._count_drop(_cap(buf.kept_summaries, self.max_spans))

    def _prepare(self, taken: _Taken) -> _Prepared:
        """In a worker thread: build the deferred spans, call the listeners with the ended
        ones, admit what the per-trace bounds allow and encode the writes."""
        built = resolve(taken.spans)
        self._notify(resolve(taken.ended))
        latest = {span.span_id: span for span in taken.kept}
        fresh = {span.span_id: span for span in built}  # a start and its end: the end only
        for span in self.book.admit(fresh.values()):
            latest[span.span_id] = span
        booked = [*taken.kept_summaries, *self.book.summaries(taken.started, taken.summaries)]
        spans = list(latest.values())
        return _Prepared(spans, booked, self._encode(spans, booked))

    def _notify(self, ended: list[SpanRecord]) -> None:
        listeners = list(self._listeners)
        for span in ended:
            for fn in listeners:
                try:
                    fn(span)
                except Exception:
                    log.exception("tracing.listener_failed", listener=repr(fn), span=span.name)
        if self._listener_dropping and ended:
            self._listener_dropping = False
            log.info("tracing.listener_buffer_recovered", dropped_total=self.listener_dropped)

    def _encode(self, spans: list[SpanRecord], summaries: list[Booked]) -> Batch:
        """One ``HSET`` (and ``PEXPIRE``) per trace for its spans; per summary its hash (and
        ``PEXPIRE``) and, when booked so, its recent-traces entry."""
        batch, keys, ttl_ms, encode = Batch(), self.keys, self.ttl_ms, _ENCODER.encode
        by_trace: dict[str, list[Any]] = {}
        for span in spans:
            pairs = by_trace.get(span.trace_id)
            if pairs is None:
                pairs = by_trace[span.trace_id] = []
            pairs += (span.span_id, encode(span))
        for trace_id, pairs in by_trace.items():
            key = keys.trace_spans(trace_id)
            batch.execute_command("HSET", key, *pairs)
            batch.execute_command("PEXPIRE", key, ttl_ms)
        for summary, entry in summaries:
            key = keys.trace(summary.trace_id)
            fields = summary_fields(summary)
            if not entry and summary.end is not None:  # merged: fields it no longer has
                gone = [name for name in _OPTIONAL if name not in fields]
                if gone:
                    batch.execute_command("HDEL", key, *gone)
            flat = [part for pair in fields.items() for part in pair]
            batch.execute_command("HSET", key, *flat)
            batch.execute_command("PEXPIRE", key, ttl_ms)
            if entry:
                batch.execute_command("XADD", self.stream, "MAXLEN", "~", self.maxlen, "*", *flat)
        return batch

    async def flush(self, client: redis.asyncio.Redis) -> int:
        """Write everything buffered in one round trip; returns the number of spans and
        summaries written.

        The deferred spans are built, the listeners get the ended spans and the writes are
        encoded first, in a worker thread (which a cancellation waits for). When the write
        fails or is cancelled, what it held is kept for the next flush (the buffer's bound
        still holds) and the error (translated) or the cancellation raised.
        """
        if self._flush_lock is None:
            self._flush_lock = anyio.Lock()
        async with self._flush_lock:
            taken = self._take()
            if taken.empty():
                return 0
            with anyio.CancelScope(shield=True):  # its result is kept, even when cancelled
                prepared = await anyio.to_thread.run_sync(self._prepare, taken)
            if not prepared.batch.commands:
                return 0
            try:
                with translate_errors("write traces"):
                    first_error(await run_batch(client, prepared.batch))
            except BaseException:
                self._keep(prepared)
                raise
            if self._dropping:
                self._dropping = False
                log.info("tracing.buffer_recovered", dropped_total=self.dropped)
            return prepared.count()

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
        """Flush every ``observability.flush_interval_seconds`` until cancelled (a flush under
        way is finished first), then once more (shielded, for at most 5 s). Flush failures
        are logged once per outage and the batch is retried; they never end this task."""
        task_status.started()
        try:
            while True:
                await anyio.sleep(self.interval)
                with anyio.CancelScope(shield=True):
                    await self._flush_quietly(client)
        finally:
            with anyio.move_on_after(_FINAL_FLUSH_SECONDS, shield=True):
                await self._flush_quietly(client)
