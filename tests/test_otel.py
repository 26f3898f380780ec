"""The OpenTelemetry bridge: the spans of a 3-agent run (real Runner, scripted models) reach an
OpenTelemetry exporter as the same tree as in Redis (same trace id, span ids, parents, times),
parented to the app's own span whose context came as a traceparent; the exporters chosen by
settings (console, OTLP over HTTP, the `otel` extra missing); the trace context helpers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest
import redis.asyncio
from agents import set_trace_processors
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from runtime import Keys, Settings, load_settings
from runtime.errors import ConfigError
from runtime.observability.otel import OTelBridge, otel_span_id
from runtime.observability.spans import SpanRecord, TraceRecorder
from runtime.observability.trace_store import TraceStore
from runtime.observability.tracecontext import (
    TraceParent,
    current_traceparent,
    new_span_id,
    new_trace_id,
    parse_traceparent,
    sdk_trace_id,
    trace_id_of,
)
from runtime.observability.tracing import RedisTracingProcessor
from tests.tracing_apps import run_support

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
RESOURCE = {"worker": "host:1:0", "app": "support"}
_EXPORTER: list[InMemorySpanExporter] = []


@pytest.fixture
def otel_spans() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter on the process's SDK tracer provider (installed by the test,
    once per process: OpenTelemetry allows one global provider)."""
    if not _EXPORTER:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider(resource=Resource.create({"service.name": "app-side"}))
            trace.set_tracer_provider(provider)
        _EXPORTER.append(InMemorySpanExporter())
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER[0]))
    _EXPORTER[0].clear()
    yield _EXPORTER[0]
    _EXPORTER[0].clear()
    set_trace_processors([])


def _hex(value: int, digits: int) -> str:
    return format(value, f"0{digits}x")


async def test_the_run_reaches_opentelemetry_as_the_same_tree(
    settings: Settings, client: redis.asyncio.Redis, keys: Keys, otel_spans: InMemorySpanExporter
) -> None:
    with trace.get_tracer("app").start_as_current_span("app request") as app_span:
        header = current_traceparent()  # what the client puts in the envelope
    context = parse_traceparent(header)
    assert context is not None
    app_context = app_span.get_span_context()
    assert (context.trace_id, context.span_id) == (
        _hex(app_context.trace_id, 32),
        _hex(app_context.span_id, 16),
    )
    # the worker's side
    tid = context.trace_id
    recorder = TraceRecorder(keys, settings, resource=RESOURCE)
    bridge = OTelBridge.from_settings(settings, resource=RESOURCE)
    assert bridge is not None and not bridge.owned  # the app's own provider
    recorder.add_listener(bridge.export)
    processor = RedisTracingProcessor(recorder=recorder, settings=settings)
    set_trace_processors([processor])
    run_attrs = {"run_id": "r-1", "agent": "triage"}
    attempt = recorder.span(tid, "attempt 1", "attempt", parent_id=context.span_id, attrs=run_attrs)
    processor.bind(sdk_trace_id(tid), attempt.span_id, run_attrs)
    await run_support(tid)
    recorder.end_span(attempt)
    await recorder.flush(client)
    bridge.shutdown()
    ours = await TraceStore(client, keys).get_spans(tid)
    exported = [s for s in otel_spans.get_finished_spans() if s.name != "app request"]
    _check_same_tree(ours, exported, tid, app_parent=context.span_id)


async def test_the_standalone_processor_sends_to_the_apps_provider(
    settings: Settings, keys: Keys, redis_url: str, otel_spans: InMemorySpanExporter
) -> None:
    processor = RedisTracingProcessor(redis_url=redis_url, settings=settings)
    try:
        set_trace_processors([processor])
        tid = new_trace_id()
        await run_support(tid)
        processor.force_flush()
    finally:
        processor.shutdown()
    exported = otel_spans.get_finished_spans()
    assert len(exported) == 19
    assert {_hex(s.context.trace_id, 32) for s in exported if s.context} == {tid}
    roots = [s for s in exported if s.parent is None]
    assert [s.name for s in roots] == ["task: support"]


def _check_same_tree(
    ours: list[SpanRecord], exported: list[ReadableSpan], tid: str, app_parent: str
) -> None:
    assert len(ours) == len(exported) == 20  # the attempt and the SDK's 19
    by_id = {}
    for span in exported:
        assert span.context is not None and _hex(span.context.trace_id, 32) == tid
        by_id[_hex(span.context.span_id, 16)] = span
    for record in ours:
        span = by_id[otel_span_id(record.span_id)]
        assert span.name == record.name
        assert span.parent is not None
        expected_parent = record.parent_id or ""
        assert _hex(span.parent.span_id, 16) == otel_span_id(expected_parent)
        assert (span.start_time, span.end_time) == (
            int(record.start * 1e9),
            int((record.end or 0) * 1e9),
        )
        attrs = span.attributes or {}
        assert attrs["worker"] == "host:1:0" and attrs["app"] == "support"
        assert attrs["run_id"] == "r-1" and "agent" in attrs
        failed = record.name == "function: broken_tool"
        assert span.status.status_code == (StatusCode.ERROR if failed else StatusCode.OK)
        if record.kind == "generation":
            assert attrs["usage.input_tokens"] == 11 and attrs["model"] == record.attrs["model"]
    attempt = next(r for r in ours if r.kind == "attempt")
    assert attempt.parent_id == app_parent  # the app's own span is the root's parent


