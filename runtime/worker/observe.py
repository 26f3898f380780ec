"""What the worker core records of each delivery: its spans and its metrics.

Spans (with ``observability.tracing``), for a task whose envelope carries a ``traceparent``
(the runtime's producers set one: ``AgentClient``, ``Producer.enqueue``) and for every agent
run (a handler that ends its trace itself, ``Handler.ends_trace``; a run without a
``traceparent`` has the trace named after its id), in that trace:

- ``inbox``: from the entry's id (when Redis added it) to its delivery (first deliveries only);
- ``attempt N``: one per delivery, N counting every try (failed attempts and deliveries); the
  handler's own spans (an agent run's SDK spans) are its children (``TaskContext.trace``);
- ``retry in S s`` (a retry scheduled) and ``dead letter: <reason>``, both of zero length, as
  children of the attempt that led to them.

A task's trace ends (its summary goes to the recent-traces stream) when it succeeds or is
dead-lettered; an agent run ends its own (its status is the run's).

Metrics (with ``observability.metrics``), labelled by target: ``queue_wait`` (first
deliveries), ``handler_latency``, ``retries``, ``reclaims``, ``dead_letters``.

The hot path only notes times: an attempt keeps its own (a small object it has anyway) and is
put on a list when it ends. The spans and samples are made from that list by the worker's
telemetry flusher, in one pass per flush (:meth:`Observer.drain`); an attempt still running
at a flush gets its ``running`` span then, so a long one shows while it lasts. With both kinds
off a delivery costs a branch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from runtime.envelope import Envelope
from runtime.errors import Defer
from runtime.log import get_logger
from runtime.observability.spans import SpanRecord, SpanStatus, TraceRecorder, TraceSummary
from runtime.observability.telemetry import Telemetry, trace_id_for
from runtime.observability.tracecontext import TraceParent, new_span_id, parse_traceparent
from runtime.worker.outcome import Entry

if TYPE_CHECKING:
    from runtime.app import App, Handler
    from runtime.keys import Keys
    from runtime.settings.model import Settings

__all__ = ["Observer", "entry_time", "trace_of", "worker_telemetry"]

log = get_logger(__name__)


def worker_telemetry(app: App, settings: Settings, keys: Keys, consumer: str) -> Telemetry | None:
    """A worker's own telemetry, named after its consumer (``None`` when tracing and
    metrics are both off in the settings)."""
    obs = settings.observability
    if not (obs.tracing or obs.metrics):
        return None
    resource = {"worker": consumer, "app": app.name}
    return Telemetry.from_settings(keys, settings, process=consumer, resource=resource)


def trace_of(envelope: Envelope) -> TraceParent:
    """The context of the span that published *envelope* (its ``traceparent``); for an
    envelope without a valid one, the trace id made from its task id (the same for every
    attempt, :func:`~runtime.observability.telemetry.trace_id_for`) and an empty span id."""
    parent = parse_traceparent(envelope.traceparent)
    if parent is not None:
        return parent
    return TraceParent(trace_id_for(envelope.id), "")


def entry_time(entry_id: bytes | str) -> float:
    """When Redis added the entry (Unix seconds, Redis's clock): its id's milliseconds."""
    raw = entry_id.encode() if isinstance(entry_id, str) else entry_id
    millis, _, _ = raw.partition(b"-")
    return int(millis) / 1000 if millis.isdigit() else 0.0


class Observer:
    """The spans and metrics of one worker's deliveries (see the module's docstring)."""

    def __init__(self, telemetry: Telemetry | None, *, clock_offset: Callable[[], float]) -> None:
        self.telemetry = telemetry
        self.traces = telemetry.traces if telemetry is not None and telemetry.tracing else None
        self.metrics = telemetry.metrics if telemetry is not None and telemetry.metering else None
        self.active = self.traces is not None or self.metrics is not None
        self._offset = clock_offset
        self._done: list[_Attempt] = []
        self._open: dict[int, _Attempt] = {}
        if telemetry is not None and self.active:
            telemetry.add_source(self.drain)

    def attempt(
        self, entry: Entry, envelope: Envelope, tries: int, handler: Handler
    ) -> _Attempt | _Idle:
        """A context manager around one call of *handler*: it gives the attempt span's
        context (``None`` when the task is not traced) and notes the call's outcome."""
        if not self.active:
            return _IDLE
        return _Attempt(self, entry, envelope, tries, handler)

    def retried(self, entry: Entry, envelope: Envelope, error: str | None, delay: float) -> None:
        """A retry of *entry* was scheduled (written) after *delay* seconds."""
        target = envelope.target
        if self.metrics is not None:
            self.metrics.count("retries", 1, target=target)
        context = entry.trace
        if self.traces is not None and context is not None:
            now = time.time()
            attrs = {**self.traces.resource, "target": target, "delay_s": round(delay, 6)}
            attrs["error"] = error
            name = f"retry in {delay:.3g} s"
            self.traces.record(_zero(context, name, "retry", now, attrs, None))

    def dead_lettered(
        self, entry: Entry, handler: Handler, envelope: Envelope | None, reason: str,
        detail: str, error: str | None,
    ) -> None:  # fmt: skip
        """*entry* (of *handler*'s target) was dead-lettered; its task's trace ends with it."""
        target = handler.name
        if self.metrics is not None:
            self.metrics.count("dead_letters", 1, target=target)
        traces = self.traces
        if traces is None or envelope is None:
            return
        context = entry.trace
        if context is None:  # dead-lettered before it ran: traced if it was to be
            if not (envelope.traceparent or handler.ends_trace):
                return
            context = trace_of(envelope)
        now, why = time.time(), error or detail
        attrs = {**traces.resource, "target": target, "reason": reason, "detail": detail}
        traces.record(_zero(context, f"dead letter: {reason}", "dead_letter", now, attrs, why))
        summary = TraceSummary(
            trace_id=context.trace_id, name=target, start=envelope.created_at or now, end=now,
            status="error", error=why,
        )  # fmt: skip
        traces.end_trace(summary)

    def reclaimed(self, target: str, count: int) -> None:
        """*count* entries of *target* were taken back from a consumer that went away."""
        if self.metrics is not None and count:
            self.metrics.count("reclaims", count, target=target)

    # --- the flusher's side ---------------------------------------------------------------
    def drain(self) -> None:
        """Turn the attempts noted since the last call into spans and samples (called by
        the telemetry flusher, on the event loop, before it writes)."""
        done, self._done = self._done, []
        traces, metrics = self.traces, self.metrics
        if traces is not None:
            for attempt in self._open.values():
                if not attempt.shown:
                    attempt.shown = True
                    traces.record(attempt.span(None, traces.resource))
            for attempt in done:
                if attempt.context is not None:
                    attempt.record(traces, self._offset())
        if metrics is not None and done:
            self._latencies(metrics, done)

    def _latencies(self, metrics: Any, done: list[_Attempt]) -> None:
        """``handler_latency`` and ``queue_wait`` (first deliveries) by target, in ms."""
        offset_ms = self._offset() * 1000
        by_target: dict[str, tuple[list[float], list[float]]] = {}
        for attempt in done:
            if attempt.deferred:  # not an attempt: it waited for its turn
                continue
            target = attempt.envelope.target
            lists = by_target.get(target)
            if lists is None:
                lists = by_target[target] = ([], [])
            began_ms = attempt.began * 1000
            lists[0].append(attempt.ended * 1000 - began_ms)
            entry = attempt.entry
            if entry.deliveries == 1:
                millis = entry.entry_id.partition(b"-")[0]  # added, by Redis's clock
                if millis.isdigit():
                    lists[1].append(max(0.0, began_ms + offset_ms - int(millis)))
        for target, (ran, waits) in by_target.items():
            metrics.observe_many("handler_latency", ran, target=target)
            if waits:
                metrics.observe_many("queue_wait", waits, target=target)


