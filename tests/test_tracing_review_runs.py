"""Tracing review (R1), through a worker and the real SDK Runner: runs that share one trace
(submitted inside one app span) at once on one worker, streamed or not, each keep their own
parent and attributes, in Redis and in OpenTelemetry, and leave one recent-traces entry;
submit spans in one long app span are bounded; a run's
multi-megabyte error is cut everywhere it is stored; a broken OpenTelemetry setting never
fails a submit; bridges leave the app's tracer alone and honour its sampling decision."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio
from agents import Agent, Handoff, Tool
from agents.items import TResponseInputItem
from agents.testing import ModelStep
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime import Keys, Settings, load_settings
from runtime.agents import AgentApp, AgentClient
from runtime.agents.models import StepModel
from runtime.observability import telemetry as telemetry_module
from runtime.observability.otel import OTelBridge, otel_span_id
from runtime.observability.spans import MAX_ATTR_CHARS, SpanRecord
from runtime.observability.trace_budget import TraceBook
from runtime.observability.trace_store import TraceStore
from runtime.observability.tracecontext import new_span_id, new_trace_id, parse_traceparent
from runtime.producer import Producer
from tests.conftest import make_settings
from tests.helpers import running_worker, wait_until
from tests.observability_apps import make_app
from tests.test_observability_wiring_agents import OUTLINE

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
PER_RUN = len(OUTLINE.splitlines())  # spans of one run of the shop app
CUT = MAX_ATTR_CHARS + 64  # a cut text and its mark fit in this


@pytest.fixture
def otel_memory() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter on the process's SDK tracer provider (the app's own; one global
    provider per process, installed by the first test that needs one)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    memory = InMemorySpanExporter()
    processor = SimpleSpanProcessor(memory)
    provider.add_span_processor(processor)
    try:
        yield memory
    finally:
        processor.shutdown()


def _settings(redis_url: str, keys: Keys, **overrides: object) -> Settings:
    values: dict[str, object] = {"observability.flush_interval_seconds": "0.05", **overrides}
    return make_settings(redis_url, keys.prefix, **values)


def _run_of(span: SpanRecord, by_id: dict[str, SpanRecord]) -> str | None:
    """The run id of the attempt span *span* descends from."""
    node: SpanRecord | None = span
    while node is not None and node.kind != "attempt":
        node = by_id.get(node.parent_id or "")
    return None if node is None else node.attrs["task_id"]


async def test_runs_sharing_one_app_span_keep_their_own_parents_and_attributes(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys, otel_memory: InMemorySpanExporter
) -> None:
    settings = _settings(redis_url, keys, **{"worker.concurrency": "4"})
    runs = AgentClient(client, keys=keys, settings=settings)
    provider = trace.get_tracer_provider()
    async with running_worker(settings, client, serving=make_app(delay=0.1)):
        with provider.get_tracer("the-app").start_as_current_span("request") as app_span:
            # the second streamed (the SDK runs it in a task of its own)
            handles = [await runs.run("triage", f"order {n}", stream=n == 1) for n in range(3)]
        results = [await h.result(timeout=30) for h in handles]
        assert [r.status for r in results] == ["completed"] * 3
        tid = format(app_span.get_span_context().trace_id, "032x")
        store = TraceStore(client, keys)

        async def written() -> bool:
            spans = await store.get_spans(tid)
            return len(spans) == 3 * PER_RUN and all(s.end is not None for s in spans)

        await wait_until(written, what="the three runs' spans")
    spans = await store.get_spans(tid)
    by_id = {s.span_id: s for s in spans}
    run_ids = {h.run_id for h in handles}
    attempts = [s for s in spans if s.kind == "attempt"]
    assert {a.attrs["task_id"] for a in attempts} == run_ids
    assert max(a.start for a in attempts) < min(a.end or 0 for a in attempts)  # at once
    sdk = [s for s in spans if s.kind not in ("submit", "inbox", "attempt")]
    assert len(sdk) == 3 * (PER_RUN - 3)
    for span in sdk:  # each under its own run's attempt, with its own run's attributes
        assert span.attrs["run_id"] in run_ids, span
        assert _run_of(span, by_id) == span.attrs["run_id"], span
        assert span.attrs["worker"] == "test:0" and span.attrs["app"] == "shop"
    roots = [s for s in sdk if s.kind == "task"]
    assert sorted(by_id[r.parent_id or ""].attrs["task_id"] for r in roots) == sorted(run_ids)
    # OpenTelemetry: the same parents, every span in the app's trace
    exported = {s.context.span_id: s for s in otel_memory.get_finished_spans() if s.context}
    for span in spans:
        got = exported[int(otel_span_id(span.span_id), 16)]
        assert format(got.context.trace_id, "032x") == tid  # type: ignore[union-attr]
        assert got.parent is not None
        assert got.parent.span_id == int(otel_span_id(span.parent_id or ""), 16)
    # one recent-traces entry for the trace; its summary covers the three runs
    entries = await client.xrange(keys.traces())
    assert [e[1][b"trace_id"].decode() for e in entries] == [tid]
    summary = await store.get_trace(tid)
    assert summary is not None and summary.status == "ok" and summary.agent == "triage"
    assert summary.run_id is None  # several runs
    assert summary.end == max(r.finished_at or 0 for r in results)


class HugeErrorModel(StepModel):
    """Fails every call with a 2 MB message."""

    model_name = "scripted"

    def step(
        self,
        instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> ModelStep:
        raise RuntimeError("x" * 2_000_000)


async def test_a_runs_huge_error_is_cut_wherever_it_is_stored(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    settings = _settings(redis_url, keys)
    app = AgentApp("huge", agents=[Agent(name="loud")], model=HugeErrorModel())
    runs = AgentClient(client, keys=keys, settings=settings)
    async with running_worker(settings, client, serving=app):
        result = await runs.run_and_wait("loud", "hi", timeout=20)
        assert result.status == "failed"
        tid = (await client.hget(keys.run(result.run_id), "trace_id") or b"").decode()
        store = TraceStore(client, keys)

        async def ended() -> bool:
            return await client.xlen(keys.traces()) == 1

        await wait_until(ended, what="the trace's end")
    summary = await store.get_trace(tid)
    assert summary is not None and summary.error is not None
    assert summary.error.startswith("RuntimeError") and len(summary.error) < CUT
    ((_, entry),) = await client.xrange(keys.traces())
    assert len(entry[b"error"]) < CUT
    for span in await store.get_spans(tid):
        assert span.error is None or len(span.error) < CUT, span.name
        assert all(len(str(v)) < CUT for v in span.attrs.values()), span.name


SUBMIT_SCRIPT = """
import asyncio, sys
sys.modules["opentelemetry.exporter.otlp.proto.http.trace_exporter"] = None  # no `otel` extra
import redis.asyncio
from runtime import Keys, load_settings
from runtime.agents import AgentClient
from runtime.producer import Producer

