"""The worker core's telemetry: the spans of a task's deliveries (submit, inbox, attempts,
retries, its dead letter) in one trace, its metrics counted exactly, nothing written with
tracing and metrics off, and the run lifecycle feed.

Real Redis, in-process workers (tests.helpers.running_worker) serving tests.apps.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio
import redis.exceptions

from runtime import Keys, Settings
from runtime.agents.submission import submit_args, submit_keys, submit_script
from runtime.observability.metrics import MetricsRecorder, decode_field
from runtime.observability.spans import SpanRecord
from runtime.observability.telemetry import trace_id_for
from runtime.observability.trace_store import TraceStore
from runtime.observability.tracecontext import parse_traceparent
from runtime.producer import Producer
from tests.conftest import make_settings
from tests.helpers import running_worker, wait_until, worker_process
from tests.observability_apps import make_app as make_agents


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
    context = parse_traceparent(json.loads(envelope_raw)["traceparent"])
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


async def test_a_run_submitted_by_the_script_joins_the_trace_it_names(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    """submit_run.lua (ARGV 6): the envelope carries the publisher's traceparent, the record
    names its trace; without one, the run's own trace (SHA-1 of its id) as the Python client
    makes it; a malformed one is refused, nothing written."""
    script = client.register_script(submit_script())
    mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    for run_id, traceparent in (("r-1", mine), ("r-2", None), ("r-3", "00-XYZ-1-01")):
        request = msgspec.json.encode({"run_id": run_id, "agent": "triage", "input": "hi"})
        args = submit_args(keys.prefix, request, traceparent=traceparent)
        call = script(keys=submit_keys(keys, "triage", run_id), args=args)
        if run_id == "r-3":
            with pytest.raises(redis.exceptions.ResponseError, match=r"ARGV\[6\] must be a W3C"):
                await call
        else:
            assert (await call)[0] == b"submitted"
    records = [await client.hgetall(keys.run(r)) for r in ("r-1", "r-2", "r-3")]
    assert records[0][b"trace_id"] == b"0af7651916cd43dd8448eb211c80319c"
    assert records[1][b"trace_id"] == trace_id_for("r-2").encode() and not records[2]
    entries = await client.xrange(keys.inbox("triage"))
    envelopes = [json.loads(fields[b"envelope"]) for _, fields in entries]
    assert [e.get("traceparent") for e in envelopes] == [mine, None]


async def test_a_worker_process_writes_what_it_buffered_as_it_stops(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    """With a flush interval longer than the test, only the worker's last flush, as it
    stops (SIGTERM, before its os._exit), can have written the attempt's span and metrics."""
    settings = _settings(redis_url, keys, observability__flush_interval_seconds="60")
    sent = await Producer(client, keys=keys, settings=settings).enqueue("echo", {"n": 1})
    proc = worker_process(
        "tests.apps:app", redis_url, keys, OBSERVABILITY_FLUSH_INTERVAL_SECONDS="60"
    )
    try:

        async def done() -> bool:
            return sent.task_id.encode() in await client.lrange(keys.scratch("effects"), 0, -1)

        await wait_until(done, what="the task done")
        assert not await client.exists(keys.metrics_totals())  # nothing flushed yet
    finally:
        proc.send_signal(signal.SIGTERM)
        await anyio.to_thread.run_sync(proc.wait, 30)
    assert proc.returncode == 0
    trace_id = trace_id_for(sent.task_id)  # no caller's span: the task's own trace
    spans = await spans_of(client, keys, trace_id)
    assert sorted(s.kind for s in spans) == ["attempt", "inbox", "submit"]
    assert all(s.status == "ok" for s in spans)
    got = await totals(client, keys)
    assert got[("handler_latency_count", (("target", "echo"),))] == 1
    summary = await TraceStore(client, keys).get_trace(trace_id)
    assert summary is not None and summary.status == "ok"


