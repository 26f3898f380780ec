"""The SDK tracing processor through the real Runner (scripted models): every span of a
3-agent run in Redis with its parent, name, kind, times, error, usage, tool and handoff, in the
worker's mode (a recorder the test flushes) and standalone (the seed's usage); binding to an
attempt span; no Redis command from a processor callback; TTLs; the seed's read API; huge
attributes cut."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis as sync_redis
import redis.asyncio
from agents import RunConfig, Runner, add_trace_processor, set_trace_processors

from runtime import Keys, Settings, load_settings
from runtime.observability.spans import MAX_ATTR_CHARS, TraceRecorder, TraceSummary
from runtime.observability.trace_store import TraceStore
from runtime.observability.tracecontext import new_trace_id, sdk_trace_id
from runtime.observability.tracing import RedisTracingProcessor
from tests.helpers import wait_until
from tests.tracing_apps import HUGE, huge_agent, run_support, support_agents
from tests.tracing_checks import RedisGuard, check_support_trace


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisGuard]:
    """Records every Redis command; the SDK's processors are cleared afterwards."""
    spy = RedisGuard()
    spy.patch(monkeypatch)
    yield spy
    set_trace_processors([])


async def test_recorder_mode_stores_every_span(
    settings: Settings, client: redis.asyncio.Redis, keys: Keys, guard: RedisGuard
) -> None:
    recorder = TraceRecorder(keys, settings, resource={"worker": "w1", "app": "support"})
    set_trace_processors([guard.wrap(RedisTracingProcessor(recorder=recorder, settings=settings))])
    store = TraceStore(client, keys)
    tid = new_trace_id()
    async with anyio.create_task_group() as tg:
        await tg.start(recorder.run, client)
        began, ended = await run_support(tid)
        await wait_until(lambda: _ended(store, tid), what="the trace's summary")
        tg.cancel_scope.cancel()
    assert guard.sends and guard.sent_inside() == 0
    check_support_trace(await store.get_spans(tid), tid, began, ended, root_parent=None)
    await _check_summary(store, client, keys.traces(), tid, began, ended)
    spans = await store.get_spans(tid)
    assert all(s.attrs["worker"] == "w1" and s.attrs["app"] == "support" for s in spans)


async def test_standalone_mode_writes_from_its_own_thread(
    settings: Settings, client: redis.asyncio.Redis, keys: Keys, redis_url: str, guard: RedisGuard
) -> None:
    stream = keys.prefix + ":my-traces"
    processor = RedisTracingProcessor(redis_url=redis_url, stream_name=stream, settings=settings)
    try:
        set_trace_processors([guard.wrap(processor)])
        tid = new_trace_id()
        began, ended = await run_support(tid)
        processor.force_flush()  # blocks until written, by the writer's thread
    finally:
        processor.shutdown()
    assert guard.sends and guard.sent_inside() == 0
    assert threading.get_ident() not in guard.threads()
    store = TraceStore(client, keys, stream=stream)
    check_support_trace(await store.get_spans(tid), tid, began, ended, root_parent=None)
    await _check_summary(store, client, stream, tid, began, ended)
    assert await client.exists(keys.traces()) == 0


async def _ended(store: TraceStore, tid: str) -> bool:
    summary = await store.get_trace(tid)
    return summary is not None and summary.end is not None


async def _check_summary(
    store: TraceStore,
    client: redis.asyncio.Redis,
    stream: str,
    tid: str,
    began: float,
    ended: float,
) -> None:
    summary = await store.get_trace(tid)
    assert summary is not None and summary.end is not None
    assert (summary.name, summary.status, summary.agent) == ("support", "ok", "triage")
    assert began <= summary.start <= summary.end <= ended + 0.01
    assert summary.spans == len(await store.get_spans(tid))
    assert await client.xlen(stream) == 1
    assert [s.trace_id for s in await store.list_traces()] == [tid]


async def test_bind_parents_the_sdk_root_on_the_attempt_span(
    settings: Settings, client: redis.asyncio.Redis, keys: Keys, guard: RedisGuard
) -> None:
    recorder = TraceRecorder(keys, settings, resource={"worker": "w1", "app": "support"})
    processor = RedisTracingProcessor(recorder=recorder, settings=settings)
    set_trace_processors([guard.wrap(processor)])
    tid = new_trace_id()
    attempt = recorder.span(tid, "attempt 1", "attempt", parent_id="00f067aa0ba902b7")
    attrs = {"run_id": "r-1", "agent": "triage", "worker": "w1", "app": "support"}
    processor.bind(sdk_trace_id(tid), attempt.span_id, attrs)
    began, ended = await run_support(tid)
    processor.unbind(sdk_trace_id(tid))
    ended_attempt = recorder.end_span(attempt)
    await recorder.flush(client)
    store = TraceStore(client, keys)
    spans = await store.get_spans(tid)
    sdk_spans = [s for s in spans if s.span_id != attempt.span_id]
    check_support_trace(sdk_spans, tid, began, ended, root_parent=attempt.span_id)
    for span in sdk_spans:
        assert span.attrs["run_id"] == "r-1" and span.attrs["app"] == "support", span
        if span.kind not in ("agent", "turn"):
            assert span.attrs["agent"] == "triage", span
    assert next(s for s in spans if s.span_id == attempt.span_id) == ended_attempt
    assert ended_attempt.parent_id == "00f067aa0ba902b7"
    assert await store.get_trace(tid) is None  # a bound trace's summary is the binder's
    recorder.end_trace(TraceSummary(trace_id=tid, name="run r-1", start=began, end=ended))
    await recorder.flush(client)
    summary = await store.get_trace(tid)
    assert summary is not None and summary.name == "run r-1" and summary.spans == len(spans)


