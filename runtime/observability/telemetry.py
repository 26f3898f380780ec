"""One process's telemetry: its trace recorder, its metrics recorder, its OpenTelemetry bridge,
and the task that flushes them.

    tel = Telemetry.from_settings(keys, settings, process="host:ab12:0",
                                  resource={"worker": "host:ab12:0", "app": "support"})
    async with anyio.create_task_group() as tg:
        await tg.start(tel.run, client)   # flushes every observability.flush_interval_seconds
        ...
        tg.cancel_scope.cancel()          # a last flush (shielded) on the way out

Recording is synchronous and does no I/O (a span or a sample is buffered); :meth:`Telemetry.run`
writes what was buffered, traces first (their listeners turn ended SDK spans into metrics and
OpenTelemetry spans), then metrics, each in one round trip. A flush under way is never cut by
a cancellation (what it took out of the buffers would be lost), and a failing flush (a Redis
outage, a bug) is logged once per kind and episode, never raised: telemetry never stops a
worker.

The app side has no flusher: a submit writes its span, its lifecycle event and its count in
its own round trip (:func:`submit_span`, :func:`queue_count`).
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import redis.asyncio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from runtime.errors import ConfigError, RedisError
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.observability.metrics import MetricsRecorder, clean_labels, encode_field, spec_of
from runtime.observability.spans import SpanRecord, TraceRecorder
from runtime.observability.trace_budget import TraceBook
from runtime.observability.tracecontext import (
    TraceParent,
    new_span_id,
    parse_traceparent,
)
from runtime.settings.model import Settings

if TYPE_CHECKING:
    from runtime.observability.otel import OTelBridge

__all__ = [
    "Telemetry",
    "app_bridge",
    "new_traceparent",
    "otel_bridge",
    "queue_count",
    "queue_span",
    "span_metrics",
    "submit_span",
    "trace_id_for",
]

log = get_logger(__name__)

_encode = msgspec.json.Encoder().encode

_FINAL_FLUSH_SECONDS = 5.0
_MODEL_KINDS = frozenset({"generation", "response"})


class Telemetry:
    """The recorders of one process and their flusher (see the module's docstring).

    :attr:`tracing` and :attr:`metering` say what the settings turned on: with one off, its
    recorder accepts every call and writes nothing; callers on hot paths test the flag
    first, so a switched-off kind costs a branch.
    """

    def __init__(
        self,
        traces: TraceRecorder,
        metrics: MetricsRecorder,
        otel: OTelBridge | None = None,
        *,
        interval: float = 0.5,
    ) -> None:
        self.traces = traces
        self.metrics = metrics
        self.otel = otel
        self.tracing = traces.enabled
        self.metering = metrics.enabled
        self.interval = interval
        self._failing: set[str] = set()
        self._sources: list[Callable[[], None]] = []
        if otel is not None:
            traces.add_listener(otel.export)
        if self.metering:
            traces.add_listener(lambda span: span_metrics(metrics, span))

    @classmethod
    def from_settings(
        cls, keys: Keys, settings: Settings, *, process: str, resource: dict[str, str]
    ) -> Telemetry:
        """The recorders the settings ask for; an OpenTelemetry bridge when tracing is on and
        the app installed an OpenTelemetry SDK tracer provider, or ``observability.otel_exporter``
        names an exporter."""
        obs = settings.observability
        traces = TraceRecorder(keys, settings, resource)
        metrics = MetricsRecorder(keys, settings, process=process)
        otel = otel_bridge(settings, resource) if obs.tracing else None
        return cls(traces, metrics, otel, interval=obs.flush_interval_seconds)

    def add_source(self, drain: Callable[[], None]) -> None:
        """Call *drain* at the start of every flush (on the event loop): a recorder of many
        records per second (the worker core) notes them cheaply and hands them over then."""
        self._sources.append(drain)

    async def flush(self, client: redis.asyncio.Redis) -> None:
        """Write what is buffered: traces (their listeners first), then metrics (even when
        the traces' flush is cut). A failure is logged once per kind and episode; what could
        not be written is kept for the next flush."""
        self._drain()
        try:
            await self._flush_kind("traces", self.traces.flush, client)
        finally:
            with anyio.CancelScope(shield=True):  # never cut half-written (MetricsRecorder.run)
                await self._flush_kind("metrics", self.metrics.flush, client)

    def _drain(self) -> None:
        for drain in self._sources:
            try:
                drain()
            except Exception:  # a bug there must not stop the flusher
                log.exception("telemetry.source_failed", source=repr(drain))

    async def _flush_kind(
        self, kind: str, flush: Callable[[redis.asyncio.Redis], Any], client: redis.asyncio.Redis
    ) -> None:
        try:
            await flush(client)
        except RedisError as exc:
            if kind not in self._failing:
                self._failing.add(kind)
                log.warning("telemetry.flush_failed", kind=kind, error=str(exc))
        except Exception:
            if kind not in self._failing:
                self._failing.add(kind)
                log.exception("telemetry.flush_crashed", kind=kind)
        else:
            if kind in self._failing:
                self._failing.discard(kind)
                log.info("telemetry.flush_recovered", kind=kind)

    async def run(
        self, client: redis.asyncio.Redis, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Flush every ``observability.flush_interval_seconds`` until cancelled (a flush under
        way is finished first); then once more, shielded: the traces for at most 5 s, the
        metrics whatever became of them; then shut the OpenTelemetry bridge down."""
        task_status.started()
        try:
            while True:
                await anyio.sleep(self.interval)
                with anyio.CancelScope(shield=True):
                    await self.flush(client)
        finally:
            with anyio.CancelScope(shield=True):
                await self._final_flush(client)

    async def _final_flush(self, client: redis.asyncio.Redis) -> None:
        self._drain()
        try:
            with anyio.move_on_after(_FINAL_FLUSH_SECONDS):
                await self._flush_kind("traces", self.traces.flush, client)
        finally:
            await self._flush_kind("metrics", self.metrics.flush, client)
            if self.otel is not None:
                with anyio.move_on_after(_FINAL_FLUSH_SECONDS):
                    await anyio.to_thread.run_sync(self.otel.shutdown, abandon_on_cancel=True)


def otel_bridge(settings: Settings, resource: dict[str, str]) -> OTelBridge | None:
    """The OpenTelemetry bridge of a worker, imported only when it can be wanted: an exporter
    is named, or an OpenTelemetry SDK (a tracer provider of the app's) is loaded."""
    wanted = settings.observability.otel_exporter != "none"
    if not wanted and "opentelemetry.sdk.trace" not in sys.modules:
        return None
    from runtime.observability.otel import OTelBridge

    return OTelBridge.from_settings(settings, resource)


_app_bridge: list[OTelBridge | None] = []


def app_bridge(settings: Settings) -> OTelBridge | None:
    """The bridge an app's submits export their spans through (one per process, made at
    the first traced submit): the app's own OpenTelemetry SDK tracer provider, or one for
    ``observability.otel_exporter``; ``None`` when there is neither (the check is a
    dictionary lookup until an OpenTelemetry SDK is loaded). A bridge that cannot be made
    (``otlp`` without the ``otel`` extra) is logged once and the app goes on without one:
    a submit never fails for its telemetry."""
    if _app_bridge:
        return _app_bridge[0]
    try:
        bridge = otel_bridge(settings, {})
    except ConfigError as exc:
        log.error("telemetry.otel_unavailable", error=str(exc), effect="no OpenTelemetry export")
        _app_bridge.append(None)
        return None
    except Exception:
        log.exception("telemetry.otel_unavailable", effect="no OpenTelemetry export")
        _app_bridge.append(None)
        return None
    if bridge is not None:
        _app_bridge.append(bridge)
    return bridge


def span_metrics(metrics: MetricsRecorder, span: SpanRecord) -> None:
    """The metrics an ended SDK span stands for: a model call (``generation`` / ``response``:
    ``model_calls``, ``tokens_in``, ``tokens_out`` from its usage), a tool call (``function``:
    ``tool_calls`` by tool) or one turn of the run (the SDK's ``turn`` span: ``turn_latency``,
    labelled with the turn's agent). Otherwise the agent label is the run's agent (the
    attribute the worker binds to every span of a run)."""
    kind = span.kind
    if kind in _MODEL_KINDS:
        attrs = span.attrs
        agent = attrs.get("agent")
        metrics.count("model_calls", 1, agent=agent)
        usage = attrs.get("usage")
        if isinstance(usage, dict):
            metrics.count("tokens_in", _number(usage.get("input_tokens")), agent=agent)
            metrics.count("tokens_out", _number(usage.get("output_tokens")), agent=agent)
    elif kind == "function":
        attrs = span.attrs
        metrics.count("tool_calls", 1, agent=attrs.get("agent"), tool=attrs.get("tool"))
    elif kind == "turn" and span.end is not None:
        agent = span.attrs.get("agent")  # the turn's own (the SDK span's agent_name)
        metrics.observe("turn_latency", (span.end - span.start) * 1000, agent=agent)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def queue_count(pipe: Any, keys: Keys, metric: str, value: float, **labels: str | None) -> None:
    """Queue on *pipe* the addition of *value* to the fleet total of the counter *metric*
    (``HINCRBYFLOAT`` on ``keys.metrics_totals()``, the field as the metrics recorder names
    it): for a process without a flusher, in a round trip it makes anyway."""
    spec_of(metric, "counter")
    field = encode_field(metric, clean_labels(labels))
    pipe.execute_command("HINCRBYFLOAT", keys.metrics_totals(), field, value)


_submit_book = TraceBook()  # the spans submits write, per trace (one app span, many submits)
_submit_lock = threading.Lock()


def queue_span(pipe: Any, keys: Keys, span: SpanRecord, ttl_ms: int) -> None:
    """Queue the write of *span* and its trace's expiry (``HSET``, ``PEXPIRE``) on *pipe*, a
    redis-py pipeline or a :class:`~runtime.redis.connection.Batch` (the same write as the
    recorder's flush). Like a recorder, a process writes at most
    :data:`~runtime.observability.trace_budget.MAX_SPANS_PER_TRACE` spans of one trace this
    way (many submits inside one long-lived app span); beyond, nothing is queued."""
    with _submit_lock:
        if not _submit_book.admit((span,)):
            return
    key = keys.trace_spans(span.trace_id)
    pipe.execute_command("HSET", key, span.span_id, _encode(span))
    pipe.execute_command("PEXPIRE", key, ttl_ms)


def trace_id_for(task_id: str) -> str:
    """The trace id of a task (a run) whose publisher gave no trace context: the first 32
    hex digits of the SHA-1 of its id, so every attempt of the task, and anyone who knows
    its id, finds it (``submit_run.lua`` makes the same with ``redis.sha1hex``)."""
    return hashlib.sha1(task_id.encode(), usedforsecurity=False).hexdigest()[:32]


def submit_span(
    target: str, traceparent: str | None, *, task_id: str, start: float, attrs: dict[str, Any]
) -> tuple[SpanRecord, str]:
    """The ``submit <target>`` span of a submit (from *start* to now) and the ``traceparent``
    its entry carries: a child of *traceparent* (the caller's OpenTelemetry span, when valid),
    else the root of the task's own trace (:func:`trace_id_for`)."""
    parent = parse_traceparent(traceparent)
    span = SpanRecord(
        trace_id=parent.trace_id if parent is not None else trace_id_for(task_id),
        span_id=new_span_id(),
        parent_id=parent.span_id if parent is not None else None,
        name=f"submit {target}",
        kind="submit",
        start=start,
        end=max(start, time.time()),
        status="ok",
        attrs=attrs,
    )
    sampled = parent.sampled if parent is not None else True  # the app's sampler decided
    return span, TraceParent(span.trace_id, span.span_id, sampled).header()


def new_traceparent(traceparent: str | None, task_id: str) -> str:
    """*traceparent* when valid, else the header of the task's own trace
    (:func:`trace_id_for`) with a span id of its own (no span is written for it)."""
    if traceparent is not None and parse_traceparent(traceparent) is not None:
        return traceparent
    return TraceParent(trace_id_for(task_id), new_span_id()).header()
