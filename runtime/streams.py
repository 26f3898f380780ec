"""What the inbox streams hold: length, groups, lag, pending, consumers, dead letters.

for stream in await stream_status(client, keys):
    print(stream.target, stream.length, stream.pending, stream.dlq)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio

from runtime.keys import Keys
from runtime.redis.connection import translate_errors

__all__ = ["ConsumerStatus", "GroupStatus", "StreamStatus", "find_targets", "stream_status"]


@dataclass(frozen=True)
class ConsumerStatus:
    name: str
    pending: int
    idle_s: float


@dataclass(frozen=True)
class GroupStatus:
    name: str
    lag: int | None
    """Entries not yet delivered to the group (``None`` when Redis cannot tell)."""
    pending: int
    """Entries delivered and not yet acked."""
    consumers: list[ConsumerStatus] = field(default_factory=list)


@dataclass(frozen=True)
class StreamStatus:
    target: str
    key: str
    length: int
    groups: list[GroupStatus]
    oldest_pending_age_s: float | None
    """Age (since enqueue) of the oldest entry delivered and not yet acked."""
    delayed: int
    """Entries waiting in the delayed set (retries, delayed enqueues)."""
    dlq: int

    @property
    def pending(self) -> int:
        return sum(group.pending for group in self.groups)

    @property
    def lag(self) -> int | None:
        lags = [group.lag for group in self.groups]
        return None if not lags or None in lags else sum(lag for lag in lags if lag is not None)


async def find_targets(client: redis.asyncio.Redis, keys: Keys) -> list[str]:
    """Targets that have an inbox stream (found with SCAN, never KEYS)."""
    prefix = f"{keys.prefix}:{{inbox:"
    found = set()
    with translate_errors("list the inbox streams"):
        async for raw in client.scan_iter(match=f"{prefix}*}}", count=1000, _type="stream"):
            key = raw.decode() if isinstance(raw, bytes) else raw
            found.add(key[len(prefix) : -1])
    return sorted(found)


async def stream_status(
    client: redis.asyncio.Redis, keys: Keys, targets: list[str] | None = None
) -> list[StreamStatus]:
    """The status of each target's inbox (every target found when *targets* is ``None``)."""
    if targets is None:
        targets = await find_targets(client, keys)
    return [await _one(client, keys, target) for target in targets]


async def _one(client: redis.asyncio.Redis, keys: Keys, target: str) -> StreamStatus:
    key = keys.inbox(target)
    with translate_errors(f"read the status of {key}"):
        length = int(await client.xlen(key))
        groups_raw: Any = (
            await client.xinfo_groups(key) if length or await client.exists(key) else []
        )
        groups = [await _group(client, key, info) for info in groups_raw]
        oldest = await _oldest_pending_age(client, key, groups)
        delayed = int(await client.zcard(keys.delayed(target)))
        dlq = int(await client.xlen(keys.dlq(target)))
    return StreamStatus(target, key, length, groups, oldest, delayed, dlq)


async def _group(client: redis.asyncio.Redis, key: str, info: dict[str, Any]) -> GroupStatus:
    name = _text(info["name"])
    consumers_raw: Any = await client.xinfo_consumers(key, name)
    consumers = [
        ConsumerStatus(_text(c["name"]), int(c["pending"]), int(c["idle"]) / 1000)
        for c in consumers_raw
    ]
    lag = info.get("lag")
    return GroupStatus(name, None if lag is None else int(lag), int(info["pending"]), consumers)


async def _oldest_pending_age(
    client: redis.asyncio.Redis, key: str, groups: list[GroupStatus]
) -> float | None:
    oldest: float | None = None
    for group in groups:
        if not group.pending:
            continue
        summary: Any = await client.xpending(key, group.name)
        first = summary.get("min")
        if first:
            enqueued_ms = int(_text(first).split("-", 1)[0])
            age = max(0.0, time.time() - enqueued_ms / 1000)
            oldest = age if oldest is None else max(oldest, age)
    return oldest


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
