"""What the worker core records of each delivery: its spans and its metrics.

Spans (with ``observability.tracing``), in the trace the envelope's ``traceparent`` names
(an envelope without one gets a trace of its own, the same for every attempt of its task):

- ``inbox``: from the entry's id (when Redis added it) to its delivery (first deliveries only);
- ``attempt N``: one per delivery, N counting every try (failed attempts and deliveries); the
  handler's own spans (an agent run's SDK spans) are its children (``TaskContext.trace``);
- ``retry in S s`` (a retry scheduled) and ``dead letter: <reason>``, both of zero length, as
  children of the attempt that led to them.

A trace ends (its summary goes to the recent-traces stream) when its task succeeds, or is
dead-lettered; a handler that ends its trace itself (an agent run: its status is the run's)
says so (``Handler.ends_trace``).

Metrics (with ``observability.metrics``), labelled by target: ``queue_wait`` (first
deliveries), ``handler_latency``, ``retries``, ``reclaims``, ``dead_letters``.

Everything here is buffered, never written on the spot: the worker's telemetry flusher
writes it (:class:`~runtime.observability.telemetry.Telemetry`). With both kinds off, a
delivery costs a branch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec

from runtime.envelope import Envelope
from runtime.errors import Defer
from runtime.observability.spans import SpanRecord, TraceSummary
from runtime.observability.telemetry import Telemetry, trace_id_for
from runtime.observability.tracecontext import TraceParent, parse_traceparent
from runtime.worker.outcome import Entry

if TYPE_CHECKING:
    from runtime.app import App, Handler
    from runtime.keys import Keys
    from runtime.settings.model import Settings

__all__ = ["Observer", "trace_of", "worker_telemetry"]


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


def entry_time(entry_id: bytes) -> float:
    """When Redis added the entry (Unix seconds, Redis's clock): its id's milliseconds."""
    millis, _, _ = entry_id.partition(b"-")
    return int(millis) / 1000 if millis.isdigit() else 0.0


class Observer:
    """The spans and metrics of one worker's deliveries (see the module's docstring)."""

    def __init__(self, telemetry: Telemetry | None, *, clock_offset: Callable[[], float]) -> None:
        self.telemetry = telemetry
        self.traces = telemetry.traces if telemetry is not None and telemetry.tracing else None
        self.metrics = telemetry.metrics if telemetry is not None and telemetry.metering else None
        self.active = self.traces is not None or self.metrics is not None
        self._offset = clock_offset

    def attempt(
        self, entry: Entry, envelope: Envelope, tries: int, handler: Handler
    ) -> _Attempt | _Idle:
        """A context manager around one call of *handler*: it gives the attempt span's
        context (``None`` with tracing off) and ends the span with the call's outcome."""
        if not self.active:
            return _IDLE
        return _Attempt(self, entry, envelope, tries, handler)

    def retried(self, entry: Entry, envelope: Envelope, error: str | None, delay: float) -> None:
        """A retry of *entry* was scheduled (written) after *delay* seconds."""
        target = envelope.target
        if self.metrics is not None:
            self.metrics.count("retries", 1, target=target)
        if self.traces is not None:
            trace, parent = self._parent(entry, envelope)
            now = time.time()
            attrs = {"target": target, "delay_s": round(delay, 6), "error": error}
            name = f"retry in {delay:.3g} s"
            self.traces.span(
                trace, name, "retry", parent_id=parent, start=now, end=now, attrs=attrs
            )

    def dead_lettered(
        self, entry: Entry, target: str, envelope: Envelope | None, reason: str, detail: str,
        error: str | None,
    ) -> None:  # fmt: skip
        """*entry* (of *target*) was dead-lettered; the trace of its task (when its envelope
        could be read) ends with the letter."""
        if self.metrics is not None:
            self.metrics.count("dead_letters", 1, target=target)
        if self.traces is None or envelope is None:
            return
        trace, parent = self._parent(entry, envelope)
        now = time.time()
        why = error or detail
        attrs = {"target": target, "reason": reason, "detail": detail}
        name = f"dead letter: {reason}"
        traces = self.traces
        traces.span(
            trace, name, "dead_letter", parent_id=parent, start=now, end=now, attrs=attrs, error=why
        )
        summary = TraceSummary(
            trace_id=trace, name=target, start=envelope.created_at or now, end=now,
            status="error", error=why,
        )  # fmt: skip
        traces.end_trace(summary)

    def reclaimed(self, target: str, count: int) -> None:
        """*count* entries of *target* were taken back from a consumer that went away."""
        if self.metrics is not None and count:
            self.metrics.count("reclaims", count, target=target)

    def _parent(self, entry: Entry, envelope: Envelope) -> tuple[str, str | None]:
        """The trace and parent span of what happens to *entry* now: its attempt span, or,
        before any, the span that published it."""
        span: SpanRecord | None = entry.span
        if span is not None:
            return span.trace_id, span.span_id
        context = trace_of(envelope)
        return context.trace_id, context.span_id or None


