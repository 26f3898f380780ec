"""The wire format of a work entry: a versioned JSON envelope in one stream field.

    XADD 'aw:{inbox:echo}' '*' envelope '{"v":1,"id":"t1","target":"echo","payload":{"n":1}}'

Any language can publish: the envelope is plain JSON under the field ``envelope``. Fields a
publisher leaves out take their defaults; unknown fields are ignored so newer publishers can
add some. ``docs/wire-format.md`` documents every field.
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

__all__ = [
    "ENVELOPE_FIELD",
    "SCHEMA_VERSION",
    "Envelope",
    "MalformedEntry",
    "decode_entry",
    "encode_envelope",
    "new_task_id",
]

SCHEMA_VERSION = 1
ENVELOPE_FIELD = b"envelope"


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One unit of work for a target (an agent or a task handler)."""

    v: int = 1
    """Schema version; absent means 1. Entries of another version are dead-lettered."""
    id: str
    """Task id, unique per logical task; kept across retries and replays."""
    target: str
    """Name of the handler (agent) that runs it; also names the inbox stream."""
    payload: Any = None
    """Any JSON value: the handler's input."""
    attempt: int = 0
    """Failed attempts so far (retries scheduled by the runtime)."""
    created_at: float = 0.0
    """Unix time of the first enqueue."""
    deadline: float | None = None
    """Unix time after which the task is not started any more (dead-lettered as expired)."""
    idempotency_key: str | None = None
    """Key under which duplicate enqueues within the idempotency window return this task."""
    traceparent: str | None = None
    """W3C trace context of the publisher, continued by the worker."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Free-form string metadata for the handler."""
    last_error: str | None = None
    """The error of the previous failed attempt, if any."""


class MalformedEntry(Exception):
    """A stream entry that cannot be run; ``reason`` is what the dead-letter copy records."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_task_id() -> str:
    """A fresh task id: 32 random hex characters (as random as a UUID4, cheaper to make)."""
    return os.urandom(16).hex()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)
_version_probe = msgspec.json.Decoder(dict[str, Any])


def encode_envelope(envelope: Envelope) -> bytes:
    """The JSON text stored in the ``envelope`` field."""
    return _encoder.encode(envelope)


def decode_entry(fields: dict[bytes, bytes], *, max_bytes: int) -> Envelope:
    """Decode and validate the fields of one stream entry.

    Raises:
        MalformedEntry: missing field, oversized, invalid JSON, wrong schema or version.
    """
    raw = fields.get(ENVELOPE_FIELD)
    if raw is None:
        names = ", ".join(sorted(k.decode(errors="replace") for k in fields)) or "none"
        raise MalformedEntry(f"malformed: no 'envelope' field (fields: {names})")
    if len(raw) > max_bytes:
        raise MalformedEntry(f"oversized: {len(raw)} bytes, the limit is {max_bytes}")
    try:
        envelope = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise MalformedEntry(_decode_reason(raw, exc)) from None
    if envelope.v != SCHEMA_VERSION:
        raise MalformedEntry(
            f"unsupported schema version {envelope.v} (this worker reads {SCHEMA_VERSION})"
        )
    return envelope


def _decode_reason(raw: bytes, exc: msgspec.DecodeError) -> str:
    try:
        doc = _version_probe.decode(raw)
    except msgspec.DecodeError:
        return f"malformed: invalid JSON ({exc})"
    if doc.get("v", SCHEMA_VERSION) != SCHEMA_VERSION:
        return f"unsupported schema version {doc.get('v')!r} (this worker reads {SCHEMA_VERSION})"
    return f"malformed: {exc}"


def stamp(envelope: Envelope) -> Envelope:
    """Fill ``created_at`` when a publisher left it out."""
    if envelope.created_at:
        return envelope
    return msgspec.structs.replace(envelope, created_at=time.time())