async def test_trace_keys_carry_the_runs_ttl(
    redis_url: str, key_prefix: str, client: redis.asyncio.Redis, keys: Keys, guard: RedisGuard
) -> None:
    settings = load_settings(
        env={},
        overrides={
            "redis.url": redis_url,
            "redis.key_prefix": key_prefix,
            "runs.result_ttl_seconds": 600,
        },
    )
    recorder = TraceRecorder(keys, settings)
    set_trace_processors([RedisTracingProcessor(recorder=recorder, settings=settings)])
    tid = new_trace_id()
    await run_support(tid)
    await recorder.flush(client)
    for key in (keys.trace(tid), keys.trace_spans(tid)):
        assert 590_000 < await client.pttl(key) <= 600_000, key
    # standalone, with trace_ttl
    standalone = RedisTracingProcessor(redis_url=redis_url, settings=settings, trace_ttl=120)
    try:
        set_trace_processors([standalone])
        tid = new_trace_id()
        await run_support(tid)
        standalone.force_flush()
    finally:
        standalone.shutdown()
    for key in (keys.trace(tid), keys.trace_spans(tid)):
        assert 110_000 < await client.pttl(key) <= 120_000, key


async def test_seed_api(
    redis_url: str,
    key_prefix: str,
    client: redis.asyncio.Redis,
    monkeypatch: pytest.MonkeyPatch,
    clean_env: object,
    guard: RedisGuard,
) -> None:
    monkeypatch.setenv("AGENTS_WORKER_REDIS_KEY_PREFIX", key_prefix)  # the deployment's setting
    # as a user of the seed package writes it
    processor = RedisTracingProcessor(redis_url=redis_url, stream_name=f"{key_prefix}:traces")
    add_trace_processor(processor)
    try:
        result = await Runner.run(
            support_agents(), "refund order 7", run_config=RunConfig(workflow_name="support")
        )
        await Runner.run(huge_agent(), "big", run_config=RunConfig(workflow_name="bulk export"))
        processor.force_flush()
        traces = await processor.list_traces(limit=10)
        assert [t["name"] for t in traces] == ["bulk export", "support"]
        only = await processor.list_traces(name_filter="supp")
        assert [t["name"] for t in only] == ["support"]
        sdk_id = only[0]["trace_id"]
        assert result.final_output == "billing done"
        for form in (sdk_id, "trace_" + sdk_id):
            trace = await processor.get_trace(form)
            assert trace is not None and trace["status"] == "ok" and trace["spans"] >= 13
            spans = await processor.get_spans(form)
            assert len(spans) == trace["spans"]
            assert all(s["name"] != "unknown" and s["end"] >= s["start"] for s in spans)
            assert {"agent: triage", "function: lookup_order"} <= {s["name"] for s in spans}
        assert await processor.get_trace("trace_" + "0" * 32) is None
        assert await processor.get_spans("nonsense") == []
    finally:
        processor.shutdown()
    assert await client.exists(f"{key_prefix}:traces") == 1


async def test_a_huge_attribute_is_cut(
    settings: Settings, client: redis.asyncio.Redis, keys: Keys, guard: RedisGuard
) -> None:
    recorder = TraceRecorder(keys, settings)
    set_trace_processors([RedisTracingProcessor(recorder=recorder, settings=settings)])
    tid = new_trace_id()
    await Runner.run(huge_agent(), "big", run_config=RunConfig(trace_id=sdk_trace_id(tid)))
    await recorder.flush(client)
    spans = await TraceStore(client, keys).get_spans(tid)
    tool = next(s for s in spans if s.kind == "function")
    output = tool.attrs["output"]
    assert output.startswith("x" * MAX_ATTR_CHARS)
    assert output.endswith(f"[cut: {HUGE} characters]") and len(output) < MAX_ATTR_CHARS + 100
    raw = await client.hgetall(keys.trace_spans(tid))
    assert max(len(value) for value in raw.values()) < 4 * MAX_ATTR_CHARS


async def test_recent_traces_stream_is_bounded(
    redis_url: str, key_prefix: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    settings = load_settings(
        env={},
        overrides={
            "redis.url": redis_url,
            "redis.key_prefix": key_prefix,
            "observability.traces_maxlen": 100,
        },
    )
    recorder = TraceRecorder(keys, settings)
    for n in range(1000):
        recorder.end_trace(
            TraceSummary(trace_id=f"{n:032x}", name=f"t{n}", start=1.0, end=2.0, status="ok")
        )
    await recorder.flush(client)
    assert 100 <= await client.xlen(keys.traces()) < 300
    newest = await TraceStore(client, keys).list_traces(3)
    assert [s.name for s in newest] == ["t999", "t998", "t997"]


class _TalkingProcessor(RedisTracingProcessor):
    """A processor that (wrongly) talks to Redis in a callback: the guard must see it."""

    def on_span_end(self, span: Any) -> None:
        with sync_redis.Redis.from_url(self.redis_url or "") as conn:
            conn.ping()
        super().on_span_end(span)


async def test_the_guard_sees_a_callback_talking_to_redis(
    settings: Settings, keys: Keys, guard: RedisGuard
) -> None:
    recorder = TraceRecorder(keys, settings)
    processor = _TalkingProcessor(recorder=recorder, settings=settings)
    set_trace_processors([guard.wrap(processor)])
    await Runner.run(huge_agent(), "big")
    assert guard.sent_inside() > 0
    assert threading.get_ident() in guard.threads()