def _zero(
    context: TraceParent, name: str, kind: str, at: float, attrs: dict[str, Any],
    error: str | None,
) -> SpanRecord:  # fmt: skip
    """A span of zero length at *at*, a child of *context*'s span."""
    return SpanRecord(
        trace_id=context.trace_id, span_id=new_span_id(), parent_id=context.span_id or None,
        name=name, kind=kind, start=at, end=at, status="error" if error else "ok",
        error=error, attrs=attrs,
    )  # fmt: skip


class _Idle:
    """The attempt of a worker that records nothing."""

    __slots__ = ()

    def __enter__(self) -> TraceParent | None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_IDLE = _Idle()


class _Attempt:
    """One call of a handler, observed (see :meth:`Observer.attempt`): its times on the hot
    path, its spans made later by :meth:`record`."""

    __slots__ = (
        "began", "context", "deferred", "ended", "entry", "envelope", "error", "handler",
        "observer", "parent", "shown", "tries",
    )  # fmt: skip

    def __init__(
        self, observer: Observer, entry: Entry, envelope: Envelope, tries: int, handler: Handler
    ) -> None:
        self.observer = observer
        self.entry = entry
        self.envelope = envelope
        self.tries = tries
        self.handler = handler
        self.began = self.ended = 0.0
        self.context: TraceParent | None = None
        self.parent: TraceParent | None = None
        self.error: str | None = None
        self.deferred = self.shown = False

    def __enter__(self) -> TraceParent | None:
        observer, envelope = self.observer, self.envelope
        self.began = time.time()
        if observer.traces is None or not (envelope.traceparent or self.handler.ends_trace):
            return None
        parent = self.parent = trace_of(envelope)
        context = self.context = self.entry.trace = TraceParent(parent.trace_id, new_span_id())
        observer._open[id(self)] = self
        return context

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.ended = time.time()
        observer = self.observer
        if exc is not None:
            if isinstance(exc, Defer):  # not an attempt: put back until its turn comes
                self.deferred = True
            else:
                self.error = f"{type(exc).__name__}: {exc}"
        if self.context is not None:
            observer._open.pop(id(self), None)
        observer._done.append(self)

    # --- at the flush -----------------------------------------------------------------
    def span(self, end: float | None, resource: dict[str, str]) -> SpanRecord:
        """The attempt's span: running (*end* ``None``) or ended."""
        context, parent, envelope = self.context, self.parent, self.envelope
        assert context is not None and parent is not None
        name = f"attempt {self.tries}" + (" (deferred)" if self.deferred else "")
        status: SpanStatus = "running" if end is None else "error" if self.error else "ok"
        attrs = {**resource, "target": envelope.target, "task_id": envelope.id,
                 "attempt": self.tries, "deliveries": self.entry.deliveries}  # fmt: skip
        return SpanRecord(
            trace_id=context.trace_id, span_id=context.span_id, parent_id=parent.span_id or None,
            name=name, kind="attempt", start=self.began, end=end, status=status,
            error=self.error, attrs=attrs,
        )  # fmt: skip

    def record(self, traces: TraceRecorder, offset: float) -> None:
        """Record the ended attempt's spans (and its inbox's, and the end of its trace)."""
        context, parent, envelope = self.context, self.parent, self.envelope
        assert context is not None and parent is not None
        entry = self.entry
        if entry.deliveries == 1:
            enqueued = entry_time(entry.entry_id) - offset  # by this host's clock
            if enqueued:
                attrs = {**traces.resource, "target": envelope.target,
                         "entry_id": entry.entry_id.decode()}  # fmt: skip
                start = min(enqueued, self.began - 1e-6)  # before its attempt, clocks apart
                inbox = SpanRecord(
                    trace_id=context.trace_id, span_id=new_span_id(),
                    parent_id=parent.span_id or None, name="inbox", kind="inbox", start=start,
                    end=self.began, status="ok", attrs=attrs,
                )  # fmt: skip
                traces.record(inbox)
        traces.record(self.span(self.ended, traces.resource))
        if self.error is None and not self.deferred and not self.handler.ends_trace:
            summary = TraceSummary(
                trace_id=context.trace_id, name=envelope.target,
                start=envelope.created_at or self.began, end=self.ended, status="ok",
            )  # fmt: skip
            traces.end_trace(summary)
