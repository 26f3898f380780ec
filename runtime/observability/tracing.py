"""The Agents SDK ``TracingProcessor`` that stores every trace and span in Redis.

Standalone (the seed's usage): the processor has its own recorder, written by a background
thread with its own event loop and Redis client::

    from agents import add_trace_processor
    from runtime.observability.tracing import RedisTracingProcessor

    processor = RedisTracingProcessor(redis_url="redis://localhost:6379", stream_name="traces")
    add_trace_processor(processor)
    result = await Runner.run(agent, "hello")
    processor.force_flush()
    for trace in await processor.list_traces(limit=10):
        print(trace["name"], len(await processor.get_spans(trace["trace_id"])))

In a worker, it feeds the worker's :class:`~runtime.observability.spans.TraceRecorder`
(``recorder=``), which the worker flushes, and :meth:`RedisTracingProcessor.bind` parents a
run's SDK spans on its attempt span, in the run's own context (runs sharing one trace keep
apart). :func:`install` registers one dispatching processor per process, which hands a run's
callbacks to the processor that bound it and the rest to the one installed last. Either way
the SDK's callbacks run on the agent's event loop and do no I/O: they buffer the span, to be
converted at the flush.
"""

from __future__ import annotations

import contextvars
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from agents.tracing import (
    Span,
    Trace,
    TracingProcessor,
    add_trace_processor,
    set_trace_processors,
)

from runtime.errors import AgentsWorkerError, ConfigError
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.observability.sdk_spans import span_record, trace_hex
from runtime.observability.spans import (
    Deferred,
    SpanRecord,
    TraceRecorder,
    TraceSummary,
    clip,
)
from runtime.observability.trace_store import TraceStore
from runtime.observability.trace_writer import TraceWriterThread
from runtime.redis.connection import create_client
from runtime.settings import Settings, load_settings

if TYPE_CHECKING:
    from runtime.observability.otel import OTelBridge

__all__ = ["RedisTracingProcessor", "install", "span_record", "trace_hex"]

log = get_logger(__name__)

_SHUTDOWN_SECONDS = 10.0
# Traces begun whose end never came (a crashed run) are forgotten, oldest first, beyond this
# many.
_MAX_OPEN = 10_000


def _forget_oldest(table: dict[str, Any]) -> None:
    while len(table) > _MAX_OPEN:
        del table[next(iter(table))]


class _TraceState(msgspec.Struct):
    name: str
    start: float
    error: str | None = None
    agent: str | None = None


class _Binding:
    """A run's SDK trace bound to its attempt span, in the run's context (see
    :meth:`RedisTracingProcessor.bind`)."""

    __slots__ = ("attrs", "owner", "parent_id", "previous", "sdk_id")

    def __init__(
        self, owner: RedisTracingProcessor, sdk_id: str, parent_id: str, attrs: dict[str, Any],
        previous: _Binding | None,
    ) -> None:  # fmt: skip
        self.owner = owner
        self.sdk_id = sdk_id
        self.parent_id = parent_id
        self.attrs = attrs
        self.previous = previous


_BINDING: contextvars.ContextVar[_Binding | None] = contextvars.ContextVar(
    "aw_trace_binding", default=None
)


class _SdkSpan(Deferred):
    """An SDK span (its start or its end) to convert at the flush."""

    __slots__ = ("attrs", "parent_id", "sdk_span")

    def __init__(
        self, span: Span[Any], ended: bool, parent_id: str | None, attrs: Mapping[str, Any]
    ) -> None:
        # Deferred's fields set here (not through its __init__): one call less per span
        self._make = None
        self._value = None
        self.built = False
        self.ended = ended
        self.sdk_span = span
        self.parent_id = parent_id
        self.attrs = attrs

    def build(self) -> SpanRecord:
        return span_record(
            self.sdk_span, ended=self.ended, parent_id=self.parent_id, attrs=self.attrs
        )


