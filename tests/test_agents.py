"""Agent runs through workers, the real SDK Runner and real Redis: order, handoffs, failures,
events, cancellation, retries."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio
from agents import Agent

from runtime import EnqueueError, Keys, RedisConnectionError, Settings
from runtime.agents import AgentApp, AgentClient, RunEvent, RunHandle
from runtime.agents.protocol import RunRequest
from runtime.agents.turns import ORPHAN_AFTER, SessionTurns
from runtime.coordinator import AgentCoordinator, EventType
from runtime.producer import Producer
from runtime.sessions import AgentSession
from tests.agent_apps import EchoModel, make_app
from tests.conftest import make_settings
from tests.helpers import kill_next_connection, running_worker, wait_until, worker_process

pytestmark = pytest.mark.anyio


@pytest.fixture
def agent_settings(redis_url: str, keys: Keys) -> Settings:
    return make_settings(
        redis_url, keys.prefix, **{"worker.max_deliveries": "5", "runs.timeout_seconds": "10"}
    )


def client_for(redis_client: redis.asyncio.Redis, keys: Keys, settings: Settings) -> AgentClient:
    return AgentClient(redis_client, keys=keys, settings=settings)


def running(handle: RunHandle) -> Callable[[], Awaitable[bool]]:
    """A check that *handle*'s record says ``running``."""

    async def check() -> bool:
        status = await handle.status()
        return status is not None and status.status == "running"

    return check


def texts(items: list[dict[str, object]]) -> list[str]:
    out = []
    for item in items:
        content = item.get("content")
        if isinstance(content, list):
            content = " ".join(str(part.get("text", "")) for part in content)  # type: ignore[union-attr]
        out.append(f"{item.get('role')}: {content}")
    return out


