"""Tracing review (R1), the recorder and the flusher: a flush cut by a cancellation keeps its
batch (the recorder's, the telemetry's periodic and final flushes, the standalone writer's
stop); the final flush writes the metrics even when the traces run out of time; a failing
flush of either kind never stops the flusher; every error text is cut; every buffer is bounded
(begun traces, what a failed flush kept, the listeners' queue); installing a processor
replaces ours and keeps others'; a trace shared by many tasks is bounded and listed once;
spans are encoded off the event loop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio
from agents import set_trace_processors
from agents.tracing import Span, Trace, TracingProcessor

from runtime import EmbeddedRedis, Keys, Settings, load_settings
from runtime.errors import RedisError
from runtime.observability import spans as spans_module
from runtime.observability import telemetry as telemetry_module
from runtime.observability import tracing as tracing_module
from runtime.observability.spans import MAX_ATTR_CHARS, SpanRecord, TraceRecorder, TraceSummary
from runtime.observability.telemetry import Telemetry
from runtime.observability.trace_store import TraceStore
from runtime.observability.trace_writer import TraceWriterThread
from runtime.observability.tracecontext import new_span_id, new_trace_id, sdk_trace_id
from runtime.observability.tracing import RedisTracingProcessor, install
from tests.conftest import make_settings
from tests.helpers import wait_until
from tests.test_observability_wiring import totals
from tests.tracing_apps import run_support

pytestmark = pytest.mark.anyio

CUT = MAX_ATTR_CHARS + 64  # a cut text and its mark fit in this


def _settings(url: str, prefix: str, **changes: object) -> Settings:
    values: dict[str, object] = {"redis.url": url, "redis.key_prefix": prefix, **changes}
    return load_settings(env={}, overrides=values)


def _messages(caplog: pytest.LogCaptureFixture, event: str) -> int:
    return sum(1 for r in caplog.records if r.getMessage() == event)


# --- cancellation never loses a batch (finding 2) ------------------------------------------
async def test_a_flush_cancelled_midway_keeps_its_batch(
    settings: Settings, client: redis.asyncio.Redis, keys: Keys
) -> None:
    recorder = TraceRecorder(keys, settings)
    converting = threading.Event()

    def slow(span: SpanRecord) -> None:  # e.g. an OpenTelemetry exporter at work
        converting.set()
        time.sleep(0.01)

    recorder.add_listener(slow)
    tid = new_trace_id()
    for n in range(20):
        recorder.end_span(recorder.span(tid, f"s{n}", "custom"))
    recorder.end_trace(TraceSummary(trace_id=tid, name="t", start=0.0, end=1.0, status="ok"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(recorder.flush, client)
        await anyio.to_thread.run_sync(converting.wait)
        tg.cancel_scope.cancel()
    assert recorder.pending() == 21  # the 20 spans and the summary, kept
    assert await recorder.flush(client) == 21
    assert await client.hlen(keys.trace_spans(tid)) == 20
    assert await client.xlen(keys.traces()) == 1


async def test_telemetry_stopped_mid_flush_writes_everything(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    settings = make_settings(
        redis_url, keys.prefix, **{"observability.flush_interval_seconds": 0.05}
    )
    tel = Telemetry.from_settings(keys, settings, process="h:i:0", resource={"worker": "w"})
    converting = threading.Event()

    def slow(span: SpanRecord) -> None:
        converting.set()
        time.sleep(0.002)

    tel.traces.add_listener(slow)
    tid = new_trace_id()
    async with anyio.create_task_group() as tg:
        await tg.start(tel.run, client)
        for n in range(100):
            tel.traces.end_span(tel.traces.span(tid, f"s{n}", "custom"))
        await anyio.to_thread.run_sync(converting.wait)  # the periodic flush is at work
        tg.cancel_scope.cancel()  # the worker stops
    assert await client.hlen(keys.trace_spans(tid)) == 100


async def test_the_final_flush_writes_the_metrics_when_the_traces_run_out_of_time(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telemetry_module, "_FINAL_FLUSH_SECONDS", 0.05)
    settings = make_settings(redis_url, keys.prefix, **{"observability.flush_interval_seconds": 60})
    tel = Telemetry.from_settings(keys, settings, process="h:i:0", resource={"worker": "w"})
    tel.traces.add_listener(lambda span: time.sleep(0.2))  # longer than the final flush may take
    tid = new_trace_id()
    tel.traces.end_span(tel.traces.span(tid, "s", "custom"))
    tel.metrics.count("runs_started", 3, agent="triage")
    async with anyio.create_task_group() as tg:
        await tg.start(tel.run, client)
        tg.cancel_scope.cancel()
    got = await totals(client, keys)
    assert got[("runs_started", (("agent", "triage"),))] == 3
    assert tel.traces.pending() == 1  # cut: kept (this process would end here)


async def test_the_standalone_writer_stopped_mid_flush_writes_everything(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    settings = _settings(redis_url, keys.prefix, **{"observability.flush_interval_seconds": 0.05})
    recorder = TraceRecorder(keys, settings)
    converting = threading.Event()

    def slow(span: SpanRecord) -> None:
        converting.set()
        time.sleep(0.005)

    recorder.add_listener(slow)
    writer = TraceWriterThread(recorder, settings, redis_url)
    tid = new_trace_id()
    for n in range(50):
        recorder.end_span(recorder.span(tid, f"s{n}", "custom"))
    await anyio.to_thread.run_sync(converting.wait)
    await anyio.to_thread.run_sync(writer.stop, 30.0)
    assert await client.hlen(keys.trace_spans(tid)) == 50


# --- a failing flush never stops the flusher (finding 9) -----------------------------------
async def test_telemetry_goes_on_through_failing_flushes_of_either_kind(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        redis_url, keys.prefix, **{"observability.flush_interval_seconds": 0.02}
    )
    tel = Telemetry.from_settings(keys, settings, process="h:i:0", resource={"worker": "w"})
    caplog.set_level(logging.INFO)
    calls = {"traces": 0, "metrics": 0}
    broken = {"traces": True, "metrics": True}
    flushes = {"traces": tel.traces.flush, "metrics": tel.metrics.flush}

    def failing(kind: str, error: type[Exception]) -> Any:
        async def flush(client: redis.asyncio.Redis) -> Any:
            calls[kind] += 1
            if broken[kind]:
                raise error(f"a bug in the {kind} flush")
            return await flushes[kind](client)

        return flush

    tel.traces.flush = failing("traces", ValueError)  # type: ignore[method-assign]
    tel.metrics.flush = failing("metrics", KeyError)  # type: ignore[method-assign]
    tid = new_trace_id()
    tel.traces.end_span(tel.traces.span(tid, "s", "custom"))
    tel.metrics.count("runs_started", 1, agent="a")
    async with anyio.create_task_group() as tg:
        await tg.start(tel.run, client)

        async def tried() -> bool:
            return min(calls.values()) >= 3

        await wait_until(tried, what="three flushes of each kind")
        assert _messages(caplog, "telemetry.flush_crashed") == 2  # once per kind
        broken.update(traces=False, metrics=False)

        async def written() -> bool:
            return await client.hlen(keys.trace_spans(tid)) == 1

        await wait_until(written, what="the flushes to recover")
        tg.cancel_scope.cancel()
    assert _messages(caplog, "telemetry.flush_recovered") == 2
    assert (await totals(client, keys))[("runs_started", (("agent", "a"),))] == 1


# --- every error text is cut (finding 3) ---------------------------------------------------
async def test_every_error_text_is_cut_at_the_flush(
    settings: Settings, client: redis.asyncio.Redis, keys: Keys
) -> None:
    """Spans built by hand (as the worker core builds its own) and summaries: their errors
    and text attributes are cut before Redis and the listeners see them."""
    recorder = TraceRecorder(keys, settings)
    heard: list[SpanRecord] = []
    recorder.add_listener(heard.append)
    tid, huge = new_trace_id(), "x" * 3_000_000
    recorder.record(
        SpanRecord(
            trace_id=tid,
            span_id=new_span_id(),
            name="attempt 1",
            kind="attempt",
            start=1.0,
            end=2.0,
            status="error",
            error=huge,
            attrs={"error": huge, "n": 1},
        )
    )
    recorder.end_trace(
        TraceSummary(trace_id=tid, name="t", start=1.0, end=2.0, status="error", error=huge)
    )
    await recorder.flush(client)
    (stored,) = await TraceStore(client, keys).get_spans(tid)
    for span in (stored, *heard):
        assert span.error is not None and span.error.startswith("xxx") and len(span.error) < CUT
        assert len(span.attrs["error"]) < CUT and span.attrs["n"] == 1
    summary = await TraceStore(client, keys).get_trace(tid)
    assert summary is not None and summary.error is not None and len(summary.error) < CUT
    ((_, entry),) = await client.xrange(keys.traces())
    assert len(entry[b"error"]) < CUT


# --- every buffer is bounded (finding 4) ----------------------------------------------------
async def test_every_buffer_stays_bounded_through_an_outage(
    own_server: tuple[EmbeddedRedis, str], keys: Keys
) -> None:
    server, url = own_server
    cap = 10
    recorder = TraceRecorder(keys, _settings(url, keys.prefix), max_spans=cap)
    client = redis.asyncio.Redis.from_url(url)
    try:
        await anyio.to_thread.run_sync(server.stop)
        for _ in range(3):
            for n in range(cap):
                tid = new_trace_id()
                recorder.start_trace(TraceSummary(trace_id=tid, name="t", start=n))
                recorder.end_span(recorder.span(tid, "s", "custom"))
                recorder.end_trace(TraceSummary(trace_id=tid, name="t", start=n, end=n + 1))
            with pytest.raises(RedisError):
                await recorder.flush(client)
            # spans (new and kept), begun traces, ended traces, kept summaries: cap each
            assert recorder.pending() <= 4 * cap
        assert recorder.dropped > 0
        await anyio.to_thread.run_sync(server.start)
        await recorder.flush(client)
        assert recorder.pending() == 0
    finally:
        await client.aclose()


async def test_the_listeners_queue_is_bounded_counted_and_logged(
    settings: Settings, client: redis.asyncio.Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = TraceRecorder(keys, settings, max_spans=10)
    heard: list[str] = []
    recorder.add_listener(lambda span: heard.append(span.name))
    tid = new_trace_id()
    for n in range(25):
        recorder.span(tid, f"s{n}", "custom", start=n, end=n + 1.0)
    assert recorder.listener_dropped == 15
    assert _messages(caplog, "tracing.listener_buffer_full") == 1
    await recorder.flush(client)
    assert heard == [f"s{n}" for n in range(15, 25)]  # the newest


class _Collector(TracingProcessor):
    """A processor of the app's own: collects the names of its spans."""

    def __init__(self) -> None:
        self.spans: list[str] = []

    def on_trace_start(self, trace: Trace) -> None:
        pass

    def on_trace_end(self, trace: Trace) -> None:
        pass

    def on_span_start(self, span: Span[Any]) -> None:
        pass

    def on_span_end(self, span: Span[Any]) -> None:
        self.spans.append(span.trace_id)

    def force_flush(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


@pytest.fixture
def no_processors() -> Iterator[None]:
    yield
    set_trace_processors([])


async def test_install_replaces_our_processor_and_keeps_the_apps(
    settings: Settings, keys: Keys, monkeypatch: pytest.MonkeyPatch, no_processors: None
) -> None:
    """With an OpenAI key (processors are added, not set): a worker restarted in the process
    installs its processor in place of the stopped one's, whose recorder (never flushed
    again) gets nothing more; a run the old one bound still reaches it; the app's own
    processor keeps getting everything."""
    monkeypatch.setattr(tracing_module, "_registered", [], raising=False)
    apps = _Collector()
    set_trace_processors([apps])  # (and no OpenAI exporter in a test)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    old, new = (
        RedisTracingProcessor(recorder=TraceRecorder(keys, settings), settings=settings)
        for _ in range(2)
    )
    install(old)
    install(new)
    install(new)
    tid = new_trace_id()
    await run_support(tid)
    assert old.recorder.pending() == 0
    assert (taken := new.recorder.pending()) > 0
    bound = new_trace_id()
    old.bind(sdk_trace_id(bound), new_span_id(), {"run_id": "r-1"})
    try:
        await run_support(bound)
    finally:
        old.unbind(sdk_trace_id(bound))
    assert (kept := old.recorder.pending()) > 0
    assert new.recorder.pending() == taken
    await run_support(new_trace_id())  # unbound again: the new one's
    assert new.recorder.pending() > taken and old.recorder.pending() == kept
    assert set(apps.spans) >= {sdk_trace_id(tid), sdk_trace_id(bound)}


