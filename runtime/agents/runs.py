"""Run records and run event streams in Redis.

``<prefix>:{run:<id>}`` (hash) and ``<prefix>:{run:<id>}:events`` (stream) share a hash tag: the
final write of a run (record + terminal event) is one MULTI, so a reader never sees a terminal
event without the result, or the reverse. Both expire ``runs.result_ttl_seconds`` after the last
write; the event stream is trimmed to about ``runs.events_maxlen``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec
import redis.asyncio

from runtime.agents.protocol import TERMINAL_STATUS, RunEvent, RunRequest, RunResult
from runtime.keys import Keys
from runtime.redis.connection import translate_errors
from runtime.settings.model import RunSettings

__all__ = ["RunStore"]

_encode = msgspec.json.Encoder().encode
_event_decoder = msgspec.json.Decoder(RunEvent)

# KEYS: record. ARGV: ttl, field, value, … → 1 when created, 0 when the record existed.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: record. → 1 when a cancel was recorded, 0 when the run is unknown or already over.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'completed' or status == 'failed' or status == 'cancelled' then
  return 0
end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
return 1
"""


class RunStore:
    """Reads and writes run records and event streams."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys, settings: RunSettings) -> None:
        self._client = client
        self._keys = keys
        self._ttl = settings.result_ttl_seconds
        self._maxlen = settings.events_maxlen
        self._create = client.register_script(_CREATE)
        self._cancel = client.register_script(_CANCEL)

    # --- records ------------------------------------------------------------------------
    async def create(self, request: RunRequest) -> bool:
        """Record a submitted run (status ``queued``); ``False`` if the id exists already."""
        fields: dict[str, Any] = {
            "status": "queued",
            "agent": request.agent,
            "session_id": request.session_id or "",
            "seq": "" if request.seq is None else request.seq,
            "submitted_at": request.submitted_at,
        }
        args: list[Any] = [self._ttl]
        for name, value in fields.items():
            args += [name, value]
        with translate_errors("record a run"):
            return bool(await self._create(keys=[self._keys.run(request.run_id)], args=args))

    async def mark_enqueued(self, run_id: str, entry_id: str | None) -> None:
        with translate_errors("record a run"):
            await self._client.hset(self._keys.run(run_id), "entry_id", entry_id or "delayed")

    async def start(self, run_id: str, request: RunRequest, worker: str) -> None:
        """Mark the run running (creating the record when a publisher wrote none)."""
        key = self._keys.run(run_id)
        fields: Any = {
            "status": "running",
            "agent": request.agent,
            "session_id": request.session_id or "",
            "worker": worker,
            "started_at": time.time(),
            "submitted_at": request.submitted_at or time.time(),
        }
        with translate_errors("record a run"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)
                pipe.hincrby(key, "attempts", 1)
                pipe.expire(key, self._ttl)
                await pipe.execute()

    async def get(self, run_id: str) -> RunResult | None:
        """The run's record, or ``None`` when unknown (or expired)."""
        with translate_errors("read a run"):
            raw: Any = await self._client.hgetall(self._keys.run(run_id))
        if not raw:
            return None
        return _result(run_id, {k.decode(): v.decode() for k, v in raw.items()})

    async def status(self, run_id: str) -> dict[str, str]:
        """The raw status fields of a run (empty when unknown)."""
        with translate_errors("read a run"):
            raw: Any = await self._client.hmget(
                self._keys.run(run_id), ["status", "submitted_at", "entry_id", "cancel_requested"]
            )
        names = ("status", "submitted_at", "entry_id", "cancel_requested")
        return {n: v.decode() for n, v in zip(names, raw, strict=True) if v is not None}

    async def request_cancel(self, run_id: str) -> bool:
        with translate_errors("cancel a run"):
            return bool(await self._cancel(keys=[self._keys.run(run_id)]))

    async def cancel_requested(self, run_id: str) -> bool:
        with translate_errors("read a run"):
            return bool(await self._client.hexists(self._keys.run(run_id), "cancel_requested"))

    # --- events -------------------------------------------------------------------------
    async def emit(self, run_id: str, events: Sequence[RunEvent]) -> None:
        """Append *events* in order (one round trip)."""
        if not events:
            return
        key = self._keys.run_events(run_id)
        with translate_errors("publish run events"):
            async with self._client.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.xadd(key, {"event": _encode(event)}, maxlen=self._maxlen, approximate=True)
                pipe.expire(key, self._ttl)
                await pipe.execute()

    async def finish(self, result: RunResult, event: RunEvent) -> None:
        """Store the result and append the terminal event, atomically."""
        record = self._keys.run(result.run_id)
        stream = self._keys.run_events(result.run_id)
        fields: Any = {
            "status": result.status,
            "final_output": _encode(result.final_output),
            "last_agent": result.last_agent or "",
            "usage": _encode(result.usage),
            "error": result.error or "",
            "error_type": result.error_type or "",
            "worker": result.worker or "",
            "finished_at": result.finished_at or time.time(),
        }
        with translate_errors("store a run result"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(record, mapping=fields)
                pipe.xadd(stream, {"event": _encode(event)}, maxlen=self._maxlen, approximate=True)
                pipe.expire(record, self._ttl)
                pipe.expire(stream, self._ttl)
                await pipe.execute()

    async def read_events(
        self, run_id: str, after: str = "0-0", *, block_ms: int | None = None, count: int = 500
    ) -> list[RunEvent]:
        """Events after the id *after*, waiting up to *block_ms* for one when there is none."""
        key = self._keys.run_events(run_id)
        with translate_errors("read run events"):
            reply: Any = await self._client.xread({key: after}, count=count, block=block_ms)
        events = []
        for _stream, entries in _items(reply):
            for entry_id, fields in entries:
                event = _event_decoder.decode(fields[b"event"])
                events.append(msgspec.structs.replace(event, id=entry_id.decode()))
        return events


def _items(reply: Any) -> Any:
    if not reply:
        return ()
    return reply.items() if isinstance(reply, dict) else reply


def _result(run_id: str, raw: dict[str, str]) -> RunResult:
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
