"""Flushing traces: force_flush and shutdown write everything buffered, a process that exits
is flushed once, a Redis outage keeps the batch for the next flush (never raising into the
agent), and the buffer's bound drops the oldest spans, counted and logged once."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio
from agents import RunConfig, Runner, set_trace_processors

from runtime import EmbeddedRedis, Keys, Settings, load_settings
from runtime.errors import RedisError
from runtime.observability.spans import TraceRecorder, TraceSummary
from runtime.observability.trace_store import TraceStore
from runtime.observability.tracecontext import new_trace_id, sdk_trace_id
from runtime.observability.tracing import RedisTracingProcessor
from tests.helpers import wait_until
from tests.tracing_apps import support_agents

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
SUPPORT_SPANS = 19  # every span of one run of the support app (tests.tracing_apps)

EXIT_SCRIPT = """
import asyncio, sys
from agents import RunConfig, Runner, set_trace_processors
from runtime import load_settings
from runtime.observability.tracecontext import sdk_trace_id
from runtime.observability.tracing import RedisTracingProcessor
from tests.tracing_apps import support_agents

url, prefix, tid, mode = sys.argv[1:5]
settings = load_settings(env={}, overrides={
    "redis.key_prefix": prefix, "observability.flush_interval_seconds": 60})
processor = RedisTracingProcessor(redis_url=url, settings=settings)
set_trace_processors([processor])
config = RunConfig(workflow_name="exit", trace_id=sdk_trace_id(tid))
asyncio.run(Runner.run(support_agents(), "refund order 7", run_config=config))
if mode == "shutdown":
    processor.force_flush()
    processor.shutdown()
    processor.force_flush()
print("done", flush=True)
"""


@pytest.fixture
def no_processors() -> Iterator[None]:
    yield
    set_trace_processors([])


def _settings(url: str, prefix: str, **changes: object) -> Settings:
    values: dict[str, object] = {"redis.url": url, "redis.key_prefix": prefix, **changes}
    return load_settings(env={}, overrides=values)


async def _run(tid: str) -> None:
    config = RunConfig(workflow_name="support", trace_id=sdk_trace_id(tid))
    result = await Runner.run(support_agents(), "refund order 7", run_config=config)
    assert result.final_output == "billing done"


async def test_shutdown_writes_everything_once(
    settings: Settings, client: redis.asyncio.Redis, keys: Keys, redis_url: str, no_processors: None
) -> None:
    slow = _settings(redis_url, keys.prefix, **{"observability.flush_interval_seconds": 60})
    processor = RedisTracingProcessor(redis_url=redis_url, settings=slow)
    set_trace_processors([processor])
    tid = new_trace_id()
    await _run(tid)
    assert await client.exists(keys.trace_spans(tid)) == 0  # nothing written yet
    processor.shutdown()
    processor.shutdown()  # the SDK's exit handler calls it again: nothing more
    processor.force_flush()
    store = TraceStore(client, keys)
    assert len(await store.get_spans(tid)) == SUPPORT_SPANS
    assert await client.xlen(keys.traces()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["exit", "shutdown"])
async def test_a_process_is_flushed_once_on_its_way_out(
    ending: str, client: redis.asyncio.Redis, keys: Keys, redis_url: str
) -> None:
    """Without shutdown, the SDK's exit handler flushes through the writer (a daemon thread:
    the process exits); with it, the exit handler's second shutdown writes nothing more."""
    tid = new_trace_id()
    args = [sys.executable, "-c", EXIT_SCRIPT, redis_url, keys.prefix, tid, ending]
    done = await anyio.to_thread.run_sync(
        lambda: subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=45)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    assert len(await TraceStore(client, keys).get_spans(tid)) == SUPPORT_SPANS
    assert await client.xlen(keys.traces()) == 1
    summary = await TraceStore(client, keys).get_trace(tid)
    assert summary is not None and summary.status == "ok" and summary.name == "exit"


