"""Consuming coordination events through a consumer group: subscribe, ack, claim.

Delivery is at-least-once and filtered on the server: a subscriber reads only the streams of
the types it asked for. An entry that cannot be read as an event (see
:func:`runtime.coordinator.events.decode`) is logged as ``coordinator.malformed`` with its
stream, id and reason, counted, acked (it can never be delivered meaningfully) and skipped.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import Any

import redis.exceptions

from runtime.coordinator.base import CoordinatorBase, log
from runtime.coordinator.events import CoordinationEvent, decode, id_key, text
from runtime.errors import CoordinatorError
from runtime.redis.connection import translate_errors

__all__ = ["Subscriber"]

_READ_BATCH = 100  # most entries one read takes when the caller set no smaller limit
_CLAIM_BATCH = 100

# KEYS: the type streams to read. ARGV: group, consumer, most entries in all.
# Reads new entries stream by stream until the limit, so a consumer is never handed more than
# it asked for (XREADGROUP's COUNT is per stream). → {1, {{stream, entries}, …}}; when there
# was nothing new: {0, {last delivered id of the group on each stream, …}} for XREAD to wait on.
_READ = """
local group, consumer, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out, got = {}, 0
for _, key in ipairs(KEYS) do
  if got >= limit then break end
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', limit - got,
                           'STREAMS', key, '>')
  if reply then
    out[#out + 1] = reply[1]
    got = got + #reply[1][2]
  end
end
if got > 0 then return {1, out} end
local ids = {}
for i, key in ipairs(KEYS) do
  ids[i] = '0-0'
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local fields = {}
    for j = 1, #info, 2 do fields[info[j]] = info[j + 1] end
    if fields['name'] == group then ids[i] = fields['last-delivered-id'] end
  end
end
return {0, ids}
"""


class Subscriber(CoordinatorBase):
    """The consuming half of :class:`~runtime.coordinator.AgentCoordinator`."""

    def _setup(self) -> None:
        super()._setup()
        self._read_script = self.client.register_script(_READ)
        self._rotation = 0
        # Entries read for a subscriber that stopped before it was handed them: already
        # delivered to this consumer (pending), so the next subscribe() hands them out first.
        self._backlog: list[CoordinationEvent] = []

    async def subscribe(
        self,
        event_types: Iterable[str] | None = None,
        timeout_ms: int = 5000,
        max_events: int | None = None,
        *,
        auto_ack: bool = True,
    ) -> AsyncGenerator[CoordinationEvent, None]:
        """Yield the group's events of *event_types* (every type when ``None``).

        Only the streams of the requested types are read, so events of other types stay for
        the group's other consumers. Each event is handed to one consumer of the group.
        Entries that are not events are skipped (see :attr:`malformed`).

        >>> async for event in coordinator.subscribe(  # doctest: +SKIP
        ...         [EventType.HANDOFF_READY], max_events=10):
        ...     await start(event.data["to_agent"], event.session_id)

        Args:
            event_types: :class:`EventType` members or their values.
            timeout_ms: With *max_events*: stop when no event arrived for this long. Without:
                only how long one blocking read waits (the loop keeps waiting).
            max_events: Stop after exactly this many events (never reads more than it
                yields, so nothing is left stranded with this consumer).
            auto_ack: Ack each event when the loop asks for the next one (or the loop ends
                normally): an event whose processing crashed stays pending, to be claimed.
                Breaking out of the loop leaves the current event pending too: ``await
                coordinator.ack(event)`` before ``break`` when it was handled. With
                ``auto_ack=False`` the caller acks every event with :meth:`ack`.

        Events come in batches of up to 100 (in entry id order). When the loop is left early,
        the rest of the batch, already delivered to this consumer, is handed out first by the
        next ``subscribe()`` of this coordinator; wrap the loop in
        :func:`contextlib.aclosing` so that happens at once rather than when the generator is
        garbage-collected.

        Raises:
            CoordinatorError: no consumer group, or an unknown event type.
        """
        self._require_group("subscribe")
        streams = self._streams_of(event_types)
        if timeout_ms < 1:
            raise CoordinatorError(f"timeout_ms must be at least 1, not {timeout_ms}")
        if max_events is not None and max_events < 0:
            raise CoordinatorError(f"max_events must be >= 0, not {max_events}")
        await self._ensure_initialized()
        delivered = 0
        while max_events is None or delivered < max_events:
            limit = _READ_BATCH if max_events is None else min(_READ_BATCH, max_events - delivered)
            batch = await self._next_batch(streams, limit, timeout_ms, until_stop=max_events)
            if batch is None:
                return
            for index, event in enumerate(batch):
                try:
                    yield event
                except BaseException:  # closed early (break, error in the loop body)
                    self._backlog.extend(batch[index + 1 :])  # handed out by the next call
                    raise
                if auto_ack:
                    await self.ack(event)
                delivered += 1

    async def _next_batch(
        self, streams: list[str], limit: int, timeout_ms: int, *, until_stop: int | None
    ) -> list[CoordinationEvent] | None:
        """At least one event, waiting as long as needed; ``None`` when *until_stop* is set
        and nothing arrived within *timeout_ms*."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            batch = self._take_backlog(streams, limit)
            if batch:
                return batch
            batch, waiting_on = await self._read(streams, limit)
            if batch:
                return batch
            if waiting_on is None:  # only malformed entries: read on
                continue
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                if until_stop is not None:
                    return None
                deadline, left_ms = time.monotonic() + timeout_ms / 1000, timeout_ms
            await self._wait(waiting_on, left_ms)

    def _take_backlog(self, streams: list[str], limit: int) -> list[CoordinationEvent]:
        if not self._backlog:
            return []
        taken: list[CoordinationEvent] = []
        kept: list[CoordinationEvent] = []
        for event in self._backlog:
            (taken if event.stream in streams and len(taken) < limit else kept).append(event)
        self._backlog = kept
        return taken

    async def _read(
        self, streams: list[str], limit: int
    ) -> tuple[list[CoordinationEvent], dict[str, str] | None]:
        """New entries for this consumer (at most *limit*, oldest first), or, when there are
        none, the group's last delivered id on each stream."""
        group, consumer = self._require_group("subscribe")
        self._rotation = (self._rotation + 1) % len(streams)  # no type starves the others
        order = streams[self._rotation :] + streams[: self._rotation]
        with translate_errors("read coordination events", self._url):
            try:
                reply = await self._read_script(keys=order, args=[group, consumer, limit])
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._create_groups(group)  # the streams were deleted: start over
                reply = await self._read_script(keys=order, args=[group, consumer, limit])
        if int(reply[0]) == 0:
            return [], {key: text(last) for key, last in zip(order, reply[1], strict=True)}
        events: list[CoordinationEvent] = []
        bad: list[tuple[str, str]] = []
        for raw_key, entries in reply[1]:
            key = text(raw_key)
            for raw_id, flat in entries:
                entry_id = text(raw_id)
                event = self._decode(key, entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))
                if event is None:
                    bad.append((key, entry_id))
                else:
                    events.append(event)
        if bad:
            await self._ack_ids(group, bad)
        events.sort(key=lambda e: id_key(e.id or "0-0"))
        return events, None

    async def _wait(self, last_ids: dict[str, str], block_ms: int) -> None:
        """Block until one of the streams has an entry past the group's last delivered id."""
        socket_timeout = self.client.connection_pool.connection_kwargs.get("socket_timeout")
        if socket_timeout:  # never block past the client's read timeout
            block_ms = min(block_ms, max(1, int(socket_timeout * 800)))
        with translate_errors("wait for coordination events", self._url):
            wake: dict[Any, Any] = dict(last_ids)  # XREAD: the entries themselves are not used
            await self.client.xread(wake, count=1, block=max(1, block_ms))

    def _decode(
        self, key: str, entry_id: str, fields: Mapping[Any, Any]
    ) -> CoordinationEvent | None:
        """The event of one entry, or ``None`` (logged and counted) when it is malformed."""
        found = decode(key, entry_id, fields, self._types_by_stream.get(key))
        if isinstance(found, CoordinationEvent):
            return found
        self.malformed += 1
        log.warning("coordinator.malformed", stream=key, id=entry_id, reason=found)
        return None

    async def ack(self, *events: CoordinationEvent) -> int:
        """Acknowledge events read or claimed by this group; return how many were pending.

        >>> async for event in coordinator.subscribe(auto_ack=False):  # doctest: +SKIP
        ...     await handle(event)
        ...     await coordinator.ack(event)

        Raises:
            CoordinatorError: no consumer group, or an event without ``id``/``stream`` or from
                another coordination stream.
        """
        group, _ = self._require_group("ack")
        targets: list[tuple[str, str]] = []
        for event in events:
            if event.id is None or event.stream is None:
                raise CoordinatorError(
                    "only events read back from Redis (with id and stream) can be acked"
                )
            if event.stream not in self._types_by_stream:
                raise CoordinatorError(
                    f"event {event.id} is from {event.stream!r}, not one of this coordinator's "
                    "streams"
                )
            targets.append((event.stream, event.id))
        return await self._ack_ids(group, targets)

    async def _ack_ids(self, group: str, targets: list[tuple[str, str]]) -> int:
        if not targets:
            return 0
        by_stream: dict[str, list[str]] = {}
        for key, entry_id in targets:
            by_stream.setdefault(key, []).append(entry_id)
        with translate_errors("ack coordination events", self._url):
            if len(by_stream) == 1:
                [(key, ids)] = by_stream.items()
                return int(await self.client.xack(key, group, *ids))
            async with self.client.pipeline(transaction=False) as pipe:
                for key, ids in by_stream.items():
                    pipe.xack(key, group, *ids)
                return sum(int(n) for n in await pipe.execute())

    async def claim_abandoned_messages(self, min_idle_ms: int = 300_000) -> list[CoordinationEvent]:
        """Take over the group's events pending with any consumer for at least *min_idle_ms*.

        Walks every type stream's pending list to its end (XAUTOCLAIM). The events returned
        now belong to this consumer and keep their ids: process them, then :meth:`ack` them.
        Pending entries whose stream entry was trimmed away are acked and dropped; malformed
        ones are acked and counted in :attr:`malformed`.

        >>> for event in await coordinator.claim_abandoned_messages(60_000):  # doctest: +SKIP
        ...     await handle(event)
        ...     await coordinator.ack(event)
        """
        group, consumer = self._require_group("claim_abandoned_messages")
        await self._ensure_initialized()
        claimed: list[CoordinationEvent] = []
        for key in self.streams.values():
            claimed.extend(await self._claim_stream(key, group, consumer, min_idle_ms))
        if claimed:
            log.info("coordinator.claimed", stream=self.stream_name, events=len(claimed))
        return claimed

    async def _claim_stream(
        self, key: str, group: str, consumer: str, min_idle_ms: int
    ) -> list[CoordinationEvent]:
        events: list[CoordinationEvent] = []
        cursor = "0-0"
        while True:
            with translate_errors("claim abandoned coordination events", self._url):
                try:
                    reply = await self.client.xautoclaim(
                        key, group, consumer, min_idle_ms, start_id=cursor, count=_CLAIM_BATCH
                    )
                except redis.exceptions.ResponseError as exc:
                    if "NOGROUP" in str(exc):  # the stream is gone: nothing is pending
                        return events
                    raise
            cursor = text(reply[0])
            dropped = [(key, text(i)) for i in (reply[2] if len(reply) > 2 else [])]
            for raw_id, fields in reply[1]:
                if not fields:  # deleted while pending (Redis 6.2 reports it this way)
                    dropped.append((key, text(raw_id)))
                    continue
                event = self._decode(key, text(raw_id), fields)
                if event is None:
                    dropped.append((key, text(raw_id)))
                else:
                    events.append(event)
            await self._ack_ids(group, dropped)
            if cursor == "0-0":
                return events
