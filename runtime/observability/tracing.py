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
(``recorder=``), which the worker flushes. Either way the SDK's callbacks run on the agent's
event loop and do no I/O: they convert the span and buffer it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec
from agents.tracing import (
    Span,
    SpanData,
    Trace,
    TracingProcessor,
    add_trace_processor,
    set_trace_processors,
)
from agents.tracing.span_data import (
    ResponseSpanData,
)

from runtime.errors import AgentsWorkerError, ConfigError
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.observability.spans import (
    Deferred,
    SpanRecord,
    SpanStatus,
    TraceRecorder,
    TraceSummary,
    clip,
)
from runtime.observability.trace_store import TraceStore
from runtime.observability.trace_writer import TraceWriterThread
from runtime.observability.tracecontext import trace_id_of
from runtime.redis.connection import create_client
from runtime.settings import Settings, load_settings

if TYPE_CHECKING:
    from runtime.observability.otel import OTelBridge

__all__ = ["RedisTracingProcessor", "install", "span_record", "trace_hex"]

log = get_logger(__name__)

_SHUTDOWN_SECONDS = 10.0
# Traces begun and bindings made whose end never came (a crashed run) are forgotten, oldest
# first, beyond this many.
_MAX_OPEN = 10_000


@functools.lru_cache(maxsize=4096)
def trace_hex(sdk_trace_id: str) -> str:
    """Our 32-hex trace id for an SDK trace id: its hex part (``trace_<32 hex>``), else a
    stable hash of the whole id (a user may pick any id)."""
    return (
        trace_id_of(sdk_trace_id)
        or hashlib.blake2b(sdk_trace_id.encode(), digest_size=16).hexdigest()
    )


