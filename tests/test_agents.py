"""Agent runs through workers, the real SDK Runner and real Redis: order, handoffs, failures,
events, cancellation, retries."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio

from runtime import Keys, Settings
from runtime.agents import AgentClient, RunEvent
from runtime.coordinator import AgentCoordinator, EventType
from runtime.sessions import AgentSession
from tests.agent_apps import make_app
from tests.conftest import make_settings
from tests.helpers import running_worker

pytestmark = pytest.mark.anyio


@pytest.fixture
def agent_settings(redis_url: str, keys: Keys) -> Settings:
    return make_settings(
        redis_url, keys.prefix, **{"worker.max_deliveries": "5", "runs.timeout_seconds": "10"}
    )


def client_for(redis_client: redis.asyncio.Redis, keys: Keys, settings: Settings) -> AgentClient:
    return AgentClient(redis_client, keys=keys, settings=settings)


def texts(items: list[dict[str, object]]) -> list[str]:
    out = []
    for item in items:
        content = item.get("content")
        if isinstance(content, list):
            content = " ".join(str(part.get("text", "")) for part in content)  # type: ignore[union-attr]
        out.append(f"{item.get('role')}: {content}")
    return out


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
        began = time.monotonic()
        result = await handle.result(timeout=20)
        after = await runs.run("triage", "next", session_id="f1")  # the conversation goes on
        assert (await after.result(timeout=20)).status in ("completed", "failed")
    assert result.status == status and error in (result.error or "")
    assert time.monotonic() - began < 10
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
