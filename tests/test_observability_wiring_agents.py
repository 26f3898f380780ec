"""An agent run's trace end to end: submitted by AgentClient inside an app's OpenTelemetry
span, run by a worker on the real SDK Runner (three agents, a function tool, two handoffs,
a scripted model), its spans in Redis and in the app's OpenTelemetry exporter as one tree
under the app's span; the same tree from a real worker process. And the run, turn, model and
tool metrics after scripted runs equal what the runs did.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis.asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime import Keys, Settings
from runtime.agents import AgentClient
from runtime.observability.otel import otel_span_id
from runtime.observability.spans import SpanRecord
from runtime.observability.telemetry import trace_id_for
from runtime.observability.trace_store import TraceStore, iter_tree, span_tree
from tests.conftest import make_settings
from tests.helpers import running_worker, wait_until, worker_process
from tests.observability_apps import INPUT_TOKENS, OUTPUT_TOKENS, make_app
from tests.test_observability_wiring import totals

# The tree of one run (names, depth by indentation), siblings by start time.
OUTLINE = """
submit triage
  inbox
  attempt 1
    task: shop
      agent: triage
        turn: 1 (triage)
          generation: scripted
          handoff: triage → billing
      agent: billing
        turn: 2 (billing)
          generation: scripted
          function: lookup_order
        turn: 3 (billing)
          generation: scripted
          handoff: billing → refunds
      agent: refunds
        turn: 4 (refunds)
          generation: scripted
""".strip("\n")


@pytest.fixture(scope="module")
def provider() -> TracerProvider:
    """The app's own OpenTelemetry SDK tracer provider (the process's global one)."""
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        current = trace.get_tracer_provider()
    assert isinstance(current, TracerProvider)
    return current


@pytest.fixture
def exporter(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    processor = SimpleSpanProcessor(memory)
    provider.add_span_processor(processor)
    try:
        yield memory
    finally:
        processor.shutdown()  # later spans are refused by the stopped exporter


def _settings(redis_url: str, keys: Keys, **overrides: object) -> Settings:
    values: dict[str, object] = {"observability.flush_interval_seconds": "0.05", **overrides}
    return make_settings(redis_url, keys.prefix, **values)


def outline(spans: list[SpanRecord]) -> str:
    return "\n".join("  " * n.depth + n.span.name for n in iter_tree(span_tree(spans)))


async def flushed_spans(client: redis.asyncio.Redis, keys: Keys, trace_id: str) -> list[SpanRecord]:
    """The trace's spans once every one of the outline is there and ended."""
    store = TraceStore(client, keys)
    wanted = len(OUTLINE.splitlines())

    async def complete() -> bool:
        spans = await store.get_spans(trace_id)
        return len(spans) >= wanted and all(s.status != "running" for s in spans)

    try:
        await wait_until(complete, what="the run's spans flushed")
    except AssertionError:
        for span in await store.get_spans(trace_id):
            print(span.name, span.status, span.parent_id)
        raise
    return await store.get_spans(trace_id)


async def submit_in_app_span(
    client: redis.asyncio.Redis, keys: Keys, settings: Settings, provider: TracerProvider
) -> tuple[str, Any]:
    """Submit a run inside an app span; the run's id and the app span's context."""
    runs = AgentClient(client, keys=keys, settings=settings)
    with provider.get_tracer("the-app").start_as_current_span("app request") as app_span:
        handle = await runs.run("triage", "order 42 was charged twice")
    result = await handle.result(timeout=20)
    assert result.status == "completed", result.error
    assert result.final_output == "refund issued"
    return handle.run_id, app_span.get_span_context()


def check_redis_tree(spans: list[SpanRecord], run_id: str, app_span_id: str) -> None:
    assert outline(spans) == OUTLINE
    assert all(s.status == "ok" and s.end is not None and s.end >= s.start for s in spans)
    by_id = {s.span_id: s for s in spans}
    (submit,) = [s for s in spans if s.kind == "submit"]
    assert submit.parent_id == app_span_id  # the app's own span (not in Redis)
    (attempt,) = [s for s in spans if s.kind == "attempt"]
    for span in spans:
        if span.kind in ("submit", "inbox", "attempt"):
            continue
        assert span.attrs["run_id"] == run_id and span.attrs["app"] == "shop"
        parent = by_id[span.parent_id or ""]
        assert parent.start <= span.start and span.end <= parent.end  # type: ignore[operator]
        assert parent is attempt or parent.kind != "attempt"
    generations = [s for s in spans if s.kind == "generation"]
    got = [
        (s.attrs["usage"]["input_tokens"], s.attrs["usage"]["output_tokens"]) for s in generations
    ]
    want = [INPUT_TOKENS[a] for a in ("triage", "billing", "billing", "refunds")]
    assert got == [(n, OUTPUT_TOKENS) for n in want]
    (tool,) = [s for s in spans if s.kind == "function"]
    assert tool.attrs["tool"] == "lookup_order" and "paid twice" in tool.attrs["output"]
    handoffs = [(s.attrs["from"], s.attrs["to"]) for s in spans if s.kind == "handoff"]
    assert handoffs == [("triage", "billing"), ("billing", "refunds")]