async def test_an_outage_keeps_the_batch_for_the_next_flush(
    own_server: tuple[EmbeddedRedis, str], keys: Keys
) -> None:
    server, url = own_server
    recorder = TraceRecorder(keys, _settings(url, keys.prefix))
    tid = new_trace_id()
    spans = [
        recorder.span(tid, f"s{n}", "custom", end=float(n + 1), start=float(n)) for n in range(50)
    ]
    recorder.end_trace(TraceSummary(trace_id=tid, name="t", start=0.0, end=50.0, status="ok"))
    client = redis.asyncio.Redis.from_url(url)
    try:
        await anyio.to_thread.run_sync(server.stop)
        with pytest.raises(RedisError):
            await recorder.flush(client)
        assert recorder.pending() == 51
        late = recorder.span(tid, "late", "custom", start=60.0, end=61.0)
        await anyio.to_thread.run_sync(server.start)
        assert await recorder.flush(client) == 52
        stored = await TraceStore(client, keys).get_spans(tid)
        assert stored == [*spans, late]
        assert await client.xlen(keys.traces()) == 1
    finally:
        await client.aclose()


async def test_the_flusher_retries_through_an_outage_and_the_agent_never_sees_it(
    own_server: tuple[EmbeddedRedis, str], keys: Keys, no_processors: None
) -> None:
    server, url = own_server
    settings = _settings(url, keys.prefix, **{"observability.flush_interval_seconds": 0.05})
    processor = RedisTracingProcessor(redis_url=url, settings=settings)
    set_trace_processors([processor])
    client = redis.asyncio.Redis.from_url(url)
    try:
        await anyio.to_thread.run_sync(server.stop)
        tid = new_trace_id()
        await _run(tid)  # Redis is down: the run goes on
        processor.force_flush()  # logged, not raised
        assert processor.recorder.pending() > 0
        await anyio.to_thread.run_sync(server.start)
        store = TraceStore(client, keys)

        async def written() -> bool:
            return len(await store.get_spans(tid)) == SUPPORT_SPANS

        await wait_until(written, what="the flusher to write after the outage")
        assert await client.xlen(keys.traces()) == 1
    finally:
        processor.shutdown()
        await client.aclose()


async def test_the_buffer_drops_the_oldest_beyond_its_cap(
    own_server: tuple[EmbeddedRedis, str], keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    server, url = own_server
    recorder = TraceRecorder(keys, _settings(url, keys.prefix), max_spans=100)
    tid = new_trace_id()
    client = redis.asyncio.Redis.from_url(url)
    caplog.set_level(logging.INFO)
    try:
        made = [recorder.span(tid, f"s{n}", "custom", start=n, end=n + 1.0) for n in range(80)]
        await anyio.to_thread.run_sync(server.stop)
        with pytest.raises(RedisError):
            await recorder.flush(client)  # the 80 are kept...
        made += [
            recorder.span(tid, f"s{n}", "custom", start=n, end=n + 1.0) for n in range(80, 250)
        ]
        assert (recorder.pending(), recorder.dropped) == (100, 150)  # ...but the cap holds
        full = [r for r in caplog.records if r.getMessage() == "tracing.buffer_full"]
        assert len(full) == 1  # once per episode
        await anyio.to_thread.run_sync(server.start)
        await recorder.flush(client)
        assert await TraceStore(client, keys).get_spans(tid) == made[150:]
    finally:
        await client.aclose()


async def test_tracing_off_writes_nothing_but_feeds_listeners(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    recorder = TraceRecorder(
        keys, _settings(redis_url, keys.prefix, **{"observability.tracing": False})
    )
    heard: list[str] = []
    recorder.add_listener(lambda span: heard.append(span.name))
    tid = new_trace_id()
    span = recorder.span(tid, "attempt 1", "attempt")
    recorder.end_span(span)
    recorder.end_trace(TraceSummary(trace_id=tid, name="t", start=0.0))
    assert await recorder.flush(client) == 0
    assert heard == ["attempt 1"]
    assert await client.exists(keys.trace(tid), keys.trace_spans(tid), keys.traces()) == 0
