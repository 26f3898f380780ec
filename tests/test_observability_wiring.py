"""The worker core's telemetry: the spans of a task's deliveries (submit, inbox, attempts,
retries, its dead letter) in one trace, its metrics counted exactly, nothing written with
tracing and metrics off, and the run lifecycle feed.

Real Redis, in-process workers (tests.helpers.running_worker) serving tests.apps.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio

from runtime import Keys, Settings
from runtime.observability.metrics import decode_field
from runtime.observability.spans import SpanRecord
from runtime.observability.trace_store import TraceStore
from runtime.observability.tracecontext import parse_traceparent
from runtime.producer import Producer
from tests.conftest import make_settings
from tests.helpers import running_worker, wait_until


def _settings(redis_url: str, keys: Keys, **overrides: object) -> Settings:
    values: dict[str, object] = {"observability.flush_interval_seconds": "0.05", **overrides}
    return make_settings(redis_url, keys.prefix, **values)


async def totals(client: redis.asyncio.Redis, keys: Keys) -> dict[tuple[str, Any], float]:
    """The fleet totals hash: (metric, sorted labels) → value."""
    raw = await client.hgetall(keys.metrics_totals())
    out: dict[tuple[str, Any], float] = {}
    for field, value in raw.items():
        name, labels = decode_field(field.decode())
        out[name, tuple(sorted(labels.items()))] = float(value)
    return out


async def spans_of(client: redis.asyncio.Redis, keys: Keys, trace_id: str) -> list[SpanRecord]:
    return await TraceStore(client, keys).get_spans(trace_id)


async def test_a_retried_then_dead_lettered_task_is_one_trace_and_counted_exactly(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    settings = _settings(redis_url, keys, worker__max_deliveries="2")
    producer = Producer(client, keys=keys, settings=settings)
    sent = await producer.enqueue("flaky", {"n": 1})
    envelope_raw = (await client.xrange(keys.inbox("flaky")))[0][1][b"envelope"]
    context = parse_traceparent(__import__("json").loads(envelope_raw)["traceparent"])
    assert context is not None
    async with running_worker(settings, client):

        async def dead() -> bool:
            return bool(await client.xlen(keys.dlq("flaky")))

        await wait_until(dead, what="the dead letter")

        async def flushed() -> bool:
            kinds = [s.kind for s in await spans_of(client, keys, context.trace_id)]
            return "dead_letter" in kinds and "running" not in {
                s.status for s in await spans_of(client, keys, context.trace_id)
            }

        await wait_until(flushed, what="the spans flushed")
    spans = await spans_of(client, keys, context.trace_id)
    by_kind: dict[str, list[SpanRecord]] = {}
    for span in spans:
        by_kind.setdefault(span.kind, []).append(span)
    (submit,) = by_kind["submit"]
    assert submit.span_id == context.span_id and submit.name == "submit flaky"
    assert submit.attrs["task_id"] == sent.task_id
    attempts = sorted(by_kind["attempt"], key=lambda s: s.start)
    assert [a.name for a in attempts] == ["attempt 1", "attempt 2"]
    assert all(a.parent_id == submit.span_id for a in attempts)
    assert all(a.status == "error" and "still broken" in (a.error or "") for a in attempts)
    (retry,) = by_kind["retry"]
    assert retry.parent_id == attempts[0].span_id and retry.start == retry.end
    (letter,) = by_kind["dead_letter"]
    assert letter.name == "dead letter: failed" and letter.parent_id == attempts[1].span_id
    assert letter.status == "error" and "still broken" in (letter.error or "")
    inboxes = sorted(by_kind["inbox"], key=lambda s: s.start)
    assert len(inboxes) == 2 and all(i.parent_id == submit.span_id for i in inboxes)
    assert attempts[0].start <= retry.start <= inboxes[1].end <= attempts[1].start  # type: ignore[operator]
    assert attempts[1].end is not None and attempts[1].end <= letter.start
    assert {s.trace_id for s in spans} == {context.trace_id}
    summary = await TraceStore(client, keys).get_trace(context.trace_id)
    assert summary is not None and summary.status == "error" and summary.name == "flaky"

    async def counted() -> bool:
        got = await totals(client, keys)
        return got.get(("dead_letters", (("target", "flaky"),))) == 1

    await wait_until(counted, what="the metrics flushed")
    got = await totals(client, keys)
    assert got[("retries", (("target", "flaky"),))] == 1
    assert got[("dead_letters", (("target", "flaky"),))] == 1
    assert got[("handler_latency_count", (("target", "flaky"),))] == 2
    assert got[("queue_wait_count", (("target", "flaky"),))] == 2
