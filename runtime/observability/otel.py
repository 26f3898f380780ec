"""The OpenTelemetry bridge: every ended span the runtime records also goes to OpenTelemetry,
with the same trace id, its own span id and its parent's, so an app's span, the worker's
spans and the SDK's spans form one tree in any OpenTelemetry backend.

    bridge = OTelBridge.from_settings(settings, resource={"worker": name, "app": "support"})
    if bridge is not None:
        recorder.add_listener(bridge.export)
    ...
    bridge.shutdown()

The bridge uses the app's own SDK ``TracerProvider`` when one is installed globally; else it
builds one for ``observability.otel_exporter`` (``otlp``: the ``otel`` extra; ``console``)
with the resource ``service.name`` (``observability.service_name``), ``worker`` and ``app``.
Span ids: the runtime's are 16 hex already; the Agents SDK's (``span_<24 hex>``) keep their
last 16 hex digits.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, Tracer, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from runtime.errors import ConfigError
from runtime.log import get_logger
from runtime.observability.spans import SpanRecord, clip
from runtime.observability.tracecontext import is_sampled

if TYPE_CHECKING:
    from runtime.settings import Settings
    from runtime.settings.observability import ObservabilitySettings

__all__ = ["OTelBridge", "otel_span_id"]

log = get_logger(__name__)

_HEX16 = re.compile(r"[0-9a-f]{16}")
_HEX = re.compile(r"[0-9a-f]+")
_OTLP_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
_FIXED: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "aw_otel_fixed_ids", default=None
)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


def otel_span_id(span_id: str) -> str:
    """The 16-hex OpenTelemetry span id of one of our span ids: the id itself (16 hex), the
    last 16 hex digits of an SDK id (``span_<24 hex>``), else a stable hash of the id."""
    if _HEX16.fullmatch(span_id):
        return span_id
    tail = span_id.rsplit("_", 1)[-1].lower()
    if len(tail) >= 16 and _HEX.fullmatch(tail) and int(tail[-16:], 16):
        return tail[-16:]
    return hashlib.blake2b(span_id.encode(), digest_size=8).hexdigest()


class _FixedIds(IdGenerator):
    """Gives the ids the bridge asks for (set in a context variable around ``start_span``);
    the bridge's own tracer provider is made with it (``TracerProvider(id_generator=…)``)."""

    def __init__(self) -> None:
        self.fallback = RandomIdGenerator()

    @contextlib.contextmanager
    def fixed(self, trace_id: int, span_id: int) -> Iterator[None]:
        token = _FIXED.set((trace_id, span_id))
        try:
            yield
        finally:
            _FIXED.reset(token)

    def generate_span_id(self) -> int:
        ids = _FIXED.get()
        return ids[1] if ids is not None else self.fallback.generate_span_id()

    def generate_trace_id(self) -> int:
        ids = _FIXED.get()
        return ids[0] if ids is not None else self.fallback.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return False  # ours may be made from a task's id (trace_id_for)


def _span_processor(provider: TracerProvider) -> SpanProcessor:
    """The span processor of the app's *provider* (all it was given, and any it is given
    later), as its tracers hold it (``Tracer.span_processor``)."""
    tracer = provider.get_tracer("agents-worker")
    processor = getattr(tracer, "span_processor", None)
    if not isinstance(tracer, Tracer) or not isinstance(processor, SpanProcessor):
        raise ConfigError("the OpenTelemetry tracer provider is not the SDK's")  # pragma: no cover
    return processor


