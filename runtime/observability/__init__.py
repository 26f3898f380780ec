"""Traces, metrics and the run lifecycle feed, written to Redis off the agent's event loop.

- tracing: :class:`RedisTracingProcessor` (an SDK ``TracingProcessor``), :class:`TraceRecorder`
  (buffered spans, flushed in batches), :class:`TraceStore` (reads), :class:`OTelBridge`
  (the same spans to OpenTelemetry), W3C trace context (:class:`TraceParent`);
- metrics: :class:`MetricsRecorder` (per-process TimeSeries and fleet totals),
  :class:`MetricsStore` (reads), the seed's :class:`AgentMetrics` and
  :class:`PrometheusExporter`;
- the fleet's heartbeats (:func:`read_fleet`) and the recent runs (:func:`recent_runs`).

Every name is imported from its module when first used: importing this package loads nothing
heavy (the tracing processor imports the Agents SDK, the bridge the OpenTelemetry SDK).
"""

import typing as _typing

from runtime._lazy import lazy_exports as _lazy_exports

if _typing.TYPE_CHECKING:
    from runtime.observability.agent_metrics import AgentMetrics
    from runtime.observability.fleet import (
        FleetMember,
        WorkerInfo,
        publish_member,
        read_fleet,
        read_targets,
    )
    from runtime.observability.lifecycle import LifecycleEvent, RunSummary, recent_runs
    from runtime.observability.metrics import METRICS, MetricSpec, MetricsRecorder
    from runtime.observability.otel import OTelBridge
    from runtime.observability.prometheus import PrometheusExporter
    from runtime.observability.spans import SpanRecord, TraceRecorder, TraceSummary
    from runtime.observability.telemetry import Telemetry
    from runtime.observability.timeseries import MetricsStore, Total
    from runtime.observability.trace_store import SpanNode, TraceStore, span_tree
    from runtime.observability.tracecontext import (
        TraceParent,
        current_traceparent,
        parse_traceparent,
    )
    from runtime.observability.tracing import RedisTracingProcessor

_EXPORTS = {
    "AgentMetrics": "runtime.observability.agent_metrics",
    "FleetMember": "runtime.observability.fleet",
    "WorkerInfo": "runtime.observability.fleet",
    "publish_member": "runtime.observability.fleet",
    "read_fleet": "runtime.observability.fleet",
    "read_targets": "runtime.observability.fleet",
    "LifecycleEvent": "runtime.observability.lifecycle",
    "RunSummary": "runtime.observability.lifecycle",
    "recent_runs": "runtime.observability.lifecycle",
    "METRICS": "runtime.observability.metrics",
    "MetricSpec": "runtime.observability.metrics",
    "MetricsRecorder": "runtime.observability.metrics",
    "OTelBridge": "runtime.observability.otel",
    "PrometheusExporter": "runtime.observability.prometheus",
    "SpanRecord": "runtime.observability.spans",
    "TraceRecorder": "runtime.observability.spans",
    "TraceSummary": "runtime.observability.spans",
    "Telemetry": "runtime.observability.telemetry",
    "MetricsStore": "runtime.observability.timeseries",
    "Total": "runtime.observability.timeseries",
    "SpanNode": "runtime.observability.trace_store",
    "TraceStore": "runtime.observability.trace_store",
    "span_tree": "runtime.observability.trace_store",
    "TraceParent": "runtime.observability.tracecontext",
    "current_traceparent": "runtime.observability.tracecontext",
    "parse_traceparent": "runtime.observability.tracecontext",
    "RedisTracingProcessor": "runtime.observability.tracing",
}

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())

__all__ = [
    "METRICS",
    "AgentMetrics",
    "FleetMember",
    "LifecycleEvent",
    "MetricSpec",
    "MetricsRecorder",
    "MetricsStore",
    "OTelBridge",
    "PrometheusExporter",
    "RedisTracingProcessor",
    "RunSummary",
    "SpanNode",
    "SpanRecord",
    "Telemetry",
    "Total",
    "TraceParent",
    "TraceRecorder",
    "TraceStore",
    "TraceSummary",
    "WorkerInfo",
    "current_traceparent",
    "parse_traceparent",
    "publish_member",
    "read_fleet",
    "read_targets",
    "recent_runs",
    "span_tree",
]
