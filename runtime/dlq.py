"""Dead-letter streams: list, inspect, replay and purge what workers could not run.

    letters = DeadLetters(conn.client, keys=conn.keys)
    for letter in await letters.read("send_receipt"):
        print(letter.reason, letter.error)
    await letters.replay("send_receipt")          # every letter back into the inbox

A replay puts the envelope back with its attempt count reset, so it gets every try again;
moving one letter is atomic (it is deleted from the dead-letter stream as it is re-enqueued).
The envelope put back carries the header ``aw-replay: <letter id>`` (:data:`REPLAY_HEADER`),
so what a handler keeps of its own (an agent run's record, which says ``failed`` already) can
tell a replayed entry from a redelivered one. The envelope put back is no longer than the
letter's: its ``last_error`` is cut (or dropped) to make room for the header, so a replay does
not push an envelope at ``streams.max_entry_bytes`` over it. ``replay(..., after_move=…)``
calls back a layer above for each letter moved (``agents-worker dlq replay`` puts agent runs
back to ``queued`` that way); the entry may be taken by a worker before or after the callback
runs.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis.asyncio

from runtime.envelope import ENVELOPE_FIELD, Envelope, MalformedEntry, decode_entry, encode_within
from runtime.keys import Keys
from runtime.redis.connection import translate_errors
from runtime.scripts import Scripts

__all__ = ["REPLAY_HEADER", "AfterMove", "DeadLetter", "DeadLetters", "Replayed"]

REPLAY_HEADER = "aw-replay"
"""The envelope header a replayed entry carries: the id of the dead letter it came from."""

AfterMove = Callable[[Envelope], Awaitable[object]]
"""Called with the envelope put back, once its letter moved into the inbox."""

_RECORD_FIELDS = (
    "reason", "detail", "error", "target", "task_id", "entry_id", "deliveries", "attempts",
    "consumer", "failed_at",
)  # fmt: skip


@dataclass(frozen=True)
class DeadLetter:
    """One entry of a dead-letter stream."""

    id: str
    target: str
    reason: str
    error: str
    task_id: str
    entry_id: str
    deliveries: int
    attempts: int
    consumer: str
    failed_at: float
    envelope: bytes | None
    """The original envelope JSON, when the entry had one."""
    extra: dict[str, str] = field(default_factory=dict)
    """Other fields of the original entry (for malformed entries)."""
    detail: str = ""
    """What went wrong, for a person to read (``reason`` is a short code, e.g.
    ``max_deliveries``); empty in letters written before the field existed."""

    @classmethod
    def parse(cls, entry_id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
        text = {k.decode(errors="replace"): v for k, v in fields.items()}

        def get(name: str) -> str:
            return text.get(name, b"").decode(errors="replace")

        extra = {
            k: v.decode(errors="replace")
            for k, v in text.items()
            if k not in _RECORD_FIELDS and k != ENVELOPE_FIELD.decode()
        }

        def number(name: str) -> float:
            # a letter written by hand (or by another tool) may hold anything: it is still
            # listed, its unreadable figure kept as text among its other fields
            raw = get(name)
            try:
                value = float(raw or 0)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                extra[name] = raw
                return 0
            return value

        return cls(
            id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            target=get("target"),
            reason=get("reason"),
            error=get("error"),
            task_id=get("task_id"),
            entry_id=get("entry_id"),
            deliveries=int(number("deliveries")),
            attempts=int(number("attempts")),
            consumer=get("consumer"),
            failed_at=number("failed_at"),
            envelope=fields.get(ENVELOPE_FIELD),
            extra=extra,
            detail=get("detail"),
        )


@dataclass(frozen=True)
class Replayed:
    """The outcome of a replay: letters moved back (id → new entry id) and those skipped."""

    moved: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)
    """Letters that moved but whose ``after_move`` callback failed (id → error)."""


class DeadLetters:
    """The dead-letter streams of one deployment."""

    def __init__(self, client: redis.asyncio.Redis, *, keys: Keys) -> None:
        self._client = client
        self._keys = keys
        self._scripts = Scripts.register(client)

    async def size(self, target: str) -> int:
        with translate_errors("read the dead-letter stream"):
            return int(await self._client.xlen(self._keys.dlq(target)))

    async def read(self, target: str, *, count: int = 100, after: str = "-") -> list[DeadLetter]:
        """Up to *count* letters of *target*, oldest first, from *after* (exclusive) on."""
        start = after if after == "-" else f"({after}"
        with translate_errors("read the dead-letter stream"):
            rows: Any = await self._client.xrange(self._keys.dlq(target), min=start, count=count)
        return [DeadLetter.parse(i, f) for i, f in rows]

    async def get(self, target: str, letter_id: str) -> DeadLetter | None:
        with translate_errors("read the dead-letter stream"):
            rows: Any = await self._client.xrange(self._keys.dlq(target), letter_id, letter_id)
        return DeadLetter.parse(*rows[0]) if rows else None

    async def replay(
        self, target: str, ids: list[str] | None = None, *, after_move: AfterMove | None = None
    ) -> Replayed:
        """Move letters (all when *ids* is ``None``) back into the inbox of *target*, each
        marked with :data:`REPLAY_HEADER`; *after_move* is called for each letter moved."""
        result = Replayed()
        letters = await self._select(target, ids, result)
        for letter in letters:
            if letter.envelope is None:
                result.skipped[letter.id] = "no envelope to replay (the entry was malformed)"
                continue
            try:
                envelope = decode_entry({ENVELOPE_FIELD: letter.envelope}, max_bytes=1 << 30)
            except MalformedEntry as exc:
                result.skipped[letter.id] = f"cannot replay: {exc.reason}"
                continue
            headers = {**envelope.headers, REPLAY_HEADER: letter.id}
            fresh = msgspec.structs.replace(envelope, attempt=0, headers=headers)
            with translate_errors("replay a dead letter"):
                new_id = await self._scripts.replay(
                    keys=[self._keys.dlq(target), self._keys.inbox(target)],
                    args=[letter.id, encode_within(fresh, len(letter.envelope))],
                )
            if new_id is None:
                result.skipped[letter.id] = "already replayed or purged"
                continue
            result.moved[letter.id] = new_id.decode() if isinstance(new_id, bytes) else new_id
            if after_move is not None:
                try:
                    await after_move(fresh)
                except Exception as exc:  # moved: the worker that takes it sees the marker
                    result.warnings[letter.id] = str(exc)
        return result

    async def purge(self, target: str, ids: list[str] | None = None) -> int:
        """Delete letters (the whole stream when *ids* is ``None``); returns how many."""
        key = self._keys.dlq(target)
        with translate_errors("purge the dead-letter stream"):
            if ids is None:
                size = int(await self._client.xlen(key))
                await self._client.delete(key)
                return size
            return int(await self._client.xdel(key, *ids)) if ids else 0

    async def _select(
        self, target: str, ids: list[str] | None, result: Replayed
    ) -> list[DeadLetter]:
        if ids is None:
            letters: list[DeadLetter] = []
            after = "-"
            while batch := await self.read(target, count=500, after=after):
                letters += batch
                after = batch[-1].id
            return letters
        chosen = []
        for letter_id in ids:
            letter = await self.get(target, letter_id)
            if letter is None:
                result.skipped[letter_id] = "no such dead letter"
            else:
                chosen.append(letter)
        return chosen


def envelope_of(letter: DeadLetter) -> Envelope | None:
    """The decoded envelope of *letter*, or ``None`` when it had none or it is malformed."""
    if letter.envelope is None:
        return None
    try:
        return decode_entry({ENVELOPE_FIELD: letter.envelope}, max_bytes=1 << 30)
    except MalformedEntry:
        return None