# --- a shared trace is bounded and listed once (finding 5) ----------------------------------
async def test_a_trace_shared_by_many_tasks_is_bounded(
    settings: Settings, client: redis.asyncio.Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = TraceRecorder(keys, settings, max_spans_per_trace=50)
    tid = new_trace_id()
    long = recorder.span(tid, "long", "custom")  # running across flushes
    for n in range(30):
        recorder.span(tid, f"a{n}", "custom", start=n, end=n + 1.0)
    await recorder.flush(client)
    for n in range(40):
        recorder.span(tid, f"b{n}", "custom", start=n, end=n + 1.0)
    recorder.end_span(long)  # written: its start was
    recorder.end_trace(TraceSummary(trace_id=tid, name="t", start=0.0, end=1.0, status="ok"))
    await recorder.flush(client)
    spans_key = keys.trace_spans(tid)
    await client.pexpire(spans_key, 100_000)
    for n in range(10):
        recorder.span(tid, f"c{n}", "custom", start=n, end=n + 1.0)
    recorder.end_trace(TraceSummary(trace_id=tid, name="t", start=0.0, end=9.0, status="ok"))
    await recorder.flush(client)
    stored = await TraceStore(client, keys).get_spans(tid)
    assert len(stored) == 50
    assert next(s for s in stored if s.name == "long").status == "ok"
    assert recorder.book.dropped == 31
    assert _messages(caplog, "tracing.trace_full") == 1
    assert await client.pttl(spans_key) <= 100_000  # no longer refreshed
    assert await client.xlen(keys.traces()) == 1


async def test_a_traces_later_summaries_update_its_one_entry(
    settings: Settings, client: redis.asyncio.Redis, keys: Keys
) -> None:
    recorder = TraceRecorder(keys, settings)
    tid = new_trace_id()
    first = TraceSummary(
        trace_id=tid, name="triage", run_id="a", agent="triage", start=10.0, end=20.0,
        status="ok",
    )  # fmt: skip
    recorder.end_trace(first)
    await recorder.flush(client)
    recorder.end_trace(
        TraceSummary(
            trace_id=tid,
            name="triage",
            run_id="b",
            agent="triage",
            start=5.0,
            end=30.0,
            status="error",
            error="boom",
        )
    )
    await recorder.flush(client)
    ((_, entry),) = await client.xrange(keys.traces())
    assert entry[b"run_id"] == b"a"
    summary = await TraceStore(client, keys).get_trace(tid)
    assert summary is not None
    assert msgspec.structs.replace(summary, spans=0) == TraceSummary(
        trace_id=tid, name="triage", run_id=None, agent="triage", start=5.0, end=30.0,
        status="error", error="boom",
    )  # fmt: skip


# --- encoding off the loop (finding 8) ------------------------------------------------------
async def test_spans_are_encoded_off_the_event_loop(
    settings: Settings, client: redis.asyncio.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    encoder = spans_module._ENCODER

    class Spy:
        def encode(self, value: Any) -> bytes:
            threads.append(threading.get_ident())
            return encoder.encode(value)

    monkeypatch.setattr(spans_module, "_ENCODER", Spy())
    recorder = TraceRecorder(keys, settings)
    tid = new_trace_id()
    for n in range(5):
        recorder.end_span(recorder.span(tid, f"s{n}", "custom"))
    await recorder.flush(client)
    assert await client.hlen(keys.trace_spans(tid)) == 5
    assert threads and threading.get_ident() not in threads
