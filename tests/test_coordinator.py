"""Coordination events on Redis Stack and on a plain Redis: delivery, filtering, recovery."""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import anyio
import pytest
import redis.asyncio

from runtime import Keys
from runtime.coordinator import (
    AgentCoordinator,
    CoordinationEvent,
    CoordinatorError,
    EventType,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

GROUP = "workers"
Make = Callable[..., AgentCoordinator]


@pytest.fixture
async def core(core_url: str, key_prefix: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(core_url)
    yield client
    async for key in client.scan_iter(match=f"{key_prefix}:*", count=1000):
        await client.unlink(key)
    await client.aclose()


@pytest.fixture
async def make(core: redis.asyncio.Redis, core_url: str, keys: Keys) -> AsyncIterator[Make]:
    """Builds coordinators on the test's server and prefix; closes them all afterwards."""
    made: list[AgentCoordinator] = []

    def factory(
        group: str | None = GROUP, consumer: str | None = None, *, own: bool = False, **kw: Any
    ) -> AgentCoordinator:
        kw.setdefault("continue_handoffs", False)  # the coordinator alone (no agent runs)
        coordinator = AgentCoordinator(
            core_url,
            "agent_events",
            group,
            consumer,
            client=None if own else core,
            keys=keys,
            **kw,
        )
        made.append(coordinator)
        return coordinator

    yield factory
    for coordinator in made:
        await coordinator.close()


async def collect(coordinator: AgentCoordinator, **kw: Any) -> list[CoordinationEvent]:
    return [event async for event in coordinator.subscribe(**kw)]


def ref(event: CoordinationEvent) -> tuple[EventType, str | None]:
    """What identifies an event: entry ids are unique within one type's stream only."""
    return event.type, event.id


async def publish_one(coordinator: AgentCoordinator, kind: EventType, n: int) -> str:
    """Publish one event of *kind* through its publish_* method."""
    session = f"s{n}"
    if kind is EventType.HANDOFF_READY:
        return await coordinator.publish_handoff_ready("a", "b", session, {"n": n})
    if kind is EventType.TOOL_RESULT:
        return await coordinator.publish_tool_result("search", session, {"n": n}, 1.5)
    if kind is EventType.STATE_CHANGED:
        return await coordinator.publish_state_changed(session, {"n": n})
    if kind is EventType.AGENT_STARTED:
        return await coordinator.publish_agent_started("a", session, f"in {n}")
    if kind is EventType.AGENT_COMPLETED:
        return await coordinator.publish_agent_completed("a", session, f"out {n}", 2.0, n)
    return await coordinator.publish_error(session, "Boom", f"failed {n}")


# --- publishing and reading --------------------------------------------------------------


async def test_every_publish_method_yields_a_typed_event(
    make: Make, core: redis.asyncio.Redis, keys: Keys
) -> None:
    coordinator = make(consumer="c1", own=True)
    before = time.time()
    ids = {
        EventType.HANDOFF_READY: await coordinator.publish_handoff_ready(
            "research", "writer", "s1", {"topic": "tides"}
        ),
        EventType.TOOL_RESULT: await coordinator.publish_tool_result(
            "search", "s1", ["r1", {"k": 2}], 12.5
        ),
        EventType.STATE_CHANGED: await coordinator.publish_state_changed("s2", {"step": 2}),
        EventType.AGENT_STARTED: await coordinator.publish_agent_started("writer", "s1", "draft"),
        EventType.AGENT_COMPLETED: await coordinator.publish_agent_completed(
            "writer", "s1", "done", 812.0, 640
        ),
        EventType.ERROR: await coordinator.publish_error("s3", "TimeoutError", "too slow"),
    }
    events = await collect(coordinator, max_events=6, timeout_ms=2000)
    by_type = {event.type: event for event in events}
    assert len(events) == 6
    assert set(by_type) == set(EventType)
    for kind, event in by_type.items():
        assert event.id == ids[kind]
        assert event.stream == keys.coordination("agent_events", kind.value)
        assert event.v == 1
        assert before <= event.timestamp <= time.time()
    assert by_type[EventType.HANDOFF_READY].data == {
        "from_agent": "research",
        "to_agent": "writer",
        "context": {"topic": "tides"},
    }
    assert by_type[EventType.HANDOFF_READY].session_id == "s1"
    assert by_type[EventType.TOOL_RESULT].data == {
        "tool_name": "search",
        "result": ["r1", {"k": 2}],
        "execution_time_ms": 12.5,
    }
    assert by_type[EventType.STATE_CHANGED].data == {"changes": {"step": 2}}
    assert by_type[EventType.STATE_CHANGED].session_id == "s2"
    assert by_type[EventType.AGENT_STARTED].data == {
        "agent_name": "writer",
        "input_summary": "draft",
    }
    assert by_type[EventType.AGENT_COMPLETED].data == {
        "agent_name": "writer",
        "output_summary": "done",
        "duration_ms": 812.0,
        "tokens_used": 640,
    }
    assert by_type[EventType.ERROR].data == {
        "error_type": "TimeoutError",
        "error_message": "too slow",
        "agent_name": None,
    }
    assert by_type[EventType.ERROR].session_id == "s3"
    assert await coordinator.get_pending_count() == 0
    # One stream per type, one JSON field per entry.
    raw = await core.xrange(keys.coordination("agent_events", "handoff_ready"))
    assert [entry_id.decode() for entry_id, _ in raw] == [ids[EventType.HANDOFF_READY]]
    assert set(raw[0][1]) == {b"event"}
    assert json.loads(raw[0][1][b"event"])["type"] == "handoff_ready"


async def test_dict_style_access_like_a_flat_event(make: Make) -> None:
    coordinator = make(consumer="c1")
    entry_id = await coordinator.publish_handoff_ready("a", "b", "s1", {"x": 1})
    [event] = await collect(coordinator, max_events=1)
    assert event["type"] == "handoff_ready" == EventType.HANDOFF_READY
    assert event["from_agent"] == "a"
    assert event["context"] == {"x": 1}
    assert event["session_id"] == "s1"
    assert event["_msg_id"] == event["id"] == entry_id
    assert event.get("tool_name") is None
    assert event.get("tool_name", "-") == "-"
    assert "to_agent" in event
    assert "tool_name" not in event
    with pytest.raises(KeyError):
        event["tool_name"]
    flat = event.to_dict()
    assert flat["type"] == "handoff_ready"
    assert flat["to_agent"] == "b"
    assert flat["id"] == entry_id
    assert set(event) == set(flat)


async def test_events_published_by_other_languages_are_read(
    make: Make, core: redis.asyncio.Redis, keys: Keys
) -> None:
    coordinator = make(consumer="c1")
    await coordinator.initialize()
    body = json.dumps({"type": "state_changed", "data": {"changes": {"a": 1}}, "extra": True})
    entry_id = (
        await core.xadd(keys.coordination("agent_events", "state_changed"), {"event": body})
    ).decode()
    [event] = await collect(coordinator, max_events=1)
    assert event.type is EventType.STATE_CHANGED
    assert event.data == {"changes": {"a": 1}}
    assert event.session_id is None
    assert event.id == entry_id
    assert event.timestamp == int(entry_id.split("-")[0]) / 1000  # from the entry id


async def test_given_client_is_left_open_own_client_is_closed(
    make: Make, core: redis.asyncio.Redis
) -> None:
    shared = make(consumer="c1")
    async with shared:
        await shared.publish_state_changed("s", {})
    assert await core.ping()
    own = make(consumer="c2", own=True)
    async with own:
        assert own.client is not core
        await own.publish_state_changed("s", {})
    pool = own.client.connection_pool
    assert pool._available_connections  # it was used…
    assert not any(c.is_connected for c in pool._available_connections)  # …and closed
    assert not pool._in_use_connections


# --- delivery within and across groups ---------------------------------------------------


async def test_filtered_and_unfiltered_subscribers_share_a_group_exactly_once(
    make: Make,
) -> None:
    publisher = make(group=None)
    filtered = make(consumer="filtered")
    everything = make(consumer="everything")
    await filtered.initialize()
    kinds = [EventType.HANDOFF_READY] * 100 + [
        k for k in EventType if k is not EventType.HANDOFF_READY
    ] * 30
    random.Random(7).shuffle(kinds)
    assert len(kinds) == 250
    published: set[tuple[EventType, str | None]] = set()
    got: dict[str, list[CoordinationEvent]] = {"filtered": [], "everything": []}

    async def publish_all() -> None:
        for n, kind in enumerate(kinds):
            published.add((kind, await publish_one(publisher, kind, n)))
            if n % 10 == 0:
                await anyio.sleep(0.002)

    async def consume(name: str, coordinator: AgentCoordinator, **kw: Any) -> None:
        async for event in coordinator.subscribe(timeout_ms=200, **kw):
            got[name].append(event)
            await anyio.sleep(0.001)  # some work per event

    async def total() -> bool:
        return sum(map(len, got.values())) >= 250

    async def settled() -> bool:
        return await everything.get_pending_count() == 0

    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(consume, "filtered", filtered, event_types=["handoff_ready"]))
        tg.start_soon(consume, "everything", everything)
        tg.start_soon(publish_all)
        await wait_until(total, limit=20, what="250 events delivered")
        await wait_until(settled, limit=5, what="every delivered event acked")
        tg.cancel_scope.cancel()

    delivered = [ref(e) for events in got.values() for e in events]
    assert len(delivered) == 250
    assert set(delivered) == published  # each one exactly once across the two
    assert got["filtered"], "the filtered subscriber got no handoff at all"
    assert all(e.type is EventType.HANDOFF_READY for e in got["filtered"])
    assert len([e for e in got["everything"] if e.type is not EventType.HANDOFF_READY]) == 150
    info = await everything.get_stream_info()
    assert info["pending"] == 0
    assert info["groups"] == [{"name": GROUP, "pending": 0, "lag": 0, "consumers": 2}]


async def test_max_events_stops_exactly_and_reads_no_more(make: Make) -> None:
    publisher = make(group=None)
    first = make(consumer="first")
    await first.initialize()
    kinds = list(EventType) * 50  # 300 mixed events
    ids: list[tuple[EventType, str | None]] = []

    async def publish_all() -> None:
        for n, kind in enumerate(kinds):
            ids.append((kind, await publish_one(publisher, kind, n)))
            if n % 25 == 0:
                await anyio.sleep(0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(publish_all)
        # an hour's timeout: only the count can end it within the test's time limit
        events = await collect(first, max_events=250, timeout_ms=3_600_000)
    assert len(events) == 250
    assert await first.get_pending_count() == 0
    info = await first.get_stream_info()
    assert info["groups"][0]["lag"] == 50  # the rest was never handed to "first"

    second = make(consumer="second")
    rest = await collect(second, max_events=50, timeout_ms=2000)
    assert len(rest) == 50
    assert sorted(map(ref, events + rest)) == sorted(ids)
    assert await collect(second, max_events=1, timeout_ms=100) == []


async def test_max_events_below_the_number_of_types_reads_no_extra(make: Make) -> None:
    # XREADGROUP's COUNT applies per stream: asking six streams for 4 could hand out 6.
    coordinator = make(consumer="a")
    await coordinator.initialize()
    ids = {(kind, await publish_one(coordinator, kind, n)) for n, kind in enumerate(EventType)}
    taken = await collect(coordinator, max_events=4, timeout_ms=1000)
    assert len(taken) == 4
    assert await coordinator.get_pending_count() == 0
    other = make(consumer="b")
    rest = await collect(other, max_events=10, timeout_ms=300)
    assert len(rest) == 2
    assert set(map(ref, taken + rest)) == ids


async def test_max_events_stops_after_timeout_when_nothing_arrives(make: Make) -> None:
    coordinator = make(consumer="a")
    await coordinator.publish_error("s", "E", "one")
    await coordinator.publish_error("s", "E", "two")
    events = await collect(coordinator, max_events=5, timeout_ms=300)
    assert [e.data["error_message"] for e in events] == ["one", "two"]


async def test_a_waiting_subscriber_wakes_on_a_new_event(make: Make) -> None:
    coordinator = make(consumer="a")
    await coordinator.initialize()
    publisher = make(group=None)
    async with anyio.create_task_group() as tg:

        async def later() -> None:
            await anyio.sleep(0.3)
            await publisher.publish_state_changed("s", {"late": True})

        tg.start_soon(later)
        # an hour's timeout: only the new event can end it within the test's time limit
        [event] = await collect(coordinator, max_events=1, timeout_ms=3_600_000)
    assert event.data == {"changes": {"late": True}}


async def test_every_group_gets_every_event(make: Make) -> None:
    publisher = make(group=None)
    kinds = list(EventType) * 10
    ids = [(kind, await publish_one(publisher, kind, n)) for n, kind in enumerate(kinds)]
    one = make(group="one", consumer="c")
    two = make(group="two", consumer="c")
    got_one = await collect(one, max_events=60, timeout_ms=2000)
    got_two = await collect(two, max_events=60, timeout_ms=2000)
    assert sorted(map(ref, got_one)) == sorted(ids)
    assert sorted(map(ref, got_two)) == sorted(ids)
    assert await one.get_pending_count() == 0
    assert await two.get_pending_count() == 0


# --- acks, crashes and recovery ----------------------------------------------------------


async def test_claim_abandoned_messages_keeps_ids_so_they_can_be_acked(make: Make) -> None:
    dead = make(consumer="dead", own=True)
    ids = [(kind, await publish_one(dead, kind, n)) for n, kind in enumerate(list(EventType)[:5])]
    taken = await collect(dead, max_events=5, timeout_ms=1000, auto_ack=False)
    assert len(taken) == 5
    await dead.close()  # the consumer dies without acking

    rescuer = make(consumer="rescuer")
    assert await rescuer.get_pending_count() == 5
    assert await rescuer.claim_abandoned_messages(min_idle_ms=60_000) == []  # not idle yet
    await anyio.sleep(0.15)
    claimed = await rescuer.claim_abandoned_messages(min_idle_ms=100)
    assert sorted(map(ref, claimed)) == sorted(ids)
    assert {ref(e): (e.stream, e.data) for e in claimed} == {
        ref(e): (e.stream, e.data) for e in taken
    }
    assert await rescuer.get_pending_count() == 5  # now the rescuer's
    assert await rescuer.ack(*claimed) == 5
    assert await rescuer.get_pending_count() == 0
    assert await rescuer.ack(claimed[0]) == 0  # acking twice is harmless


async def test_claim_acks_pending_entries_that_were_trimmed_away(make: Make) -> None:
    dead = make(consumer="dead")
    for n in range(3):
        await dead.publish_state_changed("s", {"n": n})
    assert len(await collect(dead, max_events=3, auto_ack=False)) == 3
    assert await dead.trim_stream(0, approximate=False) == 3
    assert await dead.get_pending_count() == 3  # dangling in the pending list
    rescuer = make(consumer="rescuer")
    assert await rescuer.claim_abandoned_messages(min_idle_ms=0) == []
    assert await rescuer.get_pending_count() == 0


async def test_manual_ack(make: Make) -> None:
    coordinator = make(consumer="a")
    await coordinator.publish_state_changed("s", {"n": 1})
    await coordinator.publish_error("s", "E", "m")
    events = await collect(coordinator, max_events=2, auto_ack=False)
    assert await coordinator.get_pending_count() == 2
    assert await coordinator.ack(events[0]) == 1
    assert await coordinator.get_pending_count() == 1
    assert await coordinator.ack(*events) == 1
    assert await coordinator.get_pending_count() == 0


async def test_leaving_the_loop_early_keeps_undelivered_events_for_the_next_call(
    make: Make,
) -> None:
    coordinator = make(consumer="a")
    for n in range(3):
        await coordinator.publish_state_changed("s", {"n": n})
    async with contextlib.aclosing(coordinator.subscribe()) as events:
        first = await anext(events)
    # The first was handed out and not acked (at-least-once); the two read with it stay
    # with this consumer and come first on the next call.
    assert await coordinator.get_pending_count() == 3
    rest = await collect(coordinator, max_events=2, timeout_ms=500)
    assert [e.data["changes"]["n"] for e in rest] == [1, 2]
    assert await coordinator.get_pending_count() == 1
    assert await coordinator.ack(first) == 1
    assert await coordinator.get_pending_count() == 0


async def test_an_error_in_the_loop_leaves_the_event_pending(make: Make) -> None:
    coordinator = make(consumer="a")
    await coordinator.publish_state_changed("s", {"n": 0})

    async def handle_one() -> None:
        async with contextlib.aclosing(coordinator.subscribe(max_events=1)) as events:
            async for _ in events:
                raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError, match="handler failed"):
        await handle_one()
    assert await coordinator.get_pending_count() == 1
    [claimed] = await make(consumer="b").claim_abandoned_messages(min_idle_ms=0)
    assert claimed.data == {"changes": {"n": 0}}


# --- bounded streams, malformed entries, info --------------------------------------------


async def test_streams_stay_bounded_and_trim(make: Make, core: redis.asyncio.Redis) -> None:
    coordinator = make(group=None, maxlen=100)
    kinds = list(EventType)
    for n in range(5000):
        await publish_one(coordinator, kinds[n % len(kinds)], n)
    lengths = [int(await core.xlen(key)) for key in coordinator.streams.values()]
    assert all(100 <= length <= 300 for length in lengths), lengths  # ~833 each without MAXLEN
    info = await coordinator.get_stream_info()
    assert info["length"] == sum(lengths)
    removed = await coordinator.trim_stream(10, approximate=False)
    assert removed == sum(lengths) - 60
    assert [int(await core.xlen(key)) for key in coordinator.streams.values()] == [10] * 6
    assert await coordinator.trim_stream(10) == 0


async def test_malformed_entries_are_acked_skipped_and_counted(
    make: Make, core: redis.asyncio.Redis, keys: Keys
) -> None:
    coordinator = make(consumer="a")
    await coordinator.initialize()
    stream = keys.coordination("agent_events", "handoff_ready")
    tool_result = {"type": "tool_result", "session_id": "s", "timestamp": 1.0, "data": {}}
    garbage: list[dict[str, str]] = [
        {"foo": "bar"},
        {"event": "not json"},
        {"event": json.dumps(tool_result)},  # another type in the handoff stream
        {"event": json.dumps({"v": 2, "type": "handoff_ready"})},
        {"event": json.dumps({"type": "nope"})},
        {"event": json.dumps({"type": "handoff_ready", "data": []})},
    ]
    for fields in garbage:
        await core.xadd(stream, fields)  # type: ignore[arg-type]
    good = await coordinator.publish_handoff_ready("a", "b", "s1", {})
    events = await collect(coordinator, event_types=["handoff_ready"], max_events=1)
    assert [e.id for e in events] == [good]
    assert coordinator.malformed == len(garbage)
    assert await coordinator.get_pending_count() == 0


async def test_stream_info_per_type_and_in_total(make: Make) -> None:
    coordinator = make(consumer="a")
    await coordinator.initialize()
    first = await coordinator.publish_handoff_ready("a", "b", "s", {})
    await coordinator.publish_handoff_ready("a", "c", "s", {})
    await anyio.sleep(0.005)  # ids of different type streams compare by time only
    last = await coordinator.publish_error("s", "E", "m")
    await collect(coordinator, event_types=["error"], max_events=1, auto_ack=False)
    info = await coordinator.get_stream_info()
    assert info["length"] == 3
    assert info["first_entry"] == first
    assert info["last_entry"] == last
    assert info["pending"] == 1
    assert info["groups"] == [{"name": GROUP, "pending": 1, "lag": 2, "consumers": 1}]
    handoffs = info["types"]["handoff_ready"]
    assert handoffs["length"] == 2
    assert handoffs["first_entry"] == first
    assert handoffs["groups"][0]["pending"] == 0
    assert handoffs["groups"][0]["lag"] == 2
    errors = info["types"]["error"]
    assert errors["groups"][0]["pending"] == 1
    assert errors["groups"][0]["last_delivered_id"] == last
    assert info["types"]["tool_result"]["length"] == 0
    assert info["types"]["tool_result"]["first_entry"] is None


async def test_stream_info_and_pending_count_before_anything_exists(make: Make) -> None:
    publisher = make(group=None)
    info = await publisher.get_stream_info()
    assert (info["length"], info["first_entry"], info["groups"], info["pending"]) == (
        0,
        None,
        [],
        0,
    )
    assert await publisher.get_pending_count() == 0


# --- handoff sink --------------------------------------------------------------------------


async def test_handoff_sink_result_is_published_as_run_id(make: Make) -> None:
    seen: list[CoordinationEvent] = []

    async def sink(event: CoordinationEvent) -> str | None:
        seen.append(event)
        return "run-42" if event.data["to_agent"] == "writer" else None

    coordinator = make(consumer="a", handoff_sink=sink)
    entry_id = await coordinator.publish_handoff_ready("research", "writer", "s1", {"k": 1})
    await coordinator.publish_handoff_ready("research", "critic", "s1", {})
    await coordinator.publish_state_changed("s1", {})  # not a handoff: no sink call
    events = await collect(coordinator, event_types=["handoff_ready"], max_events=2)
    assert [e.data.get("run_id") for e in events] == ["run-42", None]
    assert events[0].id == entry_id
    assert events[0].data["context"] == {"k": 1}
    assert len(seen) == 2
    assert seen[0].id is None
    assert "run_id" not in seen[0].data
    assert seen[0].session_id == "s1"
    assert seen[0].type is EventType.HANDOFF_READY


async def test_a_failing_handoff_sink_stops_the_publish(
    make: Make, core: redis.asyncio.Redis
) -> None:
    async def sink(event: CoordinationEvent) -> str | None:
        raise RuntimeError("queue down")

    coordinator = make(group=None, handoff_sink=sink)
    with pytest.raises(RuntimeError, match="queue down"):
        await coordinator.publish_handoff_ready("a", "b", "s", {})
    assert await core.xlen(coordinator.streams[EventType.HANDOFF_READY]) == 0


# --- misuse and setup ----------------------------------------------------------------------


async def test_subscribing_acking_claiming_need_a_group(make: Make) -> None:
    coordinator = make(group=None)
    assert coordinator.consumer_name is None
    with pytest.raises(CoordinatorError, match="consumer group"):
        await collect(coordinator, max_events=1)
    with pytest.raises(CoordinatorError, match="consumer group"):
        await coordinator.claim_abandoned_messages()
    event = CoordinationEvent(type=EventType.ERROR, data={}, session_id=None, timestamp=0.0)
    with pytest.raises(CoordinatorError, match="consumer group"):
        await coordinator.ack(event)


async def test_bad_arguments_are_refused(make: Make) -> None:
    coordinator = make(consumer="a")
    with pytest.raises(CoordinatorError, match="unknown event type 'handoff'"):
        await collect(coordinator, event_types=["handoff"], max_events=1)
    with pytest.raises(CoordinatorError, match="empty"):
        await collect(coordinator, event_types=[], max_events=1)
    unread = CoordinationEvent(type=EventType.ERROR, data={}, session_id=None, timestamp=0.0)
    with pytest.raises(CoordinatorError, match="read back"):
        await coordinator.ack(unread)
    foreign = CoordinationEvent(
        type=EventType.ERROR, data={}, session_id=None, timestamp=0.0, id="1-0", stream="x"
    )
    with pytest.raises(CoordinatorError, match="not one of"):
        await coordinator.ack(foreign)
    with pytest.raises(CoordinatorError, match="not JSON"):
        await coordinator.publish_tool_result("t", "s", object(), 1.0)
    with pytest.raises(CoordinatorError, match="maxlen"):
        make(maxlen=0)
    assert await collect(coordinator, max_events=0) == []


async def test_initialize_is_idempotent_and_groups_see_earlier_events(
    make: Make, core: redis.asyncio.Redis
) -> None:
    publisher = make(group=None)
    early = await publisher.publish_agent_started("a", "s", "before any group")
    coordinator = make(consumer="a")
    for _ in range(3):
        await coordinator.initialize()
    for key in coordinator.streams.values():
        groups = await core.xinfo_groups(key)
        assert [g["name"] for g in groups] == [GROUP.encode()]
    [event] = await collect(coordinator, max_events=1, timeout_ms=1000)
    assert event.id == early


async def test_deleted_streams_are_recreated_on_read(make: Make, core: redis.asyncio.Redis) -> None:
    coordinator = make(consumer="a")
    await coordinator.initialize()
    await core.delete(*coordinator.streams.values())
    entry_id = await coordinator.publish_state_changed("s", {"after": "delete"})
    [event] = await collect(coordinator, max_events=1, timeout_ms=1000)
    assert event.id == entry_id