def _unix(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if moment.tzinfo is None:  # the SDK writes UTC; a provider of a user's may not say so
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _label(data: SpanData) -> str:
    """The type's own name field: agent/function/guardrail/custom name, model, server…"""
    kind = data.type
    if kind == "handoff":
        return (
            f"{getattr(data, 'from_agent', None) or '?'} → {getattr(data, 'to_agent', None) or '?'}"
        )
    if kind == "turn":
        return f"{getattr(data, 'turn', '?')} ({getattr(data, 'agent_name', '?')})"
    if isinstance(data, ResponseSpanData):
        response = data.response
        return str(response.model) if response is not None else ""
    for attr in ("name", "model", "server"):
        value = getattr(data, attr, None)
        if value:
            return str(value)
    return ""


def _usage(data: SpanData) -> dict[str, Any] | None:
    usage = getattr(data, "usage", None)
    if isinstance(data, ResponseSpanData) and data.response is not None:
        got = data.response.usage
        if got is not None:
            return {"input_tokens": got.input_tokens, "output_tokens": got.output_tokens}
    if isinstance(usage, Mapping):
        keep = ("input_tokens", "output_tokens", "requests", "total_tokens")
        return {k: usage[k] for k in keep if k in usage}
    return None


def _agent_attrs(data: Any, exported: dict[str, Any]) -> dict[str, Any]:
    tools, handoffs = exported.get("tools"), exported.get("handoffs")
    return {"agent": data.name, "tools": tools, "handoffs": handoffs}


def _function_attrs(data: Any, exported: dict[str, Any]) -> dict[str, Any]:
    return {"tool": data.name, "input": data.input, "output": data.output}


def _handoff_attrs(data: Any, exported: dict[str, Any]) -> dict[str, Any]:
    return {"from": data.from_agent, "to": data.to_agent}


def _model_attrs(data: Any, exported: dict[str, Any]) -> dict[str, Any]:
    if isinstance(data, ResponseSpanData) and data.response is not None:
        return {"model": data.response.model, "response_id": data.response.id}
    return {"model": exported.get("model")}


def _turn_attrs(data: Any, exported: dict[str, Any]) -> dict[str, Any]:
    return {"turn": data.turn, "agent": data.agent_name}


def _task_attrs(data: Any, exported: dict[str, Any]) -> dict[str, Any]:
    return {"task": data.name}


def _other_attrs(data: Any, exported: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in exported.items() if k != "type"}


_ATTRS = {
    "agent": _agent_attrs,
    "function": _function_attrs,
    "handoff": _handoff_attrs,
    "generation": _model_attrs,
    "response": _model_attrs,
    "turn": _turn_attrs,
    "task": _task_attrs,
}


def _data_attrs(data: SpanData) -> dict[str, Any]:
    """Attributes of the span's data (model usage included), cut to a bounded size."""
    attrs = _ATTRS.get(data.type, _other_attrs)(data, data.export() or {})
    usage = _usage(data)
    if usage:
        attrs["usage"] = usage
    kept: dict[str, Any] = clip({k: v for k, v in attrs.items() if v is not None})
    return kept


def _error_text(span: Span[Any]) -> str | None:
    error = span.error
    if not error:
        return None
    message = str(error.get("message") or "error")
    data = error.get("data")
    text: str = clip(f"{message}: {data}" if data else message)
    return text


def span_record(
    span: Span[Any],
    *,
    ended: bool,
    parent_id: str | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> SpanRecord:
    """The :class:`SpanRecord` of an SDK span (started, or *ended*); *parent_id* is used for
    a span without a parent of its own (a root), *attrs* are added to the span's. A started
    span carries *attrs* only: the data's own (usage, tool output…) come with its end."""
    data = span.span_data
    label = _label(data)
    start = _unix(span.started_at) or time.time()
    end = (_unix(span.ended_at) or time.time()) if ended else None
    error = _error_text(span) if ended else None
    status: SpanStatus = "running" if not ended else "error" if error else "ok"
    return SpanRecord(
        trace_id=trace_hex(span.trace_id),
        span_id=span.span_id,
        parent_id=span.parent_id or parent_id,
        name=f"{data.type}: {label}" if label else data.type,
        kind=data.type,
        start=start,
        end=end,
        status=status,
        error=error,
        attrs={**(attrs or {}), **_data_attrs(data)} if ended else dict(attrs or {}),
    )


def _forget_oldest(table: dict[str, Any]) -> None:
    while len(table) > _MAX_OPEN:
        del table[next(iter(table))]


class _TraceState(msgspec.Struct):
    name: str
    start: float
    error: str | None = None
    agent: str | None = None


class _Binding(msgspec.Struct, frozen=True):
    parent_id: str
    attrs: dict[str, Any]


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
        self._bindings: dict[str, _Binding] = {}
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
        it. A bound trace's summary is written by the binder (the worker), not here."""
        merged = {**self.recorder.resource, **attrs}
        with self._lock:
            self._bindings[sdk_trace_id] = _Binding(parent_span_id, merged)
            _forget_oldest(self._bindings)

    def unbind(self, sdk_trace_id: str) -> None:
        """Forget the binding of *sdk_trace_id* (after its run)."""
        with self._lock:
            self._bindings.pop(sdk_trace_id, None)

    # --- the SDK's callbacks: convert and buffer, no I/O ------------------------------------
    def on_trace_start(self, trace: Trace) -> None:
        try:
            sdk_id = trace.trace_id
            state = _TraceState(name=trace.name, start=time.time())
            with self._lock:
                self._traces[sdk_id] = state
                _forget_oldest(self._traces)
                bound = sdk_id in self._bindings
            if not bound:
                self.recorder.start_trace(
                    TraceSummary(trace_id=trace_hex(sdk_id), name=state.name, start=state.start)
                )
        except Exception:
            log.exception("tracing.callback_failed", callback="on_trace_start")

    def on_trace_end(self, trace: Trace) -> None:
        try:
            sdk_id = trace.trace_id
            with self._lock:
                state = self._traces.pop(sdk_id, None)
                bound = sdk_id in self._bindings
            if state is None or bound:
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
        try:
            self._record(span, ended=False)
        except Exception:
            log.exception("tracing.callback_failed", callback="on_span_start")

    def on_span_end(self, span: Span[Any]) -> None:
        try:
            self._record(span, ended=True)
        except Exception:
            log.exception("tracing.callback_failed", callback="on_span_end")

    def _record(self, span: Span[Any], *, ended: bool) -> None:
        """Buffer the span, to be converted at the flush (off the agent's loop); note what
        the trace's summary needs at once."""
        sdk_id = span.trace_id
        data = span.span_data
        with self._lock:
            binding = self._bindings.get(sdk_id)
            if data.type == "agent":
                self._note(sdk_id, data, span.error if ended else None)
        if binding is None:
            make = partial(span_record, span, ended=ended, attrs=self.recorder.resource)
        else:
            make = partial(
                span_record, span, ended=ended, parent_id=binding.parent_id, attrs=binding.attrs
            )
        self.recorder.record(Deferred(make, ended=ended))

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


_added: weakref.WeakSet[TracingProcessor] = weakref.WeakSet()
_install_lock = threading.Lock()


def install(processor: TracingProcessor) -> None:
    """Register *processor* with the SDK, idempotently: without ``OPENAI_API_KEY`` it becomes
    the SDK's only processor (OpenAI's exporter would only fail; calling again sets the same
    list), with a key it is added once to the SDK's processors (OpenAI's exporter kept)."""
    with _install_lock:
        if not os.environ.get("OPENAI_API_KEY"):
            set_trace_processors([processor])
        elif processor not in _added:
            add_trace_processor(processor)
            _added.add(processor)