def test_console_exporter_prints_spans_with_the_resource(
    key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(
        env={},
        overrides={
            "redis.key_prefix": key_prefix,
            "observability.otel_exporter": "console",
            "observability.service_name": "billing-svc",
        },
    )
    bridge = OTelBridge.build(settings, resource=RESOURCE)
    assert bridge is not None and bridge.owned
    resource = bridge.provider.resource.attributes
    assert (resource["service.name"], resource["worker"], resource["app"]) == (
        "billing-svc",
        "host:1:0",
        "support",
    )
    tid = new_trace_id()
    span = SpanRecord(
        trace_id=tid,
        span_id=new_span_id(),
        name="attempt 1",
        kind="attempt",
        start=1.0,
        end=2.0,
        status="ok",
        attrs={"agent": "triage"},
    )
    bridge.export(span)
    bridge.shutdown()
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "attempt 1" and printed["context"]["trace_id"] == "0x" + tid
    assert printed["attributes"]["agent"] == "triage"
    assert printed["resource"]["attributes"]["service.name"] == "billing-svc"


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_otlp_exporter_sends_to_the_endpoint(key_prefix: str) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        settings = load_settings(
            env={},
            overrides={
                "redis.key_prefix": key_prefix,
                "observability.otel_exporter": "otlp",
                "observability.otel_endpoint": endpoint,
            },
        )
        bridge = OTelBridge.build(settings, resource=RESOURCE)
        assert bridge is not None
        tid, parent = new_trace_id(), new_span_id()
        bridge.export(
            SpanRecord(
                trace_id=tid,
                span_id="span_0123456789abcdef01234567",
                parent_id=parent,
                name="agent: triage",
                kind="agent",
                start=10.0,
                end=11.5,
                status="error",
                error="boom",
            )
        )
        bridge.shutdown()
    finally:
        server.shutdown()
        server.server_close()
    (path, body), *_ = _Collector.received
    assert path == "/v1/traces"
    request = ExportTraceServiceRequest.FromString(body)
    resource_spans = request.resource_spans[0]
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "agents-worker" and resource["worker"] == "host:1:0"
    (span,) = resource_spans.scope_spans[0].spans
    assert (span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex()) == (
        tid,
        "89abcdef01234567",
        parent,
    )
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (10 * 10**9, 11_500_000_000)
    assert span.status.message == "boom"


def test_otlp_without_the_extra_names_it(key_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    settings = load_settings(
        env={}, overrides={"redis.key_prefix": key_prefix, "observability.otel_exporter": "otlp"}
    )
    with pytest.raises(ConfigError, match=r"`otel` extra"):
        OTelBridge.build(settings)


async def test_without_an_app_provider_the_setting_decides() -> None:
    """In a fresh process (OpenTelemetry's global provider can be set once): no exporter and
    no provider of the app's → no bridge; console → a bridge of its own."""
    script = (
        "from runtime import load_settings\n"
        "from runtime.observability.otel import OTelBridge\n"
        "none = OTelBridge.from_settings(load_settings(env={}))\n"
        "console = OTelBridge.from_settings(load_settings(env={}, overrides={"
        "'observability.otel_exporter': 'console'}))\n"
        "print(none is None, console is not None and console.owned)\n"
    )
    done = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    )
    assert done.stdout.split() == ["True", "True"], done.stderr


def test_trace_context(otel_spans: InMemorySpanExporter) -> None:
    tp = TraceParent("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert tp.header() == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert parse_traceparent(tp.header()) == tp
    assert parse_traceparent(" 00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-00 ") == (
        TraceParent(tp.trace_id, tp.span_id, sampled=False)
    )
    bad = [
        None,
        "",
        "junk",
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
    ]
    assert [parse_traceparent(value) for value in bad] == [None] * len(bad)
    tid = new_trace_id()
    assert len(tid) == 32 and len(new_span_id()) == 16
    assert trace_id_of(sdk_trace_id(tid)) == tid == trace_id_of(tid)
    assert trace_id_of("trace_xyz") is None
    assert current_traceparent() is None
    with trace.get_tracer("t").start_as_current_span("s") as span:
        header = current_traceparent()
    ctx = span.get_span_context()
    assert header == TraceParent(_hex(ctx.trace_id, 32), _hex(ctx.span_id, 16)).header()
    assert otel_span_id("span_0123456789abcdef01234567") == "89abcdef01234567"
    assert otel_span_id("b7ad6b7169203331") == "b7ad6b7169203331"
    assert len(otel_span_id("odd")) == 16