async def test_a_three_agent_run_is_one_tree_in_redis_and_in_opentelemetry(
    redis_url: str,
    client: redis.asyncio.Redis,
    keys: Keys,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    settings = _settings(redis_url, keys)
    async with running_worker(settings, client, serving=make_app()):
        run_id, app = await submit_in_app_span(client, keys, settings, provider)
        trace_id = format(app.trace_id, "032x")
        record = await client.hget(keys.run(run_id), "trace_id")
        assert record == trace_id.encode()  # the run joined the app's trace
        spans = await flushed_spans(client, keys, trace_id)
    check_redis_tree(spans, run_id, format(app.span_id, "016x"))
    summary = await TraceStore(client, keys).get_trace(trace_id)
    assert summary is not None
    assert (summary.name, summary.run_id, summary.agent, summary.status) == (
        "triage",
        run_id,
        "triage",
        "ok",
    )

    # the app's OpenTelemetry exporter got the same tree, under the app's span
    def exported() -> dict[int, Any]:
        return {s.context.span_id: s for s in exporter.get_finished_spans()}

    async def all_exported() -> bool:
        return len(exported()) > len(spans)  # and the app's own span

    await wait_until(all_exported, what="the OpenTelemetry export")
    otel = exported()
    (app_span,) = [s for s in otel.values() if s.name == "app request"]
    assert all(s.context.trace_id == app.trace_id for s in otel.values())
    for span in spans:
        got = otel[int(otel_span_id(span.span_id), 16)]
        assert got.name == span.name
        parent = span.parent_id
        assert got.parent is not None and got.parent.span_id == int(otel_span_id(parent or ""), 16)
        assert got.start_time == int(span.start * 1e9)
    (submit,) = [s for s in otel.values() if s.name == "submit triage"]
    assert submit.parent is not None and submit.parent.span_id == app_span.context.span_id
    (attempt,) = [s for s in otel.values() if s.name == "attempt 1"]
    assert attempt.attributes is not None and attempt.attributes["worker"] == "test:0"
    assert attempt.attributes["app"] == "shop"


@pytest.mark.slow
async def test_through_a_worker_process_the_redis_tree_is_the_same(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys, provider: TracerProvider
) -> None:
    settings = _settings(redis_url, keys)
    proc = worker_process(
        "tests.observability_apps:app", redis_url, keys,
        OBSERVABILITY_FLUSH_INTERVAL_SECONDS="0.05",
    )  # fmt: skip
    try:
        run_id, app = await submit_in_app_span(client, keys, settings, provider)
        trace_id = format(app.trace_id, "032x")
        spans = await flushed_spans(client, keys, trace_id)
    finally:
        proc.send_signal(signal.SIGTERM)
        await anyio.to_thread.run_sync(proc.wait, 30)
    check_redis_tree(spans, run_id, format(app.span_id, "016x"))
    (attempt,) = [s for s in spans if s.kind == "attempt"]
    assert attempt.attrs["worker"].endswith(":0") and attempt.attrs["worker"] != "test:0"
    assert proc.returncode == 0


async def test_run_metrics_equal_what_the_scripted_runs_did(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    settings = _settings(redis_url, keys)
    runs = AgentClient(client, keys=keys, settings=settings)
    good, bad = 3, 2
    async with running_worker(settings, client, serving=make_app()):
        handles = [await runs.run("triage", f"order {n}") for n in range(good)]
        handles += [await runs.run("triage", f"boom {n}") for n in range(bad)]
        results = [await h.result(timeout=20) for h in handles]
        assert [r.status for r in results] == ["completed"] * good + ["failed"] * bad

        async def counted() -> bool:
            got = await totals(client, keys)
            return got.get(("run_latency_count", (("agent", "triage"),))) == good + bad

        await wait_until(counted, what="the run metrics flushed")

        async def models_counted() -> bool:
            got = await totals(client, keys)
            return got.get(("model_calls", (("agent", "triage"),))) == 4 * good + 4 * bad

        await wait_until(models_counted, what="the span metrics flushed")
    got = await totals(client, keys)
    triage = (("agent", "triage"),)
    assert got[("runs_submitted", triage)] == good + bad
    assert got[("runs_started", triage)] == good + bad
    assert got[("runs_completed", triage)] == good
    assert got[("runs_failed", triage)] == bad
    assert ("runs_cancelled", triage) not in got
    # every run: triage 1 model call, billing 2, refunds 1 (which fails, reporting no usage,
    # in the failing runs); model calls and tool calls are labelled with the run's agent
    before_refunds = INPUT_TOKENS["triage"] + 2 * INPUT_TOKENS["billing"]
    tokens_in = good * (before_refunds + INPUT_TOKENS["refunds"]) + bad * before_refunds
    assert got[("tokens_in", triage)] == tokens_in
    assert got[("tokens_out", triage)] == (good * 4 + bad * 3) * OUTPUT_TOKENS
    assert got[("tool_calls", (("agent", "triage"), ("tool", "lookup_order")))] == good + bad
    # one turn_latency per SDK turn, labelled with the turn's agent: billing takes two turns
    # (the tool call, then the handoff), the others one (an agent's whole time is not a turn)
    for agent, turns in (("triage", 1), ("billing", 2), ("refunds", 1)):
        assert got[("turn_latency_count", (("agent", agent),))] == turns * (good + bad)
    assert got[("handler_latency_count", (("target", "triage"),))] == good + bad


async def test_a_second_worker_on_the_same_client_records_its_own_runs(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    """One app served by one worker, then another on the same client (a restart in the same
    process): each run's SDK spans go through the recorder of the worker running it, which
    flushes them (the first worker's, stopped, would never write them again)."""
    settings = _settings(redis_url, keys)
    app = make_app()
    runs = AgentClient(client, keys=keys, settings=settings)
    for n in range(2):
        async with running_worker(settings, client, f"test:{n}", serving=app):
            result = await runs.run_and_wait("triage", f"order {n}", timeout=20)
            assert result.status == "completed"
        spans = await flushed_spans(client, keys, trace_id_for(result.run_id))
        assert outline(spans) == OUTLINE
        assert {s.attrs["worker"] for s in spans if s.kind != "submit"} == {f"test:{n}"}
