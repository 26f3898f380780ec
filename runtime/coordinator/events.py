"""Coordination events: their types, the event as read back, and the wire format.

An entry of a coordination stream has one field, ``event``, holding a JSON object
(:class:`CoordinationEvent` without ``id`` and ``stream``). :func:`encode` makes that value;
:func:`decode` reads it back, and turns every way an entry can be unreadable (no such field,
invalid JSON or UTF-8, nested too deeply, an unknown type…) into a reason instead of an
exception, so one bad entry never stops a reader.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Any

import msgspec

from runtime.errors import CoordinatorError

__all__ = [
    "EVENT_FIELD",
    "SCHEMA_VERSION",
    "CoordinationEvent",
    "EventType",
    "decode",
    "encode",
    "id_key",
    "text",
]

SCHEMA_VERSION = 1
EVENT_FIELD = "event"
"""The one field of a coordination stream entry; it holds the event as JSON."""


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


_encoder = msgspec.json.Encoder()
_wire_decoder = msgspec.json.Decoder(_Wire)

# What decoding untrusted bytes can raise: msgspec's DecodeError (ValidationError included),
# RecursionError for deeply nested JSON, UnicodeDecodeError for bytes that are not UTF-8.
_UNDECODABLE = (msgspec.DecodeError, RecursionError, UnicodeError, ValueError, TypeError)


def text(value: bytes | str) -> str:
    """A reply as text; bytes that are not UTF-8 are shown with replacement characters."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable ``(ms, seq)``."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def encode(event: CoordinationEvent) -> bytes:
    """The ``event`` field value of *event*; :class:`CoordinatorError` when data is not JSON."""
    wire = _Wire(
        v=event.v,
        type=event.type,
        session_id=event.session_id,
        timestamp=event.timestamp,
        data=event.data,
    )
    try:
        return _encoder.encode(wire)
    except (TypeError, msgspec.EncodeError) as exc:
        raise CoordinatorError(f"{event.type.value} event data is not JSON: {exc}") from None


def decode(
    stream: str, entry_id: str, fields: Mapping[Any, Any], expected: EventType | None
) -> CoordinationEvent | str:
    """The event of one entry of *stream*, or why it cannot be read as one.

    *expected* is the type of the stream (``None``: any type). Never raises on what the entry
    holds.
    """
    raw = fields.get(EVENT_FIELD.encode(), fields.get(EVENT_FIELD))
    if raw is None:
        names = ", ".join(sorted(text(k) for k in fields)) or "none"
        return f"no '{EVENT_FIELD}' field (fields: {names})"
    try:
        wire = _wire_decoder.decode(raw)
    except RecursionError:
        return "not a coordination event: JSON nested too deeply to decode"
    except _UNDECODABLE as exc:
        return f"not a coordination event: {exc}"
    if wire.v != SCHEMA_VERSION:
        return f"unsupported schema version {wire.v} (this reads {SCHEMA_VERSION})"
    if expected is not None and wire.type is not expected:
        return f"a {wire.type.value} event in the {expected.value} stream"
    return CoordinationEvent(
        type=wire.type,
        data=wire.data,
        session_id=wire.session_id,
        timestamp=wire.timestamp or id_key(entry_id)[0] / 1000,
        v=wire.v,
        id=entry_id,
        stream=stream,
    )
