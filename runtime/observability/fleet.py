"""The fleet: which supervisors run, their workers and the targets they serve.

Each supervisor publishes itself every ``observability.sample_interval_seconds`` (a
heartbeat); the dashboard and ``agents-worker status`` read the fleet back::

    member = FleetMember(
        instance="web-1:ab12", host="web-1", pid=4242, started_at=time.time(),
        http="127.0.0.1:8080", targets=["triage"], workers=[WorkerInfo("web-1:ab12:0", 4250,
        "ready", time.time(), 17, 81.5)], seen=time.time(),
    )
    await publish_member(client, keys, member, ttl=15)    # one round trip
    for member in await read_fleet(client, keys):          # members whose heartbeat is live
        print(member.instance, [w.state for w in member.workers])

Layout: ``keys.fleet_member(instance)`` is a hash (scalar fields as text, ``targets`` and
``workers`` as JSON) that expires *ttl* after the last heartbeat; ``keys.fleet()`` is a zset of
instances scored by their last heartbeat (unix seconds), so a reader finds the members without
SCAN. A member whose hash expired is gone (a killed supervisor disappears after its TTL); the
zset is trimmed of long-dead members by every heartbeat. ``keys.targets()`` is a zset of the
targets served, scored by when a supervisor last served them: the views pass it to
:func:`runtime.streams.stream_status` instead of scanning for inboxes. It is bounded by time:
every report drops the targets nobody served for :data:`TARGETS_FORGOTTEN_AFTER` (7 days), so
it holds the targets served within the last 7 days (a read returns at most 10,000 of them).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec
import redis.asyncio
from redis.typing import EncodableT, FieldT

from runtime.keys import Keys
from runtime.redis.connection import translate_errors

__all__ = [
    "TARGETS_FORGOTTEN_AFTER",
    "WORKER_STATES",
    "FleetMember",
    "WorkerInfo",
    "WorkerState",
    "publish_member",
    "read_fleet",
    "read_targets",
    "remove_member",
    "touch_targets",
]

WorkerState = Literal["starting", "ready", "busy", "paused", "draining", "stopped"]
WORKER_STATES: tuple[WorkerState, ...] = (
    "starting",
    "ready",
    "busy",
    "paused",
    "draining",
    "stopped",
)

SCHEMA = "1"
"""Version of a member's hash layout (field ``v``)."""
_MAX_MEMBERS = 1000
"""Most members a read looks at (newest heartbeats first): a bound, never reached in
practice."""
_MAX_TARGETS = 10_000
TARGETS_FORGOTTEN_AFTER = 7 * 24 * 3600.0
"""Seconds after which a target nobody serves leaves ``keys.targets()`` (its inbox and dead
letters stay: this only bounds the list of names)."""
_FORGET_AFTER = 600.0
"""A member whose last heartbeat is this much older than its TTL is dropped from the zset
(the margin allows for hosts whose clocks disagree)."""


class WorkerInfo(msgspec.Struct, frozen=True):
    """One worker process of a supervisor, as last sampled."""

    name: str
    """Its consumer name (``<host>:<instance>:<slot>``)."""
    pid: int | None
    state: WorkerState
    started_at: float | None
    """When the process was spawned (unix seconds); ``None`` while none runs in the slot."""
    runs: int
    """Entries (tasks and agent runs) it handled, as it last reported to its supervisor."""
    rss_mb: float | None
    """Its resident memory (MiB), ``None`` when it cannot be read."""


class FleetMember(msgspec.Struct, frozen=True):
    """One supervisor and its workers, as its last heartbeat said."""

    instance: str
    host: str
    pid: int
    started_at: float
    http: str | None
    """``host:port`` of its HTTP endpoints (probes, ``/metrics``, dashboard); ``None``: off."""
    targets: list[str]
    workers: list[WorkerInfo]
    seen: float
    """Its last heartbeat (unix seconds, the supervisor's clock)."""


_workers_json = msgspec.json.Decoder(list[WorkerInfo])
_targets_json = msgspec.json.Decoder(list[str])


