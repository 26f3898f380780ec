"""Reading traces back: the span tree of a waterfall, paging and filtering the recent traces,
one row per trace, bad data skipped."""

from __future__ import annotations

import pytest
import redis.asyncio

from runtime import Keys, Settings
from runtime.observability.spans import SpanRecord, TraceRecorder, TraceSummary
from runtime.observability.trace_store import TraceStore, iter_tree, span_tree
from runtime.observability.tracecontext import new_trace_id

pytestmark = pytest.mark.anyio


def _span(span_id: str, parent: str | None, start: float) -> SpanRecord:
    return SpanRecord(
        trace_id="a" * 32,
        span_id=span_id,
        parent_id=parent,
        name=span_id,
        kind="custom",
        start=start,
        end=start + 1,
        status="ok",
    )


def test_span_tree_orders_roots_and_children_by_start() -> None:
    spans = [
        _span("c2", "root", 3.0),
        _span("c1", "root", 2.0),
        _span("g1", "c1", 2.5),
        _span("root", None, 1.0),
        _span("orphan", "gone", 0.5),  # its parent expired: a root
        _span("loop-a", "loop-b", 5.0),  # a parent cycle: shown once, never hangs
        _span("loop-b", "loop-a", 6.0),
    ]
    roots = span_tree(spans)
    assert [n.span.span_id for n in roots] == ["orphan", "root", "loop-a"]
    flat = [(n.span.span_id, n.depth) for n in iter_tree(roots)]
    assert flat == [
        ("orphan", 0),
        ("root", 0),
        ("c1", 1),
        ("g1", 2),
        ("c2", 1),
        ("loop-a", 0),
        ("loop-b", 1),
    ]
    assert span_tree([]) == []


async def test_list_traces_pages_filters_and_keeps_one_row_per_trace(
    settings: Settings, client: redis.asyncio.Redis, keys: Keys
) -> None:
    recorder = TraceRecorder(keys, settings)
    tids = [new_trace_id() for _ in range(6)]
    for n, tid in enumerate(tids):
        name = "billing run" if n % 2 else "triage run"
        recorder.end_trace(TraceSummary(trace_id=tid, name=name, start=n, end=n + 1, status="ok"))
    await recorder.flush(client)
    # the same trace's summary again, from another process (another run of the trace ended
    # there; one process writes one entry per trace): listed once, newest first
    other = TraceRecorder(keys, settings)
    other.end_trace(TraceSummary(trace_id=tids[0], name="triage run", start=0, end=9))
    for n in range(3):  # spans of the first trace: counted when listed
        other.span(tids[0], f"s{n}", "custom", start=n, end=n + 1.0)
    await other.flush(client)
    store = TraceStore(client, keys)
    listed = await store.list_traces()
    assert [s.trace_id for s in listed] == [tids[0], *reversed(tids[1:])]
    assert [s.spans for s in listed] == [3, 0, 0, 0, 0, 0]
    first = await store.list_entries(2)
    assert [s.trace_id for _, s in first] == [tids[0], tids[5]]
    after = await store.list_traces(2, before=first[-1][0])
    assert [s.trace_id for s in after] == [tids[4], tids[3]]
    billing = await store.list_traces(name="BILLING")
    assert [s.trace_id for s in billing] == [tids[5], tids[3], tids[1]]
    assert await store.list_traces(0) == []
    assert await store.list_traces(before="not-an-id") == []


async def test_bad_data_is_skipped(
    settings: Settings, client: redis.asyncio.Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = TraceRecorder(keys, settings)
    tid = new_trace_id()
    good = recorder.span(tid, "good", "custom", start=1.0, end=2.0)
    await recorder.flush(client)
    await client.hset(keys.trace_spans(tid), "bad", b"{not json")
    await client.xadd(keys.traces(), {"junk": "1"})
    store = TraceStore(client, keys)
    assert await store.get_spans(tid) == [good]
    assert any(r.getMessage() == "tracing.bad_span" for r in caplog.records)
    assert await store.list_traces() == []
    assert await store.get_trace(tid) is None  # spans, but no summary yet
    assert await store.get_trace("nonsense") is None
    assert await store.get_spans("trace_" + "f" * 32) == []


async def test_a_trace_over_the_limit_is_read_in_part_the_same_spans_each_time(
    settings: Settings, client: redis.asyncio.Redis, keys: Keys
) -> None:
    """300 spans (a hash Redis stores as a table, scanned in pages): at most the limit read,
    sorted by start, the same ones at every read while the trace does not change."""
    recorder = TraceRecorder(keys, settings)
    tid = new_trace_id()
    made = [recorder.span(tid, f"s{n}", "custom", start=float(n), end=n + 0.5) for n in range(300)]
    await recorder.flush(client)
    store = TraceStore(client, keys)
    spans, total = await store.read_spans(tid, 100)
    assert (len(spans), total) == (100, 300)
    assert spans == sorted(spans, key=lambda s: s.start)
    assert {s.span_id for s in spans} <= {s.span_id for s in made}
    assert (await store.read_spans("trace_" + tid, 100))[0] == spans
    assert await store.get_spans(tid, limit=100) == spans
    assert await store.read_spans(tid, 300) == (made, 300)
    assert await store.read_spans(tid, 1000) == (made, 300)
    assert await store.get_spans(tid) == made
    assert await store.read_spans("nonsense", 10) == ([], 0)
    assert await store.read_spans(tid, 0) == ([], 300)
