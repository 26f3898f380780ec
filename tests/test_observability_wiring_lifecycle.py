"""The run lifecycle feed: written by submits and workers in their own round trips, read back
as one row per run with its final status (bounded, filterable); and with tracing and metrics
off in the settings, no trace or metric key is written at all.
"""

from __future__ import annotations

import json

import redis.asyncio

from runtime import Keys, Settings
from runtime.agents import AgentClient
from runtime.agents.runs import requeue_for_replay
from runtime.dlq import DeadLetters
from runtime.envelope import Envelope
from runtime.observability.lifecycle import LifecycleEvent, append_lifecycle, recent_runs
from runtime.observability.tracecontext import parse_traceparent
from runtime.producer import Producer
from tests.agent_apps import make_app as rate_limited_app
from tests.conftest import make_settings
from tests.helpers import running_worker, wait_until
from tests.observability_apps import make_app


def _settings(redis_url: str, keys: Keys, **overrides: object) -> Settings:
    values: dict[str, object] = {"observability.flush_interval_seconds": "0.05", **overrides}
    return make_settings(redis_url, keys.prefix, **values)


async def test_recent_runs_give_each_run_once_with_its_final_status(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    settings = _settings(redis_url, keys, observability__events_maxlen="100")
    runs = AgentClient(client, keys=keys, settings=settings)
    expected: dict[str, tuple[str, str]] = {}  # run id → (agent, final status)
    handles = []
    for n in range(30):
        agent = "billing" if n % 3 == 0 else "triage"
        text = f"boom {n}" if n % 5 == 0 else f"order {n}"
        handle = await runs.run(agent, text, session_id=f"c-{n % 4}")
        handles.append(handle)
        expected[handle.run_id] = (agent, "failed" if n % 5 == 0 else "completed")
    assert await handles[7].cancel()  # before any worker runs it
    expected[handles[7].run_id] = (expected[handles[7].run_id][0], "cancelled")
    queued = await recent_runs(client, keys, limit=100)
    assert {r.run_id: r.status for r in queued} == dict.fromkeys(expected, "queued")

    async with running_worker(settings, client, serving=make_app()):
        results = [await h.result(timeout=30) for h in handles]
    assert {r.run_id: r.status for r in results} == {k: v[1] for k, v in expected.items()}

    rows = await recent_runs(client, keys, limit=100)
    assert len(rows) == 30 and {r.run_id for r in rows} == set(expected)  # each run once
    assert {r.run_id: (r.agent, r.status) for r in rows} == expected
    assert [r.at for r in rows] == sorted((r.at for r in rows), reverse=True)  # newest first
    finished = {r.run_id: r for r in results}
    for row in rows:
        assert row.session is not None and row.session.startswith("c-")
        assert row.trace_id is not None and len(row.trace_id) == 32
        assert row.worker == "test:0"
        if row.status == "failed":
            assert row.error is not None and "refunds broke" in row.error
            assert len(row.error) <= 300
        if row.status != "cancelled":
            result = finished[row.run_id]
            assert result.started_at and result.finished_at and row.duration_ms is not None
            assert 0 <= row.duration_ms <= (result.finished_at - result.started_at) * 1000 + 1
    failed = await recent_runs(client, keys, status="failed")
    assert {r.run_id for r in failed} == {k for k, v in expected.items() if v[1] == "failed"}
    billing = await recent_runs(client, keys, agent="billing", limit=100)
    assert {r.run_id for r in billing} == {k for k, v in expected.items() if v[0] == "billing"}
    cancelled = await recent_runs(client, keys, status="cancelled")
    assert [r.run_id for r in cancelled] == [handles[7].run_id]
    both = await recent_runs(client, keys, status="completed", agent="billing", limit=100)
    assert {r.run_id for r in both} == {
        k for k, v in expected.items() if v == ("billing", "completed")
    }
    first = await recent_runs(client, keys, limit=5)
    assert [r.run_id for r in first] == [r.run_id for r in rows[:5]]

    # bounded: the feed is trimmed to about events_maxlen, and a read scans at most `scan`
    for n in range(400):
        await runs.run("triage", f"later {n}")
    size = await client.xlen(keys.events())
    assert 100 <= size <= 200  # MAXLEN ~ 100: whole nodes of 100 entries are trimmed
    assert len(await recent_runs(client, keys, limit=1000, scan=50)) == 50


async def test_a_run_that_lasts_shows_running_then_its_outcome(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    settings = _settings(redis_url, keys)
    runs = AgentClient(client, keys=keys, settings=settings)
    async with running_worker(settings, client, serving=make_app(delay=0.2)):
        handle = await runs.run("triage", "order 5", session_id="slow")

        async def running() -> bool:
            return [r.status for r in await recent_runs(client, keys)] == ["running"]

        await wait_until(running, what="the run shown running")
        record = await handle.status()
        assert record is not None and record.status == "running"  # the record agrees
        result = await handle.result(timeout=20)
    (row,) = await recent_runs(client, keys)
    assert (row.run_id, row.status, row.session) == (handle.run_id, "completed", "slow")
    statuses = [f[b"status"] for _, f in await client.xrange(keys.events())]
    assert statuses == [b"queued", b"running", b"completed"]
    assert result.status == "completed"


async def test_a_late_running_event_hides_no_outcome_and_a_replay_shows(
    client: redis.asyncio.Redis, keys: Keys
) -> None:
    async def feed(*statuses: str) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for status in statuses:
                event = LifecycleEvent(run="r1", agent="triage", status=status)  # type: ignore[arg-type]
                append_lifecycle(pipe, keys, 1000, event)
            await pipe.execute()

    await feed("queued", "running", "completed", "running")  # a redelivered entry, late
    (row,) = await recent_runs(client, keys)
    assert row.status == "completed"
    await feed("requeued")
    (row,) = await recent_runs(client, keys)
    assert row.status == "requeued"
    await feed("running", "failed")
    (row,) = await recent_runs(client, keys)
    assert row.status == "failed"


async def test_with_tracing_and_metrics_off_nothing_is_written(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    settings = _settings(
        redis_url, keys, observability__tracing="false", observability__metrics="false"
    )
    runs = AgentClient(client, keys=keys, settings=settings)
    producer = Producer(client, keys=keys, settings=settings)
    async with running_worker(settings, client, serving=make_app()) as worker:
        assert worker.telemetry is None
        result = await runs.run_and_wait("triage", "order 1", timeout=20)
        assert result.status == "completed"
        sent = await producer.enqueue("triage", {"not": "a run"})  # dead-lettered

        async def dead() -> bool:
            return bool(await client.xlen(keys.dlq("triage")))

        await wait_until(dead, what="the dead letter")
    letter = (await client.xrange(keys.dlq("triage")))[0][1]
    assert json.loads(letter[b"envelope"])["id"] == sent.task_id
    assert parse_traceparent(json.loads(letter[b"envelope"])["traceparent"]) is not None
    written = {k.decode() async for k in client.scan_iter(match=f"{keys.prefix}:*")}
    assert not [k for k in written if "trace" in k or ":ts:" in k or ":metrics:" in k]
    assert keys.traces() not in written and keys.metrics_totals() not in written
    assert b"trace_id" not in await client.hgetall(keys.run(result.run_id))
    assert keys.events() in written  # the lifecycle feed is not tracing nor metrics


async def test_a_dead_lettered_run_replayed_shows_failed_requeued_then_its_outcome(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    settings = _settings(redis_url, keys, worker__max_deliveries="1")
    app, _model = rate_limited_app("rate_limited")  # its first model call is rate limited
    runs = AgentClient(client, keys=keys, settings=settings)
    async with running_worker(settings, client, serving=app):
        handle = await runs.run("triage", "hello")
        failed = await handle.result(timeout=20)
        assert (failed.status, failed.error_type) == ("failed", "DeadLettered")
        (row,) = await recent_runs(client, keys)
        assert row.status == "failed" and row.error == failed.error, row.error

        async def requeue(envelope: Envelope) -> object:
            return await requeue_for_replay(client, keys, settings.runs, envelope)

        replayed = await DeadLetters(client, keys=keys).replay("triage", after_move=requeue)
        assert len(replayed.moved) == 1

        async def completed() -> bool:
            rows = await recent_runs(client, keys)
            return [r.status for r in rows] == ["completed"]

        await wait_until(completed, what="the replayed run completed")
    statuses = [f[b"status"] for _, f in await client.xrange(keys.events())]
    assert statuses == [b"queued", b"failed", b"requeued", b"completed"]
    assert (await handle.result(timeout=5)).status == "completed"


async def test_a_submit_whose_telemetry_is_refused_still_goes_through(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    """The submit's span, lifecycle event and count ride on its round trip but are not the
    submit: a refused one (here the totals key holds a string) is logged, the run submitted
    (raising would have the app submit it again, a second run)."""
    settings = _settings(redis_url, keys)
    await client.set(keys.metrics_totals(), "not a hash")
    runs = AgentClient(client, keys=keys, settings=settings)
    handle = await runs.run("triage", "order 9")
    assert await client.xlen(keys.inbox("triage")) == 1
    assert [r.status for r in await recent_runs(client, keys)] == ["queued"]
    record = await handle.status()
    assert record is not None and record.status == "queued"