class RedisTracingProcessor(TracingProcessor):
    """Stores the SDK's traces and spans in Redis (see the module docstring).

    *recorder*: the worker's mode (the worker flushes it). Without one: standalone, with a
    background writer to *redis_url* (default ``redis.url`` of the settings); *stream_name*
    names the recent-traces stream (default ``keys.traces()``), *trace_ttl* the seconds a
    trace is kept (default ``runs.result_ttl_seconds``).
    """

    def __init__(
        self,
        redis_url: str | None = None,
        stream_name: str | None = None,
        *,
        recorder: TraceRecorder | None = None,
        settings: Settings | None = None,
        trace_ttl: float | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.keys = recorder.keys if recorder is not None else Keys(self.settings.redis.key_prefix)
        self._lock = threading.Lock()
        self._traces: dict[str, _TraceState] = {}
        self._closed = False
        self._background: TraceWriterThread | None = None
        self._bridge: OTelBridge | None = None
        self.redis_url = redis_url or self.settings.redis.url or os.environ.get("REDIS_URL")
        if recorder is not None:
            self.recorder = recorder
            self.stream = recorder.stream
            return
        if not self.redis_url:
            raise ConfigError(
                "RedisTracingProcessor needs redis_url= (or redis.url / REDIS_URL) when no "
                "recorder is given"
            )
        self.stream = stream_name or self.keys.traces()
        self.recorder = TraceRecorder(
            self.keys, self.settings, stream=self.stream, ttl_seconds=trace_ttl
        )
        self._bridge = _otel_bridge(self.settings)
        if self._bridge is not None:
            self.recorder.add_listener(self._bridge.export)
        self._background = TraceWriterThread(self.recorder, self.settings, self.redis_url)

    # --- binding the SDK trace of a run to the runtime's attempt span ---------------------
    def bind(self, sdk_trace_id: str, parent_span_id: str, attrs: Mapping[str, Any]) -> None:
        """Parent the root spans of SDK trace *sdk_trace_id* on *parent_span_id* (the
        runtime's attempt span) and add *attrs* (run_id, agent, worker, app) to every span of
        it, in the calling context until :meth:`unbind`: the SDK calls its processors in the
        context of the run (the task that calls ``Runner.run`` and the tasks it starts), so
        runs that share one trace (two submits in one app span), at once in one process,
        each keep their own parent and attributes. A bound trace's summary is written by the
        binder (the worker), not here."""
        merged = {**self.recorder.resource, **attrs}
        _BINDING.set(_Binding(self, sdk_trace_id, parent_span_id, merged, _BINDING.get()))

    def unbind(self, sdk_trace_id: str) -> None:
        """End the binding of *sdk_trace_id* made in this context (after its run); tasks the
        run started keep it for their late spans."""
        current = _BINDING.get()
        if current is not None and current.owner is self and current.sdk_id == sdk_trace_id:
            _BINDING.set(current.previous)

    def _bound(self, sdk_id: str) -> _Binding | None:
        binding = _BINDING.get()
        if binding is not None and binding.owner is self and binding.sdk_id == sdk_id:
            return binding
        return None

    # --- the SDK's callbacks: convert and buffer, no I/O ------------------------------------
    def on_trace_start(self, trace: Trace) -> None:
        try:
            sdk_id = trace.trace_id
            if self._bound(sdk_id) is not None:
                return
            state = _TraceState(name=trace.name, start=time.time())
            with self._lock:
                self._traces[sdk_id] = state
                _forget_oldest(self._traces)
            self.recorder.start_trace(
                TraceSummary(trace_id=trace_hex(sdk_id), name=state.name, start=state.start)
            )
        except Exception:
            log.exception("tracing.callback_failed", callback="on_trace_start")

    def on_trace_end(self, trace: Trace) -> None:
        try:
            sdk_id = trace.trace_id
            if self._bound(sdk_id) is not None:
                return
            with self._lock:
                state = self._traces.pop(sdk_id, None)
            if state is None:
                return
            self.recorder.end_trace(
                TraceSummary(
                    trace_id=trace_hex(sdk_id),
                    name=state.name,
                    agent=state.agent,
                    start=state.start,
                    end=time.time(),
                    status="error" if state.error else "ok",
                    error=state.error,
                )
            )
        except Exception:
            log.exception("tracing.callback_failed", callback="on_trace_end")

    def on_span_start(self, span: Span[Any]) -> None:
        self._record(span, False, self._bound(span.trace_id))

    def on_span_end(self, span: Span[Any]) -> None:
        self._record(span, True, self._bound(span.trace_id))

    def _record(self, span: Span[Any], ended: bool, binding: _Binding | None) -> None:
        """Buffer the span, to be converted at the flush (off the agent's loop); for an
        unbound trace, note what its summary needs at once."""
        try:
            if binding is not None:
                self.recorder.defer(_SdkSpan(span, ended, binding.parent_id, binding.attrs))
                return
            data = span.span_data
            if data.type == "agent":
                with self._lock:
                    self._note(span.trace_id, data, span.error if ended else None)
            self.recorder.defer(_SdkSpan(span, ended, None, self.recorder.resource))
        except Exception:
            log.exception(
                "tracing.callback_failed", callback="on_span_end" if ended else "on_span_start"
            )

    def _note(self, sdk_id: str, data: Any, error: Any) -> None:
        """Keep the trace's first agent and an agent's error (with the lock held)."""
        state = self._traces.get(sdk_id)
        if state is None:
            return
        if state.agent is None:
            state.agent = str(data.name)
        if error and state.error is None:
            message = str(error.get("message") or "error")
            state.error = clip(f"{message}: {error.get('data')}" if error.get("data") else message)

    def force_flush(self) -> None:
        """Standalone: block until everything buffered is written (on the writer's thread;
        a Redis error is logged, the batch kept). With a recorder: nothing (the worker
        flushes)."""
        if self._background is None or self._closed:
            return
        try:
            self._background.flush()
        except AgentsWorkerError as exc:
            log.warning("tracing.force_flush_failed", error=str(exc))
        except Exception:
            log.exception("tracing.force_flush_failed")

    def shutdown(self, timeout: float | None = None) -> None:
        """Standalone: write what is buffered and stop the writer (once; later calls do
        nothing). With a recorder: nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._background is None:
            return
        try:
            self._background.stop(_SHUTDOWN_SECONDS if timeout is None else timeout)
            if self._bridge is not None:
                self._bridge.shutdown()
        except Exception:
            log.exception("tracing.shutdown_failed")

    # --- the seed's read API -----------------------------------------------------------
    async def _read(self, action: Any) -> Any:
        if not self.redis_url:
            raise ConfigError("reading traces needs redis_url= (or redis.url / REDIS_URL)")
        client = create_client(self.settings.redis, self.redis_url)
        try:
            return await action(TraceStore(client, self.keys, stream=self.stream))
        finally:
            await client.aclose()

    async def get_trace(self, trace_id: str) -> dict[str, Any] | None:
        """The summary of a trace (``trace_<hex>`` or bare hex) as a dict, or None."""
        summary = await self._read(lambda store: store.get_trace(trace_id))
        return None if summary is None else msgspec.structs.asdict(summary)

    async def get_spans(self, trace_id: str) -> list[dict[str, Any]]:
        """The spans of a trace as dicts, by start time."""
        spans = await self._read(lambda store: store.get_spans(trace_id))
        return [msgspec.structs.asdict(span) for span in spans]

    async def list_traces(
        self, limit: int = 100, name_filter: str | None = None
    ) -> list[dict[str, Any]]:
        """The most recent ended traces as dicts, newest first (*name_filter*: a part of
        the name)."""
        found = await self._read(lambda store: store.list_traces(limit, name=name_filter))
        return [msgspec.structs.asdict(summary) for summary in found]


def _otel_bridge(settings: Settings) -> OTelBridge | None:
    """The standalone processor's OpenTelemetry bridge: the app's SDK tracer provider, or the
    exporter the settings name; the OpenTelemetry SDK is imported only when it can be wanted."""
    if settings.observability.otel_exporter == "none" and "opentelemetry.sdk.trace" not in (
        sys.modules
    ):
        return None
    from runtime.observability.otel import OTelBridge

    return OTelBridge.from_settings(settings)


class _Dispatch(TracingProcessor):
    """The one processor :func:`install` registers with the SDK: a run's callbacks go to the
    processor that bound it (the worker running it, in the run's context), all others to
    the processor installed last. Installing another (a worker restarted in the same
    process) replaces the one before instead of adding to the SDK's list."""

    def __init__(self) -> None:
        self.current: TracingProcessor | None = None

    def _target(self, sdk_id: str) -> TracingProcessor | None:
        binding = _BINDING.get()
        if binding is not None and binding.sdk_id == sdk_id:
            return binding.owner
        return self.current

    def on_trace_start(self, trace: Trace) -> None:
        if (target := self._target(trace.trace_id)) is not None:
            target.on_trace_start(trace)

    def on_trace_end(self, trace: Trace) -> None:
        if (target := self._target(trace.trace_id)) is not None:
            target.on_trace_end(trace)

    def on_span_start(self, span: Span[Any]) -> None:
        binding = _BINDING.get()
        if binding is not None and binding.sdk_id == span.trace_id:
            binding.owner._record(span, False, binding)
        elif (target := self.current) is not None:
            target.on_span_start(span)

    def on_span_end(self, span: Span[Any]) -> None:
        binding = _BINDING.get()
        if binding is not None and binding.sdk_id == span.trace_id:
            binding.owner._record(span, True, binding)
        elif (target := self.current) is not None:
            target.on_span_end(span)

    def force_flush(self) -> None:
        if (target := self.current) is not None:
            target.force_flush()

    def shutdown(self, timeout: float | None = None) -> None:
        target = self.current
        if isinstance(target, RedisTracingProcessor):
            target.shutdown(timeout)
        elif target is not None:
            target.shutdown()


_dispatch = _Dispatch()
_install_lock = threading.Lock()
_registered: list[bool] = []


def install(processor: TracingProcessor) -> None:
    """Register *processor* with the SDK, idempotently, in place of the one installed before
    (a worker restarted in the process): without ``OPENAI_API_KEY`` ours becomes the SDK's
    only processor (OpenAI's exporter would only fail); with a key it is added once beside
    the SDK's other processors (OpenAI's exporter and the app's own are kept). Runs bound
    by an earlier processor, still running, keep reaching it."""
    with _install_lock:
        _dispatch.current = processor
        if not os.environ.get("OPENAI_API_KEY"):
            set_trace_processors([_dispatch])
        elif not _registered:
            add_trace_processor(_dispatch)
            _registered.append(True)