url, prefix = sys.argv[1:3]

async def main():
    settings = load_settings(env={}, overrides={
        "redis.url": url, "redis.key_prefix": prefix, "observability.otel_exporter": "otlp"})
    client = redis.asyncio.Redis.from_url(url)
    runs = AgentClient(client, keys=Keys(prefix), settings=settings)
    producer = Producer(client, keys=Keys(prefix), settings=settings)
    for n in range(3):
        await runs.run("triage", f"order {n}")
        await producer.enqueue("echo", {"n": n})
    print("submitted", flush=True)
    await client.aclose()

asyncio.run(main())
"""


async def test_an_opentelemetry_misconfiguration_never_fails_a_submit(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    """``otel_exporter = otlp`` without the extra: every submit goes on (said once)."""
    args = [sys.executable, "-c", SUBMIT_SCRIPT, redis_url, keys.prefix]
    done = await anyio.to_thread.run_sync(
        lambda: subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["submitted"]
    assert done.stderr.count("telemetry.otel_unavailable") == 1, done.stderr
    assert await client.xlen(keys.inbox("triage")) == 3
    assert await client.xlen(keys.inbox("echo")) == 3


def _span(trace_id: str, parent_id: str | None) -> SpanRecord:
    return SpanRecord(
        trace_id=trace_id, span_id=new_span_id(), parent_id=parent_id, name="work",
        kind="custom", start=1.0, end=2.0, status="ok",
    )  # fmt: skip


def test_bridges_leave_the_apps_tracer_alone_and_honour_its_sampling(
    otel_memory: InMemorySpanExporter,
) -> None:
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    generator = provider.get_tracer("agents-worker").id_generator  # type: ignore[attr-defined]
    settings = load_settings(env={})
    bridges = [OTelBridge.from_settings(settings, resource={"worker": f"w{n}"}) for n in range(3)]
    assert provider.get_tracer("agents-worker").id_generator is generator  # type: ignore[attr-defined]
    sampled, unsampled = new_trace_id(), new_trace_id()
    assert parse_traceparent(f"00-{unsampled}-{new_span_id()}-00") is not None  # as a worker
    for bridge in bridges:
        assert bridge is not None and not bridge.owned
        bridge.export(_span(sampled, new_span_id()))
        bridge.export(_span(unsampled, new_span_id()))
    got = otel_memory.get_finished_spans()
    assert len(got) == 3  # the sampled trace's, each with the ids it was given
    for span in got:
        assert span.context is not None and format(span.context.trace_id, "032x") == sampled
    ids = {format(s.context.span_id, "016x") for s in got if s.context}
    assert len(ids) == 3
    # a span of the app's own still gets an id of the app's generator
    with provider.get_tracer("the-app").start_as_current_span("own") as own:
        assert format(own.get_span_context().span_id, "016x") not in ids


async def test_submits_inside_one_long_app_span_write_a_bounded_trace(
    redis_url: str,
    client: redis.asyncio.Redis,
    keys: Keys,
    otel_memory: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every submit (AgentClient.run, Producer.enqueue) in one app span writes its submit
    span into that span's trace: a process writes at most the cap of them (3 here)."""
    monkeypatch.setattr(telemetry_module, "_submit_book", TraceBook(cap=3), raising=False)
    settings = _settings(redis_url, keys)
    runs = AgentClient(client, keys=keys, settings=settings)
    producer = Producer(client, keys=keys, settings=settings)
    provider = trace.get_tracer_provider()
    with provider.get_tracer("the-app").start_as_current_span("nightly job") as app_span:
        for n in range(4):
            await runs.run("triage", f"order {n}")
            await producer.enqueue("echo", {"n": n})
    tid = format(app_span.get_span_context().trace_id, "032x")
    assert await client.hlen(keys.trace_spans(tid)) == 3
    assert await client.xlen(keys.inbox("triage")) == await client.xlen(keys.inbox("echo")) == 4
