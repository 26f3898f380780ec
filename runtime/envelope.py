"""The wire format of a work entry: a versioned JSON envelope in one stream field.

    XADD 'aw:{inbox:echo}' '*' envelope '{"v":1,"id":"t1","target":"echo","payload":{"n":1}}'

Any language can publish: the envelope is plain JSON under the field ``envelope``. Fields a
publisher leaves out take their defaults; unknown fields are ignored so newer publishers can
add some. ``docs/wire-format.md`` documents every field.
"""

from __future__ import annotations

import enum
import os
import time
from typing import Any

import msgspec

__all__ = [
    "ENVELOPE_ALLOWANCE",
    "ENVELOPE_FIELD",
    "SCHEMA_VERSION",
    "Envelope",
    "MalformedEntry",
    "Reason",
    "decode_entry",
    "encode_envelope",
    "encode_within",
    "new_task_id",
]

SCHEMA_VERSION = 1
ENVELOPE_FIELD = b"envelope"
ENVELOPE_ALLOWANCE = 128
"""Bytes over ``streams.max_entry_bytes`` that :func:`decode_entry` still accepts: room for
what the runtime itself adds to an envelope it accepted (the ``attempt`` count of a retry, the
``aw-replay`` header of a replay), so that an envelope at the limit is not refused as
``oversized`` after one failure. The runtime's ``last_error`` is cut to fit the limit itself
(:func:`encode_within`)."""
_CUT_MARK = "… (cut to fit streams.max_entry_bytes)"


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


class Reason(enum.StrEnum):
    """The ``reason`` of a dead letter: a bare code; the human account is in ``detail``."""

    MALFORMED = "malformed"
    """The entry cannot be read: no ``envelope`` field, not JSON, a field of the wrong type
    or out of range (``attempt`` outside 0..max_deliveries), nested too deeply…"""
    OVERSIZED = "oversized"
    """The envelope is over ``streams.max_entry_bytes``; the letter keeps it whole when it
    decodes (up to a few times the limit), else a preview."""
    UNSUPPORTED_VERSION = "unsupported_version"
    """The envelope's schema version ``v`` is not one this worker reads."""
    MAX_DELIVERIES = "max_deliveries"
    """Delivered ``worker.max_deliveries`` times without an outcome (its worker died or hung)."""
    FAILED = "failed"
    """Its handler failed on every one of ``worker.max_deliveries`` attempts."""
    PERMANENT = "permanent"
    """Its handler raised :class:`~runtime.errors.PermanentError`."""
    EXPIRED = "expired"
    """Its deadline passed before it ran."""
    INVALID_PAYLOAD = "invalid_payload"
    """Its payload does not convert to the handler's payload type."""
    UNKNOWN_TARGET = "unknown_target"
    """Its ``target`` is not the target of the inbox it was found in."""


class MalformedEntry(Exception):
    """A stream entry that cannot be run: ``code`` is the dead letter's ``reason``, ``detail``
    says why in words."""

    def __init__(self, code: Reason, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def reason(self) -> str:
        """``"<code>: <detail>"``."""
        return str(self)


def new_task_id() -> str:
    """A fresh task id: 32 random hex characters (as random as a UUID4, cheaper to make)."""
    return os.urandom(16).hex()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)
_version_probe = msgspec.json.Decoder(dict[str, Any])


def encode_envelope(envelope: Envelope) -> bytes:
    """The JSON text stored in the ``envelope`` field."""
    return _encoder.encode(envelope)


def encode_within(envelope: Envelope, max_bytes: int) -> bytes:
    """The encoded *envelope*, its ``last_error`` cut (or, if need be, dropped) so that it is
    at most *max_bytes* long when it can be; nothing else is changed, so an envelope over
    *max_bytes* without its ``last_error`` stays over."""
    raw = encode_envelope(envelope)
    error = envelope.last_error
    if len(raw) <= max_bytes or error is None:
        return raw
    bare = encode_envelope(msgspec.structs.replace(envelope, last_error=None))
    room = max_bytes - len(bare) - len(b',"last_error":')
    keep = _longest_prefix(error, room)
    if keep is None:
        return bare
    return encode_envelope(msgspec.structs.replace(envelope, last_error=keep))


def _longest_prefix(text: str, room: int) -> str | None:
    """The longest cut of *text* (marked as cut) whose JSON string is at most *room* bytes."""

    def size(n: int) -> int:
        return len(_encoder.encode(text[:n] + _CUT_MARK))

    if size(0) > room:
        return None
    low, high = 0, len(text)  # size(low) fits; find the largest n that does
    while low < high:
        middle = (low + high + 1) // 2
        if size(middle) <= room:
            low = middle
        else:
            high = middle - 1
    return text[:low] + _CUT_MARK


def decode_entry(
    fields: dict[bytes, bytes], *, max_bytes: int, max_attempt: int | None = None
) -> Envelope:
    """Decode and validate the fields of one stream entry.

    Every failure to decode becomes :class:`MalformedEntry`, whatever the decoder raised (a
    1,000-deep JSON document raises ``RecursionError``, for one). An envelope up to
    :data:`ENVELOPE_ALLOWANCE` bytes over *max_bytes* is accepted (what the runtime adds).

    Raises:
        MalformedEntry: missing field, oversized, not JSON, wrong schema or version, an
            ``attempt`` outside ``0..max_attempt`` (when given).
    """
    raw = fields.get(ENVELOPE_FIELD)
    if raw is None:
        names = ", ".join(sorted(k.decode(errors="replace")[:100] for k in list(fields)[:20]))
        raise MalformedEntry(Reason.MALFORMED, f"no 'envelope' field (fields: {names or 'none'})")
    if len(raw) > max_bytes + ENVELOPE_ALLOWANCE:
        raise MalformedEntry(
            Reason.OVERSIZED, f"{len(raw)} bytes, over streams.max_entry_bytes ({max_bytes})"
        )
    try:
        envelope = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise _undecodable(raw, exc) from None
    except Exception as exc:  # RecursionError and whatever else a hostile entry can cause
        raise MalformedEntry(Reason.MALFORMED, f"cannot be decoded: {_short(exc)}") from None
    if envelope.v != SCHEMA_VERSION:
        raise MalformedEntry(
            Reason.UNSUPPORTED_VERSION,
            f"schema version {envelope.v} (this worker reads {SCHEMA_VERSION})",
        )
    if max_attempt is not None and not 0 <= envelope.attempt <= max_attempt:
        raise MalformedEntry(
            Reason.MALFORMED,
            f"attempt {envelope.attempt} is outside 0..{max_attempt} (worker.max_deliveries)",
        )
    return envelope


def _undecodable(raw: bytes, exc: msgspec.DecodeError) -> MalformedEntry:
    try:
        doc = _version_probe.decode(raw)
    except Exception:  # msgspec.DecodeError, RecursionError…
        return MalformedEntry(Reason.MALFORMED, f"invalid JSON ({_short(exc, type_name=False)})")
    version = doc.get("v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        text = f"schema version {repr(version)[:50]} (this worker reads {SCHEMA_VERSION})"
        return MalformedEntry(Reason.UNSUPPORTED_VERSION, text)
    return MalformedEntry(Reason.MALFORMED, _short(exc, type_name=False))


def _short(exc: BaseException, *, type_name: bool = True, limit: int = 500) -> str:
    text = f"{type(exc).__name__}: {exc}" if type_name else str(exc)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def stamp(envelope: Envelope) -> Envelope:
    """Fill ``created_at`` when a publisher left it out."""
    if envelope.created_at:
        return envelope
    return msgspec.structs.replace(envelope, created_at=time.time())
