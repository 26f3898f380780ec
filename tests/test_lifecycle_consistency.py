"""The lifecycle feed never contradicts the run record: after every way a run ends
(completed; failed by a handler error, max turns or its time limit; cancelled before it
started or while running; dead-lettered after too many deliveries or as a poison entry;
replayed, then completed) ``recent_runs`` gives the record's status, and the feed holds one
terminal event per outcome. A writer whose result the record refused (the run had ended: a
late dead letter of a completed run, an attempt that finished after its run was
dead-lettered) leaves the record's outcome as the feed's last word.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio

from runtime import Keys, Settings
from runtime.agents import AgentApp, AgentClient
from runtime.agents.runs import RunStore, requeue_for_replay
from runtime.app import DeadLetterContext
from runtime.dlq import DeadLetters
from runtime.envelope import Envelope, encode_envelope
from runtime.observability.lifecycle import LifecycleEvent, append_lifecycle, recent_runs
from tests.agent_apps import make_app as echo_app
from tests.conftest import make_settings
from tests.helpers import running_worker, wait_until
from tests.observability_apps import make_app

TERMINAL = {"completed", "failed", "cancelled"}


def _settings(redis_url: str, keys: Keys, **overrides: object) -> Settings:
    values: dict[str, object] = {"observability.flush_interval_seconds": "0.05", **overrides}
    return make_settings(redis_url, keys.prefix, **values)


async def _feed(client: redis.asyncio.Redis, keys: Keys, run_id: str) -> list[str]:
    """The statuses the feed holds for *run_id*, oldest first."""
    rows: Any = await client.xrange(keys.events())
    return [f[b"status"].decode() for _, f in rows if f[b"run"].decode() == run_id]


async def _agrees(
    client: redis.asyncio.Redis, keys: Keys, expected: dict[str, str], *, outcomes: int = 1
) -> None:
    """Each run's record says its expected status, so does recent_runs, and the feed holds
    *outcomes* terminal events for it."""
    rows = {r.run_id: r for r in await recent_runs(client, keys, limit=1000)}
    for run_id, status in expected.items():
        record = await client.hget(keys.run(run_id), "status")
        feed = await _feed(client, keys, run_id)
        assert record == status.encode(), (run_id, record, status)
        assert rows[run_id].status == status, (run_id, rows[run_id].status, feed)
        assert sum(s in TERMINAL for s in feed) == outcomes, (run_id, feed)
        assert feed[-1] == status, (run_id, feed)


def _late_letter(app: AgentApp, settings: Settings, client: redis.asyncio.Redis, keys: Keys,
                 run_id: str, agent: str = "triage") -> tuple[Any, DeadLetterContext]:  # fmt: skip
    """The app's dead-letter hook and what the worker passes it for *run_id*'s entry."""
    payload = {"run_id": run_id, "agent": agent, "input": "order 1"}
    envelope = Envelope(id=run_id, target=agent, payload=payload)
    info = DeadLetterContext(
        envelope, "max_deliveries", "the worker running it died or hung", client, keys,
        settings, "delivered 4 times without an outcome",
    )  # fmt: skip
    hook = app.handlers[agent].on_dead_letter
    assert hook is not None
    return hook, info


async def test_a_late_dead_letter_of_a_completed_run_leaves_it_completed_in_the_feed(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    settings = _settings(redis_url, keys)
    app = make_app()
    runs = AgentClient(client, keys=keys, settings=settings)
    async with running_worker(settings, client, serving=app):
        done = await runs.run_and_wait("triage", "order 1", timeout=20)
    assert done.status == "completed"
    hook, info = _late_letter(app, settings, client, keys, done.run_id)
    await hook(info)  # the record refuses the late 'failed': the run had completed
    record = await runs.handle(done.run_id).status()
    assert record is not None and record.status == "completed"
    (row,) = await recent_runs(client, keys)
    assert (row.run_id, row.status) == (done.run_id, "completed")
    assert row.worker == "test:0" and row.duration_ms is not None and row.error is None


async def test_an_attempt_that_ends_after_its_run_was_dead_lettered_leaves_it_failed(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    """Its result is refused (the dead letter's stands): the feed must not say completed."""
    settings = _settings(redis_url, keys)
    app = make_app(delay=0.3)  # four model calls: the run lasts about 1.2 s
    runs = AgentClient(client, keys=keys, settings=settings)
    async with running_worker(settings, client, serving=app):
        handle = await runs.run("triage", "order 2")

        async def running() -> bool:
            record = await handle.status()
            return record is not None and record.status == "running"

        await wait_until(running, what="the run running")
        hook, info = _late_letter(app, settings, client, keys, handle.run_id)
        await hook(info)  # dead-lettered while its attempt goes on
        record = await handle.status()
        assert record is not None and record.status == "failed"
    # the worker stopped gracefully: the attempt ended, its result was refused
    assert (await client.xpending(keys.inbox("triage"), "workers"))["pending"] == 0
    record = await handle.status()
    assert record is not None and (record.status, record.error_type) == ("failed", "DeadLettered")
    (row,) = await recent_runs(client, keys)
    assert (row.run_id, row.status) == (handle.run_id, "failed")
    assert row.error is not None and "delivered 4 times" in row.error


async def _poison(client: redis.asyncio.Redis, keys: Keys, runs: AgentClient) -> tuple[str, str]:
    """Two runs whose entries are dead-lettered: one delivered too often already (its
    workers died), one whose entry was replaced by a malformed payload (the run's id kept)."""
    inbox = keys.inbox("triage")
    worn = (await runs.run("triage", "order 3")).run_id
    await client.xgroup_create(inbox, "workers", id="0", mkstream=True)
    taken: Any = await client.xreadgroup("workers", "dead-host:1", {inbox: ">"}, count=1)
    ids = [entry_id for entry_id, _ in taken[0][1]]
    await client.xclaim(inbox, "workers", "dead-host:1", 0, ids, idle=60_000, retrycount=3)
    bad = (await runs.run("triage", "order 4")).run_id
    newest: Any = await client.xrevrange(inbox, "+", "-", count=1)
    await client.xdel(inbox, newest[0][0])
    envelope = Envelope(id=bad, target="triage", payload="not a run request")
    await client.xadd(inbox, {"envelope": encode_envelope(envelope)})
    return worn, bad


async def test_every_way_a_run_ends_leaves_the_feed_agreeing_with_the_record(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    settings = _settings(redis_url, keys)  # worker.max_deliveries 3
    runs = AgentClient(client, keys=keys, settings=settings)
    worn, bad = await _poison(client, keys, runs)
    completed = await runs.run("triage", "order 5", session_id="s1")
    broken = await runs.run("triage", "boom 6", session_id="s1")  # the model raises
    looping = await runs.run("triage", "order 7", max_turns=1)  # triage hands off: turn 2
    unwanted = await runs.run("billing", "order 8")
    assert await unwanted.cancel()  # before any worker takes it
    handles = [completed, broken, looping, unwanted]
    async with running_worker(settings, client, serving=make_app()):
        results = {h.run_id: await h.result(timeout=20) for h in handles}
        for run_id in (worn, bad):
            results[run_id] = await runs.handle(run_id).result(timeout=20)
    assert {k: (v.status, v.error_type) for k, v in results.items()} == {
        completed.run_id: ("completed", None),
        broken.run_id: ("failed", "RuntimeError"),
        looping.run_id: ("failed", "MaxTurnsExceeded"),
        unwanted.run_id: ("cancelled", None),
        worn: ("failed", "DeadLettered"),
        bad: ("failed", "DeadLettered"),
    }
    await _agrees(client, keys, {k: v.status for k, v in results.items()})


async def test_a_run_that_times_out_shows_failed(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    settings = _settings(redis_url, keys, runs__timeout_seconds="0.3")
    runs = AgentClient(client, keys=keys, settings=settings)
    async with running_worker(settings, client, serving=make_app(delay=0.2)):
        result = await runs.run_and_wait("triage", "order 9", timeout=20)
    assert (result.status, result.error_type) == ("failed", "RunTimeout")
    await _agrees(client, keys, {result.run_id: "failed"})


async def test_a_run_cancelled_while_running_shows_cancelled(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    settings = _settings(redis_url, keys)
    runs = AgentClient(client, keys=keys, settings=settings)
    async with running_worker(settings, client, serving=make_app(delay=0.5)):
        handle = await runs.run("triage", "order 10")

        async def running() -> bool:
            return await _feed(client, keys, handle.run_id) == ["queued", "running"]

        await wait_until(running, what="the run running")
        assert await handle.cancel()
        result = await handle.result(timeout=20)
    assert (result.status, result.error) == ("cancelled", "cancelled while running")
    await _agrees(client, keys, {result.run_id: "cancelled"})


async def test_a_dead_lettered_run_replayed_then_completed_shows_completed(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    settings = _settings(redis_url, keys, worker__max_deliveries="1")
    app, _model = echo_app("rate_limited")  # its first model call is rate limited
    runs = AgentClient(client, keys=keys, settings=settings)
    async with running_worker(settings, client, serving=app):
        handle = await runs.run("triage", "hello")
        assert (await handle.result(timeout=20)).status == "failed"
        await _agrees(client, keys, {handle.run_id: "failed"})

        async def requeue(envelope: Envelope) -> object:
            return await requeue_for_replay(client, keys, settings.runs, envelope)

        replayed = await DeadLetters(client, keys=keys).replay("triage", after_move=requeue)
        assert len(replayed.moved) == 1

        async def completed() -> bool:
            record = await handle.status()
            return record is not None and record.status == "completed"

        await wait_until(completed, what="the replayed run completed")
    await _agrees(client, keys, {handle.run_id: "completed"}, outcomes=2)
    statuses: Sequence[str] = await _feed(client, keys, handle.run_id)
    assert statuses[-3:] == ["failed", "requeued", "completed"], statuses


async def test_a_restated_outcome_is_the_records(
    redis_url: str, client: redis.asyncio.Redis, keys: Keys
) -> None:
    """feed_outcome: the record's outcome with its details and end time; ``requeued`` when a
    replay put the run back since (a terminal event before it then counts no more); nothing
    for a record that is gone."""
    store = RunStore(client, keys, _settings(redis_url, keys).runs)
    await client.hset(keys.run("r1"), mapping={
        "status": "completed", "agent": "triage", "session_id": "s", "worker": "w:1",
        "error": "", "started_at": "100.5", "finished_at": "102.0", "trace_id": "ab" * 16,
    })  # fmt: skip
    await _wrong(client, keys, "r1", "failed")
    await store.feed_outcome("r1")
    (row,) = await recent_runs(client, keys)
    assert (row.status, row.at, row.duration_ms, row.worker) == ("completed", 102.0, 1500.0, "w:1")
    assert (row.session, row.trace_id, row.error) == ("s", "ab" * 16, None)
    await client.hset(keys.run("r1"), "status", "queued")  # replayed since
    await _wrong(client, keys, "r1", "failed")
    await store.feed_outcome("r1")
    (row,) = await recent_runs(client, keys)
    assert row.status == "requeued"
    await store.feed_outcome("gone")
    assert await _feed(client, keys, "gone") == []


async def _wrong(client: redis.asyncio.Redis, keys: Keys, run_id: str, status: str) -> None:
    async with client.pipeline(transaction=False) as pipe:
        event = LifecycleEvent(run=run_id, agent="triage", status=status)  # type: ignore[arg-type]
        append_lifecycle(pipe, keys, 1000, event)
        await pipe.execute()
