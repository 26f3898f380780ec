"""Coordination events between agents: handoffs, tool results, state changes, lifecycle.

    async with AgentCoordinator(url, consumer_group="planners") as coordinator:
        await coordinator.publish_handoff_ready("research", "writer", "sess-1", {"topic": "x"})
        async for event in coordinator.subscribe([EventType.HANDOFF_READY]):
            print(event.data["to_agent"], event.session_id)

Each event type has a stream of its own, ``<prefix>:{coord:<stream name>}:<event type>``; the
types of one coordination stream share a Redis Cluster hash tag, so one read covers several of
them on a cluster too. An entry has one field, ``event``, holding a JSON object
(:class:`CoordinationEvent` without ``id`` and ``stream``), so any language can publish::

    XADD 'aw:{coord:agent_events}:state_changed' MAXLEN '~' 10000 '*' event \
      '{"v":1,"type":"state_changed","session_id":"s1","timestamp":1700000000.0,
        "data":{"changes":{"step":2}}}'

Delivery through a consumer group is at-least-once and filtered on the server: a subscriber
reads only the streams of the types it asked for, so it is never handed (and never acks) an
event of another type. Every consumer group sees every event (fan-out); the consumers of one
group share them (each event goes to one of them). An event handed out and not acked stays
pending and can be taken over with :meth:`AgentCoordinator.claim_abandoned_messages`.

Streams are bounded: every publish trims its stream to about ``maxlen`` entries.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator
from enum import StrEnum
from types import TracebackType
from typing import Any

import msgspec
import redis.asyncio
import redis.exceptions

from runtime.errors import CoordinatorError
from runtime.keys import Keys
from runtime.log import get_logger
from runtime.redis.connection import translate_errors
from runtime.settings.model import Settings

__all__ = [
    "EVENT_FIELD",
    "AgentCoordinator",
    "CoordinationEvent",
    "CoordinatorError",
    "EventType",
    "HandoffSink",
]

log = get_logger(__name__)

SCHEMA_VERSION = 1
EVENT_FIELD = "event"
"""The one field of a coordination stream entry; it holds the event as JSON."""

_READ_BATCH = 100  # most entries one read takes when the caller set no smaller limit
_CLAIM_BATCH = 100


class EventType(StrEnum):
    """The kinds of coordination event; each one has a stream of its own.

    >>> EventType("handoff_ready") is EventType.HANDOFF_READY
    True
    """

    HANDOFF_READY = "handoff_ready"
    TOOL_RESULT = "tool_result"
    STATE_CHANGED = "state_changed"
    AGENT_STARTED = "agent_started"
    AGENT_COMPLETED = "agent_completed"
    ERROR = "error"


_TOP_LEVEL = ("type", "session_id", "timestamp", "v", "id", "stream", "data")


class CoordinationEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One coordination event, as published and as read back.

    The fields of the event itself (``from_agent``, ``to_agent``, ``tool_name``, ``result``…)
    are in :attr:`data`. Dict-style access looks at the top-level fields first, then in
    ``data``:

    >>> event = CoordinationEvent(
    ...     type=EventType.HANDOFF_READY, data={"to_agent": "writer"}, session_id="s1",
    ...     timestamp=0.0)
    >>> event.data["to_agent"], event["to_agent"], event["type"] == "handoff_ready"
    ('writer', 'writer', True)
    >>> event.get("missing", "-")
    '-'
    """

    type: EventType
    data: dict[str, Any]
    """The event's own fields (free-form JSON object)."""
    session_id: str | None
    timestamp: float
    """Unix time of the publish."""
    v: int = SCHEMA_VERSION
    """Schema version of the wire format."""
    id: str | None = None
    """Stream entry id; set on events read back (needed to ack). Each type has a stream of
    its own, so an id is unique within one type only: ``(type, id)`` identifies an event."""
    stream: str | None = None
    """The stream (Redis key) the event was read from; set on events read back."""

    def __getitem__(self, key: str) -> Any:
        if key in _TOP_LEVEL:
            return getattr(self, key)
        if key == "_msg_id":
            return self.id
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``event[key]``, or *default* when the event has no such field."""
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return key in _TOP_LEVEL or key in self.data

    def keys(self) -> list[str]:
        """The names dict-style access knows: the top-level fields, then those of ``data``."""
        return list(_TOP_LEVEL[:-1]) + [k for k in self.data if k not in _TOP_LEVEL]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def to_dict(self) -> dict[str, Any]:
        """A flat dict: the fields of ``data`` plus ``type`` (its string value), ``session_id``,
        ``timestamp``, ``v``, ``id`` and ``stream``."""
        flat = dict(self.data)
        flat.update(
            type=self.type.value,
            session_id=self.session_id,
            timestamp=self.timestamp,
            v=self.v,
            id=self.id,
            stream=self.stream,
        )
        return flat


class _Wire(msgspec.Struct, frozen=True, kw_only=True):
    """What the ``event`` field holds. Unknown fields are ignored (newer publishers)."""

    v: int = SCHEMA_VERSION
    type: EventType
    session_id: str | None = None
    timestamp: float = 0.0
    data: dict[str, Any] = msgspec.field(default_factory=dict)


HandoffSink = Callable[[CoordinationEvent], Awaitable[str | None]]
"""Called with a handoff event before it is published; what it returns becomes ``run_id``."""

_encoder = msgspec.json.Encoder()
_wire_decoder = msgspec.json.Decoder(_Wire)

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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class AgentCoordinator:
    """Publish and subscribe to coordination events between distributed agents.

    Publishing needs no consumer group; subscribing, acking and claiming do.

    >>> async with AgentCoordinator(  # doctest: +SKIP
    ...     "redis://localhost:6379", consumer_group="workers", consumer_name="w1"
    ... ) as coordinator:
    ...     await coordinator.publish_handoff_ready(
    ...         from_agent="research", to_agent="analysis", session_id="sess_123",
    ...         context={"data": "value"})
    ...     async for event in coordinator.subscribe(max_events=1):
    ...         print(event.type, event["to_agent"], event.id)

    Args:
        redis_url: Used only when no *client* is given: the coordinator then opens a client
            of its own and closes it in :meth:`close`.
        stream_name: Name of the coordination stream (one Redis stream per event type).
        consumer_group: Consumer group for subscribing; every group sees every event.
        consumer_name: This consumer within the group (default: host, pid and a random part).
        client: A client to use; it is never closed by the coordinator.
        keys: Key builder of the deployment (default ``Keys("aw")``).
        maxlen: Each type stream is trimmed to about this many entries on publish.
        handoff_sink: Awaited with each handoff event before it is published; a string it
            returns (e.g. the id of the run it enqueued for the target agent) is published as
            ``data["run_id"]``. An exception it raises stops the publish. Without one, a
            published handoff enqueues a run of the target agent that continues the
            conversation (:meth:`runtime.agents.AgentClient.handoff`), unless
            *continue_handoffs* is false (workers announcing in-run handoffs set it so).
        continue_handoffs: See *handoff_sink*.
        settings: Settings of the runs it enqueues (run retention, entry size); defaults.

    Attributes:
        malformed: Entries of the coordination streams that could not be read as an event
            (no ``event`` field, invalid JSON, unknown type, another schema version, a type
            other than its stream's). They are logged, acked (they can never be delivered
            meaningfully) and skipped, and counted here.
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379",
        stream_name: str = "agent_events",
        consumer_group: str | None = None,
        consumer_name: str | None = None,
        *,
        client: redis.asyncio.Redis | None = None,
        keys: Keys | None = None,
        maxlen: int = 10_000,
        handoff_sink: HandoffSink | None = None,
        continue_handoffs: bool = True,
        settings: Settings | None = None,
    ) -> None:
        if maxlen < 1:
            raise CoordinatorError(f"maxlen must be at least 1, not {maxlen}")
        if consumer_group is not None and not consumer_group:
            raise CoordinatorError("consumer_group must not be empty")
        self.keys = keys if keys is not None else Keys("aw")
        self.stream_name = stream_name
        self.streams: dict[EventType, str] = {
            t: self.keys.coordination(stream_name, t.value) for t in EventType
        }
        """The Redis key of each event type's stream."""
        self.consumer_group = consumer_group
        self.consumer_name = consumer_name or (
            f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
            if consumer_group
            else None
        )
        self.maxlen = maxlen
        self.handoff_sink = handoff_sink
        if handoff_sink is None and continue_handoffs:
            self.handoff_sink = self._continue_handoff
        self._settings = settings
        self.malformed = 0
        self._owns_client = client is None
        self._url = redis_url if client is None else None
        self.client = client if client is not None else redis.asyncio.Redis.from_url(redis_url)
        self._types_by_stream = {key: t for t, key in self.streams.items()}
        self._read_script = self.client.register_script(_READ)
        self._initialized = False
        self._rotation = 0
        # Entries read for a subscriber that stopped before it was handed them: already
        # delivered to this consumer (pending), so the next subscribe() hands them out first.
        self._backlog: list[CoordinationEvent] = []

    # --- lifecycle ----------------------------------------------------------------------
    async def initialize(self) -> None:
        """Create the consumer group on every type stream (from the start, creating the
        streams); does nothing without a group. Safe to call again: existing groups stay."""
        if self.consumer_group is not None:
            await self._create_groups(self.consumer_group)
        self._initialized = True

    async def _create_groups(self, group: str) -> None:
        with translate_errors("create the coordination consumer groups", self._url):
            async with self.client.pipeline(transaction=False) as pipe:
                for key in self.streams.values():
                    pipe.xgroup_create(key, group, id="0", mkstream=True)
                replies = await pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                    raise reply
        log.debug("coordinator.groups_ready", stream=self.stream_name, group=group)

    async def _ensure_initialized(self) -> None:
        if not self._initialized:
            await self.initialize()

    async def close(self) -> None:
        """Close the client the coordinator opened itself (a given client is left open)."""
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> AgentCoordinator:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- publishing ---------------------------------------------------------------------
    async def publish(self, event: CoordinationEvent) -> str:
        """Add *event* to its type's stream (trimmed to about ``maxlen``); return the entry id.

        >>> await coordinator.publish(CoordinationEvent(  # doctest: +SKIP
        ...     type=EventType.STATE_CHANGED, data={"changes": {"step": 2}},
        ...     session_id="s1", timestamp=time.time()))
        '1700000000000-0'
        """
        key, body = self.entry(event)
        with translate_errors(f"publish a {event.type.value} event", self._url):
            entry_id = await self.client.xadd(
                key, {EVENT_FIELD: body}, maxlen=self.maxlen, approximate=True
            )
        return _text(entry_id)

    def entry(self, event: CoordinationEvent) -> tuple[str, bytes]:
        """The stream key and ``event`` field value that publishing *event* writes.

        For callers that add the XADD to a pipeline of their own (one round trip for several
        writes): ``pipe.xadd(key, {EVENT_FIELD: body}, maxlen=coordinator.maxlen,
        approximate=True)``.
        """
        wire = _Wire(
            v=event.v,
            type=event.type,
            session_id=event.session_id,
            timestamp=event.timestamp,
            data=event.data,
        )
        try:
            body = _encoder.encode(wire)
        except (TypeError, msgspec.EncodeError) as exc:
            raise CoordinatorError(f"{event.type.value} event data is not JSON: {exc}") from None
        return self.streams[event.type], body

    async def _publish(self, kind: EventType, session_id: str | None, **data: Any) -> str:
        event = CoordinationEvent(
            type=kind, data=data, session_id=session_id, timestamp=time.time()
        )
        return await self.publish(event)

    async def publish_handoff_ready(
        self, from_agent: str, to_agent: str, session_id: str, context: dict[str, Any]
    ) -> str:
        """Tell *to_agent* that *from_agent* handed the session over; return the entry id.

        With a ``handoff_sink`` the sink is awaited first and what it returns is published as
        ``data["run_id"]``.

        >>> await coordinator.publish_handoff_ready(  # doctest: +SKIP
        ...     "research", "writer", "sess-1", {"notes": "…"})
        """
        event = CoordinationEvent(
            type=EventType.HANDOFF_READY,
            data={"from_agent": from_agent, "to_agent": to_agent, "context": context},
            session_id=session_id,
            timestamp=time.time(),
        )
        if self.handoff_sink is not None:
            run_id = await self.handoff_sink(event)
            if run_id is not None:
                event = msgspec.structs.replace(event, data={**event.data, "run_id": run_id})
        return await self.publish(event)

    async def _continue_handoff(self, event: CoordinationEvent) -> str:
        """Enqueue the run of the target agent that continues the conversation."""
        from runtime.agents.client import AgentClient  # the agents build on this module

        settings = self._settings or Settings()
        settings = msgspec.structs.replace(
            settings, redis=msgspec.structs.replace(settings.redis, key_prefix=self.keys.prefix)
        )
        client = AgentClient(self.client, keys=self.keys, settings=settings)
        context = event.data.get("context")
        handle = await client.handoff(
            str(event.data["to_agent"]),
            session_id=str(event.session_id),
            from_agent=str(event.data["from_agent"]),
            context=context if isinstance(context, dict) else {},
        )
        return handle.run_id

    async def publish_tool_result(
        self, tool_name: str, session_id: str, result: Any, execution_time_ms: float
    ) -> str:
        """Broadcast that *tool_name* finished with *result* (any JSON value).

        >>> await coordinator.publish_tool_result(  # doctest: +SKIP
        ...     "search", "sess-1", result=["a", "b"], execution_time_ms=12.5)
        """
        return await self._publish(
            EventType.TOOL_RESULT,
            session_id,
            tool_name=tool_name,
            result=result,
            execution_time_ms=execution_time_ms,
        )

    async def publish_state_changed(self, session_id: str, changes: dict[str, Any]) -> str:
        """Announce changed session state.

        >>> await coordinator.publish_state_changed("sess-1", {"step": 2})  # doctest: +SKIP
        """
        return await self._publish(EventType.STATE_CHANGED, session_id, changes=changes)

    async def publish_agent_started(
        self, agent_name: str, session_id: str, input_summary: str
    ) -> str:
        """Announce that *agent_name* started on the session.

        >>> await coordinator.publish_agent_started("writer", "sess-1", "draft")  # doctest: +SKIP
        """
        return await self._publish(
            EventType.AGENT_STARTED,
            session_id,
            agent_name=agent_name,
            input_summary=input_summary,
        )

    async def publish_agent_completed(
        self,
        agent_name: str,
        session_id: str,
        output_summary: str,
        duration_ms: float,
        tokens_used: int,
    ) -> str:
        """Announce that *agent_name* finished.

        >>> await coordinator.publish_agent_completed(  # doctest: +SKIP
        ...     "writer", "sess-1", "done", duration_ms=812.0, tokens_used=640)
        """
        return await self._publish(
            EventType.AGENT_COMPLETED,
            session_id,
            agent_name=agent_name,
            output_summary=output_summary,
            duration_ms=duration_ms,
            tokens_used=tokens_used,
        )

    async def publish_error(
        self,
        session_id: str,
        error_type: str,
        error_message: str,
        agent_name: str | None = None,
    ) -> str:
        """Publish an error of the session (``agent_name`` is null when not agent-specific).

        >>> await coordinator.publish_error(  # doctest: +SKIP
        ...     "sess-1", "TimeoutError", "model call timed out", agent_name="writer")
        """
        return await self._publish(
            EventType.ERROR,
            session_id,
            error_type=error_type,
            error_message=error_message,
            agent_name=agent_name,
        )

    # --- consuming ----------------------------------------------------------------------
    def _require_group(self, action: str) -> tuple[str, str]:
        if self.consumer_group is None or self.consumer_name is None:
            raise CoordinatorError(
                f"{action} needs a consumer group: AgentCoordinator(..., consumer_group=...)"
            )
        return self.consumer_group, self.consumer_name

    def _streams_of(self, event_types: Iterable[str] | None) -> list[str]:
        if event_types is None:
            return list(self.streams.values())
        if isinstance(event_types, str):
            event_types = [event_types]
        chosen: list[str] = []
        for name in event_types:
            try:
                key = self.streams[EventType(name)]
            except ValueError:
                known = ", ".join(t.value for t in EventType)
                raise CoordinatorError(f"unknown event type {name!r} (known: {known})") from None
            if key not in chosen:
                chosen.append(key)
        if not chosen:
            raise CoordinatorError("event_types is empty (None subscribes to every type)")
        return chosen

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
            return [], {key: _text(last) for key, last in zip(order, reply[1], strict=True)}
        events: list[CoordinationEvent] = []
        bad: list[tuple[str, str]] = []
        for raw_key, entries in reply[1]:
            key = _text(raw_key)
            for raw_id, flat in entries:
                entry_id = _text(raw_id)
                event = self._decode(key, entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))
                if event is None:
                    bad.append((key, entry_id))
                else:
                    events.append(event)
        if bad:
            await self._ack_ids(group, bad)
        events.sort(key=lambda e: _id_key(e.id or "0-0"))
        return events, None

    async def _wait(self, last_ids: dict[str, str], block_ms: int) -> None:
        """Block until one of the streams has an entry past the group's last delivered id."""
        socket_timeout = self.client.connection_pool.connection_kwargs.get("socket_timeout")
        if socket_timeout:  # never block past the client's read timeout
            block_ms = min(block_ms, max(1, int(socket_timeout * 800)))
        with translate_errors("wait for coordination events", self._url):
            wake: dict[Any, Any] = dict(last_ids)  # XREAD: the entries themselves are not used
            await self.client.xread(wake, count=1, block=max(1, block_ms))

    def _decode(self, key: str, entry_id: str, fields: dict[Any, Any]) -> CoordinationEvent | None:
        """The event of one entry, or ``None`` (logged and counted) when it is malformed."""
        raw = fields.get(EVENT_FIELD.encode(), fields.get(EVENT_FIELD))
        expected = self._types_by_stream.get(key)
        reason: str | None = None
        if raw is None:
            names = ", ".join(sorted(_text(k) for k in fields)) or "none"
            reason = f"no '{EVENT_FIELD}' field (fields: {names})"
        else:
            try:
                wire = _wire_decoder.decode(raw)
            except msgspec.DecodeError as exc:
                reason = f"not a coordination event: {exc}"
            else:
                if wire.v != SCHEMA_VERSION:
                    reason = f"unsupported schema version {wire.v} (this reads {SCHEMA_VERSION})"
                elif expected is not None and wire.type is not expected:
                    reason = f"a {wire.type.value} event in the {expected.value} stream"
                else:
                    return CoordinationEvent(
                        type=wire.type,
                        data=wire.data,
                        session_id=wire.session_id,
                        timestamp=wire.timestamp or _id_key(entry_id)[0] / 1000,
                        v=wire.v,
                        id=entry_id,
                        stream=key,
                    )
        self.malformed += 1
        log.warning("coordinator.malformed", stream=key, entry_id=entry_id, reason=reason)
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
            cursor = _text(reply[0])
            dropped = [(key, _text(i)) for i in (reply[2] if len(reply) > 2 else [])]
            for raw_id, fields in reply[1]:
                if not fields:  # deleted while pending (Redis 6.2 reports it this way)
                    dropped.append((key, _text(raw_id)))
                    continue
                event = self._decode(key, _text(raw_id), fields)
                if event is None:
                    dropped.append((key, _text(raw_id)))
                else:
                    events.append(event)
            await self._ack_ids(group, dropped)
            if cursor == "0-0":
                return events

    # --- inspection and upkeep ----------------------------------------------------------
    async def get_pending_count(self) -> int:
        """Events handed out and not yet acked: this coordinator's group's, summed over the
        type streams (every group's when the coordinator has none).

        >>> await coordinator.get_pending_count()  # doctest: +SKIP
        0
        """
        total = 0
        for info in (await self._stream_details()).values():
            for group in info["groups"]:
                if self.consumer_group is None or group["name"] == self.consumer_group:
                    total += group["pending"]
        return total

    async def get_stream_info(self) -> dict[str, Any]:
        """Lengths, entry ids and consumer groups of the coordination stream.

        Top level (all types together): ``length``, ``first_entry`` / ``last_entry`` (the
        oldest and newest entry ids, or ``None``; ids of different types compare by their
        millisecond time only), ``groups`` (per group name: ``pending``,
        ``lag`` — ``None`` when Redis cannot tell — and ``consumers``, the most any type stream
        has), ``pending`` (all groups). ``types`` holds the same per event type, with the
        stream ``key`` and each group's ``last_delivered_id``.

        >>> info = await coordinator.get_stream_info()  # doctest: +SKIP
        >>> info["length"], info["types"]["handoff_ready"]["length"]  # doctest: +SKIP
        (12, 3)
        """
        types = await self._stream_details()
        groups: dict[str, dict[str, Any]] = {}
        for info in types.values():
            for group in info["groups"]:
                total = groups.setdefault(
                    group["name"], {"name": group["name"], "pending": 0, "lag": 0, "consumers": 0}
                )
                total["pending"] += group["pending"]
                total["consumers"] = max(total["consumers"], group["consumers"])
                if total["lag"] is not None:
                    total["lag"] = None if group["lag"] is None else total["lag"] + group["lag"]
        firsts = [i["first_entry"] for i in types.values() if i["first_entry"]]
        lasts = [i["last_entry"] for i in types.values() if i["last_entry"]]
        return {
            "stream_name": self.stream_name,
            "length": sum(i["length"] for i in types.values()),
            "first_entry": min(firsts, key=_id_key) if firsts else None,
            "last_entry": max(lasts, key=_id_key) if lasts else None,
            "groups": list(groups.values()),
            "pending": sum(g["pending"] for g in groups.values()),
            "types": {t.value: types[t] for t in EventType},
        }

    async def _stream_details(self) -> dict[EventType, dict[str, Any]]:
        details: dict[EventType, dict[str, Any]] = {}
        with translate_errors("read the coordination streams", self._url):
            for kind, key in self.streams.items():
                details[kind] = await self._one_stream(key)
        return details

    async def _one_stream(self, key: str) -> dict[str, Any]:
        info: dict[str, Any] = {
            "key": key,
            "length": 0,
            "first_entry": None,
            "last_entry": None,
            "groups": [],
        }
        try:
            stream: Any = await self.client.xinfo_stream(key)
            groups: Any = await self.client.xinfo_groups(key)
        except redis.exceptions.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return info
            raise
        first, last = stream.get("first-entry"), stream.get("last-entry")
        info["length"] = int(stream["length"])
        info["first_entry"] = _text(first[0]) if first else None
        info["last_entry"] = _text(last[0]) if last else None
        info["groups"] = [
            {
                "name": _text(g["name"]),
                "pending": int(g["pending"]),
                "lag": None if g.get("lag") is None else int(g["lag"]),
                "consumers": int(g["consumers"]),
                "last_delivered_id": _text(g["last-delivered-id"]),
            }
            for g in groups
        ]
        return info

    async def trim_stream(self, max_length: int, approximate: bool = True) -> int:
        """Trim every type stream to *max_length* entries; return how many were removed.

        With *approximate* Redis removes whole internal nodes only (cheaper; a stream may keep
        somewhat more). Pending entries trimmed away are dropped by the next
        :meth:`claim_abandoned_messages`.

        >>> await coordinator.trim_stream(1000)  # doctest: +SKIP
        0
        """
        if max_length < 0:
            raise CoordinatorError(f"max_length must be >= 0, not {max_length}")
        with translate_errors("trim the coordination streams", self._url):
            async with self.client.pipeline(transaction=False) as pipe:
                for key in self.streams.values():
                    pipe.xtrim(key, maxlen=max_length, approximate=approximate)
                return sum(int(n) for n in await pipe.execute())