async def test_a_reclaimed_entry_is_counted_and_its_attempt_named_by_its_deliveries(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    """An entry a consumer took and never settled (it died) is reclaimed after one lease:
    ``reclaims`` counts it, and its attempt span is ``attempt 2`` (its second delivery)."""
    settings = _settings(redis_url, keys)
    sent = await Producer(client, keys=keys, settings=settings).enqueue("echo", {"n": 1})
    inbox = keys.inbox("echo")
    await client.xgroup_create(inbox, settings.streams.group, id="0", mkstream=True)
    taken = await client.xreadgroup(settings.streams.group, "ghost", {inbox: ">"}, count=1)
    assert taken  # delivered once, to a consumer that will never settle it
    async with running_worker(settings, client):

        async def counted() -> bool:
            got = await totals(client, keys)
            return got.get(("reclaims", (("target", "echo"),))) == 1

        await wait_until(counted, what="the reclaim counted")
        assert await client.lrange(keys.scratch("effects"), 0, -1) == [sent.task_id.encode()]

        async def ended() -> bool:
            spans = await spans_of(client, keys, trace_id_for(sent.task_id))
            return any(s.kind == "attempt" and s.end is not None for s in spans)

        await wait_until(ended, what="the attempt span")
    spans = await spans_of(client, keys, trace_id_for(sent.task_id))
    assert sorted(s.name for s in spans) == ["attempt 2", "submit echo"]  # no inbox: redelivered
    got = await totals(client, keys)
    assert ("queue_wait_count", (("target", "echo"),)) not in got  # only first deliveries


async def test_bulk_tasks_are_counted_exactly_and_not_traced(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    """enqueue_many outside an OpenTelemetry span: no traceparent, so its tasks leave no span
    (a worker draining thousands a second pays no trace); every one is in the metrics."""
    settings = _settings(redis_url, keys)
    await Producer(client, keys=keys, settings=settings).enqueue_many("echo", range(50))
    raw = [json.loads(f[b"envelope"]) for _, f in await client.xrange(keys.inbox("echo"))]
    assert len(raw) == 50 and not any("traceparent" in envelope for envelope in raw)
    async with running_worker(settings, client):

        async def counted() -> bool:
            got = await totals(client, keys)
            return got.get(("handler_latency_count", (("target", "echo"),))) == 50

        await wait_until(counted, what="the latencies flushed")
    got = await totals(client, keys)
    echo = (("target", "echo"),)
    assert got[("queue_wait_count", echo)] == 50
    assert got[("handler_latency_bucket", (("le", "+Inf"), ("target", "echo")))] == 50
    written = [k async for k in client.scan_iter(match=f"{keys.prefix}:*trace*")]
    assert written == []


async def test_observe_many_records_what_as_many_observe_calls_do(
    client: redis.asyncio.Redis, keys: Keys, settings: Settings
) -> None:
    values = [0.0, 3.5, 5.0, 7.25, 99.0, 250.0, 1234.5, 70_000.0, -2.0]
    one_by_one = MetricsRecorder(keys, settings, process="h:a:0")
    at_once = MetricsRecorder(keys, settings, process="h:b:0")
    for value in values:
        one_by_one.observe("handler_latency", value, target="a")
    at_once.observe_many("handler_latency", values, target="b")
    await one_by_one.flush(client)
    await at_once.flush(client)
    got = await totals(client, keys)
    a = {(m, tuple(k for k in labels if k[0] != "target")): v for (m, labels), v in got.items()
         if ("target", "a") in labels}  # fmt: skip
    b = {(m, tuple(k for k in labels if k[0] != "target")): v for (m, labels), v in got.items()
         if ("target", "b") in labels}  # fmt: skip
    assert a == b and a[("handler_latency_count", ())] == len(values)
    with pytest.raises(ValueError, match="finite"):
        at_once.observe_many("handler_latency", [1.0, float("nan")], target="b")


async def test_a_run_dead_lettered_before_it_ran_ends_its_own_trace(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    """A run submitted by the script (no traceparent) whose entry was delivered to a
    consumer that died, and is over worker.max_deliveries: its dead letter is a span of the
    run's own trace (an agent run is always traced), which ends with an error."""
    settings = _settings(redis_url, keys, worker__max_deliveries="1")
    request = msgspec.json.encode({"run_id": "r-9", "agent": "triage", "input": "hi"})
    script = client.register_script(submit_script())
    await script(keys=submit_keys(keys, "triage", "r-9"), args=submit_args(keys.prefix, request))
    inbox = keys.inbox("triage")
    await client.xgroup_create(inbox, settings.streams.group, id="0", mkstream=True)
    assert await client.xreadgroup(settings.streams.group, "ghost", {inbox: ">"}, count=1)
    async with running_worker(settings, client, serving=make_agents()):
        trace_id = trace_id_for("r-9")

        async def ended() -> bool:
            summary = await TraceStore(client, keys).get_trace(trace_id)
            return summary is not None and summary.status == "error"

        await wait_until(ended, what="the run's trace ended")
    (letter,) = await spans_of(client, keys, trace_id)
    assert letter.name == "dead letter: max_deliveries" and letter.parent_id is None
    assert (await client.hget(keys.run("r-9"), "status")) == b"failed"