async def test_the_apps_model_runs_every_agent_and_an_agents_own_is_reported(
    client: redis.asyncio.Redis,
    keys: Keys,
    agent_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The app's model is the SDK's ``RunConfig.model``: it runs an agent that names a model
    of its own too, and building the app says so (the docs promise both)."""
    own = EchoModel("raise")  # would fail the run if it were used
    app_model = EchoModel()
    agent = Agent(name="solo", instructions="Answer.", model=own)
    with caplog.at_level("WARNING"):
        app = AgentApp("own-model", agents=[agent], model=app_model)
    [record] = [r for r in caplog.records if r.getMessage() == "agents.own_model_not_used"]
    assert record.aw_fields["agent"] == "solo"  # type: ignore[attr-defined]
    runs = client_for(client, keys, agent_settings)
    async with running_worker(agent_settings, client, serving=app):
        result = await (await runs.run("solo", "hi")).result(timeout=10)
    assert result.status == "completed" and result.final_output == "reply to hi"
    assert own.calls == [] and len(app_model.calls) == 1


async def test_single_run_result_and_events(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    app, _model = make_app()
    runs = client_for(client, keys, agent_settings)
    async with running_worker(agent_settings, client, serving=app):
        handle = await runs.run("triage", "hello there", session_id="s1")
        result = await handle.result(timeout=10)
    assert result.status == "completed", result.error
    assert result.final_output == "reply to hello there"
    assert result.last_agent == "triage" and result.worker == "test:0"
    assert result.usage["requests"] == 1
    types = [event.type async for event in handle.events()]
    assert types == ["run.started", "agent.updated", "message", "run.completed"]
    # the entry was acked and deleted in the round trip that stored the result
    inbox = keys.inbox("triage")
    assert await client.xlen(inbox) == 0
    assert (await client.xpending(inbox, agent_settings.streams.group))["pending"] == 0
    record = await client.hgetall(keys.run(handle.run_id))
    assert record[b"status"] == b"completed" and record[b"attempts"] == b"1"
    session = AgentSession("s1", client, keys=keys)
    assert texts(await session.get_items()) == [
        "user: hello there",
        "assistant: reply to hello there",
    ]


async def test_concurrent_runs_of_one_session_run_one_at_a_time_in_submit_order(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    """20 runs submitted at once on one conversation, three workers: one at a time, in order,
    and the history is exactly the concatenation of the turns."""
    app, model = make_app(delay=0.02)
    runs = client_for(client, keys, agent_settings)
    async with (
        running_worker(agent_settings, client, "w:0", serving=app),
        running_worker(agent_settings, client, "w:1", serving=app),
        running_worker(agent_settings, client, "w:2", serving=app),
    ):
        handles = [await runs.run("triage", f"turn {n}", session_id="conv") for n in range(20)]
        results = [await h.result(timeout=60) for h in handles]
    assert [r.status for r in results] == ["completed"] * 20
    assert [r.final_output for r in results] == [f"reply to turn {n}" for n in range(20)]
    # each model call saw exactly the turns before it: no overlap, no reordering
    for n, call in enumerate(model.calls):
        assert texts(call)[-1] == f"user: turn {n}"
        assert len(call) == 2 * n + 1
    expected = []
    for n in range(20):
        expected += [f"user: turn {n}", f"assistant: reply to turn {n}"]
    session = AgentSession("conv", client, keys=keys)
    assert texts(await session.get_items()) == expected
    assert len({r.worker for r in results}) > 1  # several workers took part
    starts = [r.started_at for r in results]
    ends = [r.finished_at for r in results]
    assert all(e <= s for e, s in zip(ends, starts[1:], strict=False))  # never two at once


async def test_app_published_handoff_continues_in_another_worker(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    app, model = make_app()
    runs = client_for(client, keys, agent_settings)
    async with running_worker(agent_settings, client, "first:0", serving=app):
        first = await (await runs.run("triage", "my invoice is wrong", session_id="c7")).result(10)
    assert first.worker == "first:0"

    # a plain coordinator, as an app would make one: the handoff enqueues the continuation
    coordinator = AgentCoordinator(client=client, keys=keys)
    event_id = await coordinator.publish_handoff_ready("triage", "billing", "c7", {"invoice": 1042})
    assert event_id
    [published] = [e async for e in _events(client, keys)]
    run_id = published.data["run_id"]
    async with running_worker(agent_settings, client, "second:0", serving=app):
        result = await runs.handle(run_id).result(timeout=10)
    assert result.status == "completed" and result.worker == "second:0"
    assert result.agent == "billing" and result.final_output == "continuing after triage"
    seen = texts(model.calls[-1])
    assert seen[:2] == ["user: my invoice is wrong", "assistant: reply to my invoice is wrong"]
    assert seen[2].startswith('system: Handoff from triage. Context: {"invoice": 1042}')
    session = AgentSession("c7", client, keys=keys)
    assert len(await session.get_items()) == 4  # the full history plus the handoff turn


async def _events(client: redis.asyncio.Redis, keys: Keys):  # type: ignore[no-untyped-def]
    coordinator = AgentCoordinator(client=client, keys=keys, consumer_group="test")
    await coordinator.initialize()
    async for event in coordinator.subscribe(
        [EventType.HANDOFF_READY.value], timeout_ms=500, max_events=1
    ):
        yield event


@pytest.mark.parametrize(
    ("behaviour", "settings_change", "status", "error"),
    [
        ("raise", {}, "failed", "ValueError: the model broke"),
        ("loop", {"runs.max_turns": "2"}, "failed", "exceeded max turns"),
        ("slow", {"runs.timeout_seconds": "0.3"}, "failed", "timed out after 0.3 s"),
    ],
)
async def test_failures_end_with_a_clear_error(
    client: redis.asyncio.Redis,
    keys: Keys,
    redis_url: str,
    behaviour: str,
    settings_change: dict[str, str],
    status: str,
    error: str,
) -> None:
    settings = make_settings(redis_url, keys.prefix, **settings_change)
    app, _ = make_app(
        "echo" if behaviour == "slow" else behaviour, delay=2 if behaviour == "slow" else 0
    )
    runs = client_for(client, keys, settings)
    async with running_worker(settings, client, serving=app):
        handle = await runs.run("triage", "go", session_id="f1")
        result = await handle.result(timeout=20)
        after = await runs.run("triage", "next", session_id="f1")  # the conversation goes on
        assert (await after.result(timeout=20)).status in ("completed", "failed")
    assert result.status == status and error in (result.error or "")
    last = [e async for e in handle.events()][-1]
    assert last.type == "run.failed" and error in last.data["error"]


async def test_events_resume_after_a_disconnect_exactly_once(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    app, _ = make_app()
    runs = client_for(client, keys, agent_settings)
    async with running_worker(agent_settings, client, serving=app):
        handle = await runs.run(
            "triage", "a fairly long message to stream back", session_id="e", stream=True
        )
        first: list[RunEvent] = []
        async for event in handle.events():
            first.append(event)
            if len(first) == 3:
                break  # the app disconnects
        rest = [event async for event in handle.events(after=first[-1].id or "0-0")]
    everything = [event async for event in handle.events()]
    assert [e.id for e in first + rest] == [e.id for e in everything]
    assert len({e.id for e in everything}) == len(everything)
    assert everything[-1].type == "run.completed"


async def test_cancel_a_running_run(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    app, _ = make_app(delay=5)
    runs = client_for(client, keys, agent_settings)
    async with running_worker(agent_settings, client, serving=app):
        handle = await runs.run("triage", "slow one", session_id="x")
        async for event in handle.events():
            if event.type == "run.started":
                break
        assert await handle.cancel() is True
        result = await handle.result(timeout=5)
        assert result.status == "cancelled"
        assert await handle.cancel() is False  # already over
        follow = await runs.run("triage", "next", session_id="x")
        assert (await follow.result(timeout=10)).status == "completed"


async def test_rate_limited_model_is_retried_without_duplicating_history(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    app, model = make_app("rate_limited")
    runs = client_for(client, keys, agent_settings)
    async with running_worker(agent_settings, client, serving=app):
        result = await (await runs.run("triage", "retry me", session_id="r")).result(timeout=10)
    assert result.status == "completed" and len(model.calls) == 2
    session = AgentSession("r", client, keys=keys)
    assert texts(await session.get_items()) == ["user: retry me", "assistant: reply to retry me"]


async def test_run_without_a_worker_times_out_clearly(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    runs = client_for(client, keys, agent_settings)
    handle = await runs.run("nobody", "hello")
    with pytest.raises(TimeoutError, match="is a worker serving 'nobody'"):
        await handle.result(timeout=0.3)
    await anyio.lowlevel.checkpoint()


async def test_streamed_run_publishes_text_deltas(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    app, _ = make_app()
    runs = client_for(client, keys, agent_settings)
    async with running_worker(agent_settings, client, serving=app):
        handle = await runs.run("triage", "stream this please", session_id="s2", stream=True)
        result = await handle.result(timeout=10)
    assert result.final_output == "reply to stream this please"
    events = [event async for event in handle.events()]
    deltas = "".join(e.data["delta"] for e in events if e.type == "message.delta")
    assert deltas == "reply to stream this please"
    kinds = [e.type for e in events if e.type != "message.delta"]
    assert kinds == ["run.started", "agent.updated", "message", "run.completed"]


async def test_tool_and_handoff_events_and_coordination(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    """The demo app on the offline model: a handoff and a tool call, as run events and as
    lifecycle events on the coordination stream."""
    from workers.demo import app as demo_app

    runs = client_for(client, keys, agent_settings)
    watcher = AgentCoordinator(client=client, keys=keys, consumer_group="watch")
    await watcher.initialize()
    async with running_worker(agent_settings, client, serving=demo_app):
        handle = await runs.run("triage", "my invoice 1042 was charged twice", session_id="d1")
        result = await handle.result(timeout=20)
    assert result.status == "completed" and result.last_agent == "billing"
    events = [event async for event in handle.events()]
    kinds = [e.type for e in events]
    assert kinds[0] == "run.started" and kinds[-1] == "run.completed"
    assert {"type": "handoff", "data": {"from": "triage", "to": "billing"}} in [
        {"type": e.type, "data": e.data} for e in events
    ]
    called = [e.data for e in events if e.type == "tool.called"]
    assert called and called[0]["tool"] == "lookup_invoice"
    assert any("invoice 1042" in str(e.data.get("output")) for e in events)
    lifecycle = [e async for e in watcher.subscribe(timeout_ms=300, max_events=10)]
    seen = {(str(e.type), e.session_id) for e in lifecycle}
    assert ("agent_started", "d1") in seen and ("agent_completed", "d1") in seen
    assert ("handoff_ready", "d1") in seen
    completed = next(e for e in lifecycle if str(e.type) == "agent_completed")
    assert completed.data["agent_name"] == "billing" and completed.data["tokens_used"] > 0


async def test_run_timeout_is_not_cut_short_by_the_task_timeout(
    client: redis.asyncio.Redis, keys: Keys, redis_url: str
) -> None:
    settings = make_settings(
        redis_url,
        keys.prefix,
        **{"worker.task_timeout_seconds": "0.2", "runs.timeout_seconds": "5"},
    )
    app, _ = make_app(delay=0.5)
    runs = client_for(client, keys, settings)
    async with running_worker(settings, client, serving=app):
        result = await (await runs.run("triage", "slowish", session_id="t")).result(timeout=10)
    assert result.status == "completed"  # the run's own limit governs, not the core's 0.2 s


async def test_a_worker_killed_mid_run_leaves_no_trace_and_the_run_completes_once(
    client: redis.asyncio.Redis, keys: Keys, redis_url: str, agent_settings: Settings
) -> None:
    """SIGKILL while the model runs: the conversation holds nothing of the killed attempt,
    and the run, redelivered to another worker, adds its turn exactly once."""
    runs = client_for(client, keys, agent_settings)
    app, _ = make_app()
    async with running_worker(agent_settings, client, serving=app):
        assert (await (await runs.run("triage", "first", session_id="k")).result(10)).ok
    worker = worker_process("tests.agent_apps:slow_app", redis_url, keys, WORKER_LEASE_SECONDS="1")
    try:
        handle = await runs.run("triage", "second", session_id="k")
        await wait_until(running(handle), limit=20, what="the run to start in the worker process")
        worker.kill()
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    session = AgentSession("k", client, keys=keys)
    assert texts(await session.get_items()) == ["user: first", "assistant: reply to first"]
    async with running_worker(agent_settings, client, serving=app):
        result = await handle.result(timeout=30)  # reclaimed once its lease ran out
    assert result.status == "completed" and result.final_output == "reply to second"
    assert texts(await session.get_items()) == [
        "user: first",
        "assistant: reply to first",
        "user: second",
        "assistant: reply to second",
    ]
    record = await client.hget(keys.run(handle.run_id), "attempts")
    assert int(record or 0) == 2  # the killed attempt, then the one that completed


async def test_a_failed_run_leaves_the_conversation_as_it_was(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    ok, _ = make_app()
    broken, _ = make_app("raise")
    runs = client_for(client, keys, agent_settings)
    async with running_worker(agent_settings, client, serving=ok):
        assert (await (await runs.run("triage", "one", session_id="a")).result(10)).ok
    async with running_worker(agent_settings, client, serving=broken):
        failed = await (await runs.run("triage", "two", session_id="a")).result(10)
    assert failed.status == "failed" and "the model broke" in (failed.error or "")
    session = AgentSession("a", client, keys=keys)
    assert texts(await session.get_items()) == ["user: one", "assistant: reply to one"]


async def test_a_long_run_shows_running_and_its_events_before_it_ends(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    app, _ = make_app(delay=0.6)
    runs = client_for(client, keys, agent_settings)
    coordinator = AgentCoordinator(client=client, keys=keys)
    await coordinator.initialize()
    async with running_worker(agent_settings, client, serving=app):
        handle = await runs.run("triage", "take your time", session_id="l")
        await wait_until(running(handle), limit=5, what="the record to say running")
        early = [e.type async for e in handle.events(follow=False)]
        assert early == ["run.started", "agent.updated"]  # live, before the model answered
        info = await coordinator.get_stream_info()
        assert info["types"]["agent_started"]["length"] == 1
        assert info["types"]["agent_completed"]["length"] == 0
        result = await handle.result(timeout=10)
    assert result.ok
    kinds = [e.type async for e in handle.events()]
    assert kinds == ["run.started", "agent.updated", "message", "run.completed"]
    assert int(await client.hget(keys.run(handle.run_id), "attempts") or 0) == 1


async def test_a_run_whose_number_arrives_late_waits_for_it(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    """On Redis Cluster the entry may be read before the script that numbers the run (other
    slot) has run: the worker waits for the number, then keeps the conversation's order."""
    app, _ = make_app()
    runs = client_for(client, keys, agent_settings)
    request = RunRequest(
        run_id="late-1", agent="triage", input="late", session_id="n", submitted_at=time.time()
    )
    producer = Producer(client, keys=keys, settings=agent_settings)
    async with running_worker(agent_settings, client, serving=app):
        await producer.enqueue("triage", request, task_id=request.run_id)
        # read, put back for later (no number yet), read again: it was looked at twice
        await wait_until(lambda: _entries_read(client, keys, "triage", 2), what="two reads")
        assert await runs.handle("late-1").status() is None  # not run: no number yet
        async with client.pipeline(transaction=False) as pipe:
            SessionTurns(client, keys, lease_seconds=1).assign(pipe, "n", "late-1")
            await pipe.execute()
        result = await runs.handle("late-1").result(timeout=10)
    assert result.ok and result.final_output == "reply to late"


async def test_a_run_never_numbered_runs_unordered_after_a_while(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    """Its entry was added long ago by Redis's clock (its stream id says when: no client's
    or worker's clock decides it), and its number was never drawn (the submit failed
    half-way): it runs, keeping no order."""
    app, _ = make_app()
    runs = client_for(client, keys, agent_settings)
    seconds, _micro = await client.time()
    long_ago = int((seconds - ORPHAN_AFTER - 1) * 1000)
    request = RunRequest(run_id="lost-1", agent="triage", input="lost", session_id="u")
    producer = Producer(client, keys=keys, settings=agent_settings)
    _, raw = producer.build("triage", request, task_id=request.run_id)
    await client.xadd(keys.inbox("triage"), {"envelope": raw}, id=f"{long_ago}-0")
    async with running_worker(agent_settings, client, serving=app):
        result = await runs.handle("lost-1").result(timeout=10)
        again = await (await runs.run("triage", "after", session_id="u")).result(10)
    assert result.ok and again.ok
    session = AgentSession("u", client, keys=keys)
    assert texts(await session.get_items())[::2] == ["user: lost", "user: after"]


async def test_cancelling_a_run_that_waits_for_its_turn_ends_it_at_once(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    app, _ = make_app(delay=1.5)
    runs = client_for(client, keys, agent_settings)
    async with running_worker(agent_settings, client, serving=app):
        first = await runs.run("triage", "one", session_id="w")
        waiting = await runs.run("triage", "two", session_id="w")
        await wait_until(running(first), what="the first run running")
        assert await waiting.cancel() is True
        cancelled = await waiting.result(timeout=10)
        assert cancelled.status == "cancelled"
        done = await first.result(timeout=10)
        assert done.ok
        # ended at once, not once the run ahead of it had finished
        assert cancelled.finished_at is not None and done.finished_at is not None
        assert cancelled.finished_at < done.finished_at
        third = await (await runs.run("triage", "three", session_id="w")).result(10)
    assert third.ok
    session = AgentSession("w", client, keys=keys)
    assert texts(await session.get_items())[::2] == ["user: one", "user: three"]


async def test_run_and_wait_submits_and_waits_in_one_call(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    quick, _ = make_app()
    runs = client_for(client, keys, agent_settings)
    async with running_worker(agent_settings, client, serving=quick):
        result = await runs.run_and_wait("triage", "hi", session_id="rw", timeout=10)
        assert result.ok and result.final_output == "reply to hi"
        again = await runs.run_and_wait("triage", "again", session_id="rw", run_id="rw-2")
        assert again.ok and again.run_id == "rw-2"
        with pytest.raises(EnqueueError, match="exists already"):
            await runs.run_and_wait("triage", "again", run_id="rw-2")
    slow, _ = make_app(delay=1.3)  # longer than the first wait: the rest is waited for
    async with running_worker(agent_settings, client, serving=slow):
        late = await runs.run_and_wait("triage", "slowly", session_id="rw", timeout=10)
        assert late.ok and late.final_output == "reply to slowly"
        with pytest.raises(TimeoutError, match=r"did not end within 0\.2 s"):
            await runs.run_and_wait("triage", "too slow", timeout=0.2)
    session = AgentSession("rw", client, keys=keys)
    assert texts(await session.get_items())[::2] == ["user: hi", "user: again", "user: slowly"]


async def test_an_app_client_that_decodes_its_replies_works_alike(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings, redis_url: str
) -> None:
    """``decode_responses=True`` on the app's client changes nothing for its runs."""
    app, _ = make_app()
    decoded = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    runs = client_for(decoded, keys, agent_settings)
    try:
        async with running_worker(agent_settings, client, serving=app):
            first = await runs.run_and_wait("triage", "hi", session_id="decoded", timeout=10)
            handle = await runs.run("triage", "again", session_id="decoded")
            second = await handle.result(timeout=10)
            types = [event.type async for event in handle.events()]
            record = await handle.status()
    finally:
        await decoded.aclose()
    assert first.final_output == "reply to hi" and second.final_output == "reply to again"
    assert types == ["run.started", "agent.updated", "message", "run.completed"]
    assert record is not None and record.status == "completed"


async def test_a_submit_cut_off_by_a_connection_error_is_raised_not_sent_twice(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    quick, _ = make_app()
    runs = client_for(client, keys, agent_settings)
    await kill_next_connection(client)  # the connection the submit will take
    with pytest.raises(RedisConnectionError):
        await runs.run("triage", "once", session_id="cut", run_id="cut-1")
    async with running_worker(agent_settings, client, serving=quick):
        # it never reached Redis: the same id goes through, and runs once
        result = await runs.run_and_wait("triage", "once", session_id="cut", run_id="cut-1")
        assert result.ok and result.final_output == "reply to once"
        # the same submit once more is recognised: the run it went through as, not a new one
        again = await runs.run("triage", "once", session_id="cut", run_id="cut-1")
        assert (await again.result(timeout=5)).ok
        with pytest.raises(EnqueueError, match="exists already"):  # another run, same id
            await runs.run("triage", "something else", session_id="cut", run_id="cut-1")
    session = AgentSession("cut", client, keys=keys)
    assert texts(await session.get_items()) == ["user: once", "assistant: reply to once"]


async def _entries_read(client: redis.asyncio.Redis, keys: Keys, target: str, n: int) -> bool:
    groups = await client.xinfo_groups(keys.inbox(target))
    return bool(groups) and int(groups[0].get("entries-read") or 0) >= n


async def test_a_run_whose_entry_has_an_invalid_payload_ends_failed(
    client: redis.asyncio.Redis, keys: Keys, agent_settings: Settings
) -> None:
    """An entry with the run's id whose payload is not a run request (published by hand) is
    dead-lettered as invalid_payload; the run's record ends failed, so nobody waits for it
    and its conversation moves past it."""
    app, _ = make_app()
    runs = client_for(client, keys, agent_settings)
    handle = await runs.run("triage", "lost", session_id="bad")
    await client.delete(keys.inbox("triage"))  # its entry replaced by a broken one
    broken = {"v": 1, "id": handle.run_id, "target": "triage", "payload": {"agent": 5}}
    await client.xadd(keys.inbox("triage"), {"envelope": json.dumps(broken)})
    async with running_worker(agent_settings, client, serving=app):
        result = await handle.result(timeout=10)
        after = await (await runs.run("triage", "next", session_id="bad")).result(10)
    assert result.status == "failed" and result.error_type == "DeadLettered"
    assert "$.agent" in (result.error or "")  # the payload's own fault, named
    assert after.ok
