"""Reading run records and run events back: a record hash as a :class:`RunResult`, an
``XREAD`` reply of event streams as :class:`RunEvent` s (whichever shape it came in); and
the fingerprint a submit leaves in a record (what a submit sent again has in common)."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from runtime.agents.protocol import TERMINAL_STATUS, RunEvent, RunRequest, RunResult

__all__ = ["decode_events", "decode_result", "fingerprint"]

_EVENT = msgspec.json.Decoder(RunEvent)
_encode = msgspec.json.Encoder().encode


def decode_events(reply: Any) -> list[RunEvent]:
    """Run events from an XREAD reply (in order, each with its stream id): as redis-py
    parses it, or as Redis sent it (an entry's fields then a flat list)."""
    events = []
    for _stream, entries in _items(reply):
        for entry_id, fields in entries:
            if not isinstance(fields, dict):  # as Redis sent them: [field, value, …]
                fields = dict(zip(fields[::2], fields[1::2], strict=True))
            event = _EVENT.decode(fields[b"event"])
            events.append(msgspec.structs.replace(event, id=entry_id.decode()))
    return events


def _items(reply: Any) -> Any:
    if not reply:
        return ()
    return reply.items() if isinstance(reply, dict) else reply


def decode_result(run_id: str, raw: dict[str, str]) -> RunResult:
    def number(name: str) -> float | None:
        value = raw.get(name)
        return float(value) if value else None

    status = raw.get("status", "queued")
    return RunResult(
        run_id=run_id,
        status=status if status in (*TERMINAL_STATUS, "queued", "running") else "queued",  # type: ignore[arg-type]
        agent=raw.get("agent", ""),
        session_id=raw.get("session_id") or None,
        final_output=msgspec.json.decode(raw["final_output"]) if raw.get("final_output") else None,
        last_agent=raw.get("last_agent") or None,
        usage=msgspec.json.decode(raw["usage"]) if raw.get("usage") else {},
        error=raw.get("error") or None,
        error_type=raw.get("error_type") or None,
        worker=raw.get("worker") or None,
        submitted_at=number("submitted_at") or 0.0,
        started_at=number("started_at"),
        finished_at=number("finished_at"),
    )


def fingerprint(request: RunRequest) -> str:
    """What a submit sent again has in common with the first try (not its time)."""
    same = msgspec.structs.replace(request, submitted_at=0.0)
    return hashlib.blake2b(_encode(same), digest_size=12).hexdigest()
