"""Entries the coordinator cannot decode are skipped, acked and logged; reading goes on.

A 1,000-level nested JSON entry made msgspec raise ``RecursionError``, which escaped
``subscribe()`` (issue 10, item 17). Every way an entry can fail to decode is tried here, on
the subscribe path and on the claim path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from runtime import Keys
from runtime.coordinator import AgentCoordinator, EventType

pytestmark = pytest.mark.anyio

GROUP = "workers"
DEPTH = 1_000


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


# name → the raw fields of one entry of the handoff_ready stream
BAD_ENTRIES: dict[str, dict[bytes, bytes]] = {
    "deep data": {
        b"event": (
            '{"type":"handoff_ready","session_id":"s","data":{"x":' + _deep(DEPTH) + "}}"
        ).encode()
    },
    "deep document": {b"event": _deep(DEPTH).encode()},
    "deep object": {b"event": ('{"a":' * DEPTH + "1" + "}" * DEPTH).encode()},
    "invalid json": {b"event": b'{"type": "handoff_ready", '},
    "no event field": {b"foo": b"bar"},
    "missing type": {b"event": json.dumps({"session_id": "s", "data": {}}).encode()},
    "non-utf8 value": {b"event": b'{"type":"handoff_ready","session_id":"\xff\xfe"}'},
    "non-utf8 field name": {b"\xff\xfe": b"x"},
    "non-utf8 bytes": {b"event": b"\xff\xfe\xfd"},
    "data not an object": {b"event": json.dumps({"type": "handoff_ready", "data": 3}).encode()},
}


@pytest.fixture
async def coordinator(client: redis.asyncio.Redis, keys: Keys) -> AsyncIterator[AgentCoordinator]:
    coordinator = AgentCoordinator(
        client=client, keys=keys, consumer_group=GROUP, consumer_name="a", continue_handoffs=False
    )
    await coordinator.initialize()
    yield coordinator
    await coordinator.close()


def _malformed_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [
        dict(getattr(r, "aw_fields", {}))
        for r in caplog.records
        if r.getMessage() == "coordinator.malformed"
    ]


async def test_subscribe_skips_acks_and_logs_every_undecodable_entry(
    coordinator: AgentCoordinator,
    client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="runtime.coordinator")
    stream = coordinator.streams[EventType.HANDOFF_READY]
    bad_ids = {}
    for name, fields in BAD_ENTRIES.items():
        bad_ids[(await client.xadd(stream, fields)).decode()] = name  # type: ignore[arg-type]
    good = await coordinator.publish_handoff_ready("a", "b", "s1", {"n": 1})

    events = [e async for e in coordinator.subscribe(["handoff_ready"], max_events=1)]

    assert [e.id for e in events] == [good]
    assert coordinator.malformed == len(BAD_ENTRIES)
    assert await coordinator.get_pending_count() == 0  # the bad ones were acked too
    logged = _malformed_records(caplog)
    assert {str(r["id"]) for r in logged} == set(bad_ids)
    for record in logged:
        assert record["stream"] == stream
        assert isinstance(record["reason"], str) and record["reason"]
    deep = next(r for r in logged if bad_ids[str(r["id"])] == "deep data")
    assert "deep" in str(deep["reason"]) or "nested" in str(deep["reason"])


async def test_claim_skips_and_acks_undecodable_entries(
    coordinator: AgentCoordinator, client: redis.asyncio.Redis, keys: Keys
) -> None:
    stream = coordinator.streams[EventType.HANDOFF_READY]
    for fields in BAD_ENTRIES.values():
        await client.xadd(stream, fields)  # type: ignore[arg-type]
    good = await coordinator.publish_handoff_ready("a", "b", "s1", {})
    # another consumer read them all and died: every entry is pending with it
    await client.xreadgroup(GROUP, "dead", {stream: ">"})
    claimed = await coordinator.claim_abandoned_messages(min_idle_ms=0)
    assert [e.id for e in claimed] == [good]
    assert coordinator.malformed == len(BAD_ENTRIES)
    assert await coordinator.get_pending_count() == 1  # only the good one, now ours
    await coordinator.ack(*claimed)
    assert await coordinator.get_pending_count() == 0


async def test_subscribe_goes_on_after_a_deep_entry_between_good_ones(
    coordinator: AgentCoordinator, client: redis.asyncio.Redis
) -> None:
    stream = coordinator.streams[EventType.STATE_CHANGED]
    first = await coordinator.publish_state_changed("s", {"n": 1})
    await client.xadd(stream, BAD_ENTRIES["deep data"])  # type: ignore[arg-type]
    await client.xadd(stream, BAD_ENTRIES["non-utf8 bytes"])  # type: ignore[arg-type]
    last = await coordinator.publish_state_changed("s", {"n": 2})
    events = [e async for e in coordinator.subscribe(max_events=2, timeout_ms=2000)]
    assert [e.id for e in events] == [first, last]
    assert [e.data["changes"]["n"] for e in events] == [1, 2]
    assert coordinator.malformed == 2