def _otel_value(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return clip(json.dumps(value, default=str))


def _attributes(span: SpanRecord, resource: dict[str, str]) -> dict[str, Any]:
    attrs: dict[str, Any] = {"aw.kind": span.kind, **resource}
    for key, value in span.attrs.items():
        if value is None:
            continue
        if key == "usage" and isinstance(value, dict):
            attrs.update({f"usage.{k}": v for k, v in value.items() if isinstance(v, int)})
        else:
            attrs[key] = _otel_value(value)
    return attrs


def _exporter(obs: ObservabilitySettings) -> SpanExporter:
    if obs.otel_exporter == "console":
        return ConsoleSpanExporter(out=sys.stdout)  # the stdout of now, not of import time
    try:
        module = __import__(_OTLP_MODULE, fromlist=["OTLPSpanExporter"])
    except ImportError as exc:
        raise ConfigError(
            "observability.otel_exporter = 'otlp' needs the `otel` extra: "
            "pip install 'agents-worker[otel]' (opentelemetry-exporter-otlp-proto-http)"
        ) from exc
    endpoint = obs.otel_endpoint
    if endpoint:
        endpoint = endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
    exporter: SpanExporter = module.OTLPSpanExporter(endpoint=endpoint)
    return exporter


class OTelBridge:
    """Sends ended :class:`SpanRecord` s to an OpenTelemetry ``TracerProvider``.

    The spans keep our ids: they are made by a tracer provider of the bridge's own, built
    with an id generator that gives them (``TracerProvider(id_generator=…)``, public API;
    one provider per bridge, nothing of the app's is changed). For the app's own *provider*
    (``owned=False``), that provider of ours shares its sampler, resource and span
    processor, so the spans go through the app's exporters and its sampling decisions.
    """

    def __init__(
        self, provider: TracerProvider, *, resource: dict[str, str] | None = None, owned: bool
    ) -> None:
        self.provider = provider
        self.resource = dict(resource or {})
        self.owned = owned
        self._ids = _FixedIds()
        emitter = TracerProvider(
            sampler=provider.sampler,
            resource=provider.resource,
            id_generator=self._ids,
            shutdown_on_exit=False,  # the processors are *provider*'s: it shuts them down
        )
        emitter.add_span_processor(_span_processor(provider))
        self._tracer = emitter.get_tracer("agents-worker")

    @classmethod
    def from_settings(
        cls, settings: Settings, resource: dict[str, str] | None = None
    ) -> OTelBridge | None:
        """The app's own SDK tracer provider when one is installed globally, else one for
        ``observability.otel_exporter`` (see :meth:`build`), else None."""
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            return cls(current, resource=resource, owned=False)
        return cls.build(settings, resource)

    @classmethod
    def build(cls, settings: Settings, resource: dict[str, str] | None = None) -> OTelBridge | None:
        """A bridge with a tracer provider of its own for ``observability.otel_exporter``
        (``otlp``: needs the ``otel`` extra, else :class:`ConfigError`; ``console``), with the
        resource ``service.name`` plus *resource* (worker, app); None for ``none``."""
        obs = settings.observability
        if obs.otel_exporter == "none":
            return None
        attrs = {"service.name": obs.service_name, **(resource or {})}
        provider = TracerProvider(resource=Resource.create(attrs))
        provider.add_span_processor(BatchSpanProcessor(_exporter(obs)))
        return cls(provider, resource=resource, owned=True)

    def export(self, span: SpanRecord) -> None:
        """Send one ended span (a running one is ignored): same trace id, its 16-hex span id,
        its parent link, start and end, attributes and status. The parent is sampled unless
        its trace came in a context that was not
        (:func:`~runtime.observability.tracecontext.is_sampled`): the provider's sampler
        decides as for any child of it."""
        if span.end is None:
            return
        trace_id = int(span.trace_id, 16)
        context = Context()
        if span.parent_id:
            flags = _SAMPLED if is_sampled(span.trace_id) else _NOT_SAMPLED
            parent = SpanContext(trace_id, int(otel_span_id(span.parent_id), 16), True, flags)
            context = trace.set_span_in_context(NonRecordingSpan(parent), Context())
        with self._ids.fixed(trace_id, int(otel_span_id(span.span_id), 16)):
            otel = self._tracer.start_span(
                span.name,
                context=context,
                kind=SpanKind.INTERNAL,
                attributes=_attributes(span, self.resource),
                start_time=int(span.start * 1e9),
            )
        if span.status == "error":
            otel.set_status(Status(StatusCode.ERROR, span.error))
        else:
            otel.set_status(Status(StatusCode.OK))
        otel.end(end_time=int(max(span.end, span.start) * 1e9))

    def shutdown(self) -> None:
        """Flush; a provider the bridge built is also shut down (the app's is left running)."""
        if self.owned:
            self.provider.shutdown()
        else:
            self.provider.force_flush()