async def publish_member(
    client: redis.asyncio.Redis, keys: Keys, member: FleetMember, ttl: float
) -> None:
    """Write *member*'s heartbeat (its hash, kept *ttl* seconds, and its score) in one round
    trip.

    Raises:
        runtime.errors.RedisError: Redis refused it or could not be reached.
    """
    key = keys.fleet_member(member.instance)
    fields: dict[FieldT, EncodableT] = {
        "v": SCHEMA,
        "instance": member.instance,
        "host": member.host,
        "pid": str(member.pid),
        "started_at": repr(member.started_at),
        "http": member.http or "",
        "targets": msgspec.json.encode(member.targets),
        "workers": msgspec.json.encode(member.workers),
        "seen": repr(member.seen),
    }
    with translate_errors("publish the supervisor's heartbeat"):
        async with client.pipeline(transaction=False) as pipe:
            pipe.delete(key)  # a field of an older layout must not linger
            pipe.hset(key, mapping=fields)
            pipe.pexpire(key, max(1, round(ttl * 1000)))
            pipe.zadd(keys.fleet(), {member.instance: member.seen})
            pipe.zremrangebyscore(keys.fleet(), "-inf", member.seen - ttl - _FORGET_AFTER)
            await pipe.execute()


async def remove_member(client: redis.asyncio.Redis, keys: Keys, instance: str) -> None:
    """Take *instance* out of the fleet at once (a supervisor that stops cleanly)."""
    with translate_errors("remove the supervisor from the fleet"):
        async with client.pipeline(transaction=False) as pipe:
            pipe.delete(keys.fleet_member(instance))
            pipe.zrem(keys.fleet(), instance)
            await pipe.execute()


async def read_fleet(client: redis.asyncio.Redis, keys: Keys) -> list[FleetMember]:
    """The supervisors whose heartbeat has not expired, sorted by instance name.

    Two round trips, bounded: the newest heartbeats of the zset, then their hashes.

    Raises:
        runtime.errors.RedisError: Redis refused it or could not be reached.
    """
    with translate_errors("read the fleet"):
        raw: list[Any] = await client.zrevrange(keys.fleet(), 0, _MAX_MEMBERS - 1)
        instances = [_text(item) for item in raw]
        if not instances:
            return []
        async with client.pipeline(transaction=False) as pipe:
            for instance in instances:
                pipe.hgetall(keys.fleet_member(instance))
            hashes = await pipe.execute()
    members = [_decode(h) for h in hashes if h]
    return sorted((m for m in members if m is not None), key=lambda m: m.instance)


async def touch_targets(
    client: redis.asyncio.Redis, keys: Keys, targets: list[str], *, now: float | None = None
) -> None:
    """Mark *targets* as served now (*now*: unix seconds), and forget those nobody served
    for :data:`TARGETS_FORGOTTEN_AFTER` before it, in one round trip."""
    if not targets:
        return
    at = time.time() if now is None else now
    with translate_errors("record the targets served"):
        async with client.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.targets(), dict.fromkeys(targets, at))
            pipe.zremrangebyscore(keys.targets(), "-inf", f"({at - TARGETS_FORGOTTEN_AFTER!r}")
            await pipe.execute()


async def read_targets(
    client: redis.asyncio.Redis, keys: Keys, *, since: float | None = None
) -> list[str]:
    """The targets served (by name); with *since* (unix seconds), those served since then."""
    with translate_errors("read the targets served"):
        raw: list[Any] = await client.zrangebyscore(
            keys.targets(), "-inf" if since is None else since, "+inf", 0, _MAX_TARGETS
        )
    return sorted(_text(item) for item in raw)


def _decode(raw: dict[bytes | str, bytes | str]) -> FleetMember | None:
    """A member's hash; ``None`` when it is not one this version can read."""
    fields = {_text(k): _text(v) for k, v in raw.items()}
    try:
        return FleetMember(
            instance=fields["instance"],
            host=fields["host"],
            pid=int(fields["pid"]),
            started_at=float(fields["started_at"]),
            http=fields.get("http") or None,
            targets=_targets_json.decode(fields["targets"]),
            workers=_workers_json.decode(fields["workers"]),
            seen=float(fields["seen"]),
        )
    except (KeyError, ValueError, msgspec.DecodeError):
        return None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