class _Idle:
    """The attempt of a worker that records nothing."""

    __slots__ = ()

    def __enter__(self) -> TraceParent | None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_IDLE = _Idle()


class _Attempt:
    """One call of a handler, observed (see :meth:`Observer.attempt`)."""

    __slots__ = ("began", "entry", "envelope", "handler", "observer", "span", "tries")

    def __init__(
        self, observer: Observer, entry: Entry, envelope: Envelope, tries: int, handler: Handler
    ) -> None:
        self.observer = observer
        self.entry = entry
        self.envelope = envelope
        self.tries = tries
        self.handler = handler
        self.span: SpanRecord | None = None
        self.began = 0.0

    def __enter__(self) -> TraceParent | None:
        observer, entry, envelope = self.observer, self.entry, self.envelope
        now = self.began = time.time()
        first = entry.deliveries == 1
        enqueued = entry_time(entry.entry_id) - observer._offset()  # by this host's clock
        if first and observer.metrics is not None and enqueued:
            wait_ms = max(0.0, (now - enqueued) * 1000)
            observer.metrics.observe("queue_wait", wait_ms, target=envelope.target)
        traces = observer.traces
        if traces is None:
            return None
        parent = trace_of(envelope)
        trace, parent_id = parent.trace_id, parent.span_id or None
        attrs: dict[str, Any] = {"target": envelope.target, "task_id": envelope.id}
        if first and enqueued:
            inbox = {**attrs, "entry_id": entry.entry_id.decode()}
            start = min(enqueued, now)
            traces.span(
                trace, "inbox", "inbox", parent_id=parent_id, start=start, end=now, attrs=inbox
            )
        if first and envelope.attempt == 0:
            start = envelope.created_at or now
            traces.start_trace(TraceSummary(trace_id=trace, name=envelope.target, start=start))
        attrs |= {"attempt": self.tries, "deliveries": entry.deliveries}
        name = f"attempt {self.tries}"
        span = traces.span(trace, name, "attempt", parent_id=parent_id, start=now, attrs=attrs)
        self.span = entry.span = span
        return TraceParent(trace, span.span_id)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        observer, envelope = self.observer, self.envelope
        now = time.time()
        if observer.metrics is not None:
            latency = (now - self.began) * 1000
            observer.metrics.observe("handler_latency", latency, target=envelope.target)
        traces, span = observer.traces, self.span
        if traces is None or span is None:
            return
        if isinstance(exc, Defer):  # not an attempt: put back until its turn comes
            name = f"{span.name} (deferred)"
            traces.record(msgspec.structs.replace(span, name=name, end=now, status="ok"))
            return
        error = None if exc is None else f"{type(exc).__name__}: {exc}"
        traces.end_span(span, end=now, error=error)
        if exc is None and not self.handler.ends_trace:
            summary = TraceSummary(
                trace_id=span.trace_id, name=envelope.target,
                start=envelope.created_at or self.began, end=now, status="ok",
            )  # fmt: skip
            traces.end_trace(summary)
